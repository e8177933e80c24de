"""Record and replay: `sapg serve --record TRACE` over real HTTP, then `sapg replay TRACE`.

The recording test runs once per transport that `sapg serve --transport`
accepts (read from the CLI's own parser, so new drivers are covered as soon
as they are wired in).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sapg_core import (
    BodyReceived,
    Gateway,
    HTTPResponseReceived,
    IllegalTransition,
    ReadBody,
    RequestReceived,
    Respond,
    SendHTTP,
    TraceEnv,
    TraceHeader,
    TraceStep,
    UpstreamResponded,
    compile_config,
)
from transports._record import TraceRecorder
from transports.cli import build_parser
from transports.replay import load_trace, replay_file

from .conftest import Upstream, free_port, start_gateway, stop_gateway

pytestmark = [pytest.mark.network, pytest.mark.timeout(90)]

SECRET = "record-secret"
DECOY = "do-not-record-me"


def transports() -> list[str]:
    """The choices of `sapg serve --transport`, read from the parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    action = next(a for a in serve._actions if a.dest == "transport")
    assert action.choices, "serve --transport has no choices"
    return sorted(action.choices)


def token(claims: dict[str, object]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def config(upstream_url: str) -> dict[str, object]:
    return {
        "servers": [
            {"alias": "up", "url": upstream_url},
            {"alias": "down", "url": f"http://127.0.0.1:{free_port()}"},  # refused
        ],
        "authorizer": {"type": "jwt", "secret": "$env.JWT_SECRET", "algorithm": "HS256"},
        "cors": {
            "allow_origins": ["https://app.test"],
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization"],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": 60,
        },
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {"method": "GET", "path": "/private", "auth": True, "response": {"private": True}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
            {
                "method": "GET",
                "path": "/down/{.+}",
                "integration": {"type": "http_proxy", "server": "down"},
            },
        ],
    }


def sapg(*args: str, hash_seed: str = "12345") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAG_")}
    env["PYTHONHASHSEED"] = hash_seed  # not the recorder's: replay must not depend on it
    return subprocess.run(
        [sys.executable, "-m", "transports.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def record_session(
    tmp_path: Path, upstream: Upstream, transport: str
) -> tuple[Path, dict[str, int]]:
    """Serve a mixed session over real HTTP with --record; return the trace and request ids."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config(upstream.url)))
    trace = tmp_path / "trace.jsonl"
    gateway = start_gateway(
        ["--config", str(config_path), "--transport", transport, "--record", str(trace)],
        env={"JWT_SECRET": SECRET, "SAPG_TEST_DECOY": DECOY, "PYTHONHASHSEED": "1"},
    )
    try:
        now = int(time.time())
        bearer = {"Authorization": f"Bearer {token({'sub': 'u1', 'exp': now + 600})}"}
        expired = {"Authorization": f"Bearer {token({'sub': 'u1', 'exp': now - 600})}"}
        answers = [
            ("static", gateway.request("GET", "/health")),
            ("jwt-ok", gateway.request("GET", "/private", headers=bearer)),
            ("jwt-refused", gateway.request("GET", "/private", headers=expired)),
            (
                "proxied",
                gateway.request(
                    "POST", "/proxy/orders?x=1", body=b"{}", headers={"Origin": "https://app.test"}
                ),
            ),
            ("refused", gateway.request("GET", "/down/x")),
            ("missing", gateway.request("GET", "/nowhere")),
        ]
    finally:
        assert stop_gateway(gateway) == 0
    statuses = {name: status for name, (status, _, _) in answers}
    assert statuses == {
        "static": 200,
        "jwt-ok": 200,
        "jwt-refused": 401,
        "proxied": 200,
        "refused": 502,
        "missing": 404,
    }
    ids = {}
    order = iter(name for name, _ in answers)
    for line in load_trace(trace):
        if isinstance(line, TraceStep) and isinstance(line.event, RequestReceived):
            ids[next(order)] = line.event.request_id
    assert len(ids) == len(answers)
    return trace, ids


@pytest.mark.parametrize("transport", transports())
def test_a_recorded_session_replays_and_a_changed_outcome_diverges(
    tmp_path: Path, upstream: Upstream, transport: str
) -> None:
    trace, ids = record_session(tmp_path, upstream, transport)
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600
    text = trace.read_text()
    assert DECOY not in text  # only the env names the config reads are recorded
    lines = load_trace(trace)
    header = lines[0]
    assert isinstance(header, TraceHeader) and header.env == {"JWT_SECRET": SECRET}
    kinds = {type(line.event).__name__ for line in lines if isinstance(line, TraceStep)}
    assert {"RequestReceived", "UpstreamResponded", "ActionFailed"} <= kinds

    result = sapg("replay", str(trace))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every action matches" in result.stdout

    # The upstream "answered" 503 instead: replay must name that request.
    tampered = tmp_path / "tampered.jsonl"
    out = []
    changed_line = 0
    for number, raw in enumerate(text.splitlines(), 1):
        data = json.loads(raw)
        if data.get("event", {}).get("type") == "UpstreamResponded" and not changed_line:
            assert data["event"]["request_id"] == ids["proxied"]
            data["event"]["status"] = 503
            changed_line = number
        out.append(json.dumps(data))
    tampered.write_text("\n".join(out) + "\n")
    result = sapg("replay", str(tampered))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"line {changed_line}: request {ids['proxied']}" in result.stdout
    assert "expected:" in result.stdout and "actual:" in result.stdout
    assert "status=503" in result.stdout  # the actual RelayResponse

    divergence = replay_file(tampered)  # the same from Python
    assert divergence is not None
    assert (divergence.line, divergence.request_id) == (changed_line, ids["proxied"])


def test_the_demo_config_records_and_replays(tmp_path: Path) -> None:
    trace = tmp_path / "demo.jsonl"
    gateway = start_gateway(["--record", str(trace)])
    try:
        assert gateway.request("GET", "/proxy/health")[0] == 200  # proxied back to itself
    finally:
        assert stop_gateway(gateway) == 0
    assert replay_file(trace) is None


def test_record_refuses_to_overwrite_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "existing.jsonl"
    trace.write_text("evidence\n")
    result = sapg("serve", "--port", "0", "--record", str(trace))
    assert result.returncode == 2
    assert "cannot create trace" in result.stderr
    assert trace.read_text() == "evidence\n"


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "cannot read"),
        ("", "the trace is empty"),
        ("{not json\n", "line 1: not JSON"),
        ('{"format":"sapg-trace","version":1,"config":{"paths":[]}}\n{"gateway":0,"ev', "line 2"),
    ],
)
def test_replay_exits_2_for_an_unusable_trace(
    tmp_path: Path, content: str | None, complaint: str
) -> None:
    trace = tmp_path / "trace.jsonl"
    if content is not None:
        trace.write_text(content)
    result = sapg("replay", str(trace))
    assert result.returncode == 2, result.stdout + result.stderr
    assert complaint in result.stderr


# -- the recorder itself ------------------------------------------------------

STATIC = {"paths": [{"method": "GET", "path": "/a", "response": {"ok": True}}]}


def received(request_id: int, target: str = "/a") -> RequestReceived:
    return RequestReceived(
        request_id=request_id,
        method="GET",
        target=target,
        headers=(("host", "t"),),
        now=1_800_000_000.0 + request_id,
        entropy=os.urandom(32),
    )


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_the_trace_is_0600_whatever_the_umask(tmp_path: Path, umask_0: None) -> None:
    path = tmp_path / "t.jsonl"
    with TraceRecorder(path) as recorder:
        gateway = Gateway(compile_config(STATIC, env={}).config)
        recorder.wrap(gateway, raw_config=STATIC, env={}).handle(received(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert replay_file(path) is None


def test_recording_is_thread_safe_and_keeps_the_order_of_handle_calls(tmp_path: Path) -> None:
    path = tmp_path / "threads.jsonl"
    with TraceRecorder(path) as recorder:
        gateway = recorder.wrap(
            Gateway(compile_config(STATIC, env={}).config), raw_config=STATIC, env={}
        )
        threads = [
            threading.Thread(
                target=lambda base: [gateway.handle(received(base + i)) for i in range(50)],
                args=(1000 * n,),
            )
            for n in range(1, 9)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    lines = load_trace(path)
    assert len(lines) == 1 + 8 * 50
    assert replay_file(path) is None


def test_a_raised_illegal_transition_is_recorded_and_replayed(tmp_path: Path) -> None:
    path = tmp_path / "raised.jsonl"
    with TraceRecorder(path) as recorder:
        gateway = recorder.wrap(
            Gateway(compile_config(STATIC, env={}).config), raw_config=STATIC, env={}
        )
        with pytest.raises(IllegalTransition):
            gateway.handle(UpstreamResponded(request_id=9, status=200, headers=(), now=1.0))
        gateway.handle(received(1))
    step = load_trace(path)[1]
    assert isinstance(step, TraceStep) and step.raised is not None
    assert step.raised.type == "IllegalTransition"
    assert replay_file(path) is None


def test_each_wrapped_gateway_gets_a_header_and_its_own_number(tmp_path: Path) -> None:
    path = tmp_path / "reload.jsonl"
    other = {"paths": [{"method": "GET", "path": "/a", "response": "v2"}]}
    with TraceRecorder(path) as recorder:
        first = recorder.wrap(
            Gateway(compile_config(STATIC, env={}).config), raw_config=STATIC, env={}
        )
        first.handle(received(1))
        second = recorder.wrap(
            Gateway(compile_config(other, env={}).config), raw_config=other, env={}
        )
        second.handle(received(2))
        first.handle(received(3))
    lines = load_trace(path)
    assert [type(line).__name__ for line in lines] == [
        "TraceHeader",
        "TraceStep",
        "TraceHeader",
        "TraceStep",
        "TraceStep",
    ]
    assert [line.gateway for line in lines] == [0, 0, 1, 1, 0]
    assert replay_file(path) is None


# -- docs/replay.md ------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_pytest_example_in_docs_replay_md_runs(tmp_path: Path, upstream: Upstream) -> None:
    found = re.search(
        r"<!-- tested: tests/transports/test_record_replay.py -->\n```python\n(.*?)^```$",
        (DOCS / "replay.md").read_text(),
        re.DOTALL | re.MULTILINE,
    )
    assert found, "docs/replay.md lost its tested example"
    example = found.group(1)
    (tmp_path / "rec").mkdir()
    recorded, ids = record_session(tmp_path / "rec", upstream, transports()[0])
    project = tmp_path / "project"
    (project / "tests" / "data" / "traces").mkdir(parents=True)
    (project / "tests" / "test_incidents.py").write_text(example)
    trace = project / "tests" / "data" / "traces" / "incident-2024-11-22.jsonl"
    trace.write_bytes(recorded.read_bytes())

    def run_pytest() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = run_pytest()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout

    lines = trace.read_text().splitlines()
    for number, raw in enumerate(lines):
        data = json.loads(raw)
        if data.get("event", {}).get("type") == "UpstreamResponded":
            data["event"]["status"] = 500
            lines[number] = json.dumps(data)
            break
    trace.write_text("\n".join(lines) + "\n")
    result = run_pytest()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert f"request {ids['proxied']}" in result.stdout


def test_values_the_gateway_reads_from_its_env_are_recorded_before_the_step(
    tmp_path: Path,
) -> None:
    config = {
        "paths": [
            {
                "method": "POST",
                "path": "/otp",
                "integration": {"type": "supabase_passwordless_auth"},
            }
        ]
    }
    env = {"SUPABASE_URL": "https://sb.test", "SUPABASE_SERVICE_ROLE_KEY": "role-key"}
    path = tmp_path / "env.jsonl"
    with TraceRecorder(path) as recorder:
        gateway = recorder.wrap(
            Gateway(compile_config(config, env={}).config, env={**env, "UNRELATED": DECOY}),
            raw_config=config,
            env={},
        )
        start = RequestReceived(
            request_id=1,
            method="POST",
            target="/otp",
            headers=(("host", "gw"), ("content-type", "application/json")),
            now=1.0,
            entropy=bytes(32),
        )
        (read,) = gateway.handle(start)
        assert isinstance(read, ReadBody)
        (call,) = gateway.handle(BodyReceived(request_id=1, body=b'{"email":"a@b.test"}', now=2.0))
        assert isinstance(call, SendHTTP) and call.url.startswith("https://sb.test/auth/v1")
        answer = HTTPResponseReceived(request_id=1, status=200, headers=(), body=b"{}", now=3.0)
        (done,) = gateway.handle(answer)
        assert isinstance(done, Respond) and done.status == 200
    lines = load_trace(path)
    assert [type(line).__name__ for line in lines] == [
        "TraceHeader",
        "TraceStep",
        "TraceEnv",
        "TraceStep",
        "TraceStep",
    ]
    assert isinstance(lines[2], TraceEnv) and lines[2].values == env
    assert DECOY not in path.read_text()
    assert replay_file(path) is None

    # Without the recorded values the replayed gateway cannot call Supabase: a divergence.
    stripped = tmp_path / "stripped.jsonl"
    stripped.write_text(
        "".join(
            line + "\n" for line in path.read_text().splitlines() if '"gateway_env"' not in line
        )
    )
    divergence = replay_file(stripped)
    assert divergence is not None and divergence.line == 3


@pytest.mark.parametrize("transport", transports())
def test_recording_continues_across_a_sighup_reload(tmp_path: Path, transport: str) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(STATIC))
    trace = tmp_path / "reload.jsonl"
    gateway = start_gateway(
        ["--config", str(config_path), "--transport", transport, "--record", str(trace)]
    )
    try:
        assert gateway.request("GET", "/a")[2] == b'{"ok":true}'
        config_path.write_text(
            json.dumps({"paths": [{"method": "GET", "path": "/a", "response": "v2"}]})
        )
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while gateway.request("GET", "/a")[2] != b'"v2"':
            assert time.monotonic() < deadline, "the reload did not take effect"
            time.sleep(0.1)
    finally:
        assert stop_gateway(gateway) == 0
    lines = load_trace(trace)
    headers = [line for line in lines if isinstance(line, TraceHeader)]
    assert [header.gateway for header in headers] == [0, 1]
    assert isinstance(headers[1].config, dict) and headers[1].config["paths"][0]["response"] == "v2"
    assert replay_file(trace) is None


def test_a_failed_write_stops_recording_not_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = TraceRecorder(tmp_path / "broken.jsonl")
    gateway = recorder.wrap(
        Gateway(compile_config(STATIC, env={}).config), raw_config=STATIC, env={}
    )
    recorder._file.close()  # as if the disk went away
    with caplog.at_level("ERROR", logger="sapg"):
        for request_id in (1, 2):
            (answer,) = gateway.handle(received(request_id))
            assert isinstance(answer, Respond) and answer.status == 200
    assert len([r for r in caplog.records if "recording stopped" in r.message]) == 1


@pytest.mark.parametrize("transport", transports())
def test_a_session_with_a_service_and_a_supabase_route_replays(
    tmp_path: Path, transport: str
) -> None:
    from .test_services_calls import ENDPOINT1, HERE, write
    from .test_supabase_e2e import KEY, SESSION, FakeGoTrue

    write(tmp_path / "services" / "endpoint1.py", ENDPOINT1)
    recorded = {
        "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": [
            {
                "method": "GET",
                "path": "/service",
                "integration": {"type": "service", "binding": "endpoint1"},
            },
            {
                "method": "POST",
                "path": "/slow",
                "integration": {"type": "service_binding", "binding": "b", "function": "too_slow"},
            },
            {
                "method": "POST",
                "path": "/verify",
                "integration": {"type": "supabase_passwordless_verify"},
            },
        ],
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(recorded))
    trace = tmp_path / "services.jsonl"
    gotrue = FakeGoTrue()
    supabase_env = {"SUPABASE_URL": gotrue.url, "SUPABASE_SERVICE_ROLE_KEY": KEY}
    gateway = start_gateway(
        [
            *("--config", str(config_path), "--transport", transport, "--record", str(trace)),
            *("--binding", f"B={HERE}:Bindings", "--service-timeout", "0.25"),
        ],
        env={**supabase_env, "SAPG_TEST_DECOY": DECOY},
    )
    try:
        status, _, body = gateway.request("GET", "/service")
        assert (status, body) == (200, b"Hello from Worker 1!")
        assert gateway.request("POST", "/slow", body=b"{}")[0] == 504
        verify = json.dumps({"email": "test@example.com", "token": "123456"}).encode()
        status, _, body = gateway.request("POST", "/verify", body=verify)
        assert (status, json.loads(body)) == (200, SESSION)
    finally:
        assert stop_gateway(gateway) == 0
        gotrue.close()
    assert gotrue.problems == []

    lines = load_trace(trace)
    header = lines[0]
    assert isinstance(header, TraceHeader) and header.service_timeout == 0.25
    events = [type(line.event).__name__ for line in lines if isinstance(line, TraceStep)]
    assert events.count("ServiceReturned") == 1 and events.count("ActionFailed") == 1
    [env_line] = [line for line in lines if isinstance(line, TraceEnv)]
    assert env_line.values == supabase_env  # read by the gateway: recorded before the step
    assert DECOY not in trace.read_text()
    assert replay_file(trace) is None

    # Replayed with another time limit, the CallService actions differ.
    options = '"service_timeout":0.25'
    assert options in trace.read_text()
    changed = tmp_path / "changed.jsonl"
    changed.write_text(trace.read_text().replace(options, '"service_timeout":30.0', 1))
    divergence = replay_file(changed)
    assert divergence is not None and type(divergence.event).__name__ == "RequestReceived"
