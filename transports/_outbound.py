"""The outbound executor: carries ``ForwardUpstream`` and ``SendHTTP`` out over httpcore.

One :class:`httpcore.AsyncConnectionPool` (keep-alive, h11 underneath) serves
both trio and asyncio through anyio (:class:`Outbound`); httpcore's sync
:class:`httpcore.ConnectionPool` serves the blocking driver
(:class:`SyncOutbound`). Both build their requests and read their answers with
the same helpers, use the same TLS context and map failures with the same
table. Nothing follows redirects: a 3xx is an answer like any other. Library
exceptions become ``ActionFailed`` reasons in one table, :data:`FAILURES`, in
the spirit of httpcore's own ``map_exceptions``.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final

import httpcore

from sapg_core import (
    ActionFailed,
    FailureReason,
    ForwardUpstream,
    Headers,
    HTTPResponseReceived,
    SendHTTP,
    UpstreamResponded,
)

from ._common import ClientBodyError

__all__ = [
    "FAILURES",
    "Outbound",
    "OutboundError",
    "SyncOutbound",
    "SyncUpstreamBody",
    "UpstreamBody",
    "default_ssl_context",
    "failure_reason",
]

#: httpcore exception -> why the action failed. First match wins.
FAILURES: Final[tuple[tuple[type[Exception], FailureReason], ...]] = (
    (httpcore.TimeoutException, FailureReason.TIMEOUT),  # connect, read, write, pool
    (httpcore.ConnectError, FailureReason.CONNECT),  # an ssl error inside: TLS, see below
    (httpcore.UnsupportedProtocol, FailureReason.CONNECT),
    (httpcore.ReadError, FailureReason.RESET),
    (httpcore.WriteError, FailureReason.RESET),
    (httpcore.RemoteProtocolError, FailureReason.RESET),
    (httpcore.LocalProtocolError, FailureReason.RESET),
)

_MAPPED: Final = tuple(kind for kind, _ in FAILURES)
_STRIPPED: Final = (b"content-length", b"transfer-encoding")
_TIMEOUT_KEYS: Final = ("connect", "pool", "read", "write")
#: Methods that carry no body unless they say so: no ``Content-Length: 0`` for them.
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


def failure_reason(exc: Exception) -> FailureReason:
    """The reason for one of the exceptions in :data:`FAILURES`."""
    for kind, reason in FAILURES:
        if isinstance(exc, kind):
            if reason is FailureReason.CONNECT and _caused_by_ssl(exc):
                return FailureReason.TLS
            return reason
    raise TypeError(f"unmapped exception {exc!r}")


def _caused_by_ssl(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _detail(exc: BaseException) -> str:
    """The messages along the exception's cause chain, e.g. ``ConnectError: [SSL: ...]``."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        text = str(seen)
        if text and not any(text in part for part in parts):
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts) or type(exc).__name__


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
        import certifi  # httpcore depends on it

        context.load_verify_locations(cafile=certifi.where())
    extra = environ.get("SSL_CERT_FILE", "")
    if extra:
        context.load_verify_locations(cafile=extra)
    return context


