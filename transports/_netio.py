"""Byte streams to upstreams on trio, asyncio and blocking sockets, and their deadlines.

Theory of operation. The outbound executor (:mod:`transports._outbound`)
speaks HTTP through :class:`sapg_core.ClientConnection` and moves bytes
through one of three small stream types, each on its event loop's own
primitives: :class:`TrioStream` (``trio.open_tcp_stream``, ``trio.SSLStream``),
:class:`AsyncioStream` (a plain :class:`asyncio.Protocol` on
``loop.create_connection``, reading into a buffer it pauses when full) and
:class:`BlockingStream` (``socket.create_connection``, ``wrap_socket``). All
three verify the upstream's certificate and host name with SNI when the
origin is ``https``.

Time. An exchange keeps one :class:`Deadline` and moves it per phase (connect,
pool wait, write, read) instead of opening a scope per read and write: under
trio it is one :class:`trio.CancelScope` whose ``deadline`` is reassigned,
under asyncio one :func:`asyncio.timeout` that is rescheduled; either raises
:class:`TimeoutError` when it passes. A read outside an exchange (the
response body, relayed after the head) takes its own deadline, and pays for a
timer only when it really has to wait. The blocking stream sets the socket
timeout only when the value changes.

:meth:`is_stale` answers, without blocking, whether an idle pooled
connection has anything to say (bytes, EOF, an error): then it must not be
reused, because those bytes would be read as the next request's answer.

:func:`tunnel_blocking` is the blocking driver's WebSocket tunnel: one thread
copies bytes both ways between the client's socket and an upstream stream,
with ``selectors``, until either side closes or nothing moves for the idle
timeout. (The trio and asyncio drivers pump with two tasks instead.)
"""

from __future__ import annotations

import asyncio
import math
import select
import selectors
import socket
import ssl
from collections import deque
from types import TracebackType
from typing import Final

import trio

from sapg_core import FailureReason

__all__ = [
    "AsyncioDeadline",
    "AsyncioStream",
    "BlockingStream",
    "Deadline",
    "TrioDeadline",
    "TrioStream",
    "classify",
    "connect_asyncio",
    "connect_blocking",
    "connect_trio",
    "describe",
    "tunnel_blocking",
]

#: Bytes asked for per read.
READ_SIZE: Final = 65536
#: The asyncio stream stops reading from the socket past this many buffered bytes.
_HIGH_WATER: Final = 4 * READ_SIZE


def _slack(seconds: float) -> float:
    """How far a deadline may stay put when moved (1% of the timeout, at most 20 ms).

    Moving it costs a timer (asyncio) or a deadline update (trio); moving it
    by less than this, phase after phase, buys nothing.
    """
    return min(seconds * 0.01, 0.02)


class Deadline:
    """One deadline for an outbound exchange, moved per phase; see the module docstring."""

    def move(self, seconds: float | None) -> None:
        """Expire ``seconds`` from now (None: never, while waiting on someone else)."""
        raise NotImplementedError


class TrioDeadline(Deadline):
    """A :class:`trio.CancelScope` used as a deadline: raises :class:`TimeoutError` on exit."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float | None = None) -> None:
        """Args: seconds: the first deadline, from now (None: none yet); set at creation, it
        costs no move."""
        at = math.inf if seconds is None else trio.current_time() + seconds
        self._scope = trio.CancelScope(deadline=at)

    def __enter__(self) -> TrioDeadline:
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        handled = self._scope.__exit__(exc_type, exc, traceback)
        if self._scope.cancelled_caught:
            raise TimeoutError("upstream deadline passed")
        return handled

    async def __aenter__(self) -> TrioDeadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, traceback)

    def move(self, seconds: float | None) -> None:
        if seconds is None:
            self._scope.deadline = math.inf
            return
        deadline = trio.current_time() + seconds
        if abs(deadline - self._scope.deadline) > _slack(seconds):
            self._scope.deadline = deadline


class AsyncioDeadline(Deadline):
    """An :func:`asyncio.timeout` used as a deadline: raises :class:`TimeoutError` on exit."""

    __slots__ = ("_at", "_loop", "_timeout")

    def __init__(self, seconds: float | None = None) -> None:
        """Args: as :class:`TrioDeadline`."""
        self._loop = asyncio.get_running_loop()
        if seconds is None:
            self._at = math.inf
            self._timeout = asyncio.timeout(None)
        else:
            self._at = self._loop.time() + seconds
            self._timeout = asyncio.timeout_at(self._at)

    async def __aenter__(self) -> AsyncioDeadline:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._timeout.__aexit__(exc_type, exc, traceback)

    def move(self, seconds: float | None) -> None:
        if seconds is None:
            if self._at != math.inf:
                self._at = math.inf
                self._timeout.reschedule(None)
            return
        deadline = self._loop.time() + seconds
        if abs(deadline - self._at) > _slack(seconds):
            self._at = deadline
            self._timeout.reschedule(deadline)


# -- failures -------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8:
        seen.append(current)
        if isinstance(current, BaseExceptionGroup) and current.exceptions:
            current = current.exceptions[0]
        else:
            current = current.__cause__ or current.__context__
    return seen


def classify(exc: BaseException, *, connecting: bool) -> FailureReason:
    """Why an I/O error failed an exchange.

    A timeout is TIMEOUT; while connecting, a TLS error anywhere in the cause
    chain is TLS and anything else CONNECT (refused, unreachable, DNS); once
    connected, any error is RESET.
    """
    if isinstance(exc, TimeoutError):
        return FailureReason.TIMEOUT
    if connecting:
        chain = _chain(exc)
        return (
            FailureReason.TLS
            if any(isinstance(e, ssl.SSLError) for e in chain)
            else (FailureReason.CONNECT)
        )
    return FailureReason.RESET


def describe(exc: BaseException) -> str:
    """The messages along the exception's cause chain, e.g. ``[SSL: ...] certificate ...``."""
    parts: list[str] = []
    for item in _chain(exc):
        text = str(item)
        if text and not any(text in part for part in parts):
            parts.append(text)
        if len(parts) == 3:
            break
    return ": ".join(parts) or type(exc).__name__


