"""JWKS: key sets, key selection, JWS checks, and the remote key-set cache (events in, actions out).

The cache is driven through a real :class:`Gateway` with an ``auth0`` authorizer: tokens arrive
as ``RequestReceived``, the JWKS fetch leaves as a ``SendHTTP`` action and comes back as
``HTTPResponseReceived``. Time is the events' ``now`` only, so max-age, cool-down and rotation
are tested without a clock.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence

import pytest

from sapg_core import (
    ActionFailed,
    AuthError,
    FailureReason,
    Gateway,
    HTTPResponseReceived,
    JwksCache,
    JwksPolicy,
    KeySet,
    Log,
    Respond,
    SendHTTP,
    StaticJwks,
)
from sapg_core._flow import Shared
from sapg_core._jwks import verify_jws

from .auth0_keys import SigningKey, b64url, ec_key, ed_key, jwks, jwks_text, rsa_key
from .helpers import NOW, final, make_gateway, receive

ISSUER = "https://example.auth0.com/"
JWKS_URI = "https://example.auth0.com/.well-known/jwks.json"
T = int(NOW)

NO_MATCH = {"error": "No matching key found in JWKS.", "code": "ERR_JWKS_NO_MATCHING_KEY"}
VERIFICATION_FAILED = {"error": "JWT verification failed", "code": "AUTH_ERROR"}
INVALID_JWKS = {"error": "Invalid JWKS", "code": "ERR_JWKS_INVALID"}
OK = {"ok": True}


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": "anything",
        "iat": T - 60,
        "exp": T + 7200,
    }
    base.update(overrides)
    return base


def config(**authorizer: object) -> dict[str, object]:
    return {
        "authorizer": {
            "type": "auth0",
            "domain": "example.auth0.com",
            "client_id": "cid",
            "client_secret": "secret",
            "redirect_uri": "https://api.example.com/callback",
            "jwks_uri": JWKS_URI,
            "scope": "openid",
            **authorizer,
        },
        "paths": [{"method": "GET", "path": "/private", "auth": True, "response": OK}],
    }


@pytest.fixture
def gateway() -> Gateway:
    return make_gateway(config())


def ask(gateway: Gateway, token: str, *, now: float = NOW) -> tuple[int, list[object]]:
    rid, actions = receive(
        gateway, "GET", "/private", [("Authorization", f"Bearer {token}")], now=now
    )
    return rid, list(actions)


def fetches(actions: Sequence[object]) -> list[SendHTTP]:
    return [a for a in actions if isinstance(a, SendHTTP)]


def answers(actions: Sequence[object]) -> list[Respond]:
    return [a for a in actions if isinstance(a, Respond)]


def jwks_response(
    request_id: int,
    *keys: SigningKey,
    now: float = NOW,
    status: int = 200,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),),
) -> HTTPResponseReceived:
    return HTTPResponseReceived(
        request_id=request_id,
        status=status,
        headers=headers,
        body=jwks_text(*keys).encode() if body is None else body,
        now=now,
    )


def ok(actions: Sequence[object]) -> bool:
    responses = answers(actions)
    return len(responses) == 1 and responses[0].status == 200


def body(actions: Sequence[object]) -> object:
    return json.loads(final(list(actions)).body)  # type: ignore[union-attr]


def warm(gateway: Gateway, *keys: SigningKey, now: float = NOW, headers=None) -> None:
    """One request that fetches the JWKS (answered with ``keys``) and passes."""
    signer = keys[0]
    rid, actions = ask(gateway, signer.token(claims()), now=now)
    assert len(fetches(actions)) == 1
    extra = {} if headers is None else {"headers": headers}
    done = gateway.handle(jwks_response(rid, *keys, now=now, **extra))
    assert ok(done), done


def run(generator: Generator[object, object, object]) -> object:
    """Drive a generator that asks nothing of the world; return its value."""
    try:
        step = next(generator)
    except StopIteration as stop:
        return stop.value
    raise AssertionError(f"unexpected step {step!r}")


def verify_static(token: str, *keys: SigningKey, document: object = None) -> dict[str, object]:
    key_set = KeySet.parse(jwks(*keys) if document is None else document)
    claims_set, used = run(verify_jws(token, StaticJwks(key_set), request_id=1, now=NOW))  # type: ignore[misc]
    assert used is key_set
    return claims_set  # type: ignore[no-any-return]


def refused(token: str, *keys: SigningKey, document: object = None) -> dict[str, str]:
    with pytest.raises(AuthError) as caught:
        verify_static(token, *keys, document=document)
    return {"error": caught.value.message, "code": caught.value.code}


# --- key sets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [None, [], "keys", {}, {"keys": {}}, {"keys": [1]}, {"keys": [{"kty": "RSA"}, "x"]}],
)
def test_a_document_that_is_not_a_jwks_is_invalid(document: object) -> None:
    with pytest.raises(AuthError) as caught:
        KeySet.parse(document)
    assert (caught.value.status, caught.value.message, caught.value.code) == (
        401,
        "Invalid JWKS",
        "ERR_JWKS_INVALID",
    )


def test_kids_lists_the_key_ids() -> None:
    document = {"keys": [rsa_key().jwk(), ec_key().jwk(kid=None)]}
    assert KeySet.parse(document).kids == frozenset({"rsa-1"})


def test_each_algorithm_verifies_with_its_key_type() -> None:
    signers = [
        rsa_key("r256", "RS256"),
        rsa_key("r384", "RS384"),
        rsa_key("r512", "RS512"),
        rsa_key("p256", "PS256"),
        rsa_key("p384", "PS384"),
        rsa_key("p512", "PS512"),
        ec_key("e256", "ES256"),
        ec_key("e384", "ES384"),
        ed_key("ed"),
    ]
    for signer in signers:
        assert verify_static(signer.token(claims()), *signers)["sub"] == "user-1", signer.alg


def test_selection_filters_as_jose_does() -> None:
    key = rsa_key()
    token = key.token(claims())
    assert refused(token, document={"keys": [key.jwk(kid="other")]}) == NO_MATCH
    assert refused(token, document={"keys": [key.jwk(alg="RS384")]}) == NO_MATCH
    assert refused(token, document={"keys": [key.jwk(use="enc")]}) == NO_MATCH
    assert refused(token, document={"keys": [key.jwk(key_ops=["encrypt"])]}) == NO_MATCH
    assert refused(token, document={"keys": [ec_key().jwk(kid="rsa-1")]}) == NO_MATCH  # kty
    # The JWK's own alg, use and key_ops are optional; kid is matched only if the token has one.
    assert verify_static(token, document={"keys": [key.jwk(alg=None, use=None)]})
    assert verify_static(token, document={"keys": [key.jwk(key_ops=["verify"])]})
    anonymous = key.token(claims(), header={"kid": None})
    assert verify_static(anonymous, document={"keys": [key.jwk(kid="whatever")]})


def test_the_curve_must_fit_the_algorithm() -> None:
    p384 = ec_key("same", "ES384")
    token = ec_key("same", "ES256").token(claims())
    assert refused(token, document={"keys": [p384.jwk(alg=None)]}) == NO_MATCH


def test_several_fitting_keys_are_refused() -> None:
    first, second = rsa_key("a"), rsa_key("b")
    token = first.token(claims(), header={"kid": None})
    assert refused(token, first, second) == {
        "error": "Multiple matching keys found in JWKS.",
        "code": "ERR_JWKS_MULTIPLE_MATCHING_KEYS",
    }


def test_a_private_key_in_the_set_is_invalid() -> None:
    key = rsa_key()
    assert refused(key.token(claims()), document={"keys": [key.private_jwk()]}) == INVALID_JWKS


def test_short_rsa_keys_and_broken_keys_are_refused() -> None:
    short = rsa_key("short", "RS256", 1024)
    assert refused(short.token(claims()), short) == VERIFICATION_FAILED
    broken = {"keys": [{**rsa_key().jwk(), "n": "%%%"}]}
    assert refused(rsa_key().token(claims()), document=broken) == VERIFICATION_FAILED


def test_imported_keys_are_kept() -> None:
    key_set = KeySet.parse(jwks(rsa_key()))
    assert key_set.select("RS256", "rsa-1") is key_set.select("RS256", "rsa-1")


# --- algorithms and the JWS itself -----------------------------------------------------------


def forged(alg: str) -> str:
    header = b64url(json.dumps({"alg": alg, "kid": "rsa-1"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    return f"{header}.{payload}.{b64url(b'x' * 32)}"


@pytest.mark.parametrize("alg", ["none", "HS256", "HS384", "HS512", "XX1", "RSA-OAEP"])
def test_none_hmac_and_unknown_algorithms_get_the_original_answer(alg: str) -> None:
    assert refused(forged(alg), rsa_key()) == VERIFICATION_FAILED


@pytest.mark.parametrize("alg", ["ES512", "Ed25519"])
def test_algorithms_the_original_took_outside_the_allow_list_are_not_allowed(alg: str) -> None:
    assert refused(forged(alg), rsa_key()) == {
        "error": "Algorithm not allowed",
        "code": "ERR_JOSE_ALG_NOT_ALLOWED",
    }


def test_a_signature_from_another_key_fails() -> None:
    token = rsa_key("other-key").token(claims(), header={"kid": "rsa-1"})
    assert refused(token, rsa_key()) == {
        "error": "Signature verification failed",
        "code": "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    }


def test_structure_errors() -> None:
    key = rsa_key()
    token = key.token(claims())
    invalid_jws = {"error": "Invalid JWS", "code": "ERR_JWS_INVALID"}
    assert refused("not-a-jwt", key) == invalid_jws
    assert refused(token.rsplit(".", 1)[0] + ".+/", key) == invalid_jws  # bad base64url signature
    header = b64url(json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode())
    array_payload = f"{header}.{b64url(b'[1]')}"
    signed = f"{array_payload}.{b64url(key.sign_bytes(array_payload.encode()))}"
    assert refused(signed, key) == {"error": "Invalid JWT", "code": "ERR_JWT_INVALID"}


# --- the remote cache: max-age -----------------------------------------------------------------


def test_the_first_request_fetches_the_jwks_as_a_shared_action(gateway: Gateway) -> None:
    key = rsa_key()
    rid, actions = ask(gateway, key.token(claims()))
    assert actions == [
        SendHTTP(
            request_id=rid,
            method="GET",
            url=JWKS_URI,
            headers=(("accept", "application/json"), ("user-agent", "sapg")),
            timeout=5.0,
        )
    ]
    assert ok(gateway.handle(jwks_response(rid, key)))


def test_the_fetch_is_a_shared_step_keyed_by_uri() -> None:
    cache = JwksCache()
    flow = cache.key_for(JWKS_URI, alg="RS256", kid="rsa-1", request_id=7, now=NOW)
    step = next(flow)
    assert isinstance(step, Shared) and step.key == "jwks:" + JWKS_URI
    with pytest.raises(StopIteration) as done:
        flow.send(jwks_response(7, rsa_key()))
    key_set, _ = done.value.value
    assert cache.current(JWKS_URI, NOW) is key_set
    assert cache.fetched_at(JWKS_URI) == NOW


def test_a_fresh_set_is_reused_until_max_age(gateway: Gateway) -> None:
    key = rsa_key()
    warm(gateway, key)
    for offset in (1, 300, 599.9):
        _, actions = ask(gateway, key.token(claims(jti=str(offset))), now=NOW + offset)
        assert ok(actions) and not fetches(actions)
    rid, actions = ask(gateway, key.token(claims()), now=NOW + 600)
    assert len(fetches(actions)) == 1  # stale at exactly max_age
    assert ok(gateway.handle(jwks_response(rid, key, now=NOW + 600.2)))


@pytest.mark.parametrize(
    ("cache_control", "fresh_for"),
    [
        ("public, max-age=60, stale-while-revalidate=15", 60),
        ('max-age="15"', 15),
        ("max-age=86400", 600),  # never longer than the configured max_age
        ("no-store", 0),
        ("no-cache", 0),
        ("private", 600),
    ],
)
def test_cache_control_max_age_shortens_freshness(cache_control: str, fresh_for: int) -> None:
    gateway = make_gateway(config())
    key = rsa_key()
    warm(gateway, key, headers=(("cache-control", cache_control),))
    if fresh_for:
        _, actions = ask(gateway, key.token(claims(jti="a")), now=NOW + fresh_for - 0.5)
        assert ok(actions) and not fetches(actions)
    _, actions = ask(gateway, key.token(claims(jti="b")), now=NOW + fresh_for)
    assert len(fetches(actions)) == 1


def test_a_custom_policy() -> None:
    cache = JwksCache(JwksPolicy(max_age=5, cooldown=1, timeout=2))
    step = next(cache.key_for(JWKS_URI, alg="RS256", kid=None, request_id=1, now=NOW))
    assert isinstance(step, Shared) and isinstance(step.action, SendHTTP)
    assert step.action.timeout == 2


# --- unknown kid: cool-down and rotation -------------------------------------------------------


def test_an_unknown_kid_within_the_cooldown_fetches_nothing(gateway: Gateway) -> None:
    old, new = rsa_key("old"), rsa_key("new")
    warm(gateway, old)
    for offset in (0.5, 10, 29.9):
        _, actions = ask(gateway, new.token(claims()), now=NOW + offset)
        assert not fetches(actions)
        assert body(actions) == NO_MATCH


def test_after_the_cooldown_a_new_kid_is_fetched_once(gateway: Gateway) -> None:
    old, new = rsa_key("old"), rsa_key("new")
    warm(gateway, old)
    rid, actions = ask(gateway, new.token(claims()), now=NOW + 30)
    assert len(fetches(actions)) == 1
    assert ok(gateway.handle(jwks_response(rid, old, new, now=NOW + 30.1)))
    # Both keys now verify without a fetch; a still-unknown kid is refused without one too.
    for signer in (old, new):
        _, actions = ask(gateway, signer.token(claims(jti="x")), now=NOW + 31)
        assert ok(actions) and not fetches(actions)
    _, actions = ask(gateway, rsa_key("made-up").token(claims()), now=NOW + 32)
    assert not fetches(actions) and body(actions) == NO_MATCH


def test_a_refetch_that_still_lacks_the_kid_answers_no_match(gateway: Gateway) -> None:
    old = rsa_key("old")
    warm(gateway, old)
    rid, actions = ask(gateway, rsa_key("new").token(claims()), now=NOW + 45)
    assert len(fetches(actions)) == 1
    assert body(gateway.handle(jwks_response(rid, old, now=NOW + 45))) == NO_MATCH
    # ...and the cool-down now runs from that fetch.
    _, actions = ask(gateway, rsa_key("new").token(claims()), now=NOW + 60)
    assert not fetches(actions)


def test_a_removed_key_is_not_served_from_the_token_cache(gateway: Gateway) -> None:
    old, new = rsa_key("old"), rsa_key("new")
    warm(gateway, old)
    token = old.token(claims())
    _, actions = ask(gateway, token, now=NOW + 1)
    assert ok(actions)  # cached
    rid, actions = ask(gateway, token, now=NOW + 601)  # the set went stale: fetch again
    assert len(fetches(actions)) == 1
    assert body(gateway.handle(jwks_response(rid, new, now=NOW + 601))) == NO_MATCH


# --- single-flight -----------------------------------------------------------------------------


def test_fifty_concurrent_requests_share_one_fetch(gateway: Gateway) -> None:
    keys = [rsa_key(), ec_key()]
    started = [ask(gateway, keys[i % 2].token(claims(jti=str(i)))) for i in range(50)]
    sent = [action for _, actions in started for action in fetches(actions)]
    assert len(sent) == 1 and sent[0].request_id == started[0][0]
    assert all(actions == [] for _, actions in started[1:])  # parked, waiting
    assert gateway.pending_count == 50
    done = gateway.handle(jwks_response(started[0][0], *keys))
    responses = answers(done)
    assert sorted(r.request_id for r in responses) == sorted(rid for rid, _ in started)
    assert all(r.status == 200 and json.loads(r.body) == OK for r in responses)
    assert gateway.pending_count == 0


def test_fifty_requests_with_a_rotated_in_kid_share_one_fetch(gateway: Gateway) -> None:
    old, new = rsa_key("old"), rsa_key("new")
    warm(gateway, old)
    later = NOW + 120
    started = [ask(gateway, new.token(claims(jti=str(i))), now=later) for i in range(50)]
    assert sum(len(fetches(actions)) for _, actions in started) == 1
    done = gateway.handle(jwks_response(started[0][0], old, new, now=later + 0.3))
    assert len(answers(done)) == 50 and all(r.status == 200 for r in answers(done))


def test_the_outcome_is_parsed_once_for_every_waiter() -> None:
    cache = JwksCache()
    flows = [
        cache.key_for(JWKS_URI, alg="RS256", kid="rsa-1", request_id=i, now=NOW) for i in (1, 2)
    ]
    for flow in flows:
        next(flow)
    outcome = jwks_response(1, rsa_key())
    results = []
    for flow in flows:
        with pytest.raises(StopIteration) as done:
            flow.send(outcome)
        results.append(done.value.value)
    assert results[0][0] is results[1][0]  # the same KeySet object
    assert results[0][1] is results[1][1]  # and the same imported key


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (dict(status=500, body=b"oops"), VERIFICATION_FAILED),
        (dict(status=304, body=b""), VERIFICATION_FAILED),
        (dict(body=b"<html>"), VERIFICATION_FAILED),
        (dict(body=b'{"keys": {}}'), INVALID_JWKS),
        (dict(body=b"[]"), INVALID_JWKS),
    ],
)
def test_a_jwks_that_cannot_be_had_gets_the_original_answer_for_every_waiter(
    gateway: Gateway, outcome: dict[str, object], expected: dict[str, str]
) -> None:
    started = [ask(gateway, rsa_key().token(claims(jti=str(i)))) for i in range(5)]
    done = gateway.handle(jwks_response(started[0][0], **outcome))  # type: ignore[arg-type]
    responses = answers(done)
    assert len(responses) == 5
    assert all(r.status == 401 and json.loads(r.body) == expected for r in responses)
    logs = [a.message for a in done if isinstance(a, Log)]
    assert logs and all(JWKS_URI in message for message in logs)
    # A failure is not cached: the next request fetches again.
    _, actions = ask(gateway, rsa_key().token(claims()), now=NOW + 1)
    assert len(fetches(actions)) == 1


@pytest.mark.parametrize("reason", list(FailureReason))
def test_a_failed_fetch_answers_jwt_verification_failed(gateway: Gateway, reason) -> None:
    rid, _ = ask(gateway, rsa_key().token(claims()))
    done = gateway.handle(ActionFailed(request_id=rid, reason=reason, detail="boom", now=NOW))
    assert body(done) == VERIFICATION_FAILED


def test_a_stale_set_that_cannot_be_refreshed_fails(gateway: Gateway) -> None:
    key = rsa_key()
    warm(gateway, key)
    rid, actions = ask(gateway, key.token(claims(jti="later")), now=NOW + 700)
    assert len(fetches(actions)) == 1
    failure = ActionFailed(request_id=rid, reason=FailureReason.TIMEOUT, now=NOW + 705)
    assert body(gateway.handle(failure)) == VERIFICATION_FAILED


def test_the_same_events_give_the_same_actions() -> None:
    def script(gateway: Gateway) -> list[object]:
        out: list[object] = []
        old, new = rsa_key("old"), rsa_key("new")
        rid, actions = ask(gateway, old.token(claims()))
        out += actions
        out += gateway.handle(jwks_response(rid, old))
        for offset, signer in ((5, new), (40, new), (41, old)):
            rid, actions = ask(gateway, signer.token(claims()), now=NOW + offset)
            out += actions
            if fetches(actions):
                out += gateway.handle(jwks_response(rid, old, new, now=NOW + offset))
        return [
            (type(a).__name__, getattr(a, "status", None), getattr(a, "body", None)) for a in out
        ]

    first, second = script(make_gateway(config())), script(make_gateway(config()))
    assert first == second
    assert sum(1 for name, _, _ in first if name == "SendHTTP") == 2
