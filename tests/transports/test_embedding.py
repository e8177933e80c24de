"""docs/embedding.md: its example driver runs as written, over a real loopback socket."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "embed_server.py"
DOC = ROOT / "docs" / "embedding.md"


def included_block(doc: Path, name: str) -> str:
    """The fenced code block that follows ``<!-- include: name -->`` in ``doc``."""
    found = re.search(
        rf"<!-- include: {re.escape(name)} -->\n```python\n(.*?)^```$",
        doc.read_text(),
        re.DOTALL | re.MULTILINE,
    )
    assert found, f"{doc.name} has no included block for {name}"
    return found.group(1)


def test_the_doc_shows_the_example_file_verbatim() -> None:
    assert included_block(DOC, "docs/examples/embed_server.py") == EXAMPLE.read_text()


def test_the_example_uses_only_the_public_api() -> None:
    source = EXAMPLE.read_text()
    assert "sapg_core._" not in source and "transports" not in source
    code_lines = [
        line
        for line in source.splitlines()
        if line.strip() and not line.strip().startswith("#") and not line.startswith('"""')
    ]
    assert len(code_lines) <= 75, "the walkthrough promises about 60 lines"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.match(r"listening on http://(127\.0\.0\.1):(\d+)", line)
        assert found, f"no listening line: {line!r}"
        yield found.group(1), int(found.group(2))
    finally:
        process.terminate()
        process.wait(timeout=10)


def get(
    server: tuple[str, int], method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_static_routes_answer(server: tuple[str, int]) -> None:
    status, headers, body = get(server, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"
    assert headers["x-powered-by"] == "sapg"
    assert "date" in headers
    assert get(server, "GET", "/hello/you")[::2] == (200, b'"hello"')


def test_no_route_is_404_json(server: tuple[str, int]) -> None:
    status, _, body = get(server, "GET", "/nowhere")
    assert (status, body) == (404, b'{"message":"No match found."}')


def test_an_outbound_action_reported_as_failed_is_answered_by_the_core(
    server: tuple[str, int],
) -> None:
    status, headers, body = get(server, "POST", "/api/orders", body=b'{"n": 1}')
    assert status == 502
    assert json.loads(body) == {
        "error": "Upstream server unreachable",
        "code": "UPSTREAM_UNREACHABLE",
    }
    assert headers["x-powered-by"] == "sapg"


def test_keep_alive_and_concurrent_connections(server: tuple[str, int]) -> None:
    idle = socket.create_connection(server, timeout=10)  # holds its thread, serves nothing
    try:
        conn = http.client.HTTPConnection(*server, timeout=10)
        try:
            for path in ("/health", "/hello/a", "/health"):
                conn.request("GET", path)
                response = conn.getresponse()
                assert response.status == 200
                response.read()
        finally:
            conn.close()
    finally:
        idle.close()


def test_a_malformed_request_gets_400_and_the_server_keeps_serving(
    server: tuple[str, int],
) -> None:
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in data.lower()
    assert get(server, "GET", "/health")[0] == 200
