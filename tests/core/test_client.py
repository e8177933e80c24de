"""The sans-IO HTTP/1.1 client: rendering, response events, and when a connection is reusable.

No sockets: bytes in, events out, on both parser backends (httptools is the
default, h11 the reference). A differential corpus holds the two to the same
events, or to both refusing.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sapg_core import (
    ClientConnection,
    ClientEvent,
    ParserBackend,
    ResponseData,
    ResponseEnd,
    ResponseHead,
    ResponsePending,
    UpstreamProtocolError,
    check_request,
    split_upstream_url,
)

BACKENDS: list[ParserBackend] = ["httptools", "h11"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ParserBackend:
    value: ParserBackend = request.param
    return value


def start(conn: ClientConnection, method: str = "GET", *, length: int | None = 0) -> bytes:
    head = conn.start_request(method, "/x", (), authority="up", content_length=length)
    return head + conn.end_request()


def drain(conn: ClientConnection) -> list[ClientEvent]:
    """Every event until the connection needs data or the response ends."""
    events: list[ClientEvent] = []
    while True:
        event = conn.next_event()
        if isinstance(event, ResponsePending):
            return events
        events.append(event)
        if isinstance(event, ResponseEnd):
            return events


def respond(
    backend: ParserBackend,
    data: bytes,
    *,
    method: str = "GET",
    bytewise: bool = False,
    eof: bool = False,
) -> list[object]:
    """Feed one response; the events with body data joined, or the error's text."""
    conn = ClientConnection(backend)
    start(conn, method)
    events: list[ClientEvent] = []
    try:
        for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
            conn.receive_data(piece)
            events += drain(conn)
        if eof:
            conn.receive_data(b"")
            events += drain(conn)
    except UpstreamProtocolError as exc:
        return ["error", exc.detail]
    merged: list[object] = []
    body = b""
    for event in events:
        if isinstance(event, ResponseData):
            body += event.data
        else:
            if isinstance(event, ResponseEnd):
                merged.append(body)
            merged.append(event)
    return merged


def ok_head(**fields: object) -> ResponseHead:
    values: dict[str, object] = {
        "status": 200,
        "reason": "OK",
        "headers": (),
        "http_version": "1.1",
        "content_length": None,
    }
    values.update(fields)
    return ResponseHead(**values)  # type: ignore[arg-type]


# -- rendering ---------------------------------------------------------------------------


def test_a_request_head_adds_host_and_the_callers_framing() -> None:
    conn = ClientConnection()
    headers = (("X-A", "1"), ("content-length", "99"), ("Transfer-Encoding", "gzip"))
    head = conn.start_request("POST", "/p?q=1", headers, authority="h:81", content_length=5)
    assert head == (b"POST /p?q=1 HTTP/1.1\r\nhost: h:81\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n")
    assert conn.send_body(b"hello") == b"hello"
    assert conn.end_request() == b""


def test_a_given_host_is_kept_and_a_get_without_body_has_no_framing() -> None:
    conn = ClientConnection()
    head = conn.start_request("GET", "/", (("Host", "other"),), authority="h", content_length=0)
    assert head == b"GET / HTTP/1.1\r\nHost: other\r\n\r\n"
    post = ClientConnection().start_request("POST", "/", (), authority="h", content_length=0)
    assert b"content-length: 0\r\n" in post


def test_a_chunked_request_body_is_framed() -> None:
    conn = ClientConnection()
    head = conn.start_request("PUT", "/", (), authority="h", content_length=None)
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert conn.send_body(b"") == b""
    assert conn.send_body(b"x" * 17) == b"11\r\n" + b"x" * 17 + b"\r\n"
    assert conn.end_request() == b"0\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        (("x", "a\r\nset-cookie: stolen"),),
        (("x", "a\nb"),),
        (("x", "a\x00b"),),
        (("x y", "1"),),
        (("x:y", "1"),),
        (("", "1"),),
        (("x\r\n", "1"),),
        (("x", "caf\u20ac"),),
        (("a", "1"), ("", "2")),
        (("a", "1"), ("b:", "2")),
        ((":", "1"),),
        (("a", "1"), ("b", "2"), ("c", "3\n")),
    ],
)
def test_rendering_refuses_what_could_split_a_request(headers: tuple[tuple[str, str]]) -> None:
    conn = ClientConnection()
    with pytest.raises(UpstreamProtocolError):
        conn.start_request("GET", "/", headers, authority="h", content_length=0)


