"""One server suite, run against every transport: trio, asyncio, h11 (blocking) and ASGI.

Each transport runs as users run it, in a subprocess (``sapg serve
--transport X``, or the ASGI adapter under uvicorn with httptools), with the
same config and a real upstream. Where uvicorn's own parser owns the wire
(request-head limits and timeouts, the text of a 400), the test says so and
checks only what the adapter controls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Iterator

import pytest

from .servers import KINDS, Client, Server, StreamingUpstream, clean_exit, free_port, start

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

SECRET = "conformance-secret"
ISSUER = "https://issuer.test"
ORIGIN = "https://app.example.com"
MAX_BODY = 100_000
UVICORN_OWNS_THE_WIRE = "ASGI: uvicorn's own parser owns the wire"


def token(claims: dict[str, object]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def config(upstream_url: str) -> dict[str, object]:
    return {
        "servers": [
            {"alias": "up", "url": upstream_url},
            {"alias": "down", "url": f"http://127.0.0.1:{free_port()}"},
        ],
        "cors": {
            "allow_origins": [ORIGIN],
            "allow_methods": ["GET", "POST", "OPTIONS"],
            "allow_headers": ["Authorization", "Content-Type"],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": 60,
        },
        "authorizer": {
            "type": "jwt",
            "secret": SECRET,
            "algorithm": "HS256",
            "issuer": ISSUER,
            "audience": "api",
        },
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
            {
                "method": "ANY",
                "path": "/down/{.+}",
                "integration": {"type": "http_proxy", "server": "down"},
            },
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest,
    upstream: StreamingUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    args = ["--read-timeout", "1", "--idle-timeout", "1", "--max-header-size", "4096"]
    args += ["--max-body-size", str(MAX_BODY), "--log-level", "warning"]
    running = start(request.param, config(upstream.url), tmp_path_factory.mktemp("c"), args=args)
    yield running
    assert running.stop() == clean_exit(running), running.log


def call(
    server: Server,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | Iterator[bytes] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# -- the core's answers, carried out ----------------------------------------------------


def test_static_answer_and_404(server: Server) -> None:
    status, headers, body = call(server, "GET", "/health?x=1")
    assert (status, body) == (200, b'{"status":"ok"}')
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == "15"
    assert headers["x-powered-by"] == "sapg"
    status, headers, body = call(server, "GET", "/missing")
    assert (status, body) == (404, b'{"message":"No match found."}')
    assert headers["x-powered-by"] == "sapg"


def test_head_has_no_body(server: Server) -> None:
    client = Client(server.connect())
    client.send(b"HEAD /missing HTTP/1.1\r\nHost: t\r\n\r\n")  # HEAD is not GET: 404
    status, headers, body = client.response("HEAD")
    assert (status, headers["content-length"], body) == (404, "29", b"")
    assert client.get("/health")[2] == b'{"status":"ok"}'  # the connection goes on
    client.close()


def test_cors_preflight_and_decoration(server: Server) -> None:
    status, headers, body = call(server, "OPTIONS", "/health", headers={"Origin": ORIGIN})
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["access-control-allow-methods"] == "GET,POST,OPTIONS"
    status, headers, _ = call(server, "GET", "/missing", headers={"Origin": ORIGIN})
    assert status == 404
    assert headers["access-control-allow-origin"] == ORIGIN


def test_jwt_accepted_and_refused(server: Server) -> None:
    good = token({"iss": ISSUER, "aud": "api", "sub": "u1", "exp": time.time() + 600})
    status, _, body = call(server, "GET", "/private", headers={"Authorization": f"Bearer {good}"})
    assert (status, body) == (200, b'{"ok":true}')
    expired = token({"iss": ISSUER, "aud": "api", "sub": "u1", "exp": time.time() - 60})
    status, _, body = call(
        server, "GET", "/private", headers={"Authorization": f"Bearer {expired}"}
    )
    assert (status, json.loads(body)["code"]) == (401, "ERR_JWT_EXPIRED")
    status, _, body = call(server, "GET", "/private")
    assert (status, json.loads(body)["code"]) == (401, "AUTH_ERROR")


# -- the proxy: real upstream, bodies streamed both ways --------------------------------------


def test_proxy_streams_a_chunked_upload(server: Server) -> None:
    pieces = [bytes([i]) * 20_000 for i in range(4)]

    def slowly() -> Iterator[bytes]:
        for piece in pieces:
            yield piece
            time.sleep(0.05)

    status, headers, body = call(
        server, "POST", "/proxy/echo?q=1", body=slowly(), headers={"Content-Type": "x/y"}
    )
    assert status == 200
    assert headers["x-upstream"] == "yes"
    assert headers["x-powered-by"] == "sapg"
    answer = json.loads(body)
    assert answer["target"] == "/echo?q=1"
    assert answer["length"] == 80_000
    assert answer["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert answer["headers"]["content-type"] == "x/y"


def test_proxy_relays_the_response_as_it_arrives(server: Server) -> None:
    client = Client(server.connect())
    started = time.monotonic()
    client.send(b"GET /proxy/stream?chunks=3&delay=0.5&size=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
    first = client.sock.recv(65536)
    first_at = time.monotonic() - started
    assert first.startswith(b"HTTP/1.1 200 ")
    assert first_at < 0.9, "the first chunk waited for the whole body"
    client.buffer = first
    status, _, body = client.response()
    assert status == 200
    assert body == b"A" * 1000 + b"B" * 1000 + b"C" * 1000
    assert time.monotonic() - started >= 0.9
    client.close()


def test_refused_upstream_is_502_json(server: Server) -> None:
    status, headers, body = call(server, "GET", "/down/x", headers={"Origin": ORIGIN})
    assert status == 502
    assert json.loads(body) == {
        "error": "Upstream server unreachable",
        "code": "UPSTREAM_UNREACHABLE",
    }
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["x-powered-by"] == "sapg"


# -- protocol failures and limits ---------------------------------------------------------


def test_malformed_request_is_400_and_the_server_goes_on(server: Server) -> None:
    bad = Client(server.connect())
    bad.send(b"NONSENSE\r\n\r\n")
    status, headers, body = bad.response()
    assert status == 400
    if server.kind != "asgi":  # under uvicorn the 400 and its text are uvicorn's own
        assert json.loads(body) == {"error": "Malformed HTTP request", "code": "BAD_REQUEST"}
        assert headers["connection"] == "close"
    assert bad.is_closed_within(5)
    assert call(server, "GET", "/health")[0] == 200


def test_header_limit_is_431(server: Server) -> None:
    # Under ASGI the adapter measures the head from the scope (uvicorn has no limit).
    client = Client(server.connect())
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    status, _, body = client.response()
    assert (status, json.loads(body)["code"]) == (431, "HEADERS_TOO_LARGE")
    assert client.is_closed_within(5)
    assert call(server, "GET", "/health")[0] == 200


def test_body_limit_is_413(server: Server) -> None:
    client = Client(server.connect())
    size = MAX_BODY * 2
    client.send(b"POST /proxy/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
    client.send(b"x" * size)
    status, _, body = client.response()
    assert status == 413
    assert json.loads(body) == {"error": "Request body too large", "code": "BODY_TOO_LARGE"}
    client.close()
    assert call(server, "GET", "/health")[0] == 200


# -- connections ------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    client = Client(server.connect())
    for path in ("/health", "/proxy/echo", "/missing", "/health"):
        status, headers, _ = client.get(path)
        assert status in (200, 404)
        assert headers.get("connection", "") != "close"
    client.close()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    client = Client(server.connect())
    client.send(
        b"GET /proxy/slow?seconds=0.3 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /proxy/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first = client.response()
    assert (first[0], json.loads(first[2])["target"]) == (200, "/slow?seconds=0.3")
    second = client.response()
    assert (second[0], json.loads(second[2])["length"]) == (200, 3)
    assert client.response()[0] == 404
    assert client.response()[2] == b'{"status":"ok"}'
    client.close()


def test_stalled_client_is_cut_off_after_the_read_timeout(server: Server) -> None:
    if server.kind == "asgi":
        pytest.skip(f"{UVICORN_OWNS_THE_WIRE}: it sets no read timeout on a request head")
    client = Client(server.connect())
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")  # the head never ends
    started = time.monotonic()
    assert client.is_closed_within(5)
    assert 0.8 < time.monotonic() - started < 4
    body = Client(server.connect())
    body.send(b"POST /proxy/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\nonly ten..")
    assert body.is_closed_within(5)
    assert call(server, "GET", "/health")[0] == 200


def test_idle_keep_alive_is_closed_after_its_timeout(server: Server) -> None:
    client = Client(server.connect())
    assert client.get("/health")[0] == 200
    started = time.monotonic()
    assert client.is_closed_within(5)
    assert 0.8 < time.monotonic() - started < 4
