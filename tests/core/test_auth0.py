"""Auth0 at the edge (UPSTREAM.md §6.2-6.3, §7.2, §8.7-8.10, §13.4 cases 36-54).

No sockets: requests go in as ``RequestReceived``, calls to Auth0 come out as ``SendHTTP`` and
their answers go back in as ``HTTPResponseReceived`` / ``ActionFailed``. Case numbers are the
spec's. Where sapg deliberately differs from the original (docs/differences.md), the test says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

import pytest

from sapg_core import (
    LOGIN_COOKIE,
    ActionFailed,
    BodyReceived,
    FailureReason,
    Gateway,
    HTTPResponseReceived,
    Log,
    ReadBody,
    RequestReceived,
    Respond,
    SendHTTP,
)

from .auth0_keys import b64url, ec_key, jwks_text, rsa_key
from .helpers import NOW, final, make_gateway

DOMAIN = "example.auth0.com"
ISSUER = f"https://{DOMAIN}/"
JWKS_URI = f"https://{DOMAIN}/.well-known/jwks.json"
TOKEN_URL = f"https://{DOMAIN}/oauth/token"
T = int(NOW)
KEY = rsa_key()
FORM = (("content-type", "application/x-www-form-urlencoded"),)
CORS = {
    "allow_origins": ["https://app.example.com"],
    "allow_methods": ["GET", "POST", "OPTIONS"],
    "allow_headers": ["Authorization"],
    "expose_headers": [],
    "allow_credentials": True,
    "max_age": 600,
}
PATHS = [
    {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
    {"method": "GET", "path": "/login", "integration": {"type": "auth0_callback_redirect"}},
    {"method": "GET", "path": "/cb", "integration": {"type": "auth0_callback"}},
    {"method": "GET", "path": "/userinfo", "integration": {"type": "auth0_userinfo"}},
    {"method": "ANY", "path": "/refresh", "integration": {"type": "auth0_refresh"}},
]
ENTROPY = bytes(range(32))
_ids = itertools.count(1_000_000)


def authorizer(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "auth0",
        "domain": DOMAIN,
        "client_id": "cid",
        "client_secret": "secret",
        "redirect_uri": "https://api.example.com/callback",
        "jwks_uri": JWKS_URI,
        "scope": "openid",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def gateway(cors: bool = False, paths: list[object] | None = None, **changes: object) -> Gateway:
    config: dict[str, object] = {"authorizer": authorizer(**changes), "paths": paths or PATHS}
    if cors:
        config["cors"] = CORS
    return make_gateway(config)


def local(**changes: object) -> Gateway:
    """The base authorizer plus a local JWKS holding :data:`KEY` (no fetches)."""
    return gateway(jwks=jwks_text(KEY, ec_key()), **changes)


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": "cid",
        "iat": T - 60,
        "exp": T + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def start(
    gw: Gateway,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    now: float = NOW,
    entropy: bytes = ENTROPY,
) -> tuple[int, list[object]]:
    rid = next(_ids)
    event = RequestReceived(
        request_id=rid,
        method=method,
        target=target,
        headers=tuple(headers),
        now=now,
        entropy=entropy,
    )
    return rid, list(gw.handle(event))


def answer(actions: Sequence[object]) -> Respond:
    response = final(list(actions))
    assert isinstance(response, Respond)
    return response


def body(actions: Sequence[object]) -> object:
    return json.loads(answer(actions).body)


def header(response: Respond, name: str) -> str | None:
    values = [v for k, v in response.headers if k == name]
    return values[0] if values else None


def sent(actions: Sequence[object]) -> SendHTTP:
    calls = [a for a in actions if isinstance(a, SendHTTP)]
    assert len(calls) == 1, actions
    return calls[0]


def auth0_says(
    request_id: int, status: int, payload: object, *, now: float = NOW + 0.2
) -> HTTPResponseReceived:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return HTTPResponseReceived(
        request_id=request_id,
        status=status,
        headers=(("content-type", "application/json"),),
        body=data,
        now=now,
    )


def logs(actions: Sequence[object]) -> list[str]:
    return [a.message for a in actions if isinstance(a, Log)]


NO_TOKEN = {"error": "No token provided or token format is invalid.", "code": "AUTH_ERROR"}
CLAIM_FAILED = {"error": "JWT claim validation failed", "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"}
INTERNAL = {"message": "Internal server error"}
INVALID_STATE = {"error": "Invalid OAuth state", "code": "invalid_state"}


# --- the auth0 authorizer (§7.2) --------------------------------------------------------------


def test_36_no_token() -> None:
    response = answer(start(gateway(), "GET", "/private")[1])
    assert (response.status, json.loads(response.body)) == (401, NO_TOKEN)


def test_37_no_jwks_source_is_a_config_error_after_the_bearer_check() -> None:
    gw = gateway(jwks_uri=None)
    assert body(start(gw, "GET", "/private")[1]) == NO_TOKEN
    response = answer(start(gw, "GET", "/private", [bearer("some-token")])[1])
    assert response.status == 500
    assert json.loads(response.body) == {
        "error": "No JWKS source configured.",
        "code": "AUTH_CONFIG_ERROR",
    }


def test_38_jwks_that_is_not_json() -> None:
    response = answer(start(gateway(jwks="{invalid-json"), "GET", "/private", [bearer("x")])[1])
    assert response.status == 500
    assert json.loads(response.body) == {
        "error": "JWKS configuration is not valid JSON.",
        "code": "AUTH_CONFIG_ERROR",
    }


def test_38b_a_local_jwks_without_keys_array_is_invalid_before_the_token_is_read() -> None:
    response = answer(start(gateway(jwks='{"nope":1}'), "GET", "/private", [bearer("x")])[1])
    assert (response.status, json.loads(response.body)) == (
        401,
        {"error": "Invalid JWKS", "code": "ERR_JWKS_INVALID"},
    )


def test_39_empty_key_set() -> None:
    gw = gateway(jwks='{"keys":[]}')
    assert body(start(gw, "GET", "/private", [bearer(KEY.token(claims()))])[1]) == {
        "error": "No matching key found in JWKS.",
        "code": "ERR_JWKS_NO_MATCHING_KEY",
    }


@pytest.mark.parametrize("aud", ["cid", "someone-else", ["a", "b"], None])
def test_40_a_valid_token_passes_whatever_its_audience(aud: object) -> None:
    response = answer(start(local(), "GET", "/private", [bearer(KEY.token(claims(aud=aud)))])[1])
    assert (response.status, response.body) == (200, b'{"ok":true}')


def test_40b_with_jwks_uri_the_set_is_fetched_then_cached() -> None:
    gw = gateway()
    rid, actions = start(gw, "GET", "/private", [bearer(KEY.token(claims()))])
    assert sent(actions).url == JWKS_URI
    response = answer(gw.handle(auth0_says(rid, 200, json.loads(jwks_text(KEY)))))
    assert response.status == 200
    _, actions = start(gw, "GET", "/private", [bearer(KEY.token(claims(jti="2")))])
    assert answer(actions).status == 200


@pytest.mark.parametrize(
    ("token_claims", "expected"),
    [
        (claims(iss="https://other.auth0.com/"), CLAIM_FAILED),
        (claims(iss=None), CLAIM_FAILED),
        (claims(exp=T - 1), {"error": "Token has expired.", "code": "ERR_JWT_EXPIRED"}),
        (claims(nbf=T + 60), CLAIM_FAILED),
        (claims(iss="https://other/", exp=T - 1), CLAIM_FAILED),  # jose: issuer before expiry
    ],
)
def test_claims_are_checked_as_jose_checks_them(token_claims: object, expected: object) -> None:
    token = KEY.token(token_claims)  # type: ignore[arg-type]
    response = answer(start(local(), "GET", "/private", [bearer(token)])[1])
    assert (response.status, json.loads(response.body)) == (401, expected)


def test_ec_tokens_verify() -> None:
    token = ec_key().token(claims())
    assert answer(start(local(), "GET", "/private", [bearer(token)])[1]).status == 200


def test_an_hs256_token_is_refused_with_the_original_answer() -> None:
    header = b64url(json.dumps({"alg": "HS256"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    mac = hmac.new(b"secret", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64url(mac)}"
    assert body(start(local(), "GET", "/private", [bearer(token)])[1]) == {
        "error": "JWT verification failed",
        "code": "AUTH_ERROR",
    }


def test_audience_when_configured_must_match() -> None:
    gw = local(audience="https://api.example.com")
    good = KEY.token(claims(aud=["https://api.example.com", f"{ISSUER}userinfo"]))
    assert answer(start(gw, "GET", "/private", [bearer(good)])[1]).status == 200
    for aud in ("cid", None):
        token = KEY.token(claims(aud=aud))
        assert body(start(gw, "GET", "/private", [bearer(token)])[1]) == CLAIM_FAILED


def test_verified_tokens_are_cached_but_expiry_is_still_checked() -> None:
    gw = local()
    token = KEY.token(claims(exp=T + 10))
    assert answer(start(gw, "GET", "/private", [bearer(token)])[1]).status == 200
    authenticator = gw._authenticator
    assert token in authenticator._route_tokens._cache  # type: ignore[union-attr]
    expired = start(gw, "GET", "/private", [bearer(token)], now=T + 10)[1]
    assert body(expired) == {"error": "Token has expired.", "code": "ERR_JWT_EXPIRED"}


def test_the_log_names_the_cause_but_never_the_token() -> None:
    token = KEY.token(claims(iss="https://evil/"))
    actions = start(local(), "GET", "/private", [bearer(token)])[1]
    assert logs(actions) == ['unexpected "iss" claim value']


# --- auth0_callback_redirect (§8.8, cases 41-42) ------------------------------------------------


def location_query(response: Respond) -> tuple[str, list[tuple[str, str]]]:
    location = header(response, "location")
    assert location is not None
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qsl(parts.query)


def open_cookie(response: Respond) -> dict[str, object]:
    """Read the login cookie's payload as an outsider can (it is signed, not encrypted)."""
    set_cookie = header(response, "set-cookie")
    assert set_cookie is not None
    value = set_cookie.split(";")[0].removeprefix(f"{LOGIN_COOKIE}=")
    _, payload, _ = value.split(".")
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def s256(text: str) -> str:
    return b64url(hashlib.sha256(text.encode()).digest())


