"""Supabase: the ``supabase`` authorizer and the three passwordless integrations.

Theory of operation
-------------------
**Authorizer** (UPSTREAM.md §7.3). The original verifies the Bearer token with
``jsonwebtoken.verify(token, jwt_secret, {algorithms: ["HS256"], issuer, audience})`` and
maps its error classes to answers clients see, so :func:`verify_hs256` reproduces
jsonwebtoken 9's checks and their order; the first failing check decides (all 401):

1. ``jwt must be provided`` (empty token); ``jwt malformed`` (not three ``.`` parts);
   ``invalid token`` (not ``[A-Za-z0-9_-]+.[A-Za-z0-9_-]+.[A-Za-z0-9_-]*``, or a header
   that is not truthy JSON); a header with ``typ: "JWT"`` over a payload that is not JSON
   throws a ``SyntaxError`` (the "unexpected error" answer).
2. ``jwt signature is required`` (empty third part).
3. ``invalid algorithm`` (header ``alg`` is not exactly ``HS256``).
4. ``invalid signature``: the HMAC-SHA256 of ``header.payload`` under the UTF-8 secret,
   base64url without padding, compared as text (constant time).
5. ``nbf``: present and not a number: ``invalid nbf value``; ``nbf > now``: NotBeforeError.
6. ``exp``: present and not a number: ``invalid exp value``; ``now >= exp``: TokenExpiredError.
   *New* (before 5): an ``iat``, ``nbf`` or ``exp`` that is not a sane date (non-finite,
   such as ``1e400``, or outside 0..9999-12-31) is ``invalid <claim> value`` too.
7. ``jwt audience invalid. expected: <audience>`` (when ``audience`` is truthy: ``aud``, or an
   element of an ``aud`` array, must equal it).
8. ``jwt issuer invalid. expected: <issuer>`` (when ``issuer`` is truthy).

``now`` is ``floor(event.now)``, with no tolerance. A falsy ``jwt_secret`` answers 500
``MISSING_JWT_SECRET`` after the Bearer check, as the original does.

*New*: with ``jwks_uri`` (Supabase's asymmetric signing keys), a token whose ``alg`` is one
of :data:`ALLOWED_JWS_ALGORITHMS` is verified against that key set through the gateway's
:class:`JwksCache` (max-age, cool-down, single-flight), then steps 5-8 apply. ``HS256``
tokens still need ``jwt_secret``. jose's errors are put in jsonwebtoken's words: a bad
signature is ``invalid signature``, an algorithm outside the allow-list ``invalid
algorithm``, no key for the ``kid`` ``secret or public key not found``; a key set that
cannot be fetched or used is the "unexpected error" answer (the log says why).

**Passwordless integrations** (§8.11). The body is read and parsed as JSON, validated as
the original validates it, then ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY`` are looked
up in the gateway's ``env``. Each GoTrue call is a :class:`SendHTTP` to ``<SUPABASE_URL>/auth/v1``
with the JSON body supabase-js sends and its ``apikey``/``Authorization`` headers, and the
answer is read the way supabase-js reads it (:func:`_reply`). Differences from the original
(docs/differences.md): an invalid JSON body answers 400, not 500; a failed email OTP reports
GoTrue's error (400 when GoTrue refused, 502 when it could not answer) instead of calling
``admin/generate_link``, which sends no mail yet was reported as "sent".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Generator, Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import urljoin, urlsplit

import attrs

from ._actions import LogLevel
from ._config import _truthy
from ._errors import AuthError, GatewayError, InternalError
from ._events import ActionFailed, Event, Headers, HTTPResponseReceived
from ._flow import Claims, Flow, FlowContext, Request, Step
from ._json import JSONValue, dumps, js_number, js_string
from ._jwks import ALLOWED_JWS_ALGORITHMS, JwksCache, JwksPolicy, RemoteJwks, json_body, verify_jws
from ._jwt import _JSON, _utf8, bearer_token, is_sane_date
from ._model import SupabaseAuthorizer

__all__ = [
    "GOTRUE_TIMEOUT",
    "SUPABASE_ENV",
    "SupabaseAuthenticator",
    "passwordless_auth_alt_flow",
    "passwordless_auth_flow",
    "passwordless_verify_flow",
    "verify_hs256",
]

#: The environment names the passwordless integrations read (from ``Gateway(env=...)``).
SUPABASE_ENV: Final = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")
#: Seconds each GoTrue call may take (supabase-js has no limit).
GOTRUE_TIMEOUT: Final = 10.0

_JWS_SHAPE: Final = re.compile(r"[a-zA-Z0-9\-_]+?\.[a-zA-Z0-9\-_]+?\.(?:[a-zA-Z0-9\-_]+)?")
_ALGORITHM: Final = "HS256"
_ABSENT: Final = object()


# --- the authorizer -----------------------------------------------------------------------------


def _invalid(message: str, log: str | None = None) -> AuthError:
    """jsonwebtoken's ``JsonWebTokenError(message)`` as the original answers it."""
    return AuthError(f"JWT verification failed: {message}", code="JWT_INVALID", log=log)