@pytest.mark.parametrize(("method", "target"), [("GE T", "/"), ("GET", "/a b"), ("GET", "/\r\n")])
def test_rendering_refuses_a_malformed_method_or_target(method: str, target: str) -> None:
    with pytest.raises(UpstreamProtocolError):
        ClientConnection().start_request(method, target, (), authority="h", content_length=0)


def test_check_request_is_the_rendering_check() -> None:
    check_request("GET", "/a?b", (("x", "1"),))
    check_request("GET", "/", (("x-a", "1"), ("y", ""), ("z~!#", "a: b")))
    for method, target, headers in [
        ("GET", "/", (("x", "a\rb"),)),
        ("GET", "/ x", ()),
        ("G@T", "/", ()),
    ]:
        with pytest.raises(UpstreamProtocolError):
            check_request(method, target, headers)
    conn = ClientConnection()
    head = conn.start_request("GET", "/", (), authority="h", content_length=0, checked=True)
    assert head == b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"


def test_the_declared_request_length_is_held() -> None:
    conn = ClientConnection()
    conn.start_request("POST", "/", (), authority="h", content_length=3)
    with pytest.raises(UpstreamProtocolError):
        conn.send_body(b"abcd")
    short = ClientConnection()
    short.start_request("POST", "/", (), authority="h", content_length=3)
    short.send_body(b"ab")
    with pytest.raises(UpstreamProtocolError):
        short.end_request()


def test_the_backend_name_is_checked() -> None:
    with pytest.raises(ValueError):
        ClientConnection("nope")  # type: ignore[arg-type]


def test_urls_are_split_for_a_request() -> None:
    plain = split_upstream_url("http://Example.com/a/b?c=1&d")
    assert (plain.origin, plain.target, plain.authority) == (
        ("http", "example.com", 80),
        "/a/b?c=1&d",
        "example.com",
    )
    tls = split_upstream_url("https://h:8443")
    assert (tls.origin, tls.target, tls.authority) == (("https", "h", 8443), "/", "h:8443")
    v6 = split_upstream_url("http://[::1]:81/x")
    assert (v6.host, v6.authority) == ("::1", "[::1]:81")
    for bad in ("ftp://h/", "http:///x", "http://h:99999/", "nothing"):
        with pytest.raises(UpstreamProtocolError):
            split_upstream_url(bad)


# -- responses -----------------------------------------------------------------------------

SIMPLE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_content_length_response_ends_reusable(backend: ParserBackend, bytewise: bool) -> None:
    events = respond(backend, SIMPLE, bytewise=bytewise)
    head = ok_head(headers=(("content-type", "text/plain"), ("content-length", "5")))
    assert events == [attrs_evolve(head, content_length=5), b"hello", ResponseEnd(reusable=True)]


