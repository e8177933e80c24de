"""The ASGI adapter: the gateway as an ASGI 3 application, for uvicorn, hypercorn or granian.

    SAPG_CONFIG=gateway.json uvicorn --factory transports.asgi:create_app \\
        --workers 4 --http httptools --no-access-log

The ASGI server owns the wire (parsing, keep-alive, header limits, timeouts,
signals, worker processes); this module is the rest of a driver, with the same
shape and method names as the others: each ``http`` scope becomes a
``RequestReceived``, ``gateway.handle`` is called, each action is carried out by
the executor for its type and its outcome is fed back. Request bodies are read
from ``receive()`` as the core asks for them, streamed upstream for proxied
routes; proxied response bodies are streamed back with ``more_body``. The
outbound executor is :class:`Outbound` (our own HTTP/1.1 client, here on asyncio
streams), opened and closed with the ``lifespan`` protocol (or on first use where
the server has no lifespan). No policy lives here.

Limits. The server parses, but its limits are not ours (uvicorn with httptools
forwards a head of any size and waits for a body for ever), so the adapter
enforces the native drivers' rules on what the scope shows, before the core sees
the request: a head (request line and fields, measured from the scope) over
``max_header_bytes`` is answered 431, a declared body over ``max_body_bytes`` 413
(a streamed one when it passes the limit), a request with both ``Content-Length``
and ``Transfer-Encoding`` 400; each of these JSON, with ``Connection: close``. Each
wait for a body chunk has the :meth:`Timeouts.body_deadline` of the native drivers
(``read`` between chunks, ``min_body_rate`` after a grace); the header timeout is
the server's, which owns the wire. A body that misses its deadline, or whose
reading fails in the server, is never a complete upstream request: the upstream
exchange is aborted, the core sees ``RequestAborted``, and the client gets 408 or
400 with ``Connection: close``.

Configuration comes from :func:`create_app`'s arguments or the environment:
``SAPG_CONFIG`` (a config file; else ``SAG_API_CONFIG_JSON``, as ``sapg
serve``), ``SAPG_MAX_BODY_SIZE``, ``SAPG_BINDINGS`` (``NAME=pkg.mod:obj``
entries separated by commas, as ``sapg serve --binding``),
``SAPG_SERVICE_TIMEOUT``, ``SAG_STRICT_CONFIG``, ``SAPG_LOG_LEVEL``,
``SAPG_LOG_FORMAT``, ``SAPG_MAX_HEADER_SIZE``, ``SAPG_READ_TIMEOUT`` and
``SAPG_MIN_BODY_RATE``, ``SAPG_FORWARDED_ALLOW_IPS`` (as ``sapg serve``'s options of
those names; the client address is the server's ``scope["client"]``). Each worker
process builds its own gateway and loads its own services.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import os
import secrets
import time
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
)
from typing import Any, Final

import anyio
import anyio.abc
import attrs
from wsproto import ConnectionType
from wsproto.connection import Connection as WSFraming
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from sapg_core import (
    DEFAULT_FORWARDED_ALLOW_IPS,
    Action,
    ActionFailed,
    BodyReceived,
    CallService,
    Event,
    FailureReason,
    ForwardUpstream,
    Gateway,
    GatewayError,
    Headers,
    Log,
    OpenTunnel,
    ReadBody,
    RelayResponse,
    RequestAborted,
    RequestHead,
    Respond,
    SendHTTP,
    ServerLimits,
    TrustedProxies,
)

from ._async_driver import AsyncExchange, execute_actions, given_body
from ._common import (
    ClientBodyError,
    Exchanges,
    GatewayLike,
    Loaded,
    Timeouts,
    entropy,
    identify,
    log_action,
    request_received,
    upstream_origin,
)
from ._logging import configure_logging, flush_access_log, log_access
from ._outbound import Outbound, OutboundError
from ._services import ServiceRegistry, call_service, parse_binding

__all__ = ["GatewayApp", "create_app"]

logger = logging.getLogger("sapg")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_FRAMING: Final = ("content-length", "transfer-encoding")
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_WATCH_FROM: Final = 256 * 1024  # relayed bodies larger than this stop when the client leaves


class ClientGone(Exception):
    """The ASGI server reported the client's disconnect."""


