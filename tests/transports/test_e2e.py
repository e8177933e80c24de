"""The gateway as users run it: `sapg serve` over real loopback sockets, real upstreams.

Each test starts the real CLI in a subprocess with a config file, sends real
HTTP requests and, for proxied routes, checks what a real upstream server
received.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time

import pytest

from .conftest import Upstream, free_port, json_body, stop_gateway

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

SECRET = "e2e-secret"
CORS = {
    "allow_origins": ["https://app.example.com"],
    "allow_methods": ["GET", "POST", "OPTIONS"],
    "allow_headers": ["Authorization", "Content-Type"],
    "expose_headers": ["X-Request-Id"],
    "allow_credentials": True,
    "max_age": 600,
}
ORIGIN = {"Origin": "https://app.example.com"}


def token(claims: dict[str, object], secret: str = SECRET) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def config(server_url: str, **server: object) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": server_url + "/base", **server}],
        "cors": CORS,
        "authorizer": {
            "type": "jwt",
            "secret": SECRET,
            "algorithm": "HS256",
            "issuer": "https://issuer.test",
            "audience": "api",
        },
        "variables": {"region": "eu-west-1"},
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http", "server": "up"},
            },
            {
                "method": "GET",
                "path": "/mapped/{.+}",
                "auth": True,
                "integration": {"type": "http_proxy", "server": "up"},
                "variables": {"api_key": "k-1"},
                "mapping": {
                    "headers": {
                        "x-user-id": "$request.jwt.sub",
                        "x-api-key": "$config.api_key",
                        "x-region": "$config.region",
                    },
                    "query": {"user": "$request.jwt.sub"},
                },
            },
        ],
    }


def test_static_404_and_cors_over_http(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url))
    status, headers, body = gw.request("GET", "/health", headers=ORIGIN)
    assert (status, body) == (200, b'{"status":"ok"}')
    assert headers["content-type"] == "application/json"
    assert headers["x-powered-by"] == "sapg"
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    status, headers, body = gw.request("GET", "/missing")
    assert (status, body) == (404, b'{"message":"No match found."}')
    status, headers, body = gw.request("OPTIONS", "/health", headers=ORIGIN)
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-methods"] == "GET,POST,OPTIONS"


def test_jwt_route_over_http(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url))
    good = token({"iss": "https://issuer.test", "aud": "api", "exp": time.time() + 600})
    assert gw.request("GET", "/private", headers={"Authorization": f"Bearer {good}"})[0] == 200
    expired = token({"iss": "https://issuer.test", "aud": "api", "exp": time.time() - 10})
    status, _, body = gw.request("GET", "/private", headers={"Authorization": f"Bearer {expired}"})
    assert (status, json_body(body)) == (
        401,
        {"error": "Token has expired.", "code": "ERR_JWT_EXPIRED"},
    )
    status, _, body = gw.request("GET", "/private")
    assert status == 401
    assert json_body(body) == {
        "error": "No token provided or token format is invalid.",
        "code": "AUTH_ERROR",
    }


def test_proxy_strips_the_prefix_and_relays_the_answer(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url))
    status, headers, body = gw.request(
        "POST",
        "/proxy/created/7?x=1&y=a%20b",
        body=b"hello",
        headers={**ORIGIN, "Authorization": "Bearer abc", "Content-Type": "text/plain"},
    )
    assert status == 201
    assert json_body(body) == {"method": "POST", "path": "/base/created/7?x=1&y=a%20b", "length": 5}
    assert headers["x-upstream"] == "yes"
    assert headers["x-powered-by"] == "sapg"
    assert headers["vary"] == "Origin"  # the original overwrites the upstream's Vary
    seen = upstream.requests[-1]
    assert seen.body == b"hello"
    assert seen.headers["authorization"] == "Bearer abc"
    assert seen.headers["host"] == f"127.0.0.1:{upstream.port}"


def test_mapping_with_a_verified_jwt(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url))
    jwt = token(
        {"iss": "https://issuer.test", "aud": "api", "sub": "user-123", "exp": time.time() + 600}
    )
    status, _, _ = gw.request(
        "GET", "/mapped/orders/7?source=web", headers={"Authorization": f"Bearer {jwt}"}
    )
    assert status == 200
    seen = upstream.requests[-1]
    assert seen.path == "/base/orders/7?source=web&user=user-123"
    assert seen.headers["x-user-id"] == "user-123"
    assert seen.headers["x-api-key"] == "k-1"
    assert seen.headers["x-region"] == "eu-west-1"


def test_large_bodies_stream_through_the_proxy(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url))
    payload = bytes(range(256)) * 8192  # 2 MiB
    status, _, body = gw.request("PUT", "/proxy/upload", body=payload)
    assert status == 200
    assert json_body(body)["length"] == len(payload)  # type: ignore[index]
    assert upstream.requests[-1].body == payload


def test_refused_upstream_is_502_json(serve) -> None:
    gw = serve(config(f"http://127.0.0.1:{free_port()}"))
    status, headers, body = gw.request("GET", "/proxy/x", headers=ORIGIN)
    assert status == 502
    assert json_body(body) == {
        "error": "Upstream server unreachable",
        "code": "UPSTREAM_UNREACHABLE",
    }
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["x-powered-by"] == "sapg"


def test_slow_upstream_is_504_json_after_the_read_timeout(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url, read_timeout=0.5))
    started = time.monotonic()
    status, _, body = gw.request("GET", "/proxy/slow")
    assert time.monotonic() - started < 2.5
    assert (status, json_body(body)) == (
        504,
        {"error": "Upstream server timed out", "code": "UPSTREAM_TIMEOUT"},
    )


def test_https_upstream_trusted_through_ssl_cert_file(
    serve, tls_upstream: Upstream, ca, tmp_path
) -> None:
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    gw = serve(config(tls_upstream.url), env={"SSL_CERT_FILE": str(pem)})
    status, _, body = gw.request("GET", "/proxy/tls")
    assert status == 200
    assert json_body(body)["path"] == "/base/tls"  # type: ignore[index]
    # Without the CA the certificate is not trusted: 502 with the TLS code.
    gw2 = serve(config(tls_upstream.url))
    status, _, body = gw2.request("GET", "/proxy/tls")
    assert (status, json_body(body)["code"]) == (502, "UPSTREAM_TLS_ERROR")  # type: ignore[index]


def test_malformed_request_gets_400_and_the_server_keeps_serving(serve, upstream) -> None:
    gw = serve(config(upstream.url))
    with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"BAD_REQUEST"' in answer
    assert gw.request("GET", "/health")[0] == 200


def test_header_and_body_limits(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url), args=["--max-body-size", "1000"])
    status, _, body = gw.request("POST", "/proxy/x", body=b"x" * 5000)
    assert status == 413
    assert json_body(body)["code"] == "BODY_TOO_LARGE"  # type: ignore[index]
    status, _, _ = gw.request("GET", "/health", headers={"X-Big": "a" * 40000})
    assert status == 431
    assert gw.request("GET", "/health")[0] == 200


def test_keep_alive_serves_several_requests_on_one_connection(serve, upstream) -> None:
    import http.client

    gw = serve(config(upstream.url))
    conn = http.client.HTTPConnection(gw.host, gw.port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.read() == b'{"status":"ok"}'
    conn.close()


def test_sigterm_exits_0(serve, upstream: Upstream) -> None:
    gw = serve(config(upstream.url))
    assert gw.request("GET", "/health")[0] == 200
    assert stop_gateway(gw) == 0
