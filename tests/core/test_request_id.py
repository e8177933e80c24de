"""Request ids: every answer and every proxied request carries ``X-Request-Id`` (no sockets).

The id is the client's when it is 1 to 200 visible ASCII characters, else 32
hex characters derived (one-way) from the request's entropy. Transports call
``request_id_for`` on the same event for their log lines and get the same id.
"""

from __future__ import annotations

import itertools
import re

import pytest

from sapg_core import (
    Action,
    ActionFailed,
    FailureReason,
    ForwardUpstream,
    Gateway,
    Log,
    RelayResponse,
    RequestReceived,
    Respond,
    UpstreamResponded,
    compile_config,
    is_valid_request_id,
    request_id_for,
)
from tests.core.helpers import NOW

CONFIG = {
    "servers": [{"alias": "api", "url": "http://upstream.test"}],
    "cors": {
        "allow_origins": ["https://app.test"],
        "allow_methods": ["GET"],
        "allow_headers": [],
        "expose_headers": [],
        "allow_credentials": False,
        "max_age": 60,
    },
    "authorizer": {"type": "jwt", "secret": "s" * 32, "algorithm": "HS256"},
    "paths": [
        {"method": "GET", "path": "/health", "response": {"ok": True}},
        {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
        {
            "method": "ANY",
            "path": "/api/{.+}",
            "integration": {"type": "http_proxy", "server": "api"},
        },
    ],
}
HEX32 = re.compile(r"[0-9a-f]{32}")
_ids = itertools.count(1)


def gateway() -> Gateway:
    return Gateway(compile_config(CONFIG, env={}).config)


def event(
    target: str = "/health",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    method: str = "GET",
    entropy: bytes = bytes(range(32)),
) -> RequestReceived:
    return RequestReceived(
        request_id=next(_ids),
        method=method,
        target=target,
        headers=(("host", "gw.test"), *headers),
        now=NOW,
        entropy=entropy,
        client="127.0.0.1",
    )


def ids(headers: tuple[tuple[str, str], ...]) -> list[str]:
    return [value for name, value in headers if name == "x-request-id"]


def answer_id(actions: list[Action]) -> str:
    finals = [a for a in actions if isinstance(a, Respond | RelayResponse)]
    assert len(finals) == 1, actions
    [value] = ids(finals[0].headers)
    return value


# -- every kind of answer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "extra", "status"),
    [
        ("GET", "/health", (), 200),  # plain static
        ("GET", "/missing", (), 404),
        ("GET", "/private", (), 401),  # an error from the pipeline
        ("OPTIONS", "/anything", (("origin", "https://app.test"),), 204),  # preflight
        ("GET", "ftp://x/y", (), 400),  # a malformed target
    ],
)
def test_every_answer_echoes_a_valid_incoming_id(
    method: str, target: str, extra: tuple[tuple[str, str], ...], status: int
) -> None:
    ev = event(target, (("x-request-id", "req-42"), *extra), method=method)
    actions = gateway().handle(ev)
    final = actions[-1]
    assert isinstance(final, Respond) and final.status == status
    assert ids(final.headers) == ["req-42"]
    assert request_id_for(ev) == "req-42"


def test_a_proxied_request_sends_the_id_upstream_and_back() -> None:
    gw = gateway()
    ev = event("/api/x", (("x-request-id", "abc-123"),))
    [forward] = gw.handle(ev)
    assert isinstance(forward, ForwardUpstream)
    assert ids(forward.headers) == ["abc-123"]
    upstream_headers = (("content-type", "text/plain"), ("x-request-id", "upstream-own"))
    [relay] = gw.handle(
        UpstreamResponded(request_id=ev.request_id, status=200, headers=upstream_headers, now=NOW)
    )
    assert isinstance(relay, RelayResponse)
    assert ids(relay.headers) == ["abc-123"]  # the upstream's own value is replaced


def test_an_upstream_failure_answers_and_logs_for_the_same_request() -> None:
    gw = gateway()
    ev = event("/api/x")
    [forward] = gw.handle(ev)
    assert isinstance(forward, ForwardUpstream)
    [new_id] = ids(forward.headers)
    actions = gw.handle(
        ActionFailed(request_id=ev.request_id, reason=FailureReason.CONNECT, now=NOW)
    )
    assert isinstance(actions[0], Log) and actions[0].request_id == ev.request_id
    assert answer_id(actions) == new_id == request_id_for(ev)


# -- which ids are kept -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "x" * 200, "0f8fad5b-d9cb-469f-a165-70867728950e", "!~\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"],
)
def test_valid_ids_are_kept(value: str) -> None:
    assert is_valid_request_id(value)
    assert answer_id(gateway().handle(event(headers=(("x-request-id", value),)))) == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 201, "ab\tcd", "ab cd", "caf\xe9", "a\x7fb", "a\x00b"],
    ids=["empty", "201-chars", "tab", "space", "latin-1", "del", "nul"],
)
def test_invalid_ids_are_replaced(value: str) -> None:
    assert not is_valid_request_id(value)
    ev = event(headers=(("x-request-id", value),))
    new = answer_id(gateway().handle(ev))
    assert HEX32.fullmatch(new) and new == request_id_for(ev)


def test_two_incoming_ids_are_replaced_by_one() -> None:
    ev = event(headers=(("x-request-id", "a"), ("x-request-id", "b")))
    assert HEX32.fullmatch(answer_id(gateway().handle(ev)))


# -- new ids -------------------------------------------------------------------------------


def test_new_ids_come_from_the_entropy_one_way_and_deterministically() -> None:
    entropy = bytes(range(32))
    first = request_id_for(event(entropy=entropy))
    assert first == request_id_for(event(entropy=entropy))  # a replayed trace agrees
    assert first != request_id_for(event(entropy=bytes(32)))
    assert first not in entropy.hex()  # the entropy's bytes stay secret (OAuth state ...)
    many = {request_id_for(event(entropy=bytes([n]) * 32)) for n in range(256)}
    assert len(many) == 256


def test_without_entropy_ids_still_differ_per_request() -> None:
    a, b = event(entropy=b""), event(entropy=b"")
    assert request_id_for(a) != request_id_for(b)
    assert HEX32.fullmatch(request_id_for(a))
