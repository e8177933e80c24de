"""Driver benchmarks: each transport against its own bare baseline, measured in the same run.

    python benchmarks/drivers.py            # about 4 minutes
    python benchmarks/drivers.py --quick    # a smoke test (about 1 minute)

With wrk, for a static route and a proxied route:

- trio driver vs. a bare trio + h11 server (``bare_trio_h11.py``);
- asyncio driver vs. a bare asyncio + h11 server (``bare_asyncio_h11.py``; target >= 0.85x);
- blocking (h11) driver vs. a bare blocking h11 server (``bare_blocking_h11.py``);
- the ASGI adapter under uvicorn (httptools) vs. a bare ASGI app under the same
  uvicorn (``bare_asgi.py``; target >= 0.75x);
- the proxied route through each driver vs. calling the upstream directly (the
  added p50/p99). The upstream is the bare ASGI app under uvicorn.

Servers are pinned to one CPU and wrk (and the upstream) to another with
taskset; cases are interleaved round by round so that drift hits all alike.
``run_driver_benchmarks()`` returns the numbers; ``__main__`` prints a table and
writes ``bench-results/drivers.json``. Needs wrk (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "bench-results"
HOST = "127.0.0.1"
BODY = b'{"status":"ok"}'
TARGETS = {"asyncio_static_vs_bare": 0.85, "asgi_static_vs_bare": 0.75}
DRIVERS = ("trio", "asyncio", "h11", "asgi")
_READY = re.compile(
    rb"listening on http://127\.0\.0\.1:(\d+)|Uvicorn running on http://127\.0\.0\.1:(\d+)"
)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _pin(cpu: int | None) -> list[str]:
    return [] if cpu is None or shutil.which("taskset") is None else ["taskset", "-c", str(cpu)]


@contextlib.contextmanager
def _server(
    name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None
) -> Iterator[tuple[int, int]]:
    """Start a server that logs its listening address; yield (port, pid); SIGTERM it after."""
    OUT.mkdir(exist_ok=True)
    log_path = OUT / f"drivers-{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*_pin(cpu), *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            found = _READY.search(log_path.read_bytes())
            if found:
                yield int(found.group(1) or found.group(2)), proc.pid
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{name} did not start:\n{tail}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _uvicorn(app: str, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", "0"]
    return [*argv, "--http", "httptools", "--no-access-log", "--log-level", "info", *extra]


def _sapg(transport: str, config: Path) -> list[str]:
    argv = [sys.executable, "-m", "transports.cli", "serve", "--transport", transport]
    argv += ["--config", str(config), "--port", "0", "--grace", "1", "--log-level", "warning"]
    return [*argv, "--workers", "128"]


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms) and error counts from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    out = {"requests_per_second": float(rps.group(1))}
    for pct, value, unit in re.findall(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    total = re.search(r"(\d+) requests in", text)
    out["requests"] = float(total.group(1)) if total else 0.0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["non_2xx"] = float(bad.group(1)) if bad else 0.0
    out["socket_errors"] = float(sum(map(int, errors.groups()))) if errors else 0.0
    return out


def _wrk(url: str, seconds: float, opts: argparse.Namespace) -> dict[str, float]:
    cmd = [*_pin(opts.client_cpu), "wrk", f"-t{opts.threads}", f"-c{opts.connections}"]
    cmd += [f"-d{seconds:g}s", "--latency", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check(url: str) -> None:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if (response.status, body) != (200, BODY):
        raise RuntimeError(f"{url}: expected 200 {BODY!r}, got {response.status} {body!r}")


def run_driver_benchmarks(
    *,
    duration: float = 5.0,
    warmup: float = 1.0,
    repeats: int = 2,
    connections: int = 50,
    threads: int = 2,
    server_cpu: int | None = 0,
    client_cpu: int | None = 1,
) -> dict[str, Any]:
    """Measure every case; return the raw runs, the medians and the ratios."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    if (os.cpu_count() or 1) < 2:
        server_cpu = client_cpu = None
    opts = argparse.Namespace(connections=connections, threads=threads, client_cpu=client_cpu)
    with contextlib.ExitStack() as stack:
        up_port, _ = stack.enter_context(
            _server("upstream", _uvicorn("bare_asgi:app", "--app-dir", str(HERE)), client_cpu)
        )
        config = OUT / "drivers-config.json"
        config.write_text(json.dumps(_config(f"http://{HOST}:{up_port}")))
        urls = {"upstream_direct": f"http://{HOST}:{up_port}/x"}
        pids = {"upstream_direct": 0}
        bare = {
            "trio": [sys.executable, str(HERE / "bare_trio_h11.py"), "--port", "0"],
            "asyncio": [sys.executable, str(HERE / "bare_asyncio_h11.py"), "--port", "0"],
            "h11": [sys.executable, str(HERE / "bare_blocking_h11.py"), "--port", "0"],
            "asgi": _uvicorn("bare_asgi:app", "--app-dir", str(HERE)),
        }
        for driver in DRIVERS:
            port, pid = stack.enter_context(_server(f"bare-{driver}", bare[driver], server_cpu))
            urls[f"{driver}_bare"] = f"http://{HOST}:{port}/health"
            pids[f"{driver}_bare"] = pid
            if driver == "asgi":
                argv = _uvicorn("transports.asgi:create_app", "--factory")
                env = {"SAPG_CONFIG": str(config), "SAPG_LOG_LEVEL": "warning"}
                port, pid = stack.enter_context(_server("sapg-asgi", argv, server_cpu, env))
            else:
                port, pid = stack.enter_context(
                    _server(f"sapg-{driver}", _sapg(driver, config), server_cpu)
                )
            urls[f"{driver}_static"] = f"http://{HOST}:{port}/health"
            urls[f"{driver}_proxied"] = f"http://{HOST}:{port}/proxy/x"
            pids[f"{driver}_static"] = pids[f"{driver}_proxied"] = pid
        for url in urls.values():
            _check(url)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        for round_no in range(1, repeats + 1):
            for name, url in urls.items():
                _wrk(url, warmup, opts)
                load = os.getloadavg()[0]
                cpu_before = _cpu_seconds(pids[name]) if pids[name] else 0.0
                result = _wrk(url, duration, opts)
                cpu = (_cpu_seconds(pids[name]) - cpu_before) if pids[name] else 0.0
                result["server_cpu_us_per_request"] = cpu / max(result["requests"], 1) * 1e6
                result["server_cpu_busy"] = cpu / duration
                result["loadavg_1m_before"] = load
                runs[name].append(result)
                print(
                    f"  round {round_no} {name:<16} {result['requests_per_second']:>8.0f} req/s"
                    f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
                    f"  server CPU {result['server_cpu_us_per_request']:6.1f} us/req"
                    f" ({result['server_cpu_busy']:.0%} busy)",
                    file=sys.stderr,
                )
                if result["non_2xx"] or result["socket_errors"]:
                    print(
                        f"  warning: {name}: {result['non_2xx']:.0f} non-2xx, "
                        f"{result['socket_errors']:.0f} socket errors",
                        file=sys.stderr,
                    )
                if _contended(name, result):
                    print(
                        f"  warning: {name}: server only {result['server_cpu_busy']:.0%} busy: "
                        "something else competed for its CPU",
                        file=sys.stderr,
                    )
    return {"runs": runs, "summary": summarise(runs), "targets": TARGETS}


