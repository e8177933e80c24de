"""WebSocket pass-through over real sockets, on every native driver (issue 10 item 2).

A real WebSocket echo upstream (wsproto over a loopback socket, one thread per
connection) and a real client (wsproto) talk through the gateway, run as
users run it (``sapg serve --transport trio|asyncio|h11``): text and binary
messages echo, close frames pass, a refused handshake is relayed as the
ordinary answer it is, an auth route without a token answers 401 with nothing
reaching the upstream, a handshake with a body is refused 400, an idle tunnel
is closed after ``--idle-timeout``, and another client is served while a
tunnel is open.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from .servers import Server, start

pytestmark = pytest.mark.timeout(120)

IDLE = 2.0
KINDS = ("trio", "asyncio", "h11", "asgi")


class EchoUpstream:
    """A WebSocket echo server on 127.0.0.1; ``/refuse`` answers 403 instead of accepting.

    ``handshakes`` lists the targets and headers of every handshake it saw.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.handshakes: list[tuple[str, dict[str, str]]] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        parts: list[str | bytes] = []  # a message's pieces, as wsproto hands them out
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        parts.append(event.data)
                        if not event.message_finished:
                            continue
                        event = type(event)(data=type(event.data)().join(parts))
                        parts.clear()
                    out = self._answer(ws, event)
                    if out is None:
                        return
                    with contextlib.suppress(OSError):
                        sock.sendall(out)
                if not data:
                    return

    def _answer(self, ws: WSConnection, event: Event) -> bytes | None:
        if isinstance(event, Request):
            headers = {name.decode(): value.decode() for name, value in event.extra_headers}
            headers["subprotocols"] = ",".join(event.subprotocols)  # wsproto keeps it apart
            self.handshakes.append((event.target, headers))
            if event.target.startswith("/refuse"):
                body = b"go away\n"
                reject = RejectConnection(
                    status_code=403,
                    headers=[(b"content-type", b"text/plain"), (b"content-length", b"8")],
                    has_body=True,
                )
                return ws.send(reject) + ws.send(RejectData(data=body))
            return ws.send(
                AcceptConnection(subprotocol=event.subprotocols[0] if event.subprotocols else None)
            )
        if isinstance(event, TextMessage):
            return ws.send(TextMessage(data="echo:" + event.data))
        if isinstance(event, BytesMessage):
            return ws.send(BytesMessage(data=b"echo:" + bytes(event.data)))
        if isinstance(event, Ping):
            return ws.send(event.response())
        if isinstance(event, CloseConnection):
            return ws.send(event.response()) if ws.state.name != "CLOSED" else b""
        return b""

    def close(self) -> None:
        self._closing = True
        self._listener.close()


class Client:
    """A wsproto client over one socket to the gateway."""

    def __init__(self, server: Server, target: str, headers: list[tuple[str, str]] | None = None):
        self.sock = server.connect(timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []
        extra = [(name.encode(), value.encode()) for name, value in headers or []]
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=f"127.0.0.1:{server.port}",
                    target=target,
                    extra_headers=extra,
                    subprotocols=["chat"],
                )
            )
        )

    def next_event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise EOFError("the gateway closed the connection")
        return self.pending.pop(0)

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.close()


def _config(port: int) -> dict[str, object]:
    return {
        "authorizer": {"type": "jwt", "secret": "ws-secret", "algorithm": "HS256"},
        "servers": [{"alias": "ws", "url": f"http://127.0.0.1:{port}"}],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {
                "method": "GET",
                "path": "/ws/{.+}",
                "integration": {"type": "http_proxy", "server": "ws"},
            },
            {
                "method": "GET",
                "path": "/private/{.+}",
                "auth": True,
                "integration": {"type": "http_proxy", "server": "ws"},
            },
        ],
    }


