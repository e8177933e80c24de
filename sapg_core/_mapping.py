"""Value mapping into upstream headers and query (UPSTREAM.md §9).

Each mapping value is searched for its *first* template
``$request.header.X``, ``$request.jwt.X``, ``$config.X`` or
``$request.query.X``; the whole value becomes what the template resolves
to (no interpolation). No template, or nothing to resolve, leaves the
header/parameter unset. Sources are read from the request as it arrived, so
mappings never chain. These quirks are the original's and users' configs
depend on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ._errors import InternalError
from ._events import Headers
from ._json import JSONValue, js_string
from ._model import MappingSpec
from ._url import form_decode, form_encode

__all__ = ["MappingSources", "apply_mapping", "js_string"]

_TEMPLATE = re.compile(
    r"\$(request\.header|request\.jwt|config|request\.query)\.([A-Za-z0-9_.\-]+)"
)
_MISSING = object()


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
    # LF or NUL; the original then answers 500. Do the same, naming the cause.
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise InternalError(f"mapped value for header {name!r} is not Latin-1") from None
    if any(c in value for c in "\r\n\x00"):
        raise InternalError(f"mapped value for header {name!r} holds a control character")
    return value.strip(" \t")


def apply_mapping(
    spec: MappingSpec, sources: MappingSources, headers: Headers, query: str
) -> tuple[Headers, str]:
    """Return the upstream (headers, query) with the mapping applied."""
    out = list(headers)
    for name, template in spec.headers:
        value = sources.resolve(template)
        if value is None:
            continue
        lower = name.lower()
        text = _header_value(lower, js_string(value))
        out = [(k, v) for k, v in out if k != lower]
        out.append((lower, text))
    if spec.query is None:
        return tuple(out), query
    pairs = form_decode(query)
    for name, template in spec.query:
        value = sources.resolve(template)
        if value is None:
            continue
        pairs = _set_param(pairs, name, js_string(value))
    return tuple(out), form_encode(pairs)


def _set_param(pairs: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    """``URLSearchParams.set``: replace the first, drop the rest, else append."""
    out: list[tuple[str, str]] = []
    done = False
    for key, old in pairs:
        if key != name:
            out.append((key, old))
        elif not done:
            out.append((key, value))
            done = True
    if not done:
        out.append((name, value))
    return out
