"""The half of the trio and asyncio drivers that is the same code: carrying out a request.

Theory of operation. A backend (``trio_driver``, ``asyncio_driver``) owns the
sockets: it accepts, and implements three awaitables on its connection type,
``_next_event`` (read until the HTTP glue has an event; a read timeout or a
dead socket is ``ConnectionClosed``), ``_send`` (write, or raise
:class:`ClientGone`) and ``_close``. Everything above the bytes is here,
written once: the per-connection request loop (:meth:`AsyncDriver._serve_requests`),
one request's action queue (:meth:`AsyncDriver._execute`) and one executor per
action type (:attr:`AsyncDriver._executors`). It awaits only the backend's
methods, :mod:`anyio` primitives and the anyio-based outbound executor, so the
same source runs on trio and on asyncio (as httpcore keeps one ``_async`` source).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import anyio

from sapg_core import (
    Action,
    ActionFailed,
    BodyChunk,
    BodyEnd,
    BodyReceived,
    CallService,
    Event,
    FailureReason,
    ForwardUpstream,
    HTTPEvent,
    Log,
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
    ExchangeBase,
    Exchanges,
    GatewayLike,
    Loaded,
    Reload,
    Timeouts,
    as_loaded,
    http_date,
    request_received,
    try_reload,
    upstream_origin,
)
from ._logging import log_access
from ._outbound import Outbound, OutboundError, UpstreamBody
from ._services import ServiceRegistry, call_service

__all__ = ["AsyncDriver", "AsyncExchange", "ClientGone", "Connection", "given_body"]

logger = logging.getLogger("sapg")

#: How long a request may wait for a shared action another request carries
#: out (a JWKS fetch, say) before it is given up as a driver bug.
PARKED_LIMIT: Final = 120.0


class ClientGone(Exception):
    """Writing to the client failed or stalled."""


async def given_body(data: bytes) -> AsyncGenerator[bytes, None]:
    """A body the core already holds (``ForwardUpstream.body``), as the outbound executor
    takes a body."""
    if data:
        yield data


class Connection:
    """One client connection: the HTTP glue; a backend subclass adds its stream."""

    def __init__(self, limits: ServerLimits, peer: str) -> None:
        self.http = ServerConnection(limits)
        self.peer = peer
        self.is_broken = False


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
    ) -> None:
        self.serving = as_loaded(gateway, services)
        self.limits, self.timeouts, self.outbound = limits, timeouts, outbound
        self.reload = reload
        self.is_draining = False
        self._connections: set[ConnT] = set()
        self._exchanges = Exchanges()
        self._executors: dict[type[Action], _Executor] = {
            Respond: self._respond,
            ForwardUpstream: self._forward,
            RelayResponse: self._relay,
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
            await self._serve_requests(conn)
        except ClientGone:
            pass
        except Exception:  # the boundary: one broken connection must not stop the server
            logger.exception("connection handler failed")
        finally:
            self._connections.discard(conn)
            await self._close(conn)

    # -- what a backend implements -----------------------------------------------------

    async def _next_event(self, conn: ConnT) -> HTTPEvent:
        raise NotImplementedError

    async def _send(self, conn: ConnT, data: bytes) -> None:
        raise NotImplementedError

    async def _close(self, conn: ConnT) -> None:
        raise NotImplementedError

    # -- reload --------------------------------------------------------------------------

    async def reload_config(self) -> bool:
        """Build a gateway from the config as it is now and serve new requests with it.

        Requests in flight finish on the gateway they started on. If the new
        config is refused, the old gateway keeps serving (the log says why).
        """
        if self.reload is None:
            logger.warning("reload asked for, but this server has no config file to re-read")
            return False
        gateway = await anyio.to_thread.run_sync(try_reload, self.reload)
        if gateway is None:
            return False
        # One assignment: each new request sees the old pair or the new, whole.
        self.serving = as_loaded(gateway, self.serving.services)
        return True

    # -- one connection, one request at a time ---------------------------------------------

    async def _serve_requests(self, conn: ConnT) -> None:
        while not conn.is_broken:
            event = await self._next_event(conn)
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
            entropy=secrets.token_bytes(32),
            scheme="http",
        )
        try:
            await self._execute(conn, exchange, exchange.gateway.handle(event))
        except ClientGone:
            conn.is_broken = True
        finally:
            self._exchanges.discard(exchange)
            if not exchange.is_finished:  # the client left, or the request was given up
                conn.is_broken = True
                aborted = RequestAborted(request_id=exchange.request_id, now=time.time())
                self._exchanges.deliver(exchange, exchange.gateway.handle(aborted))
            log_access(exchange)
            if exchange.upstream is not None:
                await exchange.upstream.aclose()

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
        return await self.outbound.send(action)

    async def _log(self, conn: ConnT, exchange: AsyncExchange, action: Log) -> None:
        logger.log(int(action.level), "request %s: %s", action.request_id, action.message)

    async def _call_service(
        self, conn: ConnT, exchange: AsyncExchange, action: CallService
    ) -> Event:
        return await call_service(action, exchange.services, env=os.environ)

    # -- the request body ------------------------------------------------------------------

    async def _client_body(
        self, conn: ConnT, exchange: AsyncExchange, limit: int
    ) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives; raises :class:`ClientBodyError` on failure."""
        if exchange.is_body_done:
            return
        try:
            await self._send(conn, conn.http.send_continue())
        except ClientGone:
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