def test_41_the_login_redirect_is_encoded_and_carries_nonce_and_pkce() -> None:
    gw = local(cors=True, scope="openid profile email")
    response = answer(
        start(gw, "GET", "/login?state=abc123", [("Origin", CORS["allow_origins"][0])])[1]
    )
    assert response.status == 302 and response.body == b""
    base, query = location_query(response)
    assert base == f"{ISSUER}authorize"
    names = [name for name, _ in query]
    assert names == [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ]
    values = dict(query)
    assert values["response_type"] == "code" and values["client_id"] == "cid"
    assert values["redirect_uri"] == "https://api.example.com/callback"
    assert values["scope"] == "openid profile email" and values["state"] == "abc123"
    assert values["code_challenge_method"] == "S256"
    location = header(response, "location") or ""
    assert location.startswith(
        f"{ISSUER}authorize?response_type=code&client_id=cid"
        "&redirect_uri=https%3A%2F%2Fapi.example.com%2Fcallback"
        "&scope=openid%20profile%20email&state=abc123&nonce="
    )
    # The cookie holds what the callback needs; the challenge is S256 of its verifier.
    login = open_cookie(response)
    assert login["n"] == values["nonce"] and len(values["nonce"]) == 43
    assert s256(str(login["v"])) == values["code_challenge"] and len(str(login["v"])) == 43
    assert login["s"] == s256("abc123") and login["x"] == T + 600
    # As the original: no CORS, no X-Powered-By on the redirect; the request id is on
    # every answer (test_request_id.py).
    names = {name for name, _ in response.headers}
    assert names == {"location", "set-cookie", "cache-control", "x-request-id"}