def attrs_evolve(head: ResponseHead, **changes: object) -> ResponseHead:
    import attrs

    return attrs.evolve(head, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_chunked_response_with_extensions_and_trailers(
    backend: ParserBackend, bytewise: bool
) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    events = respond(backend, data, bytewise=bytewise)
    head = ok_head(headers=(("transfer-encoding", "chunked"),))
    assert events == [head, b"hello world", ResponseEnd(reusable=True)]


def test_a_close_delimited_response_is_never_reusable(backend: ParserBackend) -> None:
    data = b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
    assert respond(backend, data, eof=True) == [
        ok_head(),
        b"until the end",
        ResponseEnd(reusable=False),
    ]


def test_a_connection_can_carry_the_next_request(backend: ParserBackend) -> None:
    conn = ClientConnection(backend)
    for index in range(3):
        start(conn)
        conn.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
        events = drain(conn)
        assert events[-1] == ResponseEnd(reusable=True), index
        assert conn.is_reusable
    assert conn.requests == 3


@pytest.mark.parametrize(
    "data",
    [
        SIMPLE + b"HTTP/1.1 200 OK\r\nSet-Cookie: stolen=1\r\nContent-Length: 0\r\n\r\n",
        SIMPLE + b"\r\n",
        SIMPLE + b"x",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\r\n",
    ],
)
def test_bytes_after_the_response_make_the_connection_unusable(
    backend: ParserBackend, data: bytes
) -> None:
    conn = ClientConnection(backend)
    start(conn)
    conn.receive_data(data)
    events = drain(conn)
    assert events[-1] == ResponseEnd(reusable=False)
    assert not conn.is_reusable
    with pytest.raises(UpstreamProtocolError):
        start(conn)


def test_a_body_on_a_head_answer_makes_the_connection_unusable(backend: ParserBackend) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    events = respond(backend, data, method="HEAD")
    head = ok_head(headers=(("content-length", "2"),), content_length=0)
    assert events == [head, b"", ResponseEnd(reusable=False)]
    clean = respond(backend, data[:-2], method="HEAD")
    assert clean == [head, b"", ResponseEnd(reusable=True)]


def test_bytes_arriving_while_idle_make_the_connection_unusable(backend: ParserBackend) -> None:
    conn = ClientConnection(backend)
    start(conn)
    conn.receive_data(SIMPLE)
    assert drain(conn)[-1] == ResponseEnd(reusable=True)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n")
    assert not conn.is_reusable
    eof = ClientConnection(backend)
    start(eof)
    eof.receive_data(SIMPLE)
    drain(eof)
    eof.receive_data(b"")
    assert not eof.is_reusable


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_close_or_http10_ends_the_connection(backend: ParserBackend, data: bytes) -> None:
    events = respond(backend, data)
    assert events[-1] == ResponseEnd(reusable=False)


def test_our_own_connection_close_ends_it_too(backend: ParserBackend) -> None:
    conn = ClientConnection(backend)
    conn.start_request("GET", "/", (("Connection", "close"),), authority="h", content_length=0)
    conn.end_request()
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert drain(conn)[-1] == ResponseEnd(reusable=False)


def test_a_response_before_the_request_body_is_sent_ends_the_connection(
    backend: ParserBackend,
) -> None:
    conn = ClientConnection(backend)
    conn.start_request("POST", "/", (), authority="h", content_length=10)
    conn.send_body(b"abc")
    conn.receive_data(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    events = drain(conn)
    assert isinstance(events[0], ResponseHead) and events[0].status == 413
    assert events[-1] == ResponseEnd(reusable=False)


def test_interim_answers_are_skipped(backend: ParserBackend) -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + SIMPLE
    )
    events = respond(backend, data)
    assert isinstance(events[0], ResponseHead) and events[0].status == 200
    assert events[1:] == [b"hello", ResponseEnd(reusable=True)]


def test_eof_before_any_response_byte_is_an_error_nothing_received(
    backend: ParserBackend,
) -> None:
    conn = ClientConnection(backend)
    start(conn)
    conn.receive_data(b"")
    with pytest.raises(UpstreamProtocolError, match="before a response"):
        conn.next_event()
    assert not conn.response_started
    partial = ClientConnection(backend)
    start(partial)
    partial.receive_data(b"HTTP/1.1 200")
    partial.receive_data(b"")
    with pytest.raises(UpstreamProtocolError):
        drain(partial)
    assert partial.response_started


def test_eof_in_the_body_is_an_error(backend: ParserBackend) -> None:
    assert respond(backend, SIMPLE[:-2], eof=True)[0] == "error"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    assert respond(backend, chunked, eof=True)[0] == "error"


HOSTILE = [
    # both framings: CL.TE desync material
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok",
    # two different lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
    # transfer codings we cannot relay
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nok",
    # broken heads
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\nFoo: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nFoo: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"ICE/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"garbage\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    # upgrades are not supported
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    # broken chunked bodies
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nbad trailer\r\n\r\n",
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_responses_are_refused_by_both_backends(
    backend: ParserBackend, data: bytes
) -> None:
    assert respond(backend, data, eof=True)[0] == "error"


def test_a_head_over_the_limit_is_refused(backend: ParserBackend) -> None:
    conn = ClientConnection(backend, max_head_bytes=1024)
    start(conn)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 2000 + b"\r\n")
    with pytest.raises(UpstreamProtocolError):
        drain(conn)


VALID = [
    SIMPLE,
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: x\r\n\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nz",
    b"HTTP/1.1 302 Found\r\nLocation: /x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nold",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n!",
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("data", VALID + HOSTILE)
def test_both_backends_give_the_same_events(data: bytes, method: str) -> None:
    """The differential test: the same events, or both refuse (the reasons may differ)."""
    for bytewise in (False, True):
        fast = respond("httptools", data, method=method, bytewise=bytewise, eof=True)
        reference = respond("h11", data, method=method, bytewise=bytewise, eof=True)
        if fast[:1] == ["error"] or reference[:1] == ["error"]:
            assert fast[0] == reference[0] == "error", (fast, reference)
        else:
            assert fast == reference


# -- generated responses ---------------------------------------------------------------------

_NAMES = st.sampled_from(["x-a", "Server", "set-cookie", "ETag", "vary", "x-b"])
_VALUES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500]))
    body = draw(st.binary(max_size=120))
    framing = draw(st.sampled_from(["length", "chunked", "close", "both", "two-lengths"]))
    lines = [f"HTTP/1.1 {status} Reason".encode()]
    lines += [
        f"{n}: {v}".encode() for n, v in draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=4))
    ]
    if framing in ("length", "both"):
        lines.append(b"Content-Length: %d" % len(body))
    if framing == "two-lengths":
        lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    if framing in ("chunked", "both"):
        lines.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 40), max_size=5))
        chunks, rest = [], body
        for size in sizes:
            piece, rest = rest[:size], rest[size:]
            if piece:
                chunks.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        if rest:
            chunks.append(b"%x\r\n%b\r\n" % (len(rest), rest))
        body = b"".join(chunks) + b"0\r\n\r\n"
    prefix = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.booleans()) else b""
    tail = draw(st.sampled_from([b"", b"", b"\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"x"]))
    return prefix + b"\r\n".join(lines) + b"\r\n\r\n" + body + tail


@settings(max_examples=300, deadline=None)
@given(
    data=responses(), method=st.sampled_from(["GET", "HEAD"]), cuts=st.lists(st.integers(1, 400))
)
def test_generated_responses_give_the_same_events_on_both_backends(
    data: bytes, method: str, cuts: list[int]
) -> None:
    pieces, offset = [], 0
    for cut in sorted(set(cuts)):
        if offset < cut < len(data):
            pieces.append(data[offset:cut])
            offset = cut
    pieces.append(data[offset:])
    results = []
    for backend in BACKENDS:
        conn = ClientConnection(backend)
        assert start(conn, method)
        events: list[object] = []
        try:
            for piece in [*pieces, b""]:
                conn.receive_data(piece)
                for event in drain(conn):
                    events.append(event.data if isinstance(event, ResponseData) else event)
        except UpstreamProtocolError:
            events.append("error")
        merged: list[object] = []
        for event in events:  # body bytes joined, whatever the reads' sizes
            if isinstance(event, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += event
            else:
                merged.append(event)
        results.append(merged)
    fast, reference = results
    if "error" in fast or "error" in reference:
        assert "error" in fast and "error" in reference, (fast, reference)
        assert fast[: fast.index("error")] == reference[: reference.index("error")]
    else:
        assert fast == reference
