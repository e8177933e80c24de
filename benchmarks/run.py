"""sapg benchmarks, each against a baseline measured in the same run.

    python benchmarks/run.py            # the full suite (about 6 minutes)
    python benchmarks/run.py --quick    # a smoke test (about 1.5 minutes)
    python benchmarks/run.py --profile  # also profile the sapg server under load (+40 s)

1. HTTP, with wrk: sapg's trio server on a static route vs. a bare trio + h11
   server (benchmarks/bare_trio_h11.py); servers pinned to one CPU, wrk to another.
2. HTTP, with wrk: an HS256-protected route vs. the static route, same server.
3. In-process (benchmarks/inprocess.py): core decisions per second, no sockets.
4. In-process: RouteTable.match at 10, 1,000 and 10,000 routes vs. a linear scan.
5. Drivers (benchmarks/drivers.py): the trio, asyncio, blocking and ASGI (uvicorn)
   drivers, a static and a proxied route, each vs. its own bare baseline.

Prints a table, writes the raw numbers to bench-results/results.json and draws
docs/benchmarks.png (benchmarks/chart.py; needs matplotlib, else skipped with a
note). Needs wrk and taskset (``apt-get install wrk``; taskset is in
util-linux); without taskset, or with fewer than 2 CPUs, it runs unpinned and
says so. The driver part needs uvicorn and httptools (``pip install -e .[asgi]``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench_config import CONFIG, STATIC_BODY, hs256_token

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "bench-results"
HOST = "127.0.0.1"

TARGETS = {  # what each goal must reach; see docs/benchmarks.md
    "static_vs_bare": 0.85,
    "hs256_vs_static": 0.80,
    "core_static_per_second": 100_000,
    "routing_10000_vs_10": 1.5,
    "asyncio_static_vs_bare": 0.85,  # the same as drivers.TARGETS
    "asgi_static_vs_bare": 0.75,
}
CHART = ROOT / "docs" / "benchmarks.png"

#: A wrk run whose server used less CPU than this had company on the CPUs.
CONTENDED = 0.9
#: An in-process case whose median round is this much slower than its best was disturbed.
NOISY_SPREAD = 1.15

_live: list[subprocess.Popen[bytes]] = []


# -- processes -------------------------------------------------------------------------


def _pin(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (sapg shuts down gracefully), then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with contextlib.suppress(ValueError):
        _live.remove(proc)


def _stop_all() -> None:
    for proc in list(_live):
        _stop(proc)


@contextlib.contextmanager
def server(name: str, argv: list[str], cpu: int | None) -> Iterator[tuple[int, int]]:
    """Start a server that prints ``listening on http://HOST:PORT``; yield (port, pid)."""
    log_path = OUT / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*_pin(cpu), *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    _live.append(proc)
    try:
        yield _wait_ready(proc, log_path), proc.pid
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    pattern = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
    while time.monotonic() < deadline:
        found = pattern.search(log_path.read_bytes())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace")
    raise SystemExit(f"server {proc.args} did not start:\n{tail}")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- wrk -------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s, latency percentiles (ms), totals and errors from ``wrk --latency``."""
    out: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    out["requests_per_second"] = float(rps.group(1))
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


def wrk(url: str, args: argparse.Namespace, *, seconds: float, headers: list[str]) -> str:
    cmd = [*_pin(args.client_cpu), "wrk", f"-t{args.threads}", f"-c{args.connections}"]
    cmd += [f"-d{seconds:g}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def measure(case: dict, args: argparse.Namespace) -> dict[str, float]:
    """One warm-up plus one measured wrk run against ``case``; adds server CPU per request."""
    wrk(case["url"], args, seconds=args.warmup, headers=case["headers"])
    load = os.getloadavg()[0]
    cpu_before = _cpu_seconds(case["pid"])
    text = wrk(case["url"], args, seconds=args.duration, headers=case["headers"])
    cpu = _cpu_seconds(case["pid"]) - cpu_before
    result = parse_wrk(text)
    result["server_cpu_us_per_request"] = cpu / max(result["requests"], 1) * 1e6
    result["server_cpu_busy"] = cpu / args.duration
    result["loadavg_1m_before"] = load
    if result["non_2xx"] or result["socket_errors"]:
        print(
            f"  warning: {case['name']}: {result['non_2xx']:.0f} non-2xx, "
            f"{result['socket_errors']:.0f} socket errors",
            file=sys.stderr,
        )
    return result


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_answers(cases: list[dict]) -> None:
    """Every case answers 200 with the 15-byte body; /private refuses a missing token."""
    for case in cases:
        headers = dict(h.split(": ", 1) for h in case["headers"])
        status, body = _get(case["port"], case["path"], headers)
        if (status, body) != (200, STATIC_BODY):
            raise SystemExit(f"{case['name']}: expected 200 {STATIC_BODY!r}, got {status} {body!r}")
        if case["headers"]:
            status, _ = _get(case["port"], case["path"], {})
            if status != 401:
                raise SystemExit(f"{case['name']}: expected 401 without a token, got {status}")


def http_benchmarks(args: argparse.Namespace) -> dict:
    token = hs256_token()
    bare_argv = [sys.executable, str(HERE / "bare_trio_h11.py"), "--port", "0"]
    # The access log is off (--log-level warning) except in sapg_logged, which shows its cost.
    with (
        server("bare", bare_argv, args.server_cpu) as (bare_port, bare_pid),
        server("sapg", _sapg_argv(), args.server_cpu) as (sapg_port, sapg_pid),
        server("sapg-logged", _sapg_argv(log_level="info"), args.server_cpu) as (log_port, log_pid),
    ):
        cases = [
            _case("bare_static", bare_port, bare_pid, "/health", []),
            _case("sapg_static", sapg_port, sapg_pid, "/health", []),
            _case(
                "sapg_hs256", sapg_port, sapg_pid, "/private", [f"Authorization: Bearer {token}"]
            ),
        ]
        if not args.no_access_log_case:
            cases.append(_case("sapg_logged", log_port, log_pid, "/health", []))
        check_answers(cases)
        runs: dict[str, list[dict[str, float]]] = {case["name"]: [] for case in cases}
        for round_no in range(1, args.repeats + 1):  # interleaved, so drift hits all alike
            for case in cases:
                result = measure(case, args)
                runs[case["name"]].append(result)
                print(
                    f"  round {round_no} {case['name']:<12} "
                    f"{result['requests_per_second']:>9.0f} req/s  "
                    f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                    f"server CPU {result['server_cpu_us_per_request']:.1f} us/req",
                    file=sys.stderr,
                )
    return {"runs": runs, "summary": _summarise_http(runs)}


def _case(name: str, port: int, pid: int, path: str, headers: list[str]) -> dict:
    url = f"http://{HOST}:{port}{path}"
    return {"name": name, "port": port, "pid": pid, "path": path, "url": url, "headers": headers}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _summarise_http(runs: dict[str, list[dict[str, float]]]) -> dict:
    keys = ["requests_per_second", "p50_ms", "p99_ms", "server_cpu_us_per_request"]
    keys += ["server_cpu_busy"]
    medians = {name: {key: _median(r, key) for key in keys} for name, r in runs.items()}

    def ratio(a: str, b: str, key: str = "requests_per_second", invert: bool = False) -> float:
        x, y = medians[a][key], medians[b][key]
        return y / x if invert else x / y

    def per_round(a: str, b: str) -> list[float]:
        pairs = zip(runs[a], runs[b], strict=True)
        return [x["requests_per_second"] / y["requests_per_second"] for x, y in pairs]

    cpu = "server_cpu_us_per_request"
    every = [run for r in runs.values() for run in r]
    return {
        "medians": medians,
        # a server below 90% CPU under a closed-loop load shared its CPUs with someone
        "contended_runs": sum(run["server_cpu_busy"] < CONTENDED for run in every),
        "runs": len(every),
        "static_vs_bare": ratio("sapg_static", "bare_static"),
        "static_vs_bare_per_round": per_round("sapg_static", "bare_static"),
        # the same comparison by server CPU per request (robust to a starved client)
        "static_vs_bare_cpu": ratio("sapg_static", "bare_static", cpu, invert=True),
        "hs256_vs_static": ratio("sapg_hs256", "sapg_static"),
        "hs256_vs_static_per_round": per_round("sapg_hs256", "sapg_static"),
        "hs256_vs_static_cpu": ratio("sapg_hs256", "sapg_static", cpu, invert=True),
        **(
            {
                "logged_vs_static": ratio("sapg_logged", "sapg_static"),
                "logged_vs_static_cpu": ratio("sapg_logged", "sapg_static", cpu, invert=True),
            }
            if "sapg_logged" in runs
            else {}
        ),
    }


# -- in-process ------------------------------------------------------------------------


def inprocess_benchmarks(args: argparse.Namespace) -> dict:
    cmd = [*_pin(args.server_cpu), sys.executable, str(HERE / "inprocess.py")]
    if args.quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"inprocess.py failed:\n{done.stderr}")
    result: dict = json.loads(done.stdout)
    routing = result["routing"]
    result["summary"] = {
        f"{kind}_{algo}_10000_vs_10": routing[kind]["10000"][algo]["us"]
        / routing[kind]["10"][algo]["us"]
        for kind in ("hit", "miss")
        for algo in ("tree", "naive")
    }
    return result


# -- drivers ---------------------------------------------------------------------------


def driver_benchmarks(args: argparse.Namespace) -> dict:
    """benchmarks/drivers.py's cases, pinned like the rest; its table goes to stderr."""
    import drivers

    result = drivers.run_driver_benchmarks(
        duration=args.driver_duration,
        warmup=args.driver_warmup,
        repeats=args.driver_repeats,
        server_cpu=args.server_cpu,
        client_cpu=args.client_cpu,
    )
    result["args"] = {
        "duration_s": args.driver_duration,
        "warmup_s": args.driver_warmup,
        "repeats": args.driver_repeats,
    }
    return result


