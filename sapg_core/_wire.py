"""The HTTP/1.1 response writer: status line, header fields and body framing, as bytes.

Theory of operation. Both parser backends of :mod:`sapg_core._http` answer
through this one writer, so what goes on the wire does not depend on which
parser read the request. A head is rendered with one ``bytes.join`` and
checked once, joined: a field name must be a token (RFC 9110 §5.1; names
seen before are remembered, in a bounded set) and a field value may hold no
control character but HTAB (RFC 9110 §5.5: no CR, LF or NUL above all, which
would let a value start a header of its own or end the head early): the
head must hold exactly the line ends we wrote and no other control
character. A bad field raises :class:`LocalProtocolError` naming it;
nothing is rendered.

Body framing helpers render one chunk of a chunked body and its last chunk.
Nothing here keeps state: the connection in :mod:`sapg_core._http` decides
the framing and calls these.

The other direction shares a vocabulary too: each parser backend turns bytes
into the same raw events (:class:`RawHead`, body ``bytes``, :data:`END`,
:class:`RawFailure`, :data:`EOF`), and the connection applies every rule
that does not depend on the parser (framing conflicts, limits, keep-alive)
to those, once, for both.
"""

from __future__ import annotations

import http
import re
from typing import Final, Protocol

__all__ = [
    "END",
    "EOF",
    "LAST_CHUNK",
    "LocalProtocolError",
    "Parser",
    "RawEvent",
    "RawFailure",
    "RawHead",
    "chunk",
    "render_head",
    "status_line",
]


class LocalProtocolError(Exception):
    """Our side broke HTTP/1.1: a header the writer refuses, or a call out of order.

    Raised, never sent: it marks a bug in the caller (a driver, or a value
    that reached a header unchecked), not a fault of the client.
    """


#: RFC 9110 §5.6.2 tchar, as the body of a regex character class: the one definition, which
#: the client side (:mod:`sapg_core._client`) uses too.
TCHAR: Final = "!#$%&'*+\\-.^_`|~0-9A-Za-z"
_TOKEN: Final = re.compile(b"[" + TCHAR.encode("ascii") + b"]+")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Control characters but HTAB, CR and LF (those two are counted instead).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Names already found to be tokens (a response uses a few, again and again); bounded.
_GOOD_NAMES: Final[set[bytes]] = set()
_MAX_GOOD_NAMES: Final = 1024

_STATUS_LINES: Final[dict[int, bytes]] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in http.HTTPStatus
}

#: The end of a chunked body: the zero-size chunk and an empty trailer section.
LAST_CHUNK: Final = b"0\r\n\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; an unknown status has an empty reason.

    Raises:
        LocalProtocolError: ``status`` is not a three-digit code.
    """
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise LocalProtocolError(f"status {status} is not a three-digit code")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def render_head(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """Render a response head (and, if given, the body right after it) as one bytes object.

    Args:
        status: the status code.
        headers: (name, value) pairs, already framed by the caller; names are
            written as given.
        body: bytes to append after the head (already framed).

    Returns:
        The status line, the header lines, the empty line and ``body``.

    Raises:
        LocalProtocolError: a name is not a token, or a value holds CR, LF,
            NUL or another control character than HTAB.
    """
    parts = [status_line(status)]
    good = _GOOD_NAMES
    for name, value in headers:
        if name not in good:
            _check_name(name)
        parts += (name, b": ", value, b"\r\n")
    parts += (b"\r\n", body)
    out = b"".join(parts)
    # The names are tokens, so any CR or LF beyond the line ends we wrote, or
    # any other control character, came in a value.
    end = len(out) - len(body)
    lines = len(headers) + 2
    if (
        out.count(b"\n", 0, end) != lines
        or out.count(b"\r", 0, end) != lines
        or _CONTROL.search(out, 0, end) is not None
    ):
        _explain(headers)
    return out


def _check_name(name: bytes) -> None:
    if _TOKEN.fullmatch(name) is None:
        raise LocalProtocolError(f"header name {name!r} is not a token")
    if len(_GOOD_NAMES) < _MAX_GOOD_NAMES:
        _GOOD_NAMES.add(name)


def _explain(headers: list[tuple[bytes, bytes]]) -> None:
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise LocalProtocolError(f"header name {name!r} is not a token")
        if _BAD_VALUE.search(value) is not None:
            raise LocalProtocolError(
                f"header {name.decode('latin-1')!r} has a control character (CR, LF, NUL...) "
                "in its value"
            )
    raise AssertionError("the header block failed to match, yet every field is valid")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty: that is :data:`LAST_CHUNK`)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


# -- what the parser backends hand the connection ------------------------------


class RawHead:
    """A request head as a backend parsed it: names lower-cased, values trimmed, Latin-1.

    Fields:
        method: the method token.
        target: the request-target.
        headers: (lower-case name, value) pairs in arrival order.
        version: ``"1.1"``, ``"1.0"`` or whatever the request line said.
        size: the head's bytes on the wire, request line to empty line.
    """

    __slots__ = ("headers", "method", "size", "target", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[str, str]],
        version: str,
        size: int,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.size = size


class RawFailure:
    """The parser refused the input: ``status`` (400, 431 or 501) and why, for the log."""

    __slots__ = ("detail", "status")

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The request body is complete.
END: Final = _Marker("END")
#: The client closed its side between requests.
EOF: Final = _Marker("EOF")

#: One raw event: a head, some body bytes, :data:`END`, a failure or :data:`EOF`.
RawEvent = RawHead | bytes | RawFailure | _Marker


class Parser(Protocol):
    """What a parser backend offers the connection."""

    def feed(self, data: bytes) -> None:
        """Take bytes from the socket; ``b""`` is the client's end of input."""

    def next(self) -> RawEvent | None:
        """The next raw event, or ``None`` when more bytes are needed."""

    def next_cycle(self) -> None:
        """The request is read and answered: go on to the next one."""

    def has_buffered(self) -> bool:
        """Whether bytes or events wait beyond what :meth:`next` returned."""

    def take_trailing(self) -> bytes | None:
        """After an upgrade request's head and end: the raw bytes that followed it.

        The connection switches protocols: the parser stops for good and hands
        over every byte it was fed after that request, unparsed. ``None`` when it
        cannot (the request was not one it held back for an upgrade, or it
        parsed beyond it).
        """
