"""The `sapg` command line, run as users run it (a subprocess)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import start_gateway, stop_gateway

COMPAT = Path(__file__).resolve().parents[1] / "data" / "compat"
COMPAT_CONFIGS = sorted(p for p in COMPAT.glob("*.json") if "schema" not in p.name)


def sapg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SAG_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "transports.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def write(tmp_path: Path, config: object, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


@pytest.mark.parametrize("path", COMPAT_CONFIGS, ids=lambda p: p.name)
def test_check_accepts_every_config_of_the_original(path: Path) -> None:
    result = sapg("check", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_check_names_the_json_pointer_of_each_error(tmp_path: Path) -> None:
    config = {
        "paths": [{"method": "GET", "path": "/a"}, {"method": "FETCH", "path": "b"}],
        "servers": [{"alias": "x", "url": "not a uri"}],
    }
    result = sapg("check", write(tmp_path, config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("/paths/1/method: 'FETCH' is not one of") for line in lines)
    assert any(line.startswith("/paths/1/path: ") for line in lines)
    assert any(line.startswith("/servers/0/url: ") for line in lines)


def test_check_reports_fail_closed_references(tmp_path: Path) -> None:
    config = {
        "paths": [
            {
                "method": "GET",
                "path": "/p",
                "auth": True,
                "integration": {"type": "http_proxy", "server": "nope"},
            }
        ]
    }
    result = sapg("check", write(tmp_path, config))
    assert result.returncode == 1
    assert "/paths/0/integration/server" in result.stdout
    assert "/paths/0/auth" in result.stdout


@pytest.mark.parametrize("text", ['{"paths": [}', "", "[1, 2"])
def test_unparsable_json_is_exit_2_with_one_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    result = sapg("check", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "line" in result.stderr and path in result.stderr


def test_unreadable_file_is_exit_2_with_one_line(tmp_path: Path) -> None:
    for args in (
        ["check", str(tmp_path / "nope.json")],
        ["serve", "--config", str(tmp_path / "nope.json"), "--port", "0"],
    ):
        result = sapg(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert "nope.json" in result.stderr


def test_a_config_that_is_not_an_object_is_exit_2(tmp_path: Path) -> None:
    result = sapg("check", write(tmp_path, [1, 2]))
    assert result.returncode == 2


def test_routes_prints_the_table_and_explains_the_winner(tmp_path: Path) -> None:
    config = {
        "paths": [
            {"method": "GET", "path": "/items/{id}", "response": {}},
            {"method": "GET", "path": "/items/{.+}", "response": {}},
            {"method": "ANY", "path": "/items/special", "response": {}},
        ]
    }
    path = write(tmp_path, config)
    table = sapg("routes", path)
    assert table.returncode == 0
    assert table.stdout.splitlines() == [
        "#0 GET /items/{id} (static response)",
        "#1 GET /items/{.+} (static response)",
        "#2 ANY /items/special (static response)",
    ]
    explained = sapg("routes", path, "GET", "/items/42")
    assert explained.returncode == 0
    assert explained.stdout.startswith("winner: #1 GET /items/{.+}")
    assert "loses: #0 GET /items/{id}" in explained.stdout
    assert "rule 1" in explained.stdout
    missing = sapg("routes", path, "GET", "/other")
    assert "no route matches" in missing.stdout


def test_strict_mode_refuses_to_start_on_an_invalid_config(tmp_path: Path) -> None:
    path = write(tmp_path, {"paths": [{"method": "INVALID", "path": "/x"}]})
    result = sapg("serve", "--config", path, "--port", "0", "--strict")
    assert result.returncode == 1
    assert "/paths/0/method" in result.stderr
    result = sapg("serve", "--config", path, "--port", "0", env={"SAG_STRICT_CONFIG": "TRUE"})
    assert result.returncode == 1


@pytest.mark.network
def test_invalid_config_serves_in_compatibility_mode_with_a_warning(tmp_path: Path) -> None:
    config = {
        "paths": [
            {"method": "INVALID", "path": "/x", "response": {}},
            {"method": "GET", "path": "/ok", "response": {"ok": 1}},
        ]
    }
    gw = start_gateway(["--config", write(tmp_path, config)])
    try:
        assert any("config error" in line and "/paths/0/method" in line for line in gw.stderr_lines)
        assert gw.request("GET", "/ok")[0] == 200
        assert gw.request("INVALID", "/x")[0] == 200  # used as-is, as the original
    finally:
        assert stop_gateway(gw) == 0


@pytest.mark.network
def test_inline_config_from_the_environment() -> None:
    inline = json.dumps({"paths": [{"method": "GET", "path": "/inline", "response": {"ok": True}}]})
    gw = start_gateway([], env={"SAG_API_CONFIG_JSON": inline})
    try:
        assert gw.request("GET", "/inline")[2] == b'{"ok":true}'
    finally:
        stop_gateway(gw)


@pytest.mark.network
def test_no_config_serves_the_demo_with_a_proxied_route() -> None:
    gw = start_gateway([], env={"SAG_API_CONFIG_JSON": "   "})  # blank: ignored
    try:
        ready = [line for line in gw.stderr_lines if "listening" in line]
        assert ready == [f"sapg: listening on http://127.0.0.1:{gw.port} (transport=trio)\n"]
        assert gw.request("GET", "/health")[2] == b'{"status":"ok"}'
        status, _, body = gw.request("GET", "/proxy/health")
        assert (status, body) == (200, b'{"status":"ok"}')
    finally:
        assert stop_gateway(gw) == 0


@pytest.mark.network
def test_placeholders_resolve_from_the_process_environment(tmp_path: Path) -> None:
    config = {
        "paths": [
            {
                "method": "GET",
                "path": "/env",
                "response": {"runtime": "$env.RUNTIME", "s": "$secrets.TOKEN"},
            }
        ]
    }
    gw = start_gateway(
        ["--config", write(tmp_path, config)], env={"RUNTIME": "staging", "TOKEN": "t0k"}
    )
    try:
        assert gw.request("GET", "/env")[2] == b'{"runtime":"staging","s":"t0k"}'
    finally:
        stop_gateway(gw)


def test_check_warns_about_bindings_that_were_not_provided(tmp_path: Path) -> None:
    config = {
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": [
            {
                "method": "GET",
                "path": "/s",
                "integration": {"type": "service_binding", "binding": "b", "function": "run"},
            }
        ],
    }
    result = sapg("check", write(tmp_path, config))
    assert result.returncode == 0
    assert (
        "warning: /serviceBindings/0/binding: binding 'B' was not provided "
        "(sapg serve --binding B=pkg.module:object); its routes answer 500"
    ) in result.stdout
    assert "(1 routes, 1 warning(s))" in result.stdout

    guard = tmp_path / "guard.py"
    guard.write_text("class Guard:\n    def run(self, request, env, ctx):\n        return True\n")
    result = sapg("check", write(tmp_path, config), "--binding", f"B={guard}:Guard")
    assert result.returncode == 0
    assert "warning:" not in result.stdout and "(1 routes, 0 warning(s))" in result.stdout
    result = sapg("check", write(tmp_path, config), "--binding", f"B={guard}:Nope")
    assert result.returncode == 0
    assert "warning: /serviceBindings/0/binding: cannot load" in result.stdout


def test_routes_normalises_the_path_as_serve_does(tmp_path: Path) -> None:
    path = write(tmp_path, {"paths": [{"method": "GET", "path": "/a/b", "response": {}}]})
    assert sapg("routes", path, "GET", "/a/x/../b?q=1").stdout.startswith("winner: #0 GET /a/b")


MISSPELT = {
    "servers": [{"alias": "up", "url": "http://user:hunter2@127.0.0.1:9/base"}],
    "paths": [
        {
            "method": "GET",
            "path": "/a",
            "auht": True,
            "integration": {"type": "http_proxy", "server": "up"},
        }
    ],
}


def test_check_warns_of_an_unknown_route_key_and_refuses_it_under_strict(tmp_path: Path) -> None:
    path = write(tmp_path, MISSPELT)
    relaxed = sapg("check", path)
    assert relaxed.returncode == 0
    assert "warning: /paths/0/auht" in relaxed.stdout and "'auth'" in relaxed.stdout
    for strict in (
        sapg("check", "--strict", path),
        sapg("check", path, env={"SAG_STRICT_CONFIG": "true"}),
    ):
        assert strict.returncode == 1, strict.stdout
        assert "/paths/0/auht" in strict.stdout and "warning:" not in strict.stdout


def test_serve_strict_refuses_an_unknown_route_key(tmp_path: Path) -> None:
    result = sapg("serve", "--config", write(tmp_path, MISSPELT), "--port", "0", "--strict")
    assert result.returncode == 1
    assert "/paths/0/auht" in result.stderr


def test_routes_masks_the_password_of_a_server_url(tmp_path: Path) -> None:
    result = sapg("routes", write(tmp_path, MISSPELT))
    assert result.returncode == 0
    assert "hunter2" not in result.stdout + result.stderr
    assert "http://user:***@127.0.0.1:9/base" in result.stdout


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.network
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("transport", ["trio", "asyncio", "h11"])
def test_every_transport_serves_on_ipv6_loopback(tmp_path: Path, transport: str) -> None:
    config = {"paths": [{"method": "GET", "path": "/v6", "response": {"family": 6}}]}
    gw = start_gateway(
        ["--transport", transport, "--host", "::1", "--config", write(tmp_path, config)]
    )
    try:
        assert gw.host == "[::1]"
        conn = http.client.HTTPConnection("::1", gw.port, timeout=10)
        conn.request("GET", "/v6")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b'{"family":6}')
        conn.close()
    finally:
        assert stop_gateway(gw) == 0


@pytest.mark.network
@pytest.mark.parametrize("transport", ["trio", "asyncio", "h11"])
def test_a_port_in_use_is_one_line_and_exit_1(transport: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = sapg("serve", "--transport", transport, "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sapg: error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in lines[0]


@pytest.mark.parametrize("port", ["70000", "-1", "65536", "http"])
def test_a_port_outside_0_to_65535_is_a_usage_error(port: str) -> None:
    result = sapg("serve", "--port", port)
    assert result.returncode == 2
    assert "argument --port" in result.stderr
