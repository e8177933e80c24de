"""Actions: what the core asks the transport to do, returned by :meth:`Gateway.handle`.

Each action that needs an outcome names the events that may answer it; the
transport feeds exactly one of them back with the same ``request_id``:

===================  =============================================
action               answered by
===================  =============================================
ForwardUpstream      UpstreamResponded, or ActionFailed
ReadBody             BodyReceived, or ActionFailed
SendHTTP             HTTPResponseReceived, or ActionFailed
Respond              nothing: the request is finished
RelayResponse        nothing: the transport relays the upstream body
Log                  nothing
===================  =============================================
"""

from __future__ import annotations

import enum

import attrs

from ._events import Headers

__all__ = [
    "Action",
    "ForwardUpstream",
    "Log",
    "LogLevel",
    "ReadBody",
    "RelayResponse",
    "Respond",
    "SendHTTP",
]


class Action:
    """Base class of every action."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class Respond(Action):
    """Send this whole response to the client. Final for the request."""

    request_id: int
    status: int
    headers: Headers
    body: bytes = b""


@attrs.frozen(kw_only=True)
class ForwardUpstream(Action):
    """Send the client's request upstream, streaming its body as it arrives.

    The transport must not follow redirects and must not add headers other
    than ``Host`` (from ``url``) and the framing it needs (``Content-Length``
    or chunked ``Transfer-Encoding``, taken from the client's framing).

    Fields:
        url: absolute ``http``/``https`` URL, query included.
        headers: the complete header list to send (hop-by-hop ones already gone).
        body_limit: bytes of client body allowed (0: no limit); over it the
            transport answers :class:`ActionFailed` with ``BODY_TOO_LARGE``.
        connect_timeout, read_timeout: seconds.
    """

    request_id: int
    method: str
    url: str
    headers: Headers
    body_limit: int
    connect_timeout: float
    read_timeout: float


@attrs.frozen(kw_only=True)
class RelayResponse(Action):
    """Send this head, then the body of the upstream response as it arrives.

    Final for the request. The status and headers are the upstream's,
    already decorated (CORS, X-Powered-By) and stripped of hop-by-hop headers.
    """

    request_id: int
    status: int
    headers: Headers


@attrs.frozen(kw_only=True)
class ReadBody(Action):
    """Read the client's whole request body (at most ``limit`` bytes)."""

    request_id: int
    limit: int


@attrs.frozen(kw_only=True)
class SendHTTP(Action):
    """Make one buffered outbound HTTP call (Auth0, Supabase and the like)."""

    request_id: int
    method: str
    url: str
    headers: Headers
    body: bytes = b""
    timeout: float = 10.0


class LogLevel(enum.IntEnum):
    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


@attrs.frozen(kw_only=True)
class Log(Action):
    """A diagnostic for the operator. Never holds secrets or credentials."""

    level: LogLevel
    message: str
    request_id: int | None = None
