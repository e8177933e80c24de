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
visible characters as a request-target.
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


def _loose(head: bytes) -> str | None:
    """Why llhttp would refuse a head that h11 took, or ``None``."""
    if head.count(b"\n") != head.count(b"\r\n"):
        return "a bare LF in the head"
    if b"\n " in head or b"\n\t" in head:
        return "obs-fold in the head"
    if _CONTROL.search(head) is not None:
        return "a control character in the head"
    lowered = head.lower()
    first = lowered.find(_LENGTH_FIELD)
    if first >= 0 and (
        lowered.find(_LENGTH_FIELD, first + 1) >= 0
        or b"," in lowered[first : lowered.find(b"\r\n", first + 1)]
    ):
        return "more than one Content-Length"
    return None


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

    def feed(self, data: bytes) -> None:
        """Take bytes from the socket; ``b""`` is the client's end of input."""
        if self._eof:
            return
        if not data:
            self._eof = True
        elif self._in_head:
            self._head_raw.append(data)
        self._conn.receive_data(data)

    def next(self) -> RawEvent | None:
        """The next raw event, or ``None`` when h11 needs more bytes."""
        if self._dead:
            return None
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

    def has_buffered(self) -> bool:
        """Whether unparsed bytes wait in h11's buffer."""
        return bool(self._conn.trailing_data[0])
