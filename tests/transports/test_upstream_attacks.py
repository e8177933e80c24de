"""Hostile and broken upstreams behind a real gateway: trio, asyncio, blocking and ASGI (uvicorn).

Each upstream here is a small raw-socket server that misbehaves on purpose:

- it sends bytes beyond its response (a second response with a ``Set-Cookie``,
  or a body on a ``HEAD`` answer), at once or a moment later: another
  client's request must get a fresh, correct answer, never those bytes;
- it answers with both ``Content-Length`` and ``Transfer-Encoding``: 502 JSON,
  never relayed, and the next request works;
- it closes a kept-alive connection while idle, or as the next request
  arrives: a request with its body in hand is sent again on a new connection;
  a streamed one is not (502);
- one origin's connections are all held by clients dribbling their bodies:
  another origin's route still answers (the pool's limit is per origin), and
  the request over the limit waits at most the connect timeout (504).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .servers import Client, Server, StreamingUpstream, running

pytestmark = [pytest.mark.network, pytest.mark.timeout(90)]

KINDS = ["trio", "asyncio", "h11", "asgi"]
FRESH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfresh"
STOLEN = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=stolen\r\nContent-Length: 6\r\n\r\nstolen"

#: answer(connection index, request index on the connection, method, socket) -> keep serving?
Answer = Callable[[int, int, bytes, socket.socket], bool]


class RawUpstream:
    """A threaded raw-socket HTTP/1.1 upstream whose answers are bytes the test chooses."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[int, int, bytes]] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            index = self.connections
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, index), daemon=True).start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        sock.settimeout(10)
        buffer = b""
        with contextlib.suppress(OSError), sock:
            for number in range(100):
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                method = head.split(b" ", 1)[0]
                self.requests.append((index, number, method))
                if not self.answer(index, number, method, sock):
                    return


@contextlib.contextmanager
def upstream(answer: Answer) -> Iterator[RawUpstream]:
    server = RawUpstream(answer)
    try:
        yield server
    finally:
        server.close()


def proxy_config(**servers: str) -> dict[str, object]:
    return {
        "servers": [
            {"alias": alias, "url": url, "connect_timeout": 1, "read_timeout": 5}
            for alias, url in servers.items()
        ],
        "paths": [
            {
                "method": "ANY",
                "path": f"/{alias}/{{.+}}",
                "integration": {"type": "http_proxy", "server": alias},
            }
            for alias in servers
        ],
    }


