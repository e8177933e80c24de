"""The machinery the benchmarks share: servers, nginx, wrk, CPU accounting, alternated rounds.

Theory of operation: every server under test runs in its own process, pinned
with ``taskset`` to the server CPU (0); wrk (and the nginx upstream of the
proxied cases) run pinned to the load CPU (1). A *case* is one URL on one
server process. :func:`measure_rounds` runs a list of cases round by round,
each round a warm-up then a measured wrk run per case, in the order A B C
then C B A (so drift over the run hits every case alike, and no case always
follows the same neighbour). For each measured run it records wrk's numbers
and the server's CPU time over the run (``utime + stime`` from
``/proc/PID/stat``), divided by the requests wrk counted: CPU per request,
which holds up on a busy machine better than requests per second.

Processes are started in their own session and stopped (SIGTERM, then
SIGKILL) when their ``with`` block ends or the interpreter exits.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "bench-results"
HOST = "127.0.0.1"
BODY = b'{"status":"ok"}'  # every baseline and the nginx upstream answer these 15 bytes

#: A static or bare case whose server used less CPU than this had company on its CPU.
CONTENDED = 0.9
_READY = re.compile(
    rb"listening on http://127\.0\.0\.1:(\d+)|Uvicorn running on http://127\.0\.0\.1:(\d+)"
)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_live: list[subprocess.Popen[bytes]] = []


def pin(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def cpus() -> tuple[int | None, int | None]:
    """(server CPU, load CPU): (0, 1) when taskset exists and there are 2+ CPUs."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return None, None
    return 0, 1


def which_nginx() -> str | None:
    """nginx from PATH, else where Debian puts it (``/usr/sbin`` is not on every PATH)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return found


# -- processes -------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (sapg and uvicorn shut down gracefully, nginx quits fast), SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with contextlib.suppress(ValueError):
        _live.remove(proc)


def stop_all() -> None:
    for proc in list(_live):
        _stop(proc)


atexit.register(stop_all)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(
    name: str,
    argv: list[str],
    cpu: int | None,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[tuple[int, int]]:
    """Start a server; yield (port, pid) once it accepts connections; stop it after.

    Without ``port`` the server must log ``listening on http://127.0.0.1:PORT``
    (sapg, the bare servers) or uvicorn's ``Uvicorn running on ...``; with
    ``port`` (nginx) readiness is a successful connect.
    """
    OUT.mkdir(exist_ok=True)
    log_path = OUT / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*pin(cpu), *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
    _live.append(proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            bound = port if port is not None and _accepts(port) else None
            if port is None:
                found = _READY.search(log_path.read_bytes())
                bound = int(found.group(1) or found.group(2)) if found else None
            if bound is not None:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{name} did not start ({argv[0]}):\n{tail}")
            time.sleep(0.05)
        yield bound, proc.pid
    finally:
        _stop(proc)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its living children (a supervisor's workers)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    found = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert found is not None, url
    conn = http.client.HTTPConnection(found[1], int(found[2]), timeout=10)
    try:
        conn.request("GET", found[3], headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- nginx -------------------------------------------------------------------------------

_NGINX_COMMON = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
{body}
}}
"""

_NGINX_UPSTREAM = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{{"status":"ok"}}';
        }}
    }}"""

_NGINX_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"""