class _Request:
    """One ASGI ``http`` scope: the adapter's stand-in for a driver's connection."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.is_broken = False  # the client left, or the answer broke off: send nothing more
        self.is_started = False  # http.response.start is sent
        self.refusal: tuple[int, str, str] | None = None  # the client's fault, answered at the end

    async def start(self, status: int, headers: Headers) -> None:
        self.is_started = True
        await self.send(
            {"type": "http.response.start", "status": status, "headers": _encode(headers)}
        )


#: What the adapter answers itself (the native drivers' ProtocolFailure answers, and 408).
_REFUSALS: Final = {
    400: ("Malformed HTTP request", "BAD_REQUEST"),
    408: ("Request body timed out", "REQUEST_TIMEOUT"),
    413: ("Request body too large", "BODY_TOO_LARGE"),
    431: ("Request header fields too large", "HEADERS_TOO_LARGE"),
}


def _head_size(scope: Scope) -> int:
    """The request head's size on the wire, as the native parsers measure it: the request
    line and each ``name: value`` line with its CRLF, and the blank line."""
    target = len(scope.get("raw_path") or scope["path"].encode("utf-8"))
    query = len(scope.get("query_string") or b"")
    line = len(scope["method"]) + 1 + target + (query + 1 if query else 0) + 11
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2


def _refusal(scope: Scope, limits: ServerLimits) -> tuple[int, str] | None:
    """The native drivers' answer to a head they refuse before the core sees it, and why."""
    size = _head_size(scope)
    if limits.max_header_bytes and size > limits.max_header_bytes:
        return 431, f"request head of {size} bytes is over the limit"
    names = [name.lower() for name, _ in scope["headers"]]
    if b"content-length" in names and b"transfer-encoding" in names:
        return 400, "both Content-Length and Transfer-Encoding"
    if limits.max_body_bytes:
        for name, value in scope["headers"]:
            declared = value.strip()
            too_large = declared.isdigit() and int(declared) > limits.max_body_bytes
            if name.lower() == b"content-length" and too_large:
                return 413, f"declared body of {int(declared)} bytes is over the limit"
    return None


def _request_head(scope: Scope) -> RequestHead:
    # ASGI servers give lower-case names as bytes (RequestReceived lower-cases anyway).
    headers: Headers = tuple(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    )
    raw_path = scope.get("raw_path")
    path = (
        bytes(raw_path).decode("latin-1")
        if raw_path
        else urllib.parse.quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")
    )
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    version = str(scope.get("http_version", "1.1"))
    return RequestHead(
        method=scope["method"],
        target=f"{path}?{query}" if query else path,
        headers=headers,
        http_version=version,
        keep_alive=True,
        content_length=_content_length(scope["method"], headers, version),
    )


def _content_length(method: str, headers: Headers, version: str) -> int | None:
    """The declared body length; None where the body's end is not known up front."""
    for name, value in headers:
        if name == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    if any(name == "transfer-encoding" for name, _ in headers):
        return None
    # HTTP/2 and 3 need no Content-Length for a body; HTTP/1.x without one has none.
    return None if version[:1] in ("2", "3") and method not in _NO_BODY_METHODS else 0


def _worth_watching(headers: Headers, exchange: AsyncExchange) -> bool:
    """Whether to watch for the client leaving while a response body is relayed.

    Only once the request body is read (``receive()`` has nothing else to
    give), and only for bodies that are large or of unknown length: a watcher
    task costs more than relaying a small body to nobody.
    """
    if not (exchange.is_body_done or exchange.content_length == 0):
        return False
    for name, value in headers:
        if name == "content-length":
            return not value.isdigit() or int(value) > _WATCH_FROM
    return True


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _client(scope: Scope) -> str:
    """The peer's address as the server gives it (uvicorn's proxy headers may have replaced
    it with a forwarded one: see docs/transports.md)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class _WebSocket(_Request):
    """One ASGI ``websocket`` scope; ``key`` is the handshake key the adapter sent upstream."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        self.key = b""


