"""Sans-IO HTTP/1.1 server glue on two parsers: bytes in, small events out; responses in, bytes out.

Theory of operation. A driver owns one :class:`ServerConnection` per client
socket and runs one loop: feed what the socket gave to :meth:`receive_data`,
then call :meth:`next_event` until it returns :class:`NeedData` (read more)
or :class:`ConnectionClosed` (close the socket). Requests come one at a time
and are answered in order; the bytes or events of a pipelined request wait
until the current response is finished (RFC 9112 §9.3.2: "A server MAY
process a sequence of pipelined requests in parallel if they all have safe
methods, but it MUST send the corresponding responses in the same order").

Two parsers can read the requests (``backend=``): httptools (llhttp, C,
:mod:`sapg_core._llhttp_backend`) for speed and h11 (pure Python,
:mod:`sapg_core._h11_backend`), the reference. Each turns bytes into the
same raw events (:mod:`sapg_core._wire`); every rule that is not parsing is
applied here, once, to those: so the two give the same events and the same
answers, which a differential test holds them to. The rules beyond the
parsers' own, for what could smuggle a request past a front proxy (RFC 9112
§6.1, §6.3): ``Content-Length`` with ``Transfer-Encoding`` is 400 (as nginx
answers), and so is ``Transfer-Encoding`` in an HTTP/1.0 request, more than
one ``Content-Length`` field, a ``Content-Length`` that is not plain digits or
is over 2**63 - 1, an HTTP version other than 1.0 and 1.1, a method llhttp
does not know, and a 1.1 request without exactly one ``Host``; a transfer
coding other than exactly ``chunked`` is 501, as h11 answers it.

Responses are rendered by our own writer (:mod:`sapg_core._wire`) whichever
parser runs, framed here: ``Content-Length`` when the length is known,
chunked for a streamed HTTP/1.1 response, until close for HTTP/1.0; no body
for ``HEAD``, 204 and 304. A header the writer refuses (CR, LF, NUL in a
value, a name that is not a token) raises :class:`LocalProtocolError`.

Once the response is complete, :meth:`next_event` reads and discards whatever
is left of the request body (bounded by the body limit), then moves on to the
next request by itself: the driver never has to drain or restart a cycle. If
the connection cannot carry another request (``Connection: close``, HTTP/1.0,
a protocol failure, :meth:`stop_keep_alive`), it returns
:class:`ConnectionClosed` instead. One exception to draining: a client that
sent ``Expect: 100-continue`` and was answered before it was told to send its
body may never send it, or send it later; reading on would take its next
request for that body, so the connection closes after such an answer.

Switching protocols is explicit. A request that proposes an upgrade is
answered like any other unless the driver calls :meth:`send_switch` (a
``101`` for a body-less ``GET`` upgrade request, the WebSocket handshake):
then the connection is no longer HTTP, and :meth:`take_trailing` gives the
bytes the client sent after the request head (both parsers hold them back
unparsed until the switch or the next cycle), the tunnel's first input.

Limits are enforced here, so every driver enforces them the same way: a head
larger than ``max_header_bytes`` is answered 431 (an incomplete one as soon as
it is over), a declared or streamed body larger than ``max_body_bytes`` 413
and anything malformed 400 (501 for an unknown transfer coding), each as a
:class:`ProtocolFailure` carrying the bytes to send before closing. Nothing
here reads a clock: the driver passes the ``Date`` value in.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._errors import BodyTooLarge, GatewayError
from ._events import Headers
from ._h11_backend import H11Parser
from ._llhttp_backend import LLHTTPParser
from ._wire import (
    END,
    LAST_CHUNK,
    LocalProtocolError,
    Parser,
    RawFailure,
    RawHead,
    chunk,
    render_head,
)

__all__ = [
    "PARSER_BACKENDS",
    "BodyChunk",
    "BodyEnd",
    "ConnectionClosed",
    "HTTPEvent",
    "LocalProtocolError",
    "NeedData",
    "ProtocolFailure",
    "RequestHead",
    "ServerConnection",
    "ServerLimits",
    "render_response",
]

#: The request parsers :class:`ServerConnection` can run on: httptools (llhttp,
#: C, fast) and h11 (pure Python, the reference).
PARSER_BACKENDS: Final = ("httptools", "h11")


@attrs.frozen(kw_only=True)
class ServerLimits:
    """Size limits of the HTTP/1.1 server; 0 means unlimited.

    Fields:
        max_header_bytes: request line plus header fields, in bytes.
        max_body_bytes: request body, in bytes (declared or streamed).
    """

    max_header_bytes: int = attrs.field(default=16384, validator=attrs.validators.ge(0))
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=attrs.validators.ge(0))


class HTTPEvent:
    """Base class of what :meth:`ServerConnection.next_event` returns."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class RequestHead(HTTPEvent):
    """A request line and its header fields.

    Fields:
        method: as received, e.g. ``GET``.
        target: the raw request-target, Latin-1 decoded.
        headers: lower-case names, Latin-1 values, in arrival order.
        http_version: ``1.1`` or ``1.0``.
        keep_alive: whether the client allows another request on this connection.
        content_length: the declared body length; ``None`` for a chunked body;
            0 when the request has no body.
    """

    method: str
    target: str
    headers: Headers
    http_version: str
    keep_alive: bool
    content_length: int | None


