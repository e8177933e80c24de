"""The admin endpoint (``sapg serve --admin-port``) on every native driver, as users run it.

- ``/metrics`` in the Prometheus text format counts requests by route pattern, method and
  status, times them per route, counts upstream failures by the code answered, and shows the
  requests in flight; with worker processes it sums the workers.
- ``/ready`` answers 200 while serving and 503 once SIGTERM started the drain (the request
  in flight still gets its answer); ``/live`` answers 200.
- The admin endpoint is on its own port: the public port answers ``/metrics`` as any
  unknown path (404 from the gateway).
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .servers import ROOT, Server, StreamingUpstream, start

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

DRIVERS = ("trio", "asyncio", "h11")
ADMIN = re.compile(r"sapg: admin on http://127\.0\.0\.1:(\d+)")

PID_SERVICE = """\
import os


def fetch(request, env, ctx):
    return str(os.getpid())
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


def config(tmp_path: Path, upstream: StreamingUpstream) -> dict[str, object]:
    (tmp_path / "pid_service.py").write_text(PID_SERVICE)
    return {
        "servers": [
            {"alias": "up", "url": upstream.url},
            {"alias": "down", "url": "http://127.0.0.1:9", "connect_timeout": 2},
        ],
        "services": [{"alias": "pid", "entrypoint": "./pid_service.py"}],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {"method": "GET", "path": "/pid", "integration": {"type": "service", "binding": "pid"}},
            {
                "method": "ANY",
                "path": "/up/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
            {
                "method": "ANY",
                "path": "/down/{.+}",
                "integration": {"type": "http_proxy", "server": "down"},
            },
        ],
    }


def admin_port(server: Server) -> int:
    found = ADMIN.search(server.log)
    assert found, server.log
    return int(found.group(1))


