"""Sans-IO HTTP/1.1 server glue on h11: bytes in, small events out; responses in, bytes out.

Theory of operation. A driver owns one :class:`ServerConnection` per client
socket and runs one loop: feed what the socket gave to :meth:`receive_data`,
then call :meth:`next_event` until it returns :class:`NeedData` (read more)
or :class:`ConnectionClosed` (close the socket). Requests come one at a time
and are answered in order; h11 keeps any pipelined bytes buffered until the
current response is finished (RFC 9112 §9.3.2: "A server MAY process a
sequence of pipelined requests in parallel if they all have safe methods, but
it MUST send the corresponding responses in the same order").

Once the response is complete, :meth:`next_event` reads and discards whatever
is left of the request body (bounded by the body limit), then moves on to the
next request by itself: the driver never has to drain or restart a cycle. If
the connection cannot carry another request (``Connection: close``, HTTP/1.0,
a protocol failure, :meth:`stop_keep_alive`), it returns
:class:`ConnectionClosed` instead.

Limits are enforced here, so every driver enforces them the same way: a head
larger than ``max_header_bytes`` is answered 431, a declared or streamed body
larger than ``max_body_bytes`` 413 and anything h11 refuses 400 (501 for an
unknown transfer coding), each as a :class:`ProtocolFailure` carrying the
bytes to send before closing. Nothing here reads a clock: the driver passes
the ``Date`` value in.
"""

from __future__ import annotations

import http
import sys
from typing import Final

import attrs
import h11

from ._errors import BodyTooLarge, GatewayError
from ._events import Headers

__all__ = [
    "PARSER_BACKENDS",
    "BodyChunk",
    "BodyEnd",
    "ConnectionClosed",
    "HTTPEvent",
    "NeedData",
    "ProtocolFailure",
    "RequestHead",
    "ServerConnection",
    "ServerLimits",
]


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

#: The request parsers :class:`ServerConnection` can run on: httptools (llhttp,
#: C, fast) and h11 (pure Python, the reference).
PARSER_BACKENDS: Final = ("httptools", "h11")

_UNLIMITED: Final = sys.maxsize
_RESPONSE_DONE: Final = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)


_REASONS: Final[dict[int, bytes]] = {
    status.value: status.phrase.encode("ascii") for status in http.HTTPStatus
}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _render_failure(status: int) -> bytes:
    error = _FAILURES[status]
    body = error.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"x-powered-by", b"sapg"),
        (b"connection", b"close"),
    ]
    # A fresh h11 connection renders it, so the real one stays free for the
    # core's own answer when the failure comes in the middle of a body.
    writer = h11.Connection(h11.SERVER)
    response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
    return (
        writer.send(response) + writer.send(h11.Data(data=body)) + writer.send(h11.EndOfMessage())
    )