@attrs.frozen(kw_only=True)
class BodyChunk(HTTPEvent):
    """Some bytes of the request body."""

    data: bytes


@attrs.frozen
class BodyEnd(HTTPEvent):
    """The request body is complete."""


@attrs.frozen
class NeedData(HTTPEvent):
    """Read more bytes from the socket and pass them to :meth:`ServerConnection.receive_data`."""


@attrs.frozen
class ConnectionClosed(HTTPEvent):
    """The connection is over: the client closed it or it can carry no more requests."""


@attrs.frozen(kw_only=True)
class ProtocolFailure(HTTPEvent):
    """The client broke HTTP/1.1 or a limit.

    Before a :class:`RequestHead` was returned for the request, send
    ``response_bytes`` and close. After it (the body failed), the request is
    already the core's: tell it (``ActionFailed``) and close after its answer.

    Fields:
        status: 400, 413, 431 or 501.
        detail: what went wrong, for the operator's log.
        response_bytes: a complete ``Connection: close`` JSON response.
    """

    status: int
    detail: str
    response_bytes: bytes


_FAILURES: Final[dict[int, GatewayError]] = {
    400: GatewayError("Malformed HTTP request", status=400, code="BAD_REQUEST"),
    413: BodyTooLarge(),
    431: GatewayError("Request header fields too large", status=431, code="HEADERS_TOO_LARGE"),
    501: GatewayError("Transfer coding not implemented", status=501, code="NOT_IMPLEMENTED"),
}


def _render_failure(status: int) -> bytes:
    body = _FAILURES[status].body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-powered-by", b"sapg"),
        (b"connection", b"close"),
    ]
    return render_head(status, headers, body)


_FAILURE_BYTES: Final = {status: _render_failure(status) for status in _FAILURES}


def render_response(
    status: int, headers: Headers, body: bytes = b"", *, date: str | None = None
) -> bytes:
    """A complete ``Connection: close`` response outside any request cycle, by our writer.

    For what a driver sends before or instead of reading a request (a 503
    when it is too busy to serve one, say). The caller's framing fields are
    replaced: ``Content-Length: len(body)`` and ``Connection: close``.

    Raises:
        LocalProtocolError: a header the writer refuses (see :mod:`sapg_core._wire`).
    """
    raw, _, has_date, _ = _caller_headers(headers, True)
    raw.append((b"content-length", b"%d" % len(body)))
    if date is not None and not has_date:
        raw.append((b"date", date.encode("latin-1")))
    raw.append((b"connection", b"close"))
    return render_head(status, raw, body)


_SPECIAL: Final = frozenset(("content-length", "transfer-encoding", "connection", "host", "expect"))
#: Response fields the connection writes itself (or must see): the rest pass as given.
_WATCHED: Final = frozenset(("content-length", "transfer-encoding", "connection", "date"))
_MAX_CONTENT_LENGTH: Final = 2**63 - 1
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Request side: waiting for a head, in the body, complete.
_WAITING: Final = 0
_BODY: Final = 1
_DONE: Final = 2
# Response side: not started, head sent, complete.
_IDLE: Final = 0
_SENDING: Final = 1
_SENT: Final = 2
# Response framing.
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_CLOSE: Final = 3

_NEED_DATA: Final = NeedData()
_BODY_END: Final = BodyEnd()
_CLOSED: Final = ConnectionClosed()


