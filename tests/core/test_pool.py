"""The keep-alive pool's decisions, without sockets: handles are plain strings here."""

from __future__ import annotations

import pytest

from sapg_core import (
    ConnectionPool,
    Open,
    PooledConnection,
    PoolLimits,
    Reuse,
    Ticket,
    Wait,
    may_retry,
)

A = ("http", "a", 80)
B = ("https", "b", 443)


def opened(
    pool: ConnectionPool[str], origin: tuple[str, str, int], handle: str
) -> PooledConnection[str]:
    decision = pool.acquire(origin, 0.0)
    assert decision == Open(origin)
    return pool.connected(origin, handle)


def test_a_released_connection_is_reused_most_recent_first() -> None:
    pool: ConnectionPool[str] = ConnectionPool()
    first, second = opened(pool, A, "1"), opened(pool, A, "2")
    assert not first.is_reused
    assert pool.release(first, 1.0, reusable=True) == []
    assert pool.release(second, 2.0, reusable=True) == []
    decision = pool.acquire(A, 3.0)
    assert isinstance(decision, Reuse) and decision.connection is second
    assert second.is_reused and second.requests == 2
    assert (pool.count(A), pool.idle(A), pool.total) == (2, 1, 2)


def test_an_unreusable_connection_is_closed_not_kept() -> None:
    pool: ConnectionPool[str] = ConnectionPool()
    conn = opened(pool, A, "1")
    pool.release(conn, 1.0, reusable=False)
    assert pool.closing == ["1"]
    assert (pool.count(A), pool.total) == (0, 0)
    assert pool.acquire(A, 2.0) == Open(A)


def test_the_limit_is_per_origin_and_waiters_are_served_in_order() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(max_per_origin=2, max_connections=10))
    a1, a2 = opened(pool, A, "a1"), opened(pool, A, "a2")
    first, second = pool.acquire(A, 0.0), pool.acquire(A, 0.0)
    assert isinstance(first, Wait) and isinstance(second, Wait)
    # Origin A is full; origin B is not affected (the starvation fix).
    assert pool.acquire(B, 0.0) == Open(B)
    # A connection comes back: the first waiter gets it, the second still waits.
    assert pool.release(a1, 1.0, reusable=True) == [first.ticket]
    assert first.ticket.decision == Reuse(a1)
    assert second.ticket.decision is None
    # One is dropped: its slot lets the second waiter open a new one.
    assert pool.release(a2, 1.0, reusable=False) == [second.ticket]
    assert second.ticket.decision == Open(A)
    assert pool.count(A) == 2


def test_a_newcomer_queues_behind_waiters_of_its_origin() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(max_per_origin=1))
    conn = opened(pool, A, "a")
    waiting = pool.acquire(A, 0.0)
    assert isinstance(waiting, Wait)
    served = pool.release(conn, 1.0, reusable=True)
    assert served == [waiting.ticket]
    late = pool.acquire(A, 1.0)
    assert isinstance(late, Wait)  # the idle one was handed to the first waiter


def test_the_total_cap_evicts_an_idle_connection_of_another_origin() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(max_per_origin=5, max_connections=2))
    a1, a2 = opened(pool, A, "a1"), opened(pool, A, "a2")
    pool.release(a1, 1.0, reusable=True)
    assert pool.acquire(B, 2.0) == Open(B)  # a1 (idle) made room
    assert pool.closing == ["a1"]
    assert pool.total == 2
    waiting = pool.acquire(B, 2.0)  # nothing idle to evict now
    assert isinstance(waiting, Wait)
    assert pool.release(a2, 3.0, reusable=False) == [waiting.ticket]
    assert waiting.ticket.decision == Open(B)


def test_a_failed_connect_frees_its_slot_for_a_waiter() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(max_per_origin=1))
    assert pool.acquire(A, 0.0) == Open(A)
    waiting = pool.acquire(A, 0.0)
    assert isinstance(waiting, Wait)
    assert pool.connect_failed(A) == [waiting.ticket]
    assert waiting.ticket.decision == Open(A)
    assert pool.total == 1


