"""Services, bindings and hooks over real HTTP, through `sapg serve` (and the ASGI adapter).

One gateway per transport that `sapg serve --transport` accepts (read from the CLI's own
parser), serving a config with a file-path service, bindings given with `--binding` (a file
path and an import path), hooks in front of a binding and of an `http_proxy` route, a
service that raises and services over their time limit.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Gateway, Upstream, start_gateway, stop_gateway
from .servers import clean_exit, start
from .test_record_replay import transports
from .test_services_calls import ENDPOINT1, HERE, write

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

GUARD_KEY = "k-e2e"
SERVICE_TIMEOUT = 0.5

HOOKS = """
import asyncio
import time

from transports import Response


class Hooks:
    def __init__(self):
        self.runs = 0
        self.loops = []

    async def loop(self, request, env, ctx):
        await asyncio.sleep(0)
        self.loops.append(asyncio.get_running_loop())  # kept alive: ids are not reused
        return {"calls": len(self.loops), "one_loop": all(x is self.loops[0] for x in self.loops)}

    def guard(self, request, env, ctx):
        if request.headers.get("x-api-key") != env["GUARD_KEY"]:
            return Response.json({"blocked": True}, status=403)
        return True

    def too_many(self, request, env, ctx):
        return Response.json({"error": "slow down"}, status=429)

    def allow(self, request, env, ctx):
        return True

    def run(self, request, env, ctx):
        self.runs += 1
        return {"orderId": 42}

    def count(self, request, env, ctx):
        return {"runs": self.runs}

    def boom(self, request, env, ctx):
        raise RuntimeError("database down")

    async def slow(self, request, env, ctx):
        await asyncio.sleep(5)
        return "late"

    def slow_sync(self, request, env, ctx):
        time.sleep(1.5)
        return "late"
