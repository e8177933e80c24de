"""The trio server: bytes from sockets become core events; the core's actions are carried out.

One loop per connection: read, feed :class:`ServerConnection`, turn a request
head into ``RequestReceived``, call ``gateway.handle``, carry out each action
through :attr:`TrioServer._executors` (keyed by action type) and feed each
outcome back. No policy lives here: statuses, CORS and auth are the core's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import signal
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import trio

from sapg_core import (
    Action,
    ActionFailed,
    BodyChunk,
    BodyEnd,
    BodyReceived,
    ConnectionClosed,
    Event,
    FailureReason,
    ForwardUpstream,
    HTTPEvent,
    Log,
    NeedData,
    ProtocolFailure,
    ReadBody,
    RelayResponse,
    RequestAborted,
    RequestHead,
    Respond,
    SendHTTP,
    ServerConnection,
    ServerLimits,
)

from ._common import (
    ClientBodyError,
    GatewayFactory,
    GatewayLike,
    Timeouts,
    http_date,
    request_received as _request_received,
)
from ._outbound import Outbound, OutboundError, UpstreamBody

__all__ = ["TrioServer", "run", "serve"]

logger = logging.getLogger("sapg")
_RECEIVE_SIZE = 65536
_request_ids = itertools.count(1)  # unique for the life of the process


class _ClientGone(Exception):
    """Writing to the client failed or stalled."""


class _Connection:
    def __init__(self, stream: trio.SocketStream, limits: ServerLimits) -> None:
        self.stream = stream
        self.http = ServerConnection(limits)
        self.idle_scope: trio.CancelScope | None = None
        self.is_broken = False


class _Exchange:
    """One request in flight on a connection."""

    def __init__(self, head: RequestHead) -> None:
        self.request_id = next(_request_ids)
        self.head = head
        self.upstream: UpstreamBody | None = None
        self.is_finished = False  # a final action ran, or the client went away
        self.is_body_done = False


_Executor = Callable[[_Connection, _Exchange, Any], Awaitable[Event | None]]


class TrioServer:
    """Serves one gateway on trio listeners; see :func:`serve`."""

    def __init__(
        self, *, gateway: GatewayLike, limits: ServerLimits, timeouts: Timeouts, outbound: Outbound
    ) -> None:
        self.gateway, self.limits, self.timeouts, self.outbound = (
            gateway,
            limits,
            timeouts,
            outbound,
        )
        self.is_draining = False
        self._connections: set[_Connection] = set()
        self._executors: dict[type[Action], _Executor] = {
            Respond: self._respond,
            ForwardUpstream: self._forward,
            RelayResponse: self._relay,
            ReadBody: self._read_body,
            SendHTTP: self._send_http,
            Log: self._log,
        }

    async def run(
        self, listeners: list[trio.SocketListener], shutdown: trio.Event, *, grace: float
    ) -> None:
        """Accept until ``shutdown`` is set, then let in-flight requests finish within ``grace``."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(self._accept, listener, connections)
                await shutdown.wait()
                acceptors.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            self.is_draining = True
            for conn in self._connections:
                conn.http.stop_keep_alive()
                if conn.idle_scope is not None:
                    conn.idle_scope.cancel()
            connections.cancel_scope.deadline = trio.current_time() + grace

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                logger.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream, self.limits)
        self._connections.add(conn)
        try:
            while not conn.is_broken:
                event = await self._next_event(conn)
                if isinstance(event, RequestHead):
                    await self._handle_request(conn, event)
                elif isinstance(event, ProtocolFailure):
                    logger.info("protocol failure (%d): %s", event.status, event.detail)
                    await self._send(conn, event.response_bytes)
                    break
                else:
                    break
        except _ClientGone:
            pass
        except Exception:  # the boundary: one broken connection must not stop the server
            logger.exception("connection handler failed")
        finally:
            self._connections.discard(conn)
            await self._close(conn)

    async def _handle_request(self, conn: _Connection, head: RequestHead) -> None:
        exchange = _Exchange(head)
        event = _request_received(
            head,
            request_id=exchange.request_id,
            now=time.time(),
            entropy=secrets.token_bytes(32),
            scheme="http",
        )
        try:
            await self._execute(conn, exchange, self.gateway.handle(event))
        except _ClientGone:
            conn.is_broken = True
            if not exchange.is_finished:
                self.gateway.handle(RequestAborted(request_id=exchange.request_id, now=time.time()))
        finally:
            if exchange.upstream is not None:
                await exchange.upstream.aclose()
        if not exchange.is_finished:
            logger.error("request %d: the core gave no answer", exchange.request_id)
            conn.is_broken = True

    async def _execute(self, conn: _Connection, exchange: _Exchange, actions: list[Action]) -> None:
        queue = deque(actions)
        while queue:
            action = queue.popleft()
            executor = self._executors.get(type(action))
            if executor is None:
                raise TypeError(f"no executor for {type(action).__name__}")
            outcome = await executor(conn, exchange, action)
            if outcome is not None:
                queue.extend(self.gateway.handle(outcome))

    # -- executors, one per action type ----------------------------------------

    async def _respond(self, conn: _Connection, exchange: _Exchange, action: Respond) -> None:
        exchange.is_finished = True
        date = http_date(time.time())
        await self._send(
            conn, conn.http.send_response(action.status, action.headers, action.body, date=date)
        )

    async def _forward(
        self, conn: _Connection, exchange: _Exchange, action: ForwardUpstream
    ) -> Event:
        body = self._client_body(conn, exchange, action.body_limit)
        try:
            result = await self.outbound.forward(
                action, body, content_length=exchange.head.content_length
            )
        finally:
            await body.aclose()
        if exchange.is_finished:  # the client went away while we streamed its body
            return RequestAborted(request_id=exchange.request_id, now=time.time())
        if isinstance(result, ActionFailed):
            return result
        event, exchange.upstream = result
        return event

    async def _relay(self, conn: _Connection, exchange: _Exchange, action: RelayResponse) -> None:
        exchange.is_finished = True
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: RelayResponse without an upstream")
        date = http_date(time.time())
        await self._send(conn, conn.http.send_head(action.status, action.headers, date=date))
        try:
            async for chunk in upstream:
                await self._send(conn, conn.http.send_body(chunk))
        except OutboundError as exc:  # the head is out: closing is all that is left to say
            logger.warning(
                "request %d: upstream body broke off (%s): %s",
                exchange.request_id,
                exc.reason.value,
                exc.detail,
            )
            conn.is_broken = True
            return
        await self._send(conn, conn.http.send_end())

    async def _read_body(self, conn: _Connection, exchange: _Exchange, action: ReadBody) -> Event:
        chunks: list[bytes] = []
        try:
            async for chunk in self._client_body(conn, exchange, action.limit):
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

    async def _send_http(self, conn: _Connection, exchange: _Exchange, action: SendHTTP) -> Event:
        return await self.outbound.send(action)

    async def _log(self, conn: _Connection, exchange: _Exchange, action: Log) -> None:
        logger.log(int(action.level), "request %s: %s", action.request_id, action.message)

    # -- I/O helpers ---------------------------------------------------------------

    async def _client_body(
        self, conn: _Connection, exchange: _Exchange, limit: int
    ) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives; raises :class:`ClientBodyError` on failure."""
        if exchange.is_body_done:
            return
        try:
            await self._send(conn, conn.http.send_continue())
        except _ClientGone:
            exchange.is_finished = True
            raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True) from None
        received = 0
        while True:
            event = await self._next_event(conn)
            if isinstance(event, BodyChunk):
                received += len(event.data)
                if limit and received > limit:
                    exchange.is_body_done = True
                    conn.http.stop_keep_alive()
                    raise ClientBodyError(FailureReason.BODY_TOO_LARGE, f"body over {limit} bytes")
                yield event.data
                continue
            exchange.is_body_done = True
            if isinstance(event, BodyEnd):
                return
            if isinstance(event, ProtocolFailure):
                reason = (
                    FailureReason.BODY_TOO_LARGE if event.status == 413 else FailureReason.CLIENT
                )
                raise ClientBodyError(reason, event.detail)
            exchange.is_finished = True  # closed, or stalled past the read timeout
            conn.is_broken = True
            raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True)

    async def _next_event(self, conn: _Connection) -> HTTPEvent:
        """The next event, reading as needed; a read timeout or dead socket is ConnectionClosed."""
        while True:
            event = conn.http.next_event()
            if not isinstance(event, NeedData):
                return event
            idle = conn.http.is_idle
            if idle and self.is_draining:
                return ConnectionClosed()
            data = None
            with trio.move_on_after(self.timeouts.idle if idle else self.timeouts.read) as scope:
                conn.idle_scope = scope if idle else None
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    data = await conn.stream.receive_some(_RECEIVE_SIZE)
            conn.idle_scope = None
            if data is None:  # timed out, reset, or shut down
                conn.is_broken = True
                return ConnectionClosed()
            conn.http.receive_data(data)

    async def _send(self, conn: _Connection, data: bytes) -> None:
        if not data:
            return
        with trio.move_on_after(self.timeouts.read):
            try:
                await conn.stream.send_all(data)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        conn.http.stop_keep_alive()
        raise _ClientGone

    async def _close(self, conn: _Connection) -> None:
        """Close, first reading what the client still sends so the close is not a reset."""
        if conn.http.has_unread_input and not conn.is_broken:
            with trio.move_on_after(self.timeouts.linger):
                try:
                    await conn.stream.send_eof()
                    while await conn.stream.receive_some(_RECEIVE_SIZE):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        await conn.stream.aclose()


async def serve(
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None = None,
    gateway_factory: GatewayFactory | None = None,
    limits: ServerLimits | None = None,
    timeouts: Timeouts | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    shutdown: trio.Event | None = None,
    grace: float = 10.0,
    outbound: Outbound | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set, then shut down gracefully and return.

    Args:
        gateway: the core to drive; or ``gateway_factory(host, port)`` builds it
            once the listener is bound (give exactly one of them).
        limits, timeouts: the server's; defaults as in their classes.
        on_ready: called with the bound host and port once accepting.
        shutdown: set it to stop accepting, close idle keep-alive connections
            and let in-flight requests finish; those still running after
            ``grace`` seconds are cancelled.
        outbound: the upstream executor (default: a fresh pool, closed on return).
        task_status: for ``nursery.start``, which returns the bound host and port.
    """
    if (gateway is None) == (gateway_factory is None):
        raise TypeError("give exactly one of gateway and gateway_factory")
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    if gateway is None:
        assert gateway_factory is not None
        gateway = gateway_factory(bound_host, bound_port)
    own_outbound = outbound is None
    outbound = Outbound() if outbound is None else outbound
    server = TrioServer(
        gateway=gateway,
        limits=limits or ServerLimits(),
        timeouts=timeouts or Timeouts(),
        outbound=outbound,
    )
    try:
        if on_ready is not None:
            on_ready(bound_host, bound_port)
        task_status.started((bound_host, bound_port))
        await server.run(listeners, trio.Event() if shutdown is None else shutdown, grace=grace)
    finally:
        if own_outbound:
            await outbound.aclose()


def run(
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None = None,
    gateway_factory: GatewayFactory | None = None,
    limits: ServerLimits | None = None,
    timeouts: Timeouts | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    grace: float = 10.0,
) -> int:
    """Run :func:`serve` until SIGINT or SIGTERM, then shut down gracefully.

    Returns:
        0 after a graceful shutdown; 1 if a second signal cut it short.
    """

    async def main() -> bool:
        shutdown = trio.Event()
        finished = False
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, shutdown, nursery.cancel_scope)
            await serve(
                host=host,
                port=port,
                gateway=gateway,
                gateway_factory=gateway_factory,
                limits=limits,
                timeouts=timeouts,
                on_ready=on_ready,
                shutdown=shutdown,
                grace=grace,
            )
            finished = True
            nursery.cancel_scope.cancel()
        return finished

    return 0 if trio.run(main) else 1


async def _watch_signals(
    shutdown: trio.Event,
    hard_stop: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if shutdown.is_set():
                logger.warning("signal %d again: stopping now", signum)
                hard_stop.cancel()
                return
            logger.info("signal %d: shutting down gracefully", signum)
            shutdown.set()