def _unexpected(log: str) -> AuthError:
    """Any other error (a SyntaxError, a key set that cannot be used)."""
    return AuthError("JWT verification failed due to an unexpected error.", log=log)


def _node_base64(segment: str) -> bytes:
    """``Buffer.from(segment, "base64")`` for a segment of ``[A-Za-z0-9_-]``: lenient."""
    usable = len(segment) - (len(segment) % 4 == 1)  # a lone trailing character decodes to nothing
    data = segment[:usable].replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


def _json_parse(text: str) -> object:
    """``JSON.parse``; ``ValueError`` when it throws."""
    try:
        value: object = _JSON.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return value


@attrs.frozen
class _Decoded:
    header: object
    payload: object


def _decode(token: str) -> _Decoded:
    """jsonwebtoken's ``decode(token, {complete: true})`` after its first checks."""
    if not token:
        raise _invalid("jwt must be provided")
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid("jwt malformed")
    header: object = None
    if _JWS_SHAPE.fullmatch(token):
        try:
            header = _json_parse(_node_base64(parts[0]).decode("latin-1"))
        except ValueError:
            header = None
    if not _truthy(header):
        raise _invalid("invalid token")
    text = _node_base64(parts[1]).decode("utf-8", "replace")
    if isinstance(header, dict) and header.get("typ") == "JWT":
        try:
            return _Decoded(header=header, payload=_json_parse(text))
        except ValueError:
            raise _unexpected("SyntaxError: the payload of a typ JWT token is not JSON") from None
    try:
        parsed = _json_parse(text)
    except ValueError:
        parsed = None
    payload = parsed if isinstance(parsed, dict | list) else text
    return _Decoded(header=header, payload=payload)


def _hs256(signing_input: str, secret: str) -> str:
    digest = hmac.new(_utf8(secret), _utf8(signing_input), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_claims(
    payload: object, *, issuer: str | None, audience: str | None, now: float
) -> Claims:
    """jsonwebtoken's payload checks, in its order: nbf, exp, aud, iss (sane dates first)."""
    claims: Mapping[str, object] = payload if isinstance(payload, dict) else {}
    clock = math.floor(now)
    nbf, exp = claims.get("nbf", _ABSENT), claims.get("exp", _ABSENT)
    # *New*: a date that is not a sane NumericDate (1e400 parses as infinity) is invalid,
    # for iat too, which jsonwebtoken does not check (docs/differences.md).
    if "iat" in claims and not is_sane_date(claims["iat"]):
        raise _invalid("invalid iat value")
    if nbf is not _ABSENT:
        if not is_sane_date(nbf):
            raise _invalid("invalid nbf value")
        assert isinstance(nbf, int | float)
        if nbf > clock:
            raise AuthError("Token not active yet (nbf)", code="JWT_NOT_ACTIVE")
    if exp is not _ABSENT:
        if not is_sane_date(exp):
            raise _invalid("invalid exp value")
        assert isinstance(exp, int | float)
        if clock >= exp:
            raise AuthError("Token has expired.", code="JWT_EXPIRED")
    if audience:
        aud = claims.get("aud")
        targets = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(t, str) and t == audience for t in targets):
            raise _invalid(f"jwt audience invalid. expected: {audience}")
    if issuer and claims.get("iss") != issuer:
        raise _invalid(f"jwt issuer invalid. expected: {issuer}")
    # A payload that is not an object (jsonwebtoken returns it as it is) has no claims here.
    return MappingProxyType(claims)