def _config(upstream: str) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream}],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


#: A static or bare case whose server used less CPU than this had company on its CPU.
#: (Proxied cases wait on the upstream, and the direct case has no server of ours.)
CONTENDED = 0.9


def _contended(name: str, result: dict[str, float]) -> bool:
    measured = name.endswith(("_static", "_bare"))
    return measured and result.get("server_cpu_busy", 1.0) < CONTENDED


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    keys = ("requests_per_second", "p50_ms", "p99_ms", "server_cpu_us_per_request")
    keys += ("non_2xx", "socket_errors", "server_cpu_busy")
    medians = {
        name: {key: statistics.median(run.get(key, 0.0) for run in results) for key in keys}
        for name, results in runs.items()
    }
    direct = medians["upstream_direct"]
    contended = sorted(
        f"{name} round {i}"
        for name, results in runs.items()
        for i, run in enumerate(results, 1)
        if _contended(name, run)
    )
    summary: dict[str, Any] = {
        "medians": medians,
        "contended_runs": len(contended),
        "contended": contended,
        "runs": sum(len(results) for results in runs.values()),
    }
    for driver in DRIVERS:
        static, bare = medians[f"{driver}_static"], medians[f"{driver}_bare"]
        proxied = medians[f"{driver}_proxied"]
        summary[f"{driver}_static_vs_bare"] = (
            static["requests_per_second"] / bare["requests_per_second"]
        )
        summary[f"{driver}_static_vs_bare_per_round"] = [
            s["requests_per_second"] / b["requests_per_second"]
            for s, b in zip(runs[f"{driver}_static"], runs[f"{driver}_bare"], strict=True)
        ]
        # The same comparison by server CPU per request: robust to a busy machine.
        summary[f"{driver}_static_vs_bare_cpu"] = (
            bare["server_cpu_us_per_request"] / static["server_cpu_us_per_request"]
        )
        summary[f"{driver}_proxied_cpu_us_per_request"] = proxied["server_cpu_us_per_request"]
        summary[f"{driver}_proxied_added_p50_ms"] = proxied["p50_ms"] - direct["p50_ms"]
        summary[f"{driver}_proxied_added_p99_ms"] = proxied["p99_ms"] - direct["p99_ms"]
        summary[f"{driver}_proxied_vs_direct"] = (
            proxied["requests_per_second"] / direct["requests_per_second"]
        )
    return summary


