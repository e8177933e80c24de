"""Forwarded headers and request ids over real sockets, on every driver (ASGI included).

The upstream (a real server, recording what it receives) sees ``X-Forwarded-For``
with the peer appended, ``X-Forwarded-Proto`` and ``X-Forwarded-Host``; a client
that is not a trusted proxy cannot pass its own values through. Every answer and
every proxied request carries ``X-Request-Id`` (the client's valid one, else a new
one), and so do the access line and the core's log lines about the request.

Under ASGI the peer is the server's ``scope["client"]``; uvicorn's own proxy-header
handling is pointed away from 127.0.0.1 here (``FORWARDED_ALLOW_IPS``) so that the
gateway's rule is the one tested (docs/transports.md says to do the same).
"""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path

import pytest

from .conftest import Upstream
from .servers import KINDS, Server, free_port, start

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

NOT_OURS = "10.9.9.9"
IDS = "IDS=tests.transports.test_forwarded_e2e:IdEcho"


class IdEcho:
    """A binding that answers the request id it is given (``ctx.request_id``)."""

    def fetch(self, request: object, env: object, ctx: object) -> str:
        return str(ctx.request_id)  # type: ignore[attr-defined]  # a str is served verbatim


HEX32 = re.compile(r"[0-9a-f]{32}")


def config(upstream: Upstream) -> dict[str, object]:
    return {
        "servers": [
            {"alias": "up", "url": upstream.url},
            {"alias": "down", "url": f"http://127.0.0.1:{free_port()}"},
        ],
        "serviceBindings": [{"alias": "ids", "binding": "IDS"}],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {
                "method": "GET",
                "path": "/whoami",
                "integration": {"type": "service_binding", "binding": "ids", "function": "fetch"},
            },
            {
                "method": "ANY",
                "path": "/api/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
            {
                "method": "ANY",
                "path": "/down/{.+}",
                "integration": {"type": "http_proxy", "server": "down"},
            },
        ],
    }


def serve(kind: str, upstream: Upstream, tmp_path: Path, allow: str | None) -> Server:
    env = {"FORWARDED_ALLOW_IPS": NOT_OURS}  # uvicorn's own rule: off for us
    args = ["--binding", IDS]
    if kind == "asgi":
        env["SAPG_BINDINGS"] = IDS
    if allow is not None:
        args += ["--forwarded-allow-ips", allow]
        env["SAPG_FORWARDED_ALLOW_IPS"] = allow
    return start(kind, config(upstream), tmp_path, args=args, env=env)


def get(
    server: Server, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_for_log(server: Server, pattern: str, timeout: float = 5.0) -> None:
    """Wait until a line matching ``pattern`` is logged (access lines are written in batches,
    and uvicorn's exit by signal skips the last batch)."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, server.log):
        assert time.monotonic() < deadline, f"no log line matches {pattern!r}:\n{server.log}"
        time.sleep(0.05)


SPOOF = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
}


@pytest.mark.parametrize("kind", KINDS)
def test_an_untrusted_peer_cannot_spoof_and_ids_go_both_ways(
    kind: str, upstream: Upstream, tmp_path: Path
) -> None:
    server = serve(kind, upstream, tmp_path, NOT_OURS)  # so 127.0.0.1 is not trusted
    try:
        status, headers, _ = get(server, "/api/items", {**SPOOF, "X-Request-Id": "abc-123"})
        assert status == 200 and headers["x-request-id"] == "abc-123"
        seen = upstream.requests[-1].headers
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == f"127.0.0.1:{server.port}"
        assert seen["x-request-id"] == "abc-123"

        # Bad ids are replaced, the same new one upstream and back.
        for bad in ("x" * 201, "ab\tcd"):
            status, headers, _ = get(server, "/api/items", {"X-Request-Id": bad})
            assert status == 200 and HEX32.fullmatch(headers["x-request-id"]), headers
            assert upstream.requests[-1].headers["x-request-id"] == headers["x-request-id"]
        # Static answers and errors carry one too; a failure's log line holds it.
        assert get(server, "/health", {"X-Request-Id": "static-1"})[1]["x-request-id"] == "static-1"
        assert get(server, "/nope", {"X-Request-Id": "miss-1"})[1]["x-request-id"] == "miss-1"
        status, headers, _ = get(server, "/down/x", {"X-Request-Id": "down-1"})
        assert status == 502 and headers["x-request-id"] == "down-1"
        # Services are given the id.
        status, headers, body = get(server, "/whoami", {"X-Request-Id": "svc-1"})
        assert (status, body) == (200, b"svc-1")
        status, headers, body = get(server, "/whoami")
        assert body.decode() == headers["x-request-id"]
        wait_for_log(server, r"x_request_id=svc-1 ")  # the last line written (ASGI: not at exit)
    finally:
        server.stop()
    log = server.log
    assert re.search(r"access GET /api/items 200 .* client=127\.0\.0\.1 x_request_id=abc-123 ", log)
    assert "x_request_id=static-1 " in log and "x_request_id=miss-1 " in log
    assert re.search(r"WARNING request \d+ \[down-1\]: upstream 'down'", log), log[-3000:]


@pytest.mark.parametrize("kind", KINDS)
def test_a_trusted_proxy_is_believed_and_its_client_logged(
    kind: str, upstream: Upstream, tmp_path: Path
) -> None:
    server = serve(kind, upstream, tmp_path, None)  # the default: 127.0.0.1 is trusted
    try:
        status, headers, _ = get(server, "/api/items", SPOOF)
        assert status == 200
        seen = upstream.requests[-1].headers
        assert seen["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-host"] == "evil.example"
        new_id = headers["x-request-id"]
        assert HEX32.fullmatch(new_id) and seen["x-request-id"] == new_id
        access = rf"access GET /api/items 200 .* client=6\.6\.6\.6 x_request_id={new_id} "
        wait_for_log(server, access)
    finally:
        server.stop()


def test_json_log_lines_hold_the_id(upstream: Upstream, tmp_path: Path) -> None:
    server = start(
        "trio", config(upstream), tmp_path, args=["--log-format", "json", "--binding", IDS]
    )
    try:
        assert get(server, "/down/x", {"X-Request-Id": "json-1"})[0] == 502
    finally:
        server.stop()
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    about = [entry for entry in entries if entry.get("x_request_id") == "json-1"]
    assert {entry["logger"] for entry in about} == {"sapg", "sapg.access"}, entries
    assert [e["client"] for e in about if e["logger"] == "sapg.access"] == ["127.0.0.1"]
