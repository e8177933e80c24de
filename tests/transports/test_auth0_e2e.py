"""Auth0 at the edge, end to end: the real ``sapg serve`` against a fake Auth0 over real HTTPS.

The fake Auth0 is a threaded HTTPS server with a throwaway CA (trustme); the gateway trusts it
through ``SSL_CERT_FILE`` in its environment, as an operator would. Its keys are real RSA and EC
keys. It implements ``/authorize`` (remembering nonce and PKCE challenge per code),
``/oauth/token`` (both grants, checking ``code_verifier``), ``/userinfo`` and
``/.well-known/jwks.json``, records what it receives, counts JWKS fetches, and can fail in each
way Auth0 can: 500, a reset connection, a refused one (nothing listening) and slowness past the
gateway's timeout.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import trustme

from tests.core.auth0_keys import SigningKey, ec_key, rsa_key

from .conftest import Gateway, free_port
from .servers import vm_hwm_kib

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

CLIENT_ID = "sapg-client"
CLIENT_SECRET = "s3cret-client-secret"
REDIRECT_URI = "https://app.example.test/callback"
LOGIN_COOKIE = "__Host-sapg-auth0-login"
JWKS_PATH = "/.well-known/jwks.json"
HUGE = 20 * 1024 * 1024  # an identity provider's answer far past the 4 MiB cap


def s256(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


class FakeAuth0:
    """A fake Auth0 tenant over HTTPS; see the module docstring.

    ``failures`` maps a path to ``"500"``, ``"reset"`` or ``("slow", seconds)``.
    """

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.keys: list[SigningKey] = [rsa_key("fake-rsa"), ec_key("fake-ec")]
        self.signer = self.keys[0]
        self.jwks_delay = 0.0
        self.jwks_headers: dict[str, str] = {}
        self.failures: dict[str, object] = {}
        self.id_token_ttl = 3600
        self.hits: list[tuple[str, str, dict[str, str], bytes]] = []
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.access_tokens: set[str] = set()
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                fake.handle(self, self.rfile.read(length))

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # resets and timeouts are on purpose

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.domain = f"localhost:{self.port}"
        self.issuer = f"https://{self.domain}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, hit, _, _ in self.hits if urlsplit(hit).path == path)

    def requests_to(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for _, hit, h, b in self.hits if urlsplit(hit).path == path]

    # -- answers

    def handle(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        path = urlsplit(handler.path).path
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            self.hits.append((handler.command, handler.path, headers, body))
        failure = self.failures.get(path)
        if failure == "reset":
            sock = handler.connection
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            handler.close_connection = True
            return
        if isinstance(failure, tuple):
            time.sleep(failure[1])
        if failure == "500":
            return self.send(handler, 500, b"upstream exploded", "text/plain")
        if failure in ("huge", "huge-chunked"):
            return self.send_huge(handler, chunked=failure == "huge-chunked")
        if path == JWKS_PATH:
            time.sleep(self.jwks_delay)
            keys = {"keys": [key.jwk() for key in self.keys]}
            return self.send(handler, 200, json.dumps(keys).encode(), extra=self.jwks_headers)
        if path == "/authorize":
            return self.authorize(handler)
        if path == "/oauth/token":
            return self.token(handler, headers, body)
        if path == "/userinfo":
            token = headers.get("authorization", "").removeprefix("Bearer ")
            if token not in self.access_tokens:
                return self.send(handler, 401, b'{"error":"invalid_token"}')
            return self.send(handler, 200, b'{"sub":"auth0|user-1","email":"user@example.test"}')
        return self.send(handler, 404, b"{}")

    def send(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("content-type", content_type)
        handler.send_header("content-length", str(len(body)))
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def send_huge(self, handler: http.server.BaseHTTPRequestHandler, *, chunked: bool) -> None:
        """A 20 MB JSON answer, written 64 KiB at a time (declared, or chunked)."""
        piece = b" " * 65536
        count = HUGE // len(piece)
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        if chunked:
            handler.send_header("transfer-encoding", "chunked")
        else:
            handler.send_header("content-length", str(2 + count * len(piece)))
        handler.end_headers()
        frame = (lambda data: b"%x\r\n%s\r\n" % (len(data), data)) if chunked else bytes
        try:
            handler.wfile.write(frame(b"{"))
            for _ in range(count):
                handler.wfile.write(frame(piece))
            handler.wfile.write(frame(b"}"))
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
        except OSError:  # the gateway stopped reading, as it should
            handler.close_connection = True

    def authorize(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        query = dict(parse_qsl(urlsplit(handler.path).query))
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = query
        target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        handler.send_response(302)
        handler.send_header("location", target)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def id_token(self, *, nonce: str | None = None, ttl: int | None = None) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "auth0|user-1",
            "iat": now,
            "exp": now + (self.id_token_ttl if ttl is None else ttl),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return self.signer.token(claims)

    def tokens(self, nonce: str | None) -> bytes:
        access, refresh = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        with self.lock:
            self.access_tokens.add(access)
            self.refresh_tokens.add(refresh)
        answer = {
            "access_token": access,
            "id_token": self.id_token(nonce=nonce),
            "refresh_token": refresh,
            "scope": "openid profile email offline_access",
            "expires_in": 86400,
            "token_type": "Bearer",
        }
        return json.dumps(answer).encode()

    def token(
        self, handler: http.server.BaseHTTPRequestHandler, headers: dict[str, str], body: bytes
    ) -> None:
        form = dict(parse_qsl(body.decode()))
        bad = b'{"error":"invalid_grant"}'
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return self.send(handler, 401, b'{"error":"access_denied"}')
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return self.send(handler, 403, bad)
            return self.send(handler, 200, self.tokens(None))
        with self.lock:
            login = self.codes.pop(form.get("code", ""), None)
        if login is None or form.get("redirect_uri") != login["redirect_uri"]:
            return self.send(handler, 403, bad)
        challenge = login.get("code_challenge")
        if challenge is not None and s256(form.get("code_verifier", "")) != challenge:
            return self.send(handler, 400, bad)
        return self.send(handler, 200, self.tokens(login.get("nonce")))


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def auth0(ca: trustme.CA) -> Iterator[FakeAuth0]:
    fake = FakeAuth0(ca.issue_cert("localhost", "127.0.0.1"))
    yield fake
    fake.close()


def config(domain: str, **changes: object) -> dict[str, object]:
    authorizer: dict[str, object] = {
        "type": "auth0",
        "domain": domain,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": REDIRECT_URI,
        "jwks_uri": f"https://{domain}{JWKS_PATH}",
        "scope": "openid profile email offline_access",
    }
    authorizer.update(changes)
    return {
        "authorizer": authorizer,
        "paths": [
            {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
            {"method": "GET", "path": "/login", "integration": {"type": "auth0_callback_redirect"}},
            {"method": "GET", "path": "/callback", "integration": {"type": "auth0_callback"}},
            {"method": "GET", "path": "/userinfo", "integration": {"type": "auth0_userinfo"}},
            {"method": "ANY", "path": "/refresh", "integration": {"type": "auth0_refresh"}},
        ],
    }


@pytest.fixture
def gateway(serve, auth0: FakeAuth0, ca_file: str) -> Gateway:
    return serve(config(auth0.domain), env={"SSL_CERT_FILE": ca_file})


def follow_to_auth0(location: str, ca: trustme.CA) -> tuple[str, str]:
    """What the browser does: GET Auth0's /authorize; return (code, state) of its redirect."""
    parts = urlsplit(location)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
        assert response.status == 302
        redirect = response.getheader("location") or ""
    finally:
        conn.close()
    assert redirect.startswith(REDIRECT_URI + "?")
    query = dict(parse_qsl(urlsplit(redirect).query))
    return query["code"], query["state"]


