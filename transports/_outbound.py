"""The outbound executor: carries ``ForwardUpstream`` and ``SendHTTP`` out to upstreams.

Theory of operation. The HTTP is the core's (:class:`sapg_core.ClientConnection`:
request rendering, response events, whether a connection may be reused) and so
are the keep-alive pool's decisions (:class:`sapg_core.ConnectionPool`: reuse
the most recent idle connection of the origin, open one, or wait, at most
``max_per_origin`` per origin and ``max_connections`` in all). This module
acts on them: it opens sockets through :mod:`transports._netio` on the
running event loop's own streams (trio or asyncio, detected on first use, for
:class:`Outbound`; blocking sockets for :class:`SyncOutbound`), moves the
bytes, wakes requests waiting for a connection, closes what the pool drops and
keeps time.

One exchange keeps one deadline and moves it per phase: the connect timeout
while it waits for a pool slot and connects, the read timeout for each write
to and read from the upstream, none while it waits for the client's next body
chunk (the client's own deadlines cover that). Failures become
``ActionFailed`` reasons: connect and pool-wait timeouts and read and write
timeouts are TIMEOUT (504); refused or unreachable is CONNECT, a failed
handshake or certificate TLS, anything after connecting RESET (502), and so
is an upstream that breaks HTTP/1.1 (both ``Content-Length`` and
``Transfer-Encoding``, say): such an answer is never relayed. A request that
failed on a pooled connection before any byte of an answer came back is sent
again on another, when its body is in hand (:func:`sapg_core.may_retry`).
Bodies stream both ways: the client's body is written as it arrives, the
response body is read as the relay consumes it. Nothing follows redirects.

A WebSocket handshake (``ForwardUpstream.upgrade``) is sent as an upgrade:
a 101 answer leaves the connection out of the pool, raw, and its body object
hands the stream over (:meth:`UpstreamBody.take_tunnel`) for the driver's
tunnel; closing the body object closes the connection and frees its slot.
Such a connection is never reused, whatever the answer.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Final, TypeVar

import sniffio
import trio

from sapg_core import (
    ActionFailed,
    ClientConnection,
    ConnectionPool,
    FailureReason,
    ForwardUpstream,
    Headers,
    HTTPResponseReceived,
    Open,
    Origin,
    ParserBackend,
    PooledConnection,
    PoolLimits,
    ResponseData,
    ResponseEnd,
    ResponseHead,
    Reuse,
    SendHTTP,
    Ticket,
    UpstreamProtocolError,
    UpstreamResponded,
    UpstreamTarget,
    Wait,
    check_request,
    may_retry,
    split_upstream_url,
)

from ._common import ClientBodyError
from ._netio import (
    AsyncioDeadline,
    AsyncioStream,
    BlockingStream,
    TrioDeadline,
    TrioStream,
    classify,
    connect_asyncio,
    connect_blocking,
    connect_trio,
    describe,
)

__all__ = [
    "IO_ERRORS",
    "PER_ORIGIN_ENV",
    "Outbound",
    "OutboundError",
    "SyncOutbound",
    "SyncUpstreamBody",
    "UpstreamBody",
    "default_ssl_context",
    "failure_reason",
]

#: Environment variable: connections per upstream origin at most (default 100).
PER_ORIGIN_ENV: Final = "SAPG_UPSTREAM_CONNECTIONS_PER_ORIGIN"

#: What can go wrong on a socket, on every network backend.
_IO_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError)
#: What a broken upstream stream raises, on any of the three (a tunnel's pumps catch these).
IO_ERRORS: Final = _IO_ERRORS


def failure_reason(exc: BaseException, *, connecting: bool = False) -> FailureReason:
    """Why an I/O error failed an exchange (see :func:`transports._netio.classify`)."""
    return classify(exc, connecting=connecting)


def default_ssl_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A client context trusting the system store plus the file in ``SSL_CERT_FILE``.

    OpenSSL's default verify paths *replace* the system CA file when
    ``SSL_CERT_FILE`` is set, so the system file is loaded explicitly first.
    """
    environ = os.environ if environ is None else environ
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    paths = ssl.get_default_verify_paths()
    has_system = False
    if sys.platform == "win32":  # pragma: no cover - the Windows store
        context.load_default_certs()
        has_system = True
    if os.path.isfile(paths.openssl_cafile):
        context.load_verify_locations(cafile=paths.openssl_cafile)
        has_system = True
    if os.path.isdir(paths.openssl_capath):
        context.load_verify_locations(capath=paths.openssl_capath)
        has_system = True
    if not has_system:  # pragma: no cover - e.g. macOS python.org builds
        try:
            import certifi
        except ImportError:
            pass
        else:
            context.load_verify_locations(cafile=certifi.where())
    extra = environ.get("SSL_CERT_FILE", "")
    if extra:
        context.load_verify_locations(cafile=extra)
    return context


