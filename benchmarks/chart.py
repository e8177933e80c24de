"""Draw docs/benchmarks.png from bench-results/results.json: req/s, sapg beside its baseline.

    python benchmarks/chart.py [bench-results/results.json] [docs/benchmarks.png]

``benchmarks/run.py`` calls :func:`draw` at the end of a run. Needs matplotlib
(drawn with the Agg backend, no display). Each pair of bars is one comparison
from the same run: the baseline (grey) and sapg (blue), labelled with sapg's
ratio to the baseline and, where there is one, the target and whether it was met.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: (label, sapg case, baseline case, target key or None), by part of results.json.
HTTP_PAIRS = [
    ("trio static\nvs bare\ntrio+h11\n(wrk -c32)", "sapg_static", "bare_static", "static_vs_bare"),
    ("HS256 route\nvs static route\n(same server)", "sapg_hs256", "sapg_static", "hs256_vs_static"),
    ("access log on\nvs off\n(static route)", "sapg_logged", "sapg_static", None),
]
DRIVER_LABELS = {
    "trio": "trio driver\nvs bare\ntrio+h11",
    "asyncio": "asyncio driver\nvs bare\nasyncio+h11",
    "h11": "blocking driver\nvs bare\nblocking h11",
    "asgi": "ASGI in uvicorn\nvs bare ASGI\n(same uvicorn)",
}


def _pairs(results: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """(label, sapg req/s, baseline req/s, target) rows: static-type and proxied comparisons."""
    targets = results.get("targets", {})
    static: list[tuple] = []
    proxied: list[tuple] = []
    if "http" in results:
        medians = results["http"]["summary"]["medians"]
        for label, case, base, key in HTTP_PAIRS:
            if case in medians and base in medians:
                static.append(
                    (
                        label,
                        medians[case]["requests_per_second"],
                        medians[base]["requests_per_second"],
                        targets.get(key) if key else None,
                    )
                )
    if "drivers" in results:
        medians = results["drivers"]["summary"]["medians"]
        direct = medians["upstream_direct"]["requests_per_second"]
        summary = results["drivers"]["summary"]
        for driver, label in DRIVER_LABELS.items():
            if f"{driver}_static" not in medians:
                continue
            static.append(
                (
                    f"{label}\n(wrk -c50)",
                    medians[f"{driver}_static"]["requests_per_second"],
                    medians[f"{driver}_bare"]["requests_per_second"],
                    targets.get(f"{driver}_static_vs_bare"),
                )
            )
            proxied.append(
                (
                    f"{DRIVER_LABELS[driver].split(chr(10))[0]}\n"
                    f"added latency:\n+{summary[f'{driver}_proxied_added_p50_ms']:.1f} ms p50\n"
                    f"+{summary[f'{driver}_proxied_added_p99_ms']:.1f} ms p99",
                    medians[f"{driver}_proxied"]["requests_per_second"],
                    direct,
                    None,
                )
            )
    return static, proxied


def _panel(ax: Any, rows: list[tuple], title: str, base_label: str) -> None:
    width = 0.38
    xs = range(len(rows))
    top = max(max(sapg, base) for _, sapg, base, _ in rows)
    ax.bar(
        [x - width / 2 for x in xs], [r[2] for r in rows], width, color="#9a9a9a", label=base_label
    )
    ax.bar([x + width / 2 for x in xs], [r[1] for r in rows], width, color="#2f6db5", label="sapg")
    for x, (_, sapg, base, target) in zip(xs, rows, strict=True):
        ratio = sapg / base
        text = f"{ratio:.2f}x"
        color = "black"
        if target is not None:
            met = ratio >= target
            text += f"\ntarget ≥ {target:.2f}\n{'MET' if met else 'MISSED'}"
            color = "#1b7a1b" if met else "#b22222"
        ax.text(
            x, max(sapg, base) + top * 0.02, text, ha="center", va="bottom", fontsize=8, color=color
        )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylabel("requests per second (median)")
    ax.set_ylim(0, top * 1.32)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def draw(results: dict[str, Any], path: Path) -> bool:
    """Write the chart to ``path``; False (and a note) when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    static, proxied = _pairs(results)
    if not static:
        print("note: no HTTP or driver results, so no chart", file=sys.stderr)
        return False
    panels = [(static, "Static routes: sapg vs. its baseline in the same run", "baseline")]
    if proxied:
        panels.append(
            (
                proxied,
                "Proxied route (GET /proxy/x): through sapg vs. the upstream alone",
                "upstream (bare ASGI in uvicorn) called directly",
            )
        )
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(9.0, 1.6 * len(static)), 4.8 * len(panels)), squeeze=False
    )
    for ax, (rows, title, base_label) in zip(axes[:, 0], panels, strict=True):
        _panel(ax, rows, title, base_label)
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    load = meta.get("loadavg_start", [0.0])[0], meta.get("loadavg_end", [0.0])[0]
    fig.suptitle(
        f"sapg benchmarks, {meta.get('started', '')[:16].replace('T', ' ')}: "
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