"""

ERROR_500 = {"message": "Internal server error"}
TIMEOUT_504 = {"error": "Service timed out", "code": "SERVICE_TIMEOUT"}


def binding_route(method: str, path: str, function: str, **extra: object) -> dict[str, object]:
    integration = {"type": "service_binding", "binding": "hooks", "function": function}
    return {"method": method, "path": path, "integration": integration, **extra}


def config(upstream_url: str) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream_url}],
        "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
        "serviceBindings": [
            {"alias": "hooks", "binding": "HOOKS"},
            {"alias": "streams", "binding": "STREAMS"},
        ],
        "paths": [
            {
                "method": "GET",
                "path": "/service",
                "integration": {"type": "service", "binding": "endpoint1"},
            },
            {  # UPSTREAM §13.6 case 72
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
                "pre_process": {"binding": "hooks", "function": "guard"},
            },
            # cases 73 and 74
            binding_route(
                "POST",
                "/orders/limited",
                "run",
                pre_process={"binding": "hooks", "function": "too_many"},
            ),
            binding_route(
                "POST", "/orders", "run", pre_process={"binding": "hooks", "function": "allow"}
            ),
            binding_route("GET", "/runs", "count"),
            binding_route("GET", "/loop", "loop"),
            binding_route("GET", "/boom", "boom"),
            binding_route("GET", "/slow", "slow"),
            binding_route("GET", "/slow-sync", "slow_sync"),
            {
                "method": "POST",
                "path": "/roundtrip",
                "integration": {
                    "type": "service_binding",
                    "binding": "streams",
                    "function": "roundtrip",
                },
            },
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Path:
    """A directory with the config, its services and a bindings file."""
    root = tmp_path_factory.mktemp("site")
    write(root / "services" / "endpoint1.py", ENDPOINT1)
    write(root / "hooks.py", HOOKS)
    (root / "api-config.json").write_text(json.dumps(config(upstream.url)))
    return root


def binding_args(site: Path) -> list[str]:
    return [
        "--binding",
        f"HOOKS={site / 'hooks.py'}:Hooks",
        "--binding",
        f"STREAMS={HERE}:AsyncioStreams",
    ]


@pytest.fixture(scope="module", params=transports())
def gateway(request: pytest.FixtureRequest, site: Path) -> Iterator[Gateway]:
    args = ["--config", str(site / "api-config.json"), "--transport", request.param]
    args += [*binding_args(site), "--service-timeout", str(SERVICE_TIMEOUT)]
    server = start_gateway(args, env={"GUARD_KEY": GUARD_KEY})
    yield server
    assert stop_gateway(server) == 0


def test_a_file_path_service_answers_case_76(gateway: Gateway) -> None:
    status, headers, body = gateway.request("GET", "/service")
    assert (status, body) == (200, b"Hello from Worker 1!")
    assert headers["content-type"] == "text/plain"
    assert headers["x-powered-by"] == "sapg"
    assert not any("sapg: warning" in line for line in gateway.stderr_lines)


def test_a_hook_in_front_of_a_proxy_case_72(gateway: Gateway, upstream: Upstream) -> None:
    before = len(upstream.requests)
    status, _, body = gateway.request("POST", "/proxy/items", body=b"hello")
    assert (status, json.loads(body)) == (403, {"blocked": True})
    assert len(upstream.requests) == before  # the upstream was not called

    key = {"x-api-key": GUARD_KEY}
    status, headers, body = gateway.request("POST", "/proxy/items", headers=key, body=b"hello")
    assert status == 200 and headers["x-upstream"] == "yes"
    assert json.loads(body) == {"method": "POST", "path": "/items", "length": 5}
    sent = upstream.requests[-1]
    assert sent.body == b"hello" and sent.headers["content-length"] == "5"

    status, _, _ = gateway.request("GET", "/proxy/items?q=1", headers=key)
    assert status == 200
    sent = upstream.requests[-1]
    assert (sent.method, sent.path, sent.body) == ("GET", "/items?q=1", b"")
    assert "content-length" not in sent.headers and "transfer-encoding" not in sent.headers


def test_a_chunked_body_read_for_a_hook_goes_upstream_with_a_length(
    gateway: Gateway, upstream: Upstream
) -> None:
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        conn.request(
            "PUT",
            "/proxy/chunked",
            body=iter([b"abc", b"defg"]),
            headers={"x-api-key": GUARD_KEY, "transfer-encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["length"] == 7
    finally:
        conn.close()
    sent = upstream.requests[-1]
    assert (sent.method, sent.body, sent.headers["content-length"]) == ("PUT", b"abcdefg", "7")
    assert "transfer-encoding" not in sent.headers


def test_hooks_in_front_of_a_binding_cases_73_and_74(gateway: Gateway) -> None:
    runs = json.loads(gateway.request("GET", "/runs")[2])["data"]["runs"]
    status, _, body = gateway.request("POST", "/orders/limited", body=b"{}")
    assert (status, json.loads(body)) == (429, {"error": "slow down"})
    assert json.loads(gateway.request("GET", "/runs")[2])["data"] == {"runs": runs}  # not run

    status, headers, body = gateway.request("POST", "/orders", body=b"{}")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "status": "success",
        "message": "Operation completed successfully.",
        "data": {"orderId": 42},
    }
    assert json.loads(gateway.request("GET", "/runs")[2])["data"] == {"runs": runs + 1}


def test_an_asyncio_native_binding(gateway: Gateway) -> None:
    for _ in range(2):
        status, _, body = gateway.request("POST", "/roundtrip", body=b"ping")
        assert status == 200
        assert json.loads(body)["data"] == {"echo": "PING", "library": "asyncio"}
    for _ in range(3):  # one asyncio loop serves call after call (under trio: trio-asyncio's)
        status, _, body = gateway.request("GET", "/loop")
        assert status == 200 and json.loads(body)["data"]["one_loop"] is True


def test_a_service_that_raises_is_a_500_and_the_server_keeps_serving(gateway: Gateway) -> None:
    for _ in range(2):
        status, _, body = gateway.request("GET", "/boom")
        assert (status, json.loads(body)) == (500, ERROR_500)
        assert b"database down" not in body
        assert gateway.request("GET", "/service")[0] == 200
    deadline = time.monotonic() + 5
    while not any("RuntimeError: database down" in line for line in gateway.stderr_lines):
        assert time.monotonic() < deadline, "the traceback is not in the log"
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["/slow", "/slow-sync"])
def test_a_service_over_its_time_limit_is_a_504(gateway: Gateway, path: str) -> None:
    started = time.monotonic()
    status, _, body = gateway.request("GET", path)
    assert (status, json.loads(body)) == (504, TIMEOUT_504)
    assert time.monotonic() - started < SERVICE_TIMEOUT + 0.9
    assert gateway.request("GET", "/service")[0] == 200


# --- start-up ---------------------------------------------------------------------------------


def test_start_up_warns_about_code_that_cannot_be_called_and_strict_refuses(site: Path) -> None:
    args = ["--config", str(site / "api-config.json"), "--binding", f"HOOKS={HERE}:Nope"]
    server = start_gateway(args)
    try:
        warnings = [line for line in server.stderr_lines if line.startswith("sapg: warning:")]
        assert any(
            "/serviceBindings/0/binding: cannot load" in line and "has no attribute 'Nope'" in line
            for line in warnings
        ), warnings
        assert any("binding 'STREAMS' was not provided" in line for line in warnings), warnings
        status, _, body = server.request("GET", "/runs")
        assert (status, json.loads(body)) == (500, ERROR_500)
    finally:
        assert stop_gateway(server) == 0

    strict = subprocess.run(
        [sys.executable, "-m", "transports.cli", "serve", "--port", "0", "--strict", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert strict.returncode == 1
    assert "sapg: warning:" in strict.stderr and "(strict mode)" in strict.stderr


@pytest.mark.parametrize("transport", transports())
def test_sighup_loads_the_services_of_the_new_config(tmp_path: Path, transport: str) -> None:
    write(tmp_path / "services" / "endpoint1.py", ENDPOINT1)
    write(tmp_path / "hooks.py", HOOKS)
    first = {
        "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
        "paths": [
            {
                "method": "GET",
                "path": "/service",
                "integration": {"type": "service", "binding": "endpoint1"},
            }
        ],
    }
    config_path = tmp_path / "api-config.json"
    config_path.write_text(json.dumps(first))
    args = ["--config", str(config_path), "--transport", transport]
    server = start_gateway([*args, "--binding", f"HOOKS={tmp_path / 'hooks.py'}:Hooks"])
    try:
        assert any("binding 'HOOKS' was provided but" in line for line in server.stderr_lines)
        assert server.request("GET", "/runs")[0] == 404
        second = {
            **first,
            "serviceBindings": [{"alias": "hooks", "binding": "HOOKS"}],
            "paths": [*first["paths"], binding_route("GET", "/runs", "count")],
        }
        config_path.write_text(json.dumps(second))
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while server.request("GET", "/runs")[0] != 200:
            assert time.monotonic() < deadline, "the reload did not take effect"
            time.sleep(0.1)
        assert json.loads(server.request("GET", "/runs")[2])["data"] == {"runs": 0}
        assert server.request("GET", "/service")[2] == b"Hello from Worker 1!"
    finally:
        assert stop_gateway(server) == 0


@pytest.mark.parametrize("option", [["--binding", "no-equals"], ["--service-timeout", "0"]])
def test_malformed_service_options_are_usage_errors(option: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transports.cli", "serve", "--port", "0", *option],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "usage:" in result.stderr


# --- the ASGI adapter, configured from the environment -------------------------------------------


def test_the_asgi_adapter_loads_bindings_from_the_environment(
    tmp_path: Path, upstream: Upstream
) -> None:
    write(tmp_path / "services" / "endpoint1.py", ENDPOINT1)
    write(tmp_path / "hooks.py", HOOKS)
    bindings = f"HOOKS={tmp_path / 'hooks.py'}:Hooks, STREAMS={HERE}:AsyncioStreams"
    server = start(
        "asgi",
        config(upstream.url),
        tmp_path,
        env={
            "SAPG_BINDINGS": bindings,
            "SAPG_SERVICE_TIMEOUT": str(SERVICE_TIMEOUT),
            "GUARD_KEY": GUARD_KEY,
        },
    )
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn.request(method, path, body=body, headers={"x-api-key": GUARD_KEY})
        response = conn.getresponse()
        return response.status, response.read()

    try:
        assert call("GET", "/service") == (200, b"Hello from Worker 1!")
        status, body = call("POST", "/orders", b"{}")
        assert (status, json.loads(body)["data"]) == (200, {"orderId": 42})
        status, body = call("POST", "/proxy/items", b"hello")
        assert (status, json.loads(body)["length"]) == (200, 5)
        assert upstream.requests[-1].headers["content-length"] == "5"
        status, body = call("POST", "/roundtrip", b"ping")
        assert (status, json.loads(body)["data"]["echo"]) == (200, "PING")
        status, body = call("GET", "/slow")
        assert (status, json.loads(body)) == (504, TIMEOUT_504)
        assert "sapg: warning" not in server.log
    finally:
        conn.close()
        assert server.stop() == clean_exit(server)
