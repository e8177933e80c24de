"""Non-I/O helpers shared by the drivers: conversions between the HTTP glue and core events,
the registry that routes the core's actions to their requests, and config reloading.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import os
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import attrs
import h11

from sapg_core import (
    Action,
    Event,
    FailureReason,
    Headers,
    Log,
    RequestHead,
    RequestReceived,
    TrustedProxies,
    client_address,
    dumps,
    request_id_for,
)

from ._services import ServiceRegistry

__all__ = [
    "DRAINING",
    "SERVER_BUSY_RESPONSE",
    "ClientBodyError",
    "ExchangeBase",
    "Exchanges",
    "GatewayFactory",
    "GatewayLike",
    "Loaded",
    "Reload",
    "Timeouts",
    "as_loaded",
    "entropy",
    "header_value",
    "http_date",
    "identify",
    "is_key_set_fetch",
    "log_action",
    "next_request_id",
    "request_received",
    "requests_in_flight",
    "try_reload",
    "upstream_origin",
]

logger = logging.getLogger("sapg")

#: Set once a server in this process stops accepting to drain (SIGTERM): the admin
#: endpoint's ``/ready`` answers 503 from then on.
DRAINING: Final = threading.Event()

#: Request IDs: one counter for every driver, unique for the life of the process.
next_request_id: Final[Callable[[], int]] = itertools.count(1).__next__


class GatewayLike(Protocol):
    """What a driver needs of :class:`sapg_core.Gateway`."""

    def handle(self, event: Event) -> list[Action]: ...


@attrs.frozen
class Loaded:
    """A gateway and the services its config names, built together (start-up, reload).

    A driver swaps both at once, and each request keeps the pair it started with.
    """

    gateway: GatewayLike
    services: ServiceRegistry


#: Builds the gateway once the listener is bound (it may need the real port); a
#: :class:`Loaded` brings its services too.
GatewayFactory = Callable[[str, int], GatewayLike | Loaded]

#: Builds a gateway from the config as it is now (on SIGHUP); raises to refuse it. A
#: :class:`Loaded` replaces the services too; a bare gateway keeps the current ones.
Reload = Callable[[], GatewayLike | Loaded]


def as_loaded(built: GatewayLike | Loaded, services: ServiceRegistry | None) -> Loaded:
    """``built`` (from a factory or a reload) as a :class:`Loaded`; a bare gateway gets
    ``services`` (none given: an empty registry, so calls fail as "not provided")."""
    if isinstance(built, Loaded):
        return built
    return Loaded(built, services if services is not None else ServiceRegistry())


@attrs.frozen(kw_only=True)
class Timeouts:
    """Server-side timeouts, in seconds; each is a deadline of the connection, not of a read.

    Fields:
        header: the whole request head must arrive within this long, however it
            is dribbled (counted from the accept for a connection's first
            request, from the first byte of the head for a later one), like
            nginx's ``client_header_timeout``.
        read: a gap this long between the bytes of a request under way (head or
            body) cuts it off (during the body, the core sees ``RequestAborted``);
            a write to a client that stalls this long means the client is gone;
            and the grace before ``min_body_rate`` applies.
        min_body_rate: bytes per second the body must average, counted over the
            time the server waits for it, once ``read`` seconds of waiting are
            spent: the body's deadline is ``read + received / min_body_rate``
            seconds of waiting. 0 turns the rate off.
        idle: a keep-alive connection with no byte of a new request this long is closed.
        linger: after a ``Connection: close`` answer, how long to wait for the
            client to close, so unread bytes don't turn the close into a reset
            that destroys the answer (RFC 9112 §9.6).
    """

    read: float = 30.0
    idle: float = 15.0
    header: float = 10.0
    min_body_rate: float = 1024.0
    linger: float = 2.0

    def body_deadline(self, now: float, received: int, waited: float) -> float:
        """When a body read that starts at ``now`` must have given bytes.

        Args:
            now: the clock as the read starts.
            received: body bytes received so far.
            waited: seconds already spent waiting for this body.
        """
        deadline = now + self.read
        if self.min_body_rate > 0:
            deadline = min(deadline, now + self.read + received / self.min_body_rate - waited)
        return deadline


#: Random bytes drawn per refill: 256 requests' entropy for one ``getrandom`` call.
_POOL_SIZE: Final = 32 * 256


class _EntropyPool:
    """32 random bytes per request from a pool refilled by one ``os.urandom`` call.

    Thread-safe (the blocking driver draws from many threads); the pool is dropped
    in a forked child, so two processes never hand out the same bytes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._offset = 0

    def take(self) -> bytes:
        with self._lock:
            offset = self._offset
            if offset >= len(self._pool):
                self._pool, offset = os.urandom(_POOL_SIZE), 0
            self._offset = offset + 32
            return self._pool[offset : offset + 32]

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._offset = b"", 0


_entropy_pool = _EntropyPool()
os.register_at_fork(after_in_child=_entropy_pool.reset)

#: 32 fresh random bytes for a request's ``RequestReceived.entropy``.
entropy: Final[Callable[[], bytes]] = _entropy_pool.take


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


_date_cache: list[tuple[int, str]] = [(0, "")]


def http_date(now: float) -> str:
    """An IMF-fixdate for the ``Date`` header (RFC 9110 §5.6.7), computed once a second."""
    second = int(now)
    cached = _date_cache[0]
    if cached[0] != second:
        cached = (second, email.utils.formatdate(second, usegmt=True))
        _date_cache[0] = cached
    return cached[1]


