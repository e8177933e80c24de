"""Auth0 at the edge: the ``auth0`` authorizer and the four ``auth0_*`` integrations.

Theory of operation
-------------------
The gateway owns the OAuth 2.0 authorization-code flow (RFC 6749 §4.1) against an Auth0 tenant
at ``https://{domain}/`` (``domain`` may carry a port), so backends never see the authorization
code or the client secret. Answers are the original's (UPSTREAM.md §6.2-6.3, §7.2, §8.7-8.10)
except where it is unsafe (§11 items 1-3, 27):

- ``auth0`` authorizer (:class:`Auth0Authenticator`): a Bearer token verified against the
  tenant's JWKS (static ``jwks``, or ``jwks_uri`` through the gateway's :class:`JwksCache`), with
  issuer ``https://{domain}/`` and, when configured, ``audience``. Verified tokens are cached.
- ``auth0_callback_redirect`` (:func:`login_redirect_flow`): 302 to ``/authorize`` with every
  value URL-encoded, plus a ``nonce`` and a PKCE challenge (RFC 7636 §4.2, S256). ``state``,
  nonce and verifier go into a short-lived signed cookie (:class:`LoginState`).
- ``auth0_callback`` (:func:`callback_flow`): when the login cookie comes back, ``state`` must
  match it (else 403), ``code_verifier`` is sent and the ID token's ``nonce`` must match. The
  ID token's ``aud`` must be ``client_id`` (OpenID Connect Core §3.1.3.7). Without the cookie
  (a flow the gateway did not start) it behaves as the original, unless ``require_state``.
- ``auth0_userinfo`` (:func:`userinfo_flow`) and ``auth0_refresh`` (:func:`refresh_flow`).

Entropy for ``state``, nonce and verifier comes from ``RequestReceived.entropy`` (never drawn
here); the cookie's HMAC key is derived from ``client_secret`` with a fixed label. Log lines
name causes, never codes, tokens or secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import quote

import attrs

from ._actions import LogLevel, Respond
from ._errors import AuthError, GatewayError, InternalError
from ._events import ActionFailed, Event, Headers
from ._flow import JSON_HEADERS, Claims, Flow, FlowContext, Request, Step
from ._json import dumps
from ._jwks import (
    JwksCache,
    JwksPolicy,
    KeySet,
    KeySource,
    RemoteJwks,
    StaticJwks,
    json_body,
    verify_jws,
)
from ._jwt import (
    _b64url_decode,
    _claim_failed,
    _expired,
    _json_object,
    _not_yet_valid,
    _validity_window,
    bearer_token,
    validate_claims,
)
from ._model import Auth0Authorizer, Integration
from ._services import post_process
from ._url import form_decode, form_encode

__all__ = [
    "LOGIN_COOKIE",
    "LOGIN_COOKIE_MAX_AGE",
    "Auth0Authenticator",
    "LoginState",
    "PostProcessRunner",
    "callback_flow",
    "has_post_process",
    "login_redirect_flow",
    "post_process_runner",
    "refresh_flow",
    "userinfo_flow",
]

#: The login cookie. ``__Host-``: Secure, ``Path=/``, no ``Domain``, so no other host (not even
#: a sibling subdomain) can set it (RFC 6265bis §4.1.3.2).
LOGIN_COOKIE: Final = "__Host-sapg-auth0-login"
#: Seconds a login may take between the redirect and the callback.
LOGIN_COOKIE_MAX_AGE: Final = 600
_COOKIE_ATTRIBUTES: Final = "Path=/; Secure; HttpOnly; SameSite=Lax"
_COOKIE_KEY_LABEL: Final = b"sapg auth0 login-state cookie v1\x00"
_COOKIE_VERSION: Final = "v1"
_MAX_COOKIE: Final = 1024
_MIN_ENTROPY: Final = 16
#: Timeout of each call to Auth0 (the original had none).
AUTH0_TIMEOUT: Final = 10.0
_FORM_HEADERS: Final[Headers] = (("content-type", "application/x-www-form-urlencoded"),)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _digest(text: str) -> str:
    return _b64(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())


# --- verified tokens -------------------------------------------------------------------------

#: claims, valid_from, valid_until, the key set that verified them
_CacheEntry = tuple[Mapping[str, object], float, float, KeySet]
_KeysOrError = KeySource | Callable[[], AuthError]


class _TokenVerifier:
    """Bearer tokens for one (issuer, audience): JWKS signature, jose's claim checks, a cache.

    A cached token is answered without its signature being checked again only while the key set
    that verified it is still the one in use (see :meth:`KeySource.current`): a refetched or
    expired JWKS sends every token through the full check once more. ``nbf``/``exp`` are
    checked on every hit, with the same answers as a full check.
    """

    def __init__(
        self, keys: _KeysOrError, *, issuer: str, audience: str | None, cache_size: int
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _CacheEntry] = OrderedDict()

    def verify(self, token: str, *, request_id: int, now: float) -> Generator[Step, Event, Claims]:
        keys = _usable(self._keys)
        entry = self._cache.get(token)
        if entry is not None and entry[3] is keys.current(now):
            claims, valid_from, valid_until, _ = entry
            if not valid_from <= now < valid_until:
                del self._cache[token]
                raise _not_yet_valid() if now < valid_from else _expired()
            self._cache.move_to_end(token)
            return claims
        payload, key_set = yield from verify_jws(token, keys, request_id=request_id, now=now)
        validate_claims(payload, issuer=self._issuer, audience=self._audience, now=now)
        claims = MappingProxyType(payload)
        if self._cache_size:
            self._cache[token] = (claims, *_validity_window(claims), key_set)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims


def _usable(keys: _KeysOrError) -> KeySource:
    if callable(keys):
        raise keys()
    return keys


def _config_error(message: str) -> Callable[[], AuthError]:
    return lambda: AuthError(message, status=500, code="AUTH_CONFIG_ERROR")


class Auth0Authenticator:
    """``type: auth0``: tokens signed by the tenant, checked against its JWKS (UPSTREAM.md §7.2).

    One per gateway (a new config builds a new one, with empty caches).

    Args:
        authorizer: the compiled ``authorizer`` block.
        jwks_policy: max-age, cool-down and timeout of the ``jwks_uri`` cache.
        cache_size: verified tokens kept per verifier (0 disables the cache).

    Fields:
        issuer: ``https://{domain}/``; also the base of the Auth0 endpoint URLs.
        jwks_cache: the remote key sets of this gateway.
    """

    def __init__(
        self,
        authorizer: Auth0Authorizer,
        *,
        jwks_policy: JwksPolicy | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.authorizer = authorizer
        self.issuer = f"https://{authorizer.domain}/"
        self.jwks_cache = JwksCache(jwks_policy)
        self._keys = self._key_source()
        self._route_tokens = _TokenVerifier(
            self._keys, issuer=self.issuer, audience=authorizer.audience, cache_size=cache_size
        )
        # The refresh route checks the presented token as the original does: no audience.
        self._refresh_tokens = (
            self._route_tokens
            if authorizer.audience is None
            else _TokenVerifier(
                self._keys, issuer=self.issuer, audience=None, cache_size=cache_size
            )
        )
        label = _COOKIE_KEY_LABEL + authorizer.client_id.encode("utf-8", "surrogatepass")
        secret = authorizer.client_secret.encode("utf-8", "surrogatepass")
        self.cookie_key = hmac.new(secret, label, hashlib.sha256).digest()

    def _key_source(self) -> _KeysOrError:
        authorizer = self.authorizer
        if authorizer.jwks:
            try:
                document = json_body(authorizer.jwks.encode("utf-8", "surrogatepass"))
            except ValueError:
                return _config_error("JWKS configuration is not valid JSON.")
            try:
                return StaticJwks(KeySet.parse(document))
            except AuthError as exc:  # jose's JWKSInvalid: a 401 for every token, as the original
                # The operator's own key set: logged at ERROR (a config fault, not the client's).
                message, code, log = exc.message, exc.code, exc.log
                return lambda: AuthError(message, code=code, log=log, level=LogLevel.ERROR)
        if authorizer.jwks_uri:
            return RemoteJwks(self.jwks_cache, authorizer.jwks_uri)
        return _config_error("No JWKS source configured.")

    def authenticate(self, request: Request) -> Generator[Step, Event, Claims]:
        """A route's Bearer token: signature, issuer, ``audience`` when configured, times."""
        token = bearer_token(request.event.headers)
        return (yield from self._route_tokens.verify(token, request_id=request.id, now=request.now))

    def verify_for_refresh(self, request: Request) -> Generator[Step, Event, Claims]:
        """The refresh route's Bearer token, checked as the original checks it (no audience)."""
        token = bearer_token(request.event.headers)
        verifier = self._refresh_tokens
        return (yield from verifier.verify(token, request_id=request.id, now=request.now))

    def verify_id_token(
        self, token: str, *, request_id: int, now: float, nonce: str | None
    ) -> Generator[Step, Event, Claims]:
        """An ID token from the token endpoint (OpenID Connect Core §3.1.3.7).

        Signature, ``iss``, ``aud`` (must be or contain ``client_id``; with several audiences
        ``azp`` must be ``client_id``), ``iat``/``nbf``/``exp``, then ``nonce`` when the gateway
        issued one. Not cached: each ID token is seen once.
        """
        keys = _usable(self._keys)
        payload, _ = yield from verify_jws(token, keys, request_id=request_id, now=now)
        client_id = self.authorizer.client_id
        validate_claims(payload, issuer=self.issuer, audience=client_id, now=now)
        audience = payload.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and payload.get("azp") != client_id:
            raise _claim_failed('unexpected "azp" claim value')
        if nonce is not None:
            found = payload.get("nonce")
            if not isinstance(found, str) or not hmac.compare_digest(
                found.encode("utf-8", "surrogatepass"), nonce.encode("ascii")
            ):
                raise _claim_failed('unexpected "nonce" claim value')
        return MappingProxyType(payload)