def login(gateway: Gateway, ca: trustme.CA, target: str = "/login") -> tuple[str, str, str]:
    """Run the login redirect; return the cookie pair, the code and the state Auth0 sent back."""
    status, headers, body = gateway.request("GET", target)
    assert (status, body) == (302, b"")
    cookie = headers["set-cookie"].split(";")[0]
    code, state = follow_to_auth0(headers["location"], ca)
    return cookie, code, state


def json_of(body: bytes) -> object:
    return json.loads(body)


# --- the flows --------------------------------------------------------------------------------


def test_login_callback_userinfo_and_a_protected_route(
    gateway: Gateway, auth0: FakeAuth0, ca: trustme.CA
) -> None:
    status, headers, _ = gateway.request("GET", "/login?state=app-state")
    assert status == 302
    assert "x-powered-by" not in headers and "access-control-allow-origin" not in headers
    assert headers["location"].startswith(
        f"{auth0.issuer}authorize?response_type=code&client_id={CLIENT_ID}"
        "&redirect_uri=https%3A%2F%2Fapp.example.test%2Fcallback"
        "&scope=openid%20profile%20email%20offline_access&state=app-state&nonce="
    )
    cookie = headers["set-cookie"].split(";")[0]
    code, state = follow_to_auth0(headers["location"], ca)
    assert state == "app-state"

    status, headers, body = gateway.request(
        "GET", f"/callback?code={code}&state={state}", headers={"Cookie": cookie}
    )
    assert status == 200, body
    tokens = json_of(body)
    assert set(tokens) >= {"access_token", "id_token", "refresh_token"}  # type: ignore[arg-type]
    assert headers["set-cookie"].startswith(f"{LOGIN_COOKIE}=; Max-Age=0")
    assert headers["x-powered-by"] == "sapg"

    [(token_headers, token_body)] = auth0.requests_to("/oauth/token")
    assert token_headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qsl(token_body.decode())
    assert [name for name, _ in form] == [
        "grant_type",
        "client_id",
        "client_secret",
        "code",
        "redirect_uri",
        "code_verifier",
    ]
    assert auth0.count(JWKS_PATH) == 1  # fetched to verify the ID token

    access, id_token = tokens["access_token"], tokens["id_token"]  # type: ignore[index]
    status, _, body = gateway.request("GET", "/userinfo", headers={"X-Access-Token": access})
    assert (status, json_of(body)) == (200, {"sub": "auth0|user-1", "email": "user@example.test"})
    status, _, body = gateway.request(
        "GET", "/private", headers={"Authorization": f"Bearer {id_token}"}
    )
    assert (status, body) == (200, b'{"ok":true}')
    assert auth0.count(JWKS_PATH) == 1  # cached

    # Nothing secret reaches the gateway's log.
    log = "".join(gateway.stderr_lines)
    for secret in (code, CLIENT_SECRET, access, id_token[:20], tokens["refresh_token"]):  # type: ignore[index]
        assert secret not in log


