"""CORS headers exactly as the original adds them (UPSTREAM.md §4).

Every answer that passes through the pipeline gets the five "always"
headers; ``Access-Control-Allow-Origin`` and ``Vary: Origin`` are added only
when the request's ``Origin`` matches ``allow_origins``. Values are "set"
(replacing any upstream value of the same name). The original's permissive
``*`` + credentials rule (origin echoed) is kept for parity; ``sapg check``
warns about it.
"""

from __future__ import annotations

import re

from ._events import Headers
from ._model import Cors

__all__ = ["CorsPolicy"]


class CorsPolicy:
    """A compiled ``cors`` block."""

    __slots__ = ("_always", "_credentials", "_exact", "_patterns", "_star_index", "names")

    def __init__(self, cors: Cors) -> None:
        self._credentials = cors.allow_credentials
        self._always: Headers = (
            ("access-control-allow-methods", cors.allow_methods),
            ("access-control-allow-headers", cors.allow_headers),
            ("access-control-expose-headers", cors.expose_headers),
            ("access-control-allow-credentials", "true" if cors.allow_credentials else "false"),
            ("access-control-max-age", cors.max_age),
        )
        # Entries are tried in config order; the first hit wins. Precompute
        # each entry as (exact string or "*", compiled wildcard pattern).
        self._exact: dict[str, int] = {}
        self._patterns: list[tuple[int, re.Pattern[str]]] = []
        self._star_index: int | None = None
        for index, entry in enumerate(cors.allow_origins):
            if entry == "*":
                if self._star_index is None:
                    self._star_index = index
                continue
            self._exact.setdefault(entry, index)
            if "*" in entry:
                regex = ".*".join(re.escape(part) for part in entry.split("*"))
                self._patterns.append((index, re.compile(regex, re.DOTALL)))
        self.names = frozenset(name for name, _ in self._always) | {
            "access-control-allow-origin",
            "vary",
        }

    def allowed_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for this request, if any."""
        if origin is None:
            return None
        best: tuple[int, str] | None = None
        exact = self._exact.get(origin)
        if exact is not None:
            best = (exact, origin)
        if self._star_index is not None and (best is None or self._star_index < best[0]):
            best = (self._star_index, "*")
        for index, pattern in self._patterns:
            if best is not None and index >= best[0]:
                break
            if pattern.fullmatch(origin):
                best = (index, origin)
                break
        if best is None:
            return None
        matched = best[1]
        if matched == "*" and self._credentials:
            return origin
        return matched

    def headers(self, origin: str | None) -> Headers:
        """The CORS headers to set on an answer to a request with this ``Origin``."""
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return self._always
        return (("access-control-allow-origin", allowed), ("vary", "Origin"), *self._always)
