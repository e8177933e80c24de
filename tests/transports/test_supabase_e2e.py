"""Supabase passwordless login over real sockets against a fake Supabase Auth (GoTrue) server.

The fake server runs in a thread on a loopback port, answers as GoTrue answers, and checks every
call it receives: the method, the path under ``/auth/v1``, the ``apikey``/``Authorization``
headers carrying the service-role key, the content type and the exact JSON body.

Two ways in: the in-process tests drive the real :class:`Gateway` with the trio driver (which
already carries out ``ReadBody`` and ``SendHTTP``); the ``sapg serve`` test runs the CLI in a
subprocess and needs the CLI to pass the process environment to the gateway.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from sapg_core import Gateway, compile_config
from transports.trio_driver import serve

from .conftest import stop_gateway

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

KEY = "service-role-key-e2e"
SECRET = "secret-123"

CONFIG = {
    "authorizer": {
        "type": "supabase",
        "jwt_secret": "$env.SUPABASE_JWT_SECRET",
        "issuer": "https://issuer.example.com",
        "audience": "authenticated",
    },
    "paths": [
        {
            "method": "POST",
            "path": "/auth/otp",
            "integration": {"type": "supabase_passwordless_auth"},
        },
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
        {"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}},
    ],
}

SESSION = {
    "access_token": "at-1",
    "token_type": "bearer",
    "expires_in": 3600,
    "expires_at": 1900000000,
    "refresh_token": "rt-1",
    "user": {"id": "u-1", "email": "test@example.com"},
}


class FakeGoTrue:
    """GoTrue's ``/otp``, ``/verify`` and ``/signup``, checking each call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []
        self.problems: list[str] = []
        gotrue = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, answer = gotrue.answer(self.path, dict(self.headers.items()), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("x-supabase-api-version", "2024-01-01")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        lower = {k.lower(): v for k, v in headers.items()}
        self.check(lower.get("apikey") == KEY, f"{path}: apikey {lower.get('apikey')!r}")
        self.check(lower.get("authorization") == f"Bearer {KEY}", f"{path}: authorization")
        self.check(
            lower.get("content-type") == "application/json;charset=UTF-8", f"{path}: content-type"
        )
        self.check(lower.get("x-supabase-api-version") == "2024-01-01", f"{path}: api version")
        try:
            sent = json.loads(body)
        except ValueError:
            self.problems.append(f"{path}: body is not JSON: {body!r}")
            return 400, {"msg": "bad json"}
        self.calls.append((path, sent))
        return self.route(path, sent)

    def route(self, path: str, sent: dict[str, Any]) -> tuple[int, object]:
        if path == "/auth/v1/otp" and "email" in sent:
            self.check(
                list(sent)
                == [
                    "email",
                    "data",
                    "create_user",
                    "gotrue_meta_security",
                    "code_challenge",
                    "code_challenge_method",
                ],
                f"otp email body keys {list(sent)}",
            )
            if sent["email"] == "blocked@example.com":
                return 429, {
                    "code": "over_email_send_rate_limit",
                    "msg": "Email rate limit exceeded",
                }
            return 200, {}
        if path == "/auth/v1/otp":
            self.check(sent.get("channel") == "sms", "otp sms channel")
            if sent["phone"] == "+10000000000":
                return 400, {"code": "validation_failed", "msg": "invalid phone"}
            return 200, {"message_id": "msg-1"}
        if path == "/auth/v1/verify":
            self.check(sent.get("gotrue_meta_security") == {}, "verify meta")
            if sent.get("token") != "123456":
                return 403, {"code": "otp_expired", "msg": "Token has expired or is invalid"}
            return 200, SESSION
        if path == "/auth/v1/signup":
            self.check(sent.get("data") == {"otp_only": True}, "signup data")
            if sent["email"] == "known@example.com":
                return 422, {"code": "user_already_exists", "msg": "User already registered"}
            return 200, {"id": "u-2", "email": sent["email"]}
        self.problems.append(f"unexpected call {path}")
        return 404, {"msg": "not found"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gotrue() -> Iterator[FakeGoTrue]:
    server = FakeGoTrue()
    yield server
    server.close()
    assert server.problems == []


def request(
    port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = (
            body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        )
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def in_process(env: dict[str, str], exchanges: list[tuple[str, str, object, int, object]]) -> None:
    """Serve CONFIG on the trio driver with ``Gateway(env=env)``; check each exchange."""
    result = compile_config(CONFIG, env={"SUPABASE_JWT_SECRET": SECRET})
    gateway = Gateway(result.config, env=env)

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(
                lambda task_status: serve(
                    host="127.0.0.1",
                    port=0,
                    gateway=gateway,
                    shutdown=shutdown,
                    grace=1,
                    task_status=task_status,
                )
            )
            for method, path, body, status, expected in exchanges:
                got_status, headers, got = await trio.to_thread.run_sync(
                    request, port, method, path, body
                )
                assert (got_status, json.loads(got)) == (status, expected), (path, body)
                assert headers["content-type"] == "application/json"
                assert headers["x-powered-by"] == "sapg"
            shutdown.set()

    trio.run(main)


def test_the_three_integrations_against_gotrue(gotrue: FakeGoTrue) -> None:
    env = {"SUPABASE_URL": gotrue.url, "SUPABASE_SERVICE_ROLE_KEY": KEY}
    email_sent = {
        "message": "Email OTP sent successfully",
        "note": "Check your email for a 6-digit verification code (not a link)",
        "debug": "If you received a magic link, check your Supabase project Auth settings",
    }
    alt = {
        "message": "Alternative OTP method attempted",
        "note": "Check your email for verification code",
    }
    in_process(
        env,
        [
            ("POST", "/auth/otp", {"email": "test@example.com"}, 200, email_sent),
            (
                "POST",
                "/auth/otp",
                {"email": "blocked@example.com"},
                400,
                {
                    "error": "Failed to send OTP: Supabase OTP Error: Email rate limit exceeded",
                    "code": "SUPABASE_OTP_SEND_FAILED",
                },
            ),
            (
                "POST",
                "/auth/otp",
                {"phone": "+12025550100"},
                200,
                {
                    "message": "SMS OTP sent successfully",
                    "note": "Check your phone for a 6-digit verification code",
                },
            ),
            (
                "POST",
                "/auth/otp",
                {"phone": "+10000000000"},
                400,
                {"error": "Phone OTP Error: invalid phone", "code": "SUPABASE_OTP_SEND_FAILED"},
            ),
            (
                "POST",
                "/auth/verify",
                {"email": "test@example.com", "token": "123456"},
                200,
                SESSION,
            ),
            (
                "POST",
                "/auth/verify",
                {"email": "test@example.com", "token": "000000"},
                401,
                {
                    "error": "OTP Verification Error: Token has expired or is invalid",
                    "code": "SUPABASE_OTP_VERIFY_FAILED",
                },
            ),
            ("POST", "/auth/otp-alt", {"email": "new@example.com"}, 200, alt),
            ("POST", "/auth/otp-alt", {"email": "known@example.com"}, 200, alt),
            (
                "POST",
                "/auth/otp",
                b"not json",
                400,
                {"error": "Invalid JSON body", "code": "INVALID_JSON_BODY"},
            ),
            (
                "POST",
                "/auth/otp",
                {},
                400,
                {"error": "Missing email or phone", "code": "missing_email_or_phone"},
            ),
        ],
    )
    paths = [path for path, _ in gotrue.calls]
    assert paths == [
        "/auth/v1/otp",
        "/auth/v1/otp",
        "/auth/v1/otp",
        "/auth/v1/otp",
        "/auth/v1/verify",
        "/auth/v1/verify",
        "/auth/v1/signup",
        "/auth/v1/signup",
    ]  # and never /admin/generate_link
    passwords = [sent["password"] for path, sent in gotrue.calls if path.endswith("/signup")]
    assert len(set(passwords)) == 2  # a fresh random password per request


def test_missing_environment_and_an_unreachable_gotrue(gotrue: FakeGoTrue) -> None:
    in_process(
        {},
        [
            (
                "POST",
                "/auth/otp",
                {"email": "a@b.c"},
                500,
                {
                    "error": "Supabase environment is not configured.",
                    "code": "SUPABASE_ENV_MISSING",
                },
            )
        ],
    )
    closed = FakeGoTrue()
    url = closed.url
    closed.close()
    in_process(
        {"SUPABASE_URL": url, "SUPABASE_SERVICE_ROLE_KEY": KEY},
        [
            (
                "POST",
                "/auth/otp",
                {"email": "a@b.c"},
                502,
                {
                    "error": "Failed to send OTP: Supabase OTP Error: fetch failed",
                    "code": "SUPABASE_OTP_SEND_FAILED",
                },
            )
        ],
    )


def test_sapg_serve_reads_the_supabase_environment(gotrue: FakeGoTrue, serve: Any) -> None:
    gateway = serve(
        CONFIG,
        env={
            "SUPABASE_URL": gotrue.url,
            "SUPABASE_SERVICE_ROLE_KEY": KEY,
            "SUPABASE_JWT_SECRET": SECRET,
        },
    )
    try:
        status, _, body = gateway.request(
            "POST",
            "/auth/verify",
            body=json.dumps({"email": "test@example.com", "token": "123456"}).encode(),
            headers={"content-type": "application/json"},
        )
        assert (status, json.loads(body)) == (200, SESSION)
        status, _, _ = gateway.request("GET", "/private")
        assert status == 401
    finally:
        stop_gateway(gateway)


def test_the_supabase_doc_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from .test_services_calls import doc_blocks

    files, [program], [output] = doc_blocks("supabase.md")
    assert files == {}
    exec(compile(program, "docs/supabase.md", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out == output


def test_an_oversized_gotrue_answer_is_its_unreachable_answer() -> None:
    """A 20 MB GoTrue answer is read to the 4 MiB cap, then answered as GoTrue unreachable
    (supabase-js's ``fetch failed``), as a refused connection is."""

    class Huge(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            piece = b" " * 65536
            try:
                for _ in range(320):  # 20 MiB, chunked: no length to refuse up front
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:  # the gateway stopped reading, as it should
                self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        in_process(
            {
                "SUPABASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
                "SUPABASE_SERVICE_ROLE_KEY": KEY,
            },
            [
                (
                    "POST",
                    "/auth/otp",
                    {"email": "a@b.c"},
                    502,
                    {
                        "error": "Failed to send OTP: Supabase OTP Error: fetch failed",
                        "code": "SUPABASE_OTP_SEND_FAILED",
                    },
                )
            ],
        )
    finally:
        server.shutdown()
        server.server_close()
