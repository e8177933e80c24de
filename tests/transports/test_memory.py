"""Bounded memory: 1 GiB up and 1 GiB down through an ``http_proxy`` route, on every transport.

The bytes are generated on the fly by the client and the upstream and never
held by anyone; the gateway must stream them. Its peak resident set size
(VmHWM from /proc/PID/status of the server process) stays under 150 MB.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import (
    KINDS,
    Client,
    StreamingUpstream,
    pattern_chunks,
    running,
    vm_hwm_kib,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(240),
    pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc"),
]

GIB = 1 << 30
LIMIT_KIB = 150 * 1000  # 150 MB


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


@pytest.mark.parametrize("kind", KINDS)
def test_1gib_up_and_down_in_bounded_memory(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    config = {
        "servers": [{"alias": "up", "url": upstream.url, "read_timeout": 60}],
        "paths": [
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            }
        ],
    }
    args = ["--max-body-size", str(2 * GIB), "--log-level", "warning"]
    with running(kind, config, tmp_path, args=args) as server:
        started = time.monotonic()
        client = Client(server.connect(timeout=60))
        client.send(b"PUT /proxy/count HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % GIB)
        for piece in pattern_chunks(GIB):
            client.sock.sendall(piece)
        status, _, body = client.response()
        answer = json.loads(body)
        assert (status, answer["length"]) == (200, GIB)
        uploaded = time.monotonic()

        client.send(b"GET /proxy/download?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % GIB)
        received = _read_response_counting(client)
        assert received == GIB
        downloaded = time.monotonic()

        peak = vm_hwm_kib(server.process.pid)
        print(
            f"{kind}: upload {uploaded - started:.1f}s, download {downloaded - uploaded:.1f}s, "
            f"peak RSS {peak / 1000:.1f} MB"
        )
        assert peak < LIMIT_KIB, f"{kind}: peak RSS {peak} KiB"
        client.close()


def _read_response_counting(client: Client) -> int:
    """Read one Content-Length response, counting the body without keeping it."""
    buffer = bytearray(client.buffer)
    while b"\r\n\r\n" not in buffer:
        data = client.sock.recv(65536)
        assert data, "closed before the head"
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    received = len(rest)
    chunk = bytearray(1 << 20)
    view = memoryview(chunk)
    while received < length:
        count = client.sock.recv_into(view)
        assert count, f"closed after {received} bytes"
        received += count
    return received
