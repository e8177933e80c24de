"""Shutdown, reload and concurrency, on every transport, as users run them (subprocesses).

- SIGTERM with 50 slow requests in flight: all 50 are answered, then the process exits cleanly.
- SIGHUP re-reads the config file: new requests get the new config, requests in
  flight finish on the old one, and a broken config is refused (logged) while
  the old one keeps serving.
- 200 concurrent keep-alive clients are all answered; the blocking driver
  answers 503 JSON when its workers are all busy with requests instead of
  queueing (idle keep-alive connections hold no worker).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .servers import KINDS, Client, Server, StreamingUpstream, clean_exit, start

pytestmark = [pytest.mark.network, pytest.mark.timeout(90)]

DRIVERS = ("trio", "asyncio", "h11")


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def proxy_config(upstream: StreamingUpstream, version: int = 1) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream.url}],
        "paths": [
            {"method": "GET", "path": "/version", "response": {"version": version}},
            {
                "method": "ANY",
                "path": f"/v{version}/{{.+}}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


def get(server: Server, path: str, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_answers_all_50_in_flight_requests_then_exits(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--grace", "20", "--log-level", "warning"]
    args += ["--threads", "80"] if kind == "h11" else []  # a thread per connection
    server = start(kind, proxy_config(upstream), tmp_path, args=args)
    try:
        idle = Client(server.connect())
        assert idle.get("/version")[0] == 200  # an idle keep-alive connection, open
        with ThreadPoolExecutor(50) as pool:
            answers = [pool.submit(get, server, "/v1/slow?seconds=1.5") for _ in range(50)]
            upstream.wait_for(50)  # every request is in flight at the upstream
            server.signal(signal.SIGTERM)
            results = [answer.result(timeout=30) for answer in answers]
        assert all(status == 200 for status, _ in results), results
        assert all(json.loads(body)["target"] == "/slow?seconds=1.5" for _, body in results)
        assert idle.is_closed_within(5)
        assert server.process.wait(timeout=20) == clean_exit(server), server.log
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.mark.parametrize("kind", DRIVERS)
def test_sighup_reloads_the_config_and_refuses_a_broken_one(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start(kind, proxy_config(upstream, 1), tmp_path)
    config_path: Path = server.config_path  # type: ignore[attr-defined]
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(get, server, "/v1/slow?seconds=1.5")
            upstream.wait_for(1)
            config_path.write_text(json.dumps(proxy_config(upstream, 2)))
            server.signal(signal.SIGHUP)
            _wait_until(lambda: get(server, "/version")[1] == b'{"version":2}')
            assert get(server, "/v1/x")[0] == 404  # the old route is gone for new requests
            assert get(server, "/v2/x")[0] == 200
            status, body = in_flight.result(timeout=10)  # finished on the old gateway
        assert (status, json.loads(body)["target"]) == (200, "/slow?seconds=1.5")

        config_path.write_text('{"paths": [{"method": "GET", "path": "no-slash"}]}')
        server.signal(signal.SIGHUP)
        _wait_until(lambda: "reload refused" in server.log)
        assert "/paths/0/path" in server.log  # says why
        config_path.write_text("{ not json")
        server.signal(signal.SIGHUP)
        _wait_until(lambda: server.log.count("reload refused") == 2)
        assert get(server, "/version") == (200, b'{"version":2}')
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


def padded_config(upstream: StreamingUpstream, version: int, routes: int) -> dict[str, object]:
    """``proxy_config`` with ``routes`` more static routes: a config that takes a while
    (about 0.15 s per 3000 routes) to compile."""
    config = proxy_config(upstream, version)
    extra = [{"method": "GET", "path": f"/r{i}/{{id}}", "response": {}} for i in range(routes)]
    config["paths"] = [*config["paths"], *extra]  # type: ignore[misc]
    return config


@pytest.mark.parametrize("kind", DRIVERS)
def test_two_quick_reloads_end_on_the_newer_config(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    """v1 (slow to compile) then v2 (fast), SIGHUP after each: v2 serves, in every trial.

    Two reloads running at once finished in the order their compiles did, so the
    older, slower file could win.
    """
    server = start(kind, proxy_config(upstream, 0), tmp_path)
    config_path: Path = server.config_path  # type: ignore[attr-defined]
    try:
        for trial in range(3):
            older, newer = 10 * trial + 1, 10 * trial + 2
            config_path.write_text(json.dumps(padded_config(upstream, older, 6000)))
            server.signal(signal.SIGHUP)
            time.sleep(0.05)  # the first reload is compiling
            config_path.write_text(json.dumps(proxy_config(upstream, newer)))
            server.signal(signal.SIGHUP)
            expected = (200, json.dumps({"version": newer}, separators=(",", ":")).encode())
            _wait_until(lambda expected=expected: get(server, "/version") == expected)
            time.sleep(1.5)  # every reload asked for is done (each takes well under that)
            assert get(server, "/version") == expected, (trial, server.log)
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.mark.parametrize("kind", DRIVERS)
def test_a_storm_of_30_sighups_keeps_serving_and_ends_on_the_last_config(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    """30 SIGHUPs, each after a new file: requests are answered all along (each within
    a few seconds: a loop that compiles the configs itself, or 30 at once, stalls for
    longer), and the last file serves."""
    server = start(kind, proxy_config(upstream, 0), tmp_path)
    config_path: Path = server.config_path  # type: ignore[attr-defined]
    stop = threading.Event()
    answered: list[int] = []

    def keep_asking() -> None:
        while not stop.is_set():
            status, _ = get(server, "/version", timeout=5)  # a stalled loop raises here
            answered.append(status)

    try:
        with ThreadPoolExecutor(1) as pool:
            asking = pool.submit(keep_asking)
            for version in range(1, 31):
                config_path.write_text(json.dumps(padded_config(upstream, version, 3000)))
                server.signal(signal.SIGHUP)
                time.sleep(0.01)
            _wait_until(lambda: get(server, "/version") == (200, b'{"version":30}'), 30)
            stop.set()
            asking.result(timeout=30)
        assert answered and set(answered) == {200}
        time.sleep(1.0)
        assert get(server, "/version") == (200, b'{"version":30}')
        reloads = server.log.count("config reloaded")
        assert 1 <= reloads < 15, server.log  # coalesced: not one compile per SIGHUP
        assert get(server, "/r2999/x")[0] == 200
        assert server.stop() == 0
    finally:
        stop.set()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.mark.parametrize("kind", DRIVERS)
def test_a_request_during_a_slow_reload_is_answered_by_the_old_config(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    """The compile runs off the serving loop: a request sent while a big config compiles
    is answered at once, by the config that serves until the new one is ready."""
    server = start(kind, proxy_config(upstream, 0), tmp_path)
    config_path: Path = server.config_path  # type: ignore[attr-defined]
    try:
        config_path.write_text(json.dumps(padded_config(upstream, 1, 40000)))
        server.signal(signal.SIGHUP)
        time.sleep(0.2)  # the compile (seconds) has started
        assert get(server, "/version") == (200, b'{"version":0}')
        assert "config reloaded" not in server.log
        _wait_until(lambda: get(server, "/version") == (200, b'{"version":1}'), 60)
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["trio", "asyncio", "asgi"])
def test_200_concurrent_keep_alive_clients_are_all_answered(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    clients = 200
    server = start(kind, proxy_config(upstream), tmp_path, args=["--log-level", "warning"])
    everyone_connected = threading.Barrier(clients, timeout=30)

    def one_client(index: int) -> list[int]:
        client = Client(server.connect(timeout=30))
        try:
            statuses = [client.get("/version")[0]]
            everyone_connected.wait()  # 200 connections open at once
            statuses.append(client.get(f"/v1/echo?client={index}")[0])
            statuses.append(client.get("/version")[0])  # the same connection, kept alive
            return statuses
        finally:
            client.close()

    try:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one_client, range(clients), timeout=60))
        assert results == [[200, 200, 200]] * clients
    finally:
        assert server.stop() == clean_exit(server)


def test_blocking_driver_answers_503_when_its_workers_are_busy(
    upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start("h11", proxy_config(upstream), tmp_path, args=["--threads", "2"])
    try:
        idle = [Client(server.connect()) for _ in range(3)]
        for client in idle:  # idle keep-alive connections hold no worker
            assert client.get("/version")[0] == 200
        with ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(get, server, "/v1/slow?seconds=2") for _ in range(2)]
            upstream.wait_for(2)  # both workers are busy with a request
            refused = Client(server.connect())
            started = time.monotonic()
            status, headers, body = refused.get("/version")
            assert time.monotonic() - started < 1.5  # answered at once, not queued
            assert status == 503
            assert json.loads(body) == {"error": "Server busy", "code": "SERVER_BUSY"}
            assert headers["connection"] == "close"
            assert refused.is_closed_within(5)
            assert [answer.result(timeout=10)[0] for answer in slow] == [200, 200]
        # The workers are free again: new and kept-alive connections are served.
        _wait_until(lambda: get(server, "/version")[0] == 200)
        assert [client.get("/version")[0] for client in idle] == [200, 200, 200]
        assert "server busy" in server.log
    finally:
        assert server.stop() == 0


def test_blocking_driver_with_one_worker_serves_requests_one_after_another(
    upstream: StreamingUpstream, tmp_path: Path
) -> None:
    # Each head arrives while the worker may still be finishing the previous request
    # (its log line, its bookkeeping): it waits a moment for the worker, no 503.
    server = start("h11", proxy_config(upstream), tmp_path, args=["--threads", "1"])
    try:
        clients = [Client(server.connect()) for _ in range(10)]
        for _ in range(3):
            assert [client.get("/version")[0] for client in clients] == [200] * 10
        assert "server busy" not in server.log
    finally:
        assert server.stop() == 0


def test_the_asgi_app_serves_from_several_uvicorn_workers(
    upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start("asgi", proxy_config(upstream), tmp_path, args=["--workers", "2"])
    try:
        _wait_until(lambda: server.log.count("Application startup complete") == 2, timeout=30)
        for index in range(20):  # a new connection each: the workers share the socket
            status, body = get(server, f"/v1/echo?n={index}")
            assert status == 200
            assert json.loads(body)["target"] == f"/echo?n={index}"
        _wait_until(lambda: server.log.count("sapg: INFO access GET /v1/echo 200") == 20)
    finally:
        server.stop()
