"""Issue 9, the core's part: mapped headers are the gateway's, absurd token dates, log levels.

Each test here failed on the code before the fix it pins (see the commit messages).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math

import pytest

from sapg_core import (
    Action,
    ActionFailed,
    FailureReason,
    ForwardUpstream,
    HTTPResponseReceived,
    Log,
    LogLevel,
    SendHTTP,
)
from sapg_core._errors import AuthError
from sapg_core._jwt import validate_claims
from sapg_core._supabase import _check_claims, verify_hs256
from tests.core.auth0_keys import SigningKey, b64url, ec_key, jwks_text
from tests.core.helpers import NOW, final, hs_token, make_gateway, receive

SECRET = "test-secret"
ISSUER = "https://issuer.test"
CLAIMS: dict[str, object] = {"iss": ISSUER, "aud": "api", "sub": "user-1", "exp": NOW + 7200}


def _bearer(claims: dict[str, object]) -> tuple[str, str]:
    return ("authorization", f"Bearer {hs_token(claims, SECRET)}")


def _mapped_config(mapping: dict[str, object], *, auth: bool = True) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": "https://upstream.example.com/base"}],
        "authorizer": {
            "type": "jwt",
            "secret": SECRET,
            "algorithm": "HS256",
            "issuer": ISSUER,
            "audience": "api",
        },
        "paths": [
            {
                "method": "ANY",
                "path": "/api/{.+}",
                "auth": auth,
                "integration": {"type": "http_proxy", "server": "up"},
                "mapping": mapping,
            }
        ],
    }


def _forwarded(
    config: dict[str, object], target: str, headers: list[tuple[str, str]]
) -> ForwardUpstream:
    _, actions = receive(make_gateway(config), "GET", target, headers)
    [action] = actions
    assert isinstance(action, ForwardUpstream), actions
    return action


def _values(action: ForwardUpstream, name: str) -> list[str]:
    return [value for key, value in action.headers if key == name]


# -- item 1: a header or parameter a mapping names is the gateway's --------------------------


ROLE_MAPPING = {"headers": {"X-Role": "$request.jwt.role", "x-user": "$request.jwt.sub"}}


def test_a_token_without_the_mapped_claim_does_not_let_the_clients_header_through() -> None:
    claims = {k: v for k, v in CLAIMS.items() if k != "sub"}
    action = _forwarded(
        _mapped_config(ROLE_MAPPING),
        "/api/orders",
        [_bearer(claims), ("x-role", "admin"), ("X-User", "root"), ("x-other", "kept")],
    )
    assert _values(action, "x-role") == []
    assert _values(action, "x-user") == []
    assert _values(action, "x-other") == ["kept"]


def test_a_null_claim_does_not_let_the_clients_header_through() -> None:
    action = _forwarded(
        _mapped_config(ROLE_MAPPING),
        "/api/orders",
        [_bearer({**CLAIMS, "sub": None, "role": None}), ("x-role", "admin"), ("x-user", "a")],
    )
    assert _values(action, "x-role") == []
    assert _values(action, "x-user") == []


def test_a_resolved_claim_replaces_every_value_the_client_sent() -> None:
    action = _forwarded(
        _mapped_config(ROLE_MAPPING),
        "/api/orders",
        [_bearer({**CLAIMS, "role": "reader"}), ("x-role", "admin"), ("x-role", "root")],
    )
    assert _values(action, "x-role") == ["reader"]
    assert _values(action, "x-user") == ["user-1"]


def test_a_mapped_query_parameter_is_the_gateways_too() -> None:
    mapping = {"query": {"user": "$request.jwt.role", "tenant": "$request.jwt.tenant"}}
    action = _forwarded(
        _mapped_config(mapping),
        "/api/orders?user=admin&x=1&user=root&tenant=other",
        [_bearer({**CLAIMS, "tenant": "t1"})],
    )
    assert action.url == "https://upstream.example.com/base/orders?x=1&tenant=t1"


def test_a_route_without_auth_still_drops_the_clients_mapped_header() -> None:
    # No claims at all (auth off): the template resolves to nothing, the header still goes.
    action = _forwarded(_mapped_config(ROLE_MAPPING, auth=False), "/api/x", [("x-role", "admin")])
    assert _values(action, "x-role") == []


def test_a_mapping_may_still_pass_the_clients_own_header_on_explicitly() -> None:
    # Sources are the request as it arrived, so "X-Trace: $request.header.X-Trace" keeps working.
    mapping = {"headers": {"X-Trace": "$request.header.x-trace"}}
    action = _forwarded(_mapped_config(mapping, auth=False), "/api/x", [("x-trace", "abc")])
    assert _values(action, "x-trace") == ["abc"]


@pytest.mark.parametrize("control", ["\x01", "\x08", "\x0b", "\x1b", "\x1f", "\x7f", "\r", "\x00"])
def test_a_mapped_value_with_a_control_character_is_refused(control: str) -> None:
    _, actions = receive(
        make_gateway(_mapped_config(ROLE_MAPPING)),
        "GET",
        "/api/x",
        [_bearer({**CLAIMS, "role": f"reader{control}admin"})],
    )
    answer = final(actions)
    assert not any(isinstance(a, ForwardUpstream) for a in actions)
    assert (answer.status, answer.body) == (500, b'{"message":"Internal server error"}')
    [log] = [a for a in actions if isinstance(a, Log)]
    assert "x-role" in log.message and control not in log.message
    assert log.level is LogLevel.WARNING


def test_a_mapped_value_may_hold_a_tab_and_obs_text() -> None:
    action = _forwarded(
        _mapped_config(ROLE_MAPPING), "/api/x", [_bearer({**CLAIMS, "role": "a\tb\xe9"})]
    )
    assert _values(action, "x-role") == ["a\tb\xe9"]


# -- item 8: absurd numeric dates are invalid tokens -----------------------------------------

ABSURD = [math.inf, -math.inf, math.nan, True, False, 1e300, -1e300, 10**30]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ABSURD, ids=repr)
def test_validate_claims_refuses_absurd_dates(claim: str, value: object) -> None:
    with pytest.raises(AuthError) as raised:
        validate_claims({claim: value}, issuer=None, audience=None, now=NOW)
    assert raised.value.code == "ERR_JWT_CLAIM_VALIDATION_FAILED"
    assert raised.value.status == 401


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(payload_json: str) -> str:
    """A signed HS256 token whose payload is exactly ``payload_json`` (1e400 survives)."""
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    signing = f"{header}.{_b64(payload_json.encode())}"
    mac = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(mac)}"


JWT_ROUTE = {
    "authorizer": {
        "type": "jwt",
        "secret": SECRET,
        "algorithm": "HS256",
        "issuer": ISSUER,
        "audience": "api",
    },
    "paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}],
}


@pytest.mark.parametrize(
    "dates",
    ['"exp":1e400', '"exp":-1e400,"nbf":0', '"nbf":-1e400', '"iat":1e400', '"exp":1e20'],
)
def test_the_jwt_authorizer_answers_401_for_a_token_that_would_never_expire(dates: str) -> None:
    token = _raw_token(f'{{"iss":"{ISSUER}","aud":"api","sub":"u",{dates}}}')
    _, actions = receive(
        make_gateway(JWT_ROUTE), "GET", "/private", [("authorization", f"Bearer {token}")]
    )
    answer = final(actions)
    assert answer.status == 401
    assert answer.body == (
        b'{"error":"JWT claim validation failed","code":"ERR_JWT_CLAIM_VALIDATION_FAILED"}'
    )


def test_sane_dates_still_pass() -> None:
    token = _raw_token(f'{{"iss":"{ISSUER}","aud":"api","exp":9999999999,"nbf":0,"iat":1.5e9}}')
    _, actions = receive(
        make_gateway(JWT_ROUTE), "GET", "/private", [("authorization", f"Bearer {token}")]
    )
    assert final(actions).status == 200


def _as_json(value: object) -> str:
    """JSON text for ``value``; infinities as ``1e400`` (how they arrive in a real token)."""
    if isinstance(value, float) and math.isinf(value):
        return "1e400" if value > 0 else "-1e400"
    return json.dumps(value)


@pytest.mark.parametrize(
    ("claim", "message"),
    [("exp", "invalid exp value"), ("nbf", "invalid nbf value"), ("iat", "invalid iat value")],
)
@pytest.mark.parametrize("value", ABSURD, ids=repr)
def test_the_supabase_authorizer_refuses_absurd_dates(
    claim: str, message: str, value: object
) -> None:
    with pytest.raises(AuthError) as raised:
        if value != value:  # NaN cannot be written as JSON: check the claims step directly
            _check_claims({claim: value}, issuer=None, audience=None, now=NOW)
        else:
            token = _raw_token(f'{{"aud":"authenticated","{claim}":{_as_json(value)}}}')
            verify_hs256(token, secret=SECRET, issuer=None, audience="authenticated", now=NOW)
    assert (raised.value.status, raised.value.code) == (401, "JWT_INVALID")
    assert raised.value.message == f"JWT verification failed: {message}"


def test_the_supabase_authorizer_answers_401_for_exp_1e400() -> None:
    config = {
        "authorizer": {
            "type": "supabase",
            "jwt_secret": SECRET,
            "issuer": ISSUER,
            "audience": "authenticated",
        },
        "paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}],
    }
    token = _raw_token(f'{{"iss":"{ISSUER}","aud":"authenticated","exp":1e400}}')
    _, actions = receive(
        make_gateway(config), "GET", "/private", [("authorization", f"Bearer {token}")]
    )
    answer = final(actions)
    assert answer.status == 401
    assert (
        answer.body
        == b'{"error":"JWT verification failed: invalid exp value","code":"JWT_INVALID"}'
    )


AUTH0_DOMAIN = "example.auth0.com"


def _auth0_token(key: SigningKey, payload_json: str) -> str:
    head = b64url(json.dumps({"alg": key.alg, "typ": "JWT", "kid": key.kid}).encode())
    signing_input = f"{head}.{b64url(payload_json.encode())}"
    return f"{signing_input}.{b64url(key.sign_bytes(signing_input.encode()))}"


@pytest.mark.parametrize(
    "dates", ['"exp":1e400', '"nbf":-1e400', '"iat":1e400', '"exp":true', '"exp":1e13']
)
def test_the_auth0_authorizer_answers_401_for_absurd_dates(dates: str) -> None:
    key = ec_key()
    config = {
        "authorizer": {
            "type": "auth0",
            "domain": AUTH0_DOMAIN,
            "client_id": "cid",
            "client_secret": "secret",
            "redirect_uri": "https://api.example.com/callback",
            "scope": "openid",
            "jwks": jwks_text(key),
        },
        "paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}],
    }
    gateway = make_gateway(config)
    good = _auth0_token(key, f'{{"iss":"https://{AUTH0_DOMAIN}/","exp":{int(NOW) + 60}}}')
    _, actions = receive(gateway, "GET", "/private", [("authorization", f"Bearer {good}")])
    assert final(actions).status == 200
    token = _auth0_token(key, f'{{"iss":"https://{AUTH0_DOMAIN}/",{dates}}}')
    _, actions = receive(gateway, "GET", "/private", [("authorization", f"Bearer {token}")])
    answer = final(actions)
    assert answer.status == 401
    assert answer.body == (
        b'{"error":"JWT claim validation failed","code":"ERR_JWT_CLAIM_VALIDATION_FAILED"}'
    )


# -- item 9: log levels that mean something ---------------------------------------------------


def _levels(actions: list[Action]) -> list[LogLevel]:
    return [action.level for action in actions if isinstance(action, Log)]


def test_a_client_with_a_bad_token_is_logged_at_info_not_error() -> None:
    gateway = make_gateway(JWT_ROUTE)
    wrong = hs_token({**CLAIMS, "iss": "https://elsewhere.test"}, SECRET)
    expired = hs_token({**CLAIMS, "exp": NOW - 1}, SECRET)
    forged = hs_token(CLAIMS, "another-secret")
    levels: list[LogLevel] = []
    for token in (wrong, expired, forged, "not-a-jwt"):
        _, actions = receive(gateway, "GET", "/private", [("authorization", f"Bearer {token}")])
        assert final(actions).status == 401
        levels += _levels(actions)
    assert levels and set(levels) == {LogLevel.INFO}


def test_an_unreachable_upstream_is_a_warning() -> None:
    gateway = make_gateway(_mapped_config({}, auth=False))
    request_id, actions = receive(gateway, "GET", "/api/x")
    assert isinstance(actions[0], ForwardUpstream)
    failed = ActionFailed(
        request_id=request_id, reason=FailureReason.CONNECT, detail="refused", now=NOW
    )
    actions = gateway.handle(failed)
    assert final(actions).status == 502
    assert _levels(actions) == [LogLevel.WARNING]


def test_a_client_body_that_breaks_off_is_info() -> None:
    gateway = make_gateway(_mapped_config({}, auth=False))
    request_id, _ = receive(gateway, "GET", "/api/x")
    failed = ActionFailed(request_id=request_id, reason=FailureReason.CLIENT, now=NOW)
    actions = gateway.handle(failed)
    assert final(actions).status == 400
    assert _levels(actions) == [LogLevel.INFO]


def test_a_route_the_config_left_broken_is_an_error() -> None:
    gateway = make_gateway(
        {"paths": [{"method": "GET", "path": "/p", "auth": True, "response": {"ok": True}}]}
    )
    _, actions = receive(gateway, "GET", "/p")
    assert final(actions).status == 500
    assert _levels(actions) == [LogLevel.ERROR]


def test_a_jwks_that_cannot_be_fetched_is_a_provider_warning() -> None:
    config = {
        "authorizer": {
            "type": "auth0",
            "domain": AUTH0_DOMAIN,
            "client_id": "cid",
            "client_secret": "secret",
            "redirect_uri": "https://api.example.com/callback",
            "scope": "openid",
            "jwks_uri": f"https://{AUTH0_DOMAIN}/.well-known/jwks.json",
        },
        "paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}],
    }
    gateway = make_gateway(config)
    token = _auth0_token(ec_key(), f'{{"iss":"https://{AUTH0_DOMAIN}/"}}')
    request_id, actions = receive(
        gateway, "GET", "/private", [("authorization", f"Bearer {token}")]
    )
    assert isinstance(actions[-1], SendHTTP)
    answered = HTTPResponseReceived(
        request_id=request_id, status=503, headers=(), body=b"", now=NOW
    )
    actions = gateway.handle(answered)
    assert final(actions).status == 401
    assert _levels(actions) == [LogLevel.WARNING]


@pytest.mark.parametrize(
    ("status", "level"),
    [(403, LogLevel.INFO), (400, LogLevel.INFO), (500, LogLevel.WARNING), (503, LogLevel.WARNING)],
)
def test_gotrue_refusing_the_input_is_info_and_gotrue_failing_is_a_warning(
    status: int, level: LogLevel
) -> None:
    from tests.core.test_supabase import gateway, gotrue_says, post

    gw = gateway()
    rid, _ = post(gw, "/auth/verify", b'{"email":"test@example.com","token":"123456"}')
    actions = gw.handle(gotrue_says(rid, status, {"msg": "no"}))
    assert final(actions).status == 401
    assert _levels(actions) == [level]


def test_a_service_that_times_out_is_a_warning_and_one_that_raises_is_an_error() -> None:
    config = {
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": [
            {
                "method": "GET",
                "path": "/s",
                "integration": {"type": "service_binding", "binding": "b", "function": "f"},
            }
        ],
    }
    gateway = make_gateway(config)
    for reason, level in (
        (FailureReason.TIMEOUT, LogLevel.WARNING),
        (FailureReason.SERVICE_ERROR, LogLevel.ERROR),
    ):
        request_id, actions = receive(gateway, "GET", "/s")
        assert type(actions[-1]).__name__ == "CallService"
        answer = gateway.handle(ActionFailed(request_id=request_id, reason=reason, now=NOW))
        assert _levels(answer) == [level], reason


def test_a_header_spelt_with_underscores_is_the_gateways_too() -> None:
    # CGI/WSGI/PHP upstreams read X_Role and X-Role as one HTTP_X_ROLE.
    action = _forwarded(
        _mapped_config(ROLE_MAPPING),
        "/api/x",
        [_bearer({**CLAIMS, "role": "reader"}), ("x_role", "admin"), ("x_other", "kept")],
    )
    assert _values(action, "x-role") == ["reader"]
    assert _values(action, "x_role") == []
    assert _values(action, "x_other") == ["kept"]


def test_a_mapped_query_parameter_with_an_escaped_name_is_dropped_too() -> None:
    mapping = {"query": {"user": "$request.jwt.role"}}
    action = _forwarded(_mapped_config(mapping), "/api/orders?us%65r=admin&x=1", [_bearer(CLAIMS)])
    assert action.url == "https://upstream.example.com/base/orders?x=1"
