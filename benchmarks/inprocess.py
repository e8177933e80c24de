"""In-process benchmarks, no sockets: core decisions per second and route matching.

    python benchmarks/inprocess.py [--quick]

prints one JSON object on stdout (``benchmarks/run.py`` runs this pinned to a CPU
and folds the result into ``bench-results/results.json``).

Timing: each case runs a calibrated loop several times (``--rounds``) and
reports the best round's per-operation time as the headline (``us``, and
``per_second`` from it), with the median and their ratio (``spread``) beside it;
the garbage collector stays on, as in a server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.core._reference_routing

from bench_config import (  # noqa: E402
    CONFIG,
    STATIC_BODY,
    api_routes,
    hs256_token,
    probe_paths,
)

from sapg_core import (  # noqa: E402
    ForwardUpstream,
    Gateway,
    RelayResponse,
    RequestAborted,
    RequestReceived,
    Respond,
    RouteTable,
    ServerConnection,
    UpstreamResponded,
    compile_config,
)
from tests.core._reference_routing import winner as reference_winner  # noqa: E402

#: What wrk sends, lower-cased as the HTTP glue delivers it.
WRK_HEADERS = (("host", "127.0.0.1:8787"),)
#: What a browser's fetch() sends: a dozen headers, for the per-header costs.
BROWSER_HEADERS = (
    ("host", "api.example.com"),
    ("connection", "keep-alive"),
    ("sec-ch-ua", '"Chromium";v="128", "Not;A=Brand";v="24"'),
    ("accept", "application/json"),
    ("sec-ch-ua-mobile", "?0"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/128.0 Safari/537.36"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("origin", "https://app.example.com"),
    ("sec-fetch-site", "same-site"),
    ("sec-fetch-mode", "cors"),
    ("referer", "https://app.example.com/"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en;q=0.9"),
)
NOW = time.time()
UNCACHED_TOKENS = 50_000  # distinct tokens for the uncached HS256 case, reused per fresh gateway
ENTROPY = bytes(32)
_DATE = "Sun, 22 Nov 2026 14:00:00 GMT"


def _calibrate(
    step: Callable[[int], object], min_time: float, after: Callable[[], object] | None
) -> int:
    """How many operations make one round of about ``min_time`` seconds."""
    n = 1
    while True:
        start = time.perf_counter()
        step(n)
        elapsed = time.perf_counter() - start
        if after is not None:
            after()
        if elapsed >= min_time / 4 or n >= 1 << 22:
            return max(1, int(n * min_time / max(elapsed, 1e-9)))
        n *= 2


def _measure_many(
    steps: dict[str, Callable[[int], object]], *, rounds: int, min_time: float
) -> dict[str, dict[str, float]]:
    """Per-op times of several cases whose rounds are interleaved (A B C A B C ...).

    Interleaving makes a burst of load elsewhere on the machine hit every case
    alike, so ratios between them hold up better than the absolute numbers.
    """
    counts = {name: _calibrate(step, min_time, None) for name, step in steps.items()}
    per_op: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(counts[name])
            per_op[name].append((time.perf_counter() - start) / counts[name])
    return {name: _summary(per_op[name], counts[name]) for name in steps}


def _measure(
    step: Callable[[int], object],
    *,
    rounds: int,
    min_time: float,
    after: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Per-op time of ``step(n)`` (which does n operations), over ``rounds`` rounds.

    ``after`` runs off the clock after every call of ``step`` (to reset state).
    """
    n = _calibrate(step, min_time, after)
    per_op = []
    for _ in range(rounds):
        start = time.perf_counter()
        step(n)
        per_op.append((time.perf_counter() - start) / n)
        if after is not None:
            after()
    return _summary(per_op, n)


def _summary(per_op: list[float], n: int) -> dict[str, float]:
    median, best = statistics.median(per_op), min(per_op)
    return {
        "us": best * 1e6,  # the headline: the best round (noise only ever adds time)
        "median_us": median * 1e6,
        "best_us": best * 1e6,
        "spread": median / best,  # well above 1: the machine was busy with something else
        "per_second": 1 / best,
        "ops_per_round": n,
        "rounds": len(per_op),
    }


# -- core decisions -----------------------------------------------------------------


