"""Prometheus metrics of the native drivers, recorded off the request path.

Theory of operation. A driver already builds one record per finished request for
its access log (:func:`transports._logging.log_access`). When metrics are on
(:func:`enable`, done by ``sapg serve --admin-port``), that same call appends a
small tuple to a queue here (one ``deque.append``: no lock, no label lookup, no
``prometheus_client`` call on the request path). One thread per process drains
the queue every :data:`INTERVAL` seconds, counts the records by their labels
and hands the sums to ``prometheus_client`` (one ``inc`` per distinct label
set, one ``observe`` per request, all off the request path). A scrape of a
single process drains the queue first, so it is exact; a scrape across worker
processes sees each worker's numbers as of its last drain (at most
:data:`INTERVAL` old).

Requests in flight are not counted per request at all: the drain reads how many
requests every server of the process holds (:func:`transports._common.requests_in_flight`).

Across worker processes, ``prometheus_client``'s multiprocess mode sums the
workers: the supervisor gives each worker the same ``PROMETHEUS_MULTIPROC_DIR``
(read by ``prometheus_client`` at import), each worker's values live in files
there, and the supervisor's ``/metrics`` adds them up (:func:`collector_for`).

Label values are bounded, so a client cannot grow the series without limit: the
route is the config's pattern (``""`` when none matched), the method is one of
the standard ones or ``OTHER``, the status is the number sent (``"-"`` when the
client left first).
"""

from __future__ import annotations

import atexit
import bisect
import collections
import logging
import operator
import threading
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess as _multiprocess,
)

from sapg_core import FailureReason

from . import _logging
from ._common import requests_in_flight

__all__ = [
    "INTERVAL",
    "MULTIPROC_ENV",
    "Metrics",
    "active",
    "collector_for",
    "enable",
    "forget_process",
]

logger = logging.getLogger("sapg")

#: The longest a finished request waits before it is counted (seconds).
INTERVAL: Final = 0.25
#: Where ``prometheus_client`` keeps the values of worker processes.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

#: Request durations, seconds: a gateway answers in a millisecond or in seconds.
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)

#: The code the gateway answers for an upstream that failed this way (``_proxy.py``).
UPSTREAM_CODES: Final = {
    FailureReason.CONNECT: "UPSTREAM_UNREACHABLE",
    FailureReason.TLS: "UPSTREAM_TLS_ERROR",
    FailureReason.RESET: "UPSTREAM_CONNECTION_ERROR",
    FailureReason.TIMEOUT: "UPSTREAM_TIMEOUT",
}

#: One finished request: route, method, status (None: no answer), seconds, the
#: upstream's failure (None: none), JWKS fetches it carried out.
Record = tuple[str, str, int | None, float, FailureReason | None, int]


class Metrics:
    """The gateway's metrics of one process, fed from a queue by one thread.

    Args:
        registry: where the metrics are registered (None in a worker process:
            its values go to the multiprocess files, collected by the supervisor).
        interval: how often the queue is drained.
    """

    def __init__(self, registry: CollectorRegistry | None, interval: float = INTERVAL) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.requests = Counter(
            "sapg_requests",
            "Requests answered, by route pattern, method and status ('-': the client left).",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "sapg_request_duration_seconds",
            "Time from the request head to the end of the answer, by route pattern.",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "sapg_upstream_failures",
            "Upstream calls of http_proxy routes that failed, by the code answered.",
            ["code"],
            registry=registry,
        )
        self.jwks_fetches = Counter(
            "sapg_jwks_fetches",
            "JWKS (key set) fetches carried out for the auth0 and supabase authorizers.",
            registry=registry,
        )
        self.in_flight = Gauge(
            "sapg_requests_in_flight",
            "Requests received and not yet answered (summed over worker processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._queue: collections.deque[Record] = collections.deque()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="sapg-metrics", daemon=True)
        self._thread.start()

    def add(self, record: Record) -> None:
        """Queue one finished request (any thread; ``deque.append`` is atomic)."""
        self._queue.append(record)

    def flush(self) -> None:
        """Count every queued request now, and read the requests in flight."""
        with self._lock:
            queue = self._queue
            batch = [queue.popleft() for _ in range(len(queue))]  # others append meanwhile
            counts: collections.Counter[tuple[str, str, int | None]] = collections.Counter(
                map(operator.itemgetter(0, 1, 2), batch)  # counted in C
            )
            requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
            for (route, method, status), count in counts.items():  # one per label set
                method = method if method in _METHODS else "OTHER"
                requests[route, method, "-" if status is None else str(status)] += count
            for labels, count in requests.items():
                self.requests.labels(*labels).inc(count)
            durations: dict[str, list[float]] = {}
            for route, seconds in map(operator.itemgetter(0, 3), batch):
                durations.setdefault(route, []).append(seconds)
            for route, values in durations.items():
                _observe_all(self.duration.labels(route), values)
            failures = collections.Counter(
                UPSTREAM_CODES[failure]
                for failure in map(operator.itemgetter(4), batch)
                if failure is not None and failure in UPSTREAM_CODES
            )
            for code, count in failures.items():
                self.upstream_failures.labels(code).inc(count)
            fetches = sum(map(operator.itemgetter(5), batch))
            if fetches:
                self.jwks_fetches.inc(fetches)
            self.in_flight.set(requests_in_flight())

    def close(self) -> None:
        """Stop the thread and count what is left."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2 * self._interval + 1)
        self.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.flush()
            except Exception:  # never let a metrics fault end the counting
                logger.exception("metrics: counting failed")


def _observe_all(child: Any, values: list[float]) -> None:
    """``child.observe`` of every value, done as one ``inc`` per bucket and one of the sum.

    A ``prometheus_client`` histogram keeps a value per bucket (the exposition adds them
    up) and the sum; counting a batch into them at once gives the same numbers as one
    ``observe`` per value at a fraction of the cost. Without those attributes (another
    ``prometheus_client``), each value is observed.
    """
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for seconds in values:
            child.observe(seconds)
        return
    counts = [0] * len(bounds)
    for seconds in values:  # observe() takes the first bucket with seconds <= bound
        counts[bisect.bisect_left(bounds, seconds)] += 1
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    total.inc(sum(values))


#: The metrics of this process, once :func:`enable` ran (read on every request).
active: Metrics | None = None
_registry: CollectorRegistry | None = None


def enable(*, worker: bool = False) -> Callable[[], bytes]:
    """Turn the metrics on in this process; returns the exposition of this process alone.

    In a ``worker`` process (its supervisor set ``PROMETHEUS_MULTIPROC_DIR``) the values
    go to that directory for the supervisor to sum; the returned function is not used.
    """
    global active, _registry
    if active is None:
        _registry = None if worker else CollectorRegistry()
        active = Metrics(_registry)
        _logging.metrics_sink = active.add
        atexit.register(active.close)
    registry = _registry

    def exposition() -> bytes:
        if active is not None:
            active.flush()
        return generate_latest(registry) if registry is not None else b""

    return exposition


def collector_for(path: str) -> Callable[[], bytes]:
    """The exposition of the worker processes whose values are in ``path``, summed."""
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return lambda: generate_latest(registry)


def forget_process(pid: int, path: str) -> None:
    """A worker process ended: drop its share of the in-flight gauge (its counts stay)."""
    _multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
