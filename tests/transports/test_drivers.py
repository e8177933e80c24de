"""The drivers in-process, with stand-in gateways: what the black-box suite cannot reach.

- One ``handle`` call may return actions for *another* request (a shared
  action's outcome finishes every request waiting for it): each driver must
  carry each action out on the request it names.
- The outbound pool assigns many waiting requests in linear time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import attrs
import pytest
import trio

from sapg_core import (
    PARSER_BACKENDS,
    Action,
    ActionFailed,
    BodyReceived,
    Event,
    FailureReason,
    ForwardUpstream,
    HTTPResponseReceived,
    Log,
    LogLevel,
    ReadBody,
    RelayResponse,
    RequestAborted,
    RequestReceived,
    Respond,
    SendHTTP,
    ServerLimits,
    UpstreamResponded,
)
from transports import asyncio_driver, h11_blocking, trio_driver
from transports._async_driver import AsyncDriver, Connection, Deadlines
from transports._common import ClientBodyError, Timeouts
from transports._outbound import Outbound, SyncOutbound, default_ssl_context
from transports._serve import check_http
from transports.asgi import GatewayApp

from .servers import ROOT, Client, StreamingUpstream, free_port

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]


@functools.cache
def ssl_context() -> Any:
    return default_ssl_context(environ={})


class SharedFetch:
    """A stand-in core: ``/a`` fetches; ``/b`` meanwhile waits for that fetch, with no action.

    The fetch's outcome answers both, in one ``handle`` call.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.owner: int | None = None
        self.waiting: list[int] = []

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, RequestReceived):
            if self.owner is None:
                self.owner = event.request_id
                url = self.upstream + "/slow?seconds=0.6"
                return [SendHTTP(request_id=event.request_id, method="GET", url=url, headers=())]
            self.waiting.append(event.request_id)
            return []
        if isinstance(event, HTTPResponseReceived):
            answers: list[Action] = [respond(event.request_id, b"owner %d" % event.status)]
            for rid in self.waiting:
                answers.append(Log(level=LogLevel.INFO, message="shared", request_id=rid))
                answers.append(respond(rid, b"waiter %d" % event.status))
            self.owner, self.waiting = None, []
            return answers
        return []


def respond(request_id: int, body: bytes) -> Respond:
    return Respond(request_id=request_id, status=200, headers=(), body=body)


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    yield server
    server.close()


# -- a server of each kind in a thread of its own, stopped afterwards ------------------


class Running:
    def __init__(self, port: int, stop: Callable[[], None], thread: threading.Thread) -> None:
        self.port, self._stop, self._thread = port, stop, thread

    def close(self) -> None:
        self._stop()
        self._thread.join(10)
        assert not self._thread.is_alive()


def run_in_thread(kind: str, gateway: Any, **kwargs: Any) -> Running:
    ready: list[int] = []
    stopper: list[Callable[[], None]] = []
    started = threading.Event()

    def on_ready(host: str, port: int) -> None:
        ready.append(port)
        started.set()

    def target() -> None:
        if kind == "trio":
            trio.run(_trio_main, gateway, on_ready, stopper, kwargs)
        elif kind == "asyncio":
            asyncio.run(_asyncio_main(gateway, on_ready, stopper, kwargs))
        else:
            h11_blocking.serve(
                host="127.0.0.1",
                port=0,
                gateway=gateway,
                on_ready=on_ready,
                on_server=lambda server: stopper.append(server.shutdown),
                outbound=SyncOutbound(ssl_context=ssl_context()),
                grace=2,
                **kwargs,
            )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert started.wait(10)
    return Running(ready[0], lambda: stopper[0](), thread)


async def _trio_main(gateway: Any, on_ready: Any, stopper: list[Any], kwargs: Any) -> None:
    shutdown = trio.Event()
    token = trio.lowlevel.current_trio_token()
    stopper.append(lambda: token.run_sync_soon(shutdown.set))
    async with Outbound(ssl_context=ssl_context()) as outbound:
        await trio_driver.serve(
            host="127.0.0.1",
            port=0,
            gateway=gateway,
            on_ready=on_ready,
            shutdown=shutdown,
            outbound=outbound,
            grace=2,
            **kwargs,
        )


async def _asyncio_main(gateway: Any, on_ready: Any, stopper: list[Any], kwargs: Any) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopper.append(lambda: loop.call_soon_threadsafe(shutdown.set))
    async with Outbound(ssl_context=ssl_context()) as outbound:
        await asyncio_driver.serve(
            host="127.0.0.1",
            port=0,
            gateway=gateway,
            on_ready=on_ready,
            shutdown=shutdown,
            outbound=outbound,
            grace=2,
            **kwargs,
        )


