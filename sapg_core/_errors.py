"""Error answers as values: one small hierarchy, rendered to JSON in one place.

Deep code raises a :class:`GatewayError`; :meth:`Gateway.handle` catches it at
its boundary and turns it into a response with :func:`error_body`. The status
codes, ``error`` texts and ``code`` strings are the original gateway's
(reference/UPSTREAM.md §6) unless marked *new*.

:class:`IllegalTransition` is different: it means a transport misused the core
(an event nobody asked for). It is a bug, so it is raised to the caller and
never turned into a response.

Log levels: an error that carries a ``log`` text is logged at its
:attr:`GatewayError.log_level`. A client's fault (a bad token, a malformed
request: every 4xx) is INFO, a fault of an upstream, identity provider or
service (502, 504, a provider's odd answer) is WARNING, and only the
gateway's own faults (:class:`InternalError`: a config defect, a bug) are
ERROR. A 401 is not a server error, so it must not page anyone.
"""

from __future__ import annotations

import re
from typing import Final

from ._actions import LogLevel
from ._json import dumps

__all__ = [
    "AuthError",
    "BodyTooLarge",
    "ConfigDefect",
    "GatewayError",
    "IllegalTransition",
    "InternalError",
    "NoRouteMatched",
    "UpstreamError",
    "error_body",
    "mask_credentials",
    "mask_url",
]


class GatewayError(Exception):
    """An answer the gateway gives instead of the one the client asked for.

    Rendered as ``{"error": message, "code": code}`` with ``status``.
    """

    status: int = 500
    code: str = "INTERNAL_ERROR"
    #: The level of the ``log`` line; ``None``: INFO below 500, else WARNING.
    log_level: LogLevel | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        log: str | None = None,
        level: LogLevel | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        #: Extra detail for the operator's log only, never for the client.
        self.log = log
        if level is not None:
            self.log_level = level

    @property
    def level(self) -> LogLevel:
        """The level to log :attr:`log` at (module docstring)."""
        if self.log_level is not None:
            return self.log_level
        return LogLevel.INFO if self.status < 500 else LogLevel.WARNING

    def body(self) -> bytes:
        return dumps({"error": self.message, "code": self.code})


class AuthError(GatewayError):
    """An authorizer refused the request (401 unless stated)."""

    status = 401
    code = "AUTH_ERROR"


class UpstreamError(GatewayError):
    """*New*: an ``http_proxy`` upstream could not be reached or answered too slowly."""

    status = 502
    code = "UPSTREAM_ERROR"


class BodyTooLarge(GatewayError):
    """*New*: the request body is over the configured limit."""

    status = 413
    code = "BODY_TOO_LARGE"

    def __init__(self) -> None:
        super().__init__("Request body too large")


class _FixedBodyError(GatewayError):
    """Errors whose body is the original's ``{"message": ...}`` shape."""

    fixed_body: bytes = b""

    def body(self) -> bytes:
        return self.fixed_body


class NoRouteMatched(_FixedBodyError):
    status = 404
    code = "NOT_FOUND"
    fixed_body = dumps({"message": "No match found."})

    def __init__(self) -> None:
        super().__init__("No match found.")


class InternalError(_FixedBodyError):
    """500 ``{"message":"Internal server error"}``; the reason goes to the log only."""

    status = 500
    code = "INTERNAL_ERROR"
    log_level = LogLevel.ERROR
    fixed_body = dumps({"message": "Internal server error"})

    def __init__(self, log: str, *, level: LogLevel | None = None) -> None:
        super().__init__("Internal server error", log=log, level=level)


class ConfigDefect(InternalError):
    """A route the config left broken (fail closed): 500 and the cause in the log."""


class IllegalTransition(Exception):
    """A transport fed an event the core did not ask for. A bug; never a response."""

    def __init__(self, request_id: int | None, state: str, event: object) -> None:
        super().__init__(
            f"request {request_id}: {type(event).__name__} is not expected in state {state}"
        )
        self.request_id = request_id
        self.state = state
        self.event = event


def error_body(exc: GatewayError) -> bytes:
    return exc.body()


# scheme://userinfo@ : the userinfo ends at the last "@" of the authority (as WHATWG reads
# it). A password with a raw "/" (not valid, yet urlsplit reads it) is the second form.
_USERINFO: Final = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?:(?P<info>[^\s'\"/?#]*)|(?P<slashed>[^\s'\"/?#@:]*:[^\s'\"@?#]*))@"
)


def _mask(found: re.Match[str]) -> str:
    info = found.group("info") or found.group("slashed") or ""
    user, colon, _ = info.partition(":")
    return (
        f"{found.group('scheme')}{user}:***@" if colon and user else f"{found.group('scheme')}***@"
    )


def mask_url(url: str) -> str:
    """``url`` with its credentials masked, for output: ``https://user:***@host/x``.

    A password is replaced by ``***``; a userinfo with no password (often a token, as in
    ``https://TOKEN@host``) is replaced whole. A URL without userinfo comes back unchanged.
    Pure and cheap; the CLI's ``routes`` output and every message the core builds use it.
    """
    if "@" not in url:
        return url
    return _USERINFO.sub(_mask, url)


def mask_credentials(text: str) -> str:
    """Every URL in ``text`` with its credentials masked (:func:`mask_url`)."""
    return mask_url(text)
