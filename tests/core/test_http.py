"""sapg_core._http: bytes in, events and bytes out; no sockets."""

from __future__ import annotations

import json

import h11
import pytest

from sapg_core._http import (
    PARSER_BACKENDS,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    HTTPEvent,
    NeedData,
    ProtocolFailure,
    RequestHead,
    ServerConnection,
    ServerLimits,
    render_response,
)
from sapg_core._wire import LocalProtocolError


@pytest.fixture(params=PARSER_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every case runs on both parsers: they must give the same events and bytes."""
    return str(request.param)


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nX-Thing: caf\xe9\r\n\r\n"


def events(conn: ServerConnection) -> list[HTTPEvent]:
    """Every event up to and including the first NeedData / ConnectionClosed / ProtocolFailure."""
    out: list[HTTPEvent] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if isinstance(event, NeedData | ConnectionClosed | ProtocolFailure):
            return out


def feed(conn: ServerConnection, data: bytes) -> list[HTTPEvent]:
    conn.receive_data(data)
    return events(conn)


def parse(data: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
    """Parse one response with an h11 client; return it and its body."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage)
            break
    return response, body


def header(response: h11.Response, name: bytes) -> list[bytes]:
    return [value for key, value in response.headers if key == name]


def failure_json(failure: HTTPEvent) -> tuple[h11.Response, object]:
    assert isinstance(failure, ProtocolFailure)
    response, body = parse(failure.response_bytes)
    assert response.status_code == failure.status
    assert header(response, b"content-type") == [b"application/json"]
    assert header(response, b"x-powered-by") == [b"sapg"]
    assert header(response, b"connection") == [b"close"]
    return response, json.loads(body)


# -- requests in -------------------------------------------------------------


def test_simple_get(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    assert conn.is_idle
    got = feed(conn, GET)
    assert got == [
        RequestHead(
            method="GET",
            target="/a?b=1",
            headers=(("host", "example.test"), ("x-thing", "caf\xe9")),
            http_version="1.1",
            keep_alive=True,
            content_length=0,
        ),
        BodyEnd(),
        NeedData(),
    ]
    assert not conn.is_idle


def test_body_split_across_reads(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(conn, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
    assert isinstance(got[0], RequestHead)
    assert got[0].content_length == 10
    assert got[1:] == [BodyChunk(data=b"01234"), NeedData()]
    assert feed(conn, b"56789") == [BodyChunk(data=b"56789"), BodyEnd(), NeedData()]


def test_chunked_body(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    raw = b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    got = feed(conn, raw)
    assert isinstance(got[0], RequestHead)
    assert got[0].content_length is None
    assert b"".join(e.data for e in got if isinstance(e, BodyChunk)) == b"abcde"
    assert got[-2:] == [BodyEnd(), NeedData()]


def test_http10_is_not_keep_alive(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(conn, b"GET / HTTP/1.0\r\n\r\n")
    head = got[0]
    assert isinstance(head, RequestHead)
    assert (head.http_version, head.keep_alive) == ("1.0", False)
    response, _ = parse(conn.send_response(200, (), b"hi"))
    assert header(response, b"connection") == [b"close"]
    assert not conn.is_keep_alive
    assert conn.next_event() == ConnectionClosed()


def test_connection_close_request(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n")
    assert isinstance(got[0], RequestHead)
    assert got[0].keep_alive is False
    conn.send_response(200, (), b"")
    assert conn.next_event() == ConnectionClosed()


def test_eof_between_requests_and_mid_body(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    assert feed(conn, b"") == [ConnectionClosed()]
    conn = ServerConnection(backend=backend)
    feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    assert feed(conn, b"") == [ConnectionClosed()]  # not a 400: nobody is left to read it
    conn = ServerConnection(backend=backend)
    assert feed(conn, b"GET / HT") == [NeedData()]
    assert feed(conn, b"") == [ConnectionClosed()]


# -- protocol failures ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: nope\r\n\r\n",
    ],
)
def test_malformed_request_is_400(raw: bytes, backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(conn, raw)
    assert len(got) == 1
    _, body = failure_json(got[0])
    assert body == {"error": "Malformed HTTP request", "code": "BAD_REQUEST"}
    assert conn.next_event() == ConnectionClosed()
    assert not conn.is_keep_alive


def test_unknown_transfer_coding_is_501(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n")
    response, body = failure_json(got[0])
    assert response.status_code == 501
    assert body == {"error": "Transfer coding not implemented", "code": "NOT_IMPLEMENTED"}


def test_oversized_head_is_431(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_header_bytes=1024), backend=backend)
    got = feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000)
    _, body = failure_json(got[0])
    assert body == {"error": "Request header fields too large", "code": "HEADERS_TOO_LARGE"}


def test_whole_oversized_head_in_one_read_is_431(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_header_bytes=1024), backend=backend)
    got = feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert len(got) == 1
    response, _ = failure_json(got[0])
    assert response.status_code == 431


def test_head_under_the_limit_and_unlimited(backend: str) -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 900 + b"\r\n\r\n"
    assert isinstance(
        feed(ServerConnection(ServerLimits(max_header_bytes=1024), backend=backend), head)[0],
        RequestHead,
    )
    huge = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert isinstance(
        feed(ServerConnection(ServerLimits(max_header_bytes=0), backend=backend), huge)[0],
        RequestHead,
    )


def test_declared_body_over_limit_is_413_before_the_head(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_body_bytes=100), backend=backend)
    got = feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n")
    assert len(got) == 1
    _, body = failure_json(got[0])
    assert body == {"error": "Request body too large", "code": "BODY_TOO_LARGE"}
    assert conn.next_event() == ConnectionClosed()


def test_chunked_body_over_limit_is_413_mid_body(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_body_bytes=10), backend=backend)
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n"
    got = feed(conn, raw)
    assert isinstance(got[0], RequestHead)
    assert got[1:] == [BodyChunk(data=b"01234567"), NeedData()]
    got = feed(conn, b"8\r\n89abcdef\r\n")
    assert len(got) == 1
    assert isinstance(got[0], ProtocolFailure)
    assert got[0].status == 413
    # The request is the core's by now: its own answer can still go out, and closes.
    response, body = parse(conn.send_response(413, (("content-type", "text/plain"),), b"no"))
    assert (response.status_code, body) == (413, b"no")
    assert header(response, b"connection") == [b"close"]
    assert conn.next_event() == ConnectionClosed()


def test_malformed_chunk_mid_body_is_400_and_the_core_can_still_answer(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert isinstance(got[0], RequestHead)
    assert isinstance(got[1], ProtocolFailure)
    assert got[1].status == 400
    response, body = parse(conn.send_response(400, (), b"bad body"))
    assert (response.status_code, body) == (400, b"bad body")
    assert header(response, b"connection") == [b"close"]
    assert conn.next_event() == ConnectionClosed()


def test_body_limit_zero_is_unlimited(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_body_bytes=0), backend=backend)
    got = feed(conn, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 20000000\r\n\r\n")
    assert isinstance(got[0], RequestHead)


# -- keep-alive, pipelining, draining -------------------------------------------


def test_pipelining_two_requests_in_one_buffer(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    raw = GET.replace(b"/a?b=1", b"/one") + GET.replace(b"/a?b=1", b"/two")
    conn.receive_data(raw)
    first = conn.next_event()
    assert isinstance(first, RequestHead)
    assert first.target == "/one"
    assert conn.next_event() == BodyEnd()
    with pytest.raises(LocalProtocolError):  # the second waits for the first's answer
        conn.next_event()
    out1 = conn.send_response(200, (), b"first")
    second = conn.next_event()
    assert isinstance(second, RequestHead)
    assert second.target == "/two"
    assert conn.next_event() == BodyEnd()
    out2 = conn.send_response(200, (), b"second")
    assert conn.next_event() == NeedData()
    assert conn.is_idle
    client = h11.Connection(h11.CLIENT)
    for target in ("/one", "/two"):
        client.send(h11.Request(method="GET", target=target, headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        if target == "/one":
            client.receive_data(out1 + out2)
        bodies = []
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                bodies.append(event.data)
        assert b"".join(bodies) == (b"first" if target == "/one" else b"second")
        client.start_next_cycle()


def test_unread_body_is_drained_before_the_next_request(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    conn.receive_data(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
    assert isinstance(conn.next_event(), RequestHead)
    conn.send_response(200, (), b"early")  # answered without reading the body
    assert conn.is_response_done
    assert conn.next_event() == NeedData()
    assert not conn.is_idle  # still in the middle of the old body: the read timeout applies
    got = feed(conn, b"def" + GET)
    assert isinstance(got[0], RequestHead)
    assert got[0].target == "/a?b=1"


def test_has_unread_input(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    assert not conn.has_unread_input
    feed(conn, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
    assert conn.has_unread_input  # the body is unfinished
    conn.send_response(200, (), b"")
    feed(conn, b"def")
    assert not conn.has_unread_input
    conn.receive_data(b"GET / HT")
    assert conn.has_unread_input  # the start of another request


def test_draining_past_the_limit_closes(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_body_bytes=10), backend=backend)
    feed(conn, b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send_response(200, (), b"")
    assert feed(conn, b"20\r\n" + b"x" * 32 + b"\r\n") == [ConnectionClosed()]


def test_stop_keep_alive_adds_connection_close(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    conn.stop_keep_alive()
    assert not conn.is_keep_alive
    response, _ = parse(conn.send_response(200, (), b"x"))
    assert header(response, b"connection") == [b"close"]
    conn.receive_data(GET)
    assert conn.next_event() == ConnectionClosed()


def test_expect_100_continue(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert conn.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert conn.send_continue() == b""
    assert feed(conn, b"ok") == [BodyChunk(data=b"ok"), BodyEnd(), NeedData()]


# -- responses out --------------------------------------------------------------


def test_send_response_frames_body_and_adds_date(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    date = "Sun, 06 Nov 1994 08:49:37 GMT"
    out = conn.send_response(
        200, (("Content-Type", "text/plain"), ("X-Val", "caf\xe9")), b"hello", date=date
    )
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    response, body = parse(out)
    assert body == b"hello"
    assert header(response, b"content-length") == [b"5"]
    assert header(response, b"date") == [date.encode()]
    assert header(response, b"x-val") == [b"caf\xe9"]


def test_caller_framing_is_not_duplicated(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    headers = (("content-length", "99"), ("transfer-encoding", "chunked"), ("date", "mine"))
    response, body = parse(conn.send_response(200, headers, b"abc", date="theirs"))
    assert header(response, b"content-length") == [b"3"]
    assert header(response, b"transfer-encoding") == []
    assert header(response, b"date") == [b"mine"]
    assert body == b"abc"


def test_head_response_has_no_body(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    out = conn.send_response(200, (("content-type", "application/json"),), b'{"a":1}')
    assert out.endswith(b"\r\n\r\n")
    assert b'{"a":1}' not in out
    response, body = parse(out, method=b"HEAD")
    assert header(response, b"content-length") == [b"7"]
    assert body == b""
    feed(conn, GET)  # keep-alive goes on


def test_head_streamed_response_has_no_body(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    out = conn.send_head(200, (("content-length", "1000"),))
    out += conn.send_body(b"x" * 1000) + conn.send_end()
    response, body = parse(out, method=b"HEAD")
    assert header(response, b"content-length") == [b"1000"]
    assert body == b""
    assert not out.endswith(b"x")


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int, backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    out = conn.send_response(status, (("content-length", "12"),), b"ignored body")
    response, body = parse(out)
    assert body == b""
    assert b"ignored" not in out
    expected = [] if status == 204 else [b"12"]  # 304 keeps the length of the 200
    assert header(response, b"content-length") == expected


def test_streamed_response_chunked_and_with_length(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    out = conn.send_head(200, (("transfer-encoding", "gzip, chunked"),), date="d")
    out += conn.send_body(b"abc") + conn.send_body(b"") + conn.send_body(b"de") + conn.send_end()
    response, body = parse(out)
    assert header(response, b"transfer-encoding") == [b"chunked"]
    assert body == b"abcde"
    feed(conn, GET)
    out = conn.send_head(200, (("content-length", "5"),))
    out += conn.send_body(b"abcde") + conn.send_end()
    response, body = parse(out)
    assert header(response, b"content-length") == [b"5"]
    assert header(response, b"transfer-encoding") == []
    assert body == b"abcde"


def test_streamed_response_to_http10_is_close_delimited(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"GET / HTTP/1.0\r\n\r\n")
    out = conn.send_head(200, ()) + conn.send_body(b"abc") + conn.send_end()
    assert out.endswith(b"\r\n\r\nabc")
    assert b"transfer-encoding" not in out.lower()
    assert conn.next_event() == ConnectionClosed()


def test_unknown_status_has_empty_reason(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    assert conn.send_response(599, (), b"").startswith(b"HTTP/1.1 599 \r\n")


def test_response_flags(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    assert not conn.is_response_started
    conn.send_head(200, ())
    assert conn.is_response_started
    assert not conn.is_response_done
    conn.send_end()
    assert conn.is_response_done
    assert conn.is_keep_alive


def test_expect_100_continue_answered_before_the_body_closes(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    response, body = parse(conn.send_response(401, (), b"no"))
    assert (response.status_code, body) == (401, b"no")
    assert header(response, b"connection") == [b"close"]
    assert not conn.is_keep_alive
    # Whatever the client sends now (its body, or its next request) is never read as a request.
    conn.receive_data(GET)
    assert conn.next_event() == ConnectionClosed()


def test_expect_100_continue_sent_then_early_answer_drains(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert conn.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    response, _ = parse(conn.send_response(413, (), b"no"))
    assert header(response, b"connection") == []  # told to send it, the client sends it
    got = feed(conn, b"hello" + GET)
    assert isinstance(got[0], RequestHead)
    assert got[0].target == "/a?b=1"


def test_expect_without_a_body_needs_no_continue(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n")
    assert conn.send_continue() == b""
    response, _ = parse(conn.send_response(200, (), b"x"))
    assert header(response, b"connection") == []
    assert conn.is_keep_alive


@pytest.mark.parametrize(
    "headers",
    [
        (("x-a", "one\r\nx-injected: yes"),),
        (("x-a", "one\nx-injected: yes"),),
        (("x-a", "one\rtwo"),),
        (("x-a", "nul\x00byte"),),
        (("x-a", "bell\x07"),),
        (("bad name", "v"),),
        (("", "v"),),
        (("x:y", "v"),),
        (("x\r\ny", "v"),),
    ],
)
def test_writer_refuses_injection_in_headers(headers: tuple[tuple[str, str]], backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    with pytest.raises(LocalProtocolError):
        conn.send_response(200, headers, b"x")
    with pytest.raises(LocalProtocolError):
        conn.send_head(200, headers)
    # Nothing went out: a valid answer can still be sent.
    response, body = parse(conn.send_response(200, (("x-a", "tab\tok"),), b"x"))
    assert (header(response, b"x-a"), body) == ([b"tab\tok"], b"x")


def test_writer_checks_a_name_every_time_not_only_the_first(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    conn.send_response(200, (("x-good", "v"),), b"")
    feed(conn, GET)
    with pytest.raises(LocalProtocolError):
        conn.send_response(200, (("x-good", "v\r\n"),), b"")


def test_content_length_mismatch_in_a_streamed_response_is_refused(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    conn.send_head(200, (("content-length", "3"),))
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"four")
    conn = ServerConnection(backend=backend)
    feed(conn, GET)
    conn.send_head(200, (("content-length", "3"),))
    conn.send_body(b"ab")
    with pytest.raises(LocalProtocolError):
        conn.send_end()


def test_pipelined_body_then_partial_head_is_not_431(backend: str) -> None:
    limits = ServerLimits(max_header_bytes=1024)
    for first in (
        b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3000\r\n\r\n" + b"x" * 3000,
        b"POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nbb8\r\n"
        + b"x" * 3000
        + b"\r\n0\r\n\r\n",
    ):
        conn = ServerConnection(limits, backend=backend)
        conn.receive_data(first + b"GET /2 HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 500)
        assert isinstance(conn.next_event(), RequestHead)
        while conn.next_event() != BodyEnd():
            pass
        conn.send_response(200, (), b"")
        assert events(conn) == [NeedData()]
        got = feed(conn, b"\r\n\r\n")
        assert isinstance(got[0], RequestHead)
        assert got[0].target == "/2"


def test_incomplete_head_over_the_limit_after_a_pipelined_request_is_431(backend: str) -> None:
    conn = ServerConnection(ServerLimits(max_header_bytes=1024), backend=backend)
    conn.receive_data(GET + b"GET /2 HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 1100)
    assert isinstance(conn.next_event(), RequestHead)
    assert conn.next_event() == BodyEnd()
    conn.send_response(200, (), b"")
    got = events(conn)
    assert isinstance(got[-1], ProtocolFailure)
    assert got[-1].status == 431


def test_a_refused_request_leaves_input_to_drain(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    got = feed(
        conn,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    assert isinstance(got[0], ProtocolFailure)
    assert got[0].status == 400
    assert conn.has_unread_input  # read what the client still sends before closing


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        ServerConnection(backend="picohttpparser")


def test_render_response_outside_a_cycle() -> None:
    out = render_response(
        503,
        (("content-type", "application/json"), ("Content-Length", "99"), ("connection", "x")),
        b'{"a":1}',
        date="D",
    )
    response, body = parse(out)
    assert (response.status_code, body) == (503, b'{"a":1}')
    assert header(response, b"content-length") == [b"7"]
    assert header(response, b"connection") == [b"close"]
    assert header(response, b"date") == [b"D"]
    with pytest.raises(LocalProtocolError):
        render_response(503, (("x", "a\r\nb"),))


def test_input_after_a_refusal_is_not_kept(backend: str) -> None:
    conn = ServerConnection(backend=backend)
    assert isinstance(feed(conn, b"GARBAGE\r\n\r\n")[0], ProtocolFailure)
    for _ in range(100):  # a driver draining before it closes
        conn.receive_data(b"x" * 65536)
    assert conn.next_event() == ConnectionClosed()
    assert not conn._parser.has_buffered()  # nothing of it was kept
