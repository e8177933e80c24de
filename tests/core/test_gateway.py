"""The request pipeline, events in and actions out (UPSTREAM.md §13, this issue's scope).

No sockets: every test builds a gateway from a config dict, feeds events and
compares the actions that come back.
"""

from __future__ import annotations

import pytest

from sapg_core import (
    ActionFailed,
    FailureReason,
    ForwardUpstream,
    IllegalTransition,
    Log,
    RelayResponse,
    RequestAborted,
    Respond,
    UpstreamResponded,
)

from .helpers import NOW, body_json, final, header, hs_token, make_gateway, receive, respond

POWERED = "sapg"

# -- 13.1 routing, static responses, placeholders ----------------------------


def test_1_unknown_path_is_404_json() -> None:
    gw = make_gateway({"paths": [{"method": "GET", "path": "/ok", "response": {"status": "ok"}}]})
    answer = respond(gw, "GET", "/missing")
    assert answer.status == 404
    assert answer.body == b'{"message":"No match found."}'
    assert header(answer, "content-type") == "application/json"
    assert header(answer, "x-powered-by") == POWERED


def test_2_static_object() -> None:
    gw = make_gateway(
        {"paths": [{"method": "GET", "path": "/ok", "response": {"status": "healthy"}}]}
    )
    answer = respond(gw, "GET", "/ok")
    assert (answer.status, answer.body) == (200, b'{"status":"healthy"}')
    assert header(answer, "content-type") == "application/json"
    assert header(answer, "x-powered-by") == POWERED


ITEMS = {
    "paths": [
        {"method": "GET", "path": "/items/{.+}", "response": {"variant": "wildcard"}},
        {"method": "GET", "path": "/items/{id}", "response": {"variant": "parameterized"}},
        {"method": "GET", "path": "/items/special", "response": {"variant": "exact"}},
    ]
}


@pytest.mark.parametrize(
    ("config", "method", "target", "status", "body"),
    [
        (ITEMS, "GET", "/items/special", 200, {"variant": "exact"}),  # 3
        (ITEMS, "GET", "/items/42", 200, {"variant": "wildcard"}),  # 4: upstream quirk kept
        (
            {
                "paths": [
                    {"method": "ANY", "path": "/method", "response": {"variant": "any"}},
                    {"method": "GET", "path": "/method", "response": {"variant": "get"}},
                ]
            },
            "GET",
            "/method",
            200,
            {"variant": "get"},
        ),  # 5
        (
            {
                "paths": [
                    {"method": "ANY", "path": "/method", "response": {"variant": "any"}},
                    {"method": "GET", "path": "/method", "response": {"variant": "get"}},
                ]
            },
            "POST",
            "/method",
            200,
            {"variant": "any"},
        ),  # 5
        (
            {"paths": [{"method": "GET", "path": "/v1/health", "response": {}}]},
            "POST",
            "/v1/health",
            404,
            {"message": "No match found."},
        ),  # 6: no 405
        (
            {"paths": [{"method": "GET", "path": "/v1/items", "response": {}}]},
            "GET",
            "/v1/items/",
            404,
            {"message": "No match found."},
        ),  # 7
        (
            {"paths": [{"method": "GET", "path": "/v1/files/{.+}", "response": {"w": 1}}]},
            "GET",
            "/v1/files",
            200,
            {"w": 1},
        ),  # 8
        (
            {
                "paths": [
                    {"method": "ANY", "path": "/{.+}", "response": {"r": "root"}},
                    {"method": "ANY", "path": "/a/{.+}", "response": {"r": "a"}},
                ]
            },
            "GET",
            "/a",
            200,
            {"r": "root"},
        ),  # 9
        (
            {
                "paths": [
                    {"method": "ANY", "path": "/{.+}", "response": {"r": "root"}},
                    {"method": "ANY", "path": "/a/{.+}", "response": {"r": "a"}},
                ]
            },
            "GET",
            "/a/b/c",
            200,
            {"r": "a"},
        ),  # 9
        (
            {"paths": [{"method": "GET", "path": "/a/{.+}/c", "response": {"m": 1}}]},
            "GET",
            "/a/x/zzz",
            200,
            {"m": 1},
        ),  # 10
        (
            {
                "paths": [
                    {
                        "method": "GET",
                        "path": "/x",
                        "integration": {"type": "no_such_type"},
                        "response": {"a": 1},
                    }
                ]
            },
            "GET",
            "/x",
            200,
            {"a": 1},
        ),  # 13
    ],
)
def test_routing_cases(
    config: dict[str, object], method: str, target: str, status: int, body: object
) -> None:
    answer = respond(make_gateway(config), method, target)
    assert answer.status == status
    assert body_json(answer) == body