def get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = Client(sock)
        status, _, body = client.get(path)
        return status, body


@pytest.mark.parametrize("kind", ["trio", "asyncio", "h11"])
def test_a_shared_outcome_answers_the_request_waiting_for_it(
    kind: str, upstream: StreamingUpstream
) -> None:
    server = run_in_thread(kind, SharedFetch(upstream.url))
    try:
        results: dict[str, tuple[int, bytes]] = {}

        def fetch(path: str) -> None:
            results[path] = get(server.port, path)

        owner = threading.Thread(target=fetch, args=("/a",))
        owner.start()
        upstream.wait_for(1)
        waiter = threading.Thread(target=fetch, args=("/b",))
        waiter.start()
        owner.join(10)
        waiter.join(10)
        assert results == {"/a": (200, b"owner 200"), "/b": (200, b"waiter 200")}
    finally:
        server.close()


def test_the_asgi_adapter_routes_a_shared_outcome_too(upstream: StreamingUpstream) -> None:
    app = GatewayApp(SharedFetch(upstream.url), outbound=None)

    async def one(path: str, delay: float) -> tuple[int, bytes]:
        await anyio.sleep(delay)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode()}
        scope.update(headers=[(b"host", b"t")], query_string=b"", http_version="1.1")
        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def main() -> dict[str, tuple[int, bytes]]:
        results: dict[str, tuple[int, bytes]] = {}

        async def run(path: str, delay: float) -> None:
            results[path] = await one(path, delay)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, "/a", 0)
            tasks.start_soon(run, "/b", 0.2)
        await app.aclose()
        return results

    assert anyio.run(main) == {"/a": (200, b"owner 200"), "/b": (200, b"waiter 200")}


# -- the outbound pool -----------------------------------------------------------------


def test_the_async_pool_serves_many_waiting_requests_quickly(upstream: StreamingUpstream) -> None:
    async def main() -> float:
        async with Outbound(max_connections=20, ssl_context=ssl_context()) as outbound:

            async def one(index: int) -> None:
                action = ForwardUpstream(
                    request_id=index,
                    method="GET",
                    url=f"{upstream.url}/echo?{index}",
                    headers=(),
                    body_limit=0,
                    connect_timeout=5,
                    read_timeout=10,
                )

                async def nothing() -> Any:
                    return
                    yield

                result = await outbound.forward(action, nothing(), content_length=0)
                assert not isinstance(result, Exception) and isinstance(result, tuple)
                event, body = result
                chunks = [chunk async for chunk in body]
                await body.aclose()
                assert event.status == 200
                assert json.loads(b"".join(chunks))["target"] == f"/echo?{index}"

            started = time.monotonic()
            async with anyio.create_task_group() as tasks:
                for index in range(300):
                    tasks.start_soon(one, index)
            return time.monotonic() - started

    assert anyio.run(main) < 10
    assert upstream.connections <= 20  # kept alive and reused, never over the limit


def test_the_sync_outbound_streams_and_maps_failures_like_the_async_one(
    upstream: StreamingUpstream,
) -> None:
    def forward(request_id: int, url: str) -> ForwardUpstream:
        return ForwardUpstream(
            request_id=request_id,
            method="POST",
            url=url,
            headers=(("content-type", "x/y"),),
            body_limit=100,
            connect_timeout=2,
            read_timeout=5,
        )

    def body() -> Iterator[bytes]:
        yield b"abc"
        yield b"def"

    def broken() -> Iterator[bytes]:
        yield b"x"
        raise ClientBodyError(FailureReason.CLIENT, "client went away")

    with SyncOutbound(ssl_context=ssl_context()) as outbound:
        result = outbound.forward(forward(1, upstream.url + "/echo"), body(), content_length=None)
        assert isinstance(result, tuple)
        event, stream = result
        answer = json.loads(b"".join(stream))
        stream.close()
        assert (event.status, answer["length"], answer["headers"]["transfer-encoding"]) == (
            200,
            6,
            "chunked",
        )
        failed = outbound.forward(forward(2, upstream.url + "/echo"), broken(), content_length=None)
        assert isinstance(failed, ActionFailed) and failed.reason is FailureReason.CLIENT
        too_big = outbound.forward(forward(3, upstream.url), body(), content_length=1000)
        assert isinstance(too_big, ActionFailed)
        assert too_big.reason is FailureReason.BODY_TOO_LARGE

        def send(request_id: int, url: str, timeout: float = 5) -> Event:
            action = SendHTTP(request_id=request_id, method="GET", url=url, headers=())
            return outbound.send(attrs.evolve(action, timeout=timeout))

        ok = send(4, upstream.url + "/echo")
        assert isinstance(ok, HTTPResponseReceived)
        assert json.loads(ok.body)["target"] == "/echo"
        refused = send(5, f"http://127.0.0.1:{free_port()}/")
        assert isinstance(refused, ActionFailed) and refused.reason is FailureReason.CONNECT
        slow = send(6, upstream.url + "/slow?seconds=2", timeout=0.3)
        assert isinstance(slow, ActionFailed) and slow.reason is FailureReason.TIMEOUT


