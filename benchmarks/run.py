"""sapg benchmarks for issue 8, each figure against its baseline measured in the same run.

    python benchmarks/run.py                       # everything (about 16 minutes)
    python benchmarks/run.py --quick               # a smoke test (about 100 s)
    python benchmarks/run.py --only static,proxy   # some parts (inprocess, static, proxy, latency)
    python benchmarks/run.py --only workers --quick  # worker processes, and the metrics' cost
    nox -s bench -- --quick                        # the same through nox (installs wrk, nginx, ...)

Parts:

``static``  wrk -t1 -c50 on a static route, ``sapg serve`` with its defaults (access log on):
            trio vs. bare trio + h11, asyncio vs. bare asyncio + h11, the ASGI adapter under
            uvicorn + httptools vs. a bare ASGI app under the same uvicorn, the blocking driver
            vs. bare blocking h11; the HS256 route vs. the static route (same trio server);
            ``--http h11`` on trio too when the CLI has that option.
``proxy``   wrk -t1 -c50 on a proxied route (``http_proxy`` to an nginx returning a fixed body):
            the gateway's CPU per request over the CPU per request of one bare trio + h11
            answer (measured in the same rounds); the anchors: a Python reverse proxy as a user
            would write it (``anchor_httpx_proxy.py``: uvicorn + uvloop + httptools + httpx) and
            nginx as a keep-alive reverse proxy.
``latency`` wrk -t1 -c1: the p50 added by the hop (p50 through the proxy minus p50 of the
            nginx upstream called directly), for sapg and the anchors.
``workers`` ``sapg serve --workers 2`` vs ``--workers 1`` on the static route, neither pinned
            (the processes and wrk share the machine's CPUs: on 2 CPUs wrk takes part of one);
            and the cost of the metrics: the static route with ``--admin-port 0`` (metrics
            recorded) vs without, pinned as in ``static``, as CPU per request.
``inprocess`` no sockets (``inprocess.py``): core decisions/s, routing at 10 vs. 10,000 routes,
            a proxied request's decisions.

Servers are pinned to CPU 0 and wrk (and the nginx upstream) to CPU 1 with taskset; the cases
of a part run in alternated rounds (A B C, then C B A). Prints a table of figure / measured /
target / verdict, writes every raw number to ``bench-results/results.json`` and redraws
``docs/benchmarks.png`` (``chart.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
from bench_config import CONFIG, hs256_token
from harness import HERE, HOST, OUT, ROOT, Case, Load

CHART = ROOT / "docs" / "benchmarks.png"
PARTS = ("inprocess", "static", "proxy", "latency", "workers")

#: Issue 8, item 7: (comparison, limit); "report" figures have no target.
TARGETS: dict[str, tuple[str, float]] = {
    "trio_static_vs_bare": (">=", 1.2),
    "asyncio_static_vs_bare": (">=", 1.1),
    "asgi_static_vs_bare": (">=", 0.75),
    "hs256_vs_static": (">=", 0.8),
    "proxy_cpu_vs_bare_answer": ("<=", 2.0),
    "proxy_added_p50_ms": ("<=", 0.45),
    "routing_10000_vs_10": (">=", 0.9),
    "core_static_per_second": (">=", 100_000),
}
#: An in-process case whose median round is this much slower than its best was disturbed.
NOISY_SPREAD = 1.15
#: A 1-minute load average above this at the start: the machine was not idle.
BUSY_START = 0.5


# -- configs -----------------------------------------------------------------------------


def _write_config(name: str, upstream: str) -> Path:
    """The shared benchmark config with its proxied route aimed at ``upstream``."""
    config = json.loads(json.dumps(CONFIG))
    config["servers"] = [{"alias": "upstream", "url": upstream}]
    path = OUT / f"{name}-config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _has_http_option() -> bool:
    return "--http " in harness.sapg_help() or "--http {" in harness.sapg_help()


# -- static ------------------------------------------------------------------------------


def static_part(args: argparse.Namespace) -> dict[str, Any]:
    """Static route per driver vs. its bare baseline, and HS256 vs. static."""
    config = _write_config("static", "http://127.0.0.1:9")
    cpu = args.server_cpu
    token = hs256_token()
    h11_variant = args.http_h11 and _has_http_option()
    cases: list[Case] = []
    with contextlib.ExitStack() as stack:

        def start(name: str, argv: list[str], kind: str, path: str = "/health", **kw: Any) -> int:
            port, pid = stack.enter_context(harness.server(name, argv, cpu, **kw))
            cases.append(Case(name, f"http://{HOST}:{port}{path}", pid, kind))
            return pid

        start("bare_trio", [sys.executable, str(HERE / "bare_trio_h11.py"), "--port", "0"], "bare")
        pid = start("trio_static", harness.sapg_argv(config, None), "static")
        hs = Case("trio_hs256", cases[-1].url.replace("/health", "/private"), pid, "static")
        hs.headers = [f"Authorization: Bearer {token}"]
        cases.append(hs)
        if h11_variant:
            start(
                "trio_http_h11_static", harness.sapg_argv(config, None, "--http", "h11"), "static"
            )
        start(
            "bare_asyncio",
            [sys.executable, str(HERE / "bare_asyncio_h11.py"), "--port", "0"],
            "bare",
        )
        start("asyncio_static", harness.sapg_argv(config, "asyncio"), "static")
        loop = ("--loop", args.asgi_loop)  # explicit: uvicorn's "auto" picks uvloop if present
        start(
            "bare_asgi",
            harness.uvicorn_argv("bare_asgi:app", "--app-dir", str(HERE), *loop),
            "bare",
        )
        start(
            "asgi_static",
            harness.uvicorn_argv("transports.asgi:create_app", "--factory", *loop),
            "static",
            env={"SAPG_CONFIG": str(config)},  # SAPG_LOG_LEVEL unset: its default, access log on
        )
        if not args.no_blocking:
            bare_blocking = [sys.executable, str(HERE / "bare_blocking_h11.py"), "--port", "0"]
            start("bare_blocking", bare_blocking, "bare")
            start("blocking_static", harness.sapg_argv(config, "h11"), "static")
        for case in cases:
            harness.check(case)
        harness.check(Case("no token", hs.url, hs.pid, "static"), expect=401)
        runs = harness.measure_rounds(cases, _load(args, 50), args.repeats, "static")
    return {"runs": runs, "medians": harness.medians(runs), "http_h11_variant": h11_variant}


# -- proxy -------------------------------------------------------------------------------


@contextlib.contextmanager
def _proxies(args: argparse.Namespace, name: str) -> Any:
    """The nginx upstream (load CPU) and every proxy in front of it (server CPU)."""
    cpu = args.server_cpu
    h11_variant = args.http_h11 and _has_http_option()
    with contextlib.ExitStack() as stack:
        up_port, up_pid = stack.enter_context(harness.nginx(f"{name}-upstream", args.client_cpu))
        upstream = f"http://{HOST}:{up_port}"
        config = _write_config(name, upstream)
        cases = [Case("upstream_direct", f"{upstream}/x", up_pid, "direct")]

        def start(case: str, ready: Any) -> None:
            port, pid = stack.enter_context(ready)
            cases.append(Case(case, f"http://{HOST}:{port}/proxy/x", pid, "proxied"))

        start("trio_proxied", harness.server(f"{name}-trio", harness.sapg_argv(config, None), cpu))
        if h11_variant:
            argv = harness.sapg_argv(config, None, "--http", "h11")
            start("trio_http_h11_proxied", harness.server(f"{name}-trio-h11", argv, cpu))
        argv = harness.sapg_argv(config, "asyncio")
        start("asyncio_proxied", harness.server(f"{name}-asyncio", argv, cpu))
        if args.all_drivers:
            argv = harness.sapg_argv(config, "h11")
            start("blocking_proxied", harness.server(f"{name}-blocking", argv, cpu))
            argv = harness.uvicorn_argv(
                "transports.asgi:create_app", "--factory", "--loop", args.asgi_loop
            )
            ready = harness.server(f"{name}-asgi", argv, cpu, env={"SAPG_CONFIG": str(config)})
            start("asgi_proxied", ready)
        anchor = harness.uvicorn_argv(
            "anchor_httpx_proxy:app", "--app-dir", str(HERE), "--loop", "uvloop"
        )
        ready = harness.server(
            f"{name}-anchor-httpx", anchor, cpu, env={"ANCHOR_UPSTREAM": upstream}
        )
        start("anchor_httpx_proxied", ready)
        start("anchor_nginx_proxied", harness.nginx(f"{name}-anchor-nginx", cpu, upstream=up_port))
        for case in cases:
            harness.check(case)
        yield stack, cases


def proxy_part(args: argparse.Namespace) -> dict[str, Any]:
    """wrk -c50 on the proxied route: CPU per request, against one bare trio + h11 answer."""
    with _proxies(args, "proxy") as (stack, cases):
        argv = [sys.executable, str(HERE / "bare_trio_h11.py"), "--port", "0"]
        port, pid = stack.enter_context(harness.server("proxy-bare-trio", argv, args.server_cpu))
        bare = Case("bare_trio", f"http://{HOST}:{port}/health", pid, "bare")
        harness.check(bare)
        runs = harness.measure_rounds([bare, *cases], _load(args, 50), args.repeats, "proxy")
    return {"runs": runs, "medians": harness.medians(runs)}


def latency_part(args: argparse.Namespace) -> dict[str, Any]:
    """wrk -t1 -c1: what the hop adds to p50, one request at a time."""
    with _proxies(args, "latency") as (_, cases):
        runs = harness.measure_rounds(cases, _load(args, 1), args.repeats, "latency")
    return {"runs": runs, "medians": harness.medians(runs)}


# -- workers -----------------------------------------------------------------------------


def workers_part(args: argparse.Namespace) -> dict[str, Any]:
    """--workers 2 vs 1 (unpinned), and the static route with metrics on vs off (pinned)."""
    config = _write_config("workers", "http://127.0.0.1:9")
    spread: list[Case] = []
    metrics: list[Case] = []
    with contextlib.ExitStack() as stack:

        def start(name: str, cpu: int | None, into: list[Case], *extra: str) -> None:
            argv = harness.sapg_argv(config, None, *extra)
            port, pid = stack.enter_context(harness.server(name, argv, cpu))
            kind = "static" if cpu is not None else "workers"  # unpinned: never "contended"
            into.append(Case(name, f"http://{HOST}:{port}/health", pid, kind, tree=True))

        start("trio_workers_1", None, spread, "--workers", "1")
        start("trio_workers_2", None, spread, "--workers", "2")
        start("trio_metrics_off", args.server_cpu, metrics)
        start("trio_metrics_on", args.server_cpu, metrics, "--admin-port", "0")
        for case in (*spread, *metrics):
            harness.check(case)
        unpinned = Load(50, 1, None, args.duration, args.warmup)
        runs = harness.measure_rounds(spread, unpinned, args.repeats, "workers")
        runs.update(harness.measure_rounds(metrics, _load(args, 50), args.repeats, "metrics"))
    return {"runs": runs, "medians": harness.medians(runs), "cpus": os.cpu_count()}


def _load(args: argparse.Namespace, connections: int) -> Load:
    return Load(connections, 1, args.client_cpu, args.duration, args.warmup)


# -- in-process ------------------------------------------------------------------------


def inprocess_part(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [*harness.pin(args.server_cpu), sys.executable, str(HERE / "inprocess.py")]
    if args.quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"inprocess.py failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- figures -----------------------------------------------------------------------------


def _verdict(key: str | None, value: float) -> tuple[str, str]:
    """(target text, MET/MISSED) for a figure with a target, else ("report", "")."""
    if key is None or key not in TARGETS:
        return "report", ""
    op, limit = TARGETS[key]
    met = value >= limit if op == ">=" else value <= limit
    shown = f"{limit:,.0f}" if limit >= 1000 else f"{limit:g}"
    return f"{op} {shown}", "MET" if met else "MISSED"


def _figure(
    label: str, value: float, measured: str, key: str | None = None, **extra: Any
) -> dict[str, Any]:
    target, verdict = _verdict(key, value)
    return {
        "figure": label,
        "key": key,
        "value": value,
        "measured": measured,
        "target": target,
        "verdict": verdict,
        **extra,
    }


def _div(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a server that answered nothing): the figure reads MISSED."""
    return a / b if b else float("nan")


