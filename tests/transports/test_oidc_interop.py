"""Interop with a real OpenID provider: panva's ``oidc-provider`` from the npm registry.

The provider (``tests/transports/oidc/provider.mjs``) runs under node over HTTPS with the test's
throwaway CA and Auth0's endpoint paths (``/authorize``, ``/oauth/token``, ``/userinfo``,
``/.well-known/jwks.json``), issuer ``https://localhost:PORT/``. The test is the browser: it
follows the gateway's login redirect, logs in and consents through the provider's development
interactions (plain HTTP requests with a cookie jar), returns to the gateway's callback, then
calls userinfo, a protected route and refresh, all through the real ``sapg serve``.

The package is installed once with npm into a cache folder outside the repository
(``$SAPG_TEST_NODE_CACHE``, default ``~/.cache/sapg-test-node``). The test skips, saying why,
only when node or npm is missing or the registry cannot be reached.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import select
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest
import trustme

from .conftest import Gateway, free_port

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]  # a first npm install may be slow

OIDC_PROVIDER = "oidc-provider@9.13.3"
SCRIPT = Path(__file__).parent / "oidc" / "provider.mjs"
CLIENT_ID = "sapg-interop"
CLIENT_SECRET = "interop-client-secret-that-is-long-enough-0123456789"
ID_TOKEN_TTL = 4
_NETWORK_ERRORS = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH"
    r"|network|proxy|socket hang up|certificate|E403|E5\d\d",
    re.IGNORECASE,
)


def _cache_dir() -> Path:
    return Path(os.environ.get("SAPG_TEST_NODE_CACHE", Path.home() / ".cache" / "sapg-test-node"))


def _installed_version(cache: Path) -> str | None:
    manifest = cache / "node_modules" / "oidc-provider" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def provider_dir() -> Path:
    """The cache folder holding oidc-provider and a copy of the provider script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run oidc-provider; not found on PATH")
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wanted = OIDC_PROVIDER.rpartition("@")[2]
    if _installed_version(cache) != wanted:
        if not (cache / "package.json").exists():
            (cache / "package.json").write_text('{"private": true}\n')
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), OIDC_PROVIDER],
                capture_output=True,
                text=True,
                timeout=240,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install {OIDC_PROVIDER} timed out: is the registry reachable?")
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            cause = next((ln for ln in output.splitlines() if _NETWORK_ERRORS.search(ln)), None)
            if cause is not None:
                pytest.skip(f"the npm registry is not reachable: {cause.strip()}")
            raise AssertionError(f"npm install {OIDC_PROVIDER} failed:\n{output}")
    shutil.copyfile(SCRIPT, cache / "provider.mjs")  # resolves oidc-provider from the cache
    return cache


