"""Value mapping into upstream headers and query (UPSTREAM.md §9).

Each mapping value is searched for its *first* template
``$request.header.X``, ``$request.jwt.X``, ``$config.X`` or
``$request.query.X``; the whole value becomes what the template resolves
to (no interpolation). No template, or nothing to resolve, leaves the
header/parameter unset. Sources are read from the request as it arrived, so
mappings never chain. These quirks are the original's and users' configs
depend on them.

Theory of operation
-------------------
A header or query parameter that a mapping names belongs to the gateway: the
client's own values of it are dropped *before* the mapping is applied,
whether or not the mapping resolves to anything (nginx's ``proxy_set_header``
with an empty value drops the header the same way). So a route that maps
``$request.jwt.role`` into ``X-Role`` never forwards the client's own
``X-Role: admin`` when the token has no ``role`` (or ``role: null``). The
original kept the client's value in that case (docs/differences.md). A
client header whose name differs from a mapped one only by ``_`` for ``-``
(``X_Role``) goes too: CGI, WSGI and PHP upstreams read both as
``HTTP_X_ROLE``.

A header value the gateway sets must be one HTTP can carry: Latin-1, and no
control character other than HTAB (C0 controls and DEL; the original refused
only CR, LF and NUL, the ones Fetch refuses). Such a value raises
:class:`UnsendableValue`, answered as the original answers a value it cannot
set: 500 ``{"message":"Internal server error"}``, the log naming the header
(never the value). Query values are percent-encoded, so any character is safe
there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ._actions import LogLevel
from ._errors import InternalError
from ._events import Headers
from ._json import JSONValue, js_string
from ._model import MappingSpec
from ._url import form_decode, form_encode

__all__ = ["MappingSources", "UnsendableValue", "apply_mapping", "js_string"]

_TEMPLATE = re.compile(
    r"\$(request\.header|request\.jwt|config|request\.query)\.([A-Za-z0-9_.\-]+)"
)
_MISSING = object()
# C0 controls and DEL, but not HTAB: what RFC 9110 field values cannot hold.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class UnsendableValue(InternalError):
    """A mapped header value HTTP cannot carry: 500, as the original answers it.

    Logged at WARNING: the value comes from the request, the token or the
    config, so it is not a fault of the gateway's own code.
    """

    log_level = LogLevel.WARNING


class MappingSources:
    """What templates read: the incoming request, the JWT claims, the variables."""

    __slots__ = ("claims", "global_variables", "headers", "query", "route_variables")

    def __init__(
        self,
        *,
        headers: Headers,
        query: str,
        claims: Mapping[str, object] | None,
        route_variables: Mapping[str, JSONValue],
        global_variables: Mapping[str, JSONValue],
    ) -> None:
        self.headers = headers
        self.query = query
        self.claims = claims
        self.route_variables = route_variables
        self.global_variables = global_variables

    def resolve(self, template: str) -> object:
        """The value a mapping entry resolves to; ``None`` means "leave unset"."""
        found = _TEMPLATE.search(template)
        if found is None:
            return None
        source, name = found.groups()
        if source == "request.header":
            values = [v for k, v in self.headers if k == name.lower()]
            return ", ".join(values) if values else None
        if source == "request.jwt":
            if self.claims is None:
                return None
            return self.claims.get(name)
        if source == "config":
            for variables in (self.route_variables, self.global_variables):
                value = variables.get(name, _MISSING)
                if value is not _MISSING:
                    return value
            return None
        for key, value in form_decode(self.query):  # request.query
            if key == name:
                return value or None
        return None


def _header_value(name: str, value: str) -> str:
    # Fetch's Headers.set refuses values that are not ByteStrings or hold CR,
    # LF or NUL; the original then answers 500. Do the same, naming the cause,
    # and refuse the other controls too (RFC 9110 §5.5: only HTAB is allowed).
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise UnsendableValue(f"mapped value for header {name!r} is not Latin-1") from None
    if _CONTROL.search(value) is not None:
        raise UnsendableValue(f"mapped value for header {name!r} holds a control character")
    return value.strip(" \t")


def apply_mapping(
    spec: MappingSpec, sources: MappingSources, headers: Headers, query: str
) -> tuple[Headers, str]:
    """Return the upstream (headers, query) with the mapping applied.

    Every header and query parameter ``spec`` names is first removed from what
    the client sent, then set when its template resolves (module docstring).

    Raises:
        UnsendableValue: a resolved header value HTTP cannot carry.
    """
    out = list(headers)
    if spec.headers:
        owned = {name.lower().replace("_", "-") for name, _ in spec.headers}
        out = [item for item in out if item[0].replace("_", "-") not in owned]
    for name, template in spec.headers:
        value = sources.resolve(template)
        if value is None:
            continue
        lower = name.lower()
        text = _header_value(lower, js_string(value))
        out = [(k, v) for k, v in out if k != lower]  # two entries of one name: the last wins
        out.append((lower, text))
    if spec.query is None:
        return tuple(out), query
    pairs = form_decode(query)
    for name, template in spec.query:
        value = sources.resolve(template)
        pairs = _set_param(pairs, name, None if value is None else js_string(value))
    return tuple(out), form_encode(pairs)


def _set_param(pairs: list[tuple[str, str]], name: str, value: str | None) -> list[tuple[str, str]]:
    """``URLSearchParams.set``: replace the first, drop the rest, else append.

    ``value`` None: ``URLSearchParams.delete`` (the client's values go, none is set).
    """
    out: list[tuple[str, str]] = []
    done = value is None
    for key, old in pairs:
        if key != name:
            out.append((key, old))
        elif not done:
            assert value is not None
            out.append((key, value))
            done = True
    if not done and value is not None:
        out.append((name, value))
    return out
