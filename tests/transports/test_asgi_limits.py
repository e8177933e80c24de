"""The ASGI adapter's own limits, under uvicorn (httptools, and h11 where it matters).

uvicorn owns the wire, and its limits are not the native drivers': with httptools a
head of any size is forwarded and a body is waited for without end. The adapter
applies the native rules to what the scope shows (issue 9 item 4):

- a head over ``--max-header-size`` (``SAPG_MAX_HEADER_SIZE``) is 431 JSON, never forwarded;
- a declared body over the limit is 413 JSON before a byte of it is read;
- Content-Length with Transfer-Encoding is 400 JSON (on uvicorn's h11 it used to raise
  and reach the upstream truncated);
- a body slower than ``--read-timeout``/``--min-body-rate`` is cut off: 408, the
  upstream request is aborted (never completed), the core sees ``RequestAborted``;
- a body the server fails to read (a broken chunk) never completes an upstream request.

Each test checks that another client is served while the limit is hit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import Client, Server, StreamingUpstream, running

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def config(upstream: StreamingUpstream) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream.url}],
        "paths": [
            {"method": "GET", "path": "/ping", "response": {"pong": True}},
            {
                "method": "ANY",
                "path": "/up/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


def exchange(server: Server, raw: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    client = Client(server.connect(timeout=20))
    try:
        client.send(raw)
        return client.response(method)
    finally:
        client.close()


def still_serving(server: Server) -> None:
    client = Client(server.connect())
    try:
        assert client.get("/ping")[0::2] == (200, b'{"pong":true}')
    finally:
        client.close()


def error_of(body: bytes) -> str:
    return str(json.loads(body)["code"])


@pytest.mark.parametrize("size", [32 * 1024, 1024 * 1024])
def test_a_head_over_the_limit_is_431_and_never_forwarded(
    upstream: StreamingUpstream, tmp_path: Path, size: int
) -> None:
    with running("asgi", config(upstream), tmp_path, args=["--max-header-size", "16384"]) as server:
        raw = b"GET /up/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
        status, headers, body = exchange(server, raw)
        assert (status, error_of(body)) == (431, "HEADERS_TOO_LARGE")
        assert headers["connection"] == "close"
        still_serving(server)
        # just under the limit still goes through
        raw = b"GET /up/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 15000 + b"\r\n\r\n"
        assert exchange(server, raw)[0] == 200
        assert upstream.received == 1


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    upstream: StreamingUpstream, tmp_path: Path
) -> None:
    with running("asgi", config(upstream), tmp_path, args=["--max-body-size", "1000"]) as server:
        client = Client(server.connect(timeout=20))
        try:  # the head only: an answer now proves the body was not waited for
            client.send(b"POST /up/x HTTP/1.1\r\nHost: t\r\nContent-Length: 20000000\r\n\r\n")
            status, _, body = client.response("POST")
        finally:
            client.close()
        assert (status, error_of(body)) == (413, "BODY_TOO_LARGE")
        still_serving(server)
        assert upstream.received == 0


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_content_length_with_transfer_encoding_is_400(
    upstream: StreamingUpstream, tmp_path: Path, http: str
) -> None:
    with running("asgi", config(upstream), tmp_path, args=["--http", http]) as server:
        raw = (
            b"POST /up/x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        status, _, body = exchange(server, raw, "POST")
        assert status == 400
        if body:  # uvicorn's h11 may refuse it itself, with its own text
            assert (body.startswith(b"{") and error_of(body) == "BAD_REQUEST") or b"Invalid" in body
        still_serving(server)
        time.sleep(0.3)
        assert upstream.received == 0
        assert "Traceback" not in server.log


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_slow_body_is_cut_off_at_its_deadline_and_never_completes_upstream(
    upstream: StreamingUpstream, tmp_path: Path, http: str
) -> None:
    args = ["--http", http, "--read-timeout", "1", "--min-body-rate", "0"]
    with running("asgi", config(upstream), tmp_path, args=args) as server:
        client = Client(server.connect(timeout=20))
        try:
            client.send(
                b"POST /up/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
            )
            upstream.wait_for(1)  # the proxied request is under way upstream
            still_serving(server)  # meanwhile, others are served
            started = time.monotonic()
            status, headers, body = client.response("POST")
            assert time.monotonic() - started < 15, "never cut off"
        finally:
            client.close()
        assert (status, error_of(body)) == (408, "REQUEST_TIMEOUT")
        assert headers["connection"] == "close"
        time.sleep(0.3)
        assert upstream.completed == 0  # aborted, not sent truncated as a whole request
        assert "Traceback" not in server.log
        still_serving(server)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_body_the_server_cannot_read_never_completes_upstream(
    upstream: StreamingUpstream, tmp_path: Path, http: str
) -> None:
    with running("asgi", config(upstream), tmp_path, args=["--http", http]) as server:
        client = Client(server.connect(timeout=20))
        try:
            client.send(b"POST /up/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            client.send(b"5\r\nhello\r\n")
            upstream.wait_for(1)
            client.send(b"zz\r\nbroken\r\n")  # not a chunk size
            assert client.is_closed_within(10)
        finally:
            client.close()
        time.sleep(0.3)
        assert upstream.completed == 0
        still_serving(server)
