"""Actions: what the core asks the transport to do, returned by :meth:`Gateway.handle`.

Each action that needs an outcome names the events that may answer it; the
transport feeds exactly one of them back with the same ``request_id``:

===================  =============================================
action               answered by
===================  =============================================
ForwardUpstream      UpstreamResponded, or ActionFailed
ReadBody             BodyReceived, or ActionFailed
SendHTTP             HTTPResponseReceived, or ActionFailed
CallService          ServiceReturned, or ActionFailed
Respond              nothing: the request is finished
RelayResponse        nothing: the transport relays the upstream body
OpenTunnel           nothing: the transport relays bytes both ways
Log                  nothing
===================  =============================================
"""

from __future__ import annotations

import enum

import attrs

from ._events import Headers

__all__ = [
    "Action",
    "CallService",
    "ForwardUpstream",
    "Log",
    "LogLevel",
    "OpenTunnel",
    "ReadBody",
    "RelayResponse",
    "Respond",
    "SendHTTP",
    "ServiceContext",
    "ServiceKind",
    "ServiceRequest",
    "ServiceStage",
]


class Action:
    """Base class of every action."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class Respond(Action):
    """Send this whole response to the client. Final for the request.

    ``route`` names the matched route (``"GET /a/{id}"``) for the access log;
    ``""`` when no route matched.
    """

    request_id: int
    status: int
    headers: Headers
    body: bytes = b""
    route: str = ""


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
        body: ``None``: stream the client's body. Bytes: the body was already
            read (a ``pre_process`` hook needed it); send exactly these, framed
            with ``Content-Length``, and read nothing more from the client.
        upgrade: a WebSocket handshake (``headers`` carry ``Upgrade`` and
            ``Connection: upgrade``; the request has no body). A ``101`` answer is
            then :class:`UpstreamResponded` with status 101, after which the
            transport keeps the upstream connection out of its pool, raw, for the
            :class:`OpenTunnel` that follows; any other answer is an ordinary one.
    """

    request_id: int
    method: str
    url: str
    headers: Headers
    body_limit: int
    connect_timeout: float
    read_timeout: float
    body: bytes | None = None
    upgrade: bool = False


@attrs.frozen(kw_only=True)
class RelayResponse(Action):
    """Send this head, then the body of the upstream response as it arrives.

    Final for the request. The status and headers are the upstream's,
    already decorated (CORS, X-Powered-By) and stripped of hop-by-hop headers.
    ``route`` names the matched route, for the access log.
    """

    request_id: int
    status: int
    headers: Headers
    route: str = ""


@attrs.frozen(kw_only=True)
class OpenTunnel(Action):
    """Answer ``101 Switching Protocols`` with these headers, then relay bytes both ways.

    Final for the request, and for the client connection: after the head the
    connection is no longer HTTP. It follows a :class:`ForwardUpstream` with
    ``upgrade`` that the upstream answered 101. The transport sends the head
    (``ServerConnection.send_switch``), then copies bytes between the client
    and that upstream connection, each way with backpressure, the bytes that
    either side sent after its head first, until either side closes or no byte
    moved either way for the transport's idle timeout; then it closes both.
    The headers are the upstream's ``Upgrade``, ``Connection`` and
    ``Sec-WebSocket-*`` ones, decorated (CORS, X-Powered-By). ``route`` names
    the matched route, for the access log.
    """

    request_id: int
    headers: Headers
    route: str = ""


@attrs.frozen(kw_only=True)
class ReadBody(Action):
    """Read the client's whole request body (at most ``limit`` bytes)."""

    request_id: int
    limit: int


@attrs.frozen(kw_only=True)
class SendHTTP(Action):
    """Make one buffered outbound HTTP call (Auth0, Supabase and the like).

    ``max_body`` caps the answer's body: a transport stops reading past it and answers
    :class:`ActionFailed` (``RESET``, "answer larger than N bytes"), which each caller
    maps to its provider's unreachable answer. The core decides it because the core knows
    what it asked for (a JWKS, a token answer: small JSON) and because every transport,
    and a trace's replay, then apply the same bound.
    """

    request_id: int
    method: str
    url: str
    headers: Headers
    body: bytes = b""
    timeout: float = 10.0
    max_body: int = 4 * 1024 * 1024


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


class ServiceKind(enum.Enum):
    """Where the callable of a :class:`CallService` comes from."""

    #: ``services[].entrypoint``: code named by the config (``target`` is the entrypoint).
    SERVICE = "service"
    #: ``serviceBindings[].binding``: an object provided at start-up (``target`` is its name).
    BINDING = "binding"


class ServiceStage(enum.Enum):
    """Why the core calls a service (for logs; the call itself is the same)."""

    INTEGRATION = "integration"
    PRE_PROCESS = "pre_process"
    POST_PROCESS = "post_process"


@attrs.frozen(kw_only=True)
class ServiceRequest:
    """A snapshot of the client's request, as services see it (read-only by construction).

    Fields:
        method: as normalised for routing.
        url: the absolute URL (``scheme://host/path?query``).
        path: the normalised, still percent-encoded path.
        params: path parameters of the matched route, ``(name, raw segment)``.
        query: the query decoded as ``URLSearchParams`` does, in order.
        headers: lower-cased names, in arrival order.
        body: the whole body (``b""`` when the request has none).
    """

    method: str
    url: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    headers: Headers = ()
    body: bytes = b""


@attrs.frozen(kw_only=True)
class ServiceContext:
    """What a service learns about the gateway's decision: never the config or secrets.

    Fields:
        route_method, route_path: the matched route as configured.
        claims: the verified token claims as JSON text; ``None`` when the
            route has no authorizer check.
    """

    route_method: str
    route_path: str
    claims: str | None = None


@attrs.frozen(kw_only=True)
class CallService(Action):
    """Call a Python service: ``callable(request, env, ctx)``.

    The transport resolves ``target`` (by ``kind``), takes its attribute
    ``function``, calls it (sync callables in a worker thread, async ones
    awaited), and answers :class:`ServiceReturned` with the normalised
    return value, or :class:`ActionFailed` with ``SERVICE_ERROR`` (it raised,
    or cannot be loaded) or ``TIMEOUT`` (``timeout`` seconds passed).

    Fields:
        kind, target: ``SERVICE`` and the entrypoint, or ``BINDING`` and the
            binding name (``serviceBindings[].binding``).
        alias: the config alias that led here (for logs).
        function: the attribute to call (``fetch`` for services).
        stage: integration, ``pre_process`` or ``post_process``.
        request, context: what the callable receives (besides ``env``, which
            the transport supplies: secrets never travel in actions).
        timeout: seconds.
    """

    request_id: int
    kind: ServiceKind
    target: str
    alias: str
    function: str
    stage: ServiceStage
    request: ServiceRequest
    context: ServiceContext
    timeout: float