def _limits(max_connections: int, max_per_origin: int | None, expiry: float) -> PoolLimits:
    if max_per_origin is None:
        max_per_origin = int(os.environ.get(PER_ORIGIN_ENV) or 100)
    return PoolLimits(
        max_per_origin=min(max_per_origin, max_connections),
        max_connections=max_connections,
        keepalive_expiry=expiry,
    )


class OutboundError(Exception):
    """An upstream response body broke off; ``reason`` says how."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _failed(request_id: int, reason: FailureReason, detail: str) -> ActionFailed:
    return ActionFailed(request_id=request_id, reason=reason, detail=detail, now=time.time())


# -- what an exchange sends ------------------------------------------------------------------


class _Request:
    """One request to send, prepared once for every attempt."""

    __slots__ = (
        "connect_timeout",
        "content_length",
        "headers",
        "method",
        "payload",
        "read_timeout",
        "request_id",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        *,
        request_id: int,
        method: str,
        target: UpstreamTarget,
        headers: tuple[tuple[str, str], ...],
        payload: bytes | None,
        content_length: int | None,
        connect_timeout: float,
        read_timeout: float,
        upgrade: bool = False,
    ) -> None:
        self.upgrade = upgrade
        self.request_id = request_id
        self.method = method
        self.target = target
        self.headers = headers
        #: The whole body when it is in hand (then a retry can send it again); None: streamed.
        self.payload = payload
        self.content_length = content_length
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def head(self, client: ClientConnection) -> bytes:
        return client.start_request(
            self.method,
            self.target.target,
            self.headers,
            authority=self.target.authority,
            content_length=self.content_length,
            checked=True,
            upgrade=self.upgrade,
        )


def _forward_request(
    action: ForwardUpstream, content_length: int | None
) -> _Request | ActionFailed:
    limit = action.body_limit
    if action.body is not None:
        content_length = len(action.body)
    if limit and content_length is not None and content_length > limit:
        detail = f"declared body of {content_length} bytes is over {limit}"
        return _failed(action.request_id, FailureReason.BODY_TOO_LARGE, detail)
    target = _target(action.request_id, action.method, action.url, action.headers)
    if isinstance(target, ActionFailed):
        return target
    return _Request(
        request_id=action.request_id,
        method=action.method,
        target=target,
        headers=action.headers,
        payload=action.body if action.body is not None else (b"" if content_length == 0 else None),
        content_length=content_length,
        connect_timeout=action.connect_timeout,
        read_timeout=action.read_timeout,
        upgrade=action.upgrade,
    )


def _target(
    request_id: int, method: str, url: str, headers: tuple[tuple[str, str], ...]
) -> UpstreamTarget | ActionFailed:
    """Where the request goes, once it is known to render (nothing is sent otherwise)."""
    try:
        target = split_upstream_url(url)
    except UpstreamProtocolError as exc:
        return _failed(request_id, FailureReason.CONNECT, exc.detail)
    try:
        check_request(method, target.target, headers)
    except UpstreamProtocolError as exc:
        return _failed(request_id, FailureReason.RESET, exc.detail)
    return target


def _send_request(action: SendHTTP) -> _Request | ActionFailed:
    target = _target(action.request_id, action.method, action.url, action.headers)
    if isinstance(target, ActionFailed):
        return target
    return _Request(
        request_id=action.request_id,
        method=action.method,
        target=target,
        headers=action.headers,
        payload=action.body,
        content_length=len(action.body),
        connect_timeout=action.timeout,
        read_timeout=action.timeout,
    )


def _ready(client: ClientConnection) -> tuple[bytes, ResponseEnd | None]:
    """The body bytes parsed already, joined, and the end if it came with them.

    Seeing the end along with the last bytes gives the connection back before
    those bytes are relayed, so the client's next request can already reuse it.
    """
    chunks: list[bytes] = []
    while True:
        event = client.next_event()
        if isinstance(event, ResponseData):
            chunks.append(event.data)
        elif isinstance(event, ResponseEnd):
            return b"".join(chunks), event
        else:
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), None


def _declared_length(headers: Headers) -> int:
    """The answer's ``Content-Length`` (the parser checked it), or -1 without one."""
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value)
    return -1


