"""Non-I/O helpers shared by the drivers: conversions between the HTTP glue and core events."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import Protocol

import attrs

from sapg_core import Action, Event, FailureReason, Headers, RequestHead, RequestReceived

__all__ = [
    "ClientBodyError",
    "GatewayFactory",
    "GatewayLike",
    "Timeouts",
    "header_value",
    "http_date",
    "request_received",
]


class GatewayLike(Protocol):
    """What a driver needs of :class:`sapg_core.Gateway`."""

    def handle(self, event: Event) -> list[Action]: ...


#: Builds the gateway once the listener is bound (it may need the real port).
GatewayFactory = Callable[[str, int], GatewayLike]


@attrs.frozen(kw_only=True)
class Timeouts:
    """Server-side timeouts, in seconds.

    Fields:
        read: a started request (head or body) that stalls this long is cut off.
        idle: a keep-alive connection with no new request this long is closed.
        linger: after a ``Connection: close`` answer, how long to wait for the
            client to close, so unread bytes don't turn the close into a reset
            that destroys the answer (RFC 9112 §9.6).
    """

    read: float = 30.0
    idle: float = 15.0
    linger: float = 2.0


class ClientBodyError(Exception):
    """The client's request body could not be read for an action.

    Raised by a driver's body iterator; the outbound executor turns it into
    ``ActionFailed(reason)``. ``aborted`` means the client went away: the
    driver then feeds ``RequestAborted`` instead.
    """

    def __init__(self, reason: FailureReason, detail: str, *, aborted: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.aborted = aborted


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def http_date(now: float) -> str:
    """An IMF-fixdate for the ``Date`` header (RFC 9110 §5.6.7)."""
    return email.utils.formatdate(now, usegmt=True)


def request_received(
    head: RequestHead, *, request_id: int, now: float, entropy: bytes, scheme: str
) -> RequestReceived:
    """The core event for a request head the HTTP glue parsed."""
    return RequestReceived(
        request_id=request_id,
        method=head.method,
        target=head.target,
        headers=head.headers,
        now=now,
        entropy=entropy,
        scheme=scheme,
        host=header_value(head.headers, "host") or "",
    )
