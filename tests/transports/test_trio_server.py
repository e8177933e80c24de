"""transports.trio_driver over real loopback sockets (port 0), with a stand-in gateway.

The stand-in implements just enough of ``handle()`` to drive every action
kind; end-to-end tests with the real Gateway live elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio
import trio_asyncio

from sapg_core import (
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
from transports._common import Timeouts
from transports._outbound import Outbound, default_ssl_context
from transports._services import ServiceRegistry, trio_native
from transports.trio_driver import serve

pytestmark = [pytest.mark.network, pytest.mark.timeout(20)]

ROOT = Path(__file__).resolve().parents[2]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class StandIn:
    """A tiny gateway: enough policy to exercise every action the driver carries out."""

    def __init__(self, upstream: str = "") -> None:
        self.upstream = upstream
        self.events: list[Event] = []

    def handle(self, event: Event) -> list[Action]:
        self.events.append(event)
        match event:
            case RequestReceived(request_id=rid, target=target) if target.startswith("/read"):
                return [ReadBody(request_id=rid, limit=100)]
            case RequestReceived(request_id=rid, target=target) if target.startswith("/call"):
                url = self.upstream + target.removeprefix("/call")
                return [SendHTTP(request_id=rid, method="GET", url=url, headers=(), timeout=5)]
            case RequestReceived(request_id=rid, target=target) if target.startswith("/proxy"):
                headers = tuple(h for h in event.headers if h[0] not in HOP_BY_HOP | {"host"})
                return [
                    ForwardUpstream(
                        request_id=rid,
                        method=event.method,
                        url=self.upstream + target.removeprefix("/proxy"),
                        headers=headers,
                        body_limit=1000,
                        connect_timeout=2,
                        read_timeout=30,
                    )
                ]
            case RequestReceived(request_id=rid, method=method, target=target):
                body = f"{method} {target}".encode()
                return [
                    Log(level=LogLevel.INFO, message="hi", request_id=rid),
                    text(rid, 200, body),
                ]
            case BodyReceived(request_id=rid, body=body):
                return [text(rid, 200, b"got " + body)]
            case HTTPResponseReceived(request_id=rid, status=status, body=body):
                return [text(rid, 200, b"called %d %s" % (status, body))]
            case UpstreamResponded(request_id=rid, status=status, headers=headers):
                kept = tuple(h for h in headers if h[0] not in HOP_BY_HOP)
                return [RelayResponse(request_id=rid, status=status, headers=kept)]
            case ActionFailed(request_id=rid, reason=FailureReason.BODY_TOO_LARGE):
                return [text(rid, 413, b"too large")]
            case ActionFailed(request_id=rid, reason=reason):
                return [text(rid, 502, reason.value.encode())]
            case _:
                return []


def text(request_id: int, status: int, body: bytes) -> Respond:
    headers = (("content-type", "text/plain"), ("x-powered-by", "stand-in"))
    return Respond(request_id=request_id, status=status, headers=headers, body=body)


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


@attrs.define
class Running:
    port: int
    shutdown: trio.Event
    done: trio.Event


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    return default_ssl_context(environ={})  # loading the system store is slow: once will do


@asynccontextmanager
async def running(gateway: StandIn, **kwargs: Any) -> AsyncIterator[Running]:
    shutdown, done = trio.Event(), trio.Event()

    async def run_server(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        async with Outbound(ssl_context=shared_ssl_context()) as outbound:
            await serve(
                host="127.0.0.1",
                port=0,
                gateway=gateway,
                shutdown=shutdown,
                outbound=outbound,
                task_status=task_status,
                **kwargs,
            )
        done.set()

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(run_server)
        yield Running(port=port, shutdown=shutdown, done=done)
        shutdown.set()


class Client:
    """A raw HTTP/1.1 client over a trio socket: bytes out, parsed responses in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        if self.buffer:  # (b"" would mean EOF)
            parser.receive_data(self.buffer)
        body, head = b"", None
        with trio.fail_after(10):
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    parser.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        assert head is not None
        self.buffer = parser.trailing_data[0]
        headers = {k.decode(): v.decode("latin-1") for k, v in head.headers}
        return head.status_code, headers, body

    async def is_closed_within(self, seconds: float) -> bool:
        """Whether the server closes within ``seconds``; then close our side too."""
        with trio.move_on_after(seconds):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            await self.stream.aclose()
            return True
        return False

    async def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        await self.send(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        return await self.response()


@attrs.define
class UpstreamState:
    port: int = 0
    received: trio.Event = attrs.Factory(trio.Event)
    requests: list[tuple[str, str, bytes]] = attrs.Factory(list)


async def start_upstream(nursery: trio.Nursery) -> UpstreamState:
    """A trio h11 upstream: echoes the request as JSON; ``/slow?SECONDS`` waits first."""
    state = UpstreamState()

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(h11.ProtocolError, trio.BrokenResourceError):
            await serve_one_connection(stream)  # a client may give up mid-request

    async def serve_one_connection(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request, body = None, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            target = request.target.decode()
            state.requests.append((request.method.decode(), target, body))
            state.received.set()
            if target.startswith("/slow"):
                await trio.sleep(float(target.partition("?")[2]))
            payload = json.dumps({"target": target, "size": len(body)}).encode()
            head = h11.Response(
                status_code=201, headers=[("x-upstream", "yes"), ("connection", "keep-alive")]
            )
            await stream.send_all(conn.send(head))
            await stream.send_all(conn.send(h11.Data(data=payload[:5])))
            await stream.send_all(
                conn.send(h11.Data(data=payload[5:])) + conn.send(h11.EndOfMessage())
            )
            conn.start_next_cycle()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    state.port = listeners[0].socket.getsockname()[1]
    return state


# -- keep-alive and pipelining ----------------------------------------------------------


@trio_test
async def test_keep_alive_two_requests_on_one_socket() -> None:
    gateway = StandIn()
    async with running(gateway) as server:
        client = await Client.connect(server.port)
        status, headers, body = await client.get("/one")
        assert (status, body) == (200, b"GET /one")
        assert headers["content-length"] == "8"
        assert headers["x-powered-by"] == "stand-in"
        assert "date" in headers
        status, _, body = await client.get("/two?x=1")
        assert (status, body) == (200, b"GET /two?x=1")
    first, second = (e for e in gateway.events if isinstance(e, RequestReceived))
    assert second.request_id > first.request_id
    assert (first.scheme, first.host, len(first.entropy)) == ("http", "test", 32)
    assert first.entropy != second.entropy
    assert abs(first.now - time.time()) < 10


@trio_test
async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running(StandIn()) as server:
        client = await Client.connect(server.port)
        await client.send(
            b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert (await client.response())[2] == b"GET /first"
        assert (await client.response())[2] == b"got abc"
        assert (await client.response())[2] == b"GET /third"


@trio_test
async def test_head_request_has_no_body() -> None:
    async with running(StandIn()) as server:
        client = await Client.connect(server.port)
        await client.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = await client.response("HEAD")
        assert (status, headers["content-length"], body) == (200, "7", b"")
        assert (await client.get("/after"))[2] == b"GET /after"


# -- protocol failures and limits ----------------------------------------------------------


@trio_test
async def test_malformed_request_gets_400_and_the_server_goes_on() -> None:
    async with running(StandIn()) as server:
        bad = await Client.connect(server.port)
        await bad.send(b"NONSENSE\r\n\r\n")
        status, headers, body = await bad.response()
        assert status == 400
        assert json.loads(body) == {"error": "Malformed HTTP request", "code": "BAD_REQUEST"}
        assert headers["connection"] == "close"
        assert headers["x-powered-by"] == "sapg"
        assert await bad.is_closed_within(5)
        good = await Client.connect(server.port)
        assert (await good.get("/fine"))[0] == 200


@trio_test
async def test_header_too_large_gets_431() -> None:
    async with running(StandIn(), limits=ServerLimits(max_header_bytes=1024)) as server:
        client = await Client.connect(server.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        status, _, body = await client.response()
        assert status == 431
        assert json.loads(body)["code"] == "HEADERS_TOO_LARGE"
        assert await client.is_closed_within(5)


@trio_test
async def test_declared_body_too_large_gets_413() -> None:
    async with running(StandIn(), limits=ServerLimits(max_body_bytes=1000)) as server:
        client = await Client.connect(server.port)
        # The whole body goes out too: the server must still get its answer through.
        await client.send(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n")
        await client.send(b"x" * 50000)
        status, _, body = await client.response()
        assert status == 413
        assert json.loads(body) == {"error": "Request body too large", "code": "BODY_TOO_LARGE"}
        assert await client.is_closed_within(5)


@trio_test
async def test_streamed_body_over_the_limits_is_told_to_the_core() -> None:
    gateway = StandIn()
    async with running(gateway, limits=ServerLimits(max_body_bytes=150)) as server:
        for size in (120, 200):  # over the action's limit (100), then the server's (150)
            client = await Client.connect(server.port)
            await client.send(
                b"POST /read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            await client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (size, b"y" * size))
            status, headers, body = await client.response()
            assert (status, body) == (413, b"too large")
            assert headers["connection"] == "close"
            assert await client.is_closed_within(5)
    failures = [e for e in gateway.events if isinstance(e, ActionFailed)]
    assert [f.reason for f in failures] == [FailureReason.BODY_TOO_LARGE] * 2


@trio_test
async def test_read_body_with_expect_continue() -> None:
    async with running(StandIn()) as server:
        client = await Client.connect(server.port)
        await client.send(
            b"PUT /read HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(5):
            interim = await client.stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await client.send(b"hello")
        assert (await client.response())[2] == b"got hello"


# -- timeouts and disconnects ----------------------------------------------------------------


@trio_test
async def test_a_head_is_cut_off_at_the_header_timeout_and_a_stalled_body_at_the_read_timeout() -> (
    None
):
    gateway = StandIn()
    timeouts = Timeouts(read=0.3, idle=30, header=0.8, linger=0.1)
    async with running(gateway, timeouts=timeouts) as server:
        stalled = await Client.connect(server.port)
        await stalled.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # then nothing: a gap over read
        started = trio.current_time()
        assert await stalled.is_closed_within(5)
        assert 0.25 < trio.current_time() - started < 0.75

        dribbled = await Client.connect(server.port)
        started = trio.current_time()
        with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
            for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100:
                await dribbled.send(bytes([byte]))  # every gap well under the read timeout
                await trio.sleep(0.1)
        assert await dribbled.is_closed_within(5)
        assert 0.7 < trio.current_time() - started < 3  # the whole head was due in 0.8 s

        body = await Client.connect(server.port)
        await body.send(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\nonly ten..")
        started = trio.current_time()
        assert await body.is_closed_within(5)
        assert 0.25 < trio.current_time() - started < 3
    assert isinstance(gateway.events[-1], RequestAborted)


@trio_test
async def test_idle_keep_alive_connection_is_closed() -> None:
    async with running(StandIn(), timeouts=Timeouts(read=30, idle=0.3)) as server:
        client = await Client.connect(server.port)
        await client.get("/")
        started = trio.current_time()
        assert await client.is_closed_within(5)
        assert 0.25 < trio.current_time() - started < 3


@trio_test
async def test_client_disconnect_mid_body_aborts_the_request() -> None:
    gateway = StandIn()
    async with running(gateway) as server:
        client = await Client.connect(server.port)
        await client.send(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\npartial")
        await trio.sleep(0.1)
        await client.stream.aclose()
        with trio.fail_after(5):
            while not any(isinstance(e, RequestAborted) for e in gateway.events):
                await trio.sleep(0.02)
        received = next(e for e in gateway.events if isinstance(e, RequestReceived))
        aborted = next(e for e in gateway.events if isinstance(e, RequestAborted))
        assert aborted.request_id == received.request_id


# -- outbound actions ---------------------------------------------------------------------------


@trio_test
async def test_forward_and_relay_through_a_real_upstream() -> None:
    async with trio.open_nursery() as nursery:
        upstream = await start_upstream(nursery)
        gateway = StandIn(f"http://127.0.0.1:{upstream.port}")
        async with running(gateway) as server:
            client = await Client.connect(server.port)
            await client.send(
                b"POST /proxy/echo?q=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            await client.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            status, headers, body = await client.response()
            assert status == 201
            assert headers["x-upstream"] == "yes"
            assert headers["transfer-encoding"] == "chunked"  # relayed as it came
            assert json.loads(body) == {"target": "/echo?q=1", "size": 11}
            assert upstream.requests == [("POST", "/echo?q=1", b"hello world")]
            status, _, body = await client.get("/call/echo")  # SendHTTP, same socket
            assert (status, body) == (200, b'called 201 {"target": "/echo", "size": 0}')
            status, _, body = await client.get("/proxy/echo")
            assert (status, json.loads(body)["target"]) == (201, "/echo")
            # A chunked body over the action's limit (1000) fails the action mid-stream.
            await client.send(
                b"POST /proxy/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            await client.send(b"400\r\n" + b"a" * 1024 + b"\r\n" * 2 + b"400\r\n" + b"b" * 1024)
            status, headers, body = await client.response()
            assert (status, body, headers["connection"]) == (413, b"too large", "close")
            assert await client.is_closed_within(5)
        nursery.cancel_scope.cancel()


@trio_test
async def test_forward_failure_goes_back_to_the_core() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    gateway = StandIn(f"http://127.0.0.1:{closed_port}")
    async with running(gateway) as server:
        client = await Client.connect(server.port)
        status, _, body = await client.get("/proxy/x")
        assert (status, body) == (502, b"connect")
        big = b"z" * 2000  # declared over the action's body_limit of 1000: fails up front
        await client.send(
            b"POST /proxy/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + big
        )
        assert (await client.response())[:3:2] == (413, b"too large")


# -- shutdown ----------------------------------------------------------------------------------


@trio_test
async def test_graceful_shutdown_finishes_the_in_flight_request() -> None:
    async with trio.open_nursery() as nursery:
        upstream = await start_upstream(nursery)
        gateway = StandIn(f"http://127.0.0.1:{upstream.port}")
        async with running(gateway, grace=10) as server:
            idle = await Client.connect(server.port)
            await idle.get("/")
            busy = await Client.connect(server.port)
            await busy.send(b"GET /proxy/slow?0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
            with trio.fail_after(5):
                await upstream.received.wait()
            started = trio.current_time()
            server.shutdown.set()
            assert await idle.is_closed_within(2)  # idle keep-alive: closed at once
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", server.port)  # no longer accepting
            status, headers, body = await busy.response()
            assert (status, json.loads(body)["target"]) == (201, "/slow?0.5")
            assert headers["connection"] == "close"
            assert await busy.is_closed_within(2)
            with trio.fail_after(5):
                await server.done.wait()
            assert trio.current_time() - started < 3
        nursery.cancel_scope.cancel()


@trio_test
async def test_shutdown_cancels_what_outlives_the_grace() -> None:
    async with trio.open_nursery() as nursery:
        upstream = await start_upstream(nursery)
        gateway = StandIn(f"http://127.0.0.1:{upstream.port}")
        async with running(gateway, grace=0.3) as server:
            busy = await Client.connect(server.port)
            await busy.send(b"GET /proxy/slow?60 HTTP/1.1\r\nHost: t\r\n\r\n")
            with trio.fail_after(5):
                await upstream.received.wait()
            started = trio.current_time()
            server.shutdown.set()
            with trio.fail_after(5):
                await server.done.wait()
            assert trio.current_time() - started < 2
            assert await busy.is_closed_within(2)
        nursery.cancel_scope.cancel()


SCRIPT = textwrap.dedent(
    """
    import sys
    from sapg_core import Respond
    from transports.trio_driver import run

    class Gateway:
        def handle(self, event):
            return [Respond(request_id=event.request_id, status=200, headers=(), body=b"ok")]

    def ready(host, port):
        print(port, flush=True)

    sys.exit(run(gateway=Gateway(), host="127.0.0.1", port=0, on_ready=ready, grace=5))
    """
)


def test_run_exits_0_after_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
            proc.send_signal(signal.SIGTERM)  # with an idle keep-alive connection open
            assert proc.wait(timeout=10) == 0
            assert sock.recv(65536) == b""
    finally:
        proc.kill()
        proc.wait()


# -- the trio-asyncio loop ------------------------------------------------------------------------


@trio_native
class TrioOnly:
    async def fetch(self, request: object, env: object, ctx: object) -> str:
        return "trio"


@pytest.mark.parametrize(
    ("services", "opened"),
    [
        (None, False),
        (ServiceRegistry(), False),
        (ServiceRegistry(bindings={"trio": TrioOnly()}), False),
        (ServiceRegistry(bindings={"maybe-asyncio": object()}), True),
        (ServiceRegistry(services={"svc": TrioOnly(), "other": object()}), True),
    ],
)
@trio_test
async def test_the_asyncio_loop_is_opened_only_when_services_may_need_it(
    services: ServiceRegistry | None, opened: bool
) -> None:
    seen: list[bool] = []

    def on_ready(host: str, port: int) -> None:  # runs inside serve's context
        seen.append(trio_asyncio.current_loop.get() is not None)

    async with running(StandIn(), services=services, on_ready=on_ready) as server:
        client = await Client.connect(server.port)
        assert (await client.get("/"))[0] == 200
    assert seen == [opened]
