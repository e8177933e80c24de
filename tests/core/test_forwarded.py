"""X-Forwarded-* on proxied requests: believed only from trusted proxies (no sockets).

The gateway sets ``X-Forwarded-For`` (the peer appended), ``X-Forwarded-Proto``
and ``X-Forwarded-Host`` on every ``ForwardUpstream``; incoming values pass only
when the peer (``RequestReceived.client``) is in ``forwarded_allow_ips``.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, strategies as st

from sapg_core import (
    DEFAULT_FORWARDED_ALLOW_IPS,
    Event,
    ForwardUpstream,
    Gateway,
    RequestReceived,
    TraceError,
    TraceHeader,
    TraceStep,
    TrustedProxies,
    client_address,
    compile_config,
    decode_item,
    dump_line,
    encode_item,
    forwarded_headers,
    load_line,
    make_header,
    replay,
)
from tests.core.helpers import NOW

CONFIG = {
    "servers": [{"alias": "api", "url": "http://upstream.test/v1"}],
    "paths": [
        {
            "method": "ANY",
            "path": "/api/{.+}",
            "integration": {"type": "http_proxy", "server": "api"},
        },
        {
            "method": "ANY",
            "path": "/mapped/{.+}",
            "integration": {"type": "http_proxy", "server": "api"},
            "mapping": {"headers": {"X-Forwarded-For": "$request.header.x-spoof"}},
        },
        {"method": "GET", "path": "/health", "response": {"ok": True}},
    ],
}
_ids = itertools.count(1)


def gateway(allow: str = "127.0.0.1") -> Gateway:
    return Gateway(compile_config(CONFIG, env={}).config, forwarded_allow_ips=allow)


def event(
    client: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    target: str = "/api/x",
    scheme: str = "http",
    host: str = "gw.test:8787",
) -> RequestReceived:
    return RequestReceived(
        request_id=next(_ids),
        method="GET",
        target=target,
        headers=(("host", host), *headers),
        now=NOW,
        entropy=bytes(range(32)),
        scheme=scheme,
        host=host,
        client=client,
    )


def forwarded(gw: Gateway, ev: RequestReceived) -> dict[str, list[str]]:
    [action] = gw.handle(ev)
    assert isinstance(action, ForwardUpstream)
    seen: dict[str, list[str]] = {}
    for name, value in action.headers:
        seen.setdefault(name, []).append(value)
    return seen


SPOOF = (
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
)


def test_an_untrusted_peer_cannot_spoof_any_forwarded_field() -> None:
    seen = forwarded(gateway(), event("203.0.113.7", SPOOF))
    assert seen["x-forwarded-for"] == ["203.0.113.7"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["gw.test:8787"]


def test_a_trusted_peer_is_believed_and_appended() -> None:
    seen = forwarded(gateway(), event("127.0.0.1", SPOOF))
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["evil.example"]


def test_without_incoming_fields_the_gateway_says_what_it_received() -> None:
    seen = forwarded(gateway(), event("127.0.0.1", scheme="https", host="api.example.com"))
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["api.example.com"]


def test_several_incoming_fields_from_a_trusted_peer_make_one_chain_in_order() -> None:
    headers = (("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", " 3.3.3.3 ,"))
    seen = forwarded(gateway(), event("127.0.0.1", headers))
    assert seen["x-forwarded-for"] == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]


def test_star_trusts_every_peer() -> None:
    seen = forwarded(gateway("*"), event("198.51.100.1", SPOOF))
    assert seen["x-forwarded-for"] == ["6.6.6.6, 198.51.100.1"]
    assert seen["x-forwarded-proto"] == ["https"]


def test_cidr_networks_and_lists() -> None:
    gw = gateway("10.0.0.0/8, 192.168.1.5")
    assert forwarded(gw, event("10.20.30.40", SPOOF))["x-forwarded-for"] == ["6.6.6.6, 10.20.30.40"]
    assert forwarded(gw, event("192.168.1.5", SPOOF))["x-forwarded-for"] == ["6.6.6.6, 192.168.1.5"]
    assert forwarded(gw, event("192.168.1.6", SPOOF))["x-forwarded-for"] == ["192.168.1.6"]
    assert forwarded(gw, event("11.0.0.1", SPOOF))["x-forwarded-for"] == ["11.0.0.1"]


def test_ipv6_peers_and_networks() -> None:
    gw = gateway("::1, 2001:db8::/32")
    assert forwarded(gw, event("::1", SPOOF))["x-forwarded-for"] == ["6.6.6.6, ::1"]
    assert forwarded(gw, event("2001:db8::42", SPOOF))["x-forwarded-for"] == [
        "6.6.6.6, 2001:db8::42"
    ]
    assert forwarded(gw, event("2001:db9::1", SPOOF))["x-forwarded-for"] == ["2001:db9::1"]
    # The default trusts 127.0.0.1, however the socket spells it; not ::1.
    default = gateway()
    assert forwarded(default, event("::ffff:127.0.0.1", SPOOF))["x-forwarded-proto"] == ["https"]
    assert forwarded(default, event("::1", SPOOF))["x-forwarded-proto"] == ["http"]


def test_an_unknown_peer_is_not_trusted_and_adds_no_address() -> None:
    seen = forwarded(gateway(), event("", SPOOF))
    assert "x-forwarded-for" not in seen  # nothing believed, nothing to add
    assert seen["x-forwarded-proto"] == ["http"]


def test_an_unparsable_peer_is_not_trusted() -> None:
    seen = forwarded(gateway("127.0.0.0/8"), event("not-an-ip", SPOOF))
    assert seen["x-forwarded-for"] == ["not-an-ip"]
    assert seen["x-forwarded-host"] == ["gw.test:8787"]


def test_a_route_mapping_cannot_reintroduce_a_spoofed_value() -> None:
    headers = (("x-spoof", "6.6.6.6"),)
    seen = forwarded(gateway(), event("203.0.113.7", headers, target="/mapped/x"))
    assert seen["x-forwarded-for"] == ["203.0.113.7"]


def test_case_and_position_of_incoming_fields_do_not_matter() -> None:
    headers = (("X-Forwarded-For", "6.6.6.6"), ("accept", "*/*"), ("X-FORWARDED-HOST", "e.x"))
    seen = forwarded(gateway(), event("203.0.113.7", headers))
    assert seen["x-forwarded-for"] == ["203.0.113.7"]
    assert seen["x-forwarded-host"] == ["gw.test:8787"]
    assert seen["accept"] == ["*/*"]


def test_static_routes_are_not_forwarded_so_get_no_such_fields() -> None:
    [answer] = gateway().handle(event("203.0.113.7", SPOOF, target="/health"))
    assert not any(name.startswith("x-forwarded") for name, _ in answer.headers)  # type: ignore[attr-defined]


@given(
    chain=st.lists(st.ip_addresses().map(str), max_size=4),
    peer=st.ip_addresses().map(str),
)
def test_the_peer_is_always_the_last_entry_and_untrusted_chains_never_pass(
    chain: list[str], peer: str
) -> None:
    ev = event(peer, (("x-forwarded-for", ", ".join(chain)),) if chain else ())
    trusted = TrustedProxies("10.0.0.0/8")
    headers = dict(forwarded_headers((), ev, trusted, "id"))
    entries = headers["x-forwarded-for"].split(", ")
    assert entries[-1] == peer
    if not trusted.trusts(peer):
        assert entries == [peer]


# -- the trust list ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nonsense", "10.0.0.0/33", "127.0.0.1, bad", "1.2.3.4/8/9"])
def test_a_malformed_trust_list_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        TrustedProxies(spec)
    with pytest.raises(ValueError):
        gateway(spec)


def test_trust_list_forms() -> None:
    assert TrustedProxies("").trusts("127.0.0.1") is False
    assert TrustedProxies("*").trusts("") is True
    assert TrustedProxies("10.1.2.3/8").trusts("10.200.0.1") is True  # host bits allowed
    assert TrustedProxies("[::1]").trusts("::1") is True
    assert TrustedProxies("fe80::/10").trusts("fe80::1%eth0") is True
    assert TrustedProxies(" 127.0.0.1 , ::1 ") == TrustedProxies("::1,127.0.0.1/32")


# -- the client address in the logs --------------------------------------------------


def test_client_address_is_the_peer_unless_a_trusted_proxy_forwarded() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    assert client_address(event("203.0.113.7", SPOOF), trusted) == "203.0.113.7"
    assert client_address(event("127.0.0.1", SPOOF), trusted) == "6.6.6.6"
    chain = (("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.0.0.5"),)
    assert client_address(event("127.0.0.1", chain), trusted) == "7.7.7.7"  # rightmost untrusted
    every = (("x-forwarded-for", "10.0.0.1, 10.0.0.2"),)
    assert client_address(event("127.0.0.1", every), trusted) == "10.0.0.1"  # all trusted
    assert client_address(event("127.0.0.1"), trusted) == "127.0.0.1"


# -- traces ----------------------------------------------------------------------------


def test_a_trace_carries_the_peer_and_the_trust_list_and_replays_the_same() -> None:
    ev = event("10.1.1.1", SPOOF)
    assert decode_item(encode_item(ev), Event) == ev
    older = encode_item(ev)
    del older["client"]  # a trace written before the field existed
    decoded = decode_item(older, Event)
    assert isinstance(decoded, RequestReceived) and decoded.client == ""

    header = make_header(
        CONFIG, {}, max_body_bytes=10 * 1024 * 1024, forwarded_allow_ips="10.0.0.0/8"
    )
    loaded = load_line(dump_line(header))
    assert isinstance(loaded, TraceHeader) and loaded.forwarded_allow_ips == "10.0.0.0/8"
    line = json.loads(dump_line(header))
    del line["options"]["forwarded_allow_ips"]  # an older header: the default
    older_header = load_line(json.dumps(line))
    assert isinstance(older_header, TraceHeader)
    assert older_header.forwarded_allow_ips == DEFAULT_FORWARDED_ALLOW_IPS

    recorded = gateway("10.0.0.0/8")
    actions = tuple(recorded.handle(ev))
    assert dict(actions[0].headers)["x-forwarded-for"] == "6.6.6.6, 10.1.1.1"  # type: ignore[attr-defined]
    assert replay([header, TraceStep(event=ev, actions=actions)]) is None
    # Replayed under the default trust, the same event would be forwarded otherwise.
    divergence = replay([older_header, TraceStep(event=ev, actions=actions)])
    assert divergence is not None and divergence.line == 2


def test_a_trace_with_an_unusable_trust_list_is_refused() -> None:
    header = make_header(CONFIG, {}, max_body_bytes=1024, forwarded_allow_ips="nonsense")
    with pytest.raises(TraceError, match="gateway options"):
        replay([header])
