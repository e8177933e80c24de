"""The h11 parser backend: the reference, pure Python, held as strict as llhttp.

Theory of operation. h11 parses one request per cycle and pauses after it,
so the bytes of a pipelined request stay in its buffer until the connection
moves on. h11 is used for reading only: responses are rendered by
:mod:`sapg_core._wire`, so h11 never learns that a response went out. To move
on, this backend starts a fresh ``h11.Connection`` and hands it h11's
``trailing_data`` (the unparsed bytes and whether the client closed): the
state machine of the new cycle starts clean, exactly where the old one
stopped reading.

h11 is looser than llhttp in a few places that matter for request
smuggling: it unfolds obs-fold lines, takes a bare LF as a line end and
lets control characters other than NUL and CR through in header values,
folds repeated equal ``Content-Length`` fields into one and takes any
visible characters as a request-target. In a chunked body it takes
whitespace after a chunk size, sizes past 64 bits and obs-fold in trailers:
a small scanner follows the chunk framing over the same bytes to refuse
those where llhttp does.
The bytes of each head are therefore kept until h11 has parsed it and then
searched once for those shapes; a head that has any is refused 400, as
llhttp refuses it.
"""

from __future__ import annotations

import re
import sys
from typing import Final

import h11

from ._wire import END, EOF, RawEvent, RawFailure, RawHead

__all__ = ["H11Parser"]

_UNLIMITED: Final = sys.maxsize
#: The end of a head as h11 finds it (it accepts a bare LF).
_HEAD_END: Final = re.compile(rb"\n\r?\n")
#: Control characters but HTAB, CR and LF: llhttp refuses them in a head, h11 takes most.
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: A request-target as llhttp takes it (but for CONNECT): origin-form, ``*``, or
#: absolute-form with a letters-only scheme and an authority of its characters.
_TARGET: Final = re.compile(rb"[/*]|[A-Za-z]+://[-A-Za-z0-9_.!~*'()%;:&=+$,\[\]@]*(?:[/?#]|\Z)")
_LENGTH_FIELD: Final = b"\ncontent-length:"


def _loose_lines(lines: bytes) -> str | None:
    """Why llhttp would refuse these header (or trailer) lines that h11 took, or ``None``."""
    if lines.count(b"\n") != lines.count(b"\r\n"):
        return "a bare LF in the head"
    if b"\n " in lines or b"\n\t" in lines:
        return "obs-fold in the head"
    if _CONTROL.search(lines) is not None:
        return "a control character in the head"
    return None


def _loose(head: bytes) -> str | None:
    """Why llhttp would refuse a head that h11 took, or ``None``."""
    why = _loose_lines(head)
    if why is not None:
        return why
    lowered = head.lower()
    first = lowered.find(_LENGTH_FIELD)
    if first >= 0 and (
        lowered.find(_LENGTH_FIELD, first + 1) >= 0
        or b"," in lowered[first : lowered.find(b"\r\n", first + 1)]
    ):
        return "more than one Content-Length"
    return None


_HEX: Final = re.compile(rb"[0-9A-Fa-f]*")
_T: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_TOKEN_SO_FAR: Final = re.compile(_T + rb"*")
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*'
#: Chunk extensions as llhttp takes them: ``;name[=token|"quoted"]``, names not empty.
_EXTENSIONS: Final = re.compile(rb"(?:;+" + _T + rb"+(?:=(?:" + _T + rb"*|" + _QUOTED + rb'"))?)*')
#: A beginning of them that llhttp has not refused yet (it refuses at the first bad byte).
_EXTENSIONS_SO_FAR: Final = re.compile(
    rb"(?:;+" + _T + rb"+(?:=(?:" + _T + rb"*|" + _QUOTED + rb'"))?)*'
    rb"(?:;+" + _T + rb"*(?:=(?:" + _T + rb"*|" + _QUOTED + rb"\\?)?)?)?"
)
_MAX_CHUNK_SIZE: Final = 2**64 - 1  # llhttp keeps it in a uint64
# What the chunk scanner is reading.
_SIZE_LINE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILERS: Final = 3
_FINISHED: Final = 4


def _bad_trailer(line: bytes, *, complete: bool) -> str | None:
    """Why llhttp refuses this trailer line (or its beginning so far), or ``None``."""
    why = _loose_lines(b"\r\n" + line)
    body = line.removesuffix(b"\r\n" if complete else b"\r")
    name, colon, value = body.partition(b":")
    ended = complete or body != line  # the line ends here (or at the LF to come)
    if why is None and (
        _TOKEN_SO_FAR.fullmatch(name) is None or (colon and not name) or (ended and not colon)
    ):
        why = "invalid trailer field"
    if why is None and colon:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and value.strip(b" \t")):
            why = "framing field in the trailers"
    return why