def test_11_string_response_is_json_quoted() -> None:
    gw = make_gateway({"paths": [{"method": "GET", "path": "/s", "response": "string ok"}]})
    assert respond(gw, "GET", "/s").body == b'"string ok"'


def test_12_no_response_no_integration_is_empty_200() -> None:
    answer = respond(make_gateway({"paths": [{"method": "GET", "path": "/n"}]}), "GET", "/n")
    assert (answer.status, answer.body) == (200, b"")
    assert header(answer, "content-type") == "application/json"


def test_numbers_and_unicode_serialise_as_json_stringify() -> None:
    gw = make_gateway(
        {
            "paths": [
                {
                    "method": "GET",
                    "path": "/j",
                    "response": {"n": 1.0, "f": 0.5, "s": "café", "z": None},
                }
            ]
        }
    )
    assert respond(gw, "GET", "/j").body == '{"n":1,"f":0.5,"s":"café","z":null}'.encode()


def test_15_16_placeholders_whole_value_only() -> None:
    config = {
        "paths": [
            {
                "method": "GET",
                "path": "/env",
                "response": {"runtime": "$env.RUNTIME", "v": "$env.MISSING", "w": "x-$env.RUNTIME"},
            }
        ]
    }
    answer = respond(make_gateway(config, env={"RUNTIME": "staging"}), "GET", "/env")
    assert body_json(answer) == {"runtime": "staging", "v": "", "w": "x-$env.RUNTIME"}


def test_unresolved_server_alias_fails_closed() -> None:
    # The original answers 404 here (case 14); we refuse to serve a broken route.
    gw = make_gateway(
        {
            "paths": [
                {
                    "method": "GET",
                    "path": "/p",
                    "integration": {"type": "http_proxy", "server": "missing"},
                }
            ]
        }
    )
    _, actions = receive(gw, "GET", "/p")
    answer = final(actions)
    assert isinstance(answer, Respond)
    assert (answer.status, answer.body) == (500, b'{"message":"Internal server error"}')
    logs = [a for a in actions if isinstance(a, Log)]
    assert logs and "missing" in logs[0].message


def test_percent_encoded_and_dot_segment_paths_route_on_the_normalised_path() -> None:
    gw = make_gateway(
        {
            "paths": [
                {"method": "GET", "path": "/caf%C3%A9", "response": {"ok": 1}},
                {"method": "GET", "path": "/a/b", "response": {"ab": 1}},
            ]
        }
    )
    assert body_json(respond(gw, "GET", "/caf\xc3\xa9")) == {"ok": 1}
    assert body_json(respond(gw, "GET", "/a/x/../b")) == {"ab": 1}


def test_head_matches_only_any_routes() -> None:
    gw = make_gateway(
        {
            "paths": [
                {"method": "GET", "path": "/g", "response": {}},
                {"method": "ANY", "path": "/a", "response": {}},
            ]
        }
    )
    assert respond(gw, "HEAD", "/g").status == 404
    assert respond(gw, "HEAD", "/a").status == 200


def test_methods_are_case_sensitive() -> None:
    gw = make_gateway({"paths": [{"method": "PATCH", "path": "/p", "response": {}}]})
    assert respond(gw, "patch", "/p").status == 404
    assert respond(gw, "PATCH", "/p").status == 200


def test_a_target_that_is_not_a_path_is_400_json() -> None:
    answer = respond(make_gateway({"paths": []}), "OPTIONS", "*")
    assert answer.status == 400
    assert body_json(answer) == {"error": "Malformed request target", "code": "BAD_REQUEST"}


# -- 13.2 CORS ------------------------------------------------------------------

BASE_CORS = {
    "allow_origins": ["https://app.example.com"],
    "allow_methods": ["GET", "POST", "OPTIONS"],
    "allow_headers": ["Authorization", "Content-Type", "X-Refresh-Token"],
    "expose_headers": ["X-Request-Id"],
    "allow_credentials": True,
    "max_age": 600,
}
ORIGIN = ("origin", "https://app.example.com")