def table(result: dict[str, Any]) -> str:
    summary = result["summary"]
    medians = summary["medians"]
    lines = [
        f"{'case':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}",
        *(
            f"{name:<18}{m['requests_per_second']:>10.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
            f"{m['server_cpu_us_per_request']:>12.1f}"
            for name, m in medians.items()
        ),
        "",
        f"{'driver':<10}{'static/bare':>12}{'(by CPU)':>10}{'target':>8}{'proxied/direct':>16}"
        f"{'+p50 ms':>9}{'+p99 ms':>9}",
    ]
    for driver in DRIVERS:
        target = TARGETS.get(f"{driver}_static_vs_bare")
        lines.append(
            f"{driver:<10}{summary[f'{driver}_static_vs_bare']:>11.2f}x"
            f"{summary[f'{driver}_static_vs_bare_cpu']:>9.2f}x"
            f"{(f'{target:.2f}x' if target else '-'):>8}"
            f"{summary[f'{driver}_proxied_vs_direct']:>15.2f}x"
            f"{summary[f'{driver}_proxied_added_p50_ms']:>9.2f}"
            f"{summary[f'{driver}_proxied_added_p99_ms']:>9.2f}"
        )
    if summary.get("contended_runs"):
        lines.append(
            f"WARNING: {summary['contended_runs']} driver runs had the server below "
            f"{CONTENDED:.0%} CPU ({', '.join(summary['contended'][:4])}"
            f"{', ...' if summary['contended_runs'] > 4 else ''}): something else competed "
            "for the CPUs; the by-CPU ratios hold up better. Run again."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one round")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args(argv)
    duration, repeats = (2.0, 1) if args.quick else (args.duration, args.repeats)
    result = run_driver_benchmarks(duration=duration, repeats=repeats, connections=args.connections)
    OUT.mkdir(exist_ok=True)
    (OUT / "drivers.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
