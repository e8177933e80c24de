"""Worker processes (``sapg serve --workers N``) on every native driver, as users run them.

- Two workers serve one port: answers come from two different processes (a service route
  answers its process's pid), neither of them the supervisor; the ready line is printed once.
- A worker killed with SIGKILL is replaced (and the log says so) while requests keep being
  answered; a worker that dies again and again soon after its start is restarted after a
  growing delay.
- SIGTERM to the supervisor drains every worker (the requests in flight are answered) and
  the supervisor exits 0; SIGHUP makes every worker re-read the config.
- A config that cannot be used stops the start with the worker's exit code, reported once.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

from .servers import Server, StreamingUpstream, command, start
from .test_tls import serve_tls

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

DRIVERS = ("trio", "asyncio", "h11")

PID_SERVICE = """\
import os


def fetch(request, env, ctx):
    return str(os.getpid())
"""


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def config(tmp_path: Path, upstream: StreamingUpstream, version: int = 1) -> dict[str, object]:
    (tmp_path / "pid_service.py").write_text(PID_SERVICE)
    return {
        "servers": [{"alias": "up", "url": upstream.url}],
        "services": [{"alias": "pid", "entrypoint": "./pid_service.py"}],
        "paths": [
            {"method": "GET", "path": "/version", "response": {"version": version}},
            {"method": "GET", "path": "/pid", "integration": {"type": "service", "binding": "pid"}},
            {
                "method": "ANY",
                "path": "/up/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


def get(server: Server, path: str, timeout: float = 30) -> tuple[int, bytes]:
    """One GET on a new connection (so any worker may take it)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def answering_pids(server: Server, want: int = 2, limit: int = 400) -> set[int]:
    """The pids answering ``/pid`` on new connections, 8 at a time, until ``want`` differ."""
    seen: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(limit // 8):
            for status, body in pool.map(lambda _: get(server, "/pid"), range(8)):
                assert status == 200, body
                seen.add(int(body))
            if len(seen) >= want:
                break
    return seen


def workers_of(supervisor: int) -> set[int]:
    """The supervisor's living child processes, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(parent) == supervisor and state != "Z":
            found.add(int(stat.parent.name))
    return found


def is_gone(supervisor: int, pid: int) -> bool:
    return pid not in workers_of(supervisor)


def wait_until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(10)


@pytest.mark.parametrize("kind", DRIVERS)
def test_two_workers_serve_one_port(kind: str, upstream: StreamingUpstream, tmp_path: Path) -> None:
    server = start(kind, config(tmp_path, upstream), tmp_path, args=["--workers", "2"])
    try:
        pids = answering_pids(server)
        assert len(pids) == 2, pids
        assert server.process.pid not in pids  # the supervisor serves nothing itself
        assert pids == workers_of(server.process.pid)
        assert server.log.count("listening on") == 1, server.log
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["trio", "h11"])
def test_a_killed_worker_is_replaced_while_requests_are_answered(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start(kind, config(tmp_path, upstream), tmp_path, args=["--workers", "2"])
    try:
        before = workers_of(server.process.pid)
        assert len(before) == 2
        victim = min(before)
        (survivor,) = before - {victim}
        os.kill(victim, signal.SIGKILL)
        statuses = [get(server, "/version")[0] for _ in range(20)]  # answered meanwhile
        assert statuses == [200] * 20
        wait_until(lambda: "exited (killed by SIGKILL): starting a new one" in server.log)
        wait_until(lambda: len(workers_of(server.process.pid)) == 2)
        after = workers_of(server.process.pid)
        assert survivor in after and victim not in after
        (replacement,) = after - {survivor}
        wait_until(lambda: replacement in answering_pids(server, want=2), timeout=30)
    finally:
        stop(server)


def test_a_crash_looping_worker_is_restarted_after_a_growing_delay(
    upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start("trio", config(tmp_path, upstream), tmp_path, args=["--workers", "2"])
    try:
        survivor = min(workers_of(server.process.pid))
        for _ in range(4):  # the other worker, and each of its replacements once it appears
            (victim,) = workers_of(server.process.pid) - {survivor}
            os.kill(victim, signal.SIGKILL)
            wait_until(functools.partial(is_gone, server.process.pid, victim))
            wait_until(lambda: len(workers_of(server.process.pid)) == 2)  # and replaced
        assert "times in a row soon after starting: next start in 0.5s" in server.log
        assert "next start in 1.0s" in server.log
        assert get(server, "/version")[0] == 200  # the other worker served all along
    finally:
        stop(server)


@pytest.mark.parametrize("kind", DRIVERS)
def test_sigterm_drains_every_worker_then_exits_0(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--workers", "2", "--grace", "20"]
    server = start(kind, config(tmp_path, upstream), tmp_path, args=args)
    try:
        assert len(answering_pids(server)) == 2
        with ThreadPoolExecutor(10) as pool:
            answers = [pool.submit(get, server, "/up/slow?seconds=1.5") for _ in range(10)]
            upstream.wait_for(10)  # all in flight, spread over both workers
            server.signal(signal.SIGTERM)
            results = [answer.result(timeout=30) for answer in answers]
        assert [status for status, _ in results] == [200] * 10
        assert all(json.loads(body)["target"] == "/slow?seconds=1.5" for _, body in results)
        assert server.process.wait(timeout=30) == 0, server.log
        assert "shutting down 2 workers gracefully" in server.log
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["trio", "asyncio", "h11"])
def test_sighup_reloads_every_worker(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start(kind, config(tmp_path, upstream, 1), tmp_path, args=["--workers", "2"])
    config_path: Path = server.config_path  # type: ignore[attr-defined]
    try:
        assert len(answering_pids(server)) == 2
        config_path.write_text(json.dumps(config(tmp_path, upstream, 2)))
        server.signal(signal.SIGHUP)
        wait_until(lambda: server.log.count("config reloaded") == 2)
        with ThreadPoolExecutor(8) as pool:  # new connections: whichever worker takes them
            answers = list(pool.map(lambda _: get(server, "/version"), range(40)))
        assert answers == [(200, b'{"version":2}')] * 40
        assert server.process.poll() is None
    finally:
        stop(server)


def test_a_config_that_cannot_be_used_stops_the_start_once(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"paths": [{"method": "GET", "path": "no-slash"}]}')
    argv, _ = command("trio", path, ["--workers", "2", "--strict"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("refusing to start (strict mode)") == 1, done.stderr
    assert "listening on" not in done.stderr

    argv, _ = command("trio", tmp_path / "missing.json", ["--workers", "2"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("cannot read config") == 1, done.stderr


def test_two_workers_serve_https(
    upstream: StreamingUpstream, tmp_path: Path, ca: trustme.CA
) -> None:
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    files = (str(cert), str(key))
    server = serve_tls("trio", config(tmp_path, upstream), tmp_path, files, "--workers", "2")
    try:

        def pid(_: int) -> int:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=client_context, timeout=10
            )
            try:
                conn.request("GET", "/pid")
                return int(conn.getresponse().read())
            finally:
                conn.close()

        seen: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(50):
                seen.update(pool.map(pid, range(8)))
                if len(seen) == 2:
                    break
        assert len(seen) == 2
        assert sum("listening on https://" in line for line in server.lines) == 1
    finally:
        assert server.stop() == 0
