"""WebSocket pass-through in the core: the proxy flow's decisions, the glue's switch, the client.

No sockets: events in, actions out; bytes into ``ServerConnection`` and
``ClientConnection``, events and bytes out, on both parser backends.
"""

from __future__ import annotations

import pytest

from sapg_core import (
    ActionFailed,
    BodyEnd,
    ClientConnection,
    ConnectionClosed,
    FailureReason,
    ForwardUpstream,
    LocalProtocolError,
    NeedData,
    OpenTunnel,
    RelayResponse,
    RequestHead,
    Respond,
    ResponseData,
    ResponseEnd,
    ResponseHead,
    ResponsePending,
    ServerConnection,
    UpstreamProtocolError,
    UpstreamResponded,
)

from .helpers import NOW, hs_token, make_gateway, receive

SECRET = "ws-secret"
CONFIG = {
    "authorizer": {"type": "jwt", "secret": SECRET, "algorithm": "HS256"},
    "servers": [{"alias": "ws", "url": "http://ws.internal:9000/base"}],
    "cors": {
        "allow_origins": ["https://app.example.com"],
        "allow_methods": ["GET", "OPTIONS"],
        "allow_headers": ["Authorization", "Sec-WebSocket-Protocol"],
    },
    "paths": [
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
        {
            "method": "ANY",
            "path": "/any/{.+}",
            "integration": {"type": "http_proxy", "server": "ws"},
        },
    ],
}
HANDSHAKE = (
    ("host", "gw.example.com"),
    ("upgrade", "websocket"),
    ("connection", "keep-alive, Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
    ("sec-websocket-protocol", "chat"),
    ("origin", "https://app.example.com"),
)
ACCEPT = (
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ("sec-websocket-protocol", "chat"),
    ("keep-alive", "timeout=5"),
)


def _forward(headers: tuple[tuple[str, str], ...] = HANDSHAKE, target: str = "/ws/chat"):  # type: ignore[no-untyped-def]
    gateway = make_gateway(CONFIG)
    request_id, actions = receive(gateway, "GET", target, headers)
    [forward] = actions
    assert isinstance(forward, ForwardUpstream)
    return gateway, request_id, forward


# -- the proxy flow's decisions ----------------------------------------------------------


def test_a_handshake_is_forwarded_as_an_upgrade_with_its_headers() -> None:
    _, _, forward = _forward()
    assert forward.upgrade is True
    assert forward.url == "http://ws.internal:9000/base/chat"
    sent = dict(forward.headers)
    assert sent["upgrade"] == "websocket"
    assert sent["connection"] == "upgrade"
    assert sent["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert sent["sec-websocket-version"] == "13"
    assert sent["sec-websocket-protocol"] == "chat"
    assert "host" not in sent  # the transport sets Host from the URL
    assert [name for name, _ in forward.headers].count("connection") == 1


def test_a_101_opens_the_tunnel_with_the_upstream_handshake_headers_decorated() -> None:
    gateway, request_id, _ = _forward()
    [tunnel] = gateway.handle(
        UpstreamResponded(request_id=request_id, status=101, headers=ACCEPT, now=NOW)
    )
    assert isinstance(tunnel, OpenTunnel)
    assert tunnel.request_id == request_id
    assert tunnel.route == "GET /ws/{.+}"
    got = dict(tunnel.headers)
    assert got["upgrade"] == "websocket"
    assert got["connection"] == "upgrade"
    assert got["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert got["sec-websocket-protocol"] == "chat"
    assert "keep-alive" not in got  # hop-by-hop
    assert got["x-powered-by"] == "sapg"
    assert got["access-control-allow-origin"] == "https://app.example.com"
    assert gateway.pending_count == 0


def test_a_refused_handshake_is_relayed_as_an_ordinary_answer() -> None:
    gateway, request_id, _ = _forward()
    headers = (("content-type", "text/plain"), ("content-length", "9"))
    [relay] = gateway.handle(
        UpstreamResponded(request_id=request_id, status=403, headers=headers, now=NOW)
    )
    assert isinstance(relay, RelayResponse)
    assert relay.status == 403


def test_a_101_without_upgrade_websocket_is_a_502() -> None:
    gateway, request_id, _ = _forward()
    actions = gateway.handle(
        UpstreamResponded(request_id=request_id, status=101, headers=(("upgrade", "h2c"),), now=NOW)
    )
    answer = actions[-1]
    assert isinstance(answer, Respond) and answer.status == 502


def test_a_failed_upstream_answers_as_for_any_request() -> None:
    gateway, request_id, _ = _forward()
    failure = ActionFailed(
        request_id=request_id, reason=FailureReason.CONNECT, detail="refused", now=NOW
    )
    answer = gateway.handle(failure)[-1]
    assert isinstance(answer, Respond) and answer.status == 502


@pytest.mark.parametrize(
    "extra", [("content-length", "5"), ("transfer-encoding", "chunked")], ids=["length", "chunked"]
)
def test_a_handshake_with_a_body_is_refused_400_before_anything_is_sent(
    extra: tuple[str, str],
) -> None:
    gateway = make_gateway(CONFIG)
    _, actions = receive(gateway, "GET", "/ws/chat", (*HANDSHAKE, extra))
    [answer] = actions
    assert isinstance(answer, Respond)
    assert answer.status == 400
    assert gateway.pending_count == 0


def test_a_declared_empty_body_is_no_body() -> None:
    _, _, forward = _forward((*HANDSHAKE, ("content-length", "0")))
    assert forward.upgrade is True


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", (("upgrade", "h2c"), ("connection", "Upgrade, HTTP2-Settings"))),
        ("GET", (("upgrade", "websocket"),)),  # no Connection: upgrade
        ("POST", (("upgrade", "websocket"), ("connection", "upgrade"))),
        ("get", (("upgrade", "websocket"), ("connection", "upgrade"))),
    ],
    ids=["h2c", "no-connection", "post", "lower-case-get"],
)
def test_other_upgrades_are_forwarded_as_plain_http(
    method: str, headers: tuple[tuple[str, str], ...]
) -> None:
    gateway = make_gateway(CONFIG)
    _, actions = receive(gateway, method, "/any/x", headers)
    [forward] = actions
    assert isinstance(forward, ForwardUpstream)
    assert forward.upgrade is False
    names = {name for name, _ in forward.headers}
    assert "upgrade" not in names and "connection" not in names


def test_no_token_on_an_auth_route_is_401_and_nothing_is_forwarded() -> None:
    gateway = make_gateway(CONFIG)
    _, actions = receive(gateway, "GET", "/private/chat", HANDSHAKE)
    [answer] = actions
    assert isinstance(answer, Respond)
    assert answer.status == 401
    assert dict(answer.headers)["access-control-allow-origin"] == "https://app.example.com"


def test_a_good_token_on_an_auth_route_forwards_the_upgrade() -> None:
    token = hs_token({"sub": "u1", "exp": NOW + 600}, SECRET)
    _, _, forward = _forward((*HANDSHAKE, ("authorization", f"Bearer {token}")), "/private/c")
    assert forward.upgrade is True


# -- the server glue's switch, on both parsers ---------------------------------------------

BACKENDS = ("httptools", "h11")
UPGRADE_REQUEST = (
    b"GET /ws/chat HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
#: A masked WebSocket text frame "hi" (what a client may send right after its handshake).
FRAME = b"\x81\x82\x01\x02\x03\x04" + bytes(a ^ b for a, b in zip(b"hi", b"\x01\x02", strict=True))
SWITCH_HEADERS = (
    ("upgrade", "websocket"),
    ("connection", "upgrade"),
    ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ("content-length", "0"),
)


def _through_head(conn: ServerConnection) -> RequestHead:
    head = conn.next_event()
    assert isinstance(head, RequestHead), head
    return head


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trailing", [b"", FRAME, FRAME + b"GET / HTTP/1.1\r\n\r\n"])
def test_the_switch_hands_over_the_bytes_after_the_head_unparsed(
    backend: str, trailing: bytes
) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(UPGRADE_REQUEST + trailing)
    head = _through_head(conn)
    assert head.content_length == 0
    assert isinstance(conn.next_event(), BodyEnd)
    out = conn.send_switch(SWITCH_HEADERS, date="Tue, 08 Dec 2026 01:00:00 GMT")
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"upgrade: websocket\r\n" in out and b"connection: upgrade\r\n" in out
    assert b"date: Tue, 08 Dec 2026 01:00:00 GMT\r\n" in out
    assert b"content-length" not in out and out.endswith(b"\r\n\r\n")
    assert conn.take_trailing() == trailing
    assert conn.take_trailing() == b""
    assert conn.is_switched
    assert not conn.is_keep_alive and not conn.has_unread_input and not conn.is_idle
    assert isinstance(conn.next_event(), ConnectionClosed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_switch_works_before_the_body_end_was_read(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(UPGRADE_REQUEST + FRAME)
    _through_head(conn)
    conn.send_switch(SWITCH_HEADERS)
    assert conn.take_trailing() == FRAME


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_head_split_over_reads_switches_with_the_later_bytes(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(UPGRADE_REQUEST[:20])
    assert isinstance(conn.next_event(), NeedData)
    conn.receive_data(UPGRADE_REQUEST[20:] + FRAME[:3])
    _through_head(conn)
    assert isinstance(conn.next_event(), BodyEnd)
    conn.send_switch(SWITCH_HEADERS)
    assert conn.take_trailing() == FRAME[:3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_upgrade_request_answered_normally_goes_on_as_http(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(UPGRADE_REQUEST + b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
    _through_head(conn)
    assert isinstance(conn.next_event(), BodyEnd)
    conn.send_response(403, (("content-type", "text/plain"),), b"no")
    head = _through_head(conn)
    assert head.target == "/next"
    assert not conn.is_switched


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_after_an_upgrade_request_answered_normally_are_parsed_then(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(UPGRADE_REQUEST + FRAME)
    _through_head(conn)
    assert isinstance(conn.next_event(), BodyEnd)
    conn.send_response(403, (), b"")
    # The frame is no HTTP request: refused once it is read as one.
    event = conn.next_event()
    assert not isinstance(event, RequestHead)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Content-Length: 2\r\n\r\nab",
    ],
    ids=["no-upgrade", "post-with-body"],
)
def test_only_a_bodyless_upgrade_request_can_switch(backend: str, request_bytes: bytes) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(request_bytes)
    _through_head(conn)
    while not isinstance(conn.next_event(), BodyEnd):
        pass
    with pytest.raises(LocalProtocolError):
        conn.send_switch(SWITCH_HEADERS)
    # Nothing changed: an ordinary answer still goes out.
    assert conn.send_response(200, (), b"").startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_switch_header_is_refused_and_changes_nothing(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(UPGRADE_REQUEST + FRAME)
    _through_head(conn)
    with pytest.raises(LocalProtocolError):
        conn.send_switch((("upgrade", "websocket\r\nx: y"),))
    conn.send_switch(SWITCH_HEADERS)
    assert conn.take_trailing() == FRAME


# -- the client side --------------------------------------------------------------------------

ANSWER_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
UPSTREAM_FRAME = b"\x81\x02hi"


def _client(backend: str, *, upgrade: bool) -> tuple[ClientConnection, bytes]:
    client = ClientConnection(backend)  # type: ignore[arg-type]
    head = client.start_request(
        "GET",
        "/chat",
        (("upgrade", "websocket"), ("connection", "upgrade")),
        authority="ws.internal",
        content_length=0,
        upgrade=upgrade,
    )
    return client, head + client.end_request()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [False, True])
def test_a_101_to_an_upgrade_is_a_head_and_the_rest_is_the_tunnel(
    backend: str, split: bool
) -> None:
    client, sent = _client(backend, upgrade=True)
    assert sent.startswith(b"GET /chat HTTP/1.1\r\n") and b"upgrade: websocket\r\n" in sent
    if split:
        client.receive_data(ANSWER_101[:10])
        assert isinstance(client.next_event(), ResponsePending)
        client.receive_data(ANSWER_101[10:] + UPSTREAM_FRAME)
    else:
        client.receive_data(ANSWER_101 + UPSTREAM_FRAME)
    head = client.next_event()
    assert isinstance(head, ResponseHead)
    assert head.status == 101
    assert dict(head.headers)["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert client.take_tunnel_bytes() == UPSTREAM_FRAME
    assert client.take_tunnel_bytes() == b""
    assert not client.is_reusable


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_101_unasked_is_still_an_error(backend: str) -> None:
    client, _ = _client(backend, upgrade=False)
    client.receive_data(ANSWER_101)
    with pytest.raises(UpstreamProtocolError):
        client.next_event()
    with pytest.raises(UpstreamProtocolError):
        client.take_tunnel_bytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_upgrade_is_an_ordinary_answer_on_a_connection_never_reused(
    backend: str,
) -> None:
    client, _ = _client(backend, upgrade=True)
    client.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    head = client.next_event()
    assert isinstance(head, ResponseHead) and head.status == 403
    data = client.next_event()
    assert isinstance(data, ResponseData) and data.data == b"no"
    end = client.next_event()
    assert isinstance(end, ResponseEnd)
    assert not end.reusable
    with pytest.raises(UpstreamProtocolError):
        client.take_tunnel_bytes()