def verify_hs256(
    token: str, *, secret: str, issuer: str | None, audience: str | None, now: float
) -> Claims:
    """Verify an HS256 token exactly as the original's jsonwebtoken call (module doc).

    Raises:
        AuthError: 401 with the original's body for the first failing check.
    """
    decoded = _decode(token)
    header_segment, payload_segment, signature = token.split(".")
    if not signature:
        raise _invalid("jwt signature is required")
    if not isinstance(decoded.header, dict) or decoded.header.get("alg") != _ALGORITHM:
        raise _invalid("invalid algorithm")
    expected = _hs256(f"{header_segment}.{payload_segment}", secret)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise _invalid("invalid signature")
    return _check_claims(decoded.payload, issuer=issuer, audience=audience, now=now)


#: jose's codes (from the JWKS verifier) in jsonwebtoken's words.
_JOSE_AS_JSONWEBTOKEN: Final = {
    "ERR_JWS_SIGNATURE_VERIFICATION_FAILED": "invalid signature",
    "ERR_JOSE_ALG_NOT_ALLOWED": "invalid algorithm",
    "ERR_JWKS_NO_MATCHING_KEY": "secret or public key not found",
    "ERR_JWS_INVALID": "invalid token",
    "ERR_JWT_INVALID": "invalid token",
}


class SupabaseAuthenticator:
    """``type: supabase``: an HS256 token under ``jwt_secret``, or (new) one signed by a key
    of the set at ``jwks_uri``. One per gateway, with its own :class:`JwksCache`.
    """

    def __init__(
        self, authorizer: SupabaseAuthorizer, *, jwks_policy: JwksPolicy | None = None
    ) -> None:
        self.authorizer = authorizer
        self.jwks_cache = JwksCache(jwks_policy)
        uri = authorizer.jwks_uri
        self._keys = RemoteJwks(self.jwks_cache, uri) if uri else None

    def authenticate(self, request: Request) -> Generator[Step, Event, Claims]:
        token = bearer_token(request.event.headers)
        authorizer = self.authorizer
        if not authorizer.jwt_secret and self._keys is None:
            raise GatewayError(
                "JWT secret not configured. Please set SUPABASE_JWT_SECRET in your environment.",
                status=500,
                code="MISSING_JWT_SECRET",
            )
        if self._keys is not None and _alg(token) in ALLOWED_JWS_ALGORITHMS:
            payload = yield from self._verify_with_keys(token, request)
            return _check_claims(
                payload, issuer=authorizer.issuer, audience=authorizer.audience, now=request.now
            )
        if not authorizer.jwt_secret:  # a key set only: HS256 cannot be checked
            _decode(token)
            if not token.split(".")[2]:
                raise _invalid("jwt signature is required")
            raise _invalid("invalid algorithm")
        return verify_hs256(
            token,
            secret=authorizer.jwt_secret,
            issuer=authorizer.issuer,
            audience=authorizer.audience,
            now=request.now,
        )

    def _verify_with_keys(self, token: str, request: Request) -> Generator[Step, Event, object]:
        _decode(token)  # jsonwebtoken's structural answers first
        if not token.split(".")[2]:
            raise _invalid("jwt signature is required")
        assert self._keys is not None
        try:
            claims, _ = yield from verify_jws(
                token, self._keys, request_id=request.id, now=request.now
            )
        except AuthError as exc:
            message = _JOSE_AS_JSONWEBTOKEN.get(exc.code)
            log = exc.log or exc.message
            error = (
                _unexpected(f"jwks_uri: {log}") if message is None else _invalid(message, log=log)
            )
            error.log_level = exc.log_level  # a key set that cannot be fetched stays a WARNING
            raise error from None
        return claims


def _alg(token: str) -> object:
    """The header's ``alg`` if the token decodes far enough to have one."""
    try:
        header = _decode(token).header
    except AuthError:
        return None
    return header.get("alg") if isinstance(header, dict) else None