#: Handshake request fields the adapter writes itself towards the upstream.
_WS_HANDSHAKE: Final = frozenset(
    (
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"content-length",
        b"transfer-encoding",
    )
)
_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Handshake answer fields the ASGI server writes itself on ``websocket.accept``.
_WS_OWN: Final = frozenset(
    (
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    )
)


def _websocket_head(scope: Scope) -> tuple[RequestHead, bytes]:
    """A ``websocket`` scope's handshake as the GET request head it was, and our key.

    The server consumed the handshake fields (``Upgrade``, ``Connection``,
    ``Sec-WebSocket-*``) and answers the client itself; towards the upstream the
    adapter is the WebSocket client, so it writes them anew: a fresh key, version
    13, the client's subprotocols, and no extension (it frames the messages itself).
    """
    key = base64.b64encode(secrets.token_bytes(16))
    kept = [(n, v) for n, v in scope["headers"] if n.lower() not in _WS_HANDSHAKE]
    kept += [
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
        (b"sec-websocket-key", key),
        (b"sec-websocket-version", b"13"),
    ]
    subprotocols = scope.get("subprotocols") or []
    if subprotocols:
        kept.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
    return _request_head({**scope, "method": "GET", "headers": kept}), key


def _accepts(headers: Headers, key: bytes) -> bool:
    """Whether the upstream's 101 answers our key (RFC 6455 §4.2.2)."""
    expected = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode("ascii")
    return any(n == "sec-websocket-accept" and v.strip() == expected for n, v in headers)


def _ws_message(parts: list[str | bytes | bytearray]) -> Message:
    """One whole message (its frames joined) as a ``websocket.send``."""
    if parts and isinstance(parts[0], str):
        return {"type": "websocket.send", "text": "".join(str(part) for part in parts)}
    return {"type": "websocket.send", "bytes": b"".join(bytes(part) for part in parts)}  # type: ignore[arg-type]


def _sendable(code: int | None) -> int:
    """A close code that may go in a close frame (1005, 1006 and 1015 may not: RFC 6455 §7.4.1)."""
    if code is None or code in (1005, 1006, 1015) or not 1000 <= code <= 4999:
        return 1000
    return int(code)