def test_17_default_preflight() -> None:
    gw = make_gateway({"cors": BASE_CORS, "paths": [{"method": "GET", "path": "/ok"}]})
    answer = respond(gw, "OPTIONS", "/ok", [ORIGIN])
    assert (answer.status, answer.body) == (204, b"")
    assert header(answer, "content-type") is None
    assert header(answer, "access-control-allow-origin") == "https://app.example.com"
    assert header(answer, "vary") == "Origin"
    assert header(answer, "access-control-allow-methods") == "GET,POST,OPTIONS"
    assert header(answer, "access-control-allow-headers") == (
        "Authorization,Content-Type,X-Refresh-Token"
    )
    assert header(answer, "access-control-expose-headers") == "X-Request-Id"
    assert header(answer, "access-control-allow-credentials") == "true"
    assert header(answer, "access-control-max-age") == "600"
    assert header(answer, "x-powered-by") == POWERED


def test_18_explicit_options_route_wins() -> None:
    gw = make_gateway(
        {
            "cors": BASE_CORS,
            "paths": [
                {"method": "GET", "path": "/ok"},
                {"method": "OPTIONS", "path": "/ok", "response": {"status": "explicit-options"}},
            ],
        }
    )
    answer = respond(gw, "OPTIONS", "/ok", [ORIGIN])
    assert (answer.status, body_json(answer)) == (200, {"status": "explicit-options"})
    assert header(answer, "access-control-allow-origin") == "https://app.example.com"


def test_19_disallowed_origin_preflight() -> None:
    gw = make_gateway({"cors": BASE_CORS, "paths": [{"method": "GET", "path": "/ok"}]})
    answer = respond(gw, "OPTIONS", "/ok", [("origin", "https://evil.example")])
    assert answer.status == 204
    assert header(answer, "access-control-allow-origin") is None
    assert header(answer, "vary") is None
    assert header(answer, "access-control-allow-methods") == "GET,POST,OPTIONS"


def test_20_21_any_is_not_an_options_handler() -> None:
    paths = [{"method": "ANY", "path": "/ok", "response": {"a": 1}}]
    assert (
        respond(make_gateway({"cors": BASE_CORS, "paths": paths}), "OPTIONS", "/ok").status == 204
    )
    answer = respond(make_gateway({"paths": paths}), "OPTIONS", "/ok")
    assert (answer.status, body_json(answer)) == (200, {"a": 1})


def test_22_23_24_origin_rules() -> None:
    def cors(origins: list[str], credentials: bool) -> dict[str, object]:
        return {**BASE_CORS, "allow_origins": origins, "allow_credentials": credentials}

    paths = [{"method": "GET", "path": "/ok", "response": {}}]
    gw = make_gateway({"cors": cors(["https://*.example.org"], True), "paths": paths})
    answer = respond(gw, "GET", "/ok", [("origin", "https://eu.example.org")])
    assert header(answer, "access-control-allow-origin") == "https://eu.example.org"
    gw = make_gateway({"cors": cors(["*"], True), "paths": paths})
    answer = respond(gw, "GET", "/ok", [("origin", "https://mobile.example.net")])
    assert header(answer, "access-control-allow-origin") == "https://mobile.example.net"
    assert header(answer, "vary") == "Origin"
    gw = make_gateway({"cors": cors(["*"], False), "paths": paths})
    answer = respond(gw, "GET", "/ok", [("origin", "https://x.test")])
    assert header(answer, "access-control-allow-origin") == "*"
    assert header(answer, "access-control-allow-credentials") == "false"


def test_25_partial_cors_block_uses_the_originals_defaults() -> None:
    gw = make_gateway(
        {
            "cors": {"allow_origins": ["https://a.test"]},
            "paths": [{"method": "GET", "path": "/ok", "response": {}}],
        }
    )
    answer = respond(gw, "GET", "/ok")
    assert header(answer, "access-control-allow-methods") == ""
    assert header(answer, "access-control-max-age") == "0"
    assert header(answer, "access-control-allow-credentials") == "false"


def test_cors_headers_are_on_404_and_errors_too() -> None:
    gw = make_gateway({"cors": BASE_CORS, "paths": []})
    answer = respond(gw, "GET", "/nothing", [ORIGIN])
    assert answer.status == 404
    assert header(answer, "access-control-allow-origin") == "https://app.example.com"