def test_a_callback_whose_state_does_not_match_the_cookie_is_refused(
    gateway: Gateway, auth0: FakeAuth0, ca: trustme.CA
) -> None:
    cookie, code, _ = login(gateway, ca)
    status, _, body = gateway.request(
        "GET", f"/callback?code={code}&state=forged", headers={"Cookie": cookie}
    )
    assert (status, json_of(body)) == (
        403,
        {"error": "Invalid OAuth state", "code": "invalid_state"},
    )
    assert auth0.count("/oauth/token") == 0


def test_a_callback_without_the_cookie_behaves_as_the_original(
    gateway: Gateway, auth0: FakeAuth0
) -> None:
    # A code from a flow the gateway did not start (no PKCE, no nonce): exchanged as before.
    code = "outside-code"
    auth0.codes[code] = {"redirect_uri": REDIRECT_URI}
    status, _, body = gateway.request("GET", f"/callback?code={code}")
    assert status == 200, body
    [(_, token_body)] = auth0.requests_to("/oauth/token")
    assert token_body == (
        b"grant_type=authorization_code&client_id=sapg-client"
        b"&client_secret=s3cret-client-secret&code=outside-code"
        b"&redirect_uri=https%3A%2F%2Fapp.example.test%2Fcallback"
    )
    status, _, body = gateway.request("GET", "/callback")
    assert (status, json_of(body)) == (
        400,
        {"error": "Missing authorization code", "code": "missing_code"},
    )


def test_require_state(serve, auth0: FakeAuth0, ca: trustme.CA, ca_file: str) -> None:
    gateway = serve(config(auth0.domain, require_state=True), env={"SSL_CERT_FILE": ca_file})
    status, _, _ = gateway.request("GET", "/callback?code=x&state=y")
    assert status == 403
    cookie, code, state = login(gateway, ca)
    status, _, body = gateway.request(
        "GET", f"/callback?code={code}&state={state}", headers={"Cookie": cookie}
    )
    assert status == 200, body