def _gateway() -> Gateway:
    result = compile_config(CONFIG, env={})
    if result.errors:
        raise SystemExit(f"bench config does not compile: {result.errors}")
    return Gateway(result.config)


def _decide(
    gateway: Gateway,
    target: str,
    headers: tuple[tuple[str, str], ...],
    issued: list[int] | None = None,
) -> Callable[[int], None]:
    """``n`` decisions: build the event, hand it to the gateway (ids into ``issued``)."""
    next_id = [1]

    def step(n: int) -> None:
        handle = gateway.handle
        first = next_id[0]
        next_id[0] = first + n
        for request_id in range(first, first + n):
            handle(
                RequestReceived(
                    request_id=request_id,
                    method="GET",
                    target=target,
                    headers=headers,
                    now=NOW,
                    entropy=ENTROPY,
                )
            )
        if issued is not None:
            issued.extend(range(first, first + n))

    return step


def _abort_pending(gateway: Gateway, ids: list[int]) -> Callable[[], None]:
    """Forget the requests a proxied-route round left waiting (run off the clock)."""

    def after() -> None:
        for request_id in ids:
            gateway.handle(RequestAborted(request_id=request_id, now=NOW))
        ids.clear()
        if gateway.pending_count:
            raise SystemExit("proxied requests left pending")

    return after


def _check_answers(gateway: Gateway, auth: tuple[tuple[str, str], ...]) -> None:
    cases = [("/health", WRK_HEADERS, Respond), ("/private", auth, Respond)]
    cases.append(("/proxy/orders/42", WRK_HEADERS, ForwardUpstream))
    for request_id, (target, headers, kind) in enumerate(cases, start=-10):
        actions = gateway.handle(
            RequestReceived(
                request_id=request_id, method="GET", target=target, headers=headers, now=NOW
            )
        )
        action = actions[-1]
        ok = isinstance(action, kind) and (kind is not Respond or action.status == 200)
        if not ok:
            raise SystemExit(f"bench sanity check failed for {target}: {actions}")
        if kind is ForwardUpstream:
            gateway.handle(RequestAborted(request_id=request_id, now=NOW))


def core_benchmarks(*, rounds: int, min_time: float) -> dict[str, dict[str, float]]:
    timing = {"rounds": rounds, "min_time": min_time}
    gateway = _gateway()
    token = hs256_token()
    auth = (*WRK_HEADERS, ("authorization", f"Bearer {token}"))
    _check_answers(gateway, auth)  # also puts the token in the verifier's cache

    every_token = [hs256_token(subject=f"user-{i}") for i in range(UNCACHED_TOKENS)]
    cold = {"gateway": _gateway(), "tokens": iter(every_token)}

    def uncached(n: int) -> None:
        handle, tokens = cold["gateway"].handle, cold["tokens"]
        for _ in range(n):
            headers = (*WRK_HEADERS, ("authorization", f"Bearer {next(tokens)}"))
            handle(
                RequestReceived(
                    request_id=1, method="GET", target="/private", headers=headers, now=NOW
                )
            )

    def new_gateway() -> None:
        """Off the clock after every step: a gateway whose verifier has seen no token."""
        cold["gateway"], cold["tokens"] = _gateway(), iter(every_token)

    out = {
        "static": _measure(_decide(gateway, "/health", WRK_HEADERS), **timing),
        "hs256_cached": _measure(_decide(gateway, "/private", auth), **timing),
        "static_browser_headers": _measure(_decide(gateway, "/health", BROWSER_HEADERS), **timing),
    }
    issued: list[int] = []
    out["proxy_forward_step"] = _measure(
        _decide(gateway, "/proxy/orders/42?expand=lines", WRK_HEADERS, issued),
        after=_abort_pending(gateway, issued),
        **timing,
    )
    out["proxy_round_trip"] = _measure(_proxy_round_trip(gateway), **timing)
    out["event_only"] = _measure(_event_only(), **timing)
    # A fresh token per request: the signature check itself (short rounds, tokens are finite).
    out["hs256_uncached"] = _measure(
        uncached, rounds=rounds, min_time=min(min_time, 0.1), after=new_gateway
    )
    return out


