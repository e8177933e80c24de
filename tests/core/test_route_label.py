"""Final actions name the matched route, for the drivers' access log."""

from __future__ import annotations

from sapg_core import (
    ActionFailed,
    FailureReason,
    ForwardUpstream,
    RelayResponse,
    RequestAborted,
    UpstreamResponded,
)

from .helpers import NOW, final, make_gateway, receive

CONFIG = {
    "servers": [{"alias": "up", "url": "http://upstream.test"}],
    "paths": [
        {"method": "GET", "path": "/health", "response": {"status": "ok"}},
        {"method": "GET", "path": "/items/{id}", "auth": True, "response": {}},
        {
            "method": "ANY",
            "path": "/proxy/{.+}",
            "integration": {"type": "http_proxy", "server": "up"},
        },
    ],
}


def test_static_and_error_answers_name_the_route_or_none() -> None:
    gateway = make_gateway(CONFIG)
    assert final(receive(gateway, "GET", "/health?x=1")[1]).route == "GET /health"
    assert final(receive(gateway, "GET", "/missing")[1]).route == ""
    assert final(receive(gateway, "GET", "%%")[1]).route == ""  # not a path: 400
    refused = final(receive(gateway, "GET", "/items/7")[1])  # auth without an authorizer
    assert (refused.status, refused.route) == (500, "GET /items/{id}")


def test_proxied_answers_and_upstream_failures_name_the_route() -> None:
    gateway = make_gateway(CONFIG)
    rid, actions = receive(gateway, "GET", "/proxy/a")
    assert isinstance(actions[0], ForwardUpstream)
    relayed = gateway.handle(UpstreamResponded(request_id=rid, status=200, headers=(), now=NOW))
    assert isinstance(relayed[0], RelayResponse)
    assert relayed[0].route == "ANY /proxy/{.+}"
    rid, _ = receive(gateway, "GET", "/proxy/b")
    failed = gateway.handle(
        ActionFailed(request_id=rid, reason=FailureReason.CONNECT, detail="", now=NOW)
    )
    assert (final(failed).status, final(failed).route) == (502, "ANY /proxy/{.+}")


def test_an_aborted_request_leaves_nothing_behind() -> None:
    gateway = make_gateway(CONFIG)
    rid, _ = receive(gateway, "GET", "/proxy/a")
    assert gateway.handle(RequestAborted(request_id=rid, now=NOW)) == []
    assert gateway._route_labels == {}