# -- 13.3 the jwt authorizer ----------------------------------------------------

SECRET = "test-secret"
JWT_CONFIG = {
    "authorizer": {
        "type": "jwt",
        "secret": SECRET,
        "algorithm": "HS256",
        "issuer": "https://issuer.test",
        "audience": "api",
    },
    "paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}],
}
GOOD_CLAIMS = {"iss": "https://issuer.test", "aud": "api", "sub": "user-1", "exp": NOW + 7200}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        (
            [],
            401,
            {"error": "No token provided or token format is invalid.", "code": "AUTH_ERROR"},
        ),  # 27
        (
            [("authorization", "Basic dXNlcjpwYXNz")],
            401,
            {"error": "No token provided or token format is invalid.", "code": "AUTH_ERROR"},
        ),
        (bearer(hs_token(GOOD_CLAIMS, SECRET)), 200, {"ok": True}),  # 28
        (bearer("not-a-jwt"), 401, {"error": "Invalid JWS", "code": "ERR_JWS_INVALID"}),  # 29
        (
            bearer(hs_token(GOOD_CLAIMS, "other")),
            401,
            {
                "error": "Signature verification failed",
                "code": "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
            },
        ),  # 30
        (
            bearer(hs_token({**GOOD_CLAIMS, "exp": NOW - 1}, SECRET)),
            401,
            {"error": "Token has expired.", "code": "ERR_JWT_EXPIRED"},
        ),  # 31
        (
            bearer(hs_token({**GOOD_CLAIMS, "aud": "different-audience"}, SECRET)),
            401,
            {"error": "JWT claim validation failed", "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"},
        ),
        (
            bearer(hs_token({**GOOD_CLAIMS, "nbf": NOW + 3600}, SECRET)),
            401,
            {"error": "JWT claim validation failed", "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"},
        ),
        (
            bearer(hs_token({k: v for k, v in GOOD_CLAIMS.items() if k != "exp"}, SECRET)),
            200,
            {"ok": True},
        ),  # 34: no exp never expires (original behaviour)
        # 34's HS512 half is a deliberate difference: the configured algorithm is honoured.
        (
            bearer(hs_token(GOOD_CLAIMS, SECRET, "HS512")),
            401,
            {"error": "Algorithm not allowed", "code": "ERR_JOSE_ALG_NOT_ALLOWED"},
        ),
    ],
)
def test_jwt_authorizer_answers(headers: list[tuple[str, str]], status: int, body: object) -> None:
    answer = respond(make_gateway(JWT_CONFIG), "GET", "/private", headers)
    assert answer.status == status
    assert body_json(answer) == body
    assert header(answer, "content-type") == "application/json"
    assert header(answer, "x-powered-by") == POWERED


def test_a_cached_token_still_expires() -> None:
    gw = make_gateway(JWT_CONFIG)
    token = hs_token({**GOOD_CLAIMS, "exp": NOW + 10}, SECRET)
    assert respond(gw, "GET", "/private", bearer(token), now=NOW).status == 200
    assert respond(gw, "GET", "/private", bearer(token), now=NOW + 5).status == 200
    late = respond(gw, "GET", "/private", bearer(token), now=NOW + 10)
    assert body_json(late) == {"error": "Token has expired.", "code": "ERR_JWT_EXPIRED"}


def test_35_auth_without_an_authorizer_fails_closed() -> None:
    # The original lets the request through; we refuse (docs/differences.md).
    gw = make_gateway(
        {"paths": [{"method": "GET", "path": "/private", "auth": True, "response": {"ok": True}}]}
    )
    answer = respond(gw, "GET", "/private")
    assert (answer.status, answer.body) == (500, b'{"message":"Internal server error"}')


# -- 13.6 proxy and mapping -----------------------------------------------------


def forward(
    gw: object, method: str, target: str, headers: list[tuple[str, str]] | None = None
) -> tuple[int, ForwardUpstream]:
    request_id, actions = receive(gw, method, target, headers or [])  # type: ignore[arg-type]
    assert len(actions) == 1 and isinstance(actions[0], ForwardUpstream), actions
    return request_id, actions[0]