def _ratio_per_round(runs: dict[str, list[dict[str, float]]], a: str, b: str) -> list[float]:
    pairs = zip(runs[a], runs[b], strict=True)
    return [_div(x["requests_per_second"], y["requests_per_second"]) for x, y in pairs]


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure of issue 8 item 7 this run measured, with its target and verdict."""
    out: list[dict[str, Any]] = []
    if "static" in results:
        out += _static_figures(results["static"])
    if "proxy" in results:
        out += _proxy_figures(results["proxy"])
    if "latency" in results:
        out += _latency_figures(results["latency"])
    if "inprocess" in results:
        out += _inprocess_figures(results["inprocess"])
    if "workers" in results:
        out += _workers_figures(results["workers"])
    return out


def _workers_figures(part: dict[str, Any]) -> list[dict[str, Any]]:
    m, runs = part["medians"], part["runs"]
    out = []
    if "trio_workers_1" in m and "trio_workers_2" in m:
        one, two = m["trio_workers_1"], m["trio_workers_2"]
        ratio = _div(two["requests_per_second"], one["requests_per_second"])
        measured = (
            f"{ratio:.2f}x ({two['requests_per_second']:,.0f} vs "
            f"{one['requests_per_second']:,.0f} req/s on {part.get('cpus')} CPUs shared with wrk;"
            f" CPU/req {two['server_cpu_us_per_request']:.0f} vs "
            f"{one['server_cpu_us_per_request']:.0f} us)"
        )
        per_round = _ratio_per_round(runs, "trio_workers_2", "trio_workers_1")
        out.append(
            _figure(
                "trio --workers 2 vs --workers 1, static",
                ratio,
                measured,
                None,
                per_round=per_round,
            )
        )
    if "trio_metrics_off" in m and "trio_metrics_on" in m:
        off, on = m["trio_metrics_off"], m["trio_metrics_on"]
        cost = on["server_cpu_us_per_request"] - off["server_cpu_us_per_request"]
        ratio = _div(on["requests_per_second"], off["requests_per_second"])
        measured = (
            f"{cost:+.1f} us CPU/req ({on['server_cpu_us_per_request']:.1f} vs "
            f"{off['server_cpu_us_per_request']:.1f}); req/s {ratio:.3f}x "
            f"({on['requests_per_second']:,.0f} vs {off['requests_per_second']:,.0f})"
        )
        out.append(_figure("metrics on (--admin-port) vs off: CPU per request", cost, measured))
    return out


def _static_figures(part: dict[str, Any]) -> list[dict[str, Any]]:
    m, runs = part["medians"], part["runs"]
    out = []
    pairs = [
        ("trio static route vs bare trio + h11", "trio_static", "bare_trio", "trio_static_vs_bare"),
        (
            "trio --http h11, static, vs bare trio + h11",
            "trio_http_h11_static",
            "bare_trio",
            None,
        ),
        (
            "asyncio static route vs bare asyncio + h11",
            "asyncio_static",
            "bare_asyncio",
            "asyncio_static_vs_bare",
        ),
        (
            "ASGI under uvicorn+httptools vs bare ASGI app, same uvicorn",
            "asgi_static",
            "bare_asgi",
            "asgi_static_vs_bare",
        ),
        ("blocking (h11) static vs bare blocking h11", "blocking_static", "bare_blocking", None),
        ("HS256 route vs static route (trio, same server)", "trio_hs256", "trio_static", None),
    ]
    for label, case, base, key in pairs:
        if case not in m or base not in m:
            continue
        if case == "trio_hs256":
            key = "hs256_vs_static"
        a, b = m[case], m[base]
        ratio = _div(a["requests_per_second"], b["requests_per_second"])
        by_cpu = _div(b["server_cpu_us_per_request"], a["server_cpu_us_per_request"])
        measured = (
            f"{ratio:.2f}x ({a['requests_per_second']:,.0f} vs {b['requests_per_second']:,.0f}"
            f" req/s; by CPU/req {by_cpu:.2f}x: {a['server_cpu_us_per_request']:.0f} vs "
            f"{b['server_cpu_us_per_request']:.0f} us)"
        )
        out.append(
            _figure(
                label,
                ratio,
                measured,
                key,
                by_cpu=by_cpu,
                per_round=_ratio_per_round(runs, case, base),
                case=case,
                baseline=base,
            )
        )
    return out


def _proxy_figures(part: dict[str, Any]) -> list[dict[str, Any]]:
    m = part["medians"]
    bare_cpu = m["bare_trio"]["server_cpu_us_per_request"]
    out = []
    for case, label, key in [
        (
            "trio_proxied",
            "proxied request, trio: gateway CPU/req vs one bare trio+h11 answer",
            "proxy_cpu_vs_bare_answer",
        ),
        ("trio_http_h11_proxied", "proxied request, trio --http h11: CPU/req vs bare answer", None),
        ("asyncio_proxied", "proxied request, asyncio: CPU/req vs bare answer", None),
        ("blocking_proxied", "proxied request, blocking: CPU/req vs bare answer", None),
        ("asgi_proxied", "proxied request, ASGI (uvicorn): CPU/req vs bare answer", None),
        (
            "anchor_httpx_proxied",
            "anchor: uvicorn+uvloop+httptools+httpx proxy, CPU/req vs bare",
            None,
        ),
        ("anchor_nginx_proxied", "anchor: nginx reverse proxy (keepalive), CPU/req vs bare", None),
    ]:
        if case not in m:
            continue
        cpu = m[case]["server_cpu_us_per_request"]
        out.append(
            _figure(
                label,
                _div(cpu, bare_cpu),
                f"{_div(cpu, bare_cpu):.2f}x ({cpu:.0f} vs {bare_cpu:.0f} us; "
                f"{m[case]['requests_per_second']:,.0f} req/s)",
                key,
                case=case,
            )
        )
    anchors = ("anchor_httpx_proxied", "anchor_nginx_proxied", "trio_proxied")
    if all(a in m for a in anchors):
        httpx_cpu, nginx_cpu, sapg_cpu = (m[a]["server_cpu_us_per_request"] for a in anchors)
        httpx_rps, nginx_rps, sapg_rps = (m[a]["requests_per_second"] for a in anchors)
        # 0: as costly as the httpx proxy, 1: as cheap as nginx
        position = _div(httpx_cpu - sapg_cpu, httpx_cpu - nginx_cpu)
        out.append(
            _figure(
                "sapg (trio) between the anchors, by CPU/req (0 = httpx proxy, 1 = nginx)",
                position,
                f"{position:.2f} (CPU/req: httpx {httpx_cpu:.0f}, sapg {sapg_cpu:.0f}, "
                f"nginx {nginx_cpu:.0f} us; req/s: {httpx_rps:,.0f} / {sapg_rps:,.0f} / "
                f"{nginx_rps:,.0f})",
            )
        )
    return out


def _latency_figures(part: dict[str, Any]) -> list[dict[str, Any]]:
    m = part["medians"]
    direct = m["upstream_direct"]["p50_ms"]
    out = []
    for case, label, key in [
        ("trio_proxied", "added p50 of the hop at c=1, trio (ms)", "proxy_added_p50_ms"),
        ("trio_http_h11_proxied", "added p50 at c=1, trio --http h11 (ms)", None),
        ("asyncio_proxied", "added p50 at c=1, asyncio (ms)", None),
        ("blocking_proxied", "added p50 at c=1, blocking (ms)", None),
        ("asgi_proxied", "added p50 at c=1, ASGI (ms)", None),
        ("anchor_httpx_proxied", "added p50 at c=1, anchor httpx proxy (ms)", None),
        ("anchor_nginx_proxied", "added p50 at c=1, anchor nginx proxy (ms)", None),
    ]:
        if case not in m:
            continue
        added = m[case]["p50_ms"] - direct
        out.append(
            _figure(
                label,
                added,
                f"{added:.3f} ms ({m[case]['p50_ms']:.3f} vs {direct:.3f} direct)",
                key,
                case=case,
            )
        )
    return out


def _inprocess_figures(part: dict[str, Any]) -> list[dict[str, Any]]:
    core, routing = part["core"], part["routing"]
    static = core["static"]
    out = [
        _figure(
            "core decisions/s in-process, static route (event + handle)",
            static["per_second"],
            f"{static['per_second']:,.0f}/s ({static['us']:.1f} us)",
            "core_static_per_second",
        )
    ]
    for kind, plural in (("hit", "hits"), ("miss", "misses")):
        t10, t10k = routing[kind]["10"]["tree"]["us"], routing[kind]["10000"]["tree"]["us"]
        out.append(
            _figure(
                f"routing in-process, 10,000 vs 10 routes, {plural} (match/s ratio)",
                t10 / t10k,
                f"{t10 / t10k:.2f}x ({t10k:.2f} vs {t10:.2f} us per match)",
                "routing_10000_vs_10",
            )
        )
    for name, label in [
        ("proxy_round_trip", "proxied request in-process: both decisions (us)"),
        ("proxy_forward_step", "proxied request in-process: to ForwardUpstream (us)"),
        ("hs256_cached", "HS256 route in-process, cached token (us)"),
    ]:
        if name in core:
            out.append(_figure(label, core[name]["us"], f"{core[name]['us']:.1f} us"))
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max([len(r["figure"]) for r in rows] + [6])
    shown = max([len(r["measured"]) for r in rows] + [8])
    print(f"{'figure':<{width}}  {'measured':<{shown}}  {'target':>10}  verdict")
    print("-" * (width + shown + 23))
    for r in rows:
        print(
            f"{r['figure']:<{width}}  {r['measured']:<{shown}}  {r['target']:>10}  {r['verdict']}"
        )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The same table in Markdown, for docs/benchmarks.md (written to bench-results/table.md)."""
    lines = ["| figure | measured | target | verdict |", "| --- | --- | ---: | --- |"]
    for r in rows:
        verdict = f"**{r['verdict']}**" if r["verdict"] else ""
        lines.append(f"| {r['figure']} | {r['measured']} | {r['target']} | {verdict} |")
    return "\n".join(lines) + "\n"


