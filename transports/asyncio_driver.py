"""The asyncio server: bytes from asyncio streams become core events; the actions are carried out.

The same loop as the trio driver (:mod:`transports.trio_driver`): one task per
connection reads, feeds :class:`ServerConnection`, turns each request head
into ``RequestReceived``, calls ``gateway.handle`` and carries out each action
through the executors it shares with the trio driver
(:mod:`transports._async_driver`). This module is only the asyncio I/O:
accepting (``asyncio.start_server``), ``_receive``, ``_send_bytes``, ``_close``,
signals and shutdown. No policy lives here.

Deadlines (:class:`transports._async_driver.Deadlines`) need no task: the sweep
runs in one loop timer (``call_at``), re-armed at the next deadline due; a
connection past its deadline has its task cancelled, and :meth:`_guarded`
turns that cancellation (and only that one) into the end of the connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

from sapg_core import ServerLimits

from ._async_driver import AsyncDriver, ClientGone, Connection
from ._common import GatewayFactory, GatewayLike, Loaded, Reload, Timeouts
from ._outbound import Outbound
from ._services import ServiceRegistry

__all__ = ["AsyncioServer", "run", "serve"]

logger = logging.getLogger("sapg")
_RECEIVE_SIZE = 65536
_BACKLOG = 1024


class _Connection(Connection):
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: ServerLimits,
        backend: str,
    ) -> None:
        super().__init__(limits, _peer(writer), backend=backend)
        self.reader = reader
        self.writer = writer
        if writer.get_extra_info("sslcontext") is not None:  # handshake done by asyncio
            self.scheme = "https"
        self.task: asyncio.Task[Any] | None = None


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"


class AsyncioServer(AsyncDriver[_Connection]):
    """Serves one gateway on asyncio servers; see :func:`serve`."""

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
        super().__init__(
            gateway=gateway,
            limits=limits,
            timeouts=timeouts,
            outbound=outbound,
            reload=reload,
            services=services,
            http=http,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()
        self._sweep_timer: asyncio.TimerHandle | None = None

    async def run(
        self, listeners: list[asyncio.Server], shutdown: asyncio.Event, *, grace: float
    ) -> None:
        """Serve until ``shutdown`` is set, then let in-flight requests finish within ``grace``.

        ``listeners`` were started with :meth:`_accept` as their callback. With
        a ``reload``, SIGHUP swaps the gateway meanwhile (main thread only).
        """
        loop = asyncio.get_running_loop()
        if self.reload is not None:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await shutdown.wait()
            for listener in listeners:
                listener.close()
            await asyncio.sleep(0)  # let connections accepted just now register
            self._stop_idle()
            await self._finish(grace)
        finally:
            if self.reload is not None:
                loop.remove_signal_handler(signal.SIGHUP)
            if self._sweep_timer is not None:
                self._sweep_timer.cancel()

    async def _finish(self, grace: float) -> None:
        """Wait for the connections' tasks; cancel those still running after ``grace``."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    def _on_sighup(self) -> None:
        logger.info("SIGHUP: reloading the config")
        task = asyncio.get_running_loop().create_task(self.reload_config())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The servers' callback: each accepted connection already has its own task."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve(_Connection(reader, writer, self.limits, self.http))

    # -- the backend's I/O ---------------------------------------------------------------

    async def _guarded(self, conn: _Connection) -> None:
        task = conn.task = asyncio.current_task()
        try:
            await self._serve_requests(conn)
        except asyncio.CancelledError:
            if not conn.is_expired or task is None or task.uncancel():
                raise  # not (only) our cut-off: shutdown, or a hard stop
            conn.is_broken = True
        finally:
            conn.task = None

    def _now(self) -> float:
        return self._loop.time()

    def _expire(self, conn: _Connection) -> None:
        if conn.task is not None:
            conn.task.cancel()

    def _wake_sweeper(self, when: float) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._sweep_timer = None
        next_wake = self._deadlines.sweep(self._loop.time())
        if next_wake < math.inf:
            self._sweep_timer = self._loop.call_at(next_wake, self._sweep)

    async def _receive(self, conn: _Connection) -> bytes | None:
        try:
            return await conn.reader.read(_RECEIVE_SIZE)
        except OSError:
            return None

    async def _send_bytes(self, conn: _Connection, data: bytes) -> None:
        transport = conn.writer.transport
        if not transport.is_closing():
            try:
                conn.writer.write(data)
                if transport.get_write_buffer_size():  # only then can drain() wait
                    await conn.writer.drain()
                return
            except (OSError, RuntimeError):  # reset, closed
                pass
        raise ClientGone

    async def _close(self, conn: _Connection) -> None:
        """Close, first reading what the client still sends so the close is not a reset."""
        writer = conn.writer
        try:
            async with asyncio.timeout(self.timeouts.linger):
                if conn.http.has_unread_input and not conn.is_broken and writer.can_write_eof():
                    writer.write_eof()
                    while await conn.reader.read(_RECEIVE_SIZE):
                        pass
                writer.close()
                await writer.wait_closed()  # the answer is flushed before the task ends
        except (OSError, RuntimeError):
            writer.transport.abort()


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
    shutdown: asyncio.Event | None = None,
    grace: float = 10.0,
    outbound: Outbound | None = None,
    services: ServiceRegistry | None = None,
    http: str = "httptools",
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until ``shutdown`` is set, then shut down gracefully and return.

    Args:
        gateway: the core to drive; or ``gateway_factory(host, port)`` builds it
            once the listener is bound (give exactly one of them).
        services: what ``CallService`` actions call (see :func:`transports.load_services`);
            a factory or a reload may bring its own (:class:`transports._common.Loaded`).
        reload: on SIGHUP, builds the gateway for new requests (see
            :meth:`AsyncioServer.reload_config`); needs the main thread.
        limits, timeouts: the server's; defaults as in their classes.
        on_ready: called with the bound host and port once accepting.
        shutdown: set it to stop accepting, close idle keep-alive connections
            and let in-flight requests finish; those still running after
            ``grace`` seconds are cancelled.
        outbound: the upstream executor (default: a fresh pool, closed on return).
        http: the request parser, one of :data:`sapg_core.PARSER_BACKENDS`.
        sock: a socket already bound and listening (a worker process's, inherited from
            its supervisor) to accept on instead of binding ``host`` and ``port``.
        ssl_context: serve HTTPS with it; None: plain HTTP. asyncio does the handshake
            before the connection is ours, cut off after the header timeout, so a
            client that never completes it holds no task.
    """
    if (gateway is None) == (gateway_factory is None):
        raise TypeError("give exactly one of gateway and gateway_factory")
    server: AsyncioServer | None = None
    tls: dict[str, Any] = {}
    if ssl_context is not None:
        tls = {"ssl": ssl_context, "ssl_handshake_timeout": (timeouts or Timeouts()).header}

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert server is not None  # serving starts once it exists
        await server._accept(reader, writer)

    if sock is not None:
        listener = await asyncio.start_server(
            accept, sock=sock, backlog=_BACKLOG, start_serving=False, **tls
        )
    else:
        listener = await asyncio.start_server(
            accept, host, port, backlog=_BACKLOG, start_serving=False, **tls
        )
    own_outbound = outbound is None
    outbound = Outbound() if outbound is None else outbound
    try:
        bound_host, bound_port = listener.sockets[0].getsockname()[:2]
        built: GatewayLike | Loaded
        if gateway is None:
            assert gateway_factory is not None
            built = gateway_factory(bound_host, bound_port)
        else:
            built = gateway
        server = AsyncioServer(
            gateway=built,
            limits=limits or ServerLimits(),
            timeouts=timeouts or Timeouts(),
            outbound=outbound,
            reload=reload,
            services=services,
            http=http,
        )
        await listener.start_serving()
        if on_ready is not None:
            on_ready(bound_host, bound_port)
        await server.run([listener], asyncio.Event() if shutdown is None else shutdown, grace=grace)
    finally:
        listener.close()
        if own_outbound:
            await outbound.aclose()


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
        loop = asyncio.get_running_loop()
        shutdown = asyncio.Event()
        serving = asyncio.current_task()
        assert serving is not None

        def on_signal(signum: int) -> None:
            if shutdown.is_set():
                logger.warning("signal %d again: stopping now", signum)
                serving.cancel()
                return
            logger.info("signal %d: shutting down gracefully", signum)
            shutdown.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
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
        except asyncio.CancelledError:
            return False
        return True

    return 0 if asyncio.run(main()) else 1