def test_the_login_cookie_attributes() -> None:
    response = answer(start(local(), "GET", "/login")[1])
    attributes = (header(response, "set-cookie") or "").split("; ")
    assert attributes[0].startswith(f"{LOGIN_COOKIE}=v1.")
    assert attributes[1:] == ["Max-Age=600", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"]
    assert header(response, "cache-control") == "no-store"


def test_42_without_a_state_the_gateway_makes_one() -> None:
    gw = local()
    first = answer(start(gw, "GET", "/login")[1])
    state = dict(location_query(first)[1])["state"]
    assert state != "null" and len(state) == 43
    assert open_cookie(first)["s"] == s256(state)
    other = answer(start(gw, "GET", "/login", entropy=bytes(32))[1])
    other_values = dict(location_query(other)[1])
    assert other_values["state"] != state
    assert other_values["nonce"] != dict(location_query(first)[1])["nonce"]


def test_42_a_state_with_reserved_characters_is_encoded_not_injected() -> None:
    response = answer(start(local(), "GET", "/login?state=a%26b%3Dc%23d")[1])
    location = header(response, "location") or ""
    assert "&state=a%26b%3Dc%23d&" in location
    assert dict(location_query(response)[1])["state"] == "a&b=c#d"


def test_the_same_entropy_gives_the_same_redirect() -> None:
    first = answer(start(local(), "GET", "/login")[1])
    second = answer(start(local(), "GET", "/login")[1])
    assert first.headers == second.headers


def test_audience_is_asked_for_when_configured() -> None:
    response = answer(start(local(audience="https://api.example.com"), "GET", "/login")[1])
    assert dict(location_query(response)[1])["audience"] == "https://api.example.com"


def test_without_entropy_no_login_starts() -> None:
    actions = start(local(), "GET", "/login", entropy=b"")[1]
    assert answer(actions).status == 500 and body(actions) == INTERNAL
    assert "entropy" in logs(actions)[0]


def test_a_domain_with_a_port() -> None:
    gw = gateway(domain="127.0.0.1:8443", jwks=jwks_text(KEY))
    location = header(answer(start(gw, "GET", "/login")[1]), "location") or ""
    assert location.startswith("https://127.0.0.1:8443/authorize?")
    rid, actions = start(gw, "GET", "/cb?code=c")
    assert sent(actions).url == "https://127.0.0.1:8443/oauth/token"
    token = KEY.token(claims(iss="https://127.0.0.1:8443/"))
    done = gw.handle(auth0_says(rid, 200, {"id_token": token}))
    assert answer(done).status == 200


# --- auth0_callback (§8.7, cases 47-49) ---------------------------------------------------------


def test_47_the_token_request_is_the_original_one_and_auth0_errors_pass_their_status() -> None:
    gw = local()
    rid, actions = start(gw, "GET", "/cb?code=code-123")
    assert sent(actions) == SendHTTP(
        request_id=rid,
        method="POST",
        url=TOKEN_URL,
        headers=FORM,
        body=(
            b"grant_type=authorization_code&client_id=cid&client_secret=secret&code=code-123"
            b"&redirect_uri=https%3A%2F%2Fapi.example.com%2Fcallback"
        ),
        timeout=10.0,
    )
    done = gw.handle(auth0_says(rid, 400, {"error": "invalid_grant"}))
    response = answer(done)
    assert (response.status, json.loads(response.body)) == (
        400,
        {"error": "Auth0 token exchange failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )
    assert logs(done) == ["Auth0 token exchange failed with status 400 (invalid_grant)"]


@pytest.mark.parametrize("reason", list(FailureReason))
def test_48_auth0_unreachable(reason: FailureReason) -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/cb?code=x")
    done = gw.handle(ActionFailed(request_id=rid, reason=reason, detail="refused", now=NOW))
    response = answer(done)
    assert (response.status, json.loads(response.body)) == (
        502,
        {"error": "Auth0 token exchange request failed", "code": "AUTH0_NETWORK_ERROR"},
    )


def test_48_auth0_answers_something_that_is_not_json() -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/cb?code=x")
    response = answer(gw.handle(auth0_says(rid, 200, b"<html>")))
    assert (response.status, json.loads(response.body)) == (
        500,
        {"error": "Internal Server Error", "code": "AUTH0_ERROR"},
    )


@pytest.mark.parametrize("payload", [{"access_token": "a"}, [1], "text", {"id_token": ""}])
def test_49_no_id_token(payload: object) -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/cb?code=x")
    response = answer(gw.handle(auth0_says(rid, 200, payload)))
    assert (response.status, json.loads(response.body)) == (500, INTERNAL)


def test_a_missing_code_is_a_400_and_auth0_is_not_called() -> None:
    actions = start(local(), "GET", "/cb?error=access_denied&state=s")[1]
    response = answer(actions)
    assert (response.status, json.loads(response.body)) == (
        400,
        {"error": "Missing authorization code", "code": "missing_code"},
    )
    assert not [a for a in actions if isinstance(a, SendHTTP)]
    assert logs(actions) == ["auth0 callback without a code (access_denied)"]


def test_the_callback_answers_auth0_tokens_as_json() -> None:
    gw = local(cors=True)
    rid, _ = start(gw, "GET", "/cb?code=x", [("Origin", "https://app.example.com")])
    tokens = {
        "access_token": "at",
        "id_token": KEY.token(claims()),
        "refresh_token": "rt",
        "scope": "openid",
        "expires_in": 86400,
        "token_type": "Bearer",
    }
    response = answer(gw.handle(auth0_says(rid, 200, tokens)))
    assert response.status == 200
    assert response.body == json.dumps(tokens, separators=(",", ":")).encode()
    assert header(response, "access-control-allow-origin") == "https://app.example.com"
    assert header(response, "x-powered-by") == "sapg"
    assert header(response, "set-cookie") is None  # no login cookie came in


@pytest.mark.parametrize(
    ("aud", "azp", "passes"),
    [
        ("cid", None, True),
        (["cid"], None, True),
        (["cid", "https://api"], "cid", True),
        (["cid", "https://api"], None, False),
        (["cid", "https://api"], "other", False),
        ("other-client", None, False),
        (None, None, False),
    ],
)
def test_the_id_token_must_be_meant_for_this_client(aud: object, azp: object, passes: bool) -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/cb?code=x")
    token = KEY.token(claims(aud=aud, azp=azp))
    response = answer(gw.handle(auth0_says(rid, 200, {"id_token": token})))
    if passes:
        assert response.status == 200
    else:
        assert (response.status, json.loads(response.body)) == (401, CLAIM_FAILED)


def test_an_id_token_is_checked_at_the_time_auth0_answered() -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/cb?code=x")
    token = KEY.token(claims(exp=T + 1))
    response = answer(gw.handle(auth0_says(rid, 200, {"id_token": token}, now=NOW + 5)))
    assert json.loads(response.body) == {"error": "Token has expired.", "code": "ERR_JWT_EXPIRED"}


def test_the_id_token_with_a_remote_jwks_fetches_it_after_the_exchange() -> None:
    gw = gateway()
    rid, _ = start(gw, "GET", "/cb?code=x")
    fetch = sent(gw.handle(auth0_says(rid, 200, {"id_token": KEY.token(claims())})))
    assert fetch.url == JWKS_URI
    assert answer(gw.handle(auth0_says(rid, 200, json.loads(jwks_text(KEY))))).status == 200


# --- state, nonce and PKCE at the callback -----------------------------------------------------


def login(gw: Gateway, target: str = "/login") -> tuple[str, dict[str, str]]:
    """Start a login; return the cookie pair to send back and the authorize parameters."""
    response = answer(start(gw, "GET", target)[1])
    cookie = (header(response, "set-cookie") or "").split(";")[0]
    return cookie, dict(location_query(response)[1])


def test_a_callback_with_the_cookie_checks_state_sends_the_verifier_and_checks_nonce() -> None:
    gw = local()
    cookie, params = login(gw, "/login?state=client-state")
    target = f"/cb?code=c0de&state={params['state']}"
    rid, actions = start(gw, "GET", target, [("Cookie", f"other=1; {cookie}")])
    request = sent(actions)
    form = dict(parse_qsl(request.body.decode()))
    assert list(form) == [
        "grant_type",
        "client_id",
        "client_secret",
        "code",
        "redirect_uri",
        "code_verifier",
    ]
    assert s256(form["code_verifier"]) == params["code_challenge"]
    token = KEY.token(claims(nonce=params["nonce"]))
    response = answer(gw.handle(auth0_says(rid, 200, {"id_token": token})))
    assert response.status == 200
    assert header(response, "set-cookie") == (
        f"{LOGIN_COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"
    )


@pytest.mark.parametrize("nonce", ["wrong", None, 42])
def test_a_wrong_or_missing_nonce_fails(nonce: object) -> None:
    gw = local()
    cookie, params = login(gw)
    rid, _ = start(gw, "GET", f"/cb?code=c&state={params['state']}", [("Cookie", cookie)])
    token = KEY.token(claims(nonce=nonce))
    response = answer(gw.handle(auth0_says(rid, 200, {"id_token": token})))
    assert (response.status, json.loads(response.body)) == (401, CLAIM_FAILED)


@pytest.mark.parametrize("state", ["other", None, ""])
def test_a_state_mismatch_is_403_before_auth0_is_called(state: str | None) -> None:
    gw = local()
    cookie, _ = login(gw)
    target = "/cb?code=c" + ("" if state is None else f"&state={state}")
    actions = start(gw, "GET", target, [("Cookie", cookie)])[1]
    response = answer(actions)
    assert (response.status, json.loads(response.body)) == (403, INVALID_STATE)
    assert not [a for a in actions if isinstance(a, SendHTTP)]
    assert logs(actions) == ["the state does not match the login cookie"]


def test_a_forged_or_expired_cookie_is_403() -> None:
    gw = local()
    cookie, params = login(gw)
    target = f"/cb?code=c&state={params['state']}"
    name, value = cookie.split("=", 1)
    version, payload, mac = value.split(".")
    forged_payload = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_payload["v"] = "attacker-verifier-attacker-verifier-attacker"
    forged = b64url(json.dumps(forged_payload).encode())
    cases = {
        f"{name}={version}.{forged}.{mac}": "the login cookie's signature does not match",
        f"{name}=v2.{payload}.{mac}": "the login cookie is malformed",
        f"{name}=garbage": "the login cookie is malformed",
        f"{name}={version}.{payload}.%%%": "the login cookie is malformed",
    }
    for sent_cookie, reason in cases.items():
        actions = start(gw, "GET", target, [("Cookie", sent_cookie)])[1]
        assert body(actions) == INVALID_STATE and logs(actions) == [reason], sent_cookie
    late = start(gw, "GET", target, [("Cookie", cookie)], now=NOW + 600)[1]
    assert body(late) == INVALID_STATE and logs(late) == ["the login cookie has expired"]


def test_a_cookie_from_another_client_secret_is_refused() -> None:
    cookie, params = login(local(client_secret="another-secret"))
    actions = start(local(), "GET", f"/cb?code=c&state={params['state']}", [("Cookie", cookie)])[1]
    assert body(actions) == INVALID_STATE


def test_require_state_refuses_a_callback_the_gateway_did_not_start() -> None:
    gw = local(require_state=True)
    actions = start(gw, "GET", "/cb?code=c&state=whatever")[1]
    assert body(actions) == INVALID_STATE
    assert logs(actions) == ["no login cookie, and require_state is set"]
    cookie, params = login(gw)
    rid, actions = start(gw, "GET", f"/cb?code=c&state={params['state']}", [("Cookie", cookie)])
    token = KEY.token(claims(nonce=params["nonce"]))
    assert answer(gw.handle(auth0_says(rid, 200, {"id_token": token}))).status == 200


def test_post_process_runs_after_the_token_exchange_with_the_id_token_claims() -> None:
    from sapg_core import (
        ActionFailed,
        CallService,
        FailureReason,
        ServiceResultKind,
        ServiceReturned,
        ServiceStage,
    )

    paths = [
        {
            "method": "GET",
            "path": "/cb",
            "integration": {
                "type": "auth0_callback",
                "post_process": {"type": "service_binding", "binding": "hook", "function": "f"},
            },
        }
    ]
    config = {
        "serviceBindings": [{"alias": "hook", "binding": "HOOK"}],
        "authorizer": authorizer(jwks=jwks_text(KEY)),
        "paths": paths,
    }
    gw = make_gateway(config)
    tokens = {"access_token": "a", "id_token": KEY.token(claims())}
    rid, actions = start(gw, "GET", "/cb?code=c")
    assert sent(actions).url == "https://example.auth0.com/oauth/token"
    [call] = gw.handle(auth0_says(rid, 200, tokens))
    assert isinstance(call, CallService)
    assert (call.stage, call.target, call.function) == (ServiceStage.POST_PROCESS, "HOOK", "f")
    assert json.loads(call.context.claims or "null")["sub"] == "user-1"
    done = gw.handle(ServiceReturned(request_id=rid, kind=ServiceResultKind.NONE, now=NOW + 0.3))
    assert json.loads(answer(done).body) == tokens  # the hook's value is ignored
    rid, actions = start(gw, "GET", "/cb?code=c")
    gw.handle(auth0_says(rid, 200, tokens))
    failed = ActionFailed(request_id=rid, reason=FailureReason.SERVICE_ERROR, now=NOW + 0.3)
    assert answer(gw.handle(failed)).status == 500  # the tokens are not sent


@pytest.mark.parametrize("target", ["/cb?code=c", "/login", "/userinfo", "/refresh"])
def test_auth0_integrations_without_an_auth0_authorizer_answer_500(target: str) -> None:
    gw = make_gateway({"paths": PATHS[1:]})
    headers = [bearer("t"), ("X-Refresh-Token", "rt")]
    actions = start(gw, "GET", target, headers)[1]
    assert (answer(actions).status, body(actions)) == (500, INTERNAL)
    assert "needs an auth0 authorizer" in logs(actions)[0]


def test_logs_never_hold_codes_tokens_or_secrets() -> None:
    gw = local(client_secret="s3cr3t-value")
    seen: list[object] = []
    rid, actions = start(gw, "GET", "/cb?code=code-SECRET-123")
    seen += actions
    seen += gw.handle(auth0_says(rid, 400, {"error": "invalid_grant", "error_description": "x"}))
    rid, actions = start(gw, "GET", "/cb?code=code-SECRET-123")
    seen += actions
    seen += gw.handle(auth0_says(rid, 200, {"id_token": KEY.token(claims(aud="x"))}))
    rid, actions = start(gw, "GET", "/userinfo", [bearer("access-SECRET")])
    seen += actions
    seen += gw.handle(auth0_says(rid, 401, b"access-SECRET is bad"))
    text = " ".join(logs(seen))
    assert text  # something was logged
    for secret in ("code-SECRET", "s3cr3t", "access-SECRET", "eyJ"):
        assert secret not in text


# --- auth0_userinfo (§8.9, cases 43-46) ---------------------------------------------------------


def test_43_no_token() -> None:
    response = answer(start(local(), "GET", "/userinfo")[1])
    assert (response.status, json.loads(response.body)) == (
        401,
        {"error": "Missing bearer token", "code": "missing_access_token"},
    )


def test_44_userinfo() -> None:
    gw = local()
    rid, actions = start(gw, "GET", "/userinfo", [bearer("my-access-token")])
    assert sent(actions) == SendHTTP(
        request_id=rid,
        method="GET",
        url=f"{ISSUER}userinfo",
        headers=(("authorization", "Bearer my-access-token"),),
        timeout=10.0,
    )
    info = {"sub": "user-1", "email": "test@example.com"}
    response = answer(gw.handle(auth0_says(rid, 200, info)))
    assert (response.status, response.body) == (
        200,
        b'{"sub":"user-1","email":"test@example.com"}',
    )
    assert header(response, "content-type") == "application/json"


def test_45_x_access_token_wins() -> None:
    _, actions = start(local(), "GET", "/userinfo", [("X-Access-Token", "xat"), bearer("other")])
    assert sent(actions).headers == (("authorization", "Bearer xat"),)


@pytest.mark.parametrize(
    ("outcome", "status", "expected"),
    [
        (
            dict(status=403, payload=b"forbidden text"),
            403,
            {"error": "Auth0 userinfo failed", "code": "AUTH0_UPSTREAM_ERROR"},
        ),
        (None, 502, {"error": "Auth0 userinfo request failed", "code": "AUTH0_NETWORK_ERROR"}),
        (
            dict(status=200, payload=b"not json"),
            500,
            {"error": "Internal Server Error", "code": "AUTH0_ERROR"},
        ),
    ],
)
def test_46_userinfo_failures(
    outcome: dict[str, object] | None, status: int, expected: object
) -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/userinfo", [bearer("t")])
    if outcome is None:
        event: object = ActionFailed(request_id=rid, reason=FailureReason.CONNECT, now=NOW)
    else:
        event = auth0_says(rid, outcome["status"], outcome["payload"])  # type: ignore[arg-type]
    response = answer(gw.handle(event))  # type: ignore[arg-type]
    assert (response.status, json.loads(response.body)) == (status, expected)


def test_userinfo_behind_auth_checks_the_route_token_first() -> None:
    paths = [
        {"method": "GET", "path": "/me", "auth": True, "integration": {"type": "auth0_userinfo"}}
    ]
    gw = local(paths=paths)
    assert body(start(gw, "GET", "/me", [("X-Access-Token", "xat")])[1]) == NO_TOKEN
    headers = [bearer(KEY.token(claims())), ("X-Access-Token", "xat")]
    assert sent(start(gw, "GET", "/me", headers)[1]).headers == (("authorization", "Bearer xat"),)


# --- auth0_refresh (§8.10, cases 50-54) ---------------------------------------------------------

MISSING_REFRESH = {"error": "Missing refresh token", "code": "missing_refresh_token"}


def test_50_no_refresh_token() -> None:
    gw = local()
    actions = start(gw, "GET", "/refresh")[1]
    assert (answer(actions).status, body(actions)) == (400, MISSING_REFRESH)
    for raw in (b"{}", b"not-json", b"", b'{"refresh_token": 7}'):
        rid, actions = start(gw, "POST", "/refresh")
        assert actions == [ReadBody(request_id=rid, limit=10 * 1024 * 1024)]
        done = gw.handle(BodyReceived(request_id=rid, body=raw, now=NOW))
        assert (answer(done).status, body(done)) == (400, MISSING_REFRESH)


def test_51_a_refresh_token_but_no_bearer() -> None:
    actions = start(local(), "GET", "/refresh", [("X-Refresh-Token", "rt")])[1]
    assert (answer(actions).status, body(actions)) == (401, NO_TOKEN)


def expired_token(**changes: object) -> str:
    return KEY.token(claims(exp=T - 10, **changes))


def test_52_an_expired_token_is_refreshed() -> None:
    gw = local()
    rid, actions = start(
        gw, "GET", "/refresh", [("X-Refresh-Token", "rt"), bearer(expired_token())]
    )
    assert sent(actions) == SendHTTP(
        request_id=rid,
        method="POST",
        url=TOKEN_URL,
        headers=FORM,
        body=b"grant_type=refresh_token&client_id=cid&client_secret=secret&refresh_token=rt",
        timeout=10.0,
    )
    tokens = {"access_token": "new-at", "id_token": "new-id", "refresh_token": "new-rt"}
    response = answer(gw.handle(auth0_says(rid, 200, tokens)))
    assert (response.status, json.loads(response.body)) == (200, tokens)


def test_52_the_refresh_token_may_come_in_a_post_body() -> None:
    gw = local()
    rid, _ = start(gw, "POST", "/refresh", [bearer(expired_token())])
    done = gw.handle(BodyReceived(request_id=rid, body=b'{"refresh_token":"from body"}', now=NOW))
    assert sent(done).body.endswith(b"&refresh_token=from+body")


def test_53_a_valid_token_is_not_refreshed() -> None:
    actions = start(
        local(), "GET", "/refresh", [("X-Refresh-Token", "rt"), bearer(KEY.token(claims()))]
    )[1]
    assert not [a for a in actions if isinstance(a, SendHTTP)]
    assert (answer(actions).status, body(actions)) == (
        200,
        {"message": "Token is still valid", "code": "token_still_valid"},
    )


def test_54_auth0_refuses_the_refresh() -> None:
    gw = local()
    rid, _ = start(gw, "GET", "/refresh", [("X-Refresh-Token", "rt"), bearer(expired_token())])
    response = answer(gw.handle(auth0_says(rid, 403, {"error": "invalid_grant"})))
    assert (response.status, json.loads(response.body)) == (
        403,
        {"error": "Auth0 refresh token failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )


def test_refresh_network_failure_and_non_json() -> None:
    gw = local()
    headers = [("X-Refresh-Token", "rt"), bearer(expired_token())]
    rid, _ = start(gw, "GET", "/refresh", headers)
    failure = ActionFailed(request_id=rid, reason=FailureReason.TIMEOUT, now=NOW)
    assert body(gw.handle(failure)) == {
        "error": "Auth0 refresh token request failed",
        "code": "AUTH0_NETWORK_ERROR",
    }
    rid, _ = start(gw, "GET", "/refresh", headers)
    assert body(gw.handle(auth0_says(rid, 200, b"nope"))) == {
        "error": "Internal Server Error",
        "code": "AUTH0_ERROR",
    }


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (expired_token(iss="https://other/"), CLAIM_FAILED),  # issuer reported before expiry
        ("not-a-jwt", {"error": "Invalid JWS", "code": "ERR_JWS_INVALID"}),
    ],
)
def test_other_auth_errors_are_answered_not_refreshed(token: str, expected: object) -> None:
    actions = start(local(), "GET", "/refresh", [("X-Refresh-Token", "rt"), bearer(token)])[1]
    assert not [a for a in actions if isinstance(a, SendHTTP)]
    assert (answer(actions).status, body(actions)) == (401, expected)


def test_refresh_ignores_the_route_audience_as_the_original() -> None:
    gw = local(audience="https://api.example.com")
    headers = [("X-Refresh-Token", "rt"), bearer(KEY.token(claims(aud="cid")))]
    assert body(start(gw, "GET", "/refresh", headers)[1])["code"] == "token_still_valid"  # type: ignore[index]


def test_refresh_config_errors_keep_their_answer() -> None:
    gw = gateway(jwks="{bad", paths=PATHS)
    headers = [("X-Refresh-Token", "rt"), bearer("x")]
    actions = start(gw, "GET", "/refresh", headers)[1]
    assert answer(actions).status == 500
    assert body(actions) == {
        "error": "JWKS configuration is not valid JSON.",
        "code": "AUTH_CONFIG_ERROR",
    }