def request_received(
    head: RequestHead,
    *,
    request_id: int,
    now: float,
    entropy: bytes,
    scheme: str,
    client: str = "",
) -> RequestReceived:
    """The core event for a request head the HTTP glue parsed; ``client`` is the peer's IP."""
    return RequestReceived(
        request_id=request_id,
        method=head.method,
        target=head.target,
        headers=head.headers,
        now=now,
        entropy=entropy,
        scheme=scheme,
        host=header_value(head.headers, "host") or "",
        client=client,
    )


def upstream_origin(url: str) -> str:
    """``scheme://host[:port]`` of an outbound URL, for logs (no credentials, path or query)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "?"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _render_busy() -> bytes:
    body = dumps({"error": "Server busy", "code": "SERVER_BUSY"})
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-powered-by", "sapg"),
        ("retry-after", "1"),
        ("connection", "close"),
    ]
    writer = h11.Connection(h11.SERVER)
    writer.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # h11 answers only a request
    writer.next_event()
    return (
        writer.send(h11.Response(status_code=503, headers=headers, reason=b"Service Unavailable"))
        + writer.send(h11.Data(data=body))
        + writer.send(h11.EndOfMessage())
    )


#: The blocking driver's answer when every worker is busy: a transport-level
#: refusal (like the glue's 400/431), sent before the request is read.
SERVER_BUSY_RESPONSE: Final = _render_busy()


class ExchangeBase:
    """One request in flight: what every driver tracks, whatever its I/O.

    ``gateway`` and ``services`` are those the request started on: a reload swaps the
    driver's for new requests, while this one finishes on the old.
    ``inbox`` holds the core's actions for this request, in order.
    """

    def __init__(
        self,
        serving: Loaded,
        method: str,
        target: str,
        content_length: int | None,
    ) -> None:
        self.request_id = next_request_id()
        self.gateway = serving.gateway
        self.services = serving.services
        self.method = method
        self.target = target
        self.content_length = content_length  # declared; None: chunked
        self.started = time.perf_counter()
        self.inbox: deque[Action] = deque()
        self.status = 0  # the status sent; 0: no answer went out
        self.route = ""
        self.upstream_origin = ""
        self.x_request_id = ""  # the request's X-Request-Id, once identified
        self.client = ""  # the client's address for the logs (trusted proxies believed)
        self.upstream_failure: FailureReason | None = None  # for the metrics
        self.jwks_fetches = 0  # key-set fetches this request carried out (for the metrics)
        self.is_finished = False  # a final action ran, or the client went away
        self.is_body_done = False

    def wake(self) -> None:
        """Actions arrived from another request's call to ``handle`` (a shared outcome)."""


class Exchanges:
    """The requests in flight, by ID: routes each action the core returns to its request.

    One ``handle`` call can return actions for several requests (when the
    outcome of a shared action arrives, every flow waiting for it moves on),
    so a driver never assumes an action is for the request that fed the event.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, ExchangeBase] = {}
        _registries.add(self)

    def add(self, exchange: ExchangeBase) -> None:
        self._by_id[exchange.request_id] = exchange

    def discard(self, exchange: ExchangeBase) -> None:
        self._by_id.pop(exchange.request_id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def deliver(self, current: ExchangeBase, actions: Iterable[Action]) -> None:
        """Queue each action on its request's inbox; ``current`` gets those without an ID."""
        for action in actions:
            request_id = getattr(action, "request_id", None)
            if request_id is None or request_id == current.request_id:
                current.inbox.append(action)
                continue
            target = self._by_id.get(request_id)
            if target is None:
                logger.info("request %s: an action for a request no longer here", request_id)
                continue
            target.inbox.append(action)
            target.wake()


_registries: weakref.WeakSet[Exchanges] = weakref.WeakSet()


def requests_in_flight() -> int:
    """The requests in flight in every server of this process (read from any thread)."""
    while True:
        try:
            return sum(len(registry) for registry in list(_registries))
        except RuntimeError:  # a server was created meanwhile: count again
            continue


def is_key_set_fetch(url: str) -> bool:
    """Whether an outbound call (``SendHTTP``) fetches a JWKS: its path names one, as
    Auth0's and Supabase's ``/.well-known/jwks.json`` do (for the metrics)."""
    return "jwks" in url.lower()


_DEFAULT_TRUST: Final = TrustedProxies()


def identify(exchange: ExchangeBase, event: RequestReceived) -> RequestReceived:
    """Note on ``exchange`` what its log lines say about ``event``: the request's id and the
    client's address, both by the core's rules (``request_id_for``, and ``client_address``
    with the gateway's trusted proxies). Returns ``event``."""
    exchange.x_request_id = request_id_for(event)
    trusted = getattr(exchange.gateway, "trusted_proxies", _DEFAULT_TRUST)
    exchange.client = client_address(event, trusted)
    return event


def log_action(exchange: ExchangeBase, action: Log) -> None:
    """A core ``Log`` action as a ``sapg`` log line, with the request's id (text and JSON)."""
    if action.request_id is None:
        logger.log(int(action.level), "%s", action.message)
        return
    logger.log(
        int(action.level),
        "request %s [%s]: %s",
        action.request_id,
        exchange.x_request_id,
        action.message,
        extra={"request_id": action.request_id, "x_request_id": exchange.x_request_id},
    )


def try_reload(reload: Reload) -> GatewayLike | Loaded | None:
    """Build the new gateway; on any failure log why and return None (keep the old one)."""
    try:
        gateway = reload()
    except Exception as exc:  # the boundary: a broken config must not stop the server
        logger.error("reload refused, still serving the previous config: %s", exc)
        return None
    logger.info("config reloaded: new requests use the new config")
    return gateway
