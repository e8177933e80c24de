"""The outbound keep-alive pool's decisions, pure: which connection a request gets.

Theory of operation. "Decide, then act", as httpcore's design puts it: the
transport asks :meth:`ConnectionPool.acquire` for an origin (scheme, host,
port) and the time, and gets one decision: :class:`Reuse` this idle
connection (the most recently used one first), :class:`Open` a new one (a slot
is reserved; report :meth:`~ConnectionPool.connected` or
:meth:`~ConnectionPool.connect_failed`), or :class:`Wait` with a
:class:`Ticket`. When a connection comes back (:meth:`~ConnectionPool.release`),
fails, or a slot frees up, the pool hands waiting tickets their decision, first
come first served per origin, and returns the tickets it served so the
transport can wake them. A ticket given up (the pool wait timed out) is
:meth:`~ConnectionPool.cancel` led; a decision it had already been handed goes
back to the pool.

Limits: at most ``max_per_origin`` connections (open or opening) to one
origin, and ``max_connections`` across all of them; when the total is reached,
an idle connection of another origin is closed to make room. A slow or hostile
upstream (or the clients of one route) can so hold at most its own origin's
connections, never another origin's. Idle connections expire after
``keepalive_expiry`` seconds. Connections the pool drops are queued in
:attr:`~ConnectionPool.closing` for the transport to close: the pool never
touches a socket, and ``now`` is always an argument.

:func:`may_retry` is the rule for a request that failed on a pooled connection.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

import attrs

__all__ = [
    "ConnectionPool",
    "Open",
    "Origin",
    "PoolLimits",
    "PooledConnection",
    "Reuse",
    "Ticket",
    "Wait",
    "may_retry",
]

H = TypeVar("H")
Origin = tuple[str, str, int]

#: How often :meth:`ConnectionPool.acquire` looks for expired idle connections of every origin.
_SWEEP_EVERY: Final = 1.0


@attrs.frozen(kw_only=True)
class PoolLimits:
    """The pool's limits.

    Fields:
        max_per_origin: connections open or opening to one origin, at most.
        max_connections: connections open or opening in all, at most.
        keepalive_expiry: seconds an idle connection is kept.
    """

    max_per_origin: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    max_connections: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    keepalive_expiry: float = attrs.field(default=15.0, validator=attrs.validators.ge(0))


@attrs.define(eq=False)
class PooledConnection(Generic[H]):
    """A connection the pool counts. ``handle`` is the transport's (a socket, a stream).

    Fields:
        requests: how many requests it was handed to (1 on the first).
        idle_since: when it was last released, for expiry.
    """

    origin: Origin
    handle: H
    requests: int = 1
    idle_since: float = 0.0

    @property
    def is_reused(self) -> bool:
        """Whether the current request is not the connection's first."""
        return self.requests > 1


@attrs.frozen
class Reuse(Generic[H]):
    """Send the request on this idle connection."""

    connection: PooledConnection[H]


@attrs.frozen
class Open:
    """Open a new connection to ``origin``; its slot is reserved."""

    origin: Origin


@attrs.define(eq=False)
class Ticket(Generic[H]):
    """A request waiting for a connection; ``decision`` is set when it is served."""

    origin: Origin
    decision: Reuse[H] | Open | None = None


@attrs.frozen
class Wait(Generic[H]):
    """Wait until ``ticket`` is served (then act on its decision) or give up and cancel it."""

    ticket: Ticket[H]


@attrs.define(eq=False)
class _OriginState(Generic[H]):
    idle: list[PooledConnection[H]] = attrs.Factory(list)  # least recently used first
    busy: int = 0  # in use or opening
    waiting: deque[Ticket[H]] = attrs.Factory(deque)

    @property
    def count(self) -> int:
        return self.busy + len(self.idle)