def _warnings(results: dict[str, Any]) -> list[str]:
    notes = []
    for part in ("static", "proxy", "latency"):
        if part not in results:
            continue
        for name, runs in results[part]["runs"].items():
            bad = [
                i
                for i, run in enumerate(runs, 1)
                if run["server_cpu_busy"] < harness.CONTENDED
                and (name.startswith("bare") or name.endswith("_static") or name == "trio_hs256")
            ]
            errors = sum(run["non_2xx"] + run["socket_errors"] for run in runs)
            if bad and part != "latency":
                notes.append(f"{part}/{name}: server below 90% CPU in round(s) {bad} (contended)")
            if errors:
                notes.append(f"{part}/{name}: {errors:.0f} non-2xx answers or socket errors")
    if "inprocess" in results:
        noisy = _noisy(results["inprocess"])
        if noisy:
            notes.append(f"in-process cases with median/best above {NOISY_SPREAD}: {noisy}")
    return notes


def _noisy(result: dict[str, Any], path: str = "") -> list[str]:
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


# -- profile ---------------------------------------------------------------------------


def profile_part(args: argparse.Namespace) -> dict[str, str]:
    """py-spy on the sapg trio server under wrk -c50: static route and proxied route."""
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        print("note: py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        return {}
    from spy_report import summarise

    reports = {}
    with _proxies(args, "profile") as (_, cases):
        trio = next(c for c in cases if c.name == "trio_proxied")
        for name, url in [("static", trio.url.replace("/proxy/x", "/health")), ("proxy", trio.url)]:
            raw = OUT / f"profile-{name}.raw"
            load = _load(args, 50)
            harness.wrk(url, load, load.warmup, [])
            wrk = [*harness.pin(args.client_cpu), "wrk", "-t1", "-c50"]
            wrk += [f"-d{round(args.duration) + 3}s", url]
            busy = subprocess.Popen(wrk, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1)
                cmd = [spy, "record", "-p", str(trio.pid), "-d", f"{round(args.duration)}"]
                cmd += ["-r", "250", "--format", "raw", "-o", str(raw)]
                subprocess.run(
                    [*harness.pin(args.client_cpu), *cmd],
                    capture_output=True,
                    timeout=args.duration + 60,
                    check=True,
                )
            finally:
                busy.wait(args.duration + 30)
            text = f"py-spy, sapg trio server, GET {url}\n" + summarise(raw.read_text(), top=30)
            (OUT / f"profile-{name}.txt").write_text(text)
            reports[name] = str((OUT / f"profile-{name}.txt").relative_to(ROOT))
            print(text, file=sys.stderr)
    return reports


# -- meta ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("sapg", "trio", "h11", "httptools", "uvicorn", "uvloop", "httpx", "attrs"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    tools = {}
    for tool, flag in (("wrk", "-v"), (harness.which_nginx() or "nginx", "-v")):
        try:
            done = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            tools[Path(tool).name] = (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            tools[Path(tool).name] = "not found"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        "tools": tools,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "sapg_core", "transports")),
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


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 round: a smoke test")
    parser.add_argument(
        "--only", action="append", default=[], help=f"parts, comma-separated: {','.join(PARTS)}"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds (median)")
    parser.add_argument(
        "--no-http-h11",
        dest="http_h11",
        action="store_false",
        help="skip the trio --http h11 cases (measured when `sapg serve --help` has --http)",
    )
    parser.add_argument("--no-blocking", action="store_true", help="skip the blocking driver")
    parser.add_argument(
        "--all-drivers", action="store_true", help="proxy/latency: also blocking and ASGI"
    )
    parser.add_argument(
        "--asgi-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="uvicorn --loop for the ASGI adapter and its bare app (the anchor always uvloop)",
    )
    parser.add_argument("--profile", action="store_true", help="also py-spy the trio server")
    parser.add_argument(
        "--merge", action="store_true", help="keep the parts of results.json not rerun"
    )
    parser.add_argument("--no-chart", action="store_true", help=f"do not draw {CHART.name}")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeats = 2.0, 1.0, 1
    chosen = [p.strip() for item in args.only for p in item.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    args.parts = [p for p in PARTS if p in chosen] if chosen else list(PARTS)
    args.server_cpu, args.client_cpu = harness.cpus()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needs_wrk = set(args.parts) - {"inprocess"} or args.profile
    if needs_wrk and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk nginx (nox -s bench does it)")
    needs_nginx = set(args.parts) & {"proxy", "latency"} or args.profile
    if needs_nginx and harness.which_nginx() is None:
        raise SystemExit("nginx not found: apt-get install nginx (nox -s bench does it)")
    OUT.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "pinning": {"server_cpu": args.server_cpu, "load_cpu": args.client_cpu},
        "wrk": {"threads": 1, "duration_s": args.duration, "warmup_s": args.warmup},
        "repeats": args.repeats,
        "quick": args.quick,
        "asgi_loop": args.asgi_loop,
        "parts": args.parts,
    }
    results: dict[str, Any] = {"meta": meta, "targets": TARGETS}
    steps = {
        "inprocess": inprocess_part,
        "static": static_part,
        "proxy": proxy_part,
        "latency": latency_part,
        "workers": workers_part,
    }
    for part in args.parts:
        print(f"== {part}", file=sys.stderr)
        try:
            results[part] = steps[part](args)
        except Exception as error:  # one broken part must not lose the others' numbers
            import traceback

            traceback.print_exc()
            results.setdefault("errors", {})[part] = f"{type(error).__name__}: {error}"
            continue
        partial = {**results, "figures": figures(results)}
        (OUT / "results-partial.json").write_text(json.dumps(harness.jsonable(partial), indent=2))
    if args.profile:
        print("== profile", file=sys.stderr)
        try:
            results["profiles"] = profile_part(args)
        except Exception as error:  # a profile is an extra: keep the figures
            results.setdefault("errors", {})["profile"] = f"{type(error).__name__}: {error}"
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = round(time.time() - started, 1)
    if args.merge:
        results = _merge(OUT / "results.json", results)
    results["figures"] = figures(results)
    results["warnings"] = _warnings(results)
    if meta["loadavg_start"][0] > BUSY_START:
        results["warnings"].insert(
            0,
            f"the 1-minute load average was {meta['loadavg_start'][0]:.2f} at the start: "
            "something else was running; for results, start on an idle machine",
        )
    (OUT / "results.json").write_text(json.dumps(harness.jsonable(results), indent=2))
    (OUT / "table.md").write_text(markdown_table(results["figures"]))
    print_table(results["figures"])
    for note in results["warnings"]:
        print(f"WARNING: {note}")
    for part, error in results.get("errors", {}).items():
        print(f"FAILED: part {part!r}: {error.splitlines()[0]} (traceback on stderr)")
    print(
        f"\nraw results: {(OUT / 'results.json').relative_to(ROOT)}; load average "
        f"{meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f}; "
        f"{meta['elapsed_s']:.0f} s{' (merged)' if args.merge else ''}"
    )
    if not args.no_chart:
        _chart(results)
    return 1 if results.get("errors") else 0


def _merge(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """The old results with this run's parts replacing theirs; reruns listed in meta."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return new
    merged = {**old, **{key: value for key, value in new.items() if key != "meta"}}
    errors = {
        part: error
        for part, error in old.get("errors", {}).items()
        if part not in new and part not in new.get("errors", {})
    }
    errors.update(new.get("errors", {}))
    merged.pop("errors", None)
    if errors:
        merged["errors"] = errors
    reruns = old.get("meta", {}).get("reruns", [])
    merged["meta"] = {**old.get("meta", {}), "reruns": [*reruns, new["meta"]]}
    return merged


def _chart(results: dict[str, Any]) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            f"note: matplotlib is not installed, so {CHART.relative_to(ROOT)} was not drawn "
            "(nox -s bench installs it)",
            file=sys.stderr,
        )
        return
    from chart import draw

    if draw(results, CHART):
        print(f"chart: {CHART.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