def request(port: int, path: str, method: str = "GET", timeout: float = 30) -> tuple[int, bytes]:
    """One request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int) -> Samples:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    finally:
        conn.close()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
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
def test_metrics_count_requests_by_route_method_and_status(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    server = start(kind, config(tmp_path, upstream), tmp_path, args=["--admin-port", "0"])
    try:
        port = admin_port(server)
        assert port != server.port
        for _ in range(3):
            assert request(server.port, "/health")[0] == 200
        for _ in range(2):
            assert request(server.port, "/nowhere")[0] == 404
        assert request(server.port, "/health", method="FROB")[0] == 404  # no route for FROB
        assert request(server.port, "/up/x")[0] == 200
        status, body = request(server.port, "/down/x")
        assert (status, json.loads(body)["code"]) == (502, "UPSTREAM_UNREACHABLE")
        # /metrics belongs to the admin port only: the public port routes it like any path
        assert request(server.port, "/metrics")[0] == 404

        total = "sapg_requests_total"
        # a request is counted once its answer is out: the last one may still be on its way
        wait_until(lambda: value(scrape(port), total, route="", method="GET", status="404") == 3)
        samples = scrape(port)
        assert value(samples, total, route="GET /health", method="GET", status="200") == 3
        assert value(samples, total, route="", method="GET", status="404") == 3  # + /metrics
        assert value(samples, total, route="", method="OTHER", status="404") == 1
        assert value(samples, total, route="ANY /up/{.+}", method="GET", status="200") == 1
        assert value(samples, total, route="ANY /down/{.+}", method="GET", status="502") == 1
        duration = "sapg_request_duration_seconds"
        assert value(samples, f"{duration}_count", route="GET /health") == 3
        assert value(samples, f"{duration}_bucket", route="GET /health", le="+Inf") == 3
        assert value(samples, f"{duration}_sum", route="GET /health") > 0
        failures = "sapg_upstream_failures_total"
        assert value(samples, failures, code="UPSTREAM_UNREACHABLE") == 1
        assert value(samples, "sapg_jwks_fetches_total") == 0
        assert value(samples, "sapg_requests_in_flight") == 0
        assert not any(name.endswith("_created") for name, _ in samples)
    finally:
        stop(server)


@pytest.mark.parametrize("kind", DRIVERS)
def test_ready_turns_503_while_draining_and_live_stays_200(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--admin-port", "0", "--grace", "20"]
    server = start(kind, config(tmp_path, upstream), tmp_path, args=args)
    try:
        port = admin_port(server)
        assert request(port, "/ready") == (200, b"ready\n")
        assert request(port, "/live") == (200, b"live\n")
        assert request(port, "/nothing")[0] == 404
        assert request(port, "/ready", method="POST")[0] == 405
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(request, server.port, "/up/slow?seconds=2")
            upstream.wait_for(1)
            wait_until(lambda: value(scrape(port), "sapg_requests_in_flight") == 1)
            server.signal(signal.SIGTERM)
            wait_until(lambda: request(port, "/ready") == (503, b"draining\n"))
            assert request(port, "/live") == (200, b"live\n")
            assert not slow.done()  # the drain is still under way
            assert slow.result(timeout=30)[0] == 200
        assert server.process.wait(timeout=30) == 0, server.log
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["trio", "h11"])
def test_metrics_are_summed_over_worker_processes(
    kind: str, upstream: StreamingUpstream, tmp_path: Path
) -> None:
    args = ["--workers", "2", "--admin-port", "0", "--grace", "20"]
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("sapg-metrics-*"))
    server = start(kind, config(tmp_path, upstream), tmp_path, args=args)
    try:
        port = admin_port(server)
        assert request(port, "/ready") == (200, b"ready\n")  # every worker listens
        pids: list[int] = []
        with ThreadPoolExecutor(8) as pool:
            while len(set(pids)) < 2 and len(pids) < 400:  # until both workers answered
                for status, body in pool.map(lambda _: request(server.port, "/pid"), range(8)):
                    assert status == 200
                    pids.append(int(body))
        assert len(set(pids)) == 2
        counted = {"route": "GET /pid", "method": "GET", "status": "200"}

        def summed() -> float:
            return value(scrape(port), "sapg_requests_total", **counted)

        wait_until(lambda: summed() == len(pids))  # each worker counts within 0.25 s
        samples = scrape(port)
        assert value(samples, "sapg_request_duration_seconds_count", route="GET /pid") == len(pids)

        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(request, server.port, "/up/slow?seconds=2")
            upstream.wait_for(1)
            wait_until(lambda: value(scrape(port), "sapg_requests_in_flight") == 1)
            server.signal(signal.SIGTERM)
            wait_until(lambda: request(port, "/ready") == (503, b"draining\n"))
            assert slow.result(timeout=30)[0] == 200
        assert server.process.wait(timeout=30) == 0, server.log
        assert set(temp.glob("sapg-metrics-*")) <= before  # the supervisor removed its own
    finally:
        stop(server)


def test_the_admin_port_cannot_be_the_public_port() -> None:
    argv = [sys.executable, "-m", "transports.cli", "serve", "--port", "8799"]
    done = subprocess.run(
        [*argv, "--admin-port", "8799"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "--admin-port must not be the public --port" in done.stderr


def test_a_counted_batch_gives_the_histogram_one_observe_per_value_gives() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from transports._metrics import BUCKETS, _observe_all

    values = [*BUCKETS, 0.0, 0.0004, 0.003, 0.07, 0.7, 7.0, 70.0] * 3  # bounds are <= buckets
    one, batch = CollectorRegistry(), CollectorRegistry()
    observed = Histogram("d", "d", ["route"], buckets=BUCKETS, registry=one)
    counted = Histogram("d", "d", ["route"], buckets=BUCKETS, registry=batch)
    for seconds in values:
        observed.labels("r").observe(seconds)
    _observe_all(counted.labels("r"), values)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]

    assert lines(batch) == lines(one)


def test_jwks_fetches_are_counted(upstream: StreamingUpstream, tmp_path: Path) -> None:
    import base64

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    gateway_config = {
        "authorizer": {
            "type": "auth0",
            "domain": "tenant.example.com",
            "client_id": "id",
            "client_secret": "secret",
            "redirect_uri": "https://app.example.com/callback",
            "scope": "openid",
            "jwks_uri": f"{upstream.url}/.well-known/jwks.json",  # answers no key set
        },
        "paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": 1}}],
    }
    token = f"{part({'alg': 'RS256', 'kid': 'k1', 'typ': 'JWT'})}.{part({'sub': 'x'})}.c2ln"
    server = start("trio", gateway_config, tmp_path, args=["--admin-port", "0"])
    try:
        port = admin_port(server)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/private", headers={"Authorization": f"Bearer {token}"})
        status = conn.getresponse().status
        conn.close()
        assert status in (401, 502, 503), status  # no usable key: refused either way
        wait_until(lambda: value(scrape(port), "sapg_jwks_fetches_total") == 1)
    finally:
        stop(server)