def test_68_mapping_worked_example() -> None:
    config = {
        "servers": [{"alias": "up", "url": "https://upstream.example.com/base"}],
        "authorizer": {
            "type": "jwt",
            "secret": SECRET,
            "algorithm": "HS256",
            "issuer": "https://issuer.test",
            "audience": "api",
        },
        "variables": {"region": "eu-west-1"},
        "paths": [
            {
                "method": "GET",
                "path": "/proxy/{.+}",
                "auth": True,
                "integration": {"type": "http", "server": "up"},
                "variables": {"api_key": "api-key-1"},
                "mapping": {
                    "headers": {
                        "x-user-id": "$request.jwt.sub",
                        "x-source": "$request.query.source",
                        "x-api-key": "$config.api_key",
                        "x-region": "$config.region",
                    },
                    "query": {"user": "$request.jwt.sub"},
                },
            }
        ],
    }
    token = hs_token({**GOOD_CLAIMS, "sub": "user-123"}, SECRET)
    _, action = forward(make_gateway(config), "GET", "/proxy/orders/7?source=web", bearer(token))
    assert action.url == "https://upstream.example.com/base/orders/7?source=web&user=user-123"
    sent = dict(action.headers)
    assert sent["x-user-id"] == "user-123"
    assert sent["x-source"] == "web"
    assert sent["x-api-key"] == "api-key-1"
    assert sent["x-region"] == "eu-west-1"
    assert sent["authorization"] == f"Bearer {token}"


PROXY = {
    "servers": [{"alias": "backend", "url": "https://backend.example.com"}],
    "cors": BASE_CORS,
    "paths": [
        {
            "method": "ANY",
            "path": "/api/v1/proxy/{.+}",
            "integration": {"type": "http_proxy", "server": "backend"},
        }
    ],
}


def test_69_proxy_forwards_headers_and_body_framing_but_not_hop_by_hop() -> None:
    gw = make_gateway(PROXY)
    _, action = forward(
        gw,
        "POST",
        "/api/v1/proxy/orders/1?x=1",
        [
            ("host", "gateway.test"),
            ("authorization", "Bearer abc"),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("content-length", "3"),
            ("te", "trailers"),
            ("expect", "100-continue"),
            ORIGIN,
        ],
    )
    assert action.method == "POST"
    assert action.url == "https://backend.example.com/orders/1?x=1"
    assert action.headers[:-2] == (
        ("authorization", "Bearer abc"),
        ("cookie", "a=b"),
        ("content-length", "3"),
        ORIGIN,
    )
    # Then the fields the gateway sets on every proxied request (test_forwarded.py).
    assert [name for name, _ in action.headers[-2:]] == ["x-forwarded-proto", "x-request-id"]
    assert action.connect_timeout == 5.0
    assert action.read_timeout == 30.0


def test_proxy_relays_the_upstream_answer_decorated() -> None:
    gw = make_gateway(PROXY)
    request_id, _ = forward(gw, "GET", "/api/v1/proxy/x", [ORIGIN])
    actions = gw.handle(
        UpstreamResponded(
            request_id=request_id,
            status=201,
            now=NOW,
            headers=(
                ("content-type", "text/plain"),
                ("vary", "Accept-Encoding"),
                ("transfer-encoding", "chunked"),
                ("x-powered-by", "Express"),
                ("content-length", "5"),
            ),
        )
    )
    assert len(actions) == 1
    relay = actions[0]
    assert isinstance(relay, RelayResponse)
    assert relay.status == 201
    assert header(relay, "content-type") == "text/plain"
    assert header(relay, "content-length") == "5"
    assert header(relay, "transfer-encoding") is None
    assert header(relay, "vary") == "Origin"  # case 26: upstream Vary is overwritten
    assert header(relay, "x-powered-by") == POWERED
    assert gw.pending_count == 0


