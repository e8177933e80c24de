"""The httptools backend: llhttp (C) parses, callbacks queue raw events.

Theory of operation. ``httptools.HttpRequestParser`` calls back as it goes
(``on_message_begin``, ``on_url``, ``on_header``, ``on_headers_complete``,
``on_body``, ``on_message_complete``); each callback appends a raw event of
:mod:`sapg_core._wire` to a deque, and :meth:`LLHTTPParser.next` pops them.
httptools offers no way to pause llhttp at the end of a message, so a
pipelined request is parsed as soon as its bytes arrive and its events wait
in the deque: the connection in :mod:`sapg_core._http` hands them out only
once the response before it is done, which keeps responses in order. What
the deque can hold is bounded by what one read brings, since a driver reads
again only when told :class:`NeedData`.

llhttp runs with every leniency off. Where it still accepts what h11 (the
reference) refuses, this backend refuses too: the request line must be
``method SP target SP HTTP/``, checked against the raw bytes (which also
gives the head's exact size); header values lose their trailing
whitespace, as h11 trims it. Where llhttp refuses, the
answer must still be h11's (400, 431 or 501): the head is handed to a fresh
h11 connection and its verdict taken, waiting for the rest of the head if
h11 would (so both backends answer at the same byte). A request llhttp
takes as an upgrade (``CONNECT``, or ``Upgrade`` with ``Connection:
upgrade``) is switched only if the connection asks (:meth:`take_trailing`,
after a ``101``). Without a body, the bytes after it are held back raw until
the connection decides: switched, they are handed over unparsed (a
WebSocket's first frames); answered like any other request, a new parser
takes them at the next cycle. With a body (never switched), a new parser
takes the bytes after its head at once, primed with a head of the same body
framing.

llhttp knows only the methods of its own table (and only in upper case),
while HTTP lets a method be any token and the original gateway routes
whatever method it is sent (``patch`` and ``INVALID`` reach the router and
answer 404, or match an ``ANY`` route). So a method llhttp refuses hands the
connection over to the h11 backend from that request on: the bytes of the
refused head are fed to an :class:`~sapg_core._h11_backend.H11Parser`, which
gives the same events h11 would have given from the start, and every later
call goes to it. Clients that send such methods are rare; everyone else
stays on llhttp.

llhttp bounds nothing, so an incomplete head is measured here: the bytes fed
since it began (the read that began it counted from where the previous
message ended), 431 once over the limit.
"""

from __future__ import annotations

import collections
import sys
from typing import Final

import h11
import httptools

from ._h11_backend import H11Parser
from ._wire import END, EOF, RawEvent, RawFailure, RawHead

__all__ = ["LLHTTPParser"]

_UNLIMITED: Final = sys.maxsize
_CRLFCRLF: Final = b"\r\n\r\n"
_CONNECTION_CLOSE_REASON: Final = "Data after `Connection: close`"
#: Refused by llhttp just after on_headers_complete, so the head was already queued.
_INVALID_TE_REASON: Final = "Request has invalid `Transfer-Encoding`"


class _Refused(Exception):
    """Raised inside a callback to stop llhttp with our own verdict."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


#: Header names as they came -> lower-cased str; a client sends the same few again and again.
_NAMES: Final[dict[bytes, str]] = {}
_MAX_NAMES: Final = 1024


def _name(raw: bytes) -> str:
    name = raw.lower().decode("latin-1")
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = name
    return name


def _skip_chunked(data: bytes, pos: int) -> int | None:
    """The end of a chunked body (already validated by llhttp) that starts at ``pos``."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            break
        pos += size + 2
    while True:  # the trailer section, up to its empty line
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        if eol == pos:
            return pos + 2
        pos = eol + 2


