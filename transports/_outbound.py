"""The outbound executor: carries ``ForwardUpstream`` and ``SendHTTP`` out over httpcore.

One :class:`httpcore.AsyncConnectionPool` (keep-alive, h11 underneath) serves
both trio and asyncio through anyio. Nothing follows redirects: a 3xx is an
answer like any other. Library exceptions become ``ActionFailed`` reasons in
one table, :data:`FAILURES`, in the spirit of httpcore's own ``map_exceptions``.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import Final

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
        self._pool = httpcore.AsyncConnectionPool(
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
        limit = action.body_limit
        if limit and content_length is not None and content_length > limit:
            detail = f"declared body of {content_length} bytes is over {limit}"
            return self._failed(action.request_id, FailureReason.BODY_TOO_LARGE, detail)
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
        request = httpcore.Request(
            action.method,
            url,
            headers=_with_host(headers, url),
            content=body,
            extensions={"timeout": timeout},
        )
        try:
            response = await self._pool.handle_async_request(request)
        except ClientBodyError as exc:
            return self._failed(action.request_id, exc.reason, exc.detail)
        except _MAPPED as exc:
            return self._failed(action.request_id, failure_reason(exc), _detail(exc))
        event = UpstreamResponded(
            request_id=action.request_id,
            status=response.status,
            headers=_decode(response.headers),
            now=time.time(),
        )
        return event, UpstreamBody(response)

    async def send(self, action: SendHTTP) -> HTTPResponseReceived | ActionFailed:
        """Make one buffered call and read the whole answer, within ``action.timeout`` per step."""
        url = httpcore.URL(action.url)
        headers = [pair for pair in _encode(action.headers) if pair[0].lower() not in _STRIPPED]
        if action.body or action.method not in _NO_BODY_METHODS:
            headers.append((b"content-length", str(len(action.body)).encode("ascii")))
        request = httpcore.Request(
            action.method,
            url,
            headers=_with_host(headers, url),
            content=action.body,
            extensions={"timeout": dict.fromkeys(_TIMEOUT_KEYS, action.timeout)},
        )
        try:
            response = await self._pool.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except _MAPPED as exc:
            return self._failed(action.request_id, failure_reason(exc), _detail(exc))
        return HTTPResponseReceived(
            request_id=action.request_id,
            status=response.status,
            headers=_decode(response.headers),
            body=body,
            now=time.time(),
        )

    @staticmethod
    def _failed(request_id: int, reason: FailureReason, detail: str) -> ActionFailed:
        return ActionFailed(request_id=request_id, reason=reason, detail=detail, now=time.time())