class _Poller:
    """Whether a socket has bytes, EOF or an error to report, without blocking.

    One ``poll`` object per connection, the descriptor registered once: each
    check is then a single ``poll(0)`` call (``poll``, not ``select``: any
    descriptor number). Made with the connection, dropped with it (the number
    may be reused once the socket is closed).
    """

    __slots__ = ("_poll",)

    def __init__(self, fileno: int) -> None:
        self._poll: select.poll | None = select.poll()
        try:
            self._poll.register(fileno, select.POLLIN | select.POLLPRI)
        except (OSError, ValueError):  # closed already
            self._poll = None

    def readable(self) -> bool:
        if self._poll is None:
            return True
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):  # closed under us
            return True


# -- trio ----------------------------------------------------------------------------------


class TrioStream:
    """An upstream connection on trio (TCP, or TLS over it).

    Plain TCP moves bytes on the trio socket itself (its non-blocking call is
    tried first, and the task waits only when the socket would block): the
    :class:`trio.SocketStream` wrapper adds two context managers and a
    conflict check per call, and buys nothing here, where one task at a time
    holds the connection. TLS goes through :class:`trio.SSLStream`.
    """

    __slots__ = ("_poller", "_raw", "_sock", "_tls")

    def __init__(
        self, raw: trio.SocketStream, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    ) -> None:
        self._raw = raw
        self._sock = raw.socket
        self._tls = stream if isinstance(stream, trio.SSLStream) else None
        self._poller = _Poller(self._sock.fileno())

    async def receive(self, deadline: float | None = None) -> bytes:
        """Some bytes (``b""`` at EOF); ``deadline`` (seconds from now) when no scope is around."""
        if deadline is None:
            return await self._receive()
        with trio.move_on_after(deadline) as scope:
            return await self._receive()
        assert scope.cancelled_caught
        raise TimeoutError("upstream read timed out")

    async def _receive(self) -> bytes:
        if self._tls is not None:
            return bytes(await self._tls.receive_some(READ_SIZE))
        return await self._sock.recv(READ_SIZE)

    async def send(self, data: bytes) -> None:
        if self._tls is not None:
            await self._tls.send_all(data)
            return
        sock = self._sock
        sent = await sock.send(data)
        if sent < len(data):  # the kernel's buffer is full: the rest as it drains
            view = memoryview(data)[sent:]
            while view:
                view = view[await sock.send(view) :]

    def is_stale(self) -> bool:
        if self._tls is not None and self._tls.pending():
            return True
        return self._poller.readable()

    def close(self) -> None:
        """Close at once (no TLS close_notify: the connection is simply dropped)."""
        self._sock.close()


async def connect_trio(host: str, port: int, tls: ssl.SSLContext | None) -> TrioStream:
    """Open a connection (run inside the exchange's deadline)."""
    raw = await trio.open_tcp_stream(host, port)
    if tls is None:
        return TrioStream(raw, raw)
    stream = trio.SSLStream(raw, tls, server_hostname=host, https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        raw.socket.close()
        raise
    return TrioStream(raw, stream)


# -- asyncio -------------------------------------------------------------------------------


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes a reader; pauses the socket when the buffer is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake_reader()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.error = exc
        self.eof = True
        self._wake_reader()
        if self.drain is not None and not self.drain.done():
            self.drain.set_exception(ConnectionResetError("upstream connection lost"))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)