def _too_large(action: SendHTTP) -> ActionFailed:
    """A buffered answer over ``action.max_body``: the caller's "provider unreachable"."""
    detail = f"answer larger than {action.max_body} bytes"
    return _failed(action.request_id, FailureReason.RESET, detail)


def _responded(request_id: int, head: ResponseHead) -> UpstreamResponded:
    return UpstreamResponded(
        request_id=request_id, status=head.status, headers=head.headers, now=time.time()
    )


# -- asyncio and trio ------------------------------------------------------------------------

_AsyncStream = TrioStream | AsyncioStream


class _Upstream:
    """A pooled connection: its stream, its HTTP state and its pool record."""

    __slots__ = ("client", "pooled", "stream")

    def __init__(self, stream: _AsyncStream, client: ClientConnection) -> None:
        self.stream = stream
        self.client = client
        self.pooled: PooledConnection[_Upstream] | None = None


class UpstreamBody:
    """The body of a forwarded request's response: iterate it once, then :meth:`aclose`.

    Iteration raises :class:`OutboundError` if the upstream breaks off, stalls
    past the read timeout or breaks HTTP/1.1.
    """

    def __init__(
        self,
        outbound: Outbound,
        upstream: _Upstream | None,
        read_timeout: float,
        first: bytes = b"",
    ) -> None:
        self._outbound = outbound
        self._upstream = upstream
        self._read_timeout = read_timeout
        self._first = first
        self._error: OutboundError | None = None  # found by take_ready, raised by iteration

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        chunk = await self._next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def take_ready(self) -> tuple[bytes, bool]:
        """The body bytes received already, taken without waiting, and whether they are the
        whole body (the connection then goes back to the pool).

        A small answer usually comes with its head: the relay sends head, body and end in
        one write. A fault in the bytes parsed here is left for the iteration to raise.
        """
        first, self._first = self._first, b""
        upstream = self._upstream
        if upstream is None:
            return first, True
        try:
            data, end = _ready(upstream.client)
        except UpstreamProtocolError as exc:  # the iteration raises it, after ``first``
            self._finish(reusable=False)
            self._error = OutboundError(FailureReason.RESET, exc.detail)
            return first, False
        if end is not None:
            self._finish(reusable=end.reusable)
            return first + data, True
        return (first + data if first else data), False

    def take_tunnel(self) -> tuple[TrioStream | AsyncioStream, bytes]:
        """After a 101: the raw upstream stream and the bytes that followed the head.

        The connection stays out of the pool (its slot counted) until :meth:`aclose`,
        which closes it.

        Raises:
            OutboundError: the answer was not a 101 (a driver bug).
        """
        upstream = self._upstream
        if upstream is None:
            raise OutboundError(FailureReason.RESET, "no upstream connection to tunnel")
        try:
            first = upstream.client.take_tunnel_bytes()
        except UpstreamProtocolError as exc:
            raise OutboundError(FailureReason.RESET, exc.detail) from None
        return upstream.stream, first

    async def _next(self) -> bytes | None:
        upstream = self._upstream
        if upstream is None:
            return None
        client = upstream.client
        try:
            while True:
                data, end = _ready(client)
                if end is not None:
                    self._finish(reusable=end.reusable)
                    return data or None
                if data:
                    return data
                client.receive_data(await upstream.stream.receive(self._read_timeout))
        except UpstreamProtocolError as exc:
            self._finish(reusable=False)
            raise OutboundError(FailureReason.RESET, exc.detail) from None
        except TimeoutError:
            self._finish(reusable=False)
            raise OutboundError(FailureReason.TIMEOUT, "upstream read timed out") from None
        except _IO_ERRORS as exc:
            self._finish(reusable=False)
            raise OutboundError(FailureReason.RESET, describe(exc)) from None
        except BaseException:
            self._finish(reusable=False)
            raise

    def _finish(self, *, reusable: bool) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            self._outbound._release(upstream, reusable=reusable)

    async def aclose(self) -> None:
        """Give the connection back to the pool, or drop it if the body was not read to its end."""
        self._first = b""
        self._finish(reusable=False)