def test_a_cancelled_ticket_gives_back_what_it_was_handed() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(max_per_origin=1))
    conn = opened(pool, A, "a")
    first, second = pool.acquire(A, 0.0), pool.acquire(A, 0.0)
    assert isinstance(first, Wait) and isinstance(second, Wait)
    assert pool.cancel(second.ticket, 0.5) == []  # still waiting: simply removed
    pool.release(conn, 1.0, reusable=True)
    assert first.ticket.decision == Reuse(conn)
    assert pool.cancel(first.ticket, 2.0) == []  # handed, but given up: back to idle
    assert pool.idle(A) == 1
    decision = pool.acquire(A, 2.0)
    assert isinstance(decision, Reuse) and decision.connection is conn
    third = pool.acquire(A, 2.0)
    assert isinstance(third, Wait)
    pool.release(conn, 3.0, reusable=False)
    assert third.ticket.decision == Open(A)
    fourth = pool.acquire(A, 3.0)
    assert isinstance(fourth, Wait)
    assert pool.cancel(third.ticket, 3.0) == [fourth.ticket]  # its slot went to the next
    assert fourth.ticket.decision == Open(A)


def test_idle_connections_expire() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(keepalive_expiry=5.0))
    a, b = opened(pool, A, "a"), opened(pool, B, "b")
    pool.release(a, 10.0, reusable=True)
    pool.release(b, 10.0, reusable=True)
    decision = pool.acquire(A, 14.9)
    assert isinstance(decision, Reuse)
    pool.release(a, 15.0, reusable=True)
    assert pool.acquire(A, 20.5) == Open(A)  # expired at 20.0: closed, a new one opens
    assert "a" in pool.closing and "b" in pool.closing  # the sweep took B's too
    assert pool.count(B) == 0


def test_a_zero_expiry_keeps_nothing() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(keepalive_expiry=0))
    conn = opened(pool, A, "a")
    pool.release(conn, 1.0, reusable=True)
    assert pool.closing == ["a"]


def test_close_drops_idle_now_and_busy_on_release() -> None:
    pool: ConnectionPool[str] = ConnectionPool()
    idle, busy = opened(pool, A, "idle"), opened(pool, A, "busy")
    pool.release(idle, 1.0, reusable=True)
    pool.close()
    assert pool.closing == ["idle"]
    pool.release(busy, 2.0, reusable=True)
    assert pool.closing == ["idle", "busy"]
    assert pool.total == 0
    with pytest.raises(RuntimeError):
        pool.acquire(A, 3.0)


def test_a_waiter_of_another_origin_opens_when_a_slot_frees() -> None:
    pool: ConnectionPool[str] = ConnectionPool(PoolLimits(max_per_origin=5, max_connections=1))
    conn = opened(pool, A, "a")
    waiting = pool.acquire(B, 0.0)
    assert isinstance(waiting, Wait)
    assert pool.release(conn, 1.0, reusable=True) == [waiting.ticket]  # the idle A is evicted
    assert waiting.ticket.decision == Open(B)
    assert pool.closing == ["a"]


def test_tickets_are_distinct() -> None:
    assert Ticket(A) != Ticket(A)


@pytest.mark.parametrize(
    ("reused", "replayable", "started", "attempt", "expected"),
    [
        (True, True, False, 0, True),
        (True, True, False, 1, True),
        (True, True, False, 2, False),
        (False, True, False, 0, False),  # a fresh connection failed: the upstream is down
        (True, False, False, 0, False),  # the client's body is gone
        (True, True, True, 0, False),  # the upstream began answering
    ],
)
def test_retry_only_when_nothing_was_acted_on(
    reused: bool, replayable: bool, started: bool, attempt: int, expected: bool
) -> None:
    assert (
        may_retry(reused=reused, replayable=replayable, response_started=started, attempt=attempt)
        is expected
    )