def _declared_length(
    http10: bool, length: str | None, lengths: int, chunked: bool
) -> tuple[int | None, int, str]:
    """The request body's framing (RFC 9112 §6.1, §6.3), beyond what h11 checks.

    Returns:
        (content length, or ``None`` for chunked; 0 or the status to refuse
        the request with; why).
    """
    if chunked:
        if http10:
            return None, 400, "Transfer-Encoding in an HTTP/1.0 request"
        if length is not None:
            return None, 400, "Content-Length with Transfer-Encoding"
        return None, 0, ""
    if length is None:
        return 0, 0, ""
    if lengths > 1:
        return 0, 400, "more than one Content-Length"
    if int(length) > _MAX_CONTENT_LENGTH:
        return 0, 400, "bad Content-Length"
    return int(length), 0, ""


def _scan(
    headers: list[tuple[str, str]],
) -> tuple[str | None, int, bool, bool, bool, int, int]:
    """One pass over a request's headers (lower-case names, Latin-1 values).

    The framing fields are checked in arrival order, as h11 checks them, so
    that the first bad one decides between 400 and 501 on both backends: a
    ``Content-Length`` not all digits, or unlike an earlier one, is 400; a
    second ``Transfer-Encoding`` field or one other than ``chunked`` is 501.
    A ``Transfer-Encoding`` value is lower-cased in ``headers``, as h11 gives it.

    Returns:
        The last Content-Length value and how many there were, whether the
        body is chunked, whether the client asked to close, whether it
        expects 100 Continue, how many Host fields there were, and 0 or the
        status of the first bad framing field.
    """
    length: str | None = None
    lengths = hosts = bad = 0
    chunked = close = expect = False
    special = _SPECIAL
    for index, (name, value) in enumerate(headers):
        if name in special:
            if name == "content-length":
                if not (value.isascii() and value.isdigit()) or (
                    length is not None and value != length
                ):
                    bad = bad or 400
                length = value
                lengths += 1
            elif name == "transfer-encoding":
                lowered = value.lower()
                headers[index] = (name, lowered)
                if chunked or lowered != "chunked":
                    bad = bad or 501
                chunked = True
            elif name == "connection":
                close = close or _has_close(value.encode("latin-1"))
            elif name == "host":
                hosts += 1
            else:
                expect = value.lower() == "100-continue"
    return length, lengths, chunked, close, expect, hosts, bad


def _caller_headers(
    headers: Headers, ours: bool
) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool, bool]:
    """A response's headers as bytes, without the framing we write ourselves.

    Args:
        headers: the caller's headers.
        ours: whether we write the Content-Length (the caller's is dropped).

    Returns:
        The other headers (names lower-cased), the caller's Content-Length if
        kept, whether it gave a Date, whether it asked to close.
    """
    raw: list[tuple[bytes, bytes]] = []
    given: bytes | None = None
    has_date = close = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in _WATCHED:
            if lowered == "transfer-encoding" or (ours and lowered == "content-length"):
                continue
            if lowered == "content-length":
                given = value.encode("latin-1")
                continue  # written once, by the caller of this
            if lowered == "connection":
                close = close or _has_close(value.encode("latin-1"))
                continue  # written once, by the caller of this
            has_date = True
        raw.append((lowered.encode("latin-1"), value.encode("latin-1")))
    return raw, given, has_date, close


def _has_close(value: bytes) -> bool:
    return b"close" in (part.strip() for part in value.lower().split(b","))