class _ChunkScan:
    """Reads a chunked body beside h11 to refuse what llhttp refuses and h11 takes.

    h11 takes whitespace after a chunk size and sizes of up to 20 hex digits,
    and unfolds obs-fold in trailers; llhttp refuses each (a size must fit 64
    bits). This follows the framing over the raw bytes (h11 parses them, not
    this) and notes the first such fault and how many body bytes come before
    it, so the failure is reported exactly where llhttp reports it.
    """

    def __init__(self) -> None:
        self.state = _SIZE_LINE
        self.line = b""
        self.remaining = 0
        self.body = 0  # chunk data bytes before the current position
        self.fault: str | None = None

    def feed(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size and self.fault is None and self.state != _FINISHED:
            if self.state == _DATA or self.state == _DATA_END:
                take = min(self.remaining, size - at)
                at += take
                self.remaining -= take
                if self.state == _DATA:
                    self.body += take
                if not self.remaining:
                    self.state, self.remaining = (
                        (_DATA_END, 2) if self.state == _DATA else (_SIZE_LINE, 0)
                    )
                continue
            end = data.find(b"\n", at)
            if end < 0:
                self.line += data[at:]
                if self.state == _SIZE_LINE:
                    self._size(self.line, complete=False)
                else:  # llhttp refuses a trailer as soon as it sees the fault
                    self.fault = (
                        _bad_trailer(self.line, complete=False) if self.line != b"\r" else None
                    )
                return
            line, self.line, at = self.line + data[at : end + 1], b"", end + 1
            if self.state == _SIZE_LINE:
                self._size(line, complete=True)
            elif line == b"\r\n":
                self.state = _FINISHED
            else:
                self.fault = _bad_trailer(line, complete=True)

    def _size(self, line: bytes, *, complete: bool) -> None:
        line = line.removesuffix(b"\r\n" if complete else b"\r")
        token, semicolon, ext = line.partition(b";")
        if _HEX.fullmatch(token) is None:
            self.fault = "invalid character in a chunk size"
        elif token and int(token, 16) > _MAX_CHUNK_SIZE:
            self.fault = "chunk size overflow"
        elif (
            semicolon
            and (_EXTENSIONS if complete else _EXTENSIONS_SO_FAR).fullmatch(b";" + ext) is None
        ):
            self.fault = "invalid character in chunk extensions"
        elif complete:
            self.remaining = int(token, 16) if token else 0
            self.state = _DATA if self.remaining else _TRAILERS


class H11Parser:
    """Requests parsed by h11, one cycle at a time.

    Args:
        max_head: the largest incomplete head to buffer, in bytes (0: no limit).
    """

    def __init__(self, max_head: int) -> None:
        self._max = max_head or _UNLIMITED
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        self._head_raw: list[bytes] = []
        self._in_head = True
        self._eof = False
        self._dead = False
        self._chunks: _ChunkScan | None = None  # beside a chunked body
        self._delivered = 0  # body bytes handed out

    def feed(self, data: bytes) -> None:
        """Take bytes from the socket; ``b""`` is the client's end of input."""
        if self._eof:
            return
        if not data:
            self._eof = True
        elif self._dead:
            return  # refused: what a driver drains after that is not kept
        elif self._in_head:
            self._head_raw.append(data)
        elif self._chunks is not None:
            self._chunks.feed(data)
        self._conn.receive_data(data)

    def next(self) -> RawEvent | None:
        """The next raw event, or ``None`` when h11 needs more bytes."""
        if self._dead:
            return None
        chunks = self._chunks
        if chunks is not None and chunks.fault and self._delivered >= chunks.body:
            self._dead = True
            return RawFailure(400, chunks.fault)
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._dead = True
            # h11 quotes the offending bytes after a colon; they may hold
            # credentials (a query string, a header), so keep only the reason.
            return RawFailure(exc.error_status_hint, str(exc).split(":", 1)[0])
        kind = type(event)
        if kind is h11.Data:
            data = event.data  # type: ignore[union-attr]
            self._delivered += len(data)
            return data if type(data) is bytes else bytes(data)
        if kind is h11.EndOfMessage:
            return END
        if kind is h11.Request:
            return self._head(event)  # type: ignore[arg-type]
        if kind is h11.ConnectionClosed:
            return EOF
        return None  # NEED_DATA, or PAUSED (the request is complete: nothing to read)

    def _head(self, request: h11.Request) -> RawEvent:
        raw = b"".join(self._head_raw)
        self._head_raw = []
        self._in_head = False
        end = _HEAD_END.search(raw)
        stop = end.end() if end is not None else len(raw)
        why = _loose(raw[:stop])
        if why is None and request.method != b"CONNECT" and not _TARGET.match(request.target):
            why = "malformed request-target"
        if why is not None:
            self._dead = True
            return RawFailure(400, why)
        if any(name == b"transfer-encoding" for name, _ in request.headers):
            self._chunks = _ChunkScan()
            self._chunks.feed(raw[stop:])
        return RawHead(
            bytes(request.method),
            bytes(request.target),
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers],
            request.http_version.decode("ascii"),
            stop,
        )

    def next_cycle(self) -> None:
        """Start a fresh h11 connection on the bytes the last one left unread."""
        data, closed = self._conn.trailing_data
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)
        if data:
            self._conn.receive_data(data)
        if closed:
            self._conn.receive_data(b"")
        self._head_raw = [data] if data else []
        self._in_head = True
        self._chunks = None
        self._delivered = 0

    def has_buffered(self) -> bool:
        """Whether unparsed bytes wait in h11's buffer."""
        return bool(self._conn.trailing_data[0])

    def take_trailing(self) -> bytes | None:
        """The raw bytes after an upgrade request, for a switched connection.

        h11 pauses after a request that proposes an upgrade (an ``Upgrade``
        field) and keeps what follows unparsed: that is the tunnel's first
        input. The parser is done after this.
        """
        if self._dead or self._conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:  # type: ignore[attr-defined]
            return None
        self._dead = True
        return self._conn.trailing_data[0]