# -- profile ---------------------------------------------------------------------------


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_server(args: argparse.Namespace) -> dict[str, str]:
    """Profile the sapg server under wrk load; the top functions go to bench-results/.

    With py-spy (``pip install py-spy``): sampling, attached to a normal server.
    Without it: the server runs under cProfile (slower, so its shares are rougher).
    """
    spy = _py_spy()
    token = hs256_token()
    reports = {}
    for name, path, headers in [
        ("static", "/health", []),
        ("hs256", "/private", [f"Authorization: Bearer {token}"]),
    ]:
        text_path = OUT / f"profile-{name}.txt"
        if spy is not None:
            text = _profile_with_py_spy(spy, name, path, headers, args)
        else:
            text = _profile_with_cprofile(name, path, headers, args)
        text_path.write_text(text)
        reports[name] = str(text_path.relative_to(ROOT))
        print(text, file=sys.stderr)
    return reports


def _sapg_argv(*prefix: str, log_level: str = "warning") -> list[str]:
    """``sapg serve`` on the benchmark config, trio transport, default limits and timeouts."""
    config_path = OUT / "bench-config.json"
    config_path.write_text(json.dumps(CONFIG, indent=2))
    argv = [sys.executable, *prefix, "-m", "transports.cli", "serve", "--config", str(config_path)]
    return [*argv, "--transport", "trio", "--port", "0", "--grace", "1", "--log-level", log_level]