class ServerConnection:
    """One client connection, server side. See the module docstring for the loop.

    Args:
        limits: the size limits to enforce.
        backend: the request parser, one of :data:`PARSER_BACKENDS`.

    Raises:
        ValueError: ``backend`` names no parser.
    """

    def __init__(self, limits: ServerLimits | None = None, *, backend: str = "h11") -> None:
        if backend not in PARSER_BACKENDS:
            raise ValueError(f"unknown HTTP parser backend {backend!r}; one of {PARSER_BACKENDS}")
        self.backend = backend
        self.limits = limits if limits is not None else ServerLimits()
        head = self.limits.max_header_bytes
        self._parser: Parser = LLHTTPParser(head) if backend == "httptools" else H11Parser(head)
        self._max_body = self.limits.max_body_bytes
        self._eof = False
        self._must_close = False
        self._failed = False
        self._closed = False
        self._req = _WAITING
        self._resp = _IDLE
        self._keep = True
        self._http10 = False
        self._method = b""
        self._body_bytes = 0
        self._expect = False
        self._framing = _NONE
        self._remaining = 0
        self._switched = False
        self._trailing = b""

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        self._parser.feed(data)

    def next_event(self) -> HTTPEvent:
        """Return the next thing that happened on the connection.

        Returns:
            :class:`RequestHead`, then :class:`BodyChunk` s and :class:`BodyEnd`;
            :class:`NeedData`; :class:`ConnectionClosed` (for good: every later
            call returns it too); or :class:`ProtocolFailure` (then
            :class:`ConnectionClosed` from the next call on).

        Raises:
            LocalProtocolError: called after the request body ended but
                before the response was sent: a driver bug.
        """
        parser = self._parser
        while True:
            if self._failed or self._closed:
                return _CLOSED
            if (self._resp == _SENT or self._req == _DONE) and (gate := self._between()):
                return gate
            event = parser.next()
            if event is None:
                return _NEED_DATA
            kind = type(event)
            if kind is bytes:
                if chunk_event := self._on_data(event):  # type: ignore[arg-type]
                    return chunk_event
            elif event is END:
                self._req = _DONE
                self._expect = False
                if self._resp != _SENT:
                    return _BODY_END
            elif kind is RawHead:
                return self._on_head(event)  # type: ignore[arg-type]
            elif kind is RawFailure:
                return self._fail(event.status, event.detail)  # type: ignore[union-attr]
            else:  # EOF between requests
                self._closed = True
                return _CLOSED

    def _between(self) -> HTTPEvent | None:
        """After the response, or between the request's end and the response."""
        if self._resp == _SENT:
            if self._must_close or self._eof or not self._keep:
                self._closed = True
                return _CLOSED
            if self._req == _DONE:
                self._next_cycle()
            return None  # go on: the next request, or the rest of this body to drain
        if self._parser.has_buffered():  # the next request waits for this response
            raise LocalProtocolError("the request is complete: send the response first")
        return _NEED_DATA

    def _on_data(self, data: bytes) -> HTTPEvent | None:
        self._expect = False
        self._body_bytes += len(data)
        if self._max_body and self._body_bytes > self._max_body:
            return self._fail(413, "request body over the limit")
        return BodyChunk(data=data) if self._resp != _SENT else None  # else: draining

    def _on_head(self, head: RawHead) -> HTTPEvent:
        # h11's checks first, in h11's order (the status of a head with two
        # faults is h11's on both backends), then the rules we add.
        headers = head.headers
        length, lengths, chunked, close, expect, hosts, bad = _scan(headers)
        if bad:
            return self._fail(bad, "bad Content-Length or Transfer-Encoding")
        version = head.version
        http10 = version == "1.0"
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            return self._fail(400, "a request needs exactly one Host")
        if not http10 and version != "1.1":
            return self._fail(400, f"HTTP/{version} is not served")
        method = head.method
        size = head.size
        content_length, status, detail = _declared_length(http10, length, lengths, chunked)
        # The parsers bound only an *incomplete* head; one that arrives whole is measured here.
        limits = self.limits
        if not status and limits.max_header_bytes and size > limits.max_header_bytes:
            status, detail = 431, f"request head of {size} bytes is over the limit"
        if not status and content_length and self._max_body and content_length > self._max_body:
            status, detail = 413, f"declared body of {content_length} bytes is over the limit"
        if status:
            return self._fail(status, detail)
        self._req = _BODY
        self._method = method
        self._http10 = http10
        self._keep = not (http10 or close)
        self._expect = expect and not http10 and content_length != 0
        return RequestHead(
            method=method.decode("latin-1"),
            target=head.target.decode("latin-1"),
            headers=tuple(headers),
            http_version=version,
            keep_alive=self._keep,
            content_length=content_length,
        )

    def _fail(self, status: int, detail: str) -> HTTPEvent:
        self._failed = True
        self._must_close = True
        if self._eof or self._resp == _SENT:  # nobody to answer, or answered already
            return _CLOSED
        status = status if status in _FAILURES else 400
        return ProtocolFailure(status=status, detail=detail, response_bytes=_FAILURE_BYTES[status])

    def _next_cycle(self) -> None:
        self._parser.next_cycle()
        self._req = _WAITING
        self._resp = _IDLE
        self._keep = True
        self._method = b""
        self._body_bytes = 0
        self._expect = False
        self._framing = _NONE

    # -- sending -----------------------------------------------------------

    def send_continue(self) -> bytes:
        """``100 Continue`` if the client waits for it before sending its body, else ``b""``.

        Call this before reading a body the request will need.
        """
        if not self._expect or self._resp != _IDLE:
            return b""
        self._expect = False
        return _CONTINUE

    def send_response(
        self, status: int, headers: Headers, body: bytes = b"", *, date: str | None = None
    ) -> bytes:
        """Render a whole response, framed with ``Content-Length: len(body)``, as one bytes object.

        The body is left out for ``HEAD`` requests and 204/304 answers, where
        a ``Content-Length`` the caller gave is kept (it describes the body a
        ``GET`` would get).

        Raises:
            LocalProtocolError: a header the writer refuses (see
                :mod:`sapg_core._wire`), or no request to answer.
        """
        raw = self._head(status, headers, date, len(body))
        out = render_head(status, raw, body if self._framing == _LENGTH else b"")
        self._resp = _SENT
        return out

    def send_switch(self, headers: Headers, *, date: str | None = None) -> bytes:
        """Render ``101 Switching Protocols``: after it the connection is no longer HTTP.

        Only for a body-less ``GET`` that proposed an upgrade (``Upgrade`` and,
        for llhttp, ``Connection: upgrade``), read to its end. ``headers`` are
        written as given (``Upgrade``, ``Connection: upgrade``, the
        ``Sec-WebSocket-*`` answer...), less any framing field; a ``Date`` is
        added from ``date``. From now on :meth:`next_event` answers
        :class:`ConnectionClosed` and :meth:`take_trailing` the bytes that
        followed the request head.

        Raises:
            LocalProtocolError: a response was started, the request is not a
                body-less GET upgrade request read to its end, or a header
                the writer refuses.
        """
        if self._resp != _IDLE or self._failed or self._closed:
            raise LocalProtocolError("a response was already started for this request")
        if self._req == _BODY and not self._body_bytes:  # its end may wait, unread
            event = self._parser.next()
            if event is END:
                self._req = _DONE
        if self._req != _DONE or self._method != b"GET" or self._body_bytes:
            raise LocalProtocolError("only a body-less GET, read to its end, can switch protocols")
        raw: list[tuple[bytes, bytes]] = []
        has_date = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length" or lowered == "transfer-encoding":
                continue
            has_date = has_date or lowered == "date"
            raw.append((lowered.encode("latin-1"), value.encode("latin-1")))
        if date is not None and not has_date:
            raw.append((b"date", date.encode("latin-1")))
        out = render_head(101, raw)  # refuses a bad header before anything changes
        trailing = self._parser.take_trailing()
        if trailing is None:
            raise LocalProtocolError("this request did not propose an upgrade")
        self._trailing = trailing
        self._switched = self._closed = self._must_close = True
        self._resp = _SENT
        return out

    def take_trailing(self) -> bytes:
        """After :meth:`send_switch`: the bytes the client sent after its request head.

        They are the tunnel's first input (``b""`` if none came yet); a second
        call returns ``b""``.
        """
        trailing, self._trailing = self._trailing, b""
        return trailing

    def send_head(self, status: int, headers: Headers, *, date: str | None = None) -> bytes:
        """Render the head of a streamed response.

        A ``Content-Length`` the caller gives frames the body; without one,
        the body is sent chunked (or, to an HTTP/1.0 client, until close).

        Raises:
            LocalProtocolError: as :meth:`send_response`.
        """
        raw = self._head(status, headers, date, None)
        out = render_head(status, raw)
        self._resp = _SENDING
        return out

    def send_body(self, data: bytes) -> bytes:
        """Render some body bytes of the response (nothing for a response without a body).

        Raises:
            LocalProtocolError: no response head was sent, or more bytes than
                its ``Content-Length``.
        """
        if self._resp != _SENDING:
            raise LocalProtocolError("send_body before send_head, or after send_end")
        framing = self._framing
        if not data or framing == _NONE:
            return b""
        if framing == _CHUNKED:
            return chunk(data)
        if framing == _LENGTH:
            self._remaining -= len(data)
            if self._remaining < 0:
                raise LocalProtocolError("too much data for the declared Content-Length")
        return data

    def send_end(self) -> bytes:
        """Finish the response.

        Raises:
            LocalProtocolError: no response head was sent, or fewer bytes than
                its ``Content-Length``.
        """
        if self._resp != _SENDING:
            raise LocalProtocolError("send_end before send_head, or twice")
        if self._framing == _LENGTH and self._remaining:
            raise LocalProtocolError("too little data for the declared Content-Length")
        self._resp = _SENT
        return LAST_CHUNK if self._framing == _CHUNKED else b""

    def _head(
        self, status: int, headers: Headers, date: str | None, length: int | None
    ) -> list[tuple[bytes, bytes]]:
        if self._resp != _IDLE:
            raise LocalProtocolError("a response was already started for this request")
        if self._req == _WAITING:
            raise LocalProtocolError("there is no request to answer")
        if status < 200:
            raise LocalProtocolError("a response needs a final status (100 is send_continue)")
        if self._expect and self._req != _DONE:
            # Answered before the client was told to send its body: it may
            # never send it, so nothing after this answer can be trusted as
            # the next request. Close (see the module docstring).
            self._must_close = True
        body_allowed = status != 204 and status != 304 and self._method != b"HEAD"
        # We frame the body: a caller's Transfer-Encoding always goes; its
        # Content-Length goes too when we know the length (or for a 204), and
        # is kept otherwise (HEAD and 304 describe the body a GET would get).
        ours = status == 204 or (body_allowed and length is not None)
        raw, given, has_date, asked_close = _caller_headers(headers, ours)
        closing = self._must_close or not self._keep or asked_close
        if given is not None:
            raw.append((b"content-length", given))
        if body_allowed:
            closing = self._frame(raw, given, length) or closing
        else:
            self._framing = _NONE
            if length is not None and given is None and status != 204 and status != 304:
                raw.append((b"content-length", b"%d" % length))
        if date is not None and not has_date:
            raw.append((b"date", date.encode("latin-1")))
        if closing:
            self._must_close = True
            raw.append((b"connection", b"close"))
        return raw

    def _frame(
        self, raw: list[tuple[bytes, bytes]], given: bytes | None, length: int | None
    ) -> bool:
        """Choose the framing of a body; return whether it is delimited by closing."""
        if length is not None:
            self._framing = _LENGTH
            self._remaining = length
            raw.append((b"content-length", b"%d" % length))
        elif given is not None:
            if not given.strip().isdigit():
                raise LocalProtocolError("the response's Content-Length is not a number")
            self._framing = _LENGTH
            self._remaining = int(given)
        elif not self._http10:
            self._framing = _CHUNKED
            raw.append((b"transfer-encoding", b"chunked"))
        else:
            self._framing = _UNTIL_CLOSE
            return True
        return False

    # -- connection state --------------------------------------------------

    def stop_keep_alive(self) -> None:
        """Close the connection after this response (the driver is shutting down, say)."""
        self._must_close = True

    @property
    def is_keep_alive(self) -> bool:
        """Whether the connection can carry another request after this one."""
        return not (self._must_close or self._eof or self._failed) and self._keep

    @property
    def is_idle(self) -> bool:
        """Between requests, nothing buffered: the idle timeout applies, not the read one."""
        return (
            self._req == _WAITING
            and self._resp == _IDLE
            and not self._switched
            and not self._parser.has_buffered()
        )

    @property
    def has_unread_input(self) -> bool:
        """Whether the client may still be sending: a request unfinished, or bytes buffered.

        Closing then would make the kernel answer them with a reset that can
        destroy the response (RFC 9112 §9.6), so a driver reads them first.
        """
        if self._switched:  # the bytes are the tunnel's now
            return False
        if self._failed:  # what follows a refused request is unknown: assume more comes
            return not self._eof
        return self._req == _BODY or self._parser.has_buffered()

    @property
    def is_switched(self) -> bool:
        """Whether :meth:`send_switch` turned the connection into a tunnel."""
        return self._switched

    @property
    def is_response_started(self) -> bool:
        """Whether the response head for the current request has been rendered."""
        return self._resp != _IDLE

    @property
    def is_response_done(self) -> bool:
        """Whether the response for the current request is complete."""
        return self._resp == _SENT