@contextlib.contextmanager
def nginx(name: str, cpu: int | None, *, upstream: int | None = None) -> Iterator[tuple[int, int]]:
    """One nginx process (no master, one worker): the fixed-body upstream, or a keep-alive
    reverse proxy to ``upstream`` when given. Yields (port, pid)."""
    binary = which_nginx()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx; nox -s bench does it)")
    directory = OUT / name
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    body = (
        _NGINX_UPSTREAM.format(port=port)
        if upstream is None
        else _NGINX_PROXY.format(port=port, upstream=upstream)
    )
    conf = directory / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(dir=directory, body=body))
    argv = [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    with server(name, argv, cpu, port=port) as ready:
        yield ready


# -- wrk ---------------------------------------------------------------------------------


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s, latency percentiles (ms), totals and errors from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    out = {"requests_per_second": float(rps.group(1))}
    for pct, value, unit in re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    total = re.search(r"(\d+) requests in", text)
    out["requests"] = float(total.group(1)) if total else 0.0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = float(bad.group(1)) if bad else 0.0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["socket_errors"] = float(sum(map(int, errors.groups()))) if errors else 0.0
    return out


@dataclass
class Load:
    """How wrk is run: ``-t threads -c connections``, pinned to ``cpu``."""

    connections: int
    threads: int
    cpu: int | None
    duration: float
    warmup: float


def wrk(url: str, load: Load, seconds: float, headers: list[str]) -> dict[str, float]:
    cmd = [*pin(load.cpu), "wrk", f"-t{load.threads}", f"-c{load.connections}"]
    cmd += [f"-d{max(1, round(seconds))}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


@dataclass
class Case:
    """One URL on one server process; ``kind`` is static, bare, proxied or direct."""

    name: str
    url: str
    pid: int
    kind: str
    headers: list[str] = field(default_factory=list)
    tree: bool = False  # its CPU is the process's and its children's (worker processes)


def measure(case: Case, load: Load) -> dict[str, float]:
    """A warm-up, then a measured wrk run with the server's CPU time around it."""
    wrk(case.url, load, load.warmup, case.headers)
    loadavg = os.getloadavg()[0]
    cpu_of = tree_cpu_seconds if case.tree else cpu_seconds
    before = cpu_of(case.pid)
    started = time.monotonic()
    result = wrk(case.url, load, load.duration, case.headers)
    wall = time.monotonic() - started
    cpu = cpu_of(case.pid) - before
    result["server_cpu_us_per_request"] = cpu / max(result["requests"], 1) * 1e6
    result["server_cpu_busy"] = cpu / max(load.duration, 1e-9)
    result["wall_s"] = wall
    result["loadavg_1m_before"] = loadavg
    return result


def contended(case: Case, result: dict[str, float]) -> bool:
    """A static/bare case whose server was below 90% CPU shared its CPU with someone."""
    return case.kind in ("static", "bare") and result["server_cpu_busy"] < CONTENDED


def measure_rounds(
    cases: list[Case], load: Load, repeats: int, label: str
) -> dict[str, list[dict[str, float]]]:
    """Every case ``repeats`` times, alternated: A B C, then C B A, ..."""
    runs: dict[str, list[dict[str, float]]] = {case.name: [] for case in cases}
    for round_no in range(1, repeats + 1):
        order = cases if round_no % 2 else list(reversed(cases))
        for case in order:
            result = measure(case, load)
            runs[case.name].append(result)
            warn = ""
            if result["non_2xx"] or result["socket_errors"]:
                warn += f"  [{result['non_2xx']:.0f} non-2xx, {result['socket_errors']:.0f} errors]"
            if contended(case, result):
                warn += "  [CONTENDED: server below 90% CPU]"
            print(
                f"  {label} round {round_no} {case.name:<22} "
                f"{result['requests_per_second']:>8.0f} req/s  p50 {result['p50_ms']:7.3f} ms  "
                f"p99 {result['p99_ms']:7.2f} ms  CPU {result['server_cpu_us_per_request']:7.1f}"
                f" us/req ({result['server_cpu_busy']:.0%}){warn}",
                file=sys.stderr,
            )
    return runs


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    keys = ("requests_per_second", "p50_ms", "p99_ms", "server_cpu_us_per_request")
    keys += ("server_cpu_busy", "non_2xx", "socket_errors")
    return {
        name: {key: statistics.median(run.get(key, 0.0) for run in results) for key in keys}
        for name, results in runs.items()
    }


def check(case: Case, expect: int = 200) -> None:
    """The case answers ``expect`` (200: with the fixed 15-byte body)."""
    headers = dict(h.split(": ", 1) for h in case.headers)
    status, body = get(case.url, headers)
    if status != expect or (expect == 200 and body != BODY):
        raise RuntimeError(f"{case.name}: expected {expect} {BODY!r}, got {status} {body!r}")


def sapg_help() -> str:
    """``sapg serve --help``: which options this checkout's CLI has (``--http``, ...)."""
    done = subprocess.run(
        [sys.executable, "-m", "transports.cli", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return done.stdout


def sapg_argv(config: Path, transport: str | None, *extra: str) -> list[str]:
    """``sapg serve`` with its defaults (access log on), on a free port."""
    argv = [sys.executable, "-m", "transports.cli", "serve", "--config", str(config)]
    if transport is not None:
        argv += ["--transport", transport]
    return [*argv, "--port", "0", "--grace", "1", *extra]


def uvicorn_argv(app: str, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", "0"]
    return [*argv, "--http", "httptools", "--no-access-log", "--log-level", "info", *extra]


def namespace_to_load(args: argparse.Namespace, connections: int) -> Load:
    return Load(
        connections=connections,
        threads=1,
        cpu=args.client_cpu,
        duration=args.duration,
        warmup=args.warmup,
    )


def jsonable(value: Any) -> Any:
    """Dataclasses and paths out of a result tree, for json.dumps."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
