"""transports._outbound over real loopback sockets, under trio and asyncio.

The upstream is a small h11 server on threads (so it serves both event loops
alike), with one behaviour per path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import h11
import pytest
import trustme

from sapg_core import (
    ActionFailed,
    FailureReason,
    ForwardUpstream,
    HTTPResponseReceived,
    SendHTTP,
    UpstreamResponded,
)
from transports._common import ClientBodyError
from transports._outbound import (
    Outbound,
    OutboundError,
    SyncOutbound,
    UpstreamBody,
    default_ssl_context,
    failure_reason,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]

CHUNK = 64 * 1024
CHUNKS = 64  # 4 MiB each way


class Upstream:
    """A threaded HTTP/1.1 upstream on 127.0.0.1; counts the connections it accepts."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self.first_chunk_received = threading.Event()
        self.client_has_first_chunk = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            sock = self.tls.wrap_socket(raw, server_side=True) if self.tls else raw
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with sock:
            conn = h11.Connection(h11.SERVER)
            try:
                while self._serve_one(sock, conn):
                    conn.start_next_cycle()
            except (OSError, h11.ProtocolError):
                pass

    def _next(self, sock: socket.socket, conn: h11.Connection) -> h11.Event | None:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(CHUNK))
                continue
            assert isinstance(event, h11.Event)
            return None if isinstance(event, h11.ConnectionClosed) else event

    def _serve_one(self, sock: socket.socket, conn: h11.Connection) -> bool:
        request = self._next(sock, conn)
        if request is None:
            return False
        assert isinstance(request, h11.Request)
        digest, size = hashlib.sha256(), 0
        while not isinstance(event := self._next(sock, conn), h11.EndOfMessage):
            assert isinstance(event, h11.Data)
            digest.update(event.data)
            size += len(event.data)
            self.first_chunk_received.set()
        path = request.target.decode()
        if path == "/hang":
            while sock.recv(CHUNK):  # until the client gives up
                pass
            return False
        if path == "/cut":
            head = h11.Response(status_code=200, headers=[("content-length", "1000")])
            sock.sendall(conn.send(head) + conn.send(h11.Data(data=b"x" * 10)))
            return False
        if path == "/redirect":
            head = h11.Response(
                status_code=302, headers=[("location", "/echo"), ("content-length", "0")]
            )
            sock.sendall(conn.send(head) + conn.send(h11.EndOfMessage()))
            return True
        if path == "/stream":
            sock.sendall(conn.send(h11.Response(status_code=200, headers=[])))
            sock.sendall(conn.send(h11.Data(data=b"a" * CHUNK)))
            # The rest only once the client holds the first chunk: proves streaming down.
            if not self.client_has_first_chunk.wait(10):
                return False
            for _ in range(CHUNKS - 1):
                sock.sendall(conn.send(h11.Data(data=b"b" * CHUNK)))
            sock.sendall(conn.send(h11.EndOfMessage()))
            return True
        summary = {
            "method": request.method.decode(),
            "path": path,
            "headers": [[k.decode(), v.decode()] for k, v in request.headers],
            "size": size,
            "sha256": digest.hexdigest(),
        }
        body = json.dumps(summary).encode()
        head = h11.Response(
            status_code=200,
            headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
        )
        sock.sendall(
            conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        return True


BACKENDS = ["trio", "asyncio"]


def run(backend: str, test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test, backend=backend)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def forward(url: str, method: str = "GET", **kwargs: float) -> ForwardUpstream:
    return ForwardUpstream(
        request_id=7,
        method=method,
        url=url,
        headers=(("x-test", "yes"),),
        body_limit=0,
        connect_timeout=kwargs.get("connect_timeout", 5.0),
        read_timeout=kwargs.get("read_timeout", 5.0),
    )


async def no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


async def read_all(body: UpstreamBody) -> bytes:
    chunks = [chunk async for chunk in body]
    await body.aclose()
    return b"".join(chunks)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    return default_ssl_context(environ={})  # loading the system store is slow: once will do


def make_outbound() -> Outbound:
    return Outbound(ssl_context=shared_ssl_context())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- forward: streaming both ways ----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_streams_the_request_body_up(backend: str, upstream: Upstream) -> None:
    expected = hashlib.sha256()
    for i in range(CHUNKS):
        expected.update(bytes([i]) * CHUNK)

    async def body() -> AsyncIterator[bytes]:
        yield bytes([0]) * CHUNK
        # The rest only once the upstream holds the first chunk: proves no buffering.
        deadline = time.monotonic() + 10
        while not upstream.first_chunk_received.is_set():
            assert time.monotonic() < deadline, "the body was buffered, not streamed"
            await anyio.sleep(0.01)
        for i in range(1, CHUNKS):
            yield bytes([i]) * CHUNK

    async def test() -> None:
        async with make_outbound() as outbound:
            action = forward(upstream.url("/echo"), "POST")
            result = await outbound.forward(action, body(), content_length=None)
            assert not isinstance(result, ActionFailed)
            head, stream = result
            assert isinstance(head, UpstreamResponded)
            assert (head.request_id, head.status) == (7, 200)
            summary = json.loads(await read_all(stream))
        assert summary["size"] == CHUNK * CHUNKS
        assert summary["sha256"] == expected.hexdigest()
        headers = dict(summary["headers"])
        assert headers["transfer-encoding"] == "chunked"
        assert headers["host"] == f"127.0.0.1:{upstream.port}"
        assert headers["x-test"] == "yes"

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_streams_the_response_body_down(backend: str, upstream: Upstream) -> None:
    async def test() -> None:
        async with make_outbound() as outbound:
            result = await outbound.forward(
                forward(upstream.url("/stream")), no_body(), content_length=0
            )
            assert not isinstance(result, ActionFailed)
            head, body = result
            assert head.status == 200
            received = 0
            async for chunk in body:
                received += len(chunk)
                upstream.client_has_first_chunk.set()
            await body.aclose()
            assert received == CHUNK * CHUNKS

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_keeps_the_client_framing(backend: str, upstream: Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"hello"

    async def test() -> None:
        async with make_outbound() as outbound:
            action = ForwardUpstream(
                request_id=1,
                method="PUT",
                url=upstream.url("/echo?a=1"),
                headers=(("content-length", "999"), ("transfer-encoding", "gzip")),
                body_limit=0,
                connect_timeout=5,
                read_timeout=5,
            )
            result = await outbound.forward(action, body(), content_length=5)
            assert not isinstance(result, ActionFailed)
            summary = json.loads(await read_all(result[1]))
            get = await outbound.forward(
                forward(upstream.url("/echo")), no_body(), content_length=0
            )
            assert not isinstance(get, ActionFailed)
            get_summary = json.loads(await read_all(get[1]))
        assert summary["path"] == "/echo?a=1"
        headers = dict(summary["headers"])
        assert headers["content-length"] == "5"
        assert "transfer-encoding" not in headers
        get_headers = dict(get_summary["headers"])
        assert "content-length" not in get_headers
        assert "transfer-encoding" not in get_headers

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_body_error_fails_the_action(backend: str, upstream: Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 100
        raise ClientBodyError(FailureReason.BODY_TOO_LARGE, "over 100 bytes")

    async def test() -> None:
        async with make_outbound() as outbound:
            result = await outbound.forward(
                forward(upstream.url("/echo"), "POST"), body(), content_length=None
            )
        assert isinstance(result, ActionFailed)
        assert (result.request_id, result.reason, result.detail) == (
            7,
            FailureReason.BODY_TOO_LARGE,
            "over 100 bytes",
        )

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_redirects_are_not_followed(backend: str, upstream: Upstream) -> None:
    async def test() -> None:
        async with make_outbound() as outbound:
            result = await outbound.forward(
                forward(upstream.url("/redirect")), no_body(), content_length=0
            )
            assert not isinstance(result, ActionFailed)
            head, body = result
            assert head.status == 302
            assert ("location", "/echo") in head.headers
            assert await read_all(body) == b""
            sent = await outbound.send(
                SendHTTP(request_id=2, method="GET", url=upstream.url("/redirect"), headers=())
            )
            assert isinstance(sent, HTTPResponseReceived)
            assert sent.status == 302

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_alive_reuses_one_connection(backend: str, upstream: Upstream) -> None:
    async def test() -> None:
        async with make_outbound() as outbound:
            for _ in range(2):
                result = await outbound.forward(
                    forward(upstream.url("/echo")), no_body(), content_length=0
                )
                assert not isinstance(result, ActionFailed)
                await read_all(result[1])
            sent = await outbound.send(
                SendHTTP(
                    request_id=3, method="POST", url=upstream.url("/echo"), headers=(), body=b"abc"
                )
            )
            assert isinstance(sent, HTTPResponseReceived)
            assert json.loads(sent.body)["size"] == 3
        assert upstream.connections == 1

    run(backend, test)


# -- failures -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_port_is_connect(backend: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/"

    async def test() -> None:
        async with make_outbound() as outbound:
            result = await outbound.forward(forward(url), no_body(), content_length=0)
            sent = await outbound.send(SendHTTP(request_id=9, method="GET", url=url, headers=()))
        assert isinstance(result, ActionFailed)
        assert (result.request_id, result.reason) == (7, FailureReason.CONNECT)
        assert isinstance(sent, ActionFailed)
        assert (sent.request_id, sent.reason) == (9, FailureReason.CONNECT)

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_upstream_is_timeout(backend: str, upstream: Upstream) -> None:
    async def test() -> None:
        async with make_outbound() as outbound:
            started = time.monotonic()
            result = await outbound.forward(
                forward(upstream.url("/hang"), read_timeout=0.3), no_body(), content_length=0
            )
            elapsed = time.monotonic() - started
            sent = await outbound.send(
                SendHTTP(
                    request_id=1, method="GET", url=upstream.url("/hang"), headers=(), timeout=0.3
                )
            )
        assert isinstance(result, ActionFailed)
        assert result.reason is FailureReason.TIMEOUT
        assert 0.25 < elapsed < 3
        assert isinstance(sent, ActionFailed)
        assert sent.reason is FailureReason.TIMEOUT

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_mid_response_is_reset(backend: str, upstream: Upstream) -> None:
    async def test() -> None:
        async with make_outbound() as outbound:
            result = await outbound.forward(
                forward(upstream.url("/cut")), no_body(), content_length=0
            )
            assert not isinstance(result, ActionFailed)
            head, body = result
            assert head.status == 200
            with pytest.raises(OutboundError) as caught:
                await read_all(body)
            assert caught.value.reason is FailureReason.RESET
            await body.aclose()
            sent = await outbound.send(
                SendHTTP(request_id=1, method="GET", url=upstream.url("/cut"), headers=())
            )
        assert isinstance(sent, ActionFailed)
        assert sent.reason is FailureReason.RESET

    run(backend, test)


# -- TLS ------------------------------------------------------------------------------


def tls_upstream(ca: trustme.CA) -> Upstream:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return Upstream(tls=context)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_trusts_ssl_cert_file(
    backend: str, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    server = tls_upstream(ca)

    async def test() -> None:
        async with Outbound() as outbound:  # the default context reads SSL_CERT_FILE
            sent = await outbound.send(
                SendHTTP(request_id=1, method="GET", url=server.url("/echo"), headers=())
            )
        assert isinstance(sent, HTTPResponseReceived), sent
        assert sent.status == 200

    try:
        run(backend, test)
    finally:
        server.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_untrusted_certificate_is_tls(
    backend: str, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = tls_upstream(ca)  # signed by a CA nobody trusts

    async def test() -> None:
        async with make_outbound() as outbound:
            result = await outbound.forward(
                forward(server.url("/echo")), no_body(), content_length=0
            )
            sent = await outbound.send(
                SendHTTP(request_id=1, method="GET", url=server.url("/echo"), headers=())
            )
        assert isinstance(result, ActionFailed)
        assert result.reason is FailureReason.TLS
        assert "certificate" in result.detail.lower()
        assert isinstance(sent, ActionFailed)
        assert sent.reason is FailureReason.TLS

    try:
        run(backend, test)
    finally:
        server.close()


def test_ssl_context_keeps_the_system_store(ca: trustme.CA, tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    system = default_ssl_context(environ={}).cert_store_stats()["x509_ca"]
    both = default_ssl_context(environ={"SSL_CERT_FILE": str(pem)}).cert_store_stats()["x509_ca"]
    assert both == system + 1
    if Path(ssl.get_default_verify_paths().openssl_cafile).is_file():
        assert system > 1


def test_failure_table() -> None:
    ssl_error = ssl.SSLCertVerificationError("certificate verify failed")
    broken = OSError("handshake")
    broken.__cause__ = ssl_error
    assert failure_reason(broken, connecting=True) is FailureReason.TLS
    assert failure_reason(ConnectionRefusedError("refused"), connecting=True) is (
        FailureReason.CONNECT
    )
    assert failure_reason(TimeoutError("slow")) is FailureReason.TIMEOUT
    assert failure_reason(TimeoutError("slow"), connecting=True) is FailureReason.TIMEOUT
    for reset in (ConnectionResetError("gone"), BrokenPipeError("gone"), ssl_error):
        assert failure_reason(reset) is FailureReason.RESET


# -- the pool and the parsers ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_h11_parser_backend_gives_the_same_answers(backend: str, upstream: Upstream) -> None:
    async def test() -> None:
        async with Outbound(ssl_context=shared_ssl_context(), parser="h11") as outbound:
            for _ in range(2):
                result = await outbound.forward(
                    forward(upstream.url("/echo?x=1")), no_body(), content_length=0
                )
                assert not isinstance(result, ActionFailed)
                assert json.loads(await read_all(result[1]))["path"] == "/echo?x=1"
            result = await outbound.forward(
                forward(upstream.url("/stream")), no_body(), content_length=0
            )
            assert not isinstance(result, ActionFailed)
            received = 0
            async for chunk in result[1]:
                received += len(chunk)
                upstream.client_has_first_chunk.set()
            await result[1].aclose()
            assert received == CHUNK * CHUNKS
        assert upstream.connections == 1

    run(backend, test)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_origin_waits_at_most_the_connect_timeout_and_others_go_on(
    backend: str, upstream: Upstream
) -> None:
    other = Upstream()

    async def test() -> None:
        async with Outbound(ssl_context=shared_ssl_context(), max_per_origin=1) as outbound:
            held = await outbound.forward(
                forward(upstream.url("/stream")), no_body(), content_length=0
            )
            assert not isinstance(held, ActionFailed)  # its body is not read: it holds the slot
            started = time.monotonic()
            waited = await outbound.forward(
                forward(upstream.url("/echo"), connect_timeout=0.3), no_body(), content_length=0
            )
            assert isinstance(waited, ActionFailed)
            assert waited.reason is FailureReason.TIMEOUT
            assert 0.25 < time.monotonic() - started < 3
            sent = await outbound.send(
                SendHTTP(request_id=2, method="GET", url=other.url("/echo"), headers=())
            )
            assert isinstance(sent, HTTPResponseReceived) and sent.status == 200
            await held[1].aclose()  # dropped unread: the slot frees up for the next one
            again = await outbound.send(
                SendHTTP(request_id=3, method="GET", url=upstream.url("/echo"), headers=())
            )
            assert isinstance(again, HTTPResponseReceived) and again.status == 200
        upstream.client_has_first_chunk.set()

    try:
        run(backend, test)
    finally:
        other.close()


@pytest.mark.parametrize("backend", [*BACKENDS, "blocking"])
def test_an_early_answer_is_relayed_when_the_upstream_stops_reading(backend: str) -> None:
    """A 413 sent before the body was read, then a close: the answer, not a write error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            sock.sendall(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n"
                b"Connection: close\r\n\r\ntoo big!"
            )
            time.sleep(0.2)  # the answer is on its way; then close, body unread

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(256):  # 16 MiB: more than the socket buffers hold
            yield b"x" * CHUNK

    async def test() -> None:
        async with make_outbound() as outbound:
            action = forward(f"http://127.0.0.1:{port}/upload", "POST")
            result = await outbound.forward(action, body(), content_length=256 * CHUNK)
            assert not isinstance(result, ActionFailed), result
            head, stream = result
            assert head.status == 413
            assert await read_all(stream) == b"too big!"

    def blocking() -> None:
        with SyncOutbound(ssl_context=shared_ssl_context()) as outbound:
            action = forward(f"http://127.0.0.1:{port}/upload", "POST")
            chunks = (b"x" * CHUNK for _ in range(256))
            result = outbound.forward(action, chunks, content_length=256 * CHUNK)
            assert not isinstance(result, ActionFailed), result
            head, stream = result
            assert head.status == 413
            assert b"".join(stream) == b"too big!"
            stream.close()

    try:
        if backend == "blocking":
            blocking()
        else:
            run(backend, test)
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_header_that_would_split_the_request_is_never_sent(
    backend: str, upstream: Upstream
) -> None:
    async def test() -> None:
        async with make_outbound() as outbound:
            action = ForwardUpstream(
                request_id=4,
                method="GET",
                url=upstream.url("/echo"),
                headers=(("x-a", "1\r\nset-cookie: injected=1"),),
                body_limit=0,
                connect_timeout=5,
                read_timeout=5,
            )
            result = await outbound.forward(action, no_body(), content_length=0)
            assert isinstance(result, ActionFailed)
            assert (result.request_id, result.reason) == (4, FailureReason.RESET)
            sent = await outbound.send(
                SendHTTP(
                    request_id=5, method="GET", url=upstream.url("/echo"), headers=(("x\n", "1"),)
                )
            )
            assert isinstance(sent, ActionFailed) and sent.reason is FailureReason.RESET
        assert upstream.connections == 0

    run(backend, test)