class _LinearAssignment:
    """httpcore's request-to-connection assignment, in linear time and with few syscalls.

    httpcore (1.0.x) runs ``_assign_requests_to_connections`` whenever a
    request starts or ends. Its own version is quadratic in the connections,
    asks *every* connection ``has_expired()`` (a ``poll`` on each idle socket)
    each time, and hands every queued request the same free connection (all
    but one then retry). Under load that cost milliseconds per request. This
    one keeps the same rules (drop closed and expired connections, trim idle
    ones over the keep-alive size, reuse a free connection of the origin, else
    open one under the limit, else close an idle one of another origin), but
    sweeps for expired connections at most once a second, checks the one it
    hands out, and never hands a connection to a second request before the
    first has started on it.
    """

    _connections: list[Any]
    _requests: list[Any]
    _max_connections: int
    _max_keepalive_connections: int
    _next_sweep: float = 0.0

    def _assign_requests_to_connections(self) -> list[Any]:
        closing = self._sweep()
        queued = [pool_request for pool_request in self._requests if pool_request.is_queued()]
        if not queued:
            return closing
        # A connection handed to a request that has not started on it yet still
        # looks available: never hand it to a second one (it would only retry).
        claimed = {id(r.connection) for r in self._requests if r.connection is not None}
        by_origin: dict[tuple[bytes, bytes, int], tuple[Any, list[Any]]] = {}
        for pool_request in queued:
            origin = pool_request.request.url.origin  # (unhashable)
            key = (origin.scheme, origin.host, origin.port)
            by_origin.setdefault(key, (origin, []))[1].append(pool_request)
        for origin, waiting in by_origin.values():
            candidates = iter(list(self._connections))
            for pool_request in waiting:
                connection = self._usable(origin, candidates, claimed, closing)
                if connection is None:
                    if len(self._connections) >= self._max_connections and not self._evict(
                        origin, claimed, closing
                    ):
                        break  # stays queued until a connection frees up
                    connection = self.create_connection(origin)  # type: ignore[attr-defined]
                    self._connections.append(connection)
                claimed.add(id(connection))
                pool_request.assign_to_connection(connection)
        return closing

    def _sweep(self) -> list[Any]:
        """Drop closed connections (and, once a second, expired ones); trim surplus idle ones."""
        closing: list[Any] = []
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + 1.0
        kept: list[Any] = []
        for connection in self._connections:
            if connection.is_closed():
                continue
            if sweep and connection.has_expired():
                closing.append(connection)
            else:
                kept.append(connection)
        surplus = len(kept) - self._max_keepalive_connections
        if surplus > 0:
            for connection in [c for c in kept if c.is_idle()][:surplus]:
                kept.remove(connection)
                closing.append(connection)
        self._connections[:] = kept
        return closing

    def _usable(
        self, origin: Any, candidates: Iterator[Any], claimed: set[int], closing: list[Any]
    ) -> Any:
        """The next free connection to ``origin`` that has not expired (the server may close it)."""
        for connection in candidates:
            if id(connection) in claimed or not connection.can_handle_request(origin):
                continue
            if not connection.is_available():
                continue
            if not connection.has_expired():
                return connection
            self._connections.remove(connection)
            closing.append(connection)
        return None

    def _evict(self, origin: Any, claimed: set[int], closing: list[Any]) -> bool:
        """Close an idle connection to another origin to make room; False if there is none."""
        for connection in self._connections:
            if id(connection) in claimed or connection.can_handle_request(origin):
                continue
            if connection.is_idle():
                self._connections.remove(connection)
                closing.append(connection)
                return True
        return False


class _AsyncPool(_LinearAssignment, httpcore.AsyncConnectionPool):
    pass


class _SyncPool(_LinearAssignment, httpcore.ConnectionPool):
    pass


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _decode(headers: list[tuple[bytes, bytes]]) -> Headers:
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)


def _with_host(headers: list[tuple[bytes, bytes]], url: httpcore.URL) -> list[tuple[bytes, bytes]]:
    if any(name.lower() == b"host" for name, _ in headers):
        return headers
    default = {b"http": 80, b"https": 443}.get(url.scheme)
    host = url.host if url.port in (None, default) else b"%b:%d" % (url.host, url.port)
    return [(b"host", host), *headers]


class OutboundError(Exception):
    """An upstream response body broke off; ``reason`` says how."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class UpstreamBody:
    """The body of a forwarded request's response: iterate it once, then :meth:`aclose`.

    Iteration raises :class:`OutboundError` if the upstream breaks off.
    """

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except _MAPPED as exc:
            raise OutboundError(failure_reason(exc), _detail(exc)) from exc

    async def aclose(self) -> None:
        """Give the connection back to the pool (or drop it if the body was not read)."""
        await self._response.aclose()


class Outbound:
    """Outbound HTTP for one event loop, with a keep-alive connection pool.

    Args:
        max_connections: open connections at most, across all upstreams.
        keepalive_expiry: seconds an idle pooled connection is kept.
        ssl_context: defaults to :func:`default_ssl_context`.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = _AsyncPool(
            ssl_context=ssl_context if ssl_context is not None else default_ssl_context(),
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            retries=0,
        )

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
        await self._pool.aclose()

    async def forward(
        self, action: ForwardUpstream, body: AsyncIterable[bytes], *, content_length: int | None
    ) -> tuple[UpstreamResponded, UpstreamBody] | ActionFailed:
        """Send the client's request upstream, streaming ``body``; return the response head.

        Args:
            action: what to send where.
            body: the client's body as it arrives; it may raise
                :class:`ClientBodyError`, which fails the action with its reason.
            content_length: the client's framing: its declared length, or None
                for chunked (sent chunked upstream too).

        Returns:
            the upstream's head and its body still to stream, or why it failed.
        """
        request = _forward_request(action, body, content_length)
        if isinstance(request, ActionFailed):
            return request
        try:
            response = await self._pool.handle_async_request(request)
        except ClientBodyError as exc:
            return _failed(action.request_id, exc.reason, exc.detail)
        except _MAPPED as exc:
            return _failed(action.request_id, failure_reason(exc), _detail(exc))
        return _responded(action, response), UpstreamBody(response)

    async def send(self, action: SendHTTP) -> HTTPResponseReceived | ActionFailed:
        """Make one buffered call and read the whole answer, within ``action.timeout`` per step."""
        try:
            response = await self._pool.handle_async_request(_send_request(action))
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except _MAPPED as exc:
            return _failed(action.request_id, failure_reason(exc), _detail(exc))
        return _received(action, response, body)