def _authenticator(ctx: FlowContext) -> Auth0Authenticator:
    if isinstance(ctx.authenticator, Auth0Authenticator):
        return ctx.authenticator
    kind = ctx.route.integration.type if ctx.route.integration is not None else "auth0"
    raise InternalError(f"integration {kind} needs an auth0 authorizer, and none is configured")


# --- the login cookie --------------------------------------------------------------------------


def _state_error(detail: str) -> GatewayError:
    return GatewayError("Invalid OAuth state", status=403, code="invalid_state", log=detail)


@attrs.frozen(kw_only=True)
class LoginState:
    """What the login redirect remembers for its callback, sealed into the login cookie.

    Fields:
        state_digest: base64url SHA-256 of the ``state`` sent to Auth0 (the client's own
            ``state`` can be long; the cookie stays small).
        nonce: the ID token must carry it.
        verifier: the PKCE ``code_verifier`` (RFC 7636 §4.1: 43 characters, 256 bits).
        expires: epoch seconds after which the cookie is refused.
    """

    state_digest: str
    nonce: str
    verifier: str
    expires: int

    @classmethod
    def derive(cls, entropy: bytes, *, state: str | None, now: float) -> tuple[LoginState, str]:
        """A fresh login from the request's entropy; returns it and the ``state`` to send.

        Each value is HMAC-SHA256(entropy, label), so none reveals another. ``state`` is the
        client's when it gave one, else generated.
        """

        def value(label: bytes) -> str:
            return _b64(hmac.new(entropy, label, hashlib.sha256).digest())

        state = state or value(b"state")
        login = cls(
            state_digest=_digest(state),
            nonce=value(b"nonce"),
            verifier=value(b"code_verifier"),
            expires=math.floor(now) + LOGIN_COOKIE_MAX_AGE,
        )
        return login, state

    @property
    def code_challenge(self) -> str:
        """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier)))."""
        return _b64(hashlib.sha256(self.verifier.encode("ascii")).digest())

    def seal(self, key: bytes) -> str:
        """``v1.<payload>.<mac>``: base64url JSON and its HMAC-SHA256 under ``key``."""
        payload = dumps(
            {"s": self.state_digest, "n": self.nonce, "v": self.verifier, "x": self.expires}
        )
        signed = f"{_COOKIE_VERSION}.{_b64(payload)}"
        mac = hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()
        return f"{signed}.{_b64(mac)}"

    @classmethod
    def open(cls, value: str, key: bytes, *, now: float) -> LoginState:
        """The login sealed in ``value``.

        Raises:
            GatewayError: 403 ``invalid_state`` when it is malformed, forged or expired.
        """
        version, _, rest = value.partition(".")
        signed_payload, _, mac = rest.rpartition(".")
        if version != _COOKIE_VERSION or not signed_payload or len(value) > _MAX_COOKIE:
            raise _state_error("the login cookie is malformed")
        expected = hmac.new(key, f"{version}.{signed_payload}".encode(), hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(_b64url_decode(mac), expected)
            fields = _json_object(_b64url_decode(signed_payload))
        except ValueError:
            raise _state_error("the login cookie is malformed") from None
        if not valid:
            raise _state_error("the login cookie's signature does not match")
        login = _login_from(fields)
        if login is None:
            raise _state_error("the login cookie is malformed")
        if login.expires <= now:
            raise _state_error("the login cookie has expired")
        return login

    def cookie(self, key: bytes) -> str:
        """The ``Set-Cookie`` value that stores this login."""
        return (
            f"{LOGIN_COOKIE}={self.seal(key)}; Max-Age={LOGIN_COOKIE_MAX_AGE}; {_COOKIE_ATTRIBUTES}"
        )


def _login_from(fields: Mapping[str, object] | None) -> LoginState | None:
    if fields is None:
        return None
    digest, nonce, verifier = fields.get("s"), fields.get("n"), fields.get("v")
    expires = fields.get("x")
    if not (isinstance(digest, str) and isinstance(nonce, str) and isinstance(verifier, str)):
        return None
    if not isinstance(expires, int) or isinstance(expires, bool):
        return None
    return LoginState(state_digest=digest, nonce=nonce, verifier=verifier, expires=expires)


_CLEAR_COOKIE: Final = f"{LOGIN_COOKIE}=; Max-Age=0; {_COOKIE_ATTRIBUTES}"


def _cookie(headers: Headers, name: str) -> str | None:
    """The first cookie called ``name`` in the ``Cookie`` header fields (RFC 6265 §5.4)."""
    for field, value in headers:
        if field != "cookie":
            continue
        for pair in value.split(";"):
            key, found, cookie = pair.strip().partition("=")
            if found and key == name:
                return cookie.strip().removeprefix('"').removesuffix('"')
    return None


def _first(pairs: list[tuple[str, str]], name: str) -> str | None:
    """``URLSearchParams.get``: the first value of ``name``, or None."""
    return next((value for key, value in pairs if key == name), None)


# --- calling Auth0 (UPSTREAM.md §6.3) ---------------------------------------------------------


@attrs.frozen
class _Operation:
    name: str
    failed: str
    request_failed: str


_EXCHANGE: Final = _Operation(
    "token exchange", "Auth0 token exchange failed", "Auth0 token exchange request failed"
)
_USERINFO: Final = _Operation("userinfo", "Auth0 userinfo failed", "Auth0 userinfo request failed")
_REFRESH: Final = _Operation(
    "refresh token", "Auth0 refresh token failed", "Auth0 refresh token request failed"
)


def _error_code(error: object) -> str:
    """An OAuth ``error`` code (RFC 6749 §4.1.2.1, §5.2) for the log, and never more than it."""
    if isinstance(error, str) and error.isascii() and error.isidentifier() and len(error) <= 64:
        return f" ({error})"
    return ""


def _oauth_error(body: bytes) -> str:
    try:
        value = json_body(body)
    except ValueError:
        return ""
    return _error_code(value.get("error") if isinstance(value, dict) else None)


def _call_auth0(
    ctx: FlowContext, operation: _Operation, method: str, url: str, headers: Headers, body: bytes
) -> Generator[Step, Event, tuple[object, float]]:
    """One call to Auth0: its JSON answer and when it arrived; failures as the original answers."""
    outcome = yield from ctx.send_http(method, url, headers, body, timeout=AUTH0_TIMEOUT)
    if isinstance(outcome, ActionFailed):
        raise GatewayError(
            operation.request_failed,
            status=502,
            code="AUTH0_NETWORK_ERROR",
            log=f"Auth0 {operation.name} request failed: {outcome.reason.value}: {outcome.detail}",
        )
    if not 200 <= outcome.status < 300:
        raise GatewayError(
            operation.failed,
            status=outcome.status,
            code="AUTH0_UPSTREAM_ERROR",
            log=f"Auth0 {operation.name} failed with status {outcome.status}"
            + _oauth_error(outcome.body),
            level=LogLevel.WARNING,  # the provider's answer, whatever its status
        )
    try:
        value = json_body(outcome.body)
    except ValueError:
        raise GatewayError(
            "Internal Server Error",
            status=500,
            code="AUTH0_ERROR",
            log=f"Auth0 {operation.name}: the answer is not JSON",
        ) from None
    return value, outcome.now


# --- the integrations --------------------------------------------------------------------------

#: Calls a ``post_process`` hook with the verified ID-token claims and Auth0's token answer.
PostProcessRunner = Callable[[Claims, object], Generator[Step, Event, None]]


def has_post_process(integration: Integration | None) -> bool:
    """Whether an integration has a ``post_process`` hook the original would call."""
    hook = integration.raw.get("post_process") if integration is not None else None
    return isinstance(hook, dict) and hook.get("type") == "service_binding"


def post_process_runner(ctx: FlowContext) -> PostProcessRunner | None:
    """The service-binding seam: how to call this callback route's ``post_process`` hook.

    Returns None when the route has none. The original runs the hook only when
    ``integration.post_process.type`` is ``"service_binding"`` (§8.7 step 5). :func:`callback_flow`
    asks before it contacts Auth0, and runs the returned generator after the ID token passed,
    before answering; the hook's result is ignored and its errors are the callback's answer.

    The hook is a ``CallService`` (``ServiceStage.POST_PROCESS``) through
    :func:`sapg_core._services.post_process`, with the ID token's claims as its ``ctx.claims``.
    """
    if not has_post_process(ctx.route.integration):
        return None

    def run(claims: Claims, tokens: object) -> Generator[Step, Event, None]:
        yield from post_process(ctx, claims)

    return run


def login_redirect_flow(ctx: FlowContext) -> Flow:
    """``auth0_callback_redirect`` (§8.8): 302 to ``/authorize``, and the login cookie.

    No CORS headers and no X-Powered-By, as the original.
    """
    auth0 = _authenticator(ctx)
    entropy = ctx.request.event.entropy
    if len(entropy) < _MIN_ENTROPY:
        raise InternalError(f"the transport gave {len(entropy)} bytes of entropy, 16 needed")
    client_state = _first(form_decode(ctx.request.query), "state")
    login, state = LoginState.derive(entropy, state=client_state, now=ctx.request.now)
    authorizer = auth0.authorizer
    parameters = [
        ("response_type", "code"),
        ("client_id", authorizer.client_id),
        ("redirect_uri", authorizer.redirect_uri),
        ("scope", authorizer.scope),
        ("state", state),
        ("nonce", login.nonce),
        ("code_challenge", login.code_challenge),
        ("code_challenge_method", "S256"),
    ]
    if authorizer.audience:
        parameters.append(("audience", authorizer.audience))
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in parameters)
    headers = (
        ("location", f"{auth0.issuer}authorize?{query}"),
        ("set-cookie", login.cookie(auth0.cookie_key)),
        ("cache-control", "no-store"),
    )
    return Respond(request_id=ctx.request.id, status=302, headers=headers)
    yield  # a generator that needs nothing from the world


