"""Log levels in the drivers (issue 9 item 9), on every transport, as users run them.

A client's doing (a malformed request, a head or body that times out, leaving before
its answer) is INFO; an upstream's fault (its body breaking off) is WARNING; ERROR is
kept for our own bugs, so none of these writes one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import Client, StreamingUpstream, running

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

DRIVERS = ("trio", "asyncio", "h11")


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def config(upstream: StreamingUpstream) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream.url}],
        "paths": [
            {"method": "GET", "path": "/ping", "response": {}},
            {
                "method": "ANY",
                "path": "/up/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", DRIVERS)
def test_client_faults_are_info_and_never_error(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--header-timeout", "1", "--read-timeout", "1", "--min-body-rate", "0"]
    with running(kind, config(upstream), tmp_path, args=args) as server:
        # a malformed request
        bad = Client(server.connect())
        bad.send(b"NONSENSE\r\n\r\n")
        assert bad.response()[0] == 400
        bad.close()
        _wait_for(lambda: "INFO protocol failure" in server.log)
        # a head that never ends
        slow = Client(server.connect())
        slow.send(b"GET /ping HTTP/1.1\r\nHost: t\r\n")
        assert slow.is_closed_within(10)
        slow.close()
        _wait_for(lambda: "timed out: connection cut off" in server.log)
        # a client leaving while its (streamed, slow) answer is relayed
        leaving = Client(server.connect())
        leaving.send(b"GET /up/stream?chunks=8&delay=0.3&size=65536 HTTP/1.1\r\nHost: t\r\n\r\n")
        leaving.sock.recv(1024)  # the head is here
        leaving.close()
        _wait_for(lambda: "went away before its answer was sent" in server.log)
        still = Client(server.connect())
        assert still.get("/ping")[0] == 200
        still.close()
    lines = server.log.splitlines()
    for needle in ("protocol failure", "timed out: connection cut off", "went away before"):
        assert all(" INFO " in line for line in lines if needle in line), server.log
    assert not [line for line in lines if " ERROR " in line], server.log
