"""Sans-IO HTTP/1.1 client side: a request out as bytes, the response in as small events.

Theory of operation. A transport owns one :class:`ClientConnection` per
upstream socket and uses it for one request at a time: render the head with
:meth:`~ClientConnection.start_request`, the body with
:meth:`~ClientConnection.send_body` and :meth:`~ClientConnection.end_request`
(``Content-Length`` or chunked, as the caller frames it), then feed what the
socket gives to :meth:`~ClientConnection.receive_data` (``b""`` at EOF) and
call :meth:`~ClientConnection.next_event` until :class:`ResponseEnd`:
:class:`ResponseHead` once, :class:`ResponseData` for the body,
:class:`ResponsePending` when it needs more bytes. An upstream that breaks
HTTP/1.1 raises :class:`UpstreamProtocolError`: nothing of such an answer is
ever relayed.

Two parser backends give the same events. ``httptools`` (llhttp, C) parses
the head; the body framing (``Content-Length`` counting, a strict chunked
decoder, read-until-close) is done here, so the end of the response is known
to the byte. ``h11`` is the reference: it parses head and body itself and
reports the bytes left over after the response.

The connection may carry another request only when :attr:`ResponseEnd.reusable`
says so: HTTP/1.1, no ``Connection: close`` on either side, the body framed by
``Content-Length`` or chunked (or absent by rule: ``HEAD``, 204, 304), the
request sent whole, and the response ended exactly where the bytes received
ended. Bytes after the end (a second response smuggled behind the first, a
body on a ``HEAD`` answer) or bytes arriving later while the connection is
idle make it unusable: they would otherwise become the next client's answer.

Rendering is ours and refuses CR, LF and NUL in header names and values (and
any name that is not an RFC 9110 token), so a header can never split a
request. ``1xx`` answers other than 101 are skipped (RFC 9110 §15.2). A 101
is an error unless the request was started with ``upgrade=True`` (a
WebSocket handshake the gateway passes on): then it is a
:class:`ResponseHead` with status 101, after which the connection is raw
bytes, never reused, and :meth:`~ClientConnection.take_tunnel_bytes` gives
what arrived after the 101 head (the tunnel's first bytes). A request
started as an upgrade never leaves its connection reusable, whatever the
answer. A response with both
``Content-Length`` and ``Transfer-Encoding``, with two different lengths, or
with a transfer coding other than ``chunked`` is an error (RFC 9112 §6.3):
the transport answers 502 and drops the connection. Nothing here does I/O.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final, Literal

import attrs
import h11
import httptools

from ._events import Headers
from ._wire import TCHAR

__all__ = [
    "ClientConnection",
    "ClientEvent",
    "ParserBackend",
    "ResponseData",
    "ResponseEnd",
    "ResponseHead",
    "ResponsePending",
    "UpstreamProtocolError",
    "UpstreamTarget",
    "check_request",
    "split_upstream_url",
]

ParserBackend = Literal["httptools", "h11"]

#: Bytes of a response head at most (status line plus header fields).
MAX_HEAD_BYTES: Final = 64 * 1024
#: Bytes of a chunk-size line (with extensions) or of the trailer section at most.
_MAX_CHUNK_LINE: Final = 4096
_MAX_TRAILERS: Final = 16 * 1024
_RECEIVE_CHUNK: Final = 65536

_TOKEN: Final = re.compile(f"[{TCHAR}]+")
_FORBIDDEN_IN_VALUE: Final = re.compile(r"[\r\n\x00]")
#: Tokens joined by ``:`` (header names, as :func:`_check_headers` joins them).
_TOKEN_LIST: Final = re.compile(f"[{TCHAR}]+(?::[{TCHAR}]+)*")
_TARGET: Final = re.compile(r"[\x21-\x7e\x80-\xff]+")
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n\x00]*)?[ \t]*\r\n")
_TRAILER_LINE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\r\n")
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class UpstreamProtocolError(Exception):
    """The upstream broke HTTP/1.1 (or a local rule): the exchange fails, the connection goes.

    Fields:
        detail: what went wrong, for the operator's log (never the offending bytes).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ClientEvent:
    """Base class of what :meth:`ClientConnection.next_event` returns."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class ResponseHead(ClientEvent):
    """The final response's status line and header fields.

    Fields:
        status: 200..599 (1xx answers are skipped), or 101 for a request
            started with ``upgrade=True``.
        reason: the reason phrase, Latin-1.
        headers: lower-case names, Latin-1 values, in arrival order.
        http_version: ``1.1`` or ``1.0``.
        content_length: body bytes that follow: the declared length, 0 when the
            response has no body by rule (``HEAD``, 204, 304), None when chunked
            or delimited by the connection's close.
    """

    status: int
    reason: str
    headers: Headers
    http_version: str
    content_length: int | None


@attrs.frozen(kw_only=True)
class ResponseData(ClientEvent):
    """Some bytes of the response body."""

    data: bytes


@attrs.frozen(kw_only=True)
class ResponseEnd(ClientEvent):
    """The response is complete.

    Fields:
        reusable: whether the connection may carry another request (see the
            module docstring for the rules).
    """

    reusable: bool


@attrs.frozen
class ResponsePending(ClientEvent):
    """Read more bytes and pass them to :meth:`ClientConnection.receive_data`."""


_PENDING: Final = ResponsePending()


@attrs.frozen(kw_only=True)
class UpstreamTarget:
    """Where an absolute ``http``/``https`` URL points, split for a request.

    Fields:
        scheme, host, port: the origin (``host`` without IPv6 brackets).
        target: the origin-form request-target (path and query).
        authority: the ``Host`` header value (the port only when not the default).
    """

    scheme: str
    host: str
    port: int
    target: str
    authority: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def split_upstream_url(url: str) -> UpstreamTarget:
    """Split an absolute URL for a request.

    The origin part is parsed once per distinct scheme and authority (a
    gateway talks to few), the rest is sliced.

    Raises:
        UpstreamProtocolError: not an ``http``/``https`` URL with a host, or a
            bad port.
    """
    scheme, separator, rest = url.partition("://")
    cut = len(rest)
    for mark in ("/", "?"):
        found = rest.find(mark, 0, cut)
        if found >= 0:
            cut = found
    authority = rest[:cut]
    if not separator or "#" in rest or "@" in authority:
        return _split_slowly(url)
    origin = _ORIGINS.get((scheme, authority))
    if origin is None:
        origin = _split_slowly(f"{scheme}://{authority}/")
        if len(_ORIGINS) >= _MAX_ORIGINS:
            _ORIGINS.clear()
        _ORIGINS[(scheme, authority)] = origin
    target = rest[cut:]
    if not target.startswith("/"):
        target = "/" + target
    return UpstreamTarget(
        scheme=origin.scheme,
        host=origin.host,
        port=origin.port,
        target=target,
        authority=origin.authority,
    )


#: Parsed origins by (scheme, authority) as written: a memo of a pure function.
_ORIGINS: Final[dict[tuple[str, str], UpstreamTarget]] = {}
_MAX_ORIGINS: Final = 1024


def _split_slowly(url: str) -> UpstreamTarget:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamProtocolError(f"bad upstream URL: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise UpstreamProtocolError(f"unsupported upstream URL scheme or host: {scheme!r}")
    default = _DEFAULT_PORTS[scheme]
    port = default if port is None else port
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == default else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return UpstreamTarget(scheme=scheme, host=host, port=port, target=target, authority=authority)


def check_request(method: str, target: str, headers: Headers) -> None:
    """Refuse what would break a request on the wire (see :meth:`ClientConnection.start_request`).

    Raises:
        UpstreamProtocolError: a malformed method or target, a header name
            that is not a token, or CR, LF or NUL in a value.
    """
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise UpstreamProtocolError("refusing to send a malformed method or target")
    _check_headers(headers)


def _check_headers(headers: Headers) -> None:
    """One regex pass over the names, one over the values (a ``:`` joins the names: it is no
    token character, so a name holding one shows in the count and fails the match)."""
    if not headers:
        return
    names, values = zip(*headers, strict=True)
    joined = ":".join(names)
    if joined.count(":") != len(names) - 1 or not _TOKEN_LIST.fullmatch(joined):
        raise UpstreamProtocolError("refusing to send a header name that is not a token")
    if _FORBIDDEN_IN_VALUE.search("".join(values)):
        raise UpstreamProtocolError("refusing to send CR, LF or NUL in a header value")


def _tokens(value: bytes) -> list[bytes]:
    return [part.strip().lower() for part in value.split(b",")]


def _framing_fields(
    raw: list[tuple[bytes, bytes]],
) -> tuple[set[bytes], list[bytes], bool, list[tuple[str, str]]]:
    """A head's lengths, transfer codings and ``close``, checked; and its decoded fields."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    close = False
    headers = []
    for name, value in raw:
        if name == b"content-length":
            lengths.update(_tokens(value))
        elif name == b"transfer-encoding":
            codings.extend(_tokens(value))
        elif name == b"connection" and b"close" in _tokens(value):
            close = True
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    if lengths and codings:
        raise UpstreamProtocolError("response has both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise UpstreamProtocolError("response has conflicting Content-Length values")
    if codings and codings != [b"chunked"]:
        raise UpstreamProtocolError("unsupported transfer coding in the response")
    return lengths, codings, close, headers


# -- the head parsers ----------------------------------------------------------------------


class _LlhttpHead:
    """Collects one response head from httptools' callbacks."""

    __slots__ = ("complete", "headers", "reason")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


_RawHead = tuple[int, bytes, list[tuple[bytes, bytes]], str]


def _parse_head_llhttp(head: bytes) -> _RawHead:
    collector = _LlhttpHead()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # a 101: the head is whole, the caller refuses it
    except httptools.HttpParserError as exc:
        raise UpstreamProtocolError(f"malformed response head: {exc}") from None
    if not collector.complete:  # pragma: no cover - the head ends with CRLF CRLF
        raise UpstreamProtocolError("malformed response head")
    return parser.get_status_code(), collector.reason, collector.headers, parser.get_http_version()


# -- the connection ------------------------------------------------------------------------

_IDLE, _SENDING, _HEAD, _BODY_LENGTH, _BODY_CHUNKED, _BODY_CLOSE, _DONE, _BROKEN = range(8)
_SWITCHED: Final = 8  # a 101 to an upgrade: the connection is a tunnel now
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS = range(4)


class ClientConnection:
    """One upstream connection, client side. See the module docstring for the loop.

    Args:
        backend: ``httptools`` (default) or ``h11`` (the reference).
        max_head_bytes: a longer response head is an error.
    """

    def __init__(
        self, backend: ParserBackend = "httptools", *, max_head_bytes: int = MAX_HEAD_BYTES
    ) -> None:
        if backend not in ("httptools", "h11"):
            raise ValueError(f"unknown parser backend {backend!r}")
        self.backend: ParserBackend = backend
        self.max_head_bytes = max_head_bytes
        self._h11: h11.Connection | None = None
        self._state = _IDLE
        self._method = ""
        self._buffer = b""
        self._eof = False
        self._dead = False  # bytes or EOF arrived while idle, or the last exchange broke
        self._keep_alive = True
        self._request_done = False
        self._chunked_out = False
        self._declared_out: int | None = None
        self._sent_out = 0
        self._started = False
        self._left = 0  # body bytes still due (Content-Length) or of the current chunk
        self._chunk_state = _CHUNK_SIZE
        self._trailer_bytes = 0
        self._requests = 0
        self._upgrade = False  # the current request proposes an upgrade
        self._tunnel = b""  # after a 101: the bytes that followed its head

    # -- the request -----------------------------------------------------------------

    def start_request(
        self,
        method: str,
        target: str,
        headers: Headers,
        *,
        authority: str,
        content_length: int | None,
        checked: bool = False,
        upgrade: bool = False,
    ) -> bytes:
        """Render the request head.

        ``Host`` is added from ``authority`` unless ``headers`` has one; any
        ``Content-Length`` or ``Transfer-Encoding`` in ``headers`` is replaced
        by the framing given: ``content_length`` bytes, or chunked for None.
        A body-less method with no body gets no framing header at all.
        ``checked``: :func:`check_request` passed already for these.
        ``upgrade``: the headers propose an upgrade (``Upgrade``,
        ``Connection: upgrade``) and a 101 is the answer hoped for.

        Raises:
            UpstreamProtocolError: the connection cannot take a request now,
                or a name, value, method or target would break the request.
        """
        if self._state not in (_IDLE, _DONE) or self._dead:
            raise UpstreamProtocolError("the connection cannot carry another request")
        if not checked:
            check_request(method, target, headers)
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        has_host = False
        close = False
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length" or lower == "transfer-encoding":
                continue
            if lower == "host":
                has_host = True
            elif lower == "connection":
                close = close or "close" in (t.strip().lower() for t in value.split(","))
            lines.append(f"{name}: {value}\r\n")
        if not has_host:
            lines.insert(1, f"host: {authority}\r\n")
        if content_length is None:
            lines.append("transfer-encoding: chunked\r\n")
        elif content_length or method not in _NO_BODY_METHODS:
            lines.append(f"content-length: {content_length}\r\n")
        lines.append("\r\n")
        try:
            data = "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise UpstreamProtocolError("refusing to send a header outside Latin-1") from None
        self._upgrade = upgrade
        self._reset(method, keep_alive=not (close or upgrade), content_length=content_length)
        return data

    def send_body(self, data: bytes) -> bytes:
        """Frame some request body bytes (``b""`` for nothing).

        Raises:
            UpstreamProtocolError: more bytes than the declared ``Content-Length``.
        """
        if not data:
            return b""
        self._sent_out += len(data)
        if self._chunked_out:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self._declared_out is not None and self._sent_out > self._declared_out:
            self._dead = True
            raise UpstreamProtocolError("request body longer than its Content-Length")
        return data

    def end_request(self) -> bytes:
        """Finish the request body.

        Raises:
            UpstreamProtocolError: fewer bytes than the declared ``Content-Length``.
        """
        if self._declared_out is not None and self._sent_out != self._declared_out:
            self._dead = True
            raise UpstreamProtocolError("request body shorter than its Content-Length")
        self._request_done = True
        return b"0\r\n\r\n" if self._chunked_out else b""

    def _reset(self, method: str, *, keep_alive: bool, content_length: int | None) -> None:
        self._method = method
        self._state = _HEAD
        self._keep_alive = keep_alive
        self._request_done = False
        self._chunked_out = content_length is None
        self._declared_out = content_length
        self._sent_out = 0
        self._started = False
        self._requests += 1
        if self.backend == "h11":
            self._h11_start(method)

    # -- the response ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the upstream closed its side.

        Bytes (or EOF) arriving while no response is expected make the
        connection unusable.
        """
        if not data:
            self._eof = True
        if self._state in (_IDLE, _DONE, _SWITCHED):
            self._dead = True
            return
        if data:
            self._started = True
        if self._h11 is not None:
            self._h11.receive_data(data)
        elif data:
            self._buffer = self._buffer + data if self._buffer else data

    def next_event(self) -> ClientEvent:
        """Return the next part of the response.

        Raises:
            UpstreamProtocolError: the upstream broke HTTP/1.1 or closed early.
        """
        try:
            if self._h11 is not None:
                return self._h11_next()
            return self._next()
        except UpstreamProtocolError:
            self._state = _BROKEN
            self._dead = True
            raise

    def take_tunnel_bytes(self) -> bytes:
        """After a 101: the bytes that arrived after its head (then ``b""``).

        The connection is a tunnel now: the caller reads and writes the socket
        directly and never gives this connection another request.

        Raises:
            UpstreamProtocolError: no 101 was received.
        """
        if self._state != _SWITCHED:
            raise UpstreamProtocolError("the connection did not switch protocols")
        data, self._tunnel = self._tunnel, b""
        return data

    @property
    def response_started(self) -> bool:
        """Whether any byte of a response arrived for the current request."""
        return self._started

    @property
    def is_reusable(self) -> bool:
        """Whether the connection may carry another request now."""
        return self._state in (_IDLE, _DONE) and not self._dead

    @property
    def requests(self) -> int:
        """Requests started on this connection."""
        return self._requests

    # -- httptools backend: head by llhttp, framing here ------------------------------------

    def _next(self) -> ClientEvent:
        state = self._state
        if state == _BODY_LENGTH:
            return self._next_length()
        if state == _BODY_CHUNKED:
            return self._next_chunked()
        if state == _BODY_CLOSE:
            if self._buffer:
                data, self._buffer = self._buffer, b""
                return ResponseData(data=data)
            if self._eof:
                return self._end(exact=False)
            return _PENDING
        if state == _HEAD:
            return self._next_head()
        raise UpstreamProtocolError("no response is expected")

    def _next_head(self) -> ClientEvent:
        while True:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_head_bytes:
                    raise UpstreamProtocolError("response head too large")
                if b"\n\n" in buffer or (buffer and not b"HTTP/".startswith(buffer[:5])):
                    raise UpstreamProtocolError("malformed response head")
                if self._eof:
                    raise UpstreamProtocolError(
                        "upstream closed the connection before a response"
                        if not buffer
                        else "upstream closed the connection in the response head"
                    )
                return _PENDING
            if end + 4 > self.max_head_bytes:
                raise UpstreamProtocolError("response head too large")
            if not buffer.startswith(b"HTTP/"):
                raise UpstreamProtocolError("malformed response head")
            head, self._buffer = buffer[: end + 4], buffer[end + 4 :]
            status, reason, headers, version = _parse_head_llhttp(head)
            event = self._on_head(status, reason, headers, version)
            if event is not None:
                if event.status == 101:
                    self._tunnel, self._buffer = self._buffer, b""
                return event

    def _next_length(self) -> ClientEvent:
        if not self._left:
            return self._end(exact=True)
        buffer = self._buffer
        if buffer:
            if len(buffer) <= self._left:
                self._buffer = b""
                self._left -= len(buffer)
                return ResponseData(data=buffer)
            data, self._buffer = buffer[: self._left], buffer[self._left :]
            self._left = 0
            return ResponseData(data=data)
        if self._eof:
            raise UpstreamProtocolError("upstream closed the connection in the response body")
        return _PENDING

    def _next_chunked(self) -> ClientEvent:
        while True:
            event = self._chunk_step(self._buffer)
            if event is not None:
                break
        if event is _PENDING and self._eof:
            raise UpstreamProtocolError("upstream closed the connection in the response body")
        return event

    def _chunk_step(self, buffer: bytes) -> ClientEvent | None:
        """One step of the chunked decoder; None to take another."""
        state = self._chunk_state
        if state == _CHUNK_DATA:
            if not buffer:
                return _PENDING
            if len(buffer) <= self._left:
                self._buffer = b""
                data = buffer
            else:
                data, self._buffer = buffer[: self._left], buffer[self._left :]
            self._left -= len(data)
            if not self._left:
                self._chunk_state = _CHUNK_CRLF
            return ResponseData(data=data)
        if state == _CHUNK_CRLF:
            if len(buffer) < 2:
                if buffer and buffer != b"\r":
                    raise UpstreamProtocolError("malformed chunked body")
                return _PENDING
            if not buffer.startswith(b"\r\n"):
                raise UpstreamProtocolError("malformed chunked body")
            self._buffer = buffer[2:]
            self._chunk_state = _CHUNK_SIZE
            return None
        if state == _CHUNK_SIZE:
            return None if self._chunk_size(buffer) else _PENDING
        return self._end(exact=True) if self._trailers(buffer) else _PENDING

    def _chunk_size(self, buffer: bytes) -> bool:
        end = buffer.find(b"\n", 0, _MAX_CHUNK_LINE)
        if end < 0:
            if len(buffer) >= _MAX_CHUNK_LINE:
                raise UpstreamProtocolError("chunk-size line too long")
            return False
        found = _CHUNK_LINE.fullmatch(buffer, 0, end + 1)
        if found is None:
            raise UpstreamProtocolError("malformed chunk-size line")
        self._buffer = buffer[end + 1 :]
        self._left = int(found.group(1), 16)
        self._chunk_state = _CHUNK_DATA if self._left else _TRAILERS
        self._trailer_bytes = 0
        return True

    def _trailers(self, buffer: bytes) -> bool:
        """Skip the trailer section; True once its final empty line is read."""
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if self._trailer_bytes + len(buffer) > _MAX_TRAILERS:
                    raise UpstreamProtocolError("trailer section too large")
                self._buffer = buffer
                return False
            line = buffer[: end + 1]
            self._trailer_bytes += len(line)
            if self._trailer_bytes > _MAX_TRAILERS:
                raise UpstreamProtocolError("trailer section too large")
            buffer = buffer[end + 1 :]
            if line == b"\r\n":
                self._buffer = buffer
                return True
            if _TRAILER_LINE.fullmatch(line) is None:
                raise UpstreamProtocolError("malformed trailer field")

    # -- shared: the head's meaning and the end -------------------------------------------

    def _on_head(
        self, status: int, reason: bytes, raw: list[tuple[bytes, bytes]], version: str
    ) -> ResponseHead | None:
        """Decide the framing of a parsed head; None for a skipped 1xx."""
        if version not in ("1.1", "1.0"):
            raise UpstreamProtocolError(f"unsupported HTTP version {version!r}")
        if status == 101:
            if not self._upgrade:
                raise UpstreamProtocolError("upstream switched protocols (101) unasked")
            self._state, self._dead = _SWITCHED, True
            return ResponseHead(
                status=101,
                reason=reason.decode("latin-1"),
                headers=tuple(
                    (name.decode("latin-1"), value.decode("latin-1")) for name, value in raw
                ),
                http_version=version,
                content_length=0,
            )
        if 100 <= status < 200:
            return None
        if not 200 <= status <= 599:
            raise UpstreamProtocolError(f"bad status code {status}")
        lengths, codings, close, headers = _framing_fields(raw)
        keep_alive = self._keep_alive and version == "1.1" and not close
        length: int | None = None
        if lengths:
            (text,) = lengths
            if not _DIGITS.fullmatch(text):
                raise UpstreamProtocolError("malformed Content-Length")
            length = int(text)
        self._keep_alive = keep_alive
        if self._method == "HEAD" or status in (204, 304):
            self._state, self._left, length = _BODY_LENGTH, 0, 0
        elif codings:
            self._state, self._chunk_state = _BODY_CHUNKED, _CHUNK_SIZE
        elif length is not None:
            self._state, self._left = _BODY_LENGTH, length
        else:
            self._state, self._keep_alive = _BODY_CLOSE, False
        return ResponseHead(
            status=status,
            reason=reason.decode("latin-1"),
            headers=tuple(headers),
            http_version=version,
            content_length=length,
        )

    def _end(self, *, exact: bool, leftover: bool = False) -> ResponseEnd:
        self._state = _DONE
        leftover = leftover or bool(self._buffer)
        self._buffer = b""
        reusable = (
            exact
            and not leftover
            and self._keep_alive
            and self._request_done
            and not self._eof
            and not self._dead
        )
        if not reusable:
            self._dead = True
        return ResponseEnd(reusable=reusable)

    # -- h11 backend: the reference ----------------------------------------------------------

    def _h11_start(self, method: str) -> None:
        conn = self._h11
        if conn is None:
            conn = self._h11 = h11.Connection(
                h11.CLIENT, max_incomplete_event_size=self.max_head_bytes
            )
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # h11 tracks the response side only: it learns the method (and whether
        # a 101 may come), the bytes on the wire are ours.
        headers = [("host", "upstream")]
        if self._upgrade:
            headers += [("connection", "upgrade"), ("upgrade", "websocket")]
        conn.send(h11.Request(method=method, target="/", headers=headers))
        conn.send(h11.EndOfMessage())

    def _h11_next(self) -> ClientEvent:
        conn = self._h11
        assert conn is not None
        if self._state in (_IDLE, _DONE, _BROKEN, _SWITCHED):
            raise UpstreamProtocolError("no response is expected")
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(_h11_detail(exc, self._started)) from None
            if event is h11.NEED_DATA:
                return _PENDING
            if isinstance(event, h11.InformationalResponse):
                head = self._on_head(
                    event.status_code,
                    bytes(event.reason),
                    list(event.headers),
                    event.http_version.decode("ascii"),
                )
                if head is not None:  # a 101 for an upgrade: h11 keeps the rest unread
                    self._tunnel = conn.trailing_data[0]
                    return head
                continue
            if isinstance(event, h11.Response):
                head = self._on_head(
                    event.status_code,
                    bytes(event.reason),
                    list(event.headers),
                    event.http_version.decode("ascii"),
                )
                assert head is not None
                return head
            if isinstance(event, h11.Data):
                return ResponseData(data=bytes(event.data))
            if isinstance(event, h11.EndOfMessage):
                exact = conn.their_state is h11.DONE
                return self._end(exact=exact, leftover=bool(conn.trailing_data[0]))
            raise UpstreamProtocolError(
                "upstream closed the connection in the response"
                if self._started
                else "upstream closed the connection before a response"
            )


def _h11_detail(exc: h11.RemoteProtocolError, started: bool) -> str:
    text = str(exc).split(":", 1)[0]
    if not started:
        return "upstream closed the connection before a response"
    if "without sending complete message body" in text or "peer closed" in text:
        return "upstream closed the connection in the response"
    return f"malformed response: {text}"