def _login_state(
    ctx: FlowContext, auth0: Auth0Authenticator, state: str | None
) -> LoginState | None:
    """The login this callback completes, or None for a flow the gateway did not start."""
    cookie = _cookie(ctx.request.event.headers, LOGIN_COOKIE)
    if cookie is None:
        if auth0.authorizer.require_state:
            raise _state_error("no login cookie, and require_state is set")
        return None
    login = LoginState.open(cookie, auth0.cookie_key, now=ctx.request.now)
    if state is None or not hmac.compare_digest(login.state_digest, _digest(state)):
        raise _state_error("the state does not match the login cookie")
    return login


def callback_flow(ctx: FlowContext) -> Flow:
    """``auth0_callback`` (§8.7): exchange the code, verify the ID token, answer the tokens."""
    auth0 = _authenticator(ctx)
    run_post_process = post_process_runner(ctx)
    query = form_decode(ctx.request.query)
    code = _first(query, "code")
    if not code:
        raise GatewayError(
            "Missing authorization code",
            status=400,
            code="missing_code",
            log="auth0 callback without a code" + _error_code(_first(query, "error")),
        )
    login = _login_state(ctx, auth0, _first(query, "state"))
    authorizer = auth0.authorizer
    form = [
        ("grant_type", "authorization_code"),
        ("client_id", authorizer.client_id),
        ("client_secret", authorizer.client_secret),
        ("code", code),
        ("redirect_uri", authorizer.redirect_uri),
    ]
    if login is not None:
        form.append(("code_verifier", login.verifier))
    tokens, now = yield from _call_auth0(
        ctx,
        _EXCHANGE,
        "POST",
        f"{auth0.issuer}oauth/token",
        _FORM_HEADERS,
        form_encode(form).encode(),
    )
    id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
    if not isinstance(id_token, str) or not id_token:
        raise InternalError("Auth0's token answer has no id_token", level=LogLevel.WARNING)
    claims = yield from auth0.verify_id_token(
        id_token,
        request_id=ctx.request.id,
        now=now,
        nonce=login.nonce if login is not None else None,
    )
    if run_post_process is not None:
        yield from run_post_process(claims, tokens)
    headers = JSON_HEADERS if login is None else (*JSON_HEADERS, ("set-cookie", _CLEAR_COOKIE))
    return ctx.respond(200, dumps(tokens), headers)