class Outbound:
    """Outbound HTTP for one event loop (trio or asyncio), with a keep-alive pool per origin.

    Args:
        max_connections: open connections at most, across all upstreams.
        max_per_origin: open connections at most to one origin (scheme, host,
            port); default ``$SAPG_UPSTREAM_CONNECTIONS_PER_ORIGIN`` or 100.
        keepalive_expiry: seconds an idle pooled connection is kept.
        ssl_context: defaults to :func:`default_ssl_context`.
        parser: the response parser backend.
    """

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        max_per_origin: int | None = None,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        parser: ParserBackend = "httptools",
    ) -> None:
        self._ssl = ssl_context if ssl_context is not None else default_ssl_context()
        self._pool: ConnectionPool[_Upstream] = ConnectionPool(
            _limits(max_connections, max_per_origin, keepalive_expiry)
        )
        self._parser: ParserBackend = parser
        self._trio: bool | None = None
        self._wakers: dict[Ticket[_Upstream], trio.Event | asyncio.Event] = {}

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their body is done."""
        self._pool.close()
        self._close_dropped()

    # -- the actions ---------------------------------------------------------------------

    async def forward(
        self, action: ForwardUpstream, body: AsyncIterable[bytes], *, content_length: int | None
    ) -> tuple[UpstreamResponded, UpstreamBody] | ActionFailed:
        """Send the client's request upstream, streaming ``body``; return the response head.

        Args:
            action: what to send where.
            body: the client's body as it arrives; it may raise
                :class:`ClientBodyError`, which fails the action with its reason.
                Not read when ``action.body`` holds the body already.
            content_length: the client's framing: its declared length, or None
                for chunked (sent chunked upstream too).

        Returns:
            the upstream's head and its body still to stream, or why it failed.
        """
        request = _forward_request(action, content_length)
        if isinstance(request, ActionFailed):
            return request
        if request.payload is not None and action.body is None:
            try:  # a declared empty body: read its end from the client now
                async for chunk in body:
                    if chunk:
                        raise ClientBodyError(FailureReason.CLIENT, "body longer than declared")
            except ClientBodyError as exc:
                return _failed(action.request_id, exc.reason, exc.detail)
        result = await self._exchange(request, body)
        if isinstance(result, ActionFailed):
            return result
        head, upstream, first = result
        return _responded(action.request_id, head), UpstreamBody(
            self, upstream, request.read_timeout, first
        )

    async def send(self, action: SendHTTP) -> HTTPResponseReceived | ActionFailed:
        """Make one buffered call and read the whole answer, within ``action.timeout`` per step."""
        request = _send_request(action)
        if isinstance(request, ActionFailed):
            return request
        result = await self._exchange(request, None)
        if isinstance(result, ActionFailed):
            return result
        head, upstream, first = result
        stream = UpstreamBody(self, upstream, request.read_timeout, first)
        chunks: list[bytes] = []
        size, limit = 0, action.max_body
        if _declared_length(head.headers) > limit:  # refused before a byte of it is read
            await stream.aclose()
            return _too_large(action)
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    await stream.aclose()
                    return _too_large(action)
                chunks.append(chunk)
        except OutboundError as exc:
            return _failed(action.request_id, exc.reason, exc.detail)
        return HTTPResponseReceived(
            request_id=action.request_id,
            status=head.status,
            headers=head.headers,
            body=b"".join(chunks),
            now=time.time(),
        )

    # -- one exchange ----------------------------------------------------------------------

    async def _exchange(
        self, request: _Request, body: AsyncIterable[bytes] | None
    ) -> tuple[ResponseHead, _Upstream | None, bytes] | ActionFailed:
        """Send the request (again, on a stale pooled connection) and read the response head."""
        attempt = 0
        while True:
            outcome = await self._attempt(request, body, attempt)
            if outcome is not None:
                return outcome
            attempt += 1

    async def _attempt(
        self, request: _Request, body: AsyncIterable[bytes] | None, attempt: int
    ) -> tuple[ResponseHead, _Upstream | None, bytes] | ActionFailed | None:
        """One try; None when it failed in a way that may be retried."""
        holder: list[_Upstream] = []
        phase = "connect"
        try:
            async with self._deadline(request.read_timeout) as deadline:
                upstream = await self._acquire(request, holder, deadline)
                phase = "send"
                deadline.move(request.read_timeout)
                try:
                    await self._write(upstream, request, body, deadline)
                except _IO_ERRORS as exc:
                    # The upstream may have answered early (413, say) and closed.
                    head = await self._early_answer(upstream, request.read_timeout, deadline, exc)
                else:
                    phase = "receive"
                    head = await self._read_head(upstream, request.read_timeout, deadline)
        except (ClientBodyError, UpstreamProtocolError, *_IO_ERRORS) as exc:  # TimeoutError too
            retry = _may_retry_after(exc, phase, holder, request, attempt)
            self._drop(holder)
            return None if retry else _attempt_failed(request.request_id, phase, exc)
        except BaseException:
            self._drop(holder)
            raise
        return _after_head(head, upstream, self._release)

    async def _write(
        self,
        upstream: _Upstream,
        request: _Request,
        body: AsyncIterable[bytes] | None,
        deadline: TrioDeadline | AsyncioDeadline,
    ) -> None:
        client, stream = upstream.client, upstream.stream
        head = request.head(client)
        if request.payload is not None or body is None:
            payload = request.payload or b""
            await stream.send(head + client.send_body(payload) + client.end_request())
            return
        await stream.send(head)
        chunks = aiter(body)
        while True:
            deadline.move(None)  # waiting for the client is not the upstream's time
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            deadline.move(request.read_timeout)
            if chunk:
                await stream.send(client.send_body(chunk))
        deadline.move(request.read_timeout)
        tail = client.end_request()
        if tail:
            await stream.send(tail)

    @classmethod
    async def _early_answer(
        cls,
        upstream: _Upstream,
        read_timeout: float,
        deadline: TrioDeadline | AsyncioDeadline,
        error: BaseException,
    ) -> ResponseHead:
        """After a failed write: the answer the upstream sent before closing, or ``error``."""
        try:
            return await cls._read_head(upstream, read_timeout, deadline)
        except (UpstreamProtocolError, *_IO_ERRORS):
            pass
        raise error

    @staticmethod
    async def _read_head(
        upstream: _Upstream, read_timeout: float, deadline: TrioDeadline | AsyncioDeadline
    ) -> ResponseHead:
        client, stream = upstream.client, upstream.stream
        while True:
            event = client.next_event()
            if isinstance(event, ResponseHead):
                return event
            deadline.move(read_timeout)
            client.receive_data(await stream.receive())

    # -- the pool, acted on ------------------------------------------------------------------

    def _is_trio(self) -> bool:
        is_trio = self._trio
        if is_trio is None:
            library = sniffio.current_async_library()
            if library not in ("trio", "asyncio"):
                raise RuntimeError(f"unsupported async library {library!r}")
            is_trio = self._trio = library == "trio"
        return is_trio

    def _deadline(self, seconds: float) -> TrioDeadline | AsyncioDeadline:
        """The exchange's deadline, first ``seconds`` from now (a reused connection's write and
        read need no other)."""
        return TrioDeadline(seconds) if self._is_trio() else AsyncioDeadline(seconds)

    async def _acquire(
        self, request: _Request, holder: list[_Upstream], deadline: TrioDeadline | AsyncioDeadline
    ) -> _Upstream:
        """A connection to the origin: reused, or waited for and opened by the connect timeout."""
        target = request.target
        pool, origin = self._pool, target.origin
        while True:
            decision = pool.acquire(origin, time.monotonic())
            self._close_dropped()
            if not isinstance(decision, Reuse):
                deadline.move(request.connect_timeout)
            if isinstance(decision, Wait):
                decision = await self._wait(decision.ticket)
            if isinstance(decision, Reuse):
                upstream = decision.connection.handle
                if upstream.stream.is_stale() or not upstream.client.is_reusable:
                    self._release(upstream, reusable=False)
                    continue
                holder.append(upstream)
                return upstream
            try:
                stream = await self._connect(origin, target.host)
            except BaseException:
                self._wake(pool.connect_failed(origin))
                raise
            upstream = _Upstream(stream, ClientConnection(self._parser))
            upstream.pooled = pool.connected(origin, upstream)
            holder.append(upstream)
            return upstream

    async def _connect(self, origin: Origin, host: str) -> _AsyncStream:
        tls = self._ssl if origin[0] == "https" else None
        if self._is_trio():
            return await connect_trio(host, origin[2], tls)
        return await connect_asyncio(host, origin[2], tls)

    async def _wait(self, ticket: Ticket[_Upstream]) -> Reuse[_Upstream] | Open:
        event: trio.Event | asyncio.Event = trio.Event() if self._is_trio() else asyncio.Event()
        self._wakers[ticket] = event
        try:
            await event.wait()
        except BaseException:
            self._wakers.pop(ticket, None)
            self._wake(self._pool.cancel(ticket, time.monotonic()))
            raise
        decision, ticket.decision = ticket.decision, None
        assert decision is not None
        return decision

    def _wake(self, tickets: list[Ticket[_Upstream]]) -> None:
        for ticket in tickets:
            event = self._wakers.pop(ticket, None)
            if event is not None:
                event.set()
        self._close_dropped()

    def _release(self, upstream: _Upstream, *, reusable: bool) -> None:
        pooled = upstream.pooled
        if pooled is None:
            upstream.stream.close()
            return
        upstream.pooled = None if not reusable else pooled
        self._wake(self._pool.release(pooled, time.monotonic(), reusable=reusable))

    def _drop(self, holder: list[_Upstream]) -> None:
        for upstream in holder:
            if upstream.pooled is not None:
                self._release(upstream, reusable=False)

    def _close_dropped(self) -> None:
        closing = self._pool.closing
        while closing:
            closing.pop().stream.close()


# -- blocking --------------------------------------------------------------------------------


class _SyncUpstream:
    """A pooled blocking connection."""

    __slots__ = ("client", "pooled", "stream")

    def __init__(self, stream: BlockingStream, client: ClientConnection) -> None:
        self.stream = stream
        self.client = client
        self.pooled: PooledConnection[_SyncUpstream] | None = None


class SyncUpstreamBody:
    """:class:`UpstreamBody` for the blocking driver: iterate it once, then :meth:`close`."""

    def __init__(
        self,
        outbound: SyncOutbound,
        upstream: _SyncUpstream | None,
        read_timeout: float,
        first: bytes = b"",
    ) -> None:
        self._outbound = outbound
        self._upstream = upstream
        self._read_timeout = read_timeout
        self._first = first
        self._error: OutboundError | None = None  # found by take_ready, raised by iteration

    def __iter__(self) -> Iterator[bytes]:
        return self

    def take_ready(self) -> tuple[bytes, bool]:
        """As :meth:`UpstreamBody.take_ready`: the bytes received already, and whether
        they are the whole body."""
        first, self._first = self._first, b""
        upstream = self._upstream
        if upstream is None:
            return first, True
        try:
            data, end = _ready(upstream.client)
        except UpstreamProtocolError as exc:  # the iteration raises it, after ``first``
            self._finish(reusable=False)
            self._error = OutboundError(FailureReason.RESET, exc.detail)
            return first, False
        if end is not None:
            self._finish(reusable=end.reusable)
            return first + data, True
        return (first + data if first else data), False

    def __next__(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        chunk = self._next()
        if chunk is None:
            raise StopIteration
        return chunk

    def take_tunnel(self) -> tuple[BlockingStream, bytes]:
        """As :meth:`UpstreamBody.take_tunnel`: the raw stream and its first bytes; :meth:`close`
        closes it."""
        upstream = self._upstream
        if upstream is None:
            raise OutboundError(FailureReason.RESET, "no upstream connection to tunnel")
        try:
            first = upstream.client.take_tunnel_bytes()
        except UpstreamProtocolError as exc:
            raise OutboundError(FailureReason.RESET, exc.detail) from None
        return upstream.stream, first

    def _next(self) -> bytes | None:
        upstream = self._upstream
        if upstream is None:
            return None
        client = upstream.client
        try:
            upstream.stream.set_timeout(self._read_timeout)
            while True:
                data, end = _ready(client)
                if end is not None:
                    self._finish(reusable=end.reusable)
                    return data or None
                if data:
                    return data
                client.receive_data(upstream.stream.receive())
        except UpstreamProtocolError as exc:
            self._finish(reusable=False)
            raise OutboundError(FailureReason.RESET, exc.detail) from None
        except TimeoutError:
            self._finish(reusable=False)
            raise OutboundError(FailureReason.TIMEOUT, "upstream read timed out") from None
        except OSError as exc:
            self._finish(reusable=False)
            raise OutboundError(FailureReason.RESET, describe(exc)) from None
        except BaseException:
            self._finish(reusable=False)
            raise

    def _finish(self, *, reusable: bool) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            self._outbound._release(upstream, reusable=reusable)

    def close(self) -> None:
        """Give the connection back to the pool, or drop it if the body was not read to its end."""
        self._first = b""
        self._finish(reusable=False)


class SyncOutbound:
    """:class:`Outbound` for threads, on blocking sockets; one pool shared by every worker.

    Args: as :class:`Outbound`.
    """

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        max_per_origin: int | None = None,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        parser: ParserBackend = "httptools",
    ) -> None:
        self._ssl = ssl_context if ssl_context is not None else default_ssl_context()
        self._pool: ConnectionPool[_SyncUpstream] = ConnectionPool(
            _limits(max_connections, max_per_origin, keepalive_expiry)
        )
        self._parser: ParserBackend = parser
        self._lock = threading.Lock()
        self._wakers: dict[Ticket[_SyncUpstream], threading.Event] = {}

    def __enter__(self) -> SyncOutbound:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections; those in use close when their body is done."""
        with self._lock:
            self._pool.close()
        self._close_dropped()

    def forward(
        self, action: ForwardUpstream, body: Iterable[bytes], *, content_length: int | None
    ) -> tuple[UpstreamResponded, SyncUpstreamBody] | ActionFailed:
        """As :meth:`Outbound.forward`, blocking."""
        request = _forward_request(action, content_length)
        if isinstance(request, ActionFailed):
            return request
        if request.payload is not None and action.body is None:
            try:
                for chunk in body:
                    if chunk:
                        raise ClientBodyError(FailureReason.CLIENT, "body longer than declared")
            except ClientBodyError as exc:
                return _failed(action.request_id, exc.reason, exc.detail)
        result = self._exchange(request, body)
        if isinstance(result, ActionFailed):
            return result
        head, upstream, first = result
        return _responded(action.request_id, head), SyncUpstreamBody(
            self, upstream, request.read_timeout, first
        )

    def send(self, action: SendHTTP) -> HTTPResponseReceived | ActionFailed:
        """As :meth:`Outbound.send`, blocking."""
        request = _send_request(action)
        if isinstance(request, ActionFailed):
            return request
        result = self._exchange(request, None)
        if isinstance(result, ActionFailed):
            return result
        head, upstream, first = result
        stream = SyncUpstreamBody(self, upstream, request.read_timeout, first)
        chunks: list[bytes] = []
        size, limit = 0, action.max_body
        if _declared_length(head.headers) > limit:  # refused before a byte of it is read
            stream.close()
            return _too_large(action)
        try:
            for chunk in stream:
                size += len(chunk)
                if size > limit:
                    stream.close()
                    return _too_large(action)
                chunks.append(chunk)
        except OutboundError as exc:
            return _failed(action.request_id, exc.reason, exc.detail)
        return HTTPResponseReceived(
            request_id=action.request_id,
            status=head.status,
            headers=head.headers,
            body=b"".join(chunks),
            now=time.time(),
        )

    def _exchange(
        self, request: _Request, body: Iterable[bytes] | None
    ) -> tuple[ResponseHead, _SyncUpstream | None, bytes] | ActionFailed:
        attempt = 0
        while True:
            outcome = self._attempt(request, body, attempt)
            if outcome is not None:
                return outcome
            attempt += 1

    def _attempt(
        self, request: _Request, body: Iterable[bytes] | None, attempt: int
    ) -> tuple[ResponseHead, _SyncUpstream | None, bytes] | ActionFailed | None:
        holder: list[_SyncUpstream] = []
        phase = "connect"
        try:
            upstream = self._acquire(request.target, request.connect_timeout, holder)
            phase = "send"
            upstream.stream.set_timeout(request.read_timeout)
            try:
                self._write(upstream, request, body)
            except TimeoutError:
                raise
            except OSError as exc:
                # The upstream may have answered early (413, say) and closed.
                head = self._early_answer(upstream, exc)
            else:
                phase = "receive"
                head = self._read_head(upstream)
        except (ClientBodyError, UpstreamProtocolError, *_IO_ERRORS) as exc:  # TimeoutError too
            retry = _may_retry_after(exc, phase, holder, request, attempt)
            self._drop(holder)
            return None if retry else _attempt_failed(request.request_id, phase, exc)
        except BaseException:
            self._drop(holder)
            raise
        return _after_head(head, upstream, self._release)

    @staticmethod
    def _write(upstream: _SyncUpstream, request: _Request, body: Iterable[bytes] | None) -> None:
        client, stream = upstream.client, upstream.stream
        head = request.head(client)
        if request.payload is not None or body is None:
            payload = request.payload or b""
            stream.send(head + client.send_body(payload) + client.end_request())
            return
        stream.send(head)
        for chunk in body:
            if chunk:
                stream.send(client.send_body(chunk))
        tail = client.end_request()
        if tail:
            stream.send(tail)

    @classmethod
    def _early_answer(cls, upstream: _SyncUpstream, error: BaseException) -> ResponseHead:
        """After a failed write: the answer the upstream sent before closing, or ``error``."""
        try:
            return cls._read_head(upstream)
        except (UpstreamProtocolError, OSError):
            pass
        raise error

    @staticmethod
    def _read_head(upstream: _SyncUpstream) -> ResponseHead:
        client, stream = upstream.client, upstream.stream
        while True:
            event = client.next_event()
            if isinstance(event, ResponseHead):
                return event
            client.receive_data(stream.receive())

    def _acquire(
        self, target: UpstreamTarget, timeout: float, holder: list[_SyncUpstream]
    ) -> _SyncUpstream:
        pool, origin = self._pool, target.origin
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                decision = pool.acquire(origin, time.monotonic())
                waker = None
                if isinstance(decision, Wait):
                    waker = self._wakers[decision.ticket] = threading.Event()
            self._close_dropped()
            if isinstance(decision, Wait):
                assert waker is not None
                decision = self._wait(decision.ticket, waker, deadline)
            if isinstance(decision, Reuse):
                upstream = decision.connection.handle
                if upstream.stream.is_stale() or not upstream.client.is_reusable:
                    self._release(upstream, reusable=False)
                    continue
                holder.append(upstream)
                return upstream
            try:
                tls = self._ssl if origin[0] == "https" else None
                left = max(deadline - time.monotonic(), 0.001)
                stream = connect_blocking(target.host, origin[2], tls, left)
            except BaseException:
                with self._lock:
                    served = pool.connect_failed(origin)
                self._wake(served)
                raise
            upstream = _SyncUpstream(stream, ClientConnection(self._parser))
            with self._lock:
                upstream.pooled = pool.connected(origin, upstream)
            holder.append(upstream)
            return upstream

    def _wait(
        self, ticket: Ticket[_SyncUpstream], waker: threading.Event, deadline: float
    ) -> Reuse[_SyncUpstream] | Open:
        waker.wait(max(deadline - time.monotonic(), 0))
        with self._lock:
            self._wakers.pop(ticket, None)
            decision, ticket.decision = ticket.decision, None
            if decision is None:
                served = self._pool.cancel(ticket, time.monotonic())
        if decision is None:
            self._wake(served)
            raise TimeoutError("no upstream connection free in time")
        return decision

    def _wake(self, tickets: list[Ticket[_SyncUpstream]]) -> None:
        with self._lock:
            wakers = [self._wakers.pop(ticket, None) for ticket in tickets]
        for waker in wakers:
            if waker is not None:
                waker.set()
        self._close_dropped()

    def _release(self, upstream: _SyncUpstream, *, reusable: bool) -> None:
        pooled = upstream.pooled
        if pooled is None:
            upstream.stream.close()
            return
        if not reusable:
            upstream.pooled = None
        with self._lock:
            served = self._pool.release(pooled, time.monotonic(), reusable=reusable)
        self._wake(served)

    def _drop(self, holder: list[_SyncUpstream]) -> None:
        for upstream in holder:
            if upstream.pooled is not None:
                self._release(upstream, reusable=False)

    def _close_dropped(self) -> None:
        with self._lock:
            closing, self._pool.closing[:] = list(self._pool.closing), []
        for upstream in closing:
            upstream.stream.close()