def call(
    server: Server, method: str, target: str, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh client connection."""
    client = Client(server.connect(timeout=10))
    try:
        framing = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        client.send(f"{method} {target} HTTP/1.1\r\nHost: t\r\n{framing}\r\n".encode() + body)
        return client.response(method)
    finally:
        client.close()


# -- leftover bytes ------------------------------------------------------------------------


def smuggler(first: bytes, *, late: bool) -> Answer:
    """The first answer on the first connection carries more than its response."""

    def answer(connection: int, number: int, method: bytes, sock: socket.socket) -> bool:
        if connection == 0 and number == 0:
            if late:
                sock.sendall(first)
                time.sleep(0.3)  # the gateway has long put the connection back in the pool
                sock.sendall(STOLEN)
            else:
                sock.sendall(first + STOLEN)
            return True
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if method == b"HEAD" else FRESH
        )
        return True

    return answer


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("late", [False, True], ids=["same-packet", "late"])
def test_bytes_after_a_response_never_reach_the_next_client(
    kind: str, late: bool, tmp_path: Path
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with (
        upstream(smuggler(ok, late=late)) as up,
        running(kind, proxy_config(up=up.url), tmp_path) as server,
    ):
        status, _, body = call(server, "GET", "/up/first")
        assert (status, body) == (200, b"ok")
        time.sleep(0.6)  # the late bytes have arrived at the pooled connection
        status, headers, body = call(server, "GET", "/up/second")
        assert (status, body) == (200, b"fresh")
        assert "set-cookie" not in headers
        assert up.connections == 2  # the first connection was discarded, not reused


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_on_a_head_answer_never_reaches_the_next_client(kind: str, tmp_path: Path) -> None:
    # A HEAD answer whose "body" is a whole response: reused, it would answer the next request.
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STOLEN)
    with (
        upstream(smuggler(head_answer, late=False)) as up,
        running(kind, proxy_config(up=up.url), tmp_path) as server,
    ):
        status, headers, body = call(server, "HEAD", "/up/first")
        assert (status, body) == (200, b"")
        status, headers, body = call(server, "GET", "/up/second")
        assert (status, body) == (200, b"fresh")
        assert "set-cookie" not in headers
        assert up.connections == 2


# -- Content-Length with Transfer-Encoding -------------------------------------------------


def desync(connection: int, number: int, method: bytes, sock: socket.socket) -> bool:
    if connection == 0 and number == 0:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n" + STOLEN
        )
        return True
    sock.sendall(FRESH)
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_answer_with_both_framings_is_502_json(kind: str, tmp_path: Path) -> None:
    with upstream(desync) as up, running(kind, proxy_config(up=up.url), tmp_path) as server:
        client = Client(server.connect(timeout=10))
        client.send(b"GET /up/a HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = client.response()
        assert status == 502
        assert json.loads(body) == {
            "error": "Upstream connection failed",
            "code": "UPSTREAM_CONNECTION_ERROR",
        }
        assert headers["x-powered-by"] == "sapg"
        client.send(b"GET /up/b HTTP/1.1\r\nHost: t\r\n\r\n")  # the same client goes on
        status, headers, body = client.response()
        assert (status, body) == (200, b"fresh")
        assert "set-cookie" not in headers
        client.close()
        assert "Transfer-Encoding" in server.log and "Content-Length" in server.log


# -- stale pooled connections -----------------------------------------------------------------


def closes_when_idle(connection: int, number: int, method: bytes, sock: socket.socket) -> bool:
    sock.sendall(FRESH)
    time.sleep(0.1)
    return False  # closed while the gateway holds it idle in its pool


def closes_on_the_second_request(
    connection: int, number: int, method: bytes, sock: socket.socket
) -> bool:
    if number == 1:
        return False  # read the request, close without a byte of answer (the keep-alive race)
    sock.sendall(FRESH)
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_the_upstream_closed_while_idle_is_not_used(kind: str, tmp_path: Path) -> None:
    with (
        upstream(closes_when_idle) as up,
        running(kind, proxy_config(up=up.url), tmp_path) as server,
    ):
        for index in range(3):
            status, _, body = call(server, "GET", f"/up/{index}")
            assert (status, body) == (200, b"fresh"), index
            time.sleep(0.3)
        assert up.connections == 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_lost_on_a_pooled_connection_is_retried_when_nothing_was_sent(
    kind: str, tmp_path: Path
) -> None:
    with (
        upstream(closes_on_the_second_request) as up,
        running(kind, proxy_config(up=up.url), tmp_path) as server,
    ):
        assert call(server, "GET", "/up/one")[::2] == (200, b"fresh")
        # On the pooled connection the upstream reads the request and closes: no
        # byte of an answer came back and the body is in hand, so it is sent again.
        assert call(server, "GET", "/up/two")[::2] == (200, b"fresh")
        assert up.connections == 2
        assert [(c, n) for c, n, _ in up.requests] == [(0, 0), (0, 1), (1, 0)]
        # A body streamed from the client cannot be sent again: the failure is the answer.
        status, _, body = call(server, "POST", "/up/three", body=b"hello")
        assert status == 502
        assert json.loads(body)["code"] == "UPSTREAM_CONNECTION_ERROR"
        assert [(c, n) for c, n, _ in up.requests][3:] == [(1, 1)]
        assert up.connections == 2


# -- pool starvation ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_clients_holding_one_origins_connections_do_not_starve_another(
    kind: str, tmp_path: Path
) -> None:
    slow, healthy = StreamingUpstream(), StreamingUpstream()
    env = {"SAPG_UPSTREAM_CONNECTIONS_PER_ORIGIN": "3"}
    dribblers: list[Client] = []
    try:
        with running(kind, proxy_config(a=slow.url, b=healthy.url), tmp_path, env=env) as server:
            for _ in range(4):  # one more than origin A may have
                client = Client(server.connect(timeout=10))
                client.send(b"POST /a/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nx")
                dribblers.append(client)
            slow.wait_for(3)  # three forwarded, their bodies still coming
            for index in range(3):  # origin B answers while origin A is full
                status, _, body = call(server, "GET", f"/b/echo?{index}")
                assert status == 200
                assert json.loads(body)["target"] == f"/echo?{index}"
                for client in dribblers[:3]:
                    client.send(b"x")  # keep dribbling
            # The fourth waited for a slot of origin A, at most its connect timeout (1 s).
            status, _, body = dribblers[3].response("POST")
            assert status == 504
            assert json.loads(body)["code"] == "UPSTREAM_TIMEOUT"
            assert slow.connections == 3
            # The three finish their bodies and are answered.
            for client in dribblers[:3]:
                client.send(b"x" * (1000 - 4))
                status, _, body = client.response("POST")
                assert (status, json.loads(body)["length"]) == (200, 1000)
    finally:
        for client in dribblers:
            client.close()
        slow.close()
        healthy.close()
