"""Fixtures for black-box tests: a real `sapg serve` process and real upstream servers."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import trustme

READY = re.compile(r"sapg: listening on http://([^ ]+):(\d+) \(transport=(\w+)\)")


class Gateway:
    """A running ``sapg serve`` subprocess."""

    def __init__(self, process: subprocess.Popen[str], host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.stderr_lines: list[str] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()


def start_gateway(
    args: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 20.0
) -> Gateway:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SAG_")}
    full_env.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "transports.cli", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = READY.search(line)
        if found:
            gateway = Gateway(process, found.group(1), int(found.group(2)))
            gateway.stderr_lines = lines
            # keep draining stderr so the server never blocks on a full pipe
            threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
            return gateway
    process.kill()
    raise AssertionError("sapg serve did not become ready:\n" + "".join(lines))


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)


def stop_gateway(gateway: Gateway) -> int:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
    try:
        return gateway.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        raise


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """``serve(config_dict, env=..., args=[...])`` starts a gateway; all are stopped after."""
    started: list[Gateway] = []

    def _serve(
        config: object | None = None,
        *,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
    ) -> Gateway:
        extra = list(args or [])
        if config is not None:
            path = tmp_path / f"config-{len(started)}.json"
            path.write_text(json.dumps(config))
            extra = ["--config", str(path), *extra]
        gateway = start_gateway(extra, env=env)
        started.append(gateway)
        return gateway

    yield _serve
    for gateway in started:
        stop_gateway(gateway)


class Recorded:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body


class Upstream:
    """A real HTTP(S) upstream in a thread that records what it receives.

    ``/slow`` sleeps before answering; everything else answers 200 with a JSON
    echo of the request (method, path, body length) and an upstream header.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[Recorded] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                else:
                    body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                upstream.requests.append(Recorded(self.command, self.path, headers, body))
                if "/slow" in self.path:
                    time.sleep(3)
                payload = json.dumps(
                    {"method": self.command, "path": self.path, "length": len(body)}
                ).encode()
                self.send_response(201 if "/created" in self.path else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("x-upstream", "yes")
                self.send_header("vary", "Accept-Encoding")
                self.end_headers()
                self.wfile.write(payload)

            def _read_chunked(self) -> bytes:
                data = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{'localhost' if ssl_context else '127.0.0.1'}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca: trustme.CA) -> Iterator[Upstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server = Upstream(context)
    yield server
    server.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def json_body(body: bytes) -> object:
    return json.loads(body)
