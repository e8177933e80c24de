"""TLS termination on every native driver, over real loopback with a throwaway CA (trustme).

``sapg serve --ssl-certfile --ssl-keyfile`` serves HTTPS (TLS 1.2+): a request
over TLS is answered and its scheme reaches the upstream as
``X-Forwarded-Proto: https``; a plain-HTTP client on the TLS port is closed, not
left hanging; a client that stalls its handshake is cut off at the header timeout
and keeps nobody else from being served (on the blocking driver: holds no worker
thread, so more stalled clients than threads still leave room).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from transports._serve import tls_context

from .conftest import Upstream
from .servers import ROOT

pytestmark = [pytest.mark.network, pytest.mark.timeout(90)]

NATIVE = ("trio", "asyncio", "h11")
HEADER_TIMEOUT = 3
READY = re.compile(r"sapg: listening on (https?)://127\.0\.0\.1:(\d+) \(transport=(\w+)\)")


class TLSServer:
    def __init__(self, process: subprocess.Popen[str], port: int, lines: list[str]) -> None:
        self.process, self.port, self.lines = process, port, lines

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def serve_tls(
    kind: str, config: object, tmp_path: Path, cert_files: tuple[str, str], *extra: str
) -> TLSServer:
    path = tmp_path / f"config-{kind}.json"
    path.write_text(json.dumps(config))
    cert, key = cert_files
    argv = [sys.executable, "-m", "transports.cli", "serve", "--transport", kind, "--port", "0"]
    argv += ["--config", str(path), "--ssl-certfile", cert, "--ssl-keyfile", key, *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAG_", "SAPG_"))}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = READY.search(line)
        if found:
            assert found.group(1) == "https" and found.group(3) == kind, line
            threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
            return TLSServer(process, int(found.group(2)), lines)
    process.kill()
    raise AssertionError("the TLS server did not become ready:\n" + "".join(lines))


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)


def config(upstream: Upstream) -> dict[str, object]:
    return {
        "servers": [{"alias": "up", "url": upstream.url}],
        "paths": [
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {
                "method": "ANY",
                "path": "/api/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            },
        ],
    }


@pytest.fixture(params=NATIVE)
def tls_server(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    tmp_path: Path,
    cert_files: tuple[str, str],
) -> Iterator[TLSServer]:
    server = serve_tls(
        request.param, config(upstream), tmp_path, cert_files,
        "--header-timeout", str(HEADER_TIMEOUT), "--threads", "2",
    )  # fmt: skip
    try:
        yield server
    finally:
        assert server.stop() == 0, "".join(server.lines)


def https_get(
    port: int, context: ssl.SSLContext, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_a_request_over_tls_is_answered(
    tls_server: TLSServer, client_context: ssl.SSLContext, upstream: Upstream
) -> None:
    status, headers, body = https_get(tls_server.port, client_context, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    # Keep-alive over one TLS connection, and a proxied request that knows its scheme.
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=client_context)
    for _ in range(3):
        conn.request("GET", "/api/items?x=1", headers={"X-Request-Id": "tls-1"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("x-request-id") == "tls-1"
        response.read()
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.close()
    seen = upstream.requests[-1].headers
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-request-id"] == "tls-1"


def test_tls_1_2_is_served_and_below_it_refused(
    tls_server: TLSServer, client_context: ssl.SSLContext, ca: trustme.CA
) -> None:
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert https_get(tls_server.port, client_context, "/health")[0] == 200
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as refused,
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    if "NO_PROTOCOLS_AVAILABLE" in str(refused.value):
        pytest.skip("this OpenSSL cannot offer TLS 1.1 even at security level 0")
    # The server's refusal: its protocol-version alert, or its close without one.
    assert (
        isinstance(refused.value, ssl.SSLEOFError)
        or "PROTOCOL_VERSION" in str(refused.value).upper()
    ), refused.value


def test_a_plain_http_client_on_the_tls_port_is_closed_not_left_hanging(
    tls_server: TLSServer, client_context: ssl.SSLContext
) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as plain:
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        started = time.monotonic()
        while chunk := _recv(plain):
            received += chunk
        assert time.monotonic() - started < 5  # closed at once, not at a timeout
    assert b"200" not in received and b"status" not in received
    assert received == b"" or received[:1] == b"\x15" or received.startswith(b"HTTP/1.1 400")
    # The server is unharmed.
    assert https_get(tls_server.port, client_context, "/health")[0] == 200


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def test_a_stalled_handshake_is_cut_off_and_stops_nobody(
    tls_server: TLSServer, client_context: ssl.SSLContext
) -> None:
    stalled = []
    opened = time.monotonic()
    for index in range(4):  # more than the blocking driver's 2 threads
        sock = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
        if index % 2:  # half send a partial ClientHello, half nothing at all
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        stalled.append(sock)
    try:
        for _ in range(3):  # others are served meanwhile
            assert https_get(tls_server.port, client_context, "/health")[0] == 200
        if time.monotonic() - opened < HEADER_TIMEOUT - 0.5:  # (a slow machine may miss this)
            for sock in stalled:  # ... while the stalled ones are still open
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
                sock.setblocking(True)
        for sock in stalled:  # then they are cut off, with the header timeout
            sock.settimeout(HEADER_TIMEOUT + 6)
            while _recv(sock):
                pass
        assert time.monotonic() - opened < HEADER_TIMEOUT + 6
    finally:
        for sock in stalled:
            sock.close()


# -- start-up ---------------------------------------------------------------------------


def test_a_bad_certificate_path_is_one_line_and_exit_1(
    tmp_path: Path, cert_files: tuple[str, str]
) -> None:
    cert, key = cert_files
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAG_", "SAPG_"))}
    env["PYTHONPATH"] = str(ROOT)
    for args in (
        ["--ssl-certfile", str(tmp_path / "missing.pem"), "--ssl-keyfile", key],
        ["--ssl-certfile", cert, "--ssl-keyfile", cert],  # no key in it
        ["--ssl-keyfile", key],  # a key without a certificate
    ):
        done = subprocess.run(
            [sys.executable, "-m", "transports.cli", "serve", "--port", "0", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sapg: error: "), done.stderr


def test_an_encrypted_key_needs_its_password(ca: trustme.CA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    issued = ca.issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"sesame"),
    )
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_path.write_bytes(issued.cert_chain_pems[0].bytes())
    key_path.write_bytes(encrypted)
    context = tls_context(str(cert_path), str(key_path), "sesame")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="cannot load the TLS certificate and key"):
        tls_context(str(cert_path), str(key_path), "wrong")
    with pytest.raises(ValueError, match=r"cannot read the TLS certificate .*nope\.pem"):
        tls_context(str(tmp_path / "nope.pem"))
