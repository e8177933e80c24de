"""The small things every server has: ``--version``, help and defaults for every option,
``SAPG_*`` variables that mean the same for ``sapg serve`` as under ASGI, and a Docker image.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from transports import asgi, cli

from .servers import ROOT

SERVE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("SAG_", "SAPG_"))}
READY = re.compile(r"sapg: listening on http://127\.0\.0\.1:(\d+)")


def serve_parser(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = cli.build_parser(env)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = subparsers.choices["serve"]
    return found


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "transports.cli", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"sapg {importlib.metadata.version('sapg')}"


def test_every_serve_option_has_help_and_says_its_default() -> None:
    parser = serve_parser()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        name = action.option_strings[-1]
        assert action.help, f"{name} has no help"
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in action.help, f"{name}: the help does not give the default"
    text = parser.format_help()
    assert "--worker-of" not in text  # the supervisor's, hidden
    for option in ("--workers", "--threads", "--admin-port", "--admin-host"):
        assert option in text


def test_sapg_variables_are_serve_defaults_and_the_command_line_wins() -> None:
    env = {
        "SAPG_MAX_BODY_SIZE": "1234",
        "SAPG_MAX_HEADER_SIZE": "2048",
        "SAPG_READ_TIMEOUT": "7.5",
        "SAPG_MIN_BODY_RATE": "0",
        "SAPG_SERVICE_TIMEOUT": "3",
        "SAPG_LOG_LEVEL": "WARNING",
        "SAPG_LOG_FORMAT": "json",
        "SAPG_BINDINGS": "A=pkg.mod:A, B=./b.py:B",
    }
    args = cli.build_parser(env).parse_args(["serve"])
    assert (args.max_body_size, args.max_header_size) == (1234, 2048)
    assert (args.read_timeout, args.min_body_rate, args.service_timeout) == (7.5, 0.0, 3.0)
    assert (args.log_level, args.log_format) == ("warning", "json")
    assert args.binding == ["A=pkg.mod:A", "B=./b.py:B"]
    args = cli.build_parser(env).parse_args(["serve", "--max-body-size", "99"])
    assert args.max_body_size == 99
    # the ASGI factory reads the same variables the same way
    limits, timeouts = asgi._limits(env, 1234)
    assert (limits.max_header_bytes, timeouts.read, timeouts.min_body_rate) == (2048, 7.5, 0.0)
    assert asgi._service_timeout(env, 30.0) == 3.0


def test_a_bad_sapg_variable_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["SAPG_READ_TIMEOUT"] = "soon"
    try:
        assert cli.main(["serve"]) == 2
    finally:
        del os.environ["SAPG_READ_TIMEOUT"]
    assert "SAPG_READ_TIMEOUT='soon' (--read-timeout)" in capsys.readouterr().err


def _serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-m", "transports.cli", "serve", "--port", "0", *args]
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**SERVE_ENV, **env, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = READY.search(line)
        if found:
            return process, int(found.group(1))
    process.wait(10)
    raise AssertionError("".join(lines))


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.mark.network
def test_serve_reads_its_config_from_sapg_config_before_sag_api_config_json(
    tmp_path: Path,
) -> None:
    def config(name: str) -> str:
        return json.dumps({"paths": [{"method": "GET", "path": "/who", "response": {"is": name}}]})

    path = tmp_path / "file.json"
    path.write_text(config("file"))
    other = tmp_path / "other.json"
    other.write_text(config("option"))
    cases = [
        ({"SAPG_CONFIG": str(path), "SAG_API_CONFIG_JSON": config("inline")}, [], b"file"),
        ({"SAG_API_CONFIG_JSON": config("inline")}, [], b"inline"),
        ({"SAPG_CONFIG": str(path)}, ["--config", str(other)], b"option"),
    ]
    for env, args, expected in cases:
        process, port = _serve(env, *args)
        try:
            assert _get(port, "/who") == b'{"is":"' + expected + b'"}'
        finally:
            process.terminate()
            assert process.wait(20) == 0


def _docker() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    done = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    return docker if done.returncode == 0 else None


@pytest.mark.network
@pytest.mark.timeout(900)
def test_the_docker_image_builds_serves_and_is_healthy(tmp_path: Path) -> None:
    docker = _docker()
    if docker is None:
        pytest.skip("docker is not available here (no docker binary, or no daemon to talk to)")
    tag = f"sapg-test:{uuid.uuid4().hex[:8]}"
    name = f"sapg-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([docker, "build", "-t", tag, str(ROOT)], check=True, timeout=800)
    try:
        subprocess.run(
            [docker, "run", "-d", "--name", name, "-p", "127.0.0.1::8787", tag],
            check=True,
            timeout=60,
            capture_output=True,
        )
        mapped = subprocess.run(
            [docker, "port", name, "8787"], check=True, capture_output=True, text=True
        ).stdout
        port = int(mapped.strip().splitlines()[0].rsplit(":", 1)[1])
        user = subprocess.run(
            [docker, "exec", name, "id", "-u"], check=True, capture_output=True, text=True
        ).stdout
        assert user.strip() != "0"  # not root
        deadline = time.monotonic() + 90
        health = ""
        while time.monotonic() < deadline and health != "healthy":
            time.sleep(1)
            health = subprocess.run(
                [docker, "inspect", "-f", "{{.State.Health.Status}}", name],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        assert health == "healthy"
        assert b"ok" in _get(port, "/health")  # the built-in demo answers on the public port
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, check=False)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, check=False)