class LLHTTPParser:
    """Requests parsed by llhttp through httptools.

    Args:
        max_head: the largest head to accept, in bytes (0: no limit).
    """

    def __init__(self, max_head: int) -> None:
        self._max = max_head
        self._events: collections.deque[RawEvent] = collections.deque()
        self._parser = self._new_parser()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []  # as llhttp gave them
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._in_body = False  # between on_headers_complete and on_message_complete
        self._data = b""  # the read being parsed
        self._held: list[bytes] = []  # earlier reads of the incomplete head
        self._partial = 0  # bytes of the incomplete head so far
        self._cursor = 0  # where in _data the current message began (best known)
        self._began_here = False
        self._completed_here = False
        self._body_start = 0  # where in _data the current body began
        self._body_now = 0  # body bytes of the current message in this read
        self._exact = True  # whether _cursor is exact (not after a chunked body)
        self._head_here = False  # the current message's head ended in this read
        self._chunked_from = -1  # the last body was chunked and began here, at this offset
        self._chunked = False  # the current message's body is chunked
        self._last_chunked = False  # the last complete message's body was chunked
        self._upgrade_body: bytes | None = None
        self._held_upgrade: bytes | None = None  # raw bytes after a body-less upgrade request
        self._head_bytes = (b"", 0)  # where the last head is: (bytes, offset), no copy
        self._priming = False
        self._classify: h11.Connection | None = None
        self._eof = False
        self._dead = False
        self._h11: H11Parser | None = None  # after a method llhttp does not know
        self._h11_started = False  # its first request is being handed out

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(
            lenient_headers=False,
            lenient_chunked_length=False,
            lenient_keep_alive=False,
            lenient_transfer_encoding=False,
            lenient_version=False,
            lenient_data_after_close=False,
            lenient_optional_lf_after_cr=False,
            lenient_optional_cr_before_lf=False,
            lenient_optional_crlf_after_chunk=False,
            lenient_spaces_after_chunk_size=False,
        )
        return parser

    # -- the connection's side -------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse bytes from the socket now; ``b""`` is the client's end of input."""
        if self._h11 is not None:
            self._h11.feed(data)
            return
        if self._eof or self._dead:
            return
        if not data:
            self._eof = True
            return
        if self._held_upgrade is not None:  # wait for the switch or the next cycle
            self._held_upgrade += data
            return
        if self._classify is not None:
            self._classify.receive_data(data)
            self._judge()
            return
        while data:  # more than once only after a request llhttp took as an upgrade
            data = self._parse(data)
        self._data = b""

    def _parse(self, data: bytes) -> bytes:
        """Parse one read; return what follows an upgrade request in it (else ``b""``)."""
        self._data = data
        self._began_here = self._completed_here = False
        self._cursor = self._body_start = self._body_now = 0
        self._exact = True
        self._head_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return self._upgrade(data, int(exc.args[0]))
        except httptools.HttpParserInvalidMethodError:
            self._hand_over(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._fail(refused.status, refused.detail)
            else:  # pragma: no cover - our callbacks raise nothing else
                raise
        except httptools.HttpParserError as exc:
            self._refuse(data, str(exc))
        else:
            if self._in_head:
                self._measure(data)
        return b""

    def next(self) -> RawEvent | None:
        """The next raw event, or ``None`` when more bytes are needed."""
        if self._events:
            return self._events.popleft()
        if self._h11 is not None:
            self._h11_started = True
            return self._h11.next()
        if self._eof and not self._dead:
            self._dead = True
            if self._in_head or self._in_body or self._held or self._classify:
                return RawFailure(400, "the client closed in the middle of a request")
            return EOF
        return None

    def next_cycle(self) -> None:
        """Nothing to do for llhttp: it has parsed ahead, and the deque keeps the order.

        After a hand-over, h11 starts its next cycle once its own first request
        has been handed out (the requests parsed by llhttp before it come first).
        """
        if self._h11 is not None and self._h11_started:
            self._h11.next_cycle()
        held, self._held_upgrade = self._held_upgrade, None
        if held:  # the upgrade request was answered without a switch: parse on
            while held:
                held = self._parse(held)
            self._data = b""

    def take_trailing(self) -> bytes | None:
        """The raw bytes after a body-less upgrade request, for a switched connection.

        The parser is done after this: later input is not parsed.
        """
        if self._h11 is not None:
            return self._h11.take_trailing()
        held = self._held_upgrade
        if held is None or self._events:
            return None
        self._held_upgrade = None
        self._dead = True
        return held

    def has_buffered(self) -> bool:
        """Whether events wait in the deque or a request is partly parsed."""
        if self._h11 is not None and (self._h11_started or not self._events):
            return bool(self._events) or self._h11.has_buffered()
        return bool(
            self._events
            or self._in_head
            or self._in_body
            or self._held
            or self._classify
            or self._held_upgrade
        )

    # -- llhttp's callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._priming:
            return
        self._in_head = True
        self._began_here = True
        self._url = b""
        self._headers = []  # also drops the trailer fields of the message before

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # As little as can be per field: the work is done once, in on_headers_complete.
        # (Trailer fields land here too, after it, and are dropped at the next message.)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._body_now = 0
        if self._priming:
            return
        parser = self._parser
        method = parser.get_method()
        url = self._url
        data = self._data
        held = len(self._held)
        if held:
            data = b"".join(self._held) + data
            held = len(data) - len(self._data)
            self._held = []
        self._partial = 0
        cursor = self._cursor if self._exact else self._where_next(guess=False)
        key = b"%b %b HTTP/" % (method, url)
        start = cursor if data.startswith(key, cursor) else data.find(key, cursor)
        # llhttp takes several spaces between the parts of the request line,
        # and skips empty lines before it; h11 does neither. Where the line
        # must begin is known exactly but after a chunked body that began in
        # an earlier read.
        if start < 0 or (start != cursor and self._began_here and self._exact):
            raise _Refused(400, "malformed request line")
        eol = start + len(key) + 3  # llhttp took exactly one digit, a dot and one digit
        end = data.find(_CRLFCRLF, eol) + 4
        self._body_start = max(end - held, 0)
        self._head_here = True
        self._head_bytes = (data, start)
        names = _NAMES
        if data.find(b" \r\n", start, end) < 0 and data.find(b"\t\r\n", start, end) < 0:
            headers = [
                (names.get(name) or _name(name), value.decode("latin-1"))
                for name, value in self._headers
            ]
        else:  # some value has trailing whitespace, which h11 trims
            headers = [
                (names.get(name) or _name(name), value.rstrip(b" \t").decode("latin-1"))
                for name, value in self._headers
            ]
        self._headers = []
        self._chunked = False
        if parser.should_upgrade():
            self._upgrade_body = self._framing(headers)
        version = data[eol - 3 : eol].decode("ascii")
        self._events.append(RawHead(method, url, headers, version, end - start))

    def on_body(self, body: bytes) -> None:
        self._events.append(body)
        self._body_now += len(body)

    def on_chunk_header(self) -> None:
        self._chunked = True

    def on_message_complete(self) -> None:
        if self._upgrade_body is not None:
            return  # the body follows the upgrade: the primed parser reads it
        self._in_body = False
        self._completed_here = True
        self._events.append(END)
        # Where the next message begins: exact after a body framed by length;
        # after a chunked one, only a lower bound (chunk sizes are not counted).
        self._cursor = self._body_start + self._body_now
        self._last_chunked = self._chunked
        if self._chunked:
            self._exact = False
            self._chunked_from = self._body_start if self._head_here else -1
        self._head_here = False

    # -- the rare paths --------------------------------------------------------

    @staticmethod
    def _framing(headers: list[tuple[str, str]]) -> bytes | None:
        for name, _ in headers:
            if name == "transfer-encoding":
                return b"transfer-encoding: chunked\r\n"
        for name, value in headers:
            if name == "content-length" and value not in ("", "0"):
                return b"content-length: " + value.encode("latin-1") + b"\r\n"
        return None

    def _upgrade(self, data: bytes, offset: int) -> bytes:
        # Switched only on the connection's word; until then, or with a body, the
        # rest is HTTP/1.1 (see the module doc).
        self._parser = self._new_parser()
        framing, self._upgrade_body = self._upgrade_body, None
        if framing is None:
            self._held_upgrade = data[offset:]
            return b""
        self._priming = True
        try:
            self._parser.feed_data(b"PUT / HTTP/1.1\r\nhost: x\r\n" + framing + b"\r\n")
        finally:
            self._priming = False
        return data[offset:]

    def _where_next(self, *, guess: bool = True) -> int:
        """Where the message after the last complete one begins in this read.

        After a body framed by length that is known; after a chunked body
        that began in this read, the chunks are skipped again here (llhttp
        does not say where it ended); else it is a lower bound, or with
        ``guess`` a best guess.
        """
        if not self._exact and self._chunked_from >= 0:
            end = _skip_chunked(self._data, self._chunked_from)
            if end is not None:
                self._cursor, self._exact = end, True
            self._chunked_from = -1
        if not self._exact and guess:
            # The chunked body began in an earlier read: its end is most
            # likely the first empty line from here (a best guess, used only
            # to find where a refused head began).
            data = self._data
            end = data.find(_CRLFCRLF, max(self._cursor - 3, 0))
            if end >= 0:
                self._cursor = end + 4
            else:  # the read began inside that empty line
                self._cursor += len(data) - self._cursor - len(data[self._cursor :].lstrip(b"\r\n"))
        return self._cursor

    def _measure(self, data: bytes) -> None:
        """Count the bytes of a head still incomplete at the end of a read; 431 past the limit."""
        if not self._began_here:
            self._held.append(data)
            self._partial += len(data)
        else:
            start = 0
            if self._completed_here:
                # Where the last message ended: after its body when it was
                # framed by length; else after the last CRLFCRLF (a head
                # still incomplete has none).
                if not self._last_chunked or (self._where_next() >= 0 and self._exact):
                    start = self._cursor
                else:
                    start = data.rfind(_CRLFCRLF) + 4 if _CRLFCRLF in data else 0
            self._held = [data[start:]]
            self._partial = len(data) - start
        if self._max and self._partial > self._max:
            self._fail(431, f"incomplete request head of {self._partial} bytes is over the limit")

    def _head_so_far(self, data: bytes) -> bytes:
        """The bytes of the head llhttp is reading, from its first byte to the end of ``data``."""
        if self._began_here:
            return data[self._where_next() if self._completed_here else 0 :]
        return b"".join(self._held) + data

    def _hand_over(self, data: bytes) -> None:
        """A method llhttp does not know: h11 reads this request and every later one."""
        head = self._head_so_far(data)
        self._held = []
        self._in_head = self._in_body = False
        self._h11 = H11Parser(self._max)
        self._h11.feed(head)
        if self._eof:  # pragma: no cover - an end of input stops feeding before this
            self._h11.feed(b"")

    def _refuse(self, data: bytes, reason: str) -> None:
        """llhttp refused: in a body that is 400; in a head, h11's verdict on the same bytes."""
        events = self._events
        if reason == _INVALID_TE_REASON and events and type(events[-1]) is RawHead:
            events.pop()  # h11 refuses this head before giving it: so do we
            head_data, start = self._head_bytes
            head = head_data[start:]
        elif self._in_body or reason == _CONNECTION_CLOSE_REASON:
            self._fail(400, reason)
            return
        else:
            head = self._head_so_far(data)
        self._held = []
        self._in_head = self._in_body = False
        self._classify = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._max or _UNLIMITED
        )
        self._classify.receive_data(head)
        self._judge(reason)

    def _judge(self, reason: str = "malformed request head") -> None:
        assert self._classify is not None
        try:
            event = self._classify.next_event()
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, str(exc).split(":", 1)[0])
            return
        if event is h11.NEED_DATA:
            return  # h11 would wait for the rest of the head: so do we
        self._fail(400, reason)

    def _fail(self, status: int, detail: str) -> None:
        self._dead = True
        self._classify = None
        self._held = []
        self._in_head = self._in_body = False
        self._events.append(RawFailure(status, detail))