_FAILURE_BYTES: Final = {status: _render_failure(status) for status in _FAILURES}


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


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
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes or _UNLIMITED
        )
        self._eof = False
        self._must_close = False
        self._failed = False
        self._body_bytes = 0
        self._method = b""
        self._body_allowed = True

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        self._h11.receive_data(data)

    def next_event(self) -> HTTPEvent:
        """Return the next thing that happened on the connection.

        Returns:
            :class:`RequestHead`, then :class:`BodyChunk` s and :class:`BodyEnd`;
            :class:`NeedData`; :class:`ConnectionClosed` (for good: every later
            call returns it too); or :class:`ProtocolFailure` (then
            :class:`ConnectionClosed` from the next call on).

        Raises:
            h11.LocalProtocolError: called after the request body ended but
                before the response was sent: a driver bug.
        """
        while True:
            if self._failed or self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED):
                return ConnectionClosed()
            if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                self._start_next_cycle()
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 quotes the offending bytes after a colon; they may hold
                # credentials (a query string, a header), so keep only the reason.
                return self._fail(exc.error_status_hint, str(exc).split(":", 1)[0])
            result = self._translate(event)
            if result is not None:
                return result

    def _translate(
        self, event: h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]
    ) -> HTTPEvent | None:
        draining = self._h11.our_state is h11.DONE
        if event is h11.NEED_DATA:
            return NeedData()
        if event is h11.PAUSED:
            raise h11.LocalProtocolError("the request is complete: send the response first")
        if isinstance(event, h11.Request):
            return self._on_request(event)
        if isinstance(event, h11.Data):
            self._body_bytes += len(event.data)
            if self.limits.max_body_bytes and self._body_bytes > self.limits.max_body_bytes:
                return self._fail(413, "request body over the limit")
            return None if draining else BodyChunk(data=bytes(event.data))
        if isinstance(event, h11.EndOfMessage):
            return None if draining else BodyEnd()
        if isinstance(event, h11.ConnectionClosed):
            return ConnectionClosed()
        raise AssertionError(f"unexpected h11 event {event!r}")  # pragma: no cover

    def _on_request(self, request: h11.Request) -> HTTPEvent:
        # One pass over the (already validated, lower-cased) headers: framing,
        # "Connection: close", the head's size, and the str form for the core.
        content_length: int | None = 0
        chunked = False
        close = False
        head_size = len(request.method) + len(request.target) + 12
        decoded = []
        for name, value in request.headers:
            head_size += len(name) + len(value) + 4
            if name == b"content-length":
                content_length = int(value)  # h11 has validated it
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                close = close or b"close" in (part.strip() for part in value.lower().split(b","))
            decoded.append((name.decode("latin-1"), value.decode("latin-1")))
        if chunked:
            content_length = None
        # h11 bounds only an *incomplete* head; one that arrives whole is measured here.
        if self.limits.max_header_bytes and head_size > self.limits.max_header_bytes:
            return self._fail(431, f"request head of {head_size} bytes is over the limit")
        limit = self.limits.max_body_bytes
        if limit and content_length is not None and content_length > limit:
            return self._fail(413, f"declared body of {content_length} bytes is over the limit")
        self._method = bytes(request.method)
        self._body_bytes = 0
        http_version = request.http_version.decode("ascii")
        return RequestHead(
            method=self._method.decode("latin-1"),
            target=bytes(request.target).decode("latin-1"),
            headers=tuple(decoded),
            http_version=http_version,
            keep_alive=http_version == "1.1" and not close,
            content_length=content_length,
        )

    def _fail(self, status: int, detail: str) -> HTTPEvent:
        self._failed = True
        self._must_close = True
        if self._eof or self.is_response_done:  # nobody to answer, or answered already
            return ConnectionClosed()
        status = status if status in _FAILURES else 400
        return ProtocolFailure(status=status, detail=detail, response_bytes=_FAILURE_BYTES[status])

    def _start_next_cycle(self) -> None:
        self._h11.start_next_cycle()
        self._method = b""
        self._body_bytes = 0
        self._body_allowed = True

    # -- sending -----------------------------------------------------------

    def send_continue(self) -> bytes:
        """``100 Continue`` if the client waits for it before sending its body, else ``b""``.

        Call this before reading a body the request will need.
        """
        if not self._h11.they_are_waiting_for_100_continue:
            return b""
        return self._h11.send(
            h11.InformationalResponse(status_code=100, headers=[], reason=_reason(100))
        )

    def send_response(
        self, status: int, headers: Headers, body: bytes = b"", *, date: str | None = None
    ) -> bytes:
        """Render a whole response, framed with ``Content-Length: len(body)``.

        The body is left out for ``HEAD`` requests and 204/304 answers, where
        a ``Content-Length`` the caller gave is kept (it describes the body a
        ``GET`` would get).
        """
        out = self._head_bytes(status, headers, date=date, length=len(body))
        return out + self.send_body(body) + self.send_end()

    def send_head(self, status: int, headers: Headers, *, date: str | None = None) -> bytes:
        """Render the head of a streamed response.

        A ``Content-Length`` the caller gives frames the body; without one,
        the body is sent chunked (or, to an HTTP/1.0 client, until close).
        """
        return self._head_bytes(status, headers, date=date, length=None)

    def send_body(self, data: bytes) -> bytes:
        """Render some body bytes of the response (nothing for a response without a body)."""
        if not data or not self._body_allowed:
            return b""
        return self._h11.send(h11.Data(data=data))

    def send_end(self) -> bytes:
        """Finish the response."""
        return self._h11.send(h11.EndOfMessage())

    def _head_bytes(
        self, status: int, headers: Headers, *, date: str | None, length: int | None
    ) -> bytes:
        self._body_allowed = status not in (204, 304) and self._method != b"HEAD"
        # We frame the body: a caller's Transfer-Encoding always goes; its
        # Content-Length goes too when we know the length (or for a 204), and
        # is kept otherwise (HEAD and 304 describe the body a GET would get).
        ours = status == 204 or (self._body_allowed and length is not None)
        raw: list[tuple[bytes, bytes]] = []
        has_length = has_date = has_close = False
        for name, value in headers:
            key = name.lower().encode("latin-1")
            if key == b"transfer-encoding" or (ours and key == b"content-length"):
                continue
            data = value.encode("latin-1")
            if key == b"content-length":
                has_length = True
            elif key == b"date":
                has_date = True
            elif key == b"connection":
                has_close = has_close or b"close" in (p.strip() for p in data.lower().split(b","))
            raw.append((key, data))
        if length is not None and status not in (204, 304) and (ours or not has_length):
            raw.append((b"content-length", str(length).encode("ascii")))
        if date is not None and not has_date:
            raw.append((b"date", date.encode("latin-1")))
        if self._must_close and not has_close:
            raw.append((b"connection", b"close"))
        response = h11.Response(status_code=status, headers=raw, reason=_reason(status))
        return self._h11.send(response)

    # -- connection state --------------------------------------------------

    def stop_keep_alive(self) -> None:
        """Close the connection after this response (the driver is shutting down, say)."""
        self._must_close = True

    @property
    def is_keep_alive(self) -> bool:
        """Whether the connection can carry another request after this one."""
        if self._must_close or self._eof:
            return False
        return self._h11.our_state not in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) and (
            self._h11.their_state not in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
        )

    @property
    def is_idle(self) -> bool:
        """Between requests, nothing buffered: the idle timeout applies, not the read one."""
        return (
            self._h11.their_state is h11.IDLE
            and self._h11.our_state is h11.IDLE
            and not self._h11.trailing_data[0]
        )

    @property
    def has_unread_input(self) -> bool:
        """Whether the client may still be sending: a request unfinished, or bytes buffered.

        Closing then would make the kernel answer them with a reset that can
        destroy the response (RFC 9112 §9.6), so a driver reads them first.
        """
        finished = (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED)
        return self._h11.their_state not in finished or bool(self._h11.trailing_data[0])

    @property
    def is_response_started(self) -> bool:
        """Whether the response head for the current request has been rendered."""
        return self._h11.our_state is not h11.IDLE and self._h11.our_state is not h11.SEND_RESPONSE

    @property
    def is_response_done(self) -> bool:
        """Whether the response for the current request is complete."""
        return self._h11.our_state in _RESPONSE_DONE