# -- what both pools do after a try ---------------------------------------------------------

_U = TypeVar("_U", _Upstream, _SyncUpstream)


def _may_retry_after(
    exc: BaseException,
    phase: str,
    holder: list[_Upstream] | list[_SyncUpstream],
    request: _Request,
    attempt: int,
) -> bool:
    """Whether a failed try goes again on a fresh connection: only a reused pooled connection
    that broke (not timed out) after connecting, before any answer byte, with the body in hand
    (:func:`sapg_core.may_retry`)."""
    if phase == "connect" or isinstance(exc, TimeoutError | ClientBodyError):
        return False
    if not holder or holder[0].pooled is None:
        return False
    return may_retry(
        reused=holder[0].pooled.is_reused,
        replayable=request.payload is not None,
        response_started=holder[0].client.response_started,
        attempt=attempt,
    )


def _attempt_failed(request_id: int, phase: str, exc: BaseException) -> ActionFailed:
    """Why a try failed, as the core reads it (the same for every stream kind)."""
    if isinstance(exc, TimeoutError):
        detail = f"upstream {'connect' if phase == 'connect' else 'read'} timed out"
        return _failed(request_id, FailureReason.TIMEOUT, detail)
    if isinstance(exc, ClientBodyError):
        return _failed(request_id, exc.reason, exc.detail)
    if isinstance(exc, UpstreamProtocolError):
        return _failed(request_id, FailureReason.RESET, exc.detail)
    return _failed(request_id, classify(exc, connecting=phase == "connect"), describe(exc))


def _after_head(
    head: ResponseHead, upstream: _U, release: Callable[..., None]
) -> tuple[ResponseHead, _U | None, bytes]:
    """Give the connection back at once (``release``) when the whole body came with the head."""
    if head.status == 101:  # a tunnel now: raw bytes, never back to the pool
        return head, upstream, b""
    try:
        data, end = _ready(upstream.client)
    except UpstreamProtocolError:
        return head, upstream, b""  # the body iterator reports it
    if end is not None:
        release(upstream, reusable=end.reusable)
        return head, None, data
    return head, upstream, data
