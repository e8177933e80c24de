"""URLs as the original sees them: WHATWG path normalisation, URLSearchParams, upstream targets.

The original routes on ``new URL(request.url).pathname``: non-ASCII and
unsafe characters percent-encoded, existing ``%XX`` escapes kept as sent,
``.``/``..`` segments resolved, nothing decoded. :func:`split_target` does
the same to an HTTP request-target (whose characters arrive as Latin-1, one
per byte). Query strings are kept verbatim apart from the same encoding.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes, urlsplit

__all__ = [
    "BadTarget",
    "build_upstream_url",
    "escaped_path_problem",
    "form_decode",
    "form_encode",
    "split_target",
    "upstream_base",
    "upstream_url",
]


class BadTarget(ValueError):
    """The request-target is not a path this gateway can route."""


# WHATWG URL: the path percent-encode set (C0 controls, space, " # < > ? ` { }
# and everything above U+007E) and the special-query percent-encode set.
_PATH_UNSAFE = frozenset(' "#<>?`{}')
_QUERY_UNSAFE = frozenset(" \"#<>'")
_SINGLE_DOT = frozenset({".", "%2e", "%2E"})
_DOUBLE_DOT = frozenset(
    {"..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e"}
)


# Any character that _percent_encode would change: a control, space or
# non-ASCII character, or one of the set's specials.
_NEEDS_PATH_ENCODING = re.compile(r'[^\x21-\x7e]|["#<>?`{}]')
_NEEDS_QUERY_ENCODING = re.compile(r"[^\x21-\x7e]|[\"#<>']")


def _percent_encode(text: str, unsafe: frozenset[str]) -> str:
    check = _NEEDS_PATH_ENCODING if unsafe is _PATH_UNSAFE else _NEEDS_QUERY_ENCODING
    if check.search(text) is None:
        return text  # the common case: nothing to do
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or code > 0x7E or char in unsafe:
            out.append("".join(f"%{b:02X}" for b in char.encode("latin-1")))
        else:
            out.append(char)
    return "".join(out)


def _normalise_path(raw: str) -> str:
    if "." not in raw and "\\" not in raw and "%2e" not in raw and "%2E" not in raw:
        return _percent_encode(raw, _PATH_UNSAFE)
    segments = raw[1:].replace("\\", "/").split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment in _DOUBLE_DOT:
            if out:
                out.pop()
            if i == last:
                out.append("")
        elif segment in _SINGLE_DOT:
            if i == last:
                out.append("")
        else:
            out.append(_percent_encode(segment, _PATH_UNSAFE))
    return "/" + "/".join(out)


def _raw_path(target: str) -> str:
    """The path of a request-target as sent: no authority, query or fragment, nothing resolved."""
    if not target.startswith("/"):
        rest = target.split("://", 1)[-1]
        cut = min(
            (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1
        )
        target = "" if cut < 0 else rest[cut:]
    return target.split("#", 1)[0].split("?", 1)[0]


def escaped_path_problem(target: str) -> str | None:
    """Why a request-target's path must not be proxied, or ``None`` when it may be.

    An encoded slash or backslash (``%2f``, ``%5c``) anywhere in the path, a dot-segment
    written with ``%2e`` (``%2e%2e``, ``.%2e``, ``%2e.``, ``%2e``), or a dot-segment that
    carries ``;`` parameters (``..;``, ``..;x``: Tomcat and others read it as ``..``). An
    upstream that decodes the path would walk out of the server URL's base path with them;
    percent forms are matched in any case. Plain ``.``/``..`` segments are resolved by
    :func:`split_target` before routing and never reach an upstream.
    """
    path = _raw_path(target)
    if "%" not in path and ";" not in path:
        return None  # the common case
    for segment in path.split("/"):
        lower = segment.lower()
        if "%2f" in lower or "%5c" in lower:
            return "an encoded slash or backslash"
        base = lower.partition(";")[0]
        if base.replace("%2e", ".") in (".", "..") and (base != lower or "%" in base):
            return "an encoded dot-segment or one with ';' parameters"
    return None


def split_target(target: str) -> tuple[str, str]:
    """Split a request-target into (normalised path, query without ``?``).

    ``target`` is origin form (``/a?b``) or absolute form (``http://h/a?b``),
    one character per byte. A fragment, if a client sent one, is dropped.
    """
    if not target.startswith("/"):
        if not target.lower().startswith(("http://", "https://")):
            raise BadTarget(target)
        rest = target.split("://", 1)[1]
        slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
        target = "/" if slash < 0 else rest[slash:]
        if not target.startswith("/"):
            target = "/" + target
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return _normalise_path(path), _percent_encode(query, _QUERY_UNSAFE)


# application/x-www-form-urlencoded as URLSearchParams does it: alphanumerics
# and *-._ stay, space is +, every other byte of the UTF-8 encoding is %XX.
_FORM_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-._")


def _form_escape(text: str) -> str:
    out = []
    for byte in text.encode("utf-8", "surrogatepass"):
        if byte in _FORM_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def form_encode(pairs: list[tuple[str, str]]) -> str:
    """Serialise pairs as ``URLSearchParams.toString()`` does."""
    return "&".join(f"{_form_escape(k)}={_form_escape(v)}" for k, v in pairs)


def form_decode(query: str) -> list[tuple[str, str]]:
    """Parse a query string as ``new URLSearchParams(query)`` does."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_form_unescape(name), _form_unescape(value)))
    return pairs


def _form_unescape(text: str) -> str:
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "replace")


_SLASHES = re.compile(r"/{2,}")
_WILDCARD_SUFFIX = "/{.+}"


def _upstream_path(route_path: str, request_path: str) -> str:
    if not route_path.endswith(_WILDCARD_SUFFIX):
        return request_path
    base = route_path[: -len(_WILDCARD_SUFFIX)]
    if base in ("", "/"):
        return request_path
    if request_path == base:
        return "/"
    if request_path.startswith(base + "/"):
        return request_path[len(base) :]
    return request_path  # e.g. a base holding a {param}: never a literal prefix


def upstream_base(server_url: str) -> str:
    """What every upstream URL of one ``servers`` entry starts with.

    ``scheme://netloc`` and the server URL's path, its trailing ``/`` removed
    and its runs of ``/`` collapsed; its query and fragment dropped. Computed
    once per server when the config is compiled (``Server.base``).
    """
    parts = urlsplit(server_url)
    return f"{parts.scheme}://{parts.netloc}{_SLASHES.sub('/', parts.path.rstrip('/'))}"


def upstream_url(base: str, route_path: str, request_path: str, query: str) -> str:
    """The upstream target from a server's :func:`upstream_base` (the per-request part).

    The base ends in a character other than ``/`` (or is bare ``scheme://netloc``)
    and the request's part starts with ``/``, so collapsing the runs of ``/`` of
    each part alone gives what collapsing their concatenation gives.
    """
    path = _upstream_path(route_path, request_path)
    if not path.startswith("/"):
        path = "/" + path
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return f"{base}{path}?{query}" if query else base + path


def build_upstream_url(server_url: str, route_path: str, request_path: str, query: str) -> str:
    """The upstream target exactly as the original builds it (UPSTREAM.md §8.1).

    The server URL's path (trailing ``/`` removed) + the request path (the
    ``{.+}`` route prefix stripped), every run of ``/`` collapsed, and the
    request's query verbatim (any query on the server URL is replaced). The
    request path uses :func:`upstream_base` and :func:`upstream_url`, which
    split this in two so that the server URL is parsed once, not per request.
    """
    return upstream_url(upstream_base(server_url), route_path, request_path, query)
