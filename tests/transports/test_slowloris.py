"""Slow clients ("slowloris") over real loopback, on the trio, asyncio and blocking drivers.

- A head dribbled one byte per 0.2 s (every gap far under ``--read-timeout``) is cut off at
  ``--header-timeout``: the head has one deadline, which no byte restarts.
- A body dribbled under ``--min-body-rate`` is cut off once the rate's grace is spent; a
  body that is slow but keeps the rate is not.
- Meanwhile other clients are served.
- The blocking driver with ``--threads 4``: eight sockets dribbling their heads (half of
  them after a first request on the same connection) hold no worker, so a normal
  request is answered, not refused 503.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .servers import Server, StreamingUpstream, running

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

DRIVERS = ("trio", "asyncio", "h11")
GAP = 0.2  # seconds between dribbled bytes


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def config(upstream: StreamingUpstream) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream.url}],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


def dribble(
    sock: socket.socket, data: bytes, *, gap: float = GAP, stop: threading.Event | None = None
) -> float | None:
    """Send ``data`` one byte per ``gap``; seconds until the server closed, None if it never did."""
    started = time.monotonic()
    for byte in data:
        if stop is not None and stop.is_set():
            return None
        try:
            sock.send(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], gap)
        if readable:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - started
            except OSError:
                return time.monotonic() - started
    return None


def get_health(server: Server) -> int:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert json.loads(response.read()) == {"status": "ok"}
        return response.status
    finally:
        conn.close()


def served_meanwhile(server: Server, done: threading.Event) -> list[int]:
    """Requests from another client while ``done`` is not set (at least one)."""
    statuses = [get_health(server)]
    while not done.wait(0.3):
        statuses.append(get_health(server))
    return statuses


@pytest.mark.parametrize("kind", DRIVERS)
def test_a_dribbled_head_is_cut_off_at_the_header_timeout(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--header-timeout", "1", "--read-timeout", "5"]
    with running(kind, config(upstream), tmp_path, args=args) as server:
        head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200  # never ends
        done = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            others = pool.submit(served_meanwhile, server, done)
            with server.connect() as sock:
                closed_after = dribble(sock, head)
            done.set()
            statuses = others.result(timeout=10)
        assert closed_after is not None, "a head dribbled for 40 s was never cut off"
        assert 0.8 < closed_after < 3  # the header timeout, not the read timeout (5 s)
        assert statuses and set(statuses) == {200}


@pytest.mark.parametrize("kind", DRIVERS)
def test_a_body_under_the_minimum_rate_is_cut_off_and_a_slow_one_above_it_is_not(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--read-timeout", "1", "--min-body-rate", "100", "--header-timeout", "5"]
    with running(kind, config(upstream), tmp_path, args=args) as server:
        head = b"POST /proxy/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
        done = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            others = pool.submit(served_meanwhile, server, done)
            with server.connect() as sock:
                sock.sendall(head)
                closed_after = dribble(sock, b"x" * 1000)  # 5 B/s, gaps far under 1 s
            done.set()
            statuses = others.result(timeout=10)
        assert closed_after is not None, "a body dribbled at 5 B/s was never cut off"
        assert 0.8 < closed_after < 4  # 1 s of grace + a few bytes' worth at 100 B/s
        assert statuses and set(statuses) == {200}

        # 1,000 bytes in 100-byte pieces 0.2 s apart (500 B/s): slower than the grace
        # alone allows, but above the minimum rate, so it is received whole.
        with server.connect() as sock:
            sock.sendall(head)
            for _ in range(10):
                time.sleep(GAP)
                sock.sendall(b"y" * 100)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200
            assert json.loads(response.read())["length"] == 1000


def test_dribbling_heads_take_no_worker_of_the_blocking_driver(
    upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--threads", "4", "--header-timeout", "10", "--read-timeout", "10"]
    with running("h11", config(upstream), tmp_path, args=args) as server:
        stop = threading.Event()
        head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000
        sockets = [server.connect() for _ in range(8)]
        for sock in sockets[:4]:  # these dribble their *second* head, after a quick first
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}')
        try:
            with ThreadPoolExecutor(8) as pool:
                dribblers = [pool.submit(dribble, sock, head, stop=stop) for sock in sockets]
                time.sleep(1)  # every dribbler has sent a few bytes of its head
                statuses = [get_health(server) for _ in range(5)]
                stop.set()
                assert [d.result(timeout=10) for d in dribblers] == [None] * 8  # still open
        finally:
            for sock in sockets:
                sock.close()
        assert statuses == [200] * 5
        assert "server busy" not in server.log


@pytest.mark.parametrize("kind", DRIVERS)
def test_a_client_that_stops_reading_is_cut_off_at_the_read_timeout(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    size = 64 << 20  # far more than the socket buffers hold
    with running(kind, config(upstream), tmp_path, args=["--read-timeout", "1"]) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        with sock:
            sock.sendall(b"GET /proxy/download?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
            time.sleep(3)  # never reading: the server's writes stall, past the read timeout
            assert get_health(server) == 200  # others are served meanwhile
            received = 0
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):  # what was buffered, then the end
                    received += len(chunk)
        assert 0 < received < size  # the answer was cut off, not resumed
