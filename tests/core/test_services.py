"""Services, service bindings and hooks in the core: CallService out, ServiceReturned in.

Cases 72-77 of UPSTREAM.md §13.6 (with the fail-closed differences), the §8.4 envelope, the
§8.5 hook rules, and what the CallService snapshot holds. No sockets, no threads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from sapg_core import (
    Action,
    ActionFailed,
    BodyReceived,
    CallService,
    FailureReason,
    ForwardUpstream,
    Gateway,
    IllegalTransition,
    Log,
    ReadBody,
    RelayResponse,
    RequestReceived,
    Respond,
    ServiceKind,
    ServiceResultKind,
    ServiceReturned,
    ServiceStage,
    UpstreamResponded,
    envelope,
)
from sapg_core._flow import Flow, FlowContext
from sapg_core._gateway import INTEGRATIONS
from sapg_core._services import post_process, response_status

from .helpers import NOW, body_json, final, header, hs_token, make_gateway, receive

POWERED = "sapg"
JSON_TYPE = ("content-type", "application/json")

BINDINGS = [
    {"alias": "guard", "binding": "GUARD_SERVICE"},
    {"alias": "target", "binding": "TARGET"},
]


def returned(request_id: int, value: object = None, **fields: object) -> ServiceReturned:
    """A ServiceReturned: a JSON value (``value``), or the fields given."""
    if not fields:
        fields = {"kind": ServiceResultKind.JSON, "value": json.dumps(value)}
    return ServiceReturned(request_id=request_id, now=NOW, **fields)  # type: ignore[arg-type]


def response_result(
    request_id: int, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> ServiceReturned:
    return ServiceReturned(
        request_id=request_id,
        kind=ServiceResultKind.RESPONSE,
        status=status,
        headers=tuple(headers),
        body=body,
        now=NOW,
    )


def only_call(actions: list[Action]) -> CallService:
    calls = [a for a in actions if isinstance(a, CallService)]
    assert len(calls) == 1 and len(actions) == 1, actions
    return calls[0]


def answer_of(actions: list[Action]) -> Respond:
    answer = final(actions)
    assert isinstance(answer, Respond), answer
    return answer


# --- §13.6 cases 72-77 ------------------------------------------------------------------------

GUARDED_PROXY = {
    "servers": [{"alias": "up", "url": "https://upstream.test/base"}],
    "serviceBindings": [{"alias": "guard", "binding": "GUARD_SERVICE"}],
    "paths": [
        {
            "method": "GET",
            "path": "/p",
            "integration": {"type": "http_proxy", "server": "up"},
            "pre_process": {"binding": "guard", "function": "check"},
        }
    ],
}


def test_case_72_a_hook_response_stops_the_request_and_the_upstream_is_not_called() -> None:
    gw = make_gateway(GUARDED_PROXY)
    rid, actions = receive(gw, "GET", "/p")
    call = only_call(actions)
    assert (call.kind, call.target, call.function, call.stage) == (
        ServiceKind.BINDING,
        "GUARD_SERVICE",
        "check",
        ServiceStage.PRE_PROCESS,
    )
    actions = gw.handle(response_result(rid, 403, b'{"blocked":true}', [JSON_TYPE]))
    answer = answer_of(actions)
    assert not any(isinstance(a, ForwardUpstream) for a in actions)
    assert (answer.status, answer.body) == (403, b'{"blocked":true}')
    assert header(answer, "content-type") == "application/json"
    assert header(answer, "x-powered-by") == POWERED


def test_case_72_a_hook_returning_true_lets_the_upstream_answer() -> None:
    gw = make_gateway(GUARDED_PROXY)
    rid, _ = receive(gw, "GET", "/p")
    [forward] = gw.handle(returned(rid, True))
    assert isinstance(forward, ForwardUpstream)
    assert forward.url == "https://upstream.test/base/p"
    assert forward.body is None  # nothing was read: the transport streams as usual
    [relay] = gw.handle(UpstreamResponded(request_id=rid, status=200, headers=(), now=NOW))
    assert isinstance(relay, RelayResponse) and relay.status == 200


ORDERS = {
    "serviceBindings": BINDINGS,
    "paths": [
        {
            "method": "POST",
            "path": "/orders",
            "integration": {"type": "service_binding", "binding": "target", "function": "run"},
            "pre_process": {"binding": "guard", "function": "before"},
        }
    ],
}


def start_order(gw: Gateway, body: bytes = b"{}") -> int:
    rid, actions = receive(gw, "POST", "/orders", [("content-length", str(len(body)))])
    assert actions == [ReadBody(request_id=rid, limit=gw.max_body_bytes)]
    call = only_call(gw.handle(BodyReceived(request_id=rid, body=body, now=NOW)))
    assert (call.stage, call.function, call.request.body) == (
        ServiceStage.PRE_PROCESS,
        "before",
        body,
    )
    return rid


def test_case_73_a_hook_429_means_the_binding_is_never_called() -> None:
    gw = make_gateway(ORDERS)
    rid = start_order(gw)
    actions = gw.handle(response_result(rid, 429, b"slow down", [("content-type", "text/plain")]))
    assert not any(isinstance(a, CallService) for a in actions)
    answer = answer_of(actions)
    assert (answer.status, answer.body) == (429, b"slow down")


def test_case_74_the_hook_says_true_and_the_binding_result_is_enveloped() -> None:
    gw = make_gateway(ORDERS)
    rid = start_order(gw, b'{"item":1}')
    call = only_call(gw.handle(returned(rid, True)))
    assert (call.target, call.function, call.stage) == ("TARGET", "run", ServiceStage.INTEGRATION)
    assert call.request.body == b'{"item":1}'  # the body was read once, both got it
    answer = answer_of(gw.handle(returned(rid, {"orderId": 42})))
    assert answer.status == 200
    assert answer.body == (
        b'{"status":"success","message":"Operation completed successfully.","data":{"orderId":42}}'
    )
    assert header(answer, "content-type") == "application/json"


@pytest.mark.parametrize(
    ("result", "status", "body"),
    [
        (ServiceResultKind.NONE, 400, b""),
        (
            {"error": "boom", "statusCode": 422, "message": "failed"},
            422,
            b'{"status":"error","message":"failed","error":"boom"}',
        ),
    ],
)
def test_case_75_nothing_is_400_and_an_error_object_sets_the_status(
    result: object, status: int, body: bytes
) -> None:
    gw = make_gateway(ORDERS)
    rid = start_order(gw)
    gw.handle(returned(rid, True))
    if result is ServiceResultKind.NONE:
        event = returned(rid, kind=ServiceResultKind.NONE)
    else:
        event = returned(rid, result)
    answer = answer_of(gw.handle(event))
    assert (answer.status, answer.body) == (status, body)
    assert header(answer, "content-type") == "application/json"


def test_case_76_a_service_entrypoint_answers_with_its_own_response() -> None:
    gw = make_gateway(
        {
            "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
            "paths": [
                {
                    "method": "GET",
                    "path": "/service",
                    "integration": {"type": "service", "binding": "endpoint1"},
                }
            ],
        }
    )
    rid, actions = receive(gw, "GET", "/service")
    call = only_call(actions)
    assert (call.kind, call.target, call.alias, call.function) == (
        ServiceKind.SERVICE,
        "./services/endpoint1",
        "endpoint1",
        "fetch",
    )
    answer = answer_of(
        gw.handle(
            response_result(rid, 200, b"Hello from Worker 1!", [("content-type", "text/plain")])
        )
    )
    assert (answer.status, answer.body) == (200, b"Hello from Worker 1!")
    assert header(answer, "content-type") == "text/plain"
    assert header(answer, "x-powered-by") == POWERED


def test_case_77_an_unknown_hook_alias_fails_closed() -> None:
    # The original skips the hook and runs the integration; sapg answers 500 and logs why.
    gw = make_gateway(
        {
            "paths": [
                {
                    "method": "GET",
                    "path": "/x",
                    "response": {"a": 1},
                    "integration": {"type": "no_such_type"},
                    "pre_process": {"binding": "missing", "function": "f"},
                }
            ]
        }
    )
    _, actions = receive(gw, "GET", "/x")
    answer = answer_of(actions)
    assert (answer.status, body_json(answer)) == (500, {"message": "Internal server error"})
    logs = [a for a in actions if isinstance(a, Log)]
    assert logs and "no service binding with alias 'missing'" in logs[0].message


# --- §8.4: generateJsonResponse ---------------------------------------------------------------

SERVICE_ROUTE = {
    "cors": {
        "allow_origins": ["https://app.example.com"],
        "allow_methods": ["GET"],
        "allow_headers": [],
        "expose_headers": [],
        "allow_credentials": False,
        "max_age": 0,
    },
    "serviceBindings": BINDINGS,
    "paths": [
        {
            "method": "GET",
            "path": "/s",
            "integration": {"type": "service_binding", "binding": "target", "function": "run"},
        }
    ],
}

ENVELOPE_CASES = [
    # (value, status, body)
    (None, 200, b""),
    ("plain text", 200, b"plain text"),
    (
        {"orderId": 42},
        200,
        b'{"status":"success","message":"Operation completed successfully.","data":{"orderId":42}}',
    ),
    (
        {"error": "boom", "statusCode": 422, "message": "failed"},
        422,
        b'{"status":"error","message":"failed","error":"boom"}',
    ),
    ({"error": "x"}, 500, b'{"status":"error","message":"An error occurred.","error":"x"}'),
    (
        {"statusCode": 201, "id": 1},
        201,
        b'{"status":"success","message":"Operation completed successfully.","data":{"id":1}}',
    ),
    ({}, 200, b'{"status":"success","message":"Operation completed successfully.","data":{}}'),
    (
        [1, "two"],
        200,
        b'{"status":"success","message":"Operation completed successfully.",'
        b'"data":{"0":1,"1":"two"}}',
    ),
    (
        {"error": 0, "message": "", "x": None},
        200,
        b'{"status":"success","message":"Operation completed successfully.","data":{"x":null}}',
    ),
    (
        {"error": {"field": "name"}, "message": 7},
        500,
        b'{"status":"error","message":7,"error":{"field":"name"}}',
    ),
    (
        {"statusCode": 404, "found": False},
        404,
        b'{"status":"success","message":"Operation completed successfully.",'
        b'"data":{"found":false}}',
    ),
    (
        {"statusCode": "422", "error": True},
        422,
        b'{"status":"error","message":"An error occurred.","error":true}',
    ),
    (5, 400, b""),
    (1.5, 400, b""),
    (True, 400, b""),
    (False, 400, b""),
]


@pytest.mark.parametrize(("value", "status", "body"), ENVELOPE_CASES)
def test_the_envelope_table(value: object, status: int, body: bytes) -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s", [("origin", "https://app.example.com")])
    answer = answer_of(gw.handle(returned(rid, value)))
    assert (answer.status, answer.body) == (status, body)
    assert header(answer, "content-type") == "application/json"
    assert header(answer, "access-control-allow-origin") == "https://app.example.com"
    assert header(answer, "x-powered-by") == POWERED


def test_text_results_are_served_verbatim_as_json_typed() -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s")
    answer = answer_of(gw.handle(returned(rid, kind=ServiceResultKind.TEXT, body=b"\xff raw")))
    assert (answer.status, answer.body) == (200, b"\xff raw")
    assert header(answer, "content-type") == "application/json"


@pytest.mark.parametrize("status_code", [None, 99, 600, 204, 205, 304, "abc", {}, True, 70000])
def test_a_status_code_fetch_refuses_is_a_500(status_code: object) -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s")
    actions = gw.handle(returned(rid, {"statusCode": status_code}))
    answer = answer_of(actions)
    assert (answer.status, body_json(answer)) == (500, {"message": "Internal server error"})
    assert any(isinstance(a, Log) for a in actions)


@pytest.mark.parametrize(
    ("value", "status"),
    [(200, 200), ("201", 201), (422.9, 422), (" 0x1F4 ", 500), ([404], 404), (65736, 200)],
)
def test_status_codes_convert_as_webidl_unsigned_short(value: object, status: int) -> None:
    assert response_status(value, has_body=True) == status


def test_envelope_is_public_and_pure() -> None:
    value = {"statusCode": 201, "message": "made", "id": 1}
    assert envelope(value) == (
        201,
        b'{"status":"success","message":"made","data":{"id":1}}',
    )
    assert value == {"statusCode": 201, "message": "made", "id": 1}  # not mutated


# --- response objects ---------------------------------------------------------------------------


def test_a_response_object_keeps_status_headers_and_body_and_loses_hop_by_hop() -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s", [("origin", "https://app.example.com")])
    headers = [
        ("Content-Type", "text/csv"),
        ("X-Custom", " spaced "),
        ("Connection", "close"),
        ("Transfer-Encoding", "chunked"),
        ("X-Powered-By", "php"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    answer = answer_of(gw.handle(response_result(rid, 201, b"a,b", headers)))
    assert (answer.status, answer.body) == (201, b"a,b")
    names = [name for name, _ in answer.headers]
    assert "connection" not in names and "transfer-encoding" not in names
    assert header(answer, "x-custom") == "spaced"
    assert header(answer, "x-powered-by") == POWERED
    assert [v for k, v in answer.headers if k == "set-cookie"] == ["a=1", "b=2"]
    assert header(answer, "access-control-allow-origin") == "https://app.example.com"


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (99, b"", []),
        (600, b"", []),
        (204, b"x", []),
        (200, b"", [("bad name", "v")]),
        (200, b"", [("x-a", "line\r\nbreak")]),
        (200, b"", [("x-a", "\u20ac")]),
    ],
)
def test_a_response_fetch_would_refuse_is_a_500(
    status: int, body: bytes, headers: list[tuple[str, str]]
) -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s")
    answer = answer_of(gw.handle(response_result(rid, status, body, headers)))
    assert (answer.status, body_json(answer)) == (500, {"message": "Internal server error"})


def test_an_empty_204_is_fine() -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s")
    answer = answer_of(gw.handle(response_result(rid, 204)))
    assert (answer.status, answer.body) == (204, b"")


# --- failures -------------------------------------------------------------------------------------


def test_a_service_that_raises_or_cannot_be_loaded_is_a_logged_500() -> None:
    gw = make_gateway(SERVICE_ROUTE)
    rid, _ = receive(gw, "GET", "/s")
    failure = ActionFailed(
        request_id=rid, reason=FailureReason.SERVICE_ERROR, detail="KeyError: 'x'", now=NOW
    )
    actions = gw.handle(failure)
    answer = answer_of(actions)
    assert (answer.status, body_json(answer)) == (500, {"message": "Internal server error"})
    [log] = [a for a in actions if isinstance(a, Log)]
    assert "binding 'target'" in log.message and "KeyError: 'x'" in log.message
    assert "KeyError" not in answer.body.decode()


def test_a_service_over_its_time_limit_is_a_504() -> None:
    gw = make_gateway(SERVICE_ROUTE, service_timeout=2.5)  # type: ignore[arg-type]
    rid, actions = receive(gw, "GET", "/s")
    assert only_call(actions).timeout == 2.5
    actions = gw.handle(ActionFailed(request_id=rid, reason=FailureReason.TIMEOUT, now=NOW))
    answer = answer_of(actions)
    assert answer.status == 504
    assert body_json(answer) == {"error": "Service timed out", "code": "SERVICE_TIMEOUT"}
    assert header(answer, "x-powered-by") == POWERED


def test_a_result_nobody_asked_for_is_illegal() -> None:
    gw = make_gateway(SERVICE_ROUTE)
    with pytest.raises(IllegalTransition):
        gw.handle(returned(999, True))
    rid, _ = receive(gw, "GET", "/s")
    with pytest.raises(IllegalTransition):
        gw.handle(BodyReceived(request_id=rid, body=b"", now=NOW))
    assert gw.pending_count == 1


# --- §8.5: pre_process ----------------------------------------------------------------------------

GUARDED_STATIC = {
    "serviceBindings": BINDINGS,
    "paths": [
        {
            "method": "GET",
            "path": "/static",
            "response": {"ok": True},
            "pre_process": {"binding": "guard", "function": "check"},
        }
    ],
}


def test_a_static_route_runs_its_hook_too() -> None:
    # The original never runs the hook of a route without integration (fail open).
    gw = make_gateway(GUARDED_STATIC)
    rid, actions = receive(gw, "GET", "/static")
    assert only_call(actions).stage is ServiceStage.PRE_PROCESS
    answer = answer_of(gw.handle(returned(rid, True)))
    assert (answer.status, answer.body) == (200, b'{"ok":true}')
    rid, _ = receive(gw, "GET", "/static")
    answer = answer_of(gw.handle(response_result(rid, 401)))
    assert answer.status == 401


HOOK_CASES = [
    # (the hook's result, status, body, content-type)
    (False, 200, b"", None),
    ({}, 200, b"", None),
    ({"status": 418}, 418, b"", None),
    ({"status": 403, "body": "no"}, 403, b"no", "text/plain;charset=UTF-8"),
    ({"body": {"a": 1}}, 200, b"[object Object]", "text/plain;charset=UTF-8"),
    ({"body": [1, 2], "status": "401"}, 401, b"1,2", "text/plain;charset=UTF-8"),
    (
        {"body": '{"x":1}', "headers": {"Content-Type": "application/json"}},
        200,
        b'{"x":1}',
        "application/json",
    ),
    ({"body": "b", "headers": [["x-a", "1"]]}, 200, b"b", "text/plain;charset=UTF-8"),
    ("a string", 200, b"", None),
    (0, 200, b"", None),
    ([1], 200, b"", None),
]


@pytest.mark.parametrize(("value", "status", "body", "content_type"), HOOK_CASES)
def test_hook_results_are_read_as_the_original_reads_them(
    value: object, status: int, body: bytes, content_type: str | None
) -> None:
    gw = make_gateway(GUARDED_STATIC)
    rid, _ = receive(gw, "GET", "/static")
    answer = answer_of(gw.handle(returned(rid, value)))
    assert (answer.status, answer.body) == (status, body)
    assert header(answer, "content-type") == content_type
    assert header(answer, "x-powered-by") == POWERED


def test_hook_text_results_have_no_response_properties() -> None:
    gw = make_gateway(GUARDED_STATIC)
    rid, _ = receive(gw, "GET", "/static")
    answer = answer_of(gw.handle(returned(rid, kind=ServiceResultKind.TEXT, body=b"hi")))
    assert (answer.status, answer.body, header(answer, "content-type")) == (200, b"", None)


@pytest.mark.parametrize(
    "event_fields",
    [
        {"kind": ServiceResultKind.NONE},
        {"kind": ServiceResultKind.JSON, "value": "null"},
        {"kind": ServiceResultKind.JSON, "value": '{"status": 99}'},
        {"kind": ServiceResultKind.JSON, "value": '{"status": 204, "body": "x"}'},
        {"kind": ServiceResultKind.JSON, "value": '{"headers": "nope"}'},
        {"kind": ServiceResultKind.JSON, "value": '{"headers": {"bad name": "x"}}'},
    ],
)
def test_hook_results_that_throw_in_the_original_are_500(event_fields: dict[str, object]) -> None:
    gw = make_gateway(GUARDED_STATIC)
    rid, _ = receive(gw, "GET", "/static")
    actions = gw.handle(ServiceReturned(request_id=rid, now=NOW, **event_fields))  # type: ignore[arg-type]
    answer = answer_of(actions)
    assert (answer.status, body_json(answer)) == (500, {"message": "Internal server error"})
    assert any(isinstance(a, Log) for a in actions)


def test_a_hook_reads_the_body_once_and_the_proxy_sends_those_bytes() -> None:
    config = json.loads(json.dumps(GUARDED_PROXY))
    config["paths"][0]["method"] = "POST"
    gw = make_gateway(config, max_body_bytes=100)
    rid, actions = receive(gw, "POST", "/p", [("transfer-encoding", "chunked")])
    assert actions == [ReadBody(request_id=rid, limit=100)]
    call = only_call(gw.handle(BodyReceived(request_id=rid, body=b"payload", now=NOW)))
    assert call.request.body == b"payload"
    [forward] = gw.handle(returned(rid, True))
    assert isinstance(forward, ForwardUpstream)
    assert forward.body == b"payload"
    assert forward.body_limit == 100


def test_a_hook_body_over_the_limit_is_a_413() -> None:
    gw = make_gateway(GUARDED_STATIC, max_body_bytes=10)
    rid, actions = receive(gw, "GET", "/static", [("content-length", "50")])
    assert isinstance(actions[0], ReadBody)
    failed = ActionFailed(request_id=rid, reason=FailureReason.BODY_TOO_LARGE, now=NOW)
    answer = answer_of(gw.handle(failed))
    assert answer.status == 413


def test_the_hook_sees_the_verified_claims() -> None:
    config = {
        **GUARDED_STATIC,
        "authorizer": {
            "type": "jwt",
            "secret": "s3cret",
            "algorithm": "HS256",
            "issuer": "iss",
            "audience": "aud",
        },
    }
    config["paths"] = [{**GUARDED_STATIC["paths"][0], "auth": True}]  # type: ignore[index]
    gw = make_gateway(config)
    claims = {"sub": "user-1", "iss": "iss", "aud": "aud", "exp": NOW + 60, "roles": ["a"]}
    token = hs_token(claims, "s3cret")
    _, actions = receive(gw, "GET", "/static", [("authorization", f"Bearer {token}")])
    call = only_call(actions)
    assert call.context.claims is not None
    assert json.loads(call.context.claims) == claims
    _, actions = receive(gw, "GET", "/static")
    assert answer_of(actions).status == 401  # auth runs before the hook


# --- the snapshot ---------------------------------------------------------------------------------


def test_the_call_carries_a_snapshot_of_the_request_and_no_config() -> None:
    gw = make_gateway(
        {
            "serviceBindings": BINDINGS,
            "paths": [
                {
                    "method": "GET",
                    "path": "/users/{id}/posts/{post}",
                    "integration": {
                        "type": "service_binding",
                        "binding": "target",
                        "function": "f",
                    },
                }
            ],
        }
    )
    _, actions = receive(
        gw,
        "GET",
        "/users/7/posts/x%20y?q=a+b&q=2&empty=&flag",
        [("Host", "api.test:8080"), ("X-Multi", "1"), ("X-Multi", "2")],
    )
    call = only_call(actions)
    snapshot = call.request
    assert snapshot.method == "GET"
    assert snapshot.url == "http://api.test:8080/users/7/posts/x%20y?q=a+b&q=2&empty=&flag"
    assert snapshot.path == "/users/7/posts/x%20y"
    assert snapshot.params == (("id", "7"), ("post", "x%20y"))
    assert snapshot.query == (("q", "a b"), ("q", "2"), ("empty", ""), ("flag", ""))
    assert snapshot.headers == (("host", "api.test:8080"), ("x-multi", "1"), ("x-multi", "2"))
    assert snapshot.body == b""
    assert (call.context.route_method, call.context.route_path) == (
        "GET",
        "/users/{id}/posts/{post}",
    )
    assert call.context.claims is None
    hash(call)  # frozen and hashable: recordable


def test_same_events_give_same_actions() -> None:
    def run() -> list[Action]:
        gw = make_gateway(ORDERS)
        start = RequestReceived(
            request_id=1,
            method="POST",
            target="/orders",
            headers=(("content-length", "2"),),
            now=NOW,
            entropy=bytes(32),
        )
        out = gw.handle(start)
        out += gw.handle(BodyReceived(request_id=1, body=b"{}", now=NOW))
        out += gw.handle(returned(1, True))
        out += gw.handle(returned(1, {"a": 1}))
        return out

    assert run() == run()


# --- post_process (the auth0_callback seam) -----------------------------------------------------


def post_flow(ctx: FlowContext) -> Flow:
    yield from post_process(ctx, {"sub": "user-9"})
    return ctx.respond_json(200, {"done": True})


@pytest.fixture
def post_gateway() -> object:
    INTEGRATIONS["test_post"] = post_flow
    try:
        yield make_gateway(
            {
                "serviceBindings": BINDINGS,
                "paths": [
                    {
                        "method": "GET",
                        "path": "/cb",
                        "integration": {
                            "type": "test_post",
                            "post_process": {
                                "type": "service_binding",
                                "binding": "guard",
                                "function": "after",
                            },
                        },
                    },
                    {"method": "GET", "path": "/none", "integration": {"type": "test_post"}},
                ],
            }
        )
    finally:
        del INTEGRATIONS["test_post"]


def test_post_process_calls_the_hook_with_the_id_token_claims(post_gateway: Gateway) -> None:
    rid, actions = receive(post_gateway, "GET", "/cb?code=c")
    call = only_call(actions)
    assert (call.stage, call.target, call.function) == (
        ServiceStage.POST_PROCESS,
        "GUARD_SERVICE",
        "after",
    )
    assert json.loads(call.context.claims or "null") == {"sub": "user-9"}
    answer = answer_of(post_gateway.handle(returned(rid, {"ignored": True})))
    assert body_json(answer) == {"done": True}
    rid, _ = receive(post_gateway, "GET", "/cb")
    failed = ActionFailed(request_id=rid, reason=FailureReason.SERVICE_ERROR, now=NOW)
    assert answer_of(post_gateway.handle(failed)).status == 500


def test_no_post_process_means_no_call(post_gateway: Gateway) -> None:
    _, actions = receive(post_gateway, "GET", "/none")
    assert body_json(answer_of(actions)) == {"done": True}