class ConnectionPool(Generic[H]):
    """The decisions of a keep-alive pool, per origin. See the module docstring.

    Args:
        limits: the pool's limits.
    """

    def __init__(self, limits: PoolLimits | None = None) -> None:
        self.limits = limits if limits is not None else PoolLimits()
        #: Handles of connections the pool dropped: the transport closes them.
        self.closing: list[H] = []
        self._origins: dict[Origin, _OriginState[H]] = {}
        self._waiting: dict[Origin, None] = {}  # origins with waiting tickets, in order
        self._total = 0
        self._next_sweep = 0.0
        self._closed = False

    # -- asking -------------------------------------------------------------------------

    def acquire(self, origin: Origin, now: float) -> Reuse[H] | Open | Wait[H]:
        """Decide how a request to ``origin`` gets a connection."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        if now >= self._next_sweep:
            self.sweep(now)
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _OriginState()
        else:
            self._expire(state, now)
        if not state.waiting:
            decision = self._serve(origin, state)
            if decision is not None:
                return decision
        ticket: Ticket[H] = Ticket(origin)
        state.waiting.append(ticket)
        self._waiting[origin] = None
        return Wait(ticket)

    def connected(self, origin: Origin, handle: H) -> PooledConnection[H]:
        """The connection opened for an :class:`Open` decision: it is in use now."""
        return PooledConnection(origin, handle)

    def connect_failed(self, origin: Origin) -> list[Ticket[H]]:
        """Opening failed: free the slot. Returns the tickets served meanwhile."""
        state = self._origins[origin]
        state.busy -= 1
        self._total -= 1
        return self._assign(origin)

    def release(
        self, connection: PooledConnection[H], now: float, *, reusable: bool
    ) -> list[Ticket[H]]:
        """A request is done with ``connection``: keep it idle if ``reusable``, else drop it.

        Returns:
            the tickets served meanwhile (wake them).
        """
        state = self._origins[connection.origin]
        state.busy -= 1
        if reusable and not self._closed and self.limits.keepalive_expiry > 0:
            connection.idle_since = now
            state.idle.append(connection)
        else:
            self._total -= 1
            self.closing.append(connection.handle)
        return self._assign(connection.origin)

    def cancel(self, ticket: Ticket[H], now: float) -> list[Ticket[H]]:
        """The waiter of ``ticket`` gave up; a decision it was handed goes back.

        Returns:
            the tickets served meanwhile (wake them).
        """
        state = self._origins.get(ticket.origin)
        decision, ticket.decision = ticket.decision, None
        if decision is None:
            if state is not None and ticket in state.waiting:
                state.waiting.remove(ticket)
                if not state.waiting:
                    self._waiting.pop(ticket.origin, None)
            return []
        if isinstance(decision, Reuse):
            return self.release(decision.connection, now, reusable=True)
        return self.connect_failed(decision.origin)

    # -- upkeep ---------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Drop idle connections past their expiry, for every origin."""
        self._next_sweep = now + _SWEEP_EVERY
        for origin, state in list(self._origins.items()):
            self._expire(state, now)
            if not state.count and not state.waiting:
                del self._origins[origin]

    def close(self) -> None:
        """Drop every idle connection; connections in use are dropped when released."""
        self._closed = True
        for state in self._origins.values():
            self._drop_idle(state, len(state.idle))

    @property
    def total(self) -> int:
        """Connections open or opening, across origins."""
        return self._total

    def count(self, origin: Origin) -> int:
        """Connections open or opening to ``origin``."""
        state = self._origins.get(origin)
        return 0 if state is None else state.count

    def idle(self, origin: Origin) -> int:
        """Idle connections to ``origin``."""
        state = self._origins.get(origin)
        return 0 if state is None else len(state.idle)

    # -- inside -----------------------------------------------------------------------------

    def _serve(self, origin: Origin, state: _OriginState[H]) -> Reuse[H] | Open | None:
        if state.idle:
            connection = state.idle.pop()  # the most recently used
            connection.requests += 1
            state.busy += 1
            return Reuse(connection)
        if state.count >= self.limits.max_per_origin:
            return None
        if self._total >= self.limits.max_connections and not self._evict(origin):
            return None
        state.busy += 1
        self._total += 1
        return Open(origin)

    def _assign(self, origin: Origin) -> list[Ticket[H]]:
        """Serve waiting tickets: ``origin``'s first, then any a freed slot lets open."""
        served: list[Ticket[H]] = []
        if origin in self._waiting:
            self._serve_waiting(origin, served)
        if self._waiting:
            for other in list(self._waiting):
                if other != origin:
                    self._serve_waiting(other, served)
        return served

    def _serve_waiting(self, origin: Origin, served: list[Ticket[H]]) -> None:
        state = self._origins[origin]
        while state.waiting:
            decision = self._serve(origin, state)
            if decision is None:
                return
            ticket = state.waiting.popleft()
            ticket.decision = decision
            served.append(ticket)
        del self._waiting[origin]

    def _expire(self, state: _OriginState[H], now: float) -> None:
        limit = now - self.limits.keepalive_expiry
        expired = 0
        for connection in state.idle:  # least recently used first
            if connection.idle_since > limit:
                break
            expired += 1
        if expired:
            self._drop_idle(state, expired)

    def _drop_idle(self, state: _OriginState[H], count: int) -> None:
        dropped, state.idle[:count] = state.idle[:count], []
        self._total -= len(dropped)
        self.closing.extend(connection.handle for connection in dropped)

    def _evict(self, origin: Origin) -> bool:
        """Close the oldest idle connection of another origin; False if there is none."""
        for other, state in self._origins.items():
            if other != origin and state.idle:
                self._drop_idle(state, 1)
                return True
        return False


def may_retry(*, reused: bool, replayable: bool, response_started: bool, attempt: int) -> bool:
    """Whether a request that failed on a connection may be sent again on another.

    Only when nothing of it can have been acted on: the connection was a pooled
    one (the upstream may have closed it while idle), the failure came on
    writing or as EOF/reset before any byte of a response, the body is in hand
    (not streamed from the client), and it is the first or second retry.
    Timeouts are never retried (the caller does not ask).
    """
    return reused and replayable and not response_started and attempt < 2
