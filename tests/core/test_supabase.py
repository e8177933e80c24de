"""Supabase in the core: the authorizer's jsonwebtoken answers and the passwordless flows.

Cases 55-67 of UPSTREAM.md §13.5 (65 and the email-OTP error path with sapg's documented
differences), every GoTrue call checked byte for byte, and the new ``jwks_uri``. No sockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence

import pytest

from sapg_core import (
    Action,
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
from sapg_core._supabase import signup_password, verify_hs256

from .auth0_keys import ec_key, jwks, rsa_key
from .helpers import NOW, body_json, final, header, hs_token, make_gateway

ENV = {"SUPABASE_URL": "https://proj.supabase.test", "SUPABASE_SERVICE_ROLE_KEY": "service-key"}
GOTRUE = "https://proj.supabase.test/auth/v1"
GOTRUE_HEADERS = (
    ("apikey", "service-key"),
    ("authorization", "Bearer service-key"),
    ("x-client-info", "sapg"),
    ("x-supabase-api-version", "2024-01-01"),
    ("content-type", "application/json;charset=UTF-8"),
)
ENTROPY = bytes(range(32))
_ids = iter(range(1, 1_000_000))

PATHS = [
    {"method": "POST", "path": "/auth/otp", "integration": {"type": "supabase_passwordless_auth"}},
    {
        "method": "POST",
        "path": "/auth/verify",
        "integration": {"type": "supabase_passwordless_verify"},
    },
    {
        "method": "POST",
        "path": "/auth/otp-alt",
        "integration": {"type": "supabase_passwordless_auth_alt"},
    },
]


def gateway(env: Mapping[str, str] | None = ENV) -> Gateway:
    from sapg_core import compile_config

    result = compile_config({"paths": PATHS}, env={})
    return Gateway(result.config, env=env)


def post(
    gw: Gateway, path: str, body: bytes, *, entropy: bytes = ENTROPY
) -> tuple[int, list[Action]]:
    """POST ``body``; returns the request id and the actions after the body was fed."""
    rid = next(_ids)
    headers = (("content-length", str(len(body))), ("content-type", "application/json"))
    event = RequestReceived(
        request_id=rid, method="POST", target=path, headers=headers, now=NOW, entropy=entropy
    )
    assert gw.handle(event) == [ReadBody(request_id=rid, limit=gw.max_body_bytes)]
    return rid, gw.handle(BodyReceived(request_id=rid, body=body, now=NOW))


def call_of(actions: list[Action]) -> SendHTTP:
    assert len(actions) == 1 and isinstance(actions[0], SendHTTP), actions
    return actions[0]


def gotrue_says(
    rid: int, status: int, payload: object, headers: Sequence[tuple[str, str]] = ()
) -> HTTPResponseReceived:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return HTTPResponseReceived(
        request_id=rid,
        status=status,
        headers=(("content-type", "application/json"), *headers),
        body=body,
        now=NOW + 0.1,
    )


def answer_of(actions: list[Action]) -> Respond:
    answer = final(actions)
    assert isinstance(answer, Respond), answer
    assert header(answer, "content-type") == "application/json"
    assert header(answer, "x-powered-by") == "sapg"
    return answer


def outcome(actions: list[Action]) -> tuple[int, object]:
    answer = answer_of(actions)
    return answer.status, body_json(answer)


# --- §13.5 cases 55-58: validation before the environment ---------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/auth/otp", b"{}", {"error": "Missing email or phone", "code": "missing_email_or_phone"}),
        ("/auth/otp", b'{"email":"","phone":0}', None),
        ("/auth/otp", b"[]", None),
        ("/auth/otp", b'"text"', None),
        (
            "/auth/verify",
            b'{"email":"test@example.com"}',
            {"error": "Missing token, email, or phone", "code": "missing_token_or_contact"},
        ),
        ("/auth/verify", b'{"token":"123456"}', None),
        (
            "/auth/otp-alt",
            b"{}",
            {
                "error": "Missing email - alternative method only supports email",
                "code": "missing_email",
            },
        ),
        ("/auth/otp-alt", b'{"phone":"+1"}', None),
    ],
)
def test_cases_55_56_57_missing_fields_are_400_even_without_env(
    path: str, body: bytes, expected: object
) -> None:
    _, actions = post(gateway(env={}), path, body)
    status, payload = outcome(actions)
    assert status == 400
    if expected is not None:
        assert payload == expected
    else:
        assert isinstance(payload, dict) and payload["code"].startswith("missing_")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"SUPABASE_URL": "https://x.test"},
        {"SUPABASE_SERVICE_ROLE_KEY": "k"},
        {"SUPABASE_URL": "", "SUPABASE_SERVICE_ROLE_KEY": "k"},
    ],
)
@pytest.mark.parametrize("path", ["/auth/otp", "/auth/verify", "/auth/otp-alt"])
def test_case_58_missing_env_is_500(env: dict[str, str], path: str) -> None:
    body = b'{"email":"a@b.c","token":"1"}'
    _, actions = post(gateway(env=env), path, body)
    assert outcome(actions) == (
        500,
        {"error": "Supabase environment is not configured.", "code": "SUPABASE_ENV_MISSING"},
    )


def test_an_unusable_supabase_url_is_a_500_like_client_creation() -> None:
    _, actions = post(
        gateway(env={**ENV, "SUPABASE_URL": "ftp://x"}), "/auth/otp", b'{"email":"a"}'
    )
    assert outcome(actions) == (500, {"message": "Internal server error"})


# --- case 59-62: OTP ------------------------------------------------------------------------------


def test_case_59_email_otp_is_one_gotrue_call_and_the_original_answer() -> None:
    gw = gateway()
    rid, actions = post(gw, "/auth/otp", b'{"email":"test@example.com","phone":"+1"}')
    call = call_of(actions)
    assert (call.method, call.url) == ("POST", f"{GOTRUE}/otp")
    assert call.headers == GOTRUE_HEADERS
    assert call.body == (
        b'{"email":"test@example.com","data":{},"create_user":true,"gotrue_meta_security":{},'
        b'"code_challenge":null,"code_challenge_method":null}'
    )
    answer = answer_of(gw.handle(gotrue_says(rid, 200, {})))
    assert answer.status == 200
    assert answer.body == (
        b'{"message":"Email OTP sent successfully","note":"Check your email for a 6-digit '
        b'verification code (not a link)","debug":"If you received a magic link, check your '
        b'Supabase project Auth settings"}'
    )


@pytest.mark.parametrize(
    ("status", "payload", "expected_status", "message"),
    [
        (400, {"code": "validation_failed", "msg": "bad email"}, 400, "bad email"),
        (
            429,
            {"error_code": "over_email_send_rate_limit", "msg": "rate limited"},
            400,
            "rate limited",
        ),
        (422, {"message": "m"}, 400, "m"),
        (400, {"error_description": "d", "error": "e"}, 400, "d"),
        (400, {"error": "e"}, 400, "e"),
        (400, {"other": 1}, 400, '{"other":1}'),
        (400, ["x"], 400, '["x"]'),
        (500, {"msg": "database down"}, 502, "database down"),
        (503, {"msg": "ignored"}, 502, "{}"),
        (400, b"<html>", 502, None),
        (200, b"not json", 502, None),
    ],
)
def test_cases_60_61_email_otp_errors_are_reported_without_the_admin_fallback(
    status: int, payload: object, expected_status: int, message: str | None
) -> None:
    # Deliberate difference: no POST to /admin/generate_link (which sends no mail).
    gw = gateway()
    rid, _ = post(gw, "/auth/otp", b'{"email":"test@example.com"}')
    actions = gw.handle(gotrue_says(rid, status, payload))
    assert not any(isinstance(a, SendHTTP) for a in actions)
    got_status, body = outcome(actions)
    assert got_status == expected_status
    assert isinstance(body, dict) and body["code"] == "SUPABASE_OTP_SEND_FAILED"
    prefix = "Failed to send OTP: Supabase OTP Error: "
    assert body["error"].startswith(prefix)
    if message is not None:
        assert body["error"] == prefix + message
    else:
        assert "is not valid JSON" in body["error"]
    assert any(isinstance(a, Log) for a in actions)  # the operator learns the status


def test_email_otp_when_gotrue_cannot_be_reached() -> None:
    gw = gateway()
    rid, _ = post(gw, "/auth/otp", b'{"email":"test@example.com"}')
    failed = ActionFailed(request_id=rid, reason=FailureReason.CONNECT, detail="refused", now=NOW)
    actions = gw.handle(failed)
    assert outcome(actions) == (
        502,
        {
            "error": "Failed to send OTP: Supabase OTP Error: fetch failed",
            "code": "SUPABASE_OTP_SEND_FAILED",
        },
    )
    [log] = [a for a in actions if isinstance(a, Log)]
    assert "connect: refused" in log.message and "service-key" not in log.message


def test_case_62_phone_otp() -> None:
    gw = gateway()
    rid, actions = post(gw, "/auth/otp", b'{"phone":"+12025550100"}')
    call = call_of(actions)
    assert call.url == f"{GOTRUE}/otp"
    assert call.body == (
        b'{"phone":"+12025550100","data":{},"create_user":true,"gotrue_meta_security":{},'
        b'"channel":"sms"}'
    )
    assert outcome(gw.handle(gotrue_says(rid, 400, {"msg": "invalid phone"}))) == (
        400,
        {"error": "Phone OTP Error: invalid phone", "code": "SUPABASE_OTP_SEND_FAILED"},
    )
    rid, _ = post(gw, "/auth/otp", b'{"phone":"+12025550100"}')
    assert outcome(gw.handle(gotrue_says(rid, 200, {"message_id": "m-1"}))) == (
        200,
        {
            "message": "SMS OTP sent successfully",
            "note": "Check your phone for a 6-digit verification code",
        },
    )
    rid, _ = post(gw, "/auth/otp", b'{"phone":"+1"}')
    failed = ActionFailed(request_id=rid, reason=FailureReason.TIMEOUT, now=NOW)
    assert outcome(gw.handle(failed)) == (
        400,
        {"error": "Phone OTP Error: fetch failed", "code": "SUPABASE_OTP_SEND_FAILED"},
    )
    rid, _ = post(gw, "/auth/otp", b'{"phone":"+1"}')
    assert outcome(gw.handle(gotrue_says(rid, 400, None)))[0] == 500  # supabase-js throws


# --- case 63: verify ------------------------------------------------------------------------------


def test_case_63_verify_errors_are_401() -> None:
    gw = gateway()
    rid, actions = post(gw, "/auth/verify", b'{"email":"test@example.com","token":"123456"}')
    call = call_of(actions)
    assert (call.url, call.headers) == (f"{GOTRUE}/verify", GOTRUE_HEADERS)
    assert call.body == (
        b'{"email":"test@example.com","token":"123456","type":"email","gotrue_meta_security":{}}'
    )
    assert outcome(gw.handle(gotrue_says(rid, 403, {"msg": "token mismatch"}))) == (
        401,
        {"error": "OTP Verification Error: token mismatch", "code": "SUPABASE_OTP_VERIFY_FAILED"},
    )


def test_verify_by_phone_answers_gotrues_session() -> None:
    gw = gateway()
    rid, actions = post(gw, "/auth/verify", b'{"phone":"+1555","token":"42"}')
    assert call_of(actions).body == (
        b'{"phone":"+1555","token":"42","type":"sms","gotrue_meta_security":{}}'
    )
    session = {
        "access_token": "at",
        "token_type": "bearer",
        "expires_in": 3600,
        "refresh_token": "rt",
        "user": {"id": "u-1"},
    }
    status, body = outcome(gw.handle(gotrue_says(rid, 200, session)))
    assert status == 200
    # supabase-js adds expires_at = round(now) + expires_in when GoTrue leaves it out.
    assert body == {**session, "expires_at": round(NOW + 0.1) + 3600}
    assert list(body) == [*session, "expires_at"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"user": {"id": "u"}}, None),
        ({"access_token": "a", "refresh_token": "r", "expires_in": 60, "expires_at": 5}, None),
    ],
)
def test_verify_without_a_full_session_answers_null_or_keeps_expires_at(
    payload: object, expected: object
) -> None:
    gw = gateway()
    rid, _ = post(gw, "/auth/verify", b'{"email":"a@b.c","token":"1"}')
    status, body = outcome(gw.handle(gotrue_says(rid, 200, payload)))
    assert status == 200
    assert body == (payload if "access_token" in payload else expected)  # type: ignore[operator]


def test_verify_with_a_null_answer_is_a_500() -> None:
    gw = gateway()
    rid, _ = post(gw, "/auth/verify", b'{"email":"a@b.c","token":"1"}')
    assert outcome(gw.handle(gotrue_says(rid, 200, None))) == (
        500,
        {"message": "Internal server error"},
    )


# --- case 64: the alternative method --------------------------------------------------------------

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_case_64_signup_creates_the_account_with_a_random_password() -> None:
    gw = gateway()
    rid, actions = post(gw, "/auth/otp-alt", b'{"email":"x@y.z"}')
    call = call_of(actions)
    assert call.url == f"{GOTRUE}/signup"
    sent = json.loads(call.body)
    assert list(sent) == [
        "email",
        "password",
        "data",
        "gotrue_meta_security",
        "code_challenge",
        "code_challenge_method",
    ]
    assert sent["email"] == "x@y.z" and sent["data"] == {"otp_only": True}
    assert sent["code_challenge"] is None and sent["gotrue_meta_security"] == {}
    assert UUID4.fullmatch(sent["password"])
    assert sent["password"] == signup_password(ENTROPY)
    alt_ok = {
        "message": "Alternative OTP method attempted",
        "note": "Check your email for verification code",
    }
    assert outcome(gw.handle(gotrue_says(rid, 422, {"msg": "User already registered"}))) == (
        200,
        alt_ok,
    )
    rid, _ = post(gw, "/auth/otp-alt", b'{"email":"x@y.z"}')
    assert outcome(gw.handle(gotrue_says(rid, 429, {"msg": "rate limit exceeded"}))) == (
        400,
        {"error": "rate limit exceeded", "code": "SUPABASE_OTP_ALT_FAILED"},
    )
    rid, _ = post(gw, "/auth/otp-alt", b'{"email":"x@y.z"}')
    assert outcome(gw.handle(gotrue_says(rid, 200, {"id": "u"}))) == (200, alt_ok)
    rid, _ = post(gw, "/auth/otp-alt", b'{"email":"x@y.z"}')
    assert outcome(gw.handle(gotrue_says(rid, 200, None))) == (
        502,
        {
            "error": "Alternative OTP method failed: Cannot read properties of null "
            "(reading 'access_token')",
            "code": "SUPABASE_OTP_ALT_FAILED",
        },
    )


def test_passwords_differ_per_request_and_need_entropy() -> None:
    assert signup_password(bytes(32)) != signup_password(bytes([1]) * 32)
    gw = gateway()
    _, actions = post(gw, "/auth/otp-alt", b'{"email":"x@y.z"}', entropy=b"short")
    assert outcome(actions) == (500, {"message": "Internal server error"})


# --- case 65: bodies that are not JSON ------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json", b"", b"null", b"{", b"\xff"])
@pytest.mark.parametrize("path", ["/auth/otp", "/auth/verify", "/auth/otp-alt"])
def test_case_65_a_body_that_is_not_json_is_400(body: bytes, path: str) -> None:
    # Deliberate difference: the original answers 500 {"message":"Internal server error"}.
    _, actions = post(gateway(), path, body)
    assert outcome(actions) == (400, {"error": "Invalid JSON body", "code": "INVALID_JSON_BODY"})


def test_a_bom_and_utf8_are_read_as_fetch_reads_them() -> None:
    gw = gateway()
    _, actions = post(gw, "/auth/otp", '\ufeff{"email":"é@b.c"}'.encode())
    assert json.loads(call_of(actions).body)["email"] == "é@b.c"


def test_the_supabase_url_may_carry_a_path() -> None:
    gw = gateway(env={**ENV, "SUPABASE_URL": " HTTPS://proj.supabase.test/base?x=1 "})
    _, actions = post(gw, "/auth/otp", b'{"email":"a@b.c"}')
    assert call_of(actions).url == "https://proj.supabase.test/base/auth/v1/otp"


# --- cases 66-67: the authorizer -----------------------------------------------------------------

SECRET = "secret-123"
ISSUER = "https://issuer.example.com"
AUDIENCE = "authenticated"
AUTHORIZER = {"type": "supabase", "jwt_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}


def private_gateway(**authorizer: object) -> Gateway:
    return make_gateway(
        {
            "authorizer": {**AUTHORIZER, **authorizer},
            "paths": [
                {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}
            ],
        }
    )


def good(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 3600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: bytes, payload: bytes, secret: str = SECRET) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def get_private(gw: Gateway, authorization: str | None) -> Respond:
    headers = () if authorization is None else (("authorization", authorization),)
    event = RequestReceived(
        request_id=next(_ids), method="GET", target="/private", headers=headers, now=NOW
    )
    answer = final(gw.handle(event))
    assert isinstance(answer, Respond)
    return answer


def invalid(message: str) -> dict[str, str]:
    return {"error": f"JWT verification failed: {message}", "code": "JWT_INVALID"}


HEADER = b'{"alg":"HS256","typ":"JWT"}'
CASES = {
    "expired": (
        hs_token(good(exp=NOW - 1), SECRET),
        {"error": "Token has expired.", "code": "JWT_EXPIRED"},
    ),
    "expires now": (
        hs_token(good(exp=NOW), SECRET),
        {"error": "Token has expired.", "code": "JWT_EXPIRED"},
    ),
    "malformed": ("malformed.token", invalid("jwt malformed")),
    "nbf": (
        hs_token(good(nbf=NOW + 3600), SECRET),
        {"error": "Token not active yet (nbf)", "code": "JWT_NOT_ACTIVE"},
    ),
    "other secret": (hs_token(good(), "different-secret"), invalid("invalid signature")),
    "empty": ("", invalid("jwt must be provided")),
    "four parts": ("a.b.c.d", invalid("jwt malformed")),
    "bad chars": ("a+.b.c", invalid("invalid token")),
    "header not json": (f"{b64(b'nope')}.{b64(b'{}')}.sig", invalid("invalid token")),
    "header null": (f"{b64(b'null')}.{b64(b'{}')}.sig", invalid("invalid token")),
    "header 0": (f"{b64(b'0')}.{b64(b'{}')}.sig", invalid("invalid token")),
    "header 5": (f"{b64(b'5')}.{b64(b'{}')}.sig", invalid("invalid algorithm")),
    "no signature": (
        hs_token(good(), SECRET).rsplit(".", 1)[0] + ".",
        invalid("jwt signature is required"),
    ),
    "HS512": (hs_token(good(), SECRET, "HS512"), invalid("invalid algorithm")),
    "no alg": (raw_token(b'{"typ":"JWT"}', b"{}"), invalid("invalid algorithm")),
    "typ JWT, payload not JSON": (
        raw_token(HEADER, b"not json"),
        {"error": "JWT verification failed due to an unexpected error.", "code": "AUTH_ERROR"},
    ),
    "nbf a string": (hs_token(good(nbf="1"), SECRET), invalid("invalid nbf value")),
    "exp null": (hs_token(good(exp=None) | {"exp": None}, SECRET), invalid("invalid exp value")),
    "exp true": (hs_token(good(exp=True), SECRET), invalid("invalid exp value")),
    "audience": (
        hs_token(good(aud="other"), SECRET),
        invalid("jwt audience invalid. expected: authenticated"),
    ),
    "audience missing": (
        hs_token(good(aud=None), SECRET),
        invalid("jwt audience invalid. expected: authenticated"),
    ),
    "issuer": (
        hs_token(good(iss="https://evil.test"), SECRET),
        invalid("jwt issuer invalid. expected: https://issuer.example.com"),
    ),
    "expired beats audience": (
        hs_token(good(exp=NOW - 1, aud="x"), SECRET),
        {"error": "Token has expired.", "code": "JWT_EXPIRED"},
    ),
    "audience beats issuer": (
        hs_token(good(aud="x", iss="y"), SECRET),
        invalid("jwt audience invalid. expected: authenticated"),
    ),
    "signature with trailing bits": (
        hs_token(good(), SECRET)[:-1] + ("B" if hs_token(good(), SECRET)[-1] != "B" else "C"),
        invalid("invalid signature"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_case_66_jsonwebtoken_answers(case: str) -> None:
    token, expected = CASES[case]
    answer = get_private(private_gateway(), f"Bearer {token}")
    assert (answer.status, body_json(answer)) == (401, expected)


@pytest.mark.parametrize(
    "claims",
    [
        good(),
        good(exp=None),  # no exp: never expires (kept)
        good(nbf=NOW),
        good(aud=["x", AUDIENCE]),
        good(exp=NOW + 0.5),  # floor(now) < exp
    ],
)
def test_valid_tokens_pass(claims: dict[str, object]) -> None:
    answer = get_private(private_gateway(), f"Bearer {hs_token(claims, SECRET)}")
    assert (answer.status, answer.body) == (200, b'{"ok":true}')


def test_no_bearer_is_the_common_answer() -> None:
    for value in (None, "Basic abc", "bearer x"):
        answer = get_private(private_gateway(), value)
        assert (answer.status, body_json(answer)) == (
            401,
            {"error": "No token provided or token format is invalid.", "code": "AUTH_ERROR"},
        )


def test_falsy_issuer_and_audience_are_not_checked() -> None:
    gw = private_gateway(issuer="", audience="")
    token = hs_token({"sub": "s"}, SECRET)
    assert get_private(gw, f"Bearer {token}").status == 200


def test_a_payload_that_is_not_an_object_passes_without_claims() -> None:
    token = raw_token(b'{"alg":"HS256"}', b"just text")
    claims = verify_hs256(token, secret=SECRET, issuer=None, audience=None, now=NOW)
    assert dict(claims) == {}
    with pytest.raises(Exception, match="audience"):
        verify_hs256(token, secret=SECRET, issuer=None, audience="a", now=NOW)


def test_case_67_no_jwt_secret_is_500_after_the_bearer_check() -> None:
    gw = private_gateway(jwt_secret="")
    assert get_private(gw, None).status == 401
    answer = get_private(gw, "Bearer some-token")
    assert (answer.status, body_json(answer)) == (
        500,
        {
            "error": "JWT secret not configured. Please set SUPABASE_JWT_SECRET in your "
            "environment.",
            "code": "MISSING_JWT_SECRET",
        },
    )


def test_a_secret_from_the_environment() -> None:
    gw = make_gateway(
        {
            "authorizer": {**AUTHORIZER, "jwt_secret": "$env.SUPABASE_JWT_SECRET"},
            "paths": [{"method": "GET", "path": "/private", "auth": True}],
        },
        env={"SUPABASE_JWT_SECRET": "from-env"},
    )
    assert get_private(gw, f"Bearer {hs_token(good(), 'from-env')}").status == 200


# --- jwks_uri (new): Supabase's asymmetric signing keys -------------------------------------------

JWKS_URI = "https://proj.supabase.test/auth/v1/.well-known/jwks.json"


def jwks_gateway(**changes: object) -> Gateway:
    return private_gateway(jwks_uri=JWKS_URI, **changes)


def start_private(gw: Gateway, token: str) -> tuple[int, list[Action]]:
    rid = next(_ids)
    event = RequestReceived(
        request_id=rid,
        method="GET",
        target="/private",
        headers=(("authorization", f"Bearer {token}"),),
        now=NOW,
    )
    return rid, gw.handle(event)


def keys_fetched(rid: int, *keys: object) -> HTTPResponseReceived:
    return HTTPResponseReceived(
        request_id=rid,
        status=200,
        headers=(("cache-control", "max-age=300"),),
        body=json.dumps(jwks(*keys)).encode(),  # type: ignore[arg-type]
        now=NOW,
    )


def test_an_es256_token_is_checked_against_the_key_set_which_is_cached() -> None:
    gw = jwks_gateway()
    key = ec_key()
    rid, actions = start_private(gw, key.token(good()))
    fetch = call_of(actions)
    assert (fetch.method, fetch.url) == ("GET", JWKS_URI)
    answer = final(gw.handle(keys_fetched(rid, key)))
    assert isinstance(answer, Respond) and answer.status == 200
    _, actions = start_private(gw, key.token(good(sub="again")))
    assert [type(a) for a in actions] == [Respond]  # no second fetch


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (good(exp=NOW - 5), {"error": "Token has expired.", "code": "JWT_EXPIRED"}),
        (good(aud="x"), invalid("jwt audience invalid. expected: authenticated")),
    ],
)
def test_key_set_tokens_get_the_same_claim_answers(
    claims: dict[str, object], expected: object
) -> None:
    gw = jwks_gateway()
    key = ec_key()
    rid, _ = start_private(gw, key.token(claims))
    answer = final(gw.handle(keys_fetched(rid, key)))
    assert isinstance(answer, Respond)
    assert (answer.status, body_json(answer)) == (401, expected)


def test_key_set_failures_in_jsonwebtokens_words() -> None:
    gw = jwks_gateway()
    key, other = ec_key(), rsa_key()
    rid, _ = start_private(gw, other.token(good(), header={"kid": "unknown"}))
    answer = final(gw.handle(keys_fetched(rid, key)))
    assert isinstance(answer, Respond)
    assert body_json(answer) == invalid("secret or public key not found")
    forged = key.token(good())[:-4] + "AAAA"
    _, actions = start_private(gw, forged)
    assert body_json(final(actions)) == invalid("invalid signature")  # type: ignore[arg-type]


def test_an_unreachable_key_set_is_the_unexpected_error_answer() -> None:
    gw = jwks_gateway()
    rid, _ = start_private(gw, ec_key().token(good()))
    failed = ActionFailed(request_id=rid, reason=FailureReason.CONNECT, detail="refused", now=NOW)
    actions = gw.handle(failed)
    answer = final(actions)
    assert isinstance(answer, Respond)
    assert (answer.status, body_json(answer)) == (
        401,
        {"error": "JWT verification failed due to an unexpected error.", "code": "AUTH_ERROR"},
    )
    assert any(isinstance(a, Log) and "refused" in a.message for a in actions)


def test_hs256_still_needs_the_secret_when_a_key_set_is_configured() -> None:
    assert get_private(jwks_gateway(), f"Bearer {hs_token(good(), SECRET)}").status == 200
    no_secret = jwks_gateway(jwt_secret="")
    answer = get_private(no_secret, f"Bearer {hs_token(good(), SECRET)}")
    assert (answer.status, body_json(answer)) == (401, invalid("invalid algorithm"))
    answer = get_private(no_secret, "Bearer malformed.token")
    assert body_json(answer) == invalid("jwt malformed")
