"""The trio server: bytes from sockets become core events; the core's actions are carried out.

One loop per connection: read, feed :class:`ServerConnection`, turn a request
head into ``RequestReceived``, call ``gateway.handle``, carry out each action
through :attr:`TrioServer._executors` (keyed by action type) and feed each
outcome back. No policy lives here: statuses, CORS and auth are the core's.

The request half (the loop, the executors) is shared with the asyncio driver
in :mod:`transports._async_driver`; this module is the trio I/O: accepting,
``_receive``, ``_send_bytes``, ``_close``, signals and shutdown. Each connection
runs inside one cancel scope, entered once; the server's sweeper task cancels it
when the connection's deadline passes (see :class:`transports._async_driver.Deadlines`).
With TLS (``ssl_context``) each accepted stream is wrapped in :class:`trio.SSLStream`;
the handshake happens on the first read, so under the first head's deadline.

The trio-asyncio loop that asyncio services run on is opened only when the
services loaded at start-up need it (:func:`needs_asyncio`); without one, a
service that turns out to be asyncio code still runs, on a loop opened for its call.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable

import trio
import trio_asyncio

from sapg_core import ServerLimits

from ._async_driver import AsyncDriver, ClientGone, Connection
from ._common import GatewayFactory, GatewayLike, Loaded, Reload, Timeouts
from ._outbound import Outbound, UpstreamBody
from ._services import ServiceRegistry

__all__ = ["TrioServer", "needs_asyncio", "run", "serve"]

logger = logging.getLogger("sapg")
_RECEIVE_SIZE = 65536


class _Connection(Connection):
    def __init__(
        self,
        stream: trio.SocketStream,
        limits: ServerLimits,
        backend: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(limits, _peer(stream), backend=backend)
        self.stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = stream
        if tls is not None:  # the handshake happens on the first read, under the head's deadline
            self.stream = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
            self.scheme = "https"
        self.scope = trio.CancelScope()


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


class TrioServer(AsyncDriver[_Connection]):
    """Serves one gateway on trio listeners; see :func:`serve`."""

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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            gateway=gateway,
            limits=limits,
            timeouts=timeouts,
            outbound=outbound,
            reload=reload,
            services=services,
            http=http,
        )
        # The sweeper's sleep: moving its deadline wakes the sweeper (see _sweeper).
        self._sweep_scope = trio.CancelScope()
        self.ssl_context = ssl_context

    async def run(
        self, listeners: list[trio.SocketListener], shutdown: trio.Event, *, grace: float
    ) -> None:
        """Accept until ``shutdown`` is set, then let in-flight requests finish within ``grace``.

        With a ``reload``, SIGHUP swaps the gateway meanwhile (main thread only).
        """
        async with trio.open_nursery() as system:
            system.start_soon(self._sweeper)
            if self.reload is not None:
                await system.start(self._watch_reload)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept, listener, connections)
                    await shutdown.wait()
                    acceptors.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                self._stop_idle()
                connections.cancel_scope.deadline = trio.current_time() + grace
            system.cancel_scope.cancel()

    async def _sweeper(self) -> None:
        """Cut off the connections past their deadline; sleep until the next one is due."""
        while True:
            next_wake = self._deadlines.sweep(trio.current_time())
            with trio.CancelScope(deadline=next_wake) as self._sweep_scope:
                await trio.sleep_forever()

    async def _watch_reload(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                logger.info("SIGHUP: reloading the config")
                await self.reload_config()

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
        await self._serve(_Connection(stream, self.limits, self.http, self.ssl_context))

    # -- the backend's I/O ---------------------------------------------------------------

    async def _guarded(self, conn: _Connection) -> None:
        with conn.scope:
            await self._serve_requests(conn)

    def _now(self) -> float:
        return trio.current_time()

    def _expire(self, conn: _Connection) -> None:
        conn.scope.cancel()

    def _wake_sweeper(self, when: float) -> None:
        self._sweep_scope.deadline = when

    async def _receive(self, conn: _Connection) -> bytes | None:
        try:
            return bytes(await conn.stream.receive_some(_RECEIVE_SIZE))  # TLS: a bytearray
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None

    async def _send_bytes(self, conn: _Connection, data: bytes) -> None:
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientGone from None

    async def _release(self, conn: _Connection, upstream: UpstreamBody) -> None:
        if not conn.scope.cancel_called:
            await upstream.aclose()
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.timeouts.linger):
            await upstream.aclose()  # cut off: still close the upstream answer properly

    async def _close(self, conn: _Connection) -> None:
        """Close, first reading what the client still sends so the close is not a reset."""
        stream = conn.stream
        if conn.http.has_unread_input and not conn.is_broken:
            with trio.move_on_after(self.timeouts.linger):
                try:
                    if isinstance(stream, trio.SocketStream):  # TLS has no half-close
                        await stream.send_eof()
                    while await stream.receive_some(_RECEIVE_SIZE):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        with trio.move_on_after(self.timeouts.linger):  # TLS: close_notify, bounded
            await stream.aclose()


def needs_asyncio(services: ServiceRegistry) -> bool:
    """Whether ``services`` hold code that may be asyncio's: any loaded service or binding
    object not marked :func:`transports.trio_native` as a whole."""
    return any(
        not getattr(found, "__sapg_trio_native__", False)
        for table in (services.services, services.bindings)
        for found in table.values()
    )


async def serve(
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None = None,
    gateway_factory: GatewayFactory | None = None,
    reload: Reload | None = None,
    limits: ServerLimits | None = None,
    timeouts: Timeouts | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    shutdown: trio.Event | None = None,
    grace: float = 10.0,
    outbound: Outbound | None = None,
    services: ServiceRegistry | None = None,
    http: str = "httptools",
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set, then shut down gracefully and return.

    When the services need one (:func:`needs_asyncio`), serving runs inside a trio-asyncio
    loop (unless the caller opened one), so asyncio services share one asyncio loop across calls.

    Args:
        gateway: the core to drive; or ``gateway_factory(host, port)`` builds it
            once the listener is bound (give exactly one of them).
        services: what ``CallService`` actions call (see :func:`transports.load_services`);
            a factory or a reload may bring its own (:class:`transports._common.Loaded`).
        reload: on SIGHUP, builds the gateway for new requests (see
            :meth:`TrioServer.reload_config`); needs the main thread.
        limits, timeouts: the server's; defaults as in their classes.
        on_ready: called with the bound host and port once accepting.
        shutdown: set it to stop accepting, close idle keep-alive connections
            and let in-flight requests finish; those still running after
            ``grace`` seconds are cancelled.
        outbound: the upstream executor (default: a fresh pool, closed on return).
        http: the request parser, one of :data:`sapg_core.PARSER_BACKENDS`.
        sock: a socket already bound and listening (a worker process's, inherited from
            its supervisor) to accept on instead of binding ``host`` and ``port``.
        ssl_context: serve HTTPS with it (each connection's handshake under the
            header timeout); None: plain HTTP.
        task_status: for ``nursery.start``, which returns the bound host and port.
    """
    if (gateway is None) == (gateway_factory is None):
        raise TypeError("give exactly one of gateway and gateway_factory")
    if sock is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    built: GatewayLike | Loaded
    if gateway is None:
        assert gateway_factory is not None
        built = gateway_factory(bound_host, bound_port)
    else:
        built = gateway
    own_outbound = outbound is None
    outbound = Outbound() if outbound is None else outbound
    server = TrioServer(
        gateway=built,
        limits=limits or ServerLimits(),
        timeouts=timeouts or Timeouts(),
        outbound=outbound,
        reload=reload,
        services=services,
        http=http,
        ssl_context=ssl_context,
    )
    try:
        async with _asyncio_loop(needs_asyncio(server.services)):
            if on_ready is not None:
                on_ready(bound_host, bound_port)
            task_status.started((bound_host, bound_port))
            await server.run(listeners, trio.Event() if shutdown is None else shutdown, grace=grace)
    finally:
        if own_outbound:
            await outbound.aclose()


@contextlib.asynccontextmanager
async def _asyncio_loop(needed: bool) -> AsyncIterator[None]:
    """A trio-asyncio loop for asyncio services if ``needed``, unless the caller runs one."""
    if not needed or trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield


def run(
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None = None,
    gateway_factory: GatewayFactory | None = None,
    reload: Reload | None = None,
    limits: ServerLimits | None = None,
    timeouts: Timeouts | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    grace: float = 10.0,
    services: ServiceRegistry | None = None,
    http: str = "httptools",
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Run :func:`serve` until SIGINT or SIGTERM, then shut down gracefully.

    With a ``reload``, SIGHUP re-reads the config (see :func:`serve`).

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
                reload=reload,
                limits=limits,
                timeouts=timeouts,
                on_ready=on_ready,
                shutdown=shutdown,
                grace=grace,
                services=services,
                http=http,
                sock=sock,
                ssl_context=ssl_context,
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