class Relay:
    """A stand-in core: forward every request to ``upstream``, relay what comes back."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, RequestReceived):
            forward = ForwardUpstream(
                request_id=event.request_id,
                method="GET",
                url=self.upstream + event.target,
                headers=(),
                body_limit=0,
                connect_timeout=5,
                read_timeout=10,
            )
            return [forward]
        if isinstance(event, UpstreamResponded):
            kept = tuple(h for h in event.headers if h[0] == "content-length")
            return [RelayResponse(request_id=event.request_id, status=200, headers=kept)]
        return [respond(getattr(event, "request_id", 0), b"failed")]


def test_the_asgi_adapter_stops_relaying_when_the_client_leaves(
    upstream: StreamingUpstream,
) -> None:
    app = GatewayApp(Relay(upstream.url))
    size = 200 * 1024 * 1024

    async def main() -> int:
        sent = 0
        gone = anyio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal sent
            sent += len(message.get("body", b""))
            if sent > 1024 * 1024:
                gone.set()  # the client reads a megabyte, then leaves
            await anyio.sleep(0)

        path = f"/download?size={size}"
        scope = {"type": "http", "method": "GET", "path": "/download", "raw_path": b"/download"}
        scope.update(headers=[(b"host", b"t")], query_string=path.split("?")[1].encode())
        scope["http_version"] = "1.1"
        with anyio.fail_after(10):
            await app(scope, receive, send)
        await app.aclose()
        return sent

    assert 1024 * 1024 < anyio.run(main) < size // 4


class Echo:
    """A stand-in core that answers every request with its target."""

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, RequestReceived):
            return [respond(event.request_id, event.target.encode())]
        return []


@pytest.mark.parametrize("kind", ["trio", "asyncio"])
@pytest.mark.parametrize("http", PARSER_BACKENDS)
def test_each_async_driver_serves_on_either_parser(kind: str, http: str) -> None:
    server = run_in_thread(kind, Echo(), http=http)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            client = Client(sock)
            assert client.get("/one")[::2] == (200, b"/one")
            client.send(
                b"GET /two HTTP/1.1\r\nHost: t\r\n\r\nGET /three HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            assert [client.response()[2] for _ in range(2)] == [b"/two", b"/three"]
    finally:
        server.close()


def test_the_parser_option_and_the_blocking_driver() -> None:
    assert check_http("trio", None) == check_http("asyncio", None) == "httptools"
    assert check_http("asyncio", "h11") == "h11"
    assert check_http("h11", None) == check_http("h11", "h11") == "h11"
    with pytest.raises(ValueError, match="always parses with h11"):
        check_http("h11", "httptools")
    argv = ["serve", "--transport", "h11", "--http", "httptools", "--port", "0"]
    refused = subprocess.run(
        [sys.executable, "-m", "transports.cli", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert refused.returncode == 2
    assert "the h11 transport always parses with h11" in refused.stderr


# -- deadlines (pure bookkeeping: no clock, no sockets) ----------------------------------


def test_deadlines_cut_off_only_connections_past_their_current_deadline() -> None:
    expired: list[Connection] = []
    wakes: list[float] = []
    deadlines = Deadlines(expired.append, wakes.append)
    a, b, c = (Connection(ServerLimits(), peer, backend="h11") for peer in "abc")
    deadlines.set(a, 10.0)
    deadlines.set(b, 5.0)
    assert wakes == [10.0, 5.0]  # the sweeper is woken only for an earlier time
    deadlines.set(a, 20.0)  # moved later: nothing to do until 10 s, then re-armed
    deadlines.set(b, math.inf)  # no deadline (the core works): never cut off
    deadlines.set(c, 7.0)
    assert wakes == [10.0, 5.0]
    assert deadlines.sweep(8.0) == 10.0
    assert expired == [c] and c.is_expired
    assert deadlines.sweep(10.0) == 20.0  # a looked at and re-armed at its deadline
    assert expired == [c]
    deadlines.set(a, 12.0)  # earlier than armed (20): armed again at 12
    deadlines.sweep(12.0)
    assert expired == [c, a]
    assert deadlines.sweep(20.0) == math.inf  # the entry at 20 was stale: nothing happens
    assert expired == [c, a]


def test_deadlines_forget_closed_connections() -> None:
    expired: list[Connection] = []
    deadlines = Deadlines(expired.append, lambda when: None)
    conns = [Connection(ServerLimits(), str(i), backend="h11") for i in range(3000)]
    for index, conn in enumerate(conns):
        deadlines.set(conn, 100.0 + index)
    for conn in conns[:2500]:
        deadlines.discard(conn)
    assert len(deadlines) < 3000  # rebuilt without the closed ones
    deadlines.sweep(10_000.0)
    assert expired == conns[2500:]


def test_the_body_deadline_is_a_gap_and_a_minimum_rate_after_a_grace() -> None:
    timeouts = Timeouts(read=30, min_body_rate=1000)
    assert timeouts.body_deadline(100.0, received=0, waited=0.0) == 130.0
    # 10 s waited, 5,000 bytes: 30 + 5 - 10 = 25 s of waiting left; the gap rule is 30.
    assert timeouts.body_deadline(200.0, received=5_000, waited=10.0) == 225.0
    # 1 byte a second for 40 s: the grace is spent, the rate is far from met.
    assert timeouts.body_deadline(300.0, received=40, waited=40.0) < 300.0
    # Fast enough: the gap rule decides.
    assert timeouts.body_deadline(0.0, received=10**9, waited=5.0) == 30.0
    assert Timeouts(read=30, min_body_rate=0).body_deadline(0.0, 0, 1000.0) == 30.0


class BodyReader:
    """A stand-in core that reads each request's body, and records what it is fed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> list[Action]:
        self.events.append(event)
        if isinstance(event, RequestReceived):
            return [ReadBody(request_id=event.request_id, limit=10_000)]
        if isinstance(event, BodyReceived):
            return [respond(event.request_id, b"%d bytes" % len(event.body))]
        return []


