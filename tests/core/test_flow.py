"""Flows: shared (single-flight) actions and reading bodies, driven through Gateway.handle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sapg_core import (
    ActionFailed,
    BodyReceived,
    FailureReason,
    HTTPResponseReceived,
    IllegalTransition,
    ReadBody,
    RequestAborted,
    Respond,
    SendHTTP,
)
from sapg_core._flow import Flow, FlowContext
from sapg_core._gateway import INTEGRATIONS

from .helpers import NOW, make_gateway, receive


def shared_fetch_flow(ctx: FlowContext) -> Flow:
    outcome = yield from ctx.send_http("GET", "https://keys.test/jwks", (), shared_key="jwks")
    assert isinstance(outcome, HTTPResponseReceived)
    return ctx.respond(200, outcome.body)


def body_flow(ctx: FlowContext) -> Flow:
    body = yield from ctx.read_body()
    return ctx.respond_json(200, {"length": len(body)})


@pytest.fixture
def gateway() -> Iterator[object]:
    INTEGRATIONS["test_shared"] = shared_fetch_flow
    INTEGRATIONS["test_body"] = body_flow
    try:
        yield make_gateway(
            {
                "paths": [
                    {"method": "GET", "path": "/keys", "integration": {"type": "test_shared"}},
                    {"method": "POST", "path": "/body", "integration": {"type": "test_body"}},
                ]
            },
            max_body_bytes=10,
        )
    finally:
        del INTEGRATIONS["test_shared"], INTEGRATIONS["test_body"]


def answer(request_id: int, body: bytes = b"keys") -> HTTPResponseReceived:
    return HTTPResponseReceived(request_id=request_id, status=200, headers=(), body=body, now=NOW)


def test_one_fetch_in_flight_and_every_waiter_gets_its_outcome(gateway) -> None:
    first, actions = receive(gateway, "GET", "/keys")
    assert len(actions) == 1 and isinstance(actions[0], SendHTTP)
    waiting = [receive(gateway, "GET", "/keys") for _ in range(49)]
    assert all(actions == [] for _, actions in waiting)  # no second fetch
    assert gateway.pending_count == 50
    done = gateway.handle(answer(first))
    assert sorted(a.request_id for a in done) == sorted([first] + [rid for rid, _ in waiting])
    assert all(isinstance(a, Respond) and a.body == b"keys" for a in done)
    assert gateway.pending_count == 0
    # the next request after completion fetches again (caching is the caller's business)
    _, actions = receive(gateway, "GET", "/keys")
    assert isinstance(actions[0], SendHTTP)


def test_a_waiter_that_leaves_is_forgotten(gateway) -> None:
    first, _ = receive(gateway, "GET", "/keys")
    second, _ = receive(gateway, "GET", "/keys")
    assert gateway.handle(RequestAborted(request_id=second, now=NOW)) == []
    done = gateway.handle(answer(first))
    assert [a.request_id for a in done] == [first]


def test_when_the_fetching_request_leaves_the_next_waiter_takes_over(gateway) -> None:
    first, _ = receive(gateway, "GET", "/keys")
    second, _ = receive(gateway, "GET", "/keys")
    third, _ = receive(gateway, "GET", "/keys")
    handed = gateway.handle(RequestAborted(request_id=first, now=NOW))
    assert len(handed) == 1 and isinstance(handed[0], SendHTTP)
    assert handed[0].request_id == second
    with pytest.raises(IllegalTransition):
        gateway.handle(answer(first))  # the old owner's answer is no longer expected
    done = gateway.handle(answer(second))
    assert sorted(a.request_id for a in done) == [second, third]


def test_read_body_and_its_failures(gateway) -> None:
    rid, actions = receive(gateway, "POST", "/body")
    assert actions == [ReadBody(request_id=rid, limit=10)]
    [done] = gateway.handle(BodyReceived(request_id=rid, body=b"12345", now=NOW))
    assert isinstance(done, Respond) and done.body == b'{"length":5}'
    rid, _ = receive(gateway, "POST", "/body")
    [done] = gateway.handle(
        ActionFailed(request_id=rid, reason=FailureReason.BODY_TOO_LARGE, now=NOW)
    )
    assert isinstance(done, Respond) and done.status == 413
    rid, _ = receive(gateway, "POST", "/body")
    actions = gateway.handle(ActionFailed(request_id=rid, reason=FailureReason.CLIENT, now=NOW))
    assert isinstance(actions[-1], Respond) and actions[-1].status == 400