@pytest.fixture(scope="module", params=KINDS)
def gateway(
    request: pytest.FixtureRequest, echo: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp_path: Path = tmp_path_factory.mktemp(f"ws-{request.param}")
    server = start(
        request.param,
        _config(echo.port),
        tmp_path,
        args=["--idle-timeout", str(IDLE)],
        env={"SAPG_IDLE_TIMEOUT": str(IDLE)},  # the ASGI adapter's (uvicorn owns the rest)
    )
    try:
        yield server
    finally:
        server.stop()


def _plain_get(server: Server, target: str, headers: str = "") -> bytes:
    with server.connect() as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_messages_echo_both_ways_and_another_client_is_served_meanwhile(
    gateway: Server, echo: EchoUpstream
) -> None:
    client = Client(gateway, "/ws/chat?room=1")
    try:
        accepted = client.next_event()
        assert isinstance(accepted, AcceptConnection), accepted
        assert accepted.subprotocol == "chat"
        headers = {name.decode().lower(): value.decode() for name, value in accepted.extra_headers}
        assert headers.get("x-powered-by") == "sapg"
        target, seen = echo.handshakes[-1]
        assert target == "/chat?room=1"
        assert seen["subprotocols"] == "chat"
        client.send(TextMessage(data="hello"))
        reply = client.next_event()
        assert isinstance(reply, TextMessage) and reply.data == "echo:hello"
        # The tunnel stays open while another client is served.
        assert _plain_get(gateway, "/health").startswith(b"HTTP/1.1 200")
        payload = bytes(range(256)) * 300  # several reads' worth, both ways
        client.send(BytesMessage(data=payload))
        received = b""
        while len(received) < len(payload) + 5:
            event = client.next_event()
            assert isinstance(event, BytesMessage), event
            received += bytes(event.data)
        assert received == b"echo:" + payload
        client.send(CloseConnection(code=4001, reason="bye"))  # the upstream echoes the code
        closed = client.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 4001
    finally:
        client.close()


def test_no_token_on_an_auth_route_is_401_and_nothing_reaches_the_upstream(
    gateway: Server, echo: EchoUpstream
) -> None:
    before = len(echo.handshakes)
    client = Client(gateway, "/private/chat")
    try:
        rejected = client.next_event()
        assert isinstance(rejected, RejectConnection), rejected
        assert rejected.status_code == 401
    finally:
        client.close()
    assert len(echo.handshakes) == before


def test_a_refused_handshake_is_relayed_as_an_ordinary_answer(gateway: Server) -> None:
    client = Client(gateway, "/ws/refuse")
    try:
        rejected = client.next_event()
        assert isinstance(rejected, RejectConnection), rejected
        assert rejected.status_code == 403
        body = b""
        while True:
            event = client.next_event()
            assert isinstance(event, RejectData)
            body += bytes(event.data)
            if event.body_finished:
                break
        assert body == b"go away\n"
    finally:
        client.close()


def test_a_handshake_with_a_body_is_refused_400(gateway: Server, echo: EchoUpstream) -> None:
    if gateway.kind == "asgi":
        pytest.skip("under ASGI the server reads the handshake, and a body is its business")
    before = len(echo.handshakes)
    answer = _plain_get(
        gateway,
        "/ws/chat",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 2\r\n\r\nab",
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert len(echo.handshakes) == before


def test_an_idle_tunnel_is_closed_after_the_idle_timeout(gateway: Server) -> None:
    client = Client(gateway, "/ws/idle")
    try:
        assert isinstance(client.next_event(), AcceptConnection)
        client.send(TextMessage(data="once"))
        assert isinstance(client.next_event(), TextMessage)
        started = time.monotonic()
        client.sock.settimeout(IDLE * 5)
        # Nothing moves: the gateway closes the tunnel. A native driver sends no close
        # frame (the bytes are not its own): wsproto reports an abnormal closure. The
        # ASGI adapter frames the messages itself, and says "going away".
        closed = client.next_event()
        expected = 1001 if gateway.kind == "asgi" else 1006
        assert isinstance(closed, CloseConnection) and closed.code == expected, closed
        assert time.monotonic() - started >= IDLE * 0.5  # not at once: after the idle wait
    finally:
        client.close()