def _bearer_or_empty(headers: Headers) -> str:
    try:
        return bearer_token(headers)
    except AuthError:
        return ""


def userinfo_flow(ctx: FlowContext) -> Flow:
    """``auth0_userinfo`` (§8.9): GET ``/userinfo`` with the client's access token."""
    headers = ctx.request.event.headers
    token = ctx.request.header("x-access-token") or _bearer_or_empty(headers)
    if not token:
        raise GatewayError("Missing bearer token", status=401, code="missing_access_token")
    auth0 = _authenticator(ctx)
    info, _ = yield from _call_auth0(
        ctx,
        _USERINFO,
        "GET",
        f"{auth0.issuer}userinfo",
        (("authorization", f"Bearer {token}"),),
        b"",
    )
    return ctx.respond_json(200, info)


def _refresh_token(ctx: FlowContext) -> Generator[Step, Event, str]:
    """``X-Refresh-Token``, else (POST only) the JSON body's ``refresh_token``; "" if neither."""
    token = ctx.request.header("x-refresh-token")
    if token or ctx.request.method != "POST":
        return token or ""
    body = yield from ctx.read_body()
    try:
        value = json_body(body)
    except ValueError:
        return ""  # the original ignores a body it cannot parse
    found = value.get("refresh_token") if isinstance(value, dict) else None
    return found if isinstance(found, str) else ""


def refresh_flow(ctx: FlowContext) -> Flow:
    """``auth0_refresh`` (§8.10): refresh only when the presented token is valid but expired."""
    refresh_token = yield from _refresh_token(ctx)
    if not refresh_token:
        raise GatewayError(
            "Missing refresh token",
            status=400,
            code="missing_refresh_token",
            log="Missing refresh token in request",
        )
    auth0 = _authenticator(ctx)
    try:
        yield from auth0.verify_for_refresh(ctx.request)
    except AuthError as exc:
        if exc.code != "ERR_JWT_EXPIRED":
            raise
    else:
        return ctx.respond_json(
            200, {"message": "Token is still valid", "code": "token_still_valid"}
        )
    authorizer = auth0.authorizer
    form = [
        ("grant_type", "refresh_token"),
        ("client_id", authorizer.client_id),
        ("client_secret", authorizer.client_secret),
        ("refresh_token", refresh_token),
    ]
    tokens, _ = yield from _call_auth0(
        ctx,
        _REFRESH,
        "POST",
        f"{auth0.issuer}oauth/token",
        _FORM_HEADERS,
        form_encode(form).encode(),
    )
    return ctx.respond_json(200, tokens)
