"""Request smuggling shapes over real sockets, on every driver that owns its parser.

Each shape is sent as raw bytes to ``sapg serve`` (trio and asyncio on
httptools, trio on h11, and the blocking h11 transport; under ASGI uvicorn's
parser owns the wire) and the
test checks what a front proxy in a desync attack would rely on: the
hostile request is answered 400 JSON and the connection closes, so the bytes
after it are never served as a request of their own; a client that sent
``Expect: 100-continue`` and was refused before its body is closed on, so
its body or next request is never read as a request. Each test then checks
that another client is still served.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import pytest

from .servers import Client, Server, StreamingUpstream, clean_exit, start

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

#: (transport, extra args): trio and asyncio parse with httptools by default, the
#: blocking transport with h11; trio on h11 too, so each parser is tried over sockets.
KINDS = {
    "trio": ("trio", []),
    "trio-h11": ("trio", ["--http", "h11"]),
    "asyncio": ("asyncio", []),
    "h11": ("h11", []),
}
BAD_REQUEST = {"error": "Malformed HTTP request", "code": "BAD_REQUEST"}
SMUGGLED = b"GET /proxy/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=sorted(KINDS))
def server(
    request: pytest.FixtureRequest,
    upstream: StreamingUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    config = {
        "servers": [{"alias": "up", "url": upstream.url}],
        "authorizer": {"type": "jwt", "secret": "s3cret", "algorithm": "HS256"},
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {"method": "ANY", "path": "/private", "auth": True, "response": {"ok": True}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }
    kind, extra = KINDS[request.param]
    args = ["--read-timeout", "2", "--idle-timeout", "2", "--log-level", "warning", *extra]
    running = start(kind, config, tmp_path_factory.mktemp("s"), args=args)
    yield running
    assert running.stop() == clean_exit(running), running.log


def refused_and_closed(server: Server, raw: bytes) -> None:
    """Send ``raw`` (one hostile request and a smuggled one); demand 400 JSON, then close."""
    client = Client(server.connect())
    client.send(raw)
    status, headers, body = client.response()
    assert (status, json.loads(body)) == (400, BAD_REQUEST)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert client.buffer == b""  # no second answer behind it
    assert client.is_closed_within(5)
    client.close()


def still_served(server: Server) -> None:
    client = Client(server.connect())
    assert client.get("/health")[:1] == (200,)
    client.close()


@pytest.mark.parametrize(
    "raw",
    [
        # CL.TE: a front proxy that frames by Content-Length forwards all of it.
        b"POST /proxy/a HTTP/1.1\r\nHost: t\r\nContent-Length: 46\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        # TE.CL: the same fields the other way round.
        b"POST /proxy/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n" + SMUGGLED,
        # Transfer-Encoding on HTTP/1.0 (RFC 9112 §6.1: the framing is faulty).
        b"POST /proxy/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        # Two Content-Lengths, obs-fold, a bare LF.
        b"POST /proxy/a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n"
        + SMUGGLED,
        b"POST /proxy/a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nX: y\r\n Transfer-Encoding: "
        b"chunked\r\n\r\n" + SMUGGLED,
        b"POST /proxy/a HTTP/1.1\r\nHost: t\nContent-Length: 0\r\n\r\n" + SMUGGLED,
    ],
    ids=["cl-te", "te-cl", "te-http10", "two-lengths", "obs-fold", "bare-lf"],
)
def test_smuggling_shapes_are_refused_and_close(
    server: Server, upstream: StreamingUpstream, raw: bytes
) -> None:
    before = upstream.received
    refused_and_closed(server, raw)
    assert upstream.received == before  # neither request reached the upstream
    still_served(server)


def test_expect_100_continue_answered_early_closes(server: Server) -> None:
    client = Client(server.connect())
    client.send(
        b"POST /private HTTP/1.1\r\nHost: t\r\nContent-Length: 41\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, body = client.response()  # refused before any body byte was sent
    assert status == 401
    assert json.loads(body)["code"] == "AUTH_ERROR"
    assert headers["connection"] == "close"
    # What the client sends now (its body, shaped as a request) must not be served.
    with contextlib.suppress(OSError):  # already closed: fine
        client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.is_closed_within(5)
    assert client.buffer == b""
    client.close()
    still_served(server)


def test_expect_100_continue_then_body_keeps_the_connection(server: Server) -> None:
    client = Client(server.connect())
    client.send(
        b"POST /proxy/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = b""
    while b"\r\n\r\n" not in interim:
        interim += client.sock.recv(1)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"hello")
    status, _, body = client.response()
    assert (status, json.loads(body)["length"]) == (200, 5)
    assert client.get("/health")[0] == 200  # kept alive
    client.close()


def test_pipelined_requests_answered_in_order(server: Server) -> None:
    client = Client(server.connect())
    client.send(
        b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /proxy/one HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /proxy/two HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert client.response()[2] == b'{"status":"ok"}'
    first = json.loads(client.response()[2])
    second = json.loads(client.response()[2])
    assert (first["target"], first["length"]) == ("/one", 3)
    assert second["target"] == "/two"
    client.close()


def test_a_slow_hostile_client_does_not_block_another(server: Server) -> None:
    hostile = socket.create_connection((server.host, server.port), timeout=10)
    hostile.sendall(b"POST /proxy/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n")
    still_served(server)  # while the hostile head is incomplete
    hostile.sendall(b"Content-Length: 3\r\n\r\n")
    assert Client(hostile).response()[0] == 400
    hostile.close()
