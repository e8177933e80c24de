"""Logs: one access line per request, text or JSON, on every transport; secrets never logged."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import KINDS, Client, Server, StreamingUpstream, free_port, start

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

SECRETS = {
    "query": "q-secret-1",
    "bearer": "bearer-secret-2",
    "cookie": "cookie-secret-3",
    "body": "body-secret-4",
    "mapped": "mapped-secret-5",
}


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def config(upstream: StreamingUpstream) -> dict[str, object]:
    return {
        "servers": [
            {"alias": "up", "url": upstream.url},
            {"alias": "down", "url": f"http://127.0.0.1:{free_port()}"},
        ],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
                "mapping": {"query": {"key": SECRETS["mapped"]}},
            },
            {
                "method": "ANY",
                "path": "/down/{.+}",
                "integration": {"type": "http_proxy", "server": "down"},
            },
        ],
    }


def traffic(server: Server) -> None:
    """Requests carrying every kind of secret, answered 200, 404 and 502."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    headers = {"Authorization": f"Bearer {SECRETS['bearer']}", "Cookie": SECRETS["cookie"]}
    for method, path, body in [
        ("GET", f"/health?token={SECRETS['query']}", None),
        ("POST", f"/proxy/items?api_key={SECRETS['query']}", SECRETS["body"].encode()),
        ("GET", "/missing", None),
        ("GET", "/down/x", None),
    ]:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status in (200, 404, 502)
    conn.close()


@pytest.mark.parametrize("kind", KINDS)
def test_json_access_log_has_one_line_per_request_and_no_secrets(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start(kind, config(upstream), tmp_path, args=["--log-format", "json"])
    traffic(server)
    server.stop()
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    access = [entry for entry in entries if entry["logger"] == "sapg.access"]
    assert [(e["method"], e["path"], e["status"], e["route"]) for e in access] == [
        ("GET", "/health", 200, "GET /health"),
        ("POST", "/proxy/items", 200, "ANY /proxy/{.+}"),
        ("GET", "/missing", 404, ""),
        ("GET", "/down/x", 502, "ANY /down/{.+}"),
    ]
    assert [e["upstream"] for e in access] == [
        "",
        upstream.url,
        "",
        access[3]["upstream"],
    ]
    assert access[3]["upstream"].startswith("http://127.0.0.1:")
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in access)
    assert all(e["level"] == "INFO" and e["time"].endswith("Z") for e in access)
    errors = [e for e in entries if e["level"] == "WARNING"]
    assert any("upstream 'down': connect" in e["message"] for e in errors), errors
    for name, secret in SECRETS.items():
        assert secret not in server.log, f"the {name} secret was logged"


def test_text_access_log_and_levels(upstream: StreamingUpstream, tmp_path: Path) -> None:
    server = start("asyncio", config(upstream), tmp_path)
    traffic(server)
    server.stop()
    access = [line for line in server.lines if line.startswith("sapg: INFO access ")]
    assert len(access) == 4
    assert re.fullmatch(
        r'sapg: INFO access GET /health 200 \d+\.\dms route="GET /health" upstream=- '
        r"client=127\.0\.0\.1 x_request_id=[0-9a-f]{32} id=\d+\n",
        access[0],
    )
    assert f'route="ANY /proxy/{{.+}}" upstream={upstream.url} ' in access[1]
    assert "sapg: WARNING request " in server.log
    for secret in SECRETS.values():
        assert secret not in server.log

    quiet = start("h11", config(upstream), tmp_path, args=["--log-level", "warning"])
    traffic(quiet)
    quiet.stop()
    assert "access" not in quiet.log
    assert "sapg: WARNING request " in quiet.log  # warnings still are


@pytest.mark.parametrize("kind", ["trio", "asyncio", "h11"])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_access_line_is_written_when_sigterm_follows_the_requests(
    kind: str, fmt: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    requests = 300
    server = start(kind, config(upstream), tmp_path, args=["--log-format", fmt])
    client = Client(server.connect())
    for index in range(requests):
        assert client.get(f"/health?n={index}")[0] == 200
    assert server.stop() == 0  # SIGTERM at once: the last lines are still buffered
    client.close()
    if fmt == "json":
        entries = [json.loads(line) for line in server.lines if line.startswith("{")]
        access = [e for e in entries if e["logger"] == "sapg.access"]
        assert all(e["path"] == "/health" for e in access)
        ids = [e["request_id"] for e in access]
    else:
        lines = [line for line in server.lines if line.startswith("sapg: INFO access GET ")]
        ids = [int(line.rsplit("id=", 1)[1]) for line in lines]
    assert len(ids) == requests, server.log[-2000:]
    assert ids == sorted(ids) and len(set(ids)) == requests  # in order, none twice