#: What the nginx upstream of the HTTP benchmarks answers with (names lower-cased).
NGINX_HEADERS = (
    ("server", "nginx/1.22.1"),
    ("date", _DATE),
    ("content-type", "application/json"),
    ("content-length", "15"),
    ("connection", "keep-alive"),
)


def _proxy_round_trip(gateway: Gateway) -> Callable[[int], None]:
    """A proxied request's two decisions: to ``ForwardUpstream``, then to ``RelayResponse``.

    Both events are built in the loop, as a driver builds them; nothing is left pending.
    """
    next_id = [1_000_000_000]
    first = gateway.handle(
        RequestReceived(
            request_id=999_999_999, method="GET", target="/proxy/x", headers=WRK_HEADERS, now=NOW
        )
    )
    second = gateway.handle(
        UpstreamResponded(request_id=999_999_999, status=200, headers=NGINX_HEADERS, now=NOW)
    )
    relayed = isinstance(first[-1], ForwardUpstream) and isinstance(second[-1], RelayResponse)
    if not relayed or gateway.pending_count:
        raise SystemExit(f"bench sanity check failed for a proxied request: {first} {second}")

    def step(n: int) -> None:
        handle = gateway.handle
        first = next_id[0]
        next_id[0] = first + n
        for request_id in range(first, first + n):
            handle(
                RequestReceived(
                    request_id=request_id,
                    method="GET",
                    target="/proxy/orders/42?expand=lines",
                    headers=WRK_HEADERS,
                    now=NOW,
                    entropy=ENTROPY,
                )
            )
            handle(
                UpstreamResponded(request_id=request_id, status=200, headers=NGINX_HEADERS, now=NOW)
            )

    return step


def _event_only() -> Callable[[int], None]:
    """Building the RequestReceived alone, to split event cost from decision cost."""

    def step(n: int) -> None:
        for i in range(n):
            RequestReceived(
                request_id=i,
                method="GET",
                target="/health",
                headers=WRK_HEADERS,
                now=NOW,
                entropy=ENTROPY,
            )

    return step


# -- where an HTTP request's time goes, in pieces (same run, no sockets) ---------------

#: The request wrk sends (one line of headers).
WRK_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n\r\n"
_RESPONSE_HEADERS = (("content-type", "application/json"), ("x-powered-by", "sapg"))
_BARE_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"15")]


def _sapg_glue() -> Callable[[int], None]:
    """sapg_core.ServerConnection: parse a request, render the response, reach NeedData."""
    conn = ServerConnection()

    def step(n: int) -> None:
        for _ in range(n):
            conn.receive_data(WRK_REQUEST)
            conn.next_event()  # RequestHead
            conn.send_response(200, _RESPONSE_HEADERS, STATIC_BODY, date=_DATE)
            conn.next_event()  # the end of the request, the next cycle: NeedData

    return step


def _bare_glue() -> Callable[[int], None]:
    """The same with h11 used directly, as benchmarks/bare_trio_h11.py does."""
    import h11

    conn = h11.Connection(h11.SERVER)

    def step(n: int) -> None:
        for _ in range(n):
            conn.receive_data(WRK_REQUEST)
            conn.next_event()  # Request
            conn.next_event()  # EndOfMessage
            conn.send(h11.Response(status_code=200, headers=_BARE_HEADERS))
            conn.send(h11.Data(data=STATIC_BODY))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
            conn.next_event()  # NEED_DATA

    return step


def _trio_scopes(rounds: int, min_time: float) -> dict[str, dict[str, float]]:
    """What one ``trio.move_on_after`` costs (the driver opens one per read and per send)."""
    import trio

    def with_deadline(n: int) -> None:
        for _ in range(n):
            with trio.move_on_after(30):
                pass

    def plain(n: int) -> None:
        for _ in range(n):
            with trio.CancelScope():
                pass

    async def main() -> dict[str, dict[str, float]]:
        return {
            "trio_move_on_after": _measure(with_deadline, rounds=rounds, min_time=min_time),
            "trio_cancel_scope_no_deadline": _measure(plain, rounds=rounds, min_time=min_time),
        }

    return trio.run(main)