def _profile_with_py_spy(
    spy: str, name: str, path: str, headers: list[str], args: argparse.Namespace
) -> str:
    raw = OUT / f"profile-{name}.raw"
    with server(f"sapg-profile-{name}", _sapg_argv(), args.server_cpu) as (port, pid):
        url = f"http://{HOST}:{port}{path}"
        wrk(url, args, seconds=args.warmup, headers=headers)
        cmd = [*_pin(args.client_cpu), "wrk", f"-t{args.threads}", f"-c{args.connections}"]
        cmd += [f"-d{args.duration + 2:g}s"] + [x for h in headers for x in ("-H", h)] + [url]
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _live.append(load)  # stopped on exit like the servers
        try:
            time.sleep(1)
            spy_cmd = [spy, "record", "-p", str(pid), "-d", f"{args.duration:g}", "-r", "250"]
            subprocess.run(
                [*_pin(args.client_cpu), *spy_cmd, "--format", "raw", "-o", str(raw)],
                capture_output=True,
                timeout=args.duration + 60,
                check=True,
            )
        finally:
            load.wait(args.duration + 30)
            _live.remove(load)
    from spy_report import summarise

    return f"py-spy, sapg server, GET {path}\n" + summarise(raw.read_text(), top=30)


def _profile_with_cprofile(
    name: str, path: str, headers: list[str], args: argparse.Namespace
) -> str:
    import io
    import pstats

    prof = OUT / f"profile-{name}.prof"
    argv = _sapg_argv("-m", "cProfile", "-o", str(prof))
    with server(f"sapg-profile-{name}", argv, args.server_cpu) as (port, _):
        wrk(f"http://{HOST}:{port}{path}", args, seconds=args.duration, headers=headers)
    out = io.StringIO()
    stats = pstats.Stats(str(prof), stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    return f"cProfile, sapg server, GET {path}\n" + out.getvalue()


# -- report ----------------------------------------------------------------------------


def machine() -> dict:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("trio", "h11", "attrs", "sapg"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        "wrk": (wrk_version.stdout or wrk_version.stderr or "not found").splitlines()[0],
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")),
        "source_sha256": _source_digest(),
    }


def _git(*argv: str) -> str:
    try:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def _source_digest() -> str:
    """Which code was measured, even in an uncommitted tree: sapg_core/ and transports/."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("sapg_core/*.py"), *ROOT.glob("transports/*.py")]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


_HEADER = f"{'measure':<52} {'value':>16} {'baseline':>12} {'ratio':>6} {'target':>7}"


def _row(
    name: str,
    value: str,
    base: str = "",
    ratio: float | None = None,
    goal: str = "",
    check: float | None = None,
) -> str:
    """One table line; ``check`` (default: ``ratio``) is compared with ``goal``."""
    ratio_text = "" if ratio is None else f"{ratio:.2f}"
    check = ratio if check is None else check
    verdict = ""
    if goal and check is not None:
        limit = float(goal.split()[1].rstrip("k")) * (1000 if goal.endswith("k") else 1)
        ok = check >= limit if goal.startswith(">=") else check <= limit
        verdict = "  PASS" if ok else "  MISS"
    return f"{name:<52} {value:>16} {base:>12} {ratio_text:>6} {goal:>7}{verdict}"


def _http_rows(summary: dict) -> list[str]:
    m = summary["medians"]
    rows = []
    for name in m:
        r = m[name]
        rows.append(_row(f"HTTP {name}: req/s", f"{r['requests_per_second']:.0f}"))
        rows.append(_row("  p50 / p99 latency (ms)", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}"))
        cpu = f"{r['server_cpu_us_per_request']:.0f} ({r['server_cpu_busy']:.0%} busy)"
        rows.append(_row("  server CPU per request (us)", cpu))
    static, bare, hs = (
        m[k]["requests_per_second"] for k in ("sapg_static", "bare_static", "sapg_hs256")
    )
    rows.append(
        _row(
            "sapg static vs bare trio+h11, req/s",
            f"{static:.0f}",
            f"{bare:.0f}",
            summary["static_vs_bare"],
            f">= {TARGETS['static_vs_bare']}",
        )
    )
    rows.append(_row("  same, by server CPU per request", "", "", summary["static_vs_bare_cpu"]))
    rows.append(
        _row(
            "sapg HS256 route vs static route, req/s",
            f"{hs:.0f}",
            f"{static:.0f}",
            summary["hs256_vs_static"],
            f">= {TARGETS['hs256_vs_static']}",
        )
    )
    rows.append(_row("  same, by server CPU per request", "", "", summary["hs256_vs_static_cpu"]))
    if "logged_vs_static" in summary:
        logged = m["sapg_logged"]["requests_per_second"]
        rows.append(
            _row(
                "sapg static with access log vs without",
                f"{logged:.0f}",
                f"{static:.0f}",
                summary["logged_vs_static"],
            )
        )
        rows.append(
            _row("  same, by server CPU per request", "", "", summary["logged_vs_static_cpu"])
        )
    if summary["contended_runs"]:
        rows.append(
            f"WARNING: in {summary['contended_runs']} of {summary['runs']} wrk runs the server "
            f"was below {CONTENDED:.0%} CPU: something else competed for the CPUs. The req/s "
            "ratios are unreliable; the CPU-per-request ratios hold up better. Rerun that "
            "part: python benchmarks/run.py --only http --merge"
        )
    return rows


def _core_rows(result: dict) -> list[str]:
    core = result["core"]
    static = core["static"]
    goal = f">= {TARGETS['core_static_per_second'] // 1000}k"
    rows = [
        _row(
            "core decisions/s, static (event + handle)",
            f"{static['per_second']:.0f}",
            goal=goal,
            check=static["per_second"],
        )
    ]
    for name, label in [
        ("static_browser_headers", "static, 13 browser headers"),
        ("hs256_cached", "HS256 route, cached token"),
        ("hs256_uncached", "HS256 route, a new token each"),
        ("proxy_forward_step", "proxied route, to ForwardUpstream"),
        ("event_only", "building RequestReceived alone"),
    ]:
        c = core[name]
        rows.append(
            _row(f"  {label} (per s, us each)", f"{c['per_second']:.0f}", f"{c['us']:.1f} us")
        )
    return rows


def _breakdown_rows(result: dict) -> list[str]:
    b = result["breakdown"]
    glue, bare = b["glue_sapg_server_connection"]["us"], b["glue_bare_h11"]["us"]
    rows = [
        _row(
            "HTTP glue, parse + respond, no sockets (us)", f"{glue:.1f}", f"{bare:.1f}", glue / bare
        )
    ]
    for name, label in [
        ("trio_move_on_after", "trio.move_on_after enter+exit (us)"),
        ("driver_http_date", "Date header value, http_date (us)"),
        ("driver_event_build", "driver's event build (us)"),
    ]:
        rows.append(_row(f"  {label}", f"{b[name]['us']:.1f}"))
    return rows


def _routing_rows(result: dict) -> list[str]:
    routing = result["routing"]
    rows = []
    for kind in ("hit", "miss"):
        for algo in ("tree", "naive"):
            t10, t1k, t10k = (routing[kind][n][algo]["us"] for n in ("10", "1000", "10000"))
            tree = algo == "tree"
            value = f"{t10:.1f}/{t1k:.1f}/{t10k:.1f}" if tree else f"{t10:.0f}/{t1k:.0f}/{t10k:.0f}"
            name = "RouteTable.match" if tree else "linear scan (reference)"
            goal = f"<= {TARGETS['routing_10000_vs_10']}" if tree else ""
            rows.append(_row(f"{name}, {kind}: 10/1k/10k routes (us)", value, "", t10k / t10, goal))
    return rows


def _driver_rows(result: dict) -> list[str]:
    summary = result["summary"]
    medians = summary["medians"]
    rows = []
    for driver, label in [
        ("trio", "trio driver vs bare trio+h11"),
        ("asyncio", "asyncio driver vs bare asyncio+h11"),
        ("h11", "blocking driver vs bare blocking h11"),
        ("asgi", "ASGI under uvicorn vs bare ASGI, same uvicorn"),
    ]:
        static, bare = medians[f"{driver}_static"], medians[f"{driver}_bare"]
        target = TARGETS.get(f"{driver}_static_vs_bare")
        rows.append(
            _row(
                f"{label}, req/s",
                f"{static['requests_per_second']:.0f}",
                f"{bare['requests_per_second']:.0f}",
                summary[f"{driver}_static_vs_bare"],
                f">= {target}" if target else "",
            )
        )
        rows.append(
            _row(
                "  same, by server CPU per request", "", "", summary[f"{driver}_static_vs_bare_cpu"]
            )
        )
    direct = medians["upstream_direct"]
    rows.append(
        _row(
            "upstream called directly: req/s, p50/p99 (ms)",
            f"{direct['requests_per_second']:.0f}",
            f"{direct['p50_ms']:.2f}/{direct['p99_ms']:.2f}",
        )
    )
    for driver in ("trio", "asyncio", "h11", "asgi"):
        proxied = medians[f"{driver}_proxied"]
        added = (
            f"+{summary[f'{driver}_proxied_added_p50_ms']:.1f}/"
            f"+{summary[f'{driver}_proxied_added_p99_ms']:.1f}"
        )
        rows.append(
            _row(
                f"{driver} proxied vs direct: req/s, added p50/p99",
                f"{proxied['requests_per_second']:.0f}",
                added,
                summary[f"{driver}_proxied_vs_direct"],
            )
        )
    if summary.get("contended_runs"):
        rows.append(
            f"WARNING: in {summary['contended_runs']} of {summary['runs']} driver runs the server "
            f"was below {CONTENDED:.0%} CPU ({', '.join(summary['contended'][:4])}"
            f"{', ...' if summary['contended_runs'] > 4 else ''}): something else competed for "
            "the CPUs. Rerun that part: python benchmarks/run.py --only drivers --merge"
        )
    return rows


def _noisy(result: dict, path: str = "") -> list[str]:
    """Names of measurements whose median round was well above their best one."""
    found = []
    for key, value in result.items():
        if not isinstance(value, dict):
            continue
        name = f"{path}/{key}" if path else key
        if "spread" in value:
            found += [name] if value["spread"] > NOISY_SPREAD else []
        else:
            found += _noisy(value, name)
    return found


def print_table(results: dict) -> None:
    lines = [_HEADER, "-" * (len(_HEADER) + 6)]
    if "http" in results:
        lines += _http_rows(results["http"]["summary"])
    if "inprocess" in results:
        inprocess = results["inprocess"]
        lines += _core_rows(inprocess) + _breakdown_rows(inprocess) + _routing_rows(inprocess)
        cal = inprocess["calibration_empty_call"]["us"] * 1000
        lines.append(f"(calibration: an empty Python function call takes {cal:.0f} ns here)")
        noisy = _noisy(inprocess)
        if noisy:
            lines.append(
                f"WARNING: {len(noisy)} in-process cases had median/best above {NOISY_SPREAD} "
                f"({', '.join(noisy[:4])}{', ...' if len(noisy) > 4 else ''}): the machine was "
                "busy; the best-round numbers shown are the more trustworthy."
            )
    if "drivers" in results:
        lines += _driver_rows(results["drivers"])
    print("\n".join(lines))


# -- main ------------------------------------------------------------------------------


PARTS = ("inprocess", "http", "drivers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per case (median)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-inprocess", action="store_true")
    parser.add_argument("--skip-drivers", action="store_true")
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable); the others are skipped",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the parts of the existing results.json that this run does not measure",
    )
    parser.add_argument(
        "--driver-duration", type=float, default=5.0, help="s per driver wrk run (whole seconds)"
    )
    parser.add_argument(
        "--driver-warmup", type=float, default=1.0, help="s of warm-up per driver run (whole)"
    )
    parser.add_argument("--driver-repeats", type=int, default=2, help="driver runs per case")
    parser.add_argument("--no-chart", action="store_true", help=f"do not draw {CHART.name}")
    parser.add_argument(
        "--no-access-log-case", action="store_true", help="skip sapg_logged (saves 36 s)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile the server")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.repeats = 3.0, 1.0, 1
        args.driver_duration, args.driver_warmup, args.driver_repeats = 2.0, 1.0, 1
    if args.only:
        for part in PARTS:
            if part not in args.only:
                setattr(args, f"skip_{part}", True)
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    args.server_cpu, args.client_cpu = (0, 1) if pinned else (None, None)
    return args


def main() -> int:
    args = parse_args()
    if not (args.skip_http and args.skip_drivers) and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (nox -s bench does it)")
    OUT.mkdir(exist_ok=True)
    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    results: dict = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "machine": machine(),
            "loadavg_start": os.getloadavg(),
            "pinning": {"server_cpu": args.server_cpu, "client_cpu": args.client_cpu},
            "wrk_args": {
                "threads": args.threads,
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "repeats": args.repeats,
            },
        },
        "targets": TARGETS,
    }
    if not args.skip_inprocess:
        print("in-process benchmarks (core decisions, routing)...", file=sys.stderr)
        results["inprocess"] = inprocess_benchmarks(args)
    if not args.skip_http:
        print("HTTP benchmarks with wrk...", file=sys.stderr)
        results["http"] = http_benchmarks(args)
    if not args.skip_drivers:
        print("driver benchmarks (trio, asyncio, blocking, ASGI) with wrk...", file=sys.stderr)
        results["drivers"] = driver_benchmarks(args)
    if args.profile:
        print("profiling the sapg server under load...", file=sys.stderr)
        results["profiles"] = profile_server(args)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["elapsed_s"] = round(time.time() - started, 1)
    meta = results["meta"]  # this run's, also when merged into an earlier run's results
    if args.merge:
        results = _merge(OUT / "results.json", results)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    print(
        f"\nraw results: {(OUT / 'results.json').relative_to(ROOT)}; load average "
        f"{meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f}; "
        f"{meta['elapsed_s']:.0f} s{' (merged)' if args.merge else ''}"
    )
    if not args.no_chart:
        _chart(results)
    return 0


def _merge(path: Path, new: dict) -> dict:
    """The old results with this run's parts replacing theirs; each part keeps its own meta."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return new
    merged = {**old, **{key: value for key, value in new.items() if key != "meta"}}
    parts = [part for part in (*PARTS, "profiles") if part in new]
    reruns = old.get("meta", {}).get("reruns", [])
    merged["meta"] = {**old.get("meta", {}), "reruns": [*reruns, {**new["meta"], "parts": parts}]}
    return merged


def _chart(results: dict) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            f"note: matplotlib is not installed, so {CHART.relative_to(ROOT)} was not drawn "
            "(pip install matplotlib; nox -s bench installs it)",
            file=sys.stderr,
        )
        return
    from chart import draw

    if draw(results, CHART):
        print(f"chart: {CHART.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