@pytest.mark.parametrize(
    ("reason", "status", "code"),
    [
        (FailureReason.CONNECT, 502, "UPSTREAM_UNREACHABLE"),
        (FailureReason.RESET, 502, "UPSTREAM_CONNECTION_ERROR"),
        (FailureReason.TLS, 502, "UPSTREAM_TLS_ERROR"),
        (FailureReason.TIMEOUT, 504, "UPSTREAM_TIMEOUT"),
        (FailureReason.BODY_TOO_LARGE, 413, "BODY_TOO_LARGE"),
    ],
)
def test_upstream_failures_are_json_with_cors(
    reason: FailureReason, status: int, code: str
) -> None:
    gw = make_gateway(PROXY)
    request_id, _ = forward(gw, "GET", "/api/v1/proxy/x", [ORIGIN])
    actions = gw.handle(ActionFailed(request_id=request_id, reason=reason, detail="boom", now=NOW))
    answer = final(actions)
    assert isinstance(answer, Respond)
    assert answer.status == status
    assert body_json(answer)["code"] == code  # type: ignore[index]
    assert header(answer, "access-control-allow-origin") == "https://app.example.com"
    assert header(answer, "x-powered-by") == POWERED


def test_events_nobody_asked_for_are_illegal_and_change_nothing() -> None:
    gw = make_gateway(PROXY)
    with pytest.raises(IllegalTransition):
        gw.handle(UpstreamResponded(request_id=999, status=200, headers=(), now=NOW))
    request_id, _ = forward(gw, "GET", "/api/v1/proxy/x")
    from sapg_core import BodyReceived

    with pytest.raises(IllegalTransition):
        gw.handle(BodyReceived(request_id=request_id, body=b"", now=NOW))
    assert gw.pending_count == 1  # still waiting for the upstream
    assert gw.handle(RequestAborted(request_id=request_id, now=NOW)) == []
    assert gw.pending_count == 0


def test_same_events_give_same_actions() -> None:
    def run() -> list[object]:
        gw = make_gateway(PROXY)
        out: list[object] = []
        for target in ("/api/v1/proxy/a", "/nope", "/api/v1/proxy/b"):
            _, actions = receive(gw, "GET", target)
            out.extend(actions)
        return [type(a).__name__ + repr(getattr(a, "url", getattr(a, "body", None))) for a in out]

    assert run() == run()


def test_standard_methods_are_upper_cased_as_fetch_does() -> None:
    gw = make_gateway(
        {
            "paths": [
                {"method": "GET", "path": "/g", "response": {}},
                {"method": "PATCH", "path": "/p", "response": {}},
            ]
        }
    )
    assert respond(gw, "get", "/g").status == 200
    assert respond(gw, "patch", "/p").status == 404  # Fetch leaves non-standard names alone


def test_a_guarded_route_never_runs_without_its_hook() -> None:
    gw = make_gateway(
        {
            "servers": [{"alias": "up", "url": "https://up.test"}],
            "serviceBindings": [{"alias": "guard", "binding": "GUARD"}],
            "paths": [
                {
                    "method": "GET",
                    "path": "/p",
                    "integration": {"type": "http_proxy", "server": "up"},
                    "pre_process": {"binding": "guard", "function": "check"},
                }
            ],
        }
    )
    # The hook runs first (a CallService); the upstream is not asked before it answers.
    from sapg_core import CallService

    _, actions = receive(gw, "GET", "/p")
    assert len(actions) == 1 and isinstance(actions[0], CallService)
    assert actions[0].function == "check"


def test_decorations_are_per_origin_on_one_gateway() -> None:
    gw = make_gateway({"cors": BASE_CORS, "paths": [{"method": "GET", "path": "/ok"}]})
    for origin, allowed in [("https://app.example.com", True), ("https://evil.example", False),
                            (None, False), ("https://app.example.com", True)]:
        headers = [("origin", origin)] if origin else []
        answer = respond(gw, "GET", "/ok", headers)
        assert header(answer, "access-control-allow-origin") == (origin if allowed else None)
        assert header(answer, "x-powered-by") == POWERED
        assert header(answer, "content-type") == "application/json"


def test_an_upstream_allow_origin_survives_a_disallowed_origin() -> None:
    gw = make_gateway(PROXY)
    request_id, _ = forward(gw, "GET", "/api/v1/proxy/x", [("origin", "https://evil.example")])
    [relay] = gw.handle(UpstreamResponded(request_id=request_id, status=200, now=NOW, headers=(
        ("access-control-allow-origin", "*"), ("x-powered-by", "Express"))))
    assert isinstance(relay, RelayResponse)
    assert header(relay, "access-control-allow-origin") == "*"  # kept, as the original
    assert header(relay, "x-powered-by") == POWERED
    assert relay.route == "ANY /api/v1/proxy/{.+}"