def _driver_event() -> Callable[[int], None]:
    """What the trio driver does to build the event: clock, entropy, RequestReceived."""
    import secrets

    from transports._common import request_received

    conn = ServerConnection()
    conn.receive_data(WRK_REQUEST)
    head = conn.next_event()

    def step(n: int) -> None:
        for i in range(n):
            request_received(
                head,
                request_id=i,
                now=time.time(),
                entropy=secrets.token_bytes(32),
                scheme="http",
            )

    return step


def _http_date() -> Callable[[int], None]:
    """The driver's Date header value (transports._common.http_date)."""
    from transports._common import http_date

    def step(n: int) -> None:
        for _ in range(n):
            http_date(time.time())

    return step


def breakdown_benchmarks(*, rounds: int, min_time: float) -> dict[str, dict[str, float]]:
    timing = {"rounds": rounds, "min_time": min_time}
    glue = {"glue_sapg_server_connection": _sapg_glue(), "glue_bare_h11": _bare_glue()}
    out = _measure_many(glue, **timing)
    out |= {
        "driver_event_build": _measure(_driver_event(), **timing),
        "driver_http_date": _measure(_http_date(), **timing),
    }
    out.update(_trio_scopes(rounds, min_time))
    return out


# -- routing --------------------------------------------------------------------------


def _match_step(table: RouteTable, probes: list[tuple[str, str]]) -> Callable[[int], None]:
    def step(n: int) -> None:
        match = table.match
        for _ in range(n):
            for method, path in probes:
                match(method, path)

    return step


def _reference_step(
    routes: list[tuple[str, str]], probes: list[tuple[str, str]]
) -> Callable[[int], None]:
    def step(n: int) -> None:
        for _ in range(n):
            for method, path in probes:
                reference_winner(routes, method, path)

    return step


def _per_match(result: dict[str, float], probes: int) -> dict[str, float]:
    """Turn per-loop numbers (one loop = all probes) into per-match numbers."""
    out = dict(result)
    out["us"] /= probes
    out["median_us"] /= probes
    out["best_us"] /= probes
    out["per_second"] *= probes
    out["probes"] = probes
    return out


def _check_routing(table: RouteTable, routes: list[tuple[str, str]], probes: dict) -> None:
    for kind, requests in probes.items():
        for method, path in requests:
            ours = table.match(method, path)
            ref = reference_winner(routes, method, path)
            ours_index = None if ours is None else ours.index
            ref_index = None if ref is None else ref.index
            if ours_index != ref_index or (kind == "hit") != (ours is not None):
                raise SystemExit(f"routing sanity check failed: {method} {path}")


def routing_benchmarks(
    sizes: list[int], *, rounds: int, min_time: float, reference_rounds: int
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per match, for each kind of probe and table size; sizes interleaved round by round."""
    tables = {}
    for size in sizes:
        routes = api_routes(size)
        table = RouteTable(routes)
        probes = probe_paths(size)
        _check_routing(table, routes, probes)
        tables[size] = (routes, table, probes)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for kind in ("hit", "miss"):
        tree = _measure_many(
            {str(n): _match_step(t, p[kind]) for n, (_, t, p) in tables.items()},
            rounds=rounds,
            min_time=min_time,
        )
        naive = _measure_many(
            {str(n): _reference_step(r, p[kind]) for n, (r, _, p) in tables.items()},
            rounds=reference_rounds,
            min_time=min_time / 2,
        )
        out[kind] = {
            str(n): {
                "tree": _per_match(tree[str(n)], len(p[kind])),
                "naive": _per_match(naive[str(n)], len(p[kind])),
            }
            for n, (_, _, p) in tables.items()
        }
    return out


def calibration() -> dict[str, float]:
    """How fast this Python is: ns for a call of an empty function (compare machines)."""

    def empty() -> None:
        return None

    def step(n: int) -> None:
        for _ in range(n):
            empty()

    return _measure(step, rounds=5, min_time=0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    min_time = 0.05 if args.quick else 0.4
    rounds = 3 if args.quick else args.rounds
    sizes = [10, 1000, 10000]
    result = {
        "calibration_empty_call": calibration(),
        "core": core_benchmarks(rounds=rounds, min_time=min_time),
        "breakdown": breakdown_benchmarks(rounds=rounds, min_time=min_time),
        "routing": routing_benchmarks(sizes, rounds=rounds, min_time=min_time, reference_rounds=3),
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