class AsyncioStream:
    """An upstream connection on asyncio (TCP, or TLS over it)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    async def receive(self, deadline: float | None = None) -> bytes:
        """Some bytes (``b""`` at EOF); ``deadline`` (seconds from now) when no scope is around."""
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            waiter = protocol.reader = protocol.loop.create_future()
            timer = None
            if deadline is not None:
                timer = protocol.loop.call_later(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                protocol.reader = None
                if timer is not None:
                    timer.cancel()
        if protocol.chunks:
            data = protocol.chunks.popleft()
            protocol.buffered -= len(data)
            if protocol.reading_paused and protocol.buffered <= _HIGH_WATER // 2:
                protocol.reading_paused = False
                if protocol.transport is not None:
                    protocol.transport.resume_reading()
            return data
        if protocol.error is not None:
            raise ConnectionResetError(str(protocol.error)) from protocol.error
        return b""

    async def send(self, data: bytes) -> None:
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing() or protocol.error is not None:
            raise ConnectionResetError("upstream connection closed")
        transport.write(data)
        if protocol.writing_paused:
            protocol.drain = protocol.loop.create_future()
            try:
                await protocol.drain
            finally:
                protocol.drain = None

    def is_stale(self) -> bool:
        protocol = self._protocol
        transport = protocol.transport
        return bool(
            protocol.chunks
            or protocol.eof
            or protocol.error is not None
            or transport is None
            or transport.is_closing()
        )

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("upstream read timed out"))


async def connect_asyncio(host: str, port: int, tls: ssl.SSLContext | None) -> AsyncioStream:
    """Open a connection (run inside the exchange's deadline)."""
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    await loop.create_connection(
        lambda: protocol, host, port, ssl=tls, server_hostname=host if tls is not None else None
    )
    return AsyncioStream(protocol)


# -- blocking ------------------------------------------------------------------------------


class BlockingStream:
    """An upstream connection on a blocking socket (TCP, or TLS over it)."""

    __slots__ = ("_poller", "_sock", "_timeout")

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        self._timeout = timeout
        self._poller = _Poller(sock.fileno())

    def set_timeout(self, seconds: float | None) -> None:
        """The timeout of each read and write from now on (a syscall only when it changes)."""
        if seconds != self._timeout:
            self._sock.settimeout(seconds)
            self._timeout = seconds

    def receive(self) -> bytes:
        return self._sock.recv(READ_SIZE)

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def is_stale(self) -> bool:
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return self._poller.readable()

    def close(self) -> None:
        self._sock.close()

    @property
    def socket(self) -> socket.socket:
        """The socket itself (an :class:`ssl.SSLSocket` for TLS), for a tunnel."""
        return self._sock


def connect_blocking(
    host: str, port: int, tls: ssl.SSLContext | None, timeout: float
) -> BlockingStream:
    """Open a connection within ``timeout`` seconds (the TCP connect and the TLS handshake each)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return BlockingStream(sock, timeout)


def _decrypted(sock: socket.socket) -> bool:
    """Whether TLS has bytes decrypted already, which ``select`` cannot see."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def tunnel_blocking(
    client: socket.socket, upstream: BlockingStream, first: bytes, *, idle: float
) -> None:
    """Copy bytes both ways until either side closes, breaks, or ``idle`` seconds pass unused.

    One thread waits on both sockets at once; a write is awaited before the next
    read (backpressure), and stalls at most ``idle`` (the upstream's timeout is set
    here; the caller sets the client socket's). TLS bytes already decrypted on
    either side are read before waiting again.

    Args:
        client: the client's socket (blocking, its timeout ``idle``).
        upstream: the upstream stream after its 101.
        first: bytes the client sent after its request head, sent upstream first.
        idle: seconds without a byte either way that end the tunnel.
    """
    upstream.set_timeout(idle)
    up = upstream.socket
    pairs = ((client, up), (up, client))
    try:
        if first:
            up.sendall(first)
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, up)
            selector.register(up, selectors.EVENT_READ, client)
            while True:
                ready = [pair for pair in pairs if _decrypted(pair[0])]
                if not ready:
                    found = selector.select(idle)
                    if not found:
                        return  # idle past the timeout
                    ready = [(key.fileobj, key.data) for key, _ in found]  # type: ignore[misc]
                for source, sink in ready:
                    data = source.recv(READ_SIZE)
                    if not data:
                        return
                    sink.sendall(data)
    except OSError:  # reset, timed out writing, TLS failure: the tunnel is over
        return