# --- GoTrue (Supabase Auth) calls ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _GoTrue:
    """Where and how to call GoTrue: ``<SUPABASE_URL>/auth/v1`` with the service-role key."""

    base: str
    headers: Headers

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> _GoTrue:
        url, key = env.get("SUPABASE_URL"), env.get("SUPABASE_SERVICE_ROLE_KEY")
        if not url or not key:
            raise GatewayError(
                "Supabase environment is not configured.", status=500, code="SUPABASE_ENV_MISSING"
            )
        headers = (
            ("apikey", key),
            ("authorization", f"Bearer {key}"),
            ("x-client-info", "sapg"),
            ("x-supabase-api-version", "2024-01-01"),
            ("content-type", "application/json;charset=UTF-8"),
        )
        return cls(base=_auth_url(url), headers=headers)


def _auth_url(supabase_url: str) -> str:
    """supabase-js: ``new URL("auth/v1", <SUPABASE_URL with a trailing slash>)``."""
    text = supabase_url.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InternalError("SUPABASE_URL is not an http(s) URL")
    base = f"{parts.scheme.lower()}://{parts.netloc}{parts.path}"
    return urljoin(base if base.endswith("/") else base + "/", "auth/v1")


@attrs.frozen(kw_only=True)
class _Reply:
    """A supabase-js call's outcome: ``data``, an AuthError (``error``), or a throw."""

    data: object = None
    error: str | None = None
    status: int = 0
    thrown: str | None = None
    log: str = ""

    @property
    def is_ok(self) -> bool:
        return self.error is None and self.thrown is None

    @property
    def level(self) -> LogLevel:
        """GoTrue refused the input (4xx): INFO; it failed (no answer, 5xx, odd): WARNING."""
        if self.thrown is None and 400 <= self.status <= 499:
            return LogLevel.INFO
        return LogLevel.WARNING


def _gotrue(
    ctx: FlowContext, gotrue: _GoTrue, path: str, payload: Mapping[str, JSONValue]
) -> Generator[Step, Event, _Reply]:
    outcome = yield from ctx.send_http(
        "POST", gotrue.base + path, gotrue.headers, dumps(payload), timeout=GOTRUE_TIMEOUT
    )
    if isinstance(outcome, ActionFailed):
        # fetch() rejected: supabase-js returns an AuthRetryableFetchError with status 0.
        log = f"Supabase Auth {path}: {outcome.reason.value}: {outcome.detail}"
        return _Reply(error="fetch failed", status=0, log=log)
    return _reply(path, outcome)


def _reply(path: str, response: HTTPResponseReceived) -> _Reply:
    """supabase-js's ``_handleRequest``/``handleError`` for one GoTrue answer."""
    status = response.status
    log = f"Supabase Auth {path} answered {status}"
    if 200 <= status <= 299:
        try:
            return _Reply(data=json_body(response.body))
        except ValueError:  # AuthRetryableFetchError(SyntaxError message, 0)
            return _Reply(error=_syntax_error(response.body), status=0, log=log + ", not JSON")
    if status in (502, 503, 504):  # AuthRetryableFetchError(JSON.stringify(response))
        return _Reply(error="{}", status=status, log=log)
    try:
        data = json_body(response.body)
    except ValueError:  # AuthUnknownError(SyntaxError message)
        return _Reply(error=_syntax_error(response.body), status=0, log=log + ", not JSON")
    if data is None:
        return _Reply(thrown="Cannot read properties of null (reading 'msg')", log=log)
    if _error_code(response, data) == "session_not_found":
        return _Reply(error="Auth session missing!", status=400, log=log)
    return _Reply(error=_error_message(data), status=status, log=log)