@pytest.mark.parametrize("kind", ["trio", "asyncio", "h11"])
def test_a_body_cut_off_by_its_deadline_reaches_the_core_as_request_aborted(kind: str) -> None:
    gateway = BodyReader()
    timeouts = Timeouts(read=0.5, min_body_rate=50, header=5, idle=5)
    server = run_in_thread(kind, gateway, timeouts=timeouts)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
            started = time.monotonic()
            with contextlib.suppress(OSError):
                while time.monotonic() - started < 8:  # 10 B/s: every gap under 0.5 s
                    sock.sendall(b"x")
                    time.sleep(0.1)
            assert time.monotonic() - started < 8, "never cut off"
        deadline = time.monotonic() + 5
        while not any(isinstance(e, RequestAborted) for e in gateway.events):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        received = next(e for e in gateway.events if isinstance(e, RequestReceived))
        aborted = next(e for e in gateway.events if isinstance(e, RequestAborted))
        assert aborted.request_id == received.request_id
        assert not any(isinstance(e, BodyReceived) for e in gateway.events)
        assert get(server.port, "/read-nothing")[0] == 200  # GET: an empty body, read at once
    finally:
        server.close()


class OneWriteUpstream:
    """An upstream that answers every request with one ``sendall`` of head and body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            buffered = b""
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                _, _, buffered = buffered.partition(b"\r\n\r\n")
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body)
                conn.sendall(head + self.body)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("kind", ["trio", "asyncio", "h11"])
def test_a_small_proxied_answer_goes_out_in_one_write(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head, body and end of a small relayed answer are one write to the client, when the
    upstream's answer came in one piece (it did, ``take_ready`` saw the end)."""
    writes: list[bytes] = []
    if kind == "h11":
        real_sync = h11_blocking.BlockingServer._send

        def counting_sync(self: Any, conn: Any, data: bytes) -> None:
            writes.extend([data] if data else [])  # an empty write sends nothing
            real_sync(self, conn, data)

        monkeypatch.setattr(h11_blocking.BlockingServer, "_send", counting_sync)
    else:
        real_async = AsyncDriver._send

        async def counting_async(self: Any, conn: Any, data: bytes) -> None:
            writes.extend([data] if data else [])  # an empty write sends nothing
            await real_async(self, conn, data)

        monkeypatch.setattr(AsyncDriver, "_send", counting_async)
    upstream = OneWriteUpstream(b'{"small":true}')
    server = run_in_thread(kind, Relay(upstream.url))
    try:
        for _ in range(3):
            writes.clear()
            assert get(server.port, "/x") == (200, b'{"small":true}')
            assert len(writes) == 1, writes
            assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b'{"small":true}')
    finally:
        server.close()
        upstream.close()