class _MessageRelay:
    """A WebSocket under ASGI: the client's messages as frames to the upstream and back.

    The ASGI server frames the client's side; wsproto (its frame layer, the
    handshake being done) frames the upstream's, over our outbound connection.
    Three tasks: each direction, and a watchdog that closes both sides (1001)
    once nothing moved for ``idle`` seconds. Close codes pass both ways (those
    that may not be sent in a frame become 1000); an upstream that just goes
    away closes the client with 1011. When any task ends, the others stop.
    """

    def __init__(self, request: _WebSocket, stream: Any, idle: float) -> None:
        self.request, self.stream, self.idle = request, stream, idle
        self.framing = WSFraming(ConnectionType.CLIENT)
        self.last = anyio.current_time()

    async def run(self, first: bytes, request_id: int) -> None:
        """Relay until either side closes; ``first``: the upstream's bytes after its 101."""
        if first:
            self.framing.receive_data(first)
        async with anyio.create_task_group() as group:
            for pump in (self._upward, self._downward, self._watchdog):
                group.start_soon(self._guard, pump, group, request_id)

    @staticmethod
    async def _guard(
        pump: Callable[[], Awaitable[None]], group: anyio.abc.TaskGroup, request_id: int
    ) -> None:
        try:
            await pump()
        except Exception as exc:  # one side broke off (reset, closed, a protocol error)
            logger.debug("request %d: WebSocket relay ended: %r", request_id, exc)
        finally:
            group.cancel_scope.cancel()

    async def _upward(self) -> None:
        """The client's messages, framed towards the upstream."""
        framing, stream = self.framing, self.stream
        while True:
            message = await self.request.receive()
            self.last = anyio.current_time()
            if message["type"] == "websocket.receive":
                if message.get("text") is not None:
                    data = framing.send(TextMessage(data=message["text"]))
                else:
                    data = framing.send(BytesMessage(data=message.get("bytes") or b""))
                await stream.send(data)
            elif message["type"] == "websocket.disconnect":
                code = _sendable(message.get("code"))
                with contextlib.suppress(Exception):
                    await stream.send(framing.send(CloseConnection(code=code)))
                return

    async def _downward(self) -> None:
        """The upstream's frames, as the client's messages."""
        framing, stream, send = self.framing, self.stream, self.request.send
        parts: list[str | bytes | bytearray] = []
        while True:
            for event in framing.events():
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        await send(_ws_message(parts))
                        parts = []
                elif isinstance(event, Ping):
                    await stream.send(framing.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        await stream.send(framing.send(event.response()))
                    code, reason = _sendable(event.code), event.reason or ""
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
            data = await stream.receive()
            self.last = anyio.current_time()
            if not data:
                await send({"type": "websocket.close", "code": 1011})
                return
            framing.receive_data(data)

    async def _watchdog(self) -> None:
        while (due := self.last + self.idle) > anyio.current_time():
            await anyio.sleep_until(due)
        with contextlib.suppress(Exception):
            await self.stream.send(self.framing.send(CloseConnection(code=1001)))
        await self.request.send({"type": "websocket.close", "code": 1001})


class GatewayApp:
    """An ASGI 3 application that drives one gateway; build it with :func:`create_app`.

    Args:
        gateway: the core to drive.
        outbound: the upstream executor (default: opened at lifespan startup,
            or on first use, and closed at lifespan shutdown).
        services: what ``CallService`` actions call (see :func:`transports.load_services`;
            default: none, so those routes answer 500). :meth:`aclose` closes it.
        limits: the head and body limits the native drivers apply (see the module).
        timeouts: ``read`` and ``min_body_rate`` bound each wait for a body chunk.
    """

    def __init__(
        self,
        gateway: GatewayLike,
        *,
        outbound: Outbound | None = None,
        services: ServiceRegistry | None = None,
        limits: ServerLimits | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.serving = Loaded(gateway, services if services is not None else ServiceRegistry())
        self.outbound = outbound
        self.limits = limits if limits is not None else ServerLimits()
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self._exchanges = Exchanges()
        self._executors: dict[type[Action], Callable[..., Awaitable[Event | None]]] = {
            Respond: self._respond,
            ForwardUpstream: self._forward,
            RelayResponse: self._relay,
            ReadBody: self._read_body,
            SendHTTP: self._send_http,
            Log: self._log,
            CallService: self._call_service,
        }
        self._ws_executors: dict[type[Action], Callable[..., Awaitable[Event | None]]] = {
            **self._executors,
            Respond: self._ws_respond,
            ForwardUpstream: self._ws_forward,
            RelayResponse: self._ws_relay,
            OpenTunnel: self._ws_tunnel,
            ReadBody: self._ws_read_body,
        }

    @property
    def gateway(self) -> GatewayLike:
        return self.serving.gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle_request(_Request(scope, receive, send))
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._handle_websocket(_WebSocket(scope, receive, send))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._outbound()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        # uvicorn ends by re-raising SIGTERM, so the exit-time flush may never run: write
        # the queued access lines at the lifespan shutdown, while the process still can.
        flush_access_log()
        if self.outbound is not None:
            await self.outbound.aclose()
            self.outbound = None
        self.serving.services.close()

    def _outbound(self) -> Outbound:
        if self.outbound is None:
            self.outbound = Outbound()
        return self.outbound

    # -- one request ---------------------------------------------------------------------

    async def _handle_request(self, request: _Request) -> None:
        refused = _refusal(request.scope, self.limits)
        if refused is not None:
            status, detail = refused
            logger.info("protocol failure from %s (%d): %s", _peer(request.scope), status, detail)
            await self._refuse(request, status)
            return
        head = _request_head(request.scope)
        exchange = AsyncExchange(self.serving, head)
        self._exchanges.add(exchange)
        event = request_received(
            head,
            request_id=exchange.request_id,
            now=time.time(),
            entropy=entropy(),
            scheme=str(request.scope.get("scheme", "http")),
            client=_client(request.scope),
        )
        identify(exchange, event)
        try:
            await self._execute(request, exchange, exchange.gateway.handle(event))
        except ClientGone:
            request.is_broken = True
        finally:
            await self._close_exchange(exchange)
        if request.refusal is not None and not request.is_started:
            status, detail, peer = request.refusal
            logger.info("request %d from %s: %s", exchange.request_id, peer, detail)
            await self._refuse(request, status)

    async def _close_exchange(self, exchange: AsyncExchange) -> None:
        """The end of every exchange (HTTP or WebSocket), however it ended: a request the core
        still holds is aborted, the access line is queued and the upstream released."""
        self._exchanges.discard(exchange)
        if not exchange.is_finished:
            aborted = RequestAborted(request_id=exchange.request_id, now=time.time())
            self._exchanges.deliver(exchange, exchange.gateway.handle(aborted))
        log_access(exchange)
        if exchange.upstream is not None:
            await exchange.upstream.aclose()

    async def _refuse(self, request: _Request, status: int) -> None:
        """Answer ``status`` as the native drivers answer a protocol failure: JSON, and the
        connection closes after it."""
        message, code = _REFUSALS[status]
        body = GatewayError(message, status=status, code=code).body()
        headers = (
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-powered-by", "sapg"),
            ("connection", "close"),
        )
        try:
            await request.start(status, headers)
            await request.send({"type": "http.response.body", "body": body})
        except Exception:  # the server gave up on this connection: nothing left to say
            request.is_broken = True

    async def _execute(
        self, request: _Request, exchange: AsyncExchange, actions: list[Action]
    ) -> None:
        await execute_actions(self._exchanges, self._executors, request, exchange, actions)

    # -- executors, one per action type ------------------------------------------------------

    async def _respond(self, request: _Request, exchange: AsyncExchange, action: Respond) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        headers = [pair for pair in action.headers if pair[0] not in _FRAMING]
        if action.status == 304:
            headers = [pair for pair in action.headers if pair[0] != "transfer-encoding"]
        elif action.status != 204:
            headers.append(("content-length", str(len(action.body))))
        await request.start(action.status, tuple(headers))
        await request.send({"type": "http.response.body", "body": action.body})

    async def _forward(
        self, request: _Request, exchange: AsyncExchange, action: ForwardUpstream
    ) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        if action.body is None:
            body = self._client_body(request, exchange, action.body_limit)
            content_length = exchange.content_length
        else:  # already read (for a hook): exactly these bytes, nothing more from the client
            body, content_length = given_body(action.body), len(action.body)
        try:
            result = await self._outbound().forward(action, body, content_length=content_length)
        finally:
            await body.aclose()
        if exchange.is_finished:  # the client went away while we streamed its body
            return RequestAborted(request_id=exchange.request_id, now=time.time())
        if isinstance(result, ActionFailed):
            return result
        event, exchange.upstream = result
        return event

    async def _relay(
        self, request: _Request, exchange: AsyncExchange, action: RelayResponse
    ) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: RelayResponse without an upstream")
        headers = [pair for pair in action.headers if pair[0] != "transfer-encoding"]
        await request.start(action.status, tuple(headers))
        with anyio.CancelScope() as relay:
            async with anyio.create_task_group() as watchers:
                if _worth_watching(action.headers, exchange):
                    watchers.start_soon(self._watch_disconnect, request, relay)
                try:
                    async for chunk in upstream:
                        await request.send(
                            {"type": "http.response.body", "body": chunk, "more_body": True}
                        )
                except OutboundError as exc:  # the head is out: breaking off is all that is left
                    logger.warning(
                        "request %d: upstream body broke off (%s): %s",
                        exchange.request_id,
                        exc.reason.value,
                        exc.detail,
                    )
                    request.is_broken = True
                watchers.cancel_scope.cancel()
        if relay.cancelled_caught or request.is_broken:
            return  # an unfinished response: the server closes the connection
        await request.send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _abort_body(request: _Request, exchange: AsyncExchange, status: int, detail: str) -> None:
        """The body will not come whole: the core gets ``RequestAborted`` (never a truncated
        body), and the client ``status`` once the request is done."""
        exchange.is_body_done = exchange.is_finished = True
        request.refusal = (status, detail, _peer(request.scope))

    async def _watch_disconnect(self, request: _Request, relay: anyio.CancelScope) -> None:
        """Stop relaying if the client leaves (the request body is read: only that can come)."""
        message = await request.receive()
        if message["type"] == "http.disconnect":
            request.is_broken = True
            relay.cancel()

    async def _read_body(
        self, request: _Request, exchange: AsyncExchange, action: ReadBody
    ) -> Event:
        chunks: list[bytes] = []
        try:
            async for chunk in self._client_body(request, exchange, action.limit):
                chunks.append(chunk)
        except ClientBodyError as exc:
            if exc.aborted:
                return RequestAborted(request_id=exchange.request_id, now=time.time())
            return ActionFailed(
                request_id=exchange.request_id,
                reason=exc.reason,
                detail=exc.detail,
                now=time.time(),
            )
        return BodyReceived(request_id=exchange.request_id, body=b"".join(chunks), now=time.time())

    async def _send_http(
        self, request: _Request, exchange: AsyncExchange, action: SendHTTP
    ) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        return await self._outbound().send(action)

    async def _log(self, request: _Request, exchange: AsyncExchange, action: Log) -> None:
        log_action(exchange, action)

    async def _call_service(
        self, request: _Request, exchange: AsyncExchange, action: CallService
    ) -> Event:
        return await call_service(
            action, exchange.services, env=os.environ, request_id=exchange.x_request_id
        )

    # -- WebSockets: the handshake through the core, then messages both ways ---------------

    async def _handle_websocket(self, request: _WebSocket) -> None:
        """A ``websocket`` scope: the handshake is a request like any other.

        The core decides (CORS, route, authorizer, ``ForwardUpstream(upgrade=True)``);
        a 101 from the upstream (:class:`OpenTunnel`) accepts the client's WebSocket and
        relays messages both ways, wsproto framing them towards the upstream over our
        outbound connection. Any other answer rejects the handshake with that answer
        (``websocket.http.response`` where the server offers it, else close 1008).
        """
        message = await request.receive()
        if message["type"] != "websocket.connect":
            return
        head, request.key = _websocket_head(request.scope)
        exchange = AsyncExchange(self.serving, head)
        self._exchanges.add(exchange)
        event = request_received(
            head,
            request_id=exchange.request_id,
            now=time.time(),
            entropy=entropy(),
            scheme="https" if request.scope.get("scheme") == "wss" else "http",
            client=_client(request.scope),
        )
        identify(exchange, event)
        try:
            await execute_actions(
                self._exchanges,
                self._ws_executors,
                request,
                exchange,
                exchange.gateway.handle(event),
            )
        except ClientGone:
            request.is_broken = True
        finally:
            await self._close_exchange(exchange)

    async def _ws_forward(
        self, request: _WebSocket, exchange: AsyncExchange, action: ForwardUpstream
    ) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        if action.upgrade:  # we frame the messages ourselves: no extension towards the upstream
            headers = tuple(h for h in action.headers if h[0] != "sec-websocket-extensions")
            action = attrs.evolve(action, headers=headers)
        result = await self._outbound().forward(action, given_body(b""), content_length=0)
        if isinstance(result, ActionFailed):
            return result
        event, exchange.upstream = result
        return event

    async def _ws_read_body(
        self, request: _WebSocket, exchange: AsyncExchange, action: ReadBody
    ) -> Event:
        return BodyReceived(request_id=exchange.request_id, body=b"", now=time.time())

    async def _ws_reject(
        self, request: _WebSocket, status: int, headers: Headers, body: AsyncIterable[bytes]
    ) -> None:
        if "websocket.http.response" not in request.scope.get("extensions", {}):
            await request.send({"type": "websocket.close", "code": 1008})
            return
        await request.send(
            {"type": "websocket.http.response.start", "status": status, "headers": _encode(headers)}
        )
        async for chunk in body:
            await request.send(
                {"type": "websocket.http.response.body", "body": chunk, "more_body": True}
            )
        await request.send({"type": "websocket.http.response.body", "body": b""})

    async def _ws_respond(
        self, request: _WebSocket, exchange: AsyncExchange, action: Respond
    ) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        headers = [pair for pair in action.headers if pair[0] not in _FRAMING]
        headers.append(("content-length", str(len(action.body))))
        await self._ws_reject(request, action.status, tuple(headers), given_body(action.body))

    async def _ws_relay(
        self, request: _WebSocket, exchange: AsyncExchange, action: RelayResponse
    ) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: RelayResponse without an upstream")
        headers = tuple(pair for pair in action.headers if pair[0] != "transfer-encoding")
        try:
            await self._ws_reject(request, action.status, headers, upstream)
        except OutboundError:
            request.is_broken = True

    async def _ws_tunnel(
        self, request: _WebSocket, exchange: AsyncExchange, action: OpenTunnel
    ) -> None:
        """Accept the client, then relay messages (and close codes) both ways until either
        side closes or nothing moves for the idle timeout (then close 1001 both ways)."""
        exchange.is_finished = True
        exchange.status, exchange.route = 101, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: OpenTunnel without an upstream")
        stream, first = upstream.take_tunnel()
        if not _accepts(action.headers, request.key):
            logger.warning("request %d: upstream 101 does not answer our key", exchange.request_id)
            await request.send({"type": "websocket.close", "code": 1011})
            return
        subprotocol = next((v for n, v in action.headers if n == "sec-websocket-protocol"), None)
        extra = tuple(pair for pair in action.headers if pair[0] not in _WS_OWN)
        await request.send(
            {"type": "websocket.accept", "subprotocol": subprotocol, "headers": _encode(extra)}
        )
        relay = _MessageRelay(request, stream, self.timeouts.idle)
        await relay.run(first, exchange.request_id)

    # -- the request body ------------------------------------------------------------------

    async def _client_body(
        self, request: _Request, exchange: AsyncExchange, limit: int
    ) -> AsyncGenerator[bytes, None]:
        """The request body from ``receive()``; raises :class:`ClientBodyError` on failure.

        Each wait has the native drivers' deadline (:meth:`Timeouts.body_deadline`); a
        missed one, or a failure of the server's own reading, aborts the request (the
        client is answered 408 or 400 once the core is done with it).
        """
        if exchange.is_body_done:
            return
        received = 0
        waited = 0.0
        timeouts = self.timeouts
        while True:
            now = time.monotonic()
            try:
                with anyio.fail_after(
                    max(0.0, timeouts.body_deadline(now, received, waited) - now)
                ):
                    message = await request.receive()
            except TimeoutError:
                self._abort_body(request, exchange, 408, "request body timed out")
                raise ClientBodyError(
                    FailureReason.CLIENT, "body timed out", aborted=True
                ) from None
            except Exception as exc:  # the server failed to read it (uvicorn's h11 on bad framing)
                self._abort_body(
                    request, exchange, 400, f"the server failed reading the body: {exc!r}"
                )
                raise ClientBodyError(
                    FailureReason.CLIENT, "body unreadable", aborted=True
                ) from None
            waited += time.monotonic() - now
            if message["type"] != "http.request":  # http.disconnect
                exchange.is_body_done = exchange.is_finished = True
                request.is_broken = True
                raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True)
            chunk = bytes(message.get("body", b""))
            received += len(chunk)
            if limit and received > limit:
                exchange.is_body_done = True
                raise ClientBodyError(FailureReason.BODY_TOO_LARGE, f"body over {limit} bytes")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                exchange.is_body_done = True
                return


def create_app(
    config: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    max_body_size: int | None = None,
) -> GatewayApp:
    """Build the ASGI application from a config file (``config``, else ``$SAPG_CONFIG``).

    Without either, the inline JSON in ``SAG_API_CONFIG_JSON`` is used, as by
    ``sapg serve``. Config errors, and services that cannot be called, are
    printed; with ``SAG_STRICT_CONFIG=true`` they stop the start-up (the server
    reports the exception). Services and bindings (``SAPG_BINDINGS``) are loaded
    as ``sapg serve`` loads them.

    Raises:
        RuntimeError: no config given, it cannot be loaded, or ``SAPG_BINDINGS`` or
            ``SAPG_SERVICE_TIMEOUT`` is malformed.
    """
    from .cli import (
        DEFAULT_SERVICE_TIMEOUT,
        LoadError,
        _compile,
        load_config_services,
        read_config,
        report_start_up,
        strict_from_env,
    )

    environ = dict(os.environ if env is None else env)
    configure_logging(environ.get("SAPG_LOG_LEVEL", "info"), environ.get("SAPG_LOG_FORMAT", "text"))
    path = config or environ.get("SAPG_CONFIG") or None
    limit = max_body_size
    if limit is None:
        limit = int(environ.get("SAPG_MAX_BODY_SIZE", str(10 * 1024 * 1024)))
    try:
        service_timeout = _service_timeout(environ, DEFAULT_SERVICE_TIMEOUT)
        specs = _binding_specs(environ.get("SAPG_BINDINGS", ""))
        loaded = read_config(path, environ)
        if loaded is None:
            raise LoadError("no config: set SAPG_CONFIG (a file) or SAG_API_CONFIG_JSON")
        raw, source = loaded
        strict = strict_from_env(environ)
        result = _compile(raw, source, environ, strict=strict)
        registry, found = load_config_services(result.config, path, specs)
        report_start_up(source, result, found, strict=strict)
        limits, timeouts = _limits(environ, limit)
        allow_ips = environ.get("SAPG_FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS)
        try:
            TrustedProxies(allow_ips)
        except ValueError as exc:
            raise LoadError(f"SAPG_FORWARDED_ALLOW_IPS: {exc}") from None
    except LoadError as exc:
        raise RuntimeError(f"sapg: {exc}") from None
    gateway = Gateway(
        result.config,
        max_body_bytes=limit,
        env=environ,
        service_timeout=service_timeout,
        forwarded_allow_ips=allow_ips,
    )
    return GatewayApp(gateway, services=registry, limits=limits, timeouts=timeouts)


def _limits(environ: Mapping[str, str], max_body: int) -> tuple[ServerLimits, Timeouts]:
    """``SAPG_MAX_HEADER_SIZE`` (bytes, 0: none), ``SAPG_READ_TIMEOUT`` (seconds, more than
    0), ``SAPG_MIN_BODY_RATE`` (bytes a second, 0: none) and ``SAPG_IDLE_TIMEOUT`` (seconds
    a WebSocket may stay silent, more than 0); unset: ``sapg serve``'s defaults."""
    from .cli import LoadError

    def number(name: str, default: float, *, positive: bool) -> float:
        text = environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value > 0 if positive else value >= 0):
            bound = "more than 0" if positive else "0 or more"
            raise LoadError(f"{name} must be a number, {bound}, not {text!r}")
        return value

    default_limits, default_timeouts = ServerLimits(), Timeouts()
    header = int(number("SAPG_MAX_HEADER_SIZE", default_limits.max_header_bytes, positive=False))
    timeouts = Timeouts(
        read=number("SAPG_READ_TIMEOUT", default_timeouts.read, positive=True),
        min_body_rate=number("SAPG_MIN_BODY_RATE", default_timeouts.min_body_rate, positive=False),
        idle=number("SAPG_IDLE_TIMEOUT", default_timeouts.idle, positive=True),  # WebSockets
    )
    return ServerLimits(max_header_bytes=header, max_body_bytes=max_body), timeouts


def _binding_specs(text: str) -> list[str]:
    """``SAPG_BINDINGS``: ``NAME=pkg.mod:obj`` entries separated by commas."""
    from .cli import LoadError

    specs = [spec.strip() for spec in text.split(",") if spec.strip()]
    for spec in specs:
        try:
            parse_binding(spec)
        except ValueError as exc:
            raise LoadError(f"SAPG_BINDINGS: {exc}") from None
    return specs


def _service_timeout(environ: Mapping[str, str], default: float) -> float:
    """``SAPG_SERVICE_TIMEOUT``: seconds, more than 0."""
    from .cli import LoadError

    text = environ.get("SAPG_SERVICE_TIMEOUT", "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise LoadError(f"SAPG_SERVICE_TIMEOUT must be seconds (more than 0), not {text!r}")
    return value
