"""Draw docs/benchmarks.png from bench-results/results.json.

    python benchmarks/chart.py [bench-results/results.json] [docs/benchmarks.png]

``benchmarks/run.py`` calls :func:`draw` at the end of a run. Needs matplotlib
(the Agg backend, no display). Up to three panels, one per part measured:

- static routes: each driver (blue) beside its bare baseline (grey), req/s, with
  the ratio, the target and the verdict;
- proxied request at wrk -c50: server CPU per request of one bare trio + h11
  answer, of sapg's drivers and of the two anchors (the httpx proxy, nginx),
  with the 2.0x-bare target line;
- c=1: the p50 each proxy adds to the upstream's own, with the 0.45 ms line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GREY, BLUE, ANCHOR = "#9a9a9a", "#2f6db5", "#d08a2c"
OK, BAD = "#1b7a1b", "#b22222"

STATIC = [  # (label, case, baseline)
    ("trio", "trio_static", "bare_trio"),
    ("trio\n--http h11", "trio_http_h11_static", "bare_trio"),
    ("asyncio", "asyncio_static", "bare_asyncio"),
    ("ASGI in\nuvicorn", "asgi_static", "bare_asgi"),
    ("blocking\n(h11)", "blocking_static", "bare_blocking"),
    ("HS256 route\nvs static", "trio_hs256", "trio_static"),
]
PROXIES = [  # (label, case, colour)
    ("sapg\ntrio", "trio_proxied", BLUE),
    ("sapg trio\n--http h11", "trio_http_h11_proxied", BLUE),
    ("sapg\nasyncio", "asyncio_proxied", BLUE),
    ("sapg\nblocking", "blocking_proxied", BLUE),
    ("sapg\nASGI", "asgi_proxied", BLUE),
    ("httpx proxy\n(uvicorn+uvloop)", "anchor_httpx_proxied", ANCHOR),
    ("nginx\nproxy", "anchor_nginx_proxied", ANCHOR),
]


def _verdicts(results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """case -> (target text, verdict) from the run's figures."""
    out = {}
    for fig in results.get("figures", []):
        if fig.get("verdict") and fig.get("case"):
            out[fig["case"]] = (fig["target"], fig["verdict"])
    return out


def _static_panel(ax: Any, results: dict[str, Any]) -> None:
    m = results["static"]["medians"]
    verdicts = _verdicts(results)
    rows = [(label, c, b) for label, c, b in STATIC if c in m and b in m]
    width = 0.38
    top = max(max(m[c]["requests_per_second"], m[b]["requests_per_second"]) for _, c, b in rows)
    for x, (_, case, base) in enumerate(rows):
        sapg, bare = m[case]["requests_per_second"], m[base]["requests_per_second"]
        ax.bar(x - width / 2, bare, width, color=GREY, label="baseline" if x == 0 else None)
        ax.bar(x + width / 2, sapg, width, color=BLUE, label="sapg" if x == 0 else None)
        text, colour = f"{sapg / bare:.2f}x", "black"
        if case in verdicts:
            target, verdict = verdicts[case]
            text += f"\ntarget {target}\n{verdict}"
            colour = OK if verdict == "MET" else BAD
        ax.text(x, max(sapg, bare) + top * 0.02, text, ha="center", va="bottom", fontsize=8,
                color=colour)  # fmt: skip
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylim(0, top * 1.35)
    ax.set_ylabel("requests/s (median)")
    ax.set_title("Static route, sapg serve defaults (access log on), wrk -c50", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)


def _proxy_panel(ax: Any, results: dict[str, Any]) -> None:
    m = results["proxy"]["medians"]
    bare = m["bare_trio"]["server_cpu_us_per_request"]
    rows = [("bare trio+h11\nanswer", "bare_trio", GREY)]
    rows += [(label, case, colour) for label, case, colour in PROXIES if case in m]
    values = [m[case]["server_cpu_us_per_request"] for _, case, _ in rows]
    ax.bar(range(len(rows)), values, 0.6, color=[colour for _, _, colour in rows])
    limit = 2.0 * bare
    ax.axhline(limit, color=BAD, linestyle="--", linewidth=1)
    ax.text(len(rows) - 0.55, limit * 1.05, "target for sapg: 2.0x a bare answer", ha="right",
            va="bottom", fontsize=8, color=BAD)  # fmt: skip
    for x, ((_, case, _), value) in enumerate(zip(rows, values, strict=True)):
        rps = m[case]["requests_per_second"]
        ax.text(x, value, f"{value:.0f} µs\n{value / bare:.2f}x\n{rps:,.0f}/s", ha="center",
                va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_yscale("log")  # nginx and the httpx proxy are orders of magnitude apart
    ax.set_ylim(min([*values, limit]) / 2, max([*values, limit]) * 4)
    ax.set_ylabel("server CPU per request (µs, log scale)")
    ax.set_title("Proxied request (nginx upstream, fixed body), wrk -c50: CPU per request",
                 fontsize=10)  # fmt: skip


def _latency_panel(ax: Any, results: dict[str, Any]) -> None:
    m = results["latency"]["medians"]
    direct = m["upstream_direct"]["p50_ms"]
    rows = [(label, case, colour) for label, case, colour in PROXIES if case in m]
    values = [m[case]["p50_ms"] - direct for _, case, _ in rows]
    ax.bar(range(len(rows)), values, 0.6, color=[colour for _, _, colour in rows])
    ax.axhline(0.45, color=BAD, linestyle="--", linewidth=1)
    ax.text(len(rows) - 0.55, 0.46, "target for sapg: 0.45 ms", ha="right", va="bottom", fontsize=8,
            color=BAD)  # fmt: skip
    for x, value in enumerate(values):
        ax.text(x, max(value, 0), f"+{value:.3f} ms", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylim(0, max([*values, 0.45]) * 1.3)
    ax.set_ylabel("added p50 (ms)")
    ax.set_title(f"One connection (wrk -c1): p50 added to the upstream's own {direct:.3f} ms",
                 fontsize=10)  # fmt: skip


def draw(results: dict[str, Any], path: Path) -> bool:
    """Write the chart to ``path``; False (and a note) when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (part, fn)
        for part, fn in (
            ("static", _static_panel),
            ("proxy", _proxy_panel),
            ("latency", _latency_panel),
        )
        if part in results
    ]
    if not panels:
        print("note: no HTTP results, so no chart", file=sys.stderr)
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.5, 4.6 * len(panels)), squeeze=False)
    for ax, (_, fn) in zip(axes[:, 0], panels, strict=True):
        fn(ax, results)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    load = meta.get("loadavg_start", [0.0])[0], meta.get("loadavg_end", [0.0])[0]
    quick = " (--quick: smoke test, not a result)" if meta.get("quick") else ""
    fig.suptitle(
        f"sapg benchmarks, {meta.get('started', '')[:16].replace('T', ' ')} UTC{quick}: "
        f"{machine.get('nproc', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"Python {machine.get('python', '?')}, load {load[0]:.2f} → {load[1]:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else ROOT / "bench-results" / "results.json"
    target = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "benchmarks.png"
    if not draw(json.loads(source.read_text()), target):
        return 1
    print(f"chart: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
