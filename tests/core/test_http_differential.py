"""Both parser backends, one behaviour: the same bytes give the same events and answers.

Every request here, valid or hostile, is fed to a :class:`ServerConnection`
on httptools (llhttp) and on h11, and the two transcripts must be equal: the
events (bodies merged between reads, as the backends may cut them
differently), the answers rendered, and the status of any protocol failure.
Some shapes are also pinned to the answer both must give (400 for request
smuggling shapes, 501 for an unknown transfer coding), so agreement on a
lax answer cannot pass. Hypothesis then generates requests from the same
parts, odd bytes and split points included.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sapg_core._http import (
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    NeedData,
    ProtocolFailure,
    RequestHead,
    ServerConnection,
    ServerLimits,
)

Transcript = list[object]


def transcript(
    chunks: list[bytes], backend: str, limits: ServerLimits | None = None, *, eof: bool = False
) -> Transcript:
    """Feed ``chunks`` one read at a time; answer each request once its body is in.

    Returns:
        What happened, normalised: request heads (their attrs), merged body
        bytes, ``"end"``, ``"need"``, ``("fail", status)``, ``"closed"``, and
        the bytes of each answer.
    """
    conn = ServerConnection(limits, backend=backend)
    out: Transcript = []
    reads = [*chunks, b""] if eof else chunks
    for data in reads:
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if isinstance(event, BodyChunk):
                if out and isinstance(out[-1], bytes):
                    out[-1] += event.data
                else:
                    out.append(event.data)
                continue
            if isinstance(event, RequestHead):
                out.append(("head", event))
                continue
            if isinstance(event, BodyEnd):
                out.append("end")
                out.append(("answer", conn.send_response(200, (("x", "y"),), b"ok", date="D")))
                continue
            if isinstance(event, ProtocolFailure):
                out.append(("fail", event.status))
                return out
            if isinstance(event, ConnectionClosed):
                out.append("closed")
                return out
            assert isinstance(event, NeedData)
            if out and out[-1] == "need":
                break
            out.append("need")
            break
    return out


def same(
    chunks: list[bytes], limits: ServerLimits | None = None, *, eof: bool = False
) -> Transcript:
    """Both transcripts, demanded equal; returns the one transcript."""
    fast = transcript(chunks, "httptools", limits, eof=eof)
    reference = transcript(chunks, "h11", limits, eof=eof)
    assert fast == reference
    return reference


def failure(result: Transcript) -> int | None:
    last = result[-1]
    return last[1] if isinstance(last, tuple) and last[0] == "fail" else None


def heads(result: Transcript) -> list[RequestHead]:
    return [item[1] for item in result if isinstance(item, tuple) and item[0] == "head"]


H = b"Host: h\r\n"
VALID = {
    "get": b"GET /a?b=1 HTTP/1.1\r\n" + H + b"\r\n",
    "get-8-headers": b"GET /api/items/42?x=%20y HTTP/1.1\r\nHost: example.test\r\n"
    b"User-Agent: curl/8.0\r\nAccept: */*\r\nAccept-Encoding: gzip, br\r\n"
    b"Accept-Language: en\r\nCookie: a=b; c=d\r\nAuthorization: Bearer x.y.z\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\n\r\n",
    "post-cl": b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    "post-cl-zeros": b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 005\r\n\r\nhello",
    "post-chunked": b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
    "chunked-upper": b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    "chunked-trailer": b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"1\r\nz\r\n0\r\nX-Trailer: t\r\n\r\n",
    "head": b"HEAD / HTTP/1.1\r\n" + H + b"\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "http10-post": b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
    "http10-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "close": b"GET / HTTP/1.1\r\n"
    + H
    + b"Connection: close\r\n\r\nGET /2 HTTP/1.1\r\n"
    + H
    + b"\r\n",
    "expect": b"PUT / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    "pipelined": b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n",
    "pipelined-post": b"POST /1 HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n\r\n\r\n\r\n"
    b"GET /2 HTTP/1.1\r\n" + H + b"\r\nPUT /3 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked"
    b"\r\n\r\n4\r\n\r\n\r\n\r\n0\r\n\r\nGET /4 HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form": b"GET http://x/y HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    "odd-target": b'GET /a"{}|\\^`#frag HTTP/1.1\r\n' + H + b"\r\n",
    "tab-and-obs-text": b"GET / HTTP/1.1\r\n" + H + b"X: a\tb\xff\r\nY:\r\nZ:   z  \r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    b"GET /next HTTP/1.1\r\n" + H + b"\r\n",
    "upgrade-with-body": b"POST / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
    b"Content-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n" + H + b"\r\n",
    "upgrade-chunked": b"POST / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nGET /next HTTP/1.1\r\n" + H + b"\r\n",
    "connect": b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nGET /next HTTP/1.1\r\n" + H + b"\r\n",
    "custom-known-method": b"PURGE /x HTTP/1.1\r\n" + H + b"\r\n",
    # Any token is a method (RFC 9110 §9.1), as the original routes it: llhttp
    # knows only its own table, so these go through the hand-over to h11.
    "lower-method": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "unknown-method": b"FOO / HTTP/1.1\r\n" + H + b"\r\n",
    "token-method": b"FO!O /x HTTP/1.1\r\n" + H + b"\r\n",
    "unknown-method-with-body": b"INVALID /x HTTP/1.1\r\n" + H + b"content-length: 3\r\n\r\nabc",
    "pipelined-then-unknown": b"GET /a HTTP/1.1\r\n"
    + H
    + b"\r\n"
    + b"FOO /b HTTP/1.1\r\n"
    + H
    + b"content-length: 2\r\n\r\nhi"
    + b"GET /c HTTP/1.1\r\n"
    + H
    + b"\r\n",
}

#: Hostile shapes and the one answer both backends must give.
HOSTILE = {
    "cl-te": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"
              b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n", 400),
    "te-cl": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"
              b"\r\n0\r\n\r\n", 400),
    "te-gzip-cl": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nContent-Length: 3"
                   b"\r\n\r\nabc", 501),
    "cl-te-gzip": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: gzip"
                   b"\r\n\r\nabc", 501),
    "te-gzip": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nabc", 501),
    "xchunked": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 501),
    "chunked-not-last": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip"
                         b"\r\n\r\n", 501),
    "gzip-then-chunked": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked"
                          b"\r\n\r\n0\r\n\r\n", 501),
    "chunked-twice": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    "te-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two-cl-differ": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4"
                      b"\r\n\r\nabcd", 400),
    "two-cl-same": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3"
                    b"\r\n\r\nabc", 400),
    "cl-list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    "cl-empty": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    "cl-absurd": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\n",
                  400),
    "cl-2-63": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775808\r\n\r\n",
                400),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", 400),
    "leading-space-header": (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    "bare-lf-header": (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400),
    "bare-lf-end": (b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400),
    "nul-value": (b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    "ctl-value": (b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    "del-value": (b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    "esc-value": (b"GET / HTTP/1.1\r\n" + H + b"X: \x1b[31m\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + H + b"X : y\r\n\r\n", 400),
    "empty-name": (b"GET / HTTP/1.1\r\n" + H + b": y\r\n\r\n", 400),
    "bad-name": (b"GET / HTTP/1.1\r\n" + H + b"Bad Header: y\r\n\r\n", 400),
    "chunk-size-bad": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
                       400),
    "chunk-lf": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n"
                 b"0\r\n\r\n", 400),
    "chunk-no-crlf": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX"
                      b"\r\n0\r\n\r\n", 400),
    "chunk-size-space": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                         b"3 \r\nabc\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                            b"1\r\na\r\nffffffffffffffffff\r\nabc", 400),
    "chunk-size-2-64": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                        b"10000000000000000\r\nabc", 400),
    "trailer-obs-fold": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                         b"1\r\na\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
    "trailer-ctl": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                    b"0\r\nX: a\x01\r\n\r\n", 400),
    "http09": (b"GET /\r\n\r\n", 400),
    "http12": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    "http20": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 400),
    "http1": (b"GET / HTTP/1\r\n" + H + b"\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "method-not-token": (b"FO(O / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-space": (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-ctl": (b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-8bit": (b"GET /a\xffb HTTP/1.1\r\n" + H + b"\r\n", 400),
    "two-spaces": (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "two-spaces-after": (b"GET /  HTTP/1.1\r\n" + H + b"\r\n", 400),
    "leading-crlf": (b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "extra-on-line": (b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n", 400),
    "pipelined-bad-second": (b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H
                             + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_requests_agree(name: str) -> None:
    result = same([VALID[name]])
    assert failure(result) is None
    assert heads(result)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_requests_agree_on_the_answer(name: str) -> None:
    raw, status = HOSTILE[name]
    result = same([raw])
    assert failure(result) == status, result


SPLIT = ["get-8-headers", "post-chunked", "pipelined-post", "upgrade-with-body", "expect"]
SPLIT_HOSTILE = [
    "cl-te",
    "te-gzip-cl",
    "obs-fold",
    "bare-lf",
    "two-spaces",
    "cl-absurd",
    "chunk-size-space",
    "chunk-size-overflow",
    "trailer-obs-fold",
]


@pytest.mark.parametrize("name", SPLIT)
def test_valid_split_at_every_byte_agrees_and_matches_the_whole(name: str) -> None:
    raw = VALID[name]
    whole = [item for item in same([raw]) if item != "need"]
    for cut in range(1, len(raw)):
        result = same([raw[:cut], raw[cut:]])
        merged: Transcript = []
        for item in result:  # bodies cut by the split merge back
            if item == "need":
                continue
            if isinstance(item, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += item
            else:
                merged.append(item)
        assert merged == whole, cut


@pytest.mark.parametrize("name", SPLIT_HOSTILE)
def test_hostile_split_at_every_byte_agrees(name: str) -> None:
    raw, status = HOSTILE[name]
    for cut in range(1, len(raw)):
        assert failure(same([raw[:cut], raw[cut:]])) == status, cut


def test_byte_at_a_time_agrees() -> None:
    for raw in (VALID["pipelined-post"], VALID["get-8-headers"], HOSTILE["cl-te"][0]):
        same([raw[i : i + 1] for i in range(len(raw))])


def test_eof_mid_request_agrees() -> None:
    raw = VALID["post-chunked"]
    for cut in range(0, len(raw)):
        result = same([raw[:cut]] if cut else [], eof=True)
        assert result[-1] == "closed"


@pytest.mark.parametrize("size", [1000, 1023, 1024, 1025, 1100, 3000])
def test_head_limit_agrees_whole_and_incomplete(size: int) -> None:
    limits = ServerLimits(max_header_bytes=1024)
    pad = b"a" * (size - len(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: \r\n\r\n"))
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + pad + b"\r\n\r\n"
    assert len(raw) == size
    same([raw], limits)
    same([raw[:-4]], limits)  # incomplete
    same([raw[: size // 2], raw[size // 2 :]], limits)


def test_body_limit_agrees() -> None:
    limits = ServerLimits(max_body_bytes=10)
    for raw in (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n"
        b"8\r\n89abcdef\r\n",
    ):
        assert failure(same([raw], limits)) == 413


def test_answered_expect_closes_on_both() -> None:
    raw = b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    for backend in ("httptools", "h11"):
        conn = ServerConnection(backend=backend)
        conn.receive_data(raw + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        assert isinstance(conn.next_event(), RequestHead)
        out = conn.send_response(401, (), b"no")
        assert b"connection: close\r\n" in out
        assert not conn.is_keep_alive
        assert conn.next_event() == ConnectionClosed()


# -- generated requests -------------------------------------------------------------

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"FOO", b"get"])
targets = st.one_of(
    st.just(b"/"),
    st.binary(min_size=0, max_size=12).map(lambda b: b"/" + b),
    st.text(alphabet="/abc%20?=&#*:@", min_size=1, max_size=12).map(str.encode),
)
names = st.one_of(
    st.sampled_from([b"X-A", b"accept", b"Cookie", b"content-length", b"transfer-encoding",
                     b"host", b"connection", b"expect", b"upgrade"]),
    st.text(alphabet=_TCHARS, min_size=1, max_size=8).map(str.encode),
    st.binary(min_size=0, max_size=4),
)  # fmt: skip
values = st.one_of(
    st.sampled_from([b"1", b"0", b"5", b"chunked", b"close", b"keep-alive", b"100-continue",
                     b"gzip, chunked", b"upgrade", b" x ", b""]),
    st.binary(max_size=10),
)  # fmt: skip
chunk_sizes = st.sampled_from(
    [
        *(b"%x", b"%X", b"%x;ext=1", b"00%x", b"%x ", b"%x\t", b" %x", b"fffffffffffffffff%x"),
        *(b"%x;", b'%x;a="q \\" x"', b"%x;a=b;c", b"%x; a", b"%x;a=b,c", b"%x;;a", b"%x;a="),
    ]
)
versions = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTP/1.1"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(methods)
    line = method + b" " + draw(targets) + b" " + draw(versions) + b"\r\n"
    fields = [(b"Host", b"h")] if draw(st.integers(0, 9)) else []
    fields += draw(st.lists(st.tuples(names, values), max_size=4))
    body = draw(st.binary(max_size=12))
    framing = draw(st.sampled_from(["none", "length", "chunked", "both"]))
    if framing in ("length", "both"):
        fields.append((b"Content-Length", b"%d" % len(body)))
    if framing in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", b"chunked"))
        size = draw(chunk_sizes) % len(body) if body else 0
        trailer = b"".join(
            n + b": " + v + b"\r\n" for n, v in draw(st.lists(st.tuples(names, values), max_size=2))
        )
        body = (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n" + trailer + b"\r\n"
    if framing == "none":
        body = b""
    head = line + b"".join(n + b": " + v + b"\r\n" for n, v in draw(st.permutations(fields)))
    return head + b"\r\n" + body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3), st.data())
def test_generated_requests_agree(pipeline: list[bytes], data: st.DataObject) -> None:
    raw = b"".join(pipeline)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if b > a]
    limits = data.draw(st.sampled_from([None, ServerLimits(max_header_bytes=60, max_body_bytes=6)]))
    same(chunks, limits, eof=data.draw(st.booleans()))


def test_many_upgrade_requests_in_one_read() -> None:
    # llhttp stops at each; reading on must not recurse once per request.
    one = b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n"
    conn = ServerConnection(backend="httptools")
    conn.receive_data(one * 3000)
    for _ in range(3000):
        assert isinstance(conn.next_event(), RequestHead)
        assert conn.next_event() == BodyEnd()
        conn.send_response(404, (), b"")
    assert conn.next_event() == NeedData()
    assert len(same([one * 50])) == 50 * 3 + 1
