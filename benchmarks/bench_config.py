"""The config, token and route sets the benchmarks share (no sapg imports here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

SECRET = "sapg-bench-secret-0123456789abcdef"
ISSUER = "https://issuer.bench.example"
AUDIENCE = "api"
STATIC_BODY = b'{"status":"ok"}'  # 15 bytes, the bare baseline's body too

#: A tiny real config: a static route, the same answer behind the jwt authorizer,
#: and a proxied route (its upstream is never contacted by the benchmarks).
CONFIG: dict[str, object] = {
    "title": "sapg benchmarks",
    "servers": [{"alias": "upstream", "url": "http://127.0.0.1:9"}],
    "authorizer": {
        "type": "jwt",
        "secret": SECRET,
        "algorithm": "HS256",
        "issuer": ISSUER,
        "audience": AUDIENCE,
    },
    "paths": [
        {"method": "GET", "path": "/health", "response": {"status": "ok"}},
        {"method": "GET", "path": "/private", "auth": True, "response": {"status": "ok"}},
        {
            "method": "ANY",
            "path": "/proxy/{.+}",
            "integration": {"type": "http_proxy", "server": "upstream"},
        },
    ],
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(*, subject: str = "bench-user", lifetime: float = 86400.0) -> str:
    """A valid HS256 JWT for :data:`CONFIG`, signed by hand (not by the code under test)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + lifetime}
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


#: One service's routes, like a real REST API: literals, {param}s, {.+} and ANY.
_SERVICE_ROUTES = (
    ("GET", "/api/v1/svc{i}/items"),
    ("POST", "/api/v1/svc{i}/items"),
    ("GET", "/api/v1/svc{i}/items/{{id}}"),
    ("PUT", "/api/v1/svc{i}/items/{{id}}"),
    ("DELETE", "/api/v1/svc{i}/items/{{id}}"),
    ("GET", "/api/v1/svc{i}/items/{{id}}/history/{{version}}"),
    ("GET", "/api/v1/svc{i}/users/{{user}}/items/{{id}}"),
    ("ANY", "/api/v1/svc{i}/files/{{.+}}"),
    ("ANY", "/api/v1/svc{i}/proxy/{{.+}}"),
    ("OPTIONS", "/api/v1/svc{i}/items"),
)


def api_routes(count: int) -> list[tuple[str, str]]:
    """``count`` routes (a multiple of 10): ``count / 10`` services with distinct prefixes."""
    if count % len(_SERVICE_ROUTES):
        raise ValueError(f"count must be a multiple of {len(_SERVICE_ROUTES)}")
    return [
        (method, template.format(i=service))
        for service in range(count // len(_SERVICE_ROUTES))
        for method, template in _SERVICE_ROUTES
    ]


def probe_paths(count: int) -> dict[str, list[tuple[str, str]]]:
    """Requests for a table of ``api_routes(count)``: ``hit`` ones go deep, ``miss`` ones 404.

    They name the first, middle and last service, so a table of any size is
    probed the same way.
    """
    services = sorted({0, count // 20, count // 10 - 1})
    hit: list[tuple[str, str]] = []
    miss: list[tuple[str, str]] = []
    for s in services:
        hit += [
            ("GET", f"/api/v1/svc{s}/items/42/history/7"),
            ("GET", f"/api/v1/svc{s}/users/u-17/items/99"),
            ("DELETE", f"/api/v1/svc{s}/items/42"),
            ("POST", f"/api/v1/svc{s}/files/reports/2024/q3.pdf"),
        ]
        miss += [
            ("GET", f"/api/v1/svc{s}/orders/42/history/7"),  # unknown collection, deep
            ("PATCH", f"/api/v1/svc{s}/items/42"),  # path known, method not
            ("GET", f"/api/v1/svc{s}x/items/42"),  # unknown service
            ("GET", "/assets/app/main.js"),  # unknown prefix
        ]
    return {"hit": hit, "miss": miss}
