"""The half of the trio and asyncio drivers that is the same code: carrying out a request.

Theory of operation. A backend (``trio_driver``, ``asyncio_driver``) owns the
sockets: it accepts, and implements a few primitives on its connection type,
``_receive`` (some bytes; ``b""`` at end of stream, None on a reset),
``_send_bytes`` (write, or raise :class:`ClientGone`), ``_close``, ``_now``
(its clock) and what it takes to cut a connection off (``_expire``) or to wake
the sweeper early (``_wake_sweeper``). Everything above the bytes is here,
written once: the per-connection request loop (:meth:`AsyncDriver._serve_requests`),
one request's action queue (:meth:`AsyncDriver._execute`), one executor per
action type (:attr:`AsyncDriver._executors`) and the connections' deadlines.

Deadlines. A connection has one deadline at a time, a plain float that moves as
the connection changes phase: idle keep-alive (``idle`` from the end of the last
answer), receiving a head (``header`` for the whole head), the core and the
outbound work (none: the upstream has its own timeouts), reading the body
(``read`` between bytes and the ``min_body_rate``, see :class:`Timeouts`),
sending (``read``). Moving it costs an assignment. :class:`Deadlines` keeps a
heap of the times connections must be looked at ("armed" times, only ever moved
earlier) and one sweeper per server wakes at the earliest, cuts off the
connections whose deadline has passed and re-arms the others at their current
deadline. Cutting off is the backend's: trio cancels the connection's one cancel
scope, asyncio cancels the connection's task; either way the connection closes,
and a request whose body was being read reaches the core as ``RequestAborted``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.abc

from sapg_core import (
    Action,
    ActionFailed,
    BodyChunk,
    BodyEnd,
    BodyReceived,
    CallService,
    ConnectionClosed,
    Event,
    FailureReason,
    ForwardUpstream,
    Log,
    NeedData,
    OpenTunnel,
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
    DRAINING,
    ClientBodyError,
    ExchangeBase,
    Exchanges,
    GatewayLike,
    Loaded,
    Reload,
    Timeouts,
    as_loaded,
    entropy,
    http_date,
    identify,
    is_key_set_fetch,
    log_action,
    request_received,
    try_reload,
    upstream_origin,
)
from ._logging import log_access
from ._outbound import IO_ERRORS, Outbound, OutboundError, UpstreamBody
from ._services import ServiceRegistry, call_service

__all__ = ["AsyncDriver", "AsyncExchange", "ClientGone", "Connection", "Deadlines", "given_body"]

logger = logging.getLogger("sapg")

#: How long a request may wait for a shared action another request carries
#: out (a JWKS fetch, say) before it is given up as a driver bug.
PARKED_LIMIT: Final = 120.0
#: Dead heap entries (of closed connections) tolerated before the heap is rebuilt.
_DEAD_ENTRIES: Final = 1024
_NEVER: Final = math.inf


class ClientGone(Exception):
    """Writing to the client failed or stalled."""


async def given_body(data: bytes) -> AsyncGenerator[bytes, None]:
    """A body the core already holds (``ForwardUpstream.body``), as the outbound executor
    takes a body."""
    if data:
        yield data


class Connection:
    """One client connection: the HTTP glue and its deadline; a backend subclass adds its stream."""

    def __init__(self, limits: ServerLimits, peer: str, *, backend: str = "h11") -> None:
        self.http = ServerConnection(limits, backend=backend)
        self.peer = peer
        self.client = peer.rsplit(":", 1)[0] if ":" in peer else ""  # the peer's IP
        self.scheme = "http"  # "https" on a TLS connection
        self.is_broken = False
        self.is_idle_wait = False  # waiting for a new request: shutdown may close it
        self.is_expired = False  # its deadline passed: the backend is cutting it off
        self.is_closed = False
        self.deadline = _NEVER  # when it is cut off (the backend's clock)
        self.armed = _NEVER  # when the sweeper looks at it next


class Deadlines:
    """The sweeper's heap: when to look at which connection (see the module docstring).

    Args:
        expire: cuts a connection off (called by :meth:`sweep`).
        wake: makes the sweeper wake at the given time (earlier than it planned).
    """

    def __init__(self, expire: Callable[[Any], None], wake: Callable[[float], None]) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._order = itertools.count().__next__
        self._expire = expire
        self._wake = wake
        self._dead = 0
        self.next_wake = _NEVER  # when the sweeper will wake; the caller updates it

    def set(self, conn: Connection, when: float) -> None:
        """Move ``conn``'s deadline to ``when`` (:data:`math.inf`: none)."""
        conn.deadline = when
        if when < conn.armed:
            conn.armed = when
            heapq.heappush(self._heap, (when, self._order(), conn))
            if when < self.next_wake:
                self.next_wake = when
                self._wake(when)

    def discard(self, conn: Connection) -> None:
        """``conn`` is closed: forget it (its heap entries go at the next rebuild)."""
        conn.is_closed = True
        conn.deadline = _NEVER
        if conn.armed < _NEVER:
            conn.armed = _NEVER
            self._dead += 1
            if self._dead > _DEAD_ENTRIES and self._dead * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2].armed == e[0]]
                heapq.heapify(self._heap)
                self._dead = 0

    def sweep(self, now: float) -> float:
        """Cut off the connections past their deadline; the time to sweep next."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            armed, _, conn = heapq.heappop(heap)
            if conn.armed != armed:  # superseded by an earlier arming, or closed
                continue
            conn.armed = _NEVER
            if conn.deadline <= now:
                conn.is_expired = True
                self._expire(conn)
            elif conn.deadline < _NEVER:
                conn.armed = conn.deadline
                heapq.heappush(heap, (conn.deadline, self._order(), conn))
        self.next_wake = heap[0][0] if heap else _NEVER
        return self.next_wake

    def __len__(self) -> int:
        return len(self._heap)


class AsyncExchange(ExchangeBase):
    """One request in flight on an async driver."""

    def __init__(self, serving: Loaded, head: RequestHead) -> None:
        super().__init__(serving, head.method, head.target, head.content_length)
        self.upstream: UpstreamBody | None = None
        self._woken: anyio.Event | None = None

    def wake(self) -> None:
        if self._woken is not None:
            self._woken.set()

    async def wait_for_actions(self) -> bool:
        """Wait until another request delivers actions here; False after :data:`PARKED_LIMIT`."""
        self._woken = anyio.Event()
        with anyio.move_on_after(PARKED_LIMIT):
            await self._woken.wait()
        self._woken = None
        return bool(self.inbox)


ConnT = TypeVar("ConnT", bound=Connection)
_Executor = Callable[[Any, AsyncExchange, Any], Awaitable[Event | None]]


async def execute_actions(
    exchanges: Exchanges,
    executors: Mapping[type[Action], _Executor],
    target: object,
    exchange: AsyncExchange,
    actions: list[Action],
) -> None:
    """Carry out a request's actions in order, feeding each outcome back to its gateway.

    ``target`` is what the executors write to (a connection, or the ASGI send side).
    Shared by every async transport: the request half of the loop is the same.
    """
    exchanges.deliver(exchange, actions)
    inbox = exchange.inbox
    while inbox or not exchange.is_finished:
        if not inbox and not await exchange.wait_for_actions():
            logger.error("request %d: the core gave no answer", exchange.request_id)
            return
        action = inbox.popleft()
        executor = executors.get(type(action))
        if executor is None:
            raise TypeError(f"no executor for {type(action).__name__}")
        outcome = await executor(target, exchange, action)
        if outcome is not None:
            exchanges.deliver(exchange, exchange.gateway.handle(outcome))


class AsyncDriver(Generic[ConnT]):
    """The request loop and action executors shared by the trio and asyncio servers."""

    def __init__(
        self,
        *,
        gateway: GatewayLike | Loaded,
        limits: ServerLimits,
        timeouts: Timeouts,
        outbound: Outbound,
        reload: Reload | None = None,
        services: ServiceRegistry | None = None,
        http: str = "httptools",
    ) -> None:
        self.serving = as_loaded(gateway, services)
        self.limits, self.timeouts, self.outbound = limits, timeouts, outbound
        self.reload = reload
        self.http = http  # the parser backend of new connections (sapg_core.PARSER_BACKENDS)
        self.is_draining = False
        self._reload_pending = False  # a reload was asked for since the running one read the file
        self._reloading = False  # a reload is running: the next ask only sets _reload_pending
        self._connections: set[ConnT] = set()
        self._deadlines = Deadlines(self._expire, self._wake_sweeper)
        self._exchanges = Exchanges()
        self._executors: dict[type[Action], _Executor] = {
            Respond: self._respond,
            ForwardUpstream: self._forward,
            RelayResponse: self._relay,
            OpenTunnel: self._tunnel,
            ReadBody: self._read_body,
            SendHTTP: self._send_http,
            Log: self._log,
            CallService: self._call_service,
        }

    @property
    def gateway(self) -> GatewayLike:
        """The gateway new requests start on."""
        return self.serving.gateway

    @property
    def services(self) -> ServiceRegistry:
        """The services new requests call."""
        return self.serving.services

    async def _serve(self, conn: ConnT) -> None:
        """Serve one accepted connection to its end; each backend builds ``conn``."""
        self._connections.add(conn)
        try:
            await self._guarded(conn)
        except ClientGone:  # the client's doing: INFO
            logger.info("client %s went away before its answer was sent", conn.peer)
        except Exception:  # the boundary: one broken connection must not stop the server
            logger.exception("connection handler failed")  # our bug: ERROR
        finally:
            self._connections.discard(conn)
            self._deadlines.discard(conn)
            if conn.is_expired:
                conn.is_broken = True
                if not conn.is_idle_wait:  # an idle keep-alive closing is no fault
                    logger.info("client %s timed out: connection cut off", conn.peer)
            await self._close(conn)

    def _stop_idle(self) -> None:
        """Shutting down: no new requests; connections waiting for one close now."""
        self.is_draining = True
        DRAINING.set()
        for conn in self._connections:
            conn.http.stop_keep_alive()
            if conn.is_idle_wait:
                conn.is_expired = True
                self._expire(conn)

    # -- what a backend implements -----------------------------------------------------

    async def _guarded(self, conn: ConnT) -> None:
        """Run :meth:`_serve_requests` so that :meth:`_expire` can cut it off."""
        raise NotImplementedError

    def _now(self) -> float:
        """The backend's clock (the one deadlines are in)."""
        raise NotImplementedError

    def _expire(self, conn: ConnT) -> None:
        """Cut ``conn`` off: its deadline passed (or the server shuts down and it is idle)."""
        raise NotImplementedError

    def _wake_sweeper(self, when: float) -> None:
        """Make the sweeper wake at ``when``, earlier than it planned."""
        raise NotImplementedError

    async def _receive(self, conn: ConnT) -> bytes | None:
        """Some bytes from the client; ``b""`` at its end of stream, None if the socket broke."""
        raise NotImplementedError

    async def _send_bytes(self, conn: ConnT, data: bytes) -> None:
        """Write ``data`` (not empty); raise :class:`ClientGone` if the socket is broken."""
        raise NotImplementedError

    async def _close(self, conn: ConnT) -> None:
        raise NotImplementedError

    # -- I/O with deadlines ----------------------------------------------------------------

    async def _send(self, conn: ConnT, data: bytes) -> None:
        """Write ``data``; a write that stalls ``read`` seconds cuts the connection off."""
        if not data:
            return
        deadlines = self._deadlines
        deadlines.set(conn, self._now() + self.timeouts.read)
        try:
            await self._send_bytes(conn, data)
        except ClientGone:
            conn.http.stop_keep_alive()
            raise
        finally:
            deadlines.set(conn, _NEVER)

    # -- reload --------------------------------------------------------------------------

    async def reload_config(self) -> bool:
        """Build a gateway from the config as it is now and serve new requests with it.

        Requests in flight finish on the gateway they started on. If the new
        config is refused, the old gateway keeps serving (the log says why).

        One reload at a time, coalesced: a call while a reload runs only asks for one
        more pass, which the running call makes once its pass is done, so the file as
        it is after the last ask is the one that serves, and a storm of asks costs two
        compiles. The compile runs in a worker thread; the loop keeps serving.

        Returns:
            Whether this call applied a new config (False also when it only asked the
            running call for another pass).
        """
        if self.reload is None:
            logger.warning("reload asked for, but this server has no config file to re-read")
            return False
        self._reload_pending = True
        if self._reloading:
            return False
        self._reloading = True
        applied = False
        try:
            while self._reload_pending:
                self._reload_pending = False
                gateway = await anyio.to_thread.run_sync(try_reload, self.reload)
                if gateway is not None:
                    # One assignment: each new request sees the old pair or the new, whole.
                    self.serving = as_loaded(gateway, self.serving.services)
                    applied = True
        finally:
            self._reloading = False
        return applied

    # -- one connection, one request at a time ---------------------------------------------

    async def _serve_requests(self, conn: ConnT) -> None:
        http, timeouts, deadlines = conn.http, self.timeouts, self._deadlines
        # A new connection's first head is due ``header`` after the accept; a later
        # one ``idle`` for its first byte, then ``header`` for the whole head.
        head_due: float | None = self._now() + timeouts.header
        while not conn.is_broken:
            event = http.next_event()
            if type(event) is NeedData:
                if http.is_idle:
                    if self.is_draining:
                        return
                    conn.is_idle_wait = True
                    if head_due is None:
                        deadlines.set(conn, self._now() + timeouts.idle)
                    else:
                        deadlines.set(conn, head_due)
                else:  # a head under way: all of it within ``header``, no gap over ``read``
                    now = self._now()
                    if head_due is None:
                        head_due = now + timeouts.header
                    deadlines.set(conn, min(head_due, now + timeouts.read))
                data = await self._receive(conn)
                conn.is_idle_wait = False
                if data is None:  # reset
                    conn.is_broken = True
                    return
                http.receive_data(data)
                continue
            deadlines.set(conn, _NEVER)  # the core and the outbound work have no client deadline
            head_due = None
            if isinstance(event, RequestHead):
                await self._handle_request(conn, event)
            elif isinstance(event, ProtocolFailure):
                logger.info(
                    "protocol failure from %s (%d): %s", conn.peer, event.status, event.detail
                )
                await self._send(conn, event.response_bytes)
                break
            else:
                break

    async def _handle_request(self, conn: ConnT, head: RequestHead) -> None:
        exchange = AsyncExchange(self.serving, head)
        self._exchanges.add(exchange)
        event = request_received(
            head,
            request_id=exchange.request_id,
            now=time.time(),
            entropy=entropy(),
            scheme=conn.scheme,
            client=conn.client,
        )
        identify(exchange, event)
        try:
            await self._execute(conn, exchange, exchange.gateway.handle(event))
        except ClientGone:  # the client's doing: INFO
            logger.info("client %s went away before its answer was sent", conn.peer)
            conn.is_broken = True
        finally:
            self._exchanges.discard(exchange)
            if not exchange.is_finished:  # the client left, or the request was given up
                conn.is_broken = True
                aborted = RequestAborted(request_id=exchange.request_id, now=time.time())
                self._exchanges.deliver(exchange, exchange.gateway.handle(aborted))
            log_access(exchange)
            if exchange.upstream is not None:
                await self._release(conn, exchange.upstream)

    async def _release(self, conn: ConnT, upstream: UpstreamBody) -> None:
        """Close the upstream answer (a backend may shield it from a cut-off connection)."""
        await upstream.aclose()

    async def _execute(self, conn: ConnT, exchange: AsyncExchange, actions: list[Action]) -> None:
        await execute_actions(self._exchanges, self._executors, conn, exchange, actions)

    # -- executors, one per action type ------------------------------------------------------

    async def _respond(self, conn: ConnT, exchange: AsyncExchange, action: Respond) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        date = http_date(time.time())
        await self._send(
            conn, conn.http.send_response(action.status, action.headers, action.body, date=date)
        )

    async def _forward(
        self, conn: ConnT, exchange: AsyncExchange, action: ForwardUpstream
    ) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        if action.body is None:
            body = self._client_body(conn, exchange, action.body_limit)
            content_length = exchange.content_length
        else:  # already read (for a hook): exactly these bytes, nothing more from the client
            body, content_length = given_body(action.body), len(action.body)
        try:
            result = await self.outbound.forward(action, body, content_length=content_length)
        finally:
            await body.aclose()
        if exchange.is_finished:  # the client went away while we streamed its body
            return RequestAborted(request_id=exchange.request_id, now=time.time())
        if isinstance(result, ActionFailed):
            exchange.upstream_failure = result.reason
            return result
        event, exchange.upstream = result
        return event

    async def _relay(self, conn: ConnT, exchange: AsyncExchange, action: RelayResponse) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: RelayResponse without an upstream")
        date = http_date(time.time())
        out = conn.http.send_head(action.status, action.headers, date=date)
        ready, complete = upstream.take_ready()  # a small answer: head, body and end at once
        if ready:
            out += conn.http.send_body(ready)
        if complete:
            await self._send(conn, out + conn.http.send_end())
            return
        await self._send(conn, out)
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
            exchange.upstream_failure = exc.reason
            conn.is_broken = True
            return
        await self._send(conn, conn.http.send_end())

    async def _tunnel(self, conn: ConnT, exchange: AsyncExchange, action: OpenTunnel) -> None:
        """The 101, then bytes both ways until either side closes or ``idle`` passes unused.

        Two pumps (client to upstream, upstream to client), each awaiting its write
        before its next read: backpressure. Every byte moved pushes the connection's
        one deadline to ``idle`` from now; the sweeper cuts off a tunnel idle past it,
        like an idle keep-alive connection. When either pump ends the other is
        cancelled; the connection then closes, and the upstream with the exchange.
        """
        exchange.is_finished = True
        exchange.status, exchange.route = 101, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: OpenTunnel without an upstream")
        stream, upstream_first = upstream.take_tunnel()
        http = conn.http
        head = http.send_switch(action.headers, date=http_date(time.time()))
        client_first = http.take_trailing()
        conn.is_broken = True  # no more HTTP on this connection: close it after the tunnel
        deadlines, idle, now = self._deadlines, self.timeouts.idle, self._now

        async def upward() -> None:
            data = client_first
            while True:
                if data:
                    await stream.send(data)
                    deadlines.set(conn, now() + idle)
                data = await self._receive(conn) or b""
                if not data:
                    return
                deadlines.set(conn, now() + idle)

        async def downward() -> None:
            while True:
                data = await stream.receive()
                if not data:
                    return
                deadlines.set(conn, now() + idle)
                await self._send_bytes(conn, data)
                deadlines.set(conn, now() + idle)

        async def pump(
            direction: Callable[[], Awaitable[None]], group: anyio.abc.TaskGroup
        ) -> None:
            try:
                await direction()
            except (ClientGone, *IO_ERRORS):
                pass  # either side broke off: the tunnel is over
            finally:
                group.cancel_scope.cancel()

        deadlines.set(conn, now() + idle)
        try:
            await self._send_bytes(conn, head + upstream_first)
            async with anyio.create_task_group() as group:
                group.start_soon(pump, upward, group)
                group.start_soon(pump, downward, group)
        finally:
            deadlines.set(conn, _NEVER)

    async def _read_body(self, conn: ConnT, exchange: AsyncExchange, action: ReadBody) -> Event:
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

    async def _send_http(self, conn: ConnT, exchange: AsyncExchange, action: SendHTTP) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        if is_key_set_fetch(action.url):
            exchange.jwks_fetches += 1
        return await self.outbound.send(action)

    async def _log(self, conn: ConnT, exchange: AsyncExchange, action: Log) -> None:
        log_action(exchange, action)

    async def _call_service(
        self, conn: ConnT, exchange: AsyncExchange, action: CallService
    ) -> Event:
        return await call_service(
            action, exchange.services, env=os.environ, request_id=exchange.x_request_id
        )

    # -- the request body ------------------------------------------------------------------

    async def _client_body(
        self, conn: ConnT, exchange: AsyncExchange, limit: int
    ) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives; raises :class:`ClientBodyError` on failure.

        Only the waits for the client have a deadline (:meth:`Timeouts.body_deadline`):
        while the consumer (the outbound executor) holds a chunk, there is none.
        """
        if exchange.is_body_done:
            return
        try:
            await self._send(conn, conn.http.send_continue())
        except ClientGone:
            exchange.is_finished = True
            raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True) from None
        http, timeouts, deadlines = conn.http, self.timeouts, self._deadlines
        received = 0
        waited = 0.0
        while True:
            event = http.next_event()
            if type(event) is NeedData:
                now = self._now()
                deadlines.set(conn, timeouts.body_deadline(now, received, waited))
                try:
                    data = await self._receive(conn)
                finally:
                    deadlines.set(conn, _NEVER)
                waited += self._now() - now
                if data is None:
                    event = ConnectionClosed()
                else:
                    http.receive_data(data)
                    continue
            if isinstance(event, BodyChunk):
                received += len(event.data)
                if limit and received > limit:
                    exchange.is_body_done = True
                    http.stop_keep_alive()
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
            exchange.is_finished = True  # closed or reset
            conn.is_broken = True
            raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True)