class SyncUpstreamBody:
    """:class:`UpstreamBody` for the blocking driver: iterate it once, then :meth:`close`."""

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._response.iter_stream()
        except _MAPPED as exc:
            raise OutboundError(failure_reason(exc), _detail(exc)) from exc

    def close(self) -> None:
        """Give the connection back to the pool (or drop it if the body was not read)."""
        self._response.close()


class SyncOutbound:
    """:class:`Outbound` for threads: httpcore's sync pool, shared by every worker thread.

    Args: as :class:`Outbound`.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = _SyncPool(
            ssl_context=ssl_context if ssl_context is not None else default_ssl_context(),
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            retries=0,
        )

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
        self._pool.close()

    def forward(
        self, action: ForwardUpstream, body: Iterable[bytes], *, content_length: int | None
    ) -> tuple[UpstreamResponded, SyncUpstreamBody] | ActionFailed:
        """As :meth:`Outbound.forward`, blocking."""
        request = _forward_request(action, body, content_length)
        if isinstance(request, ActionFailed):
            return request
        try:
            response = self._pool.handle_request(request)
        except ClientBodyError as exc:
            return _failed(action.request_id, exc.reason, exc.detail)
        except _MAPPED as exc:
            return _failed(action.request_id, failure_reason(exc), _detail(exc))
        return _responded(action, response), SyncUpstreamBody(response)

    def send(self, action: SendHTTP) -> HTTPResponseReceived | ActionFailed:
        """As :meth:`Outbound.send`, blocking."""
        try:
            response = self._pool.handle_request(_send_request(action))
            try:
                body = response.read()
            finally:
                response.close()
        except _MAPPED as exc:
            return _failed(action.request_id, failure_reason(exc), _detail(exc))
        return _received(action, response, body)


# -- what both executors send and receive ---------------------------------------------


def _forward_request(
    action: ForwardUpstream,
    body: AsyncIterable[bytes] | Iterable[bytes],
    content_length: int | None,
) -> httpcore.Request | ActionFailed:
    limit = action.body_limit
    if limit and content_length is not None and content_length > limit:
        detail = f"declared body of {content_length} bytes is over {limit}"
        return _failed(action.request_id, FailureReason.BODY_TOO_LARGE, detail)
    url = httpcore.URL(action.url)
    headers = [pair for pair in _encode(action.headers) if pair[0].lower() not in _STRIPPED]
    if content_length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    elif content_length or action.method not in _NO_BODY_METHODS:
        headers.append((b"content-length", str(content_length).encode("ascii")))
    timeout = {
        "connect": action.connect_timeout,
        "pool": action.connect_timeout,
        "read": action.read_timeout,
        "write": action.read_timeout,
    }
    return httpcore.Request(
        action.method,
        url,
        headers=_with_host(headers, url),
        content=body,
        extensions={"timeout": timeout},
    )


def _send_request(action: SendHTTP) -> httpcore.Request:
    url = httpcore.URL(action.url)
    headers = [pair for pair in _encode(action.headers) if pair[0].lower() not in _STRIPPED]
    if action.body or action.method not in _NO_BODY_METHODS:
        headers.append((b"content-length", str(len(action.body)).encode("ascii")))
    return httpcore.Request(
        action.method,
        url,
        headers=_with_host(headers, url),
        content=action.body,
        extensions={"timeout": dict.fromkeys(_TIMEOUT_KEYS, action.timeout)},
    )


def _responded(action: ForwardUpstream, response: httpcore.Response) -> UpstreamResponded:
    return UpstreamResponded(
        request_id=action.request_id,
        status=response.status,
        headers=_decode(response.headers),
        now=time.time(),
    )


def _received(action: SendHTTP, response: httpcore.Response, body: bytes) -> HTTPResponseReceived:
    return HTTPResponseReceived(
        request_id=action.request_id,
        status=response.status,
        headers=_decode(response.headers),
        body=body,
        now=time.time(),
    )


def _failed(request_id: int, reason: FailureReason, detail: str) -> ActionFailed:
    return ActionFailed(request_id=request_id, reason=reason, detail=detail, now=time.time())