def test_an_ec_signed_id_token_and_auth0_error_answers(
    gateway: Gateway, auth0: FakeAuth0, ca: trustme.CA
) -> None:
    auth0.signer = auth0.keys[1]  # ES256
    cookie, code, state = login(gateway, ca)
    target = f"/callback?code={code}&state={state}"
    status, _, body = gateway.request("GET", target, headers={"Cookie": cookie})
    assert status == 200, body
    # The same code again: Auth0 refuses it, with its own status.
    status, _, body = gateway.request("GET", target, headers={"Cookie": cookie})
    assert (status, json_of(body)) == (
        403,
        {"error": "Auth0 token exchange failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )
    status, _, body = gateway.request("GET", "/userinfo", headers={"Authorization": "Bearer nope"})
    assert (status, json_of(body)) == (
        401,
        {"error": "Auth0 userinfo failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )


def test_refresh(gateway: Gateway, auth0: FakeAuth0) -> None:
    refresh = "rt-known"
    auth0.refresh_tokens.add(refresh)
    fresh = auth0.id_token()
    status, _, body = gateway.request(
        "GET", "/refresh", headers={"Authorization": f"Bearer {fresh}", "X-Refresh-Token": refresh}
    )
    assert (status, json_of(body)) == (
        200,
        {"message": "Token is still valid", "code": "token_still_valid"},
    )
    expired = auth0.id_token(ttl=-10)
    status, _, body = gateway.request(
        "POST",
        "/refresh",
        headers={"Authorization": f"Bearer {expired}", "Content-Type": "application/json"},
        body=json.dumps({"refresh_token": refresh}).encode(),
    )
    assert status == 200, body
    assert set(json_of(body)) >= {"access_token", "id_token"}  # type: ignore[arg-type]
    [(_, token_body)] = auth0.requests_to("/oauth/token")
    assert token_body == (
        b"grant_type=refresh_token&client_id=sapg-client"
        b"&client_secret=s3cret-client-secret&refresh_token=rt-known"
    )
    status, _, body = gateway.request(
        "GET", "/refresh", headers={"Authorization": f"Bearer {expired}", "X-Refresh-Token": "bad"}
    )
    assert (status, json_of(body)) == (
        403,
        {"error": "Auth0 refresh token failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )


# --- the JWKS cache over the wire --------------------------------------------------------------


def concurrently(gateway: Gateway, tokens: list[str]) -> list[int]:
    def one(token: str) -> int:
        status, _, _ = gateway.request(
            "GET", "/private", headers={"Authorization": f"Bearer {token}"}, timeout=20
        )
        return status

    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        return list(pool.map(one, tokens))


def test_fifty_concurrent_requests_fetch_the_jwks_once(gateway: Gateway, auth0: FakeAuth0) -> None:
    auth0.jwks_delay = 0.5  # keep the fetch in flight while the others arrive
    tokens = [auth0.keys[i % 2].token(claims(auth0, jti=str(i))) for i in range(50)]
    assert concurrently(gateway, tokens) == [200] * 50
    assert auth0.count(JWKS_PATH) == 1


def claims(auth0: FakeAuth0, **extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"iss": auth0.issuer, "aud": "x", "sub": "u", "iat": now, "exp": now + 600, **extra}


def test_rotation_cool_down_and_max_age(gateway: Gateway, auth0: FakeAuth0) -> None:
    auth0.jwks_headers = {"Cache-Control": "public, max-age=3"}
    old = auth0.keys[0]
    status, _, _ = gateway.request(
        "GET", "/private", headers={"Authorization": f"Bearer {old.token(claims(auth0))}"}
    )
    assert status == 200 and auth0.count(JWKS_PATH) == 1
    fetched = time.monotonic()
    # Auth0 rotates a new key in. Within the cool-down an unknown kid is not fetched for.
    new = rsa_key("rotated-in")
    auth0.keys = [old, new]
    status, _, body = gateway.request(
        "GET", "/private", headers={"Authorization": f"Bearer {new.token(claims(auth0))}"}
    )
    assert (status, json_of(body)) == (
        401,
        {"error": "No matching key found in JWKS.", "code": "ERR_JWKS_NO_MATCHING_KEY"},
    )
    assert auth0.count(JWKS_PATH) == 1
    # Once the set is stale (Cache-Control max-age=3), 50 requests with the new kid fetch once.
    time.sleep(max(0.0, 3.2 - (time.monotonic() - fetched)))
    auth0.jwks_delay = 0.3
    tokens = [new.token(claims(auth0, jti=str(i))) for i in range(50)]
    assert concurrently(gateway, tokens) == [200] * 50
    assert auth0.count(JWKS_PATH) == 2


# --- Auth0 failing ------------------------------------------------------------------------------

NETWORK = "AUTH0_NETWORK_ERROR"


def test_auth0_answering_500(gateway: Gateway, auth0: FakeAuth0) -> None:
    auth0.failures = {"/oauth/token": "500", "/userinfo": "500", JWKS_PATH: "500"}
    status, _, body = gateway.request("GET", "/callback?code=x")
    assert (status, json_of(body)) == (
        500,
        {"error": "Auth0 token exchange failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )
    status, _, body = gateway.request("GET", "/userinfo", headers={"X-Access-Token": "t"})
    assert (status, json_of(body)) == (
        500,
        {"error": "Auth0 userinfo failed", "code": "AUTH0_UPSTREAM_ERROR"},
    )
    token = auth0.keys[0].token(claims(auth0))
    status, _, body = gateway.request(
        "GET", "/private", headers={"Authorization": f"Bearer {token}"}
    )
    assert (status, json_of(body)) == (
        401,
        {"error": "JWT verification failed", "code": "AUTH_ERROR"},
    )


def test_auth0_refusing_connections(serve, ca_file: str) -> None:
    gateway = serve(config(f"localhost:{free_port()}"), env={"SSL_CERT_FILE": ca_file})
    status, _, body = gateway.request("GET", "/callback?code=x")
    assert (status, json_of(body)) == (
        502,
        {"error": "Auth0 token exchange request failed", "code": NETWORK},
    )
    status, _, body = gateway.request("GET", "/userinfo", headers={"X-Access-Token": "t"})
    assert (status, json_of(body)) == (
        502,
        {"error": "Auth0 userinfo request failed", "code": NETWORK},
    )
    status, _, body = gateway.request("GET", "/private", headers={"Authorization": "Bearer a.b.c"})
    assert status == 401


def test_auth0_resetting_connections(gateway: Gateway, auth0: FakeAuth0) -> None:
    auth0.failures = {"/oauth/token": "reset", JWKS_PATH: "reset"}
    status, _, body = gateway.request("GET", "/callback?code=x")
    assert (status, json_of(body)) == (
        502,
        {"error": "Auth0 token exchange request failed", "code": NETWORK},
    )
    token = auth0.keys[0].token(claims(auth0))
    status, _, body = gateway.request(
        "GET", "/private", headers={"Authorization": f"Bearer {token}"}
    )
    assert (status, json_of(body)) == (
        401,
        {"error": "JWT verification failed", "code": "AUTH_ERROR"},
    )


def test_auth0_too_slow(gateway: Gateway, auth0: FakeAuth0) -> None:
    # The gateway gives Auth0 calls 10 s and JWKS fetches 5 s; both are tried at once.
    auth0.failures = {"/userinfo": ("slow", 15.0), JWKS_PATH: ("slow", 8.0)}
    token = auth0.keys[0].token(claims(auth0))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        userinfo = pool.submit(
            gateway.request, "GET", "/userinfo", headers={"X-Access-Token": "t"}, timeout=30
        )
        private = pool.submit(
            gateway.request,
            "GET",
            "/private",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        status, _, body = private.result()
        assert (status, json_of(body)) == (
            401,
            {"error": "JWT verification failed", "code": "AUTH_ERROR"},
        )
        status, _, body = userinfo.result()
        assert (status, json_of(body)) == (
            502,
            {"error": "Auth0 userinfo request failed", "code": NETWORK},
        )
    assert 9.5 < time.monotonic() - started < 14


@pytest.mark.parametrize("failure", ["huge", "huge-chunked"])
def test_oversized_answers_from_auth0_are_its_unreachable_answers_in_bounded_memory(
    gateway: Gateway, auth0: FakeAuth0, failure: str
) -> None:
    """A 20 MB JWKS, token or userinfo answer is read to the 4 MiB cap at most, then answered
    as Auth0 unreachable; the gateway's peak memory grows by less than the answer."""
    token = auth0.keys[0].token(claims(auth0))
    assert gateway.request("GET", "/login")[0] == 302  # warm: imports, pools, TLS
    before = vm_hwm_kib(gateway.process.pid)
    auth0.failures = {JWKS_PATH: failure, "/oauth/token": failure, "/userinfo": failure}
    for _ in range(3):
        status, _, body = gateway.request(
            "GET", "/private", headers={"Authorization": f"Bearer {token}"}
        )
        assert (status, json_of(body)) == (
            401,
            {"error": "JWT verification failed", "code": "AUTH_ERROR"},
        )
        status, _, body = gateway.request("GET", "/callback?code=x")
        assert (status, json_of(body)) == (
            502,
            {"error": "Auth0 token exchange request failed", "code": NETWORK},
        )
        status, _, body = gateway.request("GET", "/userinfo", headers={"X-Access-Token": "t"})
        assert (status, json_of(body)) == (
            502,
            {"error": "Auth0 userinfo request failed", "code": NETWORK},
        )
    grown_mib = (vm_hwm_kib(gateway.process.pid) - before) / 1024
    assert grown_mib < 12, f"peak memory grew {grown_mib:.1f} MiB for a 20 MiB answer"
    assert any("answer larger than 4194304 bytes" in line for line in gateway.stderr_lines)
    auth0.failures = {}
    status, _, body = gateway.request(
        "GET", "/private", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200  # a sane answer afterwards is used: the failure was not cached
