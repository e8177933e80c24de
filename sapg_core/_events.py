"""Events: what happened in the world, fed into :meth:`Gateway.handle`.

Every event carries ``now`` (Unix epoch seconds, a float): the core never
reads a clock, so expiry checks and caches compare against the time the
transport saw the event. Events that start a flow carry ``entropy`` (random
bytes drawn by the transport) for anything the core must make up (OAuth
``state``, nonces, PKCE verifiers).

Header names are lower-case ``str``; values are ``str`` decoded as Latin-1,
so every byte round-trips. Build events with keywords only. Don't subclass these.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "ActionFailed",
    "BodyReceived",
    "Event",
    "FailureReason",
    "HTTPResponseReceived",
    "Headers",
    "RequestAborted",
    "RequestReceived",
    "ServiceResultKind",
    "ServiceReturned",
    "UpstreamResponded",
]

Headers = tuple[tuple[str, str], ...]


def _lower_names(headers: Headers) -> Headers:
    return tuple((name.lower(), value) for name, value in headers)


class Event:
    """Base class of every event."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class RequestReceived(Event):
    """A client's request head has arrived; its body (if any) is still on the wire.

    Fields:
        request_id: unique per transport for the life of the process.
        method: as received (case-sensitive, like the original).
        target: the raw request-target, e.g. ``/a/b?x=1`` (origin form) or an
            absolute URL (absolute form).
        headers: lower-cased names, Latin-1 values, in arrival order.
        now: epoch seconds.
        entropy: random bytes from the transport (32 is plenty).
        scheme: ``http`` or ``https``, as the listener sees it.
        host: the ``Host`` the client used, for building absolute URLs.
        client: the peer's IP address as the listener sees it (``""``: unknown,
            e.g. a trace recorded before this field existed). Whose
            ``X-Forwarded-*`` fields are believed depends on it (see
            ``sapg_core._forwarded``).
    """

    request_id: int
    method: str
    target: str
    headers: Headers = attrs.field(converter=_lower_names)
    now: float
    entropy: bytes = b""
    scheme: str = "http"
    host: str = ""
    client: str = ""


@attrs.frozen(kw_only=True)
class BodyReceived(Event):
    """The whole request body that a :class:`ReadBody` action asked for."""

    request_id: int
    body: bytes
    now: float


@attrs.frozen(kw_only=True)
class UpstreamResponded(Event):
    """The upstream of a :class:`ForwardUpstream` sent its status and headers.

    The body is still with the transport, which relays it when told to.
    """

    request_id: int
    status: int
    headers: Headers = attrs.field(converter=_lower_names)
    now: float


@attrs.frozen(kw_only=True)
class HTTPResponseReceived(Event):
    """A buffered outbound call (:class:`SendHTTP`) got a whole response."""

    request_id: int
    status: int
    headers: Headers = attrs.field(converter=_lower_names)
    body: bytes
    now: float


class FailureReason(enum.Enum):
    """Why a transport could not carry out an action."""

    #: TCP connect failed: refused, unreachable, DNS lookup failed.
    CONNECT = "connect"
    #: The TLS handshake or certificate verification failed.
    TLS = "tls"
    #: The peer closed or reset the connection, or spoke broken HTTP.
    RESET = "reset"
    #: A connect, read or write deadline passed.
    TIMEOUT = "timeout"
    #: The client's request body is larger than the configured limit.
    BODY_TOO_LARGE = "body_too_large"
    #: The client went away or sent a broken body while we were reading it.
    CLIENT = "client"
    #: A service or service binding raised, could not be loaded, or returned
    #: something that is not a result (see :class:`ServiceReturned`).
    SERVICE_ERROR = "service_error"


@attrs.frozen(kw_only=True)
class ActionFailed(Event):
    """The action pending for ``request_id`` could not be carried out."""

    request_id: int
    reason: FailureReason
    detail: str = ""
    now: float


@attrs.frozen(kw_only=True)
class RequestAborted(Event):
    """The client disconnected; forget the request (no action follows)."""

    request_id: int
    now: float


class ServiceResultKind(enum.Enum):
    """What a service's Python return value was, as :class:`ServiceReturned` carries it."""

    #: A response object (``status``, ``headers``, ``body``).
    RESPONSE = "response"
    #: A ``str`` (UTF-8) or ``bytes``: ``body`` holds its bytes.
    TEXT = "text"
    #: A ``dict``, ``list``, number or ``bool``: ``value`` holds its JSON text.
    JSON = "json"
    #: ``None``: the original's ``undefined`` (a function that returned nothing).
    NONE = "none"


def _check_status(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 999:
        raise ValueError(f"status must be an int in 0..999, not {value!r}")


@attrs.frozen(kw_only=True)
class ServiceReturned(Event):
    """A :class:`CallService` action's callable returned; its value, normalised.

    Fields:
        kind: which of the fields below carry the result.
        status, headers, body: for ``RESPONSE``; ``body`` also for ``TEXT``.
        value: for ``JSON``, the value as JSON text (``true`` for Python ``True``).

    Validation of the HTTP side (status range, header syntax) is the core's
    policy and happens when the result is used, so a bad value answers 500.
    """

    request_id: int
    kind: ServiceResultKind
    status: int = attrs.field(default=200, validator=_check_status)
    headers: Headers = attrs.field(default=(), converter=_lower_names)
    body: bytes = b""
    value: str = ""
    now: float
