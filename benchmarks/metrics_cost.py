"""The metrics' cost per request, in process: what ``--admin-port`` adds to a finished request.

    python benchmarks/metrics_cost.py

Two numbers, in microseconds per request:

- on the request path: :func:`transports._logging.log_access` with the metrics on minus off
  (the access log off in both, so only the metrics' part is measured);
- off the request path: the metrics thread's count of one queued request
  (:meth:`transports._metrics.Metrics.flush` over a batch, divided by its size), in one
  process (in-memory values) and in a worker process (``prometheus_client``'s files).

Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N = 200_000
ROUTES = ("GET /health", "ANY /api/{.+}", "GET /users/{id}", "")


class _Exchange:
    """The fields log_access reads of a finished request."""

    def __init__(self, index: int) -> None:
        self.route = ROUTES[index % len(ROUTES)]
        self.method = "GET"
        self.status = 200
        self.started = time.perf_counter()
        self.upstream_failure = None
        self.jwks_fetches = 0
        self.request_id = index
        self.target = "/health"
        self.upstream_origin = ""
        self.client = ""
        self.x_request_id = ""


def _per_call(function: Any, exchanges: list[_Exchange]) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for exchange in exchanges:
            function(exchange)
        best = min(best, time.perf_counter() - started)
    return best / len(exchanges) * 1e6


def measure() -> dict[str, float]:
    from transports import _logging, _metrics

    logging.getLogger("sapg.access").setLevel(logging.WARNING)  # the access log off
    exchanges = [_Exchange(i) for i in range(N)]
    off = _per_call(_logging.log_access, exchanges)
    metrics = _metrics.Metrics(None, 3600)  # values in memory, or in the worker files
    _logging.metrics_sink = metrics.add
    on = _per_call(_logging.log_access, exchanges)
    queued = len(metrics._queue)
    started = time.perf_counter()
    metrics.flush()
    flush = (time.perf_counter() - started) / queued * 1e6
    return {
        "log_access_off_us": off,
        "log_access_on_us": on,
        "request_path_cost_us": on - off,
        "count_per_request_us": flush,
    }


def main() -> None:
    if len(sys.argv) > 1:  # the child: one measurement, as JSON
        print(json.dumps(measure()))
        return
    results = {}
    for mode in ("single", "worker"):
        env = dict(os.environ)
        with tempfile.TemporaryDirectory() as directory:
            if mode == "worker":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            done = subprocess.run(
                [sys.executable, __file__, "child"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
        results[mode] = json.loads(done.stdout)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