def _error_code(response: HTTPResponseReceived, data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    version = next((v for k, v in response.headers if k == "x-supabase-api-version"), "")
    code = data.get("code") if version.strip() >= "2024-01-01" else data.get("error_code")
    return code if isinstance(code, str) else None


def _error_message(data: object) -> str:
    """``err.msg || err.message || err.error_description || err.error || JSON.stringify(err)``."""
    if isinstance(data, dict):
        for key in ("msg", "message", "error_description", "error"):
            value = data.get(key)
            if _truthy(value):
                return js_string(value)
    return dumps(data).decode("utf-8", "surrogatepass")


def _syntax_error(body: bytes) -> str:
    """Close to V8's ``JSON.parse`` message for a body that is not JSON."""
    text = body.decode("utf-8", "replace").removeprefix("\ufeff")
    stripped = text.strip(" \t\n\r")
    if not stripped:
        return "Unexpected end of JSON input"
    shown = text if len(text) <= 40 else text[:40] + '"...'
    quote = '"' if len(text) <= 40 else ""
    return f"Unexpected token '{stripped[0]}', \"{shown}{quote} is not valid JSON"


def _session(data: object, now: float) -> object:
    """supabase-js ``_sessionResponse``: the session, ``expires_at`` filled in; or None.

    Raises:
        _Thrown: ``data`` is null (the TypeError supabase-js throws).
    """
    if data is None:
        raise _Thrown("Cannot read properties of null (reading 'access_token')")
    if not isinstance(data, dict) or not all(
        _truthy(data.get(key)) for key in ("access_token", "refresh_token", "expires_in")
    ):
        return None
    session = dict(data)
    if not _truthy(data.get("expires_at")):
        session["expires_at"] = _expires_at(data["expires_in"], now)
    return session


def _expires_at(expires_in: object, now: float) -> JSONValue:
    """``Math.round(Date.now() / 1000) + expires_in`` (JavaScript ``+``)."""
    rounded = math.floor(now + 0.5)
    if isinstance(expires_in, bool):
        return rounded + int(expires_in)
    if isinstance(expires_in, int | float):
        return rounded + expires_in
    return f"{js_number(rounded)}{js_string(expires_in)}"


class _Thrown(Exception):
    """A non-Auth error thrown inside supabase-js (its message)."""


# --- the integrations ---------------------------------------------------------------------------

_EMAIL_SENT: Final = {
    "message": "Email OTP sent successfully",
    "note": "Check your email for a 6-digit verification code (not a link)",
    "debug": "If you received a magic link, check your Supabase project Auth settings",
}
_SMS_SENT: Final = {
    "message": "SMS OTP sent successfully",
    "note": "Check your phone for a 6-digit verification code",
}
_ALT_ATTEMPTED: Final = {
    "message": "Alternative OTP method attempted",
    "note": "Check your email for verification code",
}


def _json_request_body(ctx: FlowContext) -> Generator[Step, Event, object]:
    """``await request.json()``; *new*: a body that is not a JSON value (or is null) is 400."""
    if ctx.body is not None:
        body = ctx.body
    else:
        body = yield from ctx.read_body()
    try:
        value = json_body(body)
    except ValueError as exc:
        value = exc
    if value is None or isinstance(value, ValueError):
        raise GatewayError(
            "Invalid JSON body",
            status=400,
            code="INVALID_JSON_BODY",
            log="the request body is not a JSON value (or is null)",
        )
    return value


def _field(body: object, name: str) -> JSONValue:
    value: JSONValue = body.get(name) if isinstance(body, dict) else None
    return value


def passwordless_auth_flow(ctx: FlowContext) -> Flow:
    """``supabase_passwordless_auth``: an OTP by email (preferred) or SMS."""
    body = yield from _json_request_body(ctx)
    email, phone = _field(body, "email"), _field(body, "phone")
    if not _truthy(email) and not _truthy(phone):
        raise GatewayError("Missing email or phone", status=400, code="missing_email_or_phone")
    gotrue = _GoTrue.from_env(ctx.env)
    if _truthy(email):
        payload: dict[str, JSONValue] = {
            "email": email,
            "data": {},
            "create_user": True,
            "gotrue_meta_security": {},
            "code_challenge": None,
            "code_challenge_method": None,
        }
        reply = yield from _gotrue(ctx, gotrue, "/otp", payload)
        if reply.is_ok:
            return ctx.respond_json(200, _EMAIL_SENT)
        # Deliberate difference: GoTrue's error, not the admin generate_link fallback.
        refused = reply.thrown is None and 400 <= reply.status <= 499
        raise GatewayError(
            f"Failed to send OTP: Supabase OTP Error: {reply.thrown or reply.error}",
            status=400 if refused else 502,
            code="SUPABASE_OTP_SEND_FAILED",
            log=reply.log or None,
            level=reply.level,
        )
    payload = {
        "phone": phone,
        "data": {},
        "create_user": True,
        "gotrue_meta_security": {},
        "channel": "sms",
    }
    reply = yield from _gotrue(ctx, gotrue, "/otp", payload)
    if reply.thrown is not None:
        raise InternalError(f"{reply.log}: {reply.thrown}", level=LogLevel.WARNING)
    if reply.error is not None:
        raise GatewayError(
            f"Phone OTP Error: {reply.error}",
            status=400,
            code="SUPABASE_OTP_SEND_FAILED",
            log=reply.log or None,
            level=reply.level,
        )
    return ctx.respond_json(200, _SMS_SENT)


def passwordless_verify_flow(ctx: FlowContext) -> Flow:
    """``supabase_passwordless_verify``: check the OTP; answer GoTrue's session."""
    body = yield from _json_request_body(ctx)
    token, email, phone = _field(body, "token"), _field(body, "email"), _field(body, "phone")
    if not _truthy(token) or (not _truthy(email) and not _truthy(phone)):
        raise GatewayError(
            "Missing token, email, or phone", status=400, code="missing_token_or_contact"
        )
    gotrue = _GoTrue.from_env(ctx.env)
    payload: dict[str, JSONValue] = (
        {"email": email, "token": token, "type": "email", "gotrue_meta_security": {}}
        if _truthy(email)
        else {"phone": phone, "token": token, "type": "sms", "gotrue_meta_security": {}}
    )
    reply = yield from _gotrue(ctx, gotrue, "/verify", payload)
    if reply.thrown is not None:
        raise InternalError(f"{reply.log}: {reply.thrown}", level=LogLevel.WARNING)
    if reply.error is not None:
        raise GatewayError(
            f"OTP Verification Error: {reply.error}",
            status=401,
            code="SUPABASE_OTP_VERIFY_FAILED",
            log=reply.log or None,
            level=reply.level,
        )
    try:
        session = _session(reply.data, ctx.request.now)
    except _Thrown as exc:
        raise InternalError(f"Supabase Auth /verify: {exc}", level=LogLevel.WARNING) from None
    return ctx.respond_json(200, session)


def signup_password(entropy: bytes) -> str:
    """A random UUID v4 (RFC 9562 §5.4) derived from the request's entropy.

    Raises:
        InternalError: the transport gave fewer than 16 bytes (never make up a password).
    """
    if len(entropy) < 16:
        raise InternalError(f"the transport gave {len(entropy)} bytes of entropy, 16 needed")
    raw = bytearray(hashlib.sha256(b"sapg supabase signup password\x00" + entropy).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def passwordless_auth_alt_flow(ctx: FlowContext) -> Flow:
    """``supabase_passwordless_auth_alt``: ``signUp`` with a random password (creates accounts)."""
    body = yield from _json_request_body(ctx)
    email = _field(body, "email")
    if not _truthy(email):
        raise GatewayError(
            "Missing email - alternative method only supports email",
            status=400,
            code="missing_email",
        )
    gotrue = _GoTrue.from_env(ctx.env)
    payload: dict[str, JSONValue] = {
        "email": email,
        "password": signup_password(ctx.request.event.entropy),
        "data": {"otp_only": True},
        "gotrue_meta_security": {},
        "code_challenge": None,
        "code_challenge_method": None,
    }
    reply = yield from _gotrue(ctx, gotrue, "/signup", payload)
    thrown = reply.thrown
    if reply.is_ok and reply.data is None:
        thrown = "Cannot read properties of null (reading 'access_token')"
    if thrown is not None:
        raise GatewayError(
            f"Alternative OTP method failed: {thrown}",
            status=502,
            code="SUPABASE_OTP_ALT_FAILED",
            log=reply.log or None,
            level=reply.level,
        )
    if reply.error is not None and "already registered" not in reply.error:
        raise GatewayError(
            reply.error,
            status=400,
            code="SUPABASE_OTP_ALT_FAILED",
            log=reply.log or None,
            level=reply.level,
        )
    return ctx.respond_json(200, _ALT_ATTEMPTED)