class Provider:
    def __init__(self, process: subprocess.Popen[str], port: int, issuer: str) -> None:
        self.process = process
        self.port = port
        self.issuer = issuer


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def provider(
    provider_dir: Path, ca: trustme.CA, tmp_path: Path, gateway_port: int
) -> Iterator[Provider]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "chain.pem").write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    options = {
        "cert": str(tmp_path / "chain.pem"),
        "key": str(tmp_path / "key.pem"),
        "redirectUri": f"http://127.0.0.1:{gateway_port}/callback",
        "clientId": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "idTokenTtl": ID_TOKEN_TTL,
    }
    (tmp_path / "provider.json").write_text(json.dumps(options))
    process = subprocess.Popen(
        ["node", str(provider_dir / "provider.mjs"), str(tmp_path / "provider.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        raise AssertionError("oidc-provider did not start")
    started = json.loads(line)
    yield Provider(process, started["port"], started["issuer"])
    process.terminate()
    process.wait(timeout=10)


class Browser:
    """Just enough of a browser for the provider's pages: HTTPS, a cookie jar, forms."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context()
        ca.configure_trust(self.context)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, url: str, form: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """(status, location, body text) of one request; cookies are kept."""
        parts = urlsplit(url)
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, context=self.context, timeout=10
        )
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(
                method, parts.path + (f"?{parts.query}" if parts.query else ""), body, headers
            )
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            for set_cookie in response.msg.get_all("set-cookie") or []:
                name, _, value = set_cookie.split(";")[0].partition("=")
                if value:
                    self.cookies[name.strip()] = value
                else:
                    self.cookies.pop(name.strip(), None)
            location = urljoin(url, response.getheader("location") or "")
            return response.status, location, text
        finally:
            conn.close()

    def authorize(self, url: str, *, stop_at: str, user: str) -> str:
        """Follow the provider from ``/authorize`` through login and consent to ``stop_at``."""
        method, form = "GET", None
        for _ in range(12):
            status, location, text = self.request(method, url, form)
            method, form = "GET", None
            if status in (302, 303) and location.startswith(stop_at):
                return location
            if status in (302, 303):
                url = location
                continue
            assert status == 200, (status, text[:500])
            action = re.search(r'<form[^>]*action="([^"]+)"', text)
            assert action is not None, text[:500]
            url, method = urljoin(url, action.group(1)), "POST"
            if 'name="login"' in text:  # devInteractions' login page
                form = {"prompt": "login", "login": user, "password": "any"}
            else:  # its consent page
                assert 'name="prompt" value="consent"' in text, text[:500]
                form = {"prompt": "consent"}
        raise AssertionError("the provider never redirected back to the gateway")


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def gateway_config(provider: Provider, gateway_port: int, client_id: str) -> dict[str, object]:
    domain = f"localhost:{provider.port}"
    return {
        "authorizer": {
            "type": "auth0",
            "domain": domain,
            "client_id": client_id,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": f"http://127.0.0.1:{gateway_port}/callback",
            "jwks_uri": f"https://{domain}/.well-known/jwks.json",
            "scope": "openid email",
            "require_state": True,
        },
        "paths": [
            {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
            {"method": "GET", "path": "/login", "integration": {"type": "auth0_callback_redirect"}},
            {"method": "GET", "path": "/callback", "integration": {"type": "auth0_callback"}},
            {"method": "GET", "path": "/userinfo", "integration": {"type": "auth0_userinfo"}},
            {"method": "ANY", "path": "/refresh", "integration": {"type": "auth0_refresh"}},
        ],
    }


@pytest.mark.parametrize(("client_id", "alg"), [(CLIENT_ID, "RS256"), (f"{CLIENT_ID}-ec", "ES256")])
def test_the_whole_flow_against_oidc_provider(
    serve,
    provider: Provider,
    ca: trustme.CA,
    tmp_path: Path,
    gateway_port: int,
    client_id: str,
    alg: str,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    gateway: Gateway = serve(
        gateway_config(provider, gateway_port, client_id),
        env={"SSL_CERT_FILE": str(ca_file)},
        args=["--port", str(gateway_port)],
    )
    assert gateway.port == gateway_port

    # 1. The gateway's login redirect.
    status, headers, _ = gateway.request("GET", "/login")
    assert status == 302
    authorize = headers["location"]
    assert authorize.startswith(f"{provider.issuer}authorize?response_type=code")
    login_cookie = headers["set-cookie"].split(";")[0]

    # 2. The provider's login and consent, as a browser would go through them.
    browser = Browser(ca)
    back = browser.authorize(authorize, stop_at=f"http://127.0.0.1:{gateway_port}/", user="alice")
    query = dict(parse_qsl(urlsplit(back).query))
    assert query["iss"] == provider.issuer and "code" in query

    # 3. The gateway's callback: code exchange with PKCE, ID token verified (signature, iss, aud,
    #    nonce) with keys fetched from the provider's JWKS.
    callback = urlsplit(back)
    status, headers, body = gateway.request(
        "GET", f"{callback.path}?{callback.query}", headers={"Cookie": login_cookie}
    )
    assert status == 200, body
    tokens = json.loads(body)
    id_token = tokens["id_token"]
    id_claims = claims_of(id_token)
    assert id_claims["iss"] == provider.issuer and id_claims["aud"] == client_id
    assert (
        "nonce" in id_claims
        and json.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))["alg"] == alg
    )
    assert headers["set-cookie"].startswith("__Host-sapg-auth0-login=; Max-Age=0")

    # 4. A protected route and refresh with the still-valid ID token.
    bearer = {"Authorization": f"Bearer {id_token}"}
    status, _, body = gateway.request("GET", "/private", headers=bearer)
    assert (status, body) == (200, b'{"ok":true}')
    refresh_headers = {**bearer, "X-Refresh-Token": tokens["refresh_token"]}
    status, _, body = gateway.request("GET", "/refresh", headers=refresh_headers)
    assert (status, json.loads(body)) == (
        200,
        {"message": "Token is still valid", "code": "token_still_valid"},
    )

    # 5. Userinfo with the access token.
    status, _, body = gateway.request(
        "GET", "/userinfo", headers={"X-Access-Token": tokens["access_token"]}
    )
    assert status == 200, body
    assert json.loads(body) == {
        "sub": "alice",
        "email": "alice@example.test",
        "email_verified": True,
    }

    # 6. Once the ID token has expired, refresh asks the provider for new tokens.
    time.sleep(max(0.0, float(id_claims["exp"]) - time.time() + 1.1))  # type: ignore[arg-type]
    status, _, body = gateway.request("GET", "/refresh", headers=refresh_headers)
    assert status == 200, body
    fresh = json.loads(body)
    assert claims_of(fresh["id_token"])["sub"] == "alice"
    log = "".join(gateway.stderr_lines)
    for secret in (query["code"], CLIENT_SECRET, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in log
