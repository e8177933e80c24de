"""Services, service bindings and hooks: the core side (UPSTREAM.md §8.2-8.5, §8.7 step 5).

Theory of operation
-------------------
A ``service`` route, a ``service_binding`` route, a ``pre_process`` hook and an
``auth0_callback`` ``post_process`` hook all run Python code. The core never runs it: the
flow yields a :class:`CallService` action with a read-only snapshot of the request
(:class:`ServiceRequest`) and of what the gateway decided (:class:`ServiceContext`: the
matched route and the verified claims, never the config or its secrets). The transport
calls the code and answers :class:`ServiceReturned` (the return value, normalised) or
:class:`ActionFailed` (``SERVICE_ERROR``: it raised or cannot be loaded, 500;
``TIMEOUT``: 504).

What the value becomes depends on who asked:

- **integration** (§8.4, the original's ``generateJsonResponse``), every answer JSON-typed:

  =================================  ===================================================
  returned                           answer
  =================================  ===================================================
  a response object                  its own status, headers and body
  a ``str`` / ``bytes``              200, the text verbatim (not JSON-quoted)
  a ``dict`` or ``list``             the envelope (:func:`envelope`)
  ``None`` (JS ``undefined``)        400, empty body
  a number or ``bool``               400, empty body
  =================================  ===================================================

- **pre_process** (§8.5): exactly ``True`` lets the request go on; a response object is the
  answer; ``None`` is an error (500); a ``dict`` is read as a response the way the original
  reads any non-Response value (its ``status``, ``headers`` and ``body`` keys); anything else
  has none of those properties and answers an empty 200.
- **post_process** (§8.7 step 5): the value is ignored; a failure is the callback's answer.

Request bodies: a hook gets the whole body (bounded by ``max_body_bytes``) and so does the
integration after it; the flow reads it once (``ReadBody``) and carries it on in
:attr:`FlowContext.body`, and ``http_proxy`` then sends those bytes
(``ForwardUpstream.body``) instead of streaming. A request without a body (no
``Content-Length``, no ``Transfer-Encoding``) is not read at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator, Mapping
from typing import Final

import attrs

from ._actions import (
    CallService,
    Respond,
    ServiceContext,
    ServiceKind,
    ServiceRequest,
    ServiceStage,
)
from ._config import _truthy
from ._errors import ConfigDefect, GatewayError, InternalError
from ._events import (
    ActionFailed,
    Event,
    FailureReason,
    Headers,
    ServiceResultKind,
    ServiceReturned,
)
from ._flow import Claims, Flow, FlowContext, Request, Step
from ._json import JSONValue, dumps, js_string, loads
from ._jwt import _utf8
from ._proxy import forwardable
from ._url import form_decode

__all__ = [
    "envelope",
    "has_body",
    "json_response",
    "post_process",
    "request_body",
    "response_status",
    "run_pre_process",
    "service_binding_flow",
    "service_flow",
]

_MISSING: Final = object()
#: Statuses a Fetch ``Response`` with a body refuses (RFC 9110 §6.4.1, §15.3.5/6, §15.4.5).
_NULL_BODY_STATUSES: Final = frozenset({101, 103, 204, 205, 304})
#: RFC 9110 §5.6.2 token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_WHITESPACE: Final = "\t\n\r "
_TEXT_PLAIN: Final = ("content-type", "text/plain;charset=UTF-8")
_JS_DECIMAL: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_JS_RADIX: Final = {"0x": 16, "0o": 8, "0b": 2}


# --- calling ------------------------------------------------------------------------------------


def has_body(request: Request) -> bool:
    """Whether the request carries a body (RFC 9112 §6.3: a length or a transfer coding)."""
    if request.header("transfer-encoding") is not None:
        return True
    length = request.header("content-length")
    if length is None:
        return False
    try:
        return int(length) > 0
    except ValueError:
        return True  # malformed: let the reader say so


def request_body(ctx: FlowContext) -> Generator[Step, Event, bytes]:
    """The request body: as an earlier step read it, ``b""`` when there is none, else read."""
    if ctx.body is not None:
        return ctx.body
    if not has_body(ctx.request):
        return b""
    return (yield from ctx.read_body())


def _snapshot(ctx: FlowContext, body: bytes) -> ServiceRequest:
    request = ctx.request
    event = request.event
    query = f"?{request.query}" if request.query else ""
    host = event.host or request.header("host") or "localhost"
    return ServiceRequest(
        method=request.method,
        url=f"{event.scheme}://{host}{request.path}{query}",
        path=request.path,
        params=ctx.match.params,
        query=tuple(form_decode(request.query)),
        headers=event.headers,
        body=body,
    )


def _plain(value: object) -> object:
    """Claims (read-only mappings, lists) as plain JSON containers."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _context(ctx: FlowContext) -> ServiceContext:
    claims = None
    if ctx.claims is not None:
        claims = dumps(_plain(ctx.claims)).decode("utf-8", "surrogatepass")
    return ServiceContext(route_method=ctx.route.method, route_path=ctx.route.path, claims=claims)


def _call(
    ctx: FlowContext,
    *,
    kind: ServiceKind,
    target: str,
    alias: str,
    function: str,
    stage: ServiceStage,
    body: bytes,
) -> Generator[Step, Event, ServiceReturned]:
    action = CallService(
        request_id=ctx.request.id,
        kind=kind,
        target=target,
        alias=alias,
        function=function,
        stage=stage,
        request=_snapshot(ctx, body),
        context=_context(ctx),
        timeout=ctx.service_timeout,
    )
    outcome = yield action
    if isinstance(outcome, ActionFailed):
        raise _failure(outcome, action)
    assert isinstance(outcome, ServiceReturned)
    return outcome


def _failure(outcome: ActionFailed, action: CallService) -> GatewayError:
    where = (
        f"{action.stage.value} {action.kind.value} {action.alias!r} "
        f"({action.target}, function {action.function!r})"
    )
    if outcome.reason is FailureReason.TIMEOUT:
        return GatewayError(
            "Service timed out",
            status=504,
            code="SERVICE_TIMEOUT",
            log=f"{where}: no answer within {action.timeout:g} s",
        )
    detail = f": {outcome.detail}" if outcome.detail else ""
    return InternalError(f"{where}: {outcome.reason.value}{detail}")


# --- the integrations ---------------------------------------------------------------------------


def service_flow(ctx: FlowContext) -> Flow:
    """``service`` (§8.2): ``services[alias].entrypoint``'s ``fetch(request, env, ctx)``."""
    integration = ctx.route.integration
    assert integration is not None
    entry = ctx.config.services.get(integration.binding or "")
    if entry is None:  # compilation marks the route as a defect; never reached
        raise ConfigDefect(f"no service with alias {integration.binding!r}")
    body = yield from request_body(ctx)
    result = yield from _call(
        ctx,
        kind=ServiceKind.SERVICE,
        target=entry.entrypoint,
        alias=entry.alias,
        function="fetch",
        stage=ServiceStage.INTEGRATION,
        body=body,
    )
    return json_response(ctx, result)


def service_binding_flow(ctx: FlowContext) -> Flow:
    """``service_binding`` (§8.3): ``<binding object>.<function>(request, env, ctx)``."""
    integration = ctx.route.integration
    assert integration is not None
    binding = ctx.config.service_bindings.get(integration.binding or "")
    if binding is None:  # compilation marks the route as a defect; never reached
        raise ConfigDefect(f"no service binding with alias {integration.binding!r}")
    if not integration.function:
        raise ConfigDefect(f"service_binding {binding.alias!r} has no function name")
    body = yield from request_body(ctx)
    result = yield from _call(
        ctx,
        kind=ServiceKind.BINDING,
        target=binding.binding,
        alias=binding.alias,
        function=integration.function,
        stage=ServiceStage.INTEGRATION,
        body=body,
    )
    return json_response(ctx, result)


# --- hooks --------------------------------------------------------------------------------------


def run_pre_process(
    ctx: FlowContext,
) -> Generator[Step, Event, tuple[Respond | None, FlowContext]]:
    """The route's ``pre_process`` hook (§8.5).

    Returns:
        ``(None, ctx)`` to go on (the hook returned exactly ``True``), where ``ctx`` carries
        the body if it had to be read; or ``(answer, ctx)`` to stop with ``answer``.

    Raises:
        GatewayError: the hook failed (500), timed out (504) or returned ``None`` (500).
    """
    assert ctx.route.pre_process is not None
    alias, function = ctx.route.pre_process
    binding = ctx.config.service_bindings.get(alias)
    if binding is None:  # compilation marks the route as a defect; never reached
        raise ConfigDefect(f"pre_process: no service binding with alias {alias!r}")
    body = b""
    if ctx.body is not None or has_body(ctx.request):
        body = yield from request_body(ctx)
        ctx = attrs.evolve(ctx, body=body)
    result = yield from _call(
        ctx,
        kind=ServiceKind.BINDING,
        target=binding.binding,
        alias=alias,
        function=function,
        stage=ServiceStage.PRE_PROCESS,
        body=body,
    )
    return hook_response(ctx, result), ctx


def hook_response(ctx: FlowContext, result: ServiceReturned) -> Respond | None:
    """What a ``pre_process`` result means: None to go on, else the answer."""
    if result.kind is ServiceResultKind.RESPONSE:
        return _service_response(ctx, result.status, result.headers, result.body)
    value: object = _MISSING
    if result.kind is ServiceResultKind.JSON:
        value = loads(result.value)
        if value is True:
            return None
    if result.kind is ServiceResultKind.NONE or value is None:
        # The original reads properties of the value: null/undefined throw there.
        raise InternalError(
            "the pre_process hook returned None: return True to go on, or a response"
        )
    if isinstance(value, dict):
        return _duck_response(ctx, value)
    # false, numbers, strings, arrays: no body/status/headers properties: an empty 200.
    return ctx.respond(200, b"", headers=())


def post_process(ctx: FlowContext, claims: Claims | None) -> Generator[Step, Event, None]:
    """The ``auth0_callback`` route's ``post_process`` hook, if it has one (§8.7 step 5).

    Runs only when ``integration.post_process.type`` is ``"service_binding"``, as in the
    original; ``claims`` (the ID token's) become the hook's ``ctx.claims``. Its return value
    is ignored. The callback flow calls this after the token exchange, before answering.

    Raises:
        GatewayError: the hook failed (500) or timed out (504); the tokens are not sent.
    """
    integration = ctx.route.integration
    hook = integration.raw.get("post_process") if integration is not None else None
    if not isinstance(hook, Mapping) or hook.get("type") != "service_binding":
        return
    alias, function = hook.get("binding"), hook.get("function")
    binding = ctx.config.service_bindings.get(alias) if isinstance(alias, str) else None
    if binding is None or not isinstance(function, str):  # compilation marks these
        raise ConfigDefect(f"post_process: no service binding with alias {alias!r}")
    yield from _call(
        attrs.evolve(ctx, claims=claims),
        kind=ServiceKind.BINDING,
        target=binding.binding,
        alias=binding.alias,
        function=function,
        stage=ServiceStage.POST_PROCESS,
        body=ctx.body or b"",
    )


# --- results as answers (§8.4) -----------------------------------------------------------------


def json_response(ctx: FlowContext, result: ServiceReturned) -> Respond:
    """``generateJsonResponse``: a service's result as the answer (table in the module doc)."""
    kind = result.kind
    if kind is ServiceResultKind.RESPONSE:
        return _service_response(ctx, result.status, result.headers, result.body)
    if kind is ServiceResultKind.TEXT:
        return ctx.respond(200, result.body)
    if kind is ServiceResultKind.NONE:
        return ctx.respond(400)
    value = loads(result.value)
    if value is None:
        return ctx.respond(200)
    if isinstance(value, str):
        return ctx.respond(200, _utf8(value))
    if isinstance(value, dict | list):
        status, body = envelope(value)
        return ctx.respond(status, body)
    return ctx.respond(400)  # numbers and booleans


def envelope(value: dict[str, JSONValue] | list[JSONValue]) -> tuple[int, bytes]:
    """The original's JSON envelope for an object (or array) result: ``(status, body)``.

    ``statusCode``, ``error`` and ``message`` are taken out; the rest is ``data``::

        {"orderId": 42}              -> 200 {"status":"success","message":"Operation completed
                                             successfully.","data":{"orderId":42}}
        {"error": "boom", "statusCode": 422, "message": "failed"}
                                     -> 422 {"status":"error","message":"failed","error":"boom"}

    An array's items become the keys ``"0"``, ``"1"``, ... of ``data``.

    Raises:
        InternalError: ``statusCode`` is not a status a Fetch ``Response`` accepts.
    """
    fields = (
        dict(value) if isinstance(value, dict) else {str(i): item for i, item in enumerate(value)}
    )
    status_code = fields.pop("statusCode", _MISSING)
    error = fields.pop("error", None)
    message = fields.pop("message", None)
    failed = _truthy(error)
    default = "An error occurred." if failed else "Operation completed successfully."
    body: dict[str, object] = {
        "status": "error" if failed else "success",
        "message": message if _truthy(message) else default,
    }
    if failed:
        body["error"] = error
    else:
        body["data"] = fields
    if status_code is _MISSING:
        return (500 if failed else 200), dumps(body)
    return response_status(status_code, has_body=True), dumps(body)


def response_status(value: object, *, has_body: bool) -> int:
    """``value`` as the ``status`` of ``new Response(body, {status})``, or InternalError.

    WebIDL ``unsigned short`` conversion (``"422"`` is 422, ``422.9`` is 422), then Fetch's
    rules: 200-599 only, and 101/103/204/205/304 only without a body.
    """
    number = _to_number(value)
    status = 0 if not math.isfinite(number) else math.trunc(number) % 65536
    if not 200 <= status <= 599 or (has_body and status in _NULL_BODY_STATUSES):
        raise InternalError(f"a service answered with status {_describe(value)}, not usable")
    return status


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _to_number(value: object) -> float:
    """JavaScript ``ToNumber`` for a JSON value."""
    if value is None or isinstance(value, bool):
        return float(bool(value))
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, list):
        return _string_to_number(js_string(value))
    if isinstance(value, str):
        return _string_to_number(value)
    return math.nan


def _string_to_number(text: str) -> float:
    text = text.strip()
    if not text:
        return 0.0
    if text in ("Infinity", "+Infinity", "-Infinity"):
        return -math.inf if text[0] == "-" else math.inf
    radix = _JS_RADIX.get(text[:2].lower())
    if radix is not None:
        try:
            return float(int(text[2:], radix))
        except ValueError:
            return math.nan
    if _JS_DECIMAL.fullmatch(text):
        return float(text)
    return math.nan


def _service_response(ctx: FlowContext, status: int, headers: Headers, body: bytes) -> Respond:
    """A response object from a service, checked as a Fetch ``Response`` would check it."""
    if not 200 <= status <= 599 or (body and status in _NULL_BODY_STATUSES):
        raise InternalError(f"a service answered with status {status}, not usable")
    return ctx.respond(status, body, headers=forwardable(_checked_headers(headers), response=True))


def _checked_headers(headers: Headers) -> Headers:
    """Fetch's header checks: a token name, a value without NUL/CR/LF, Latin-1 only."""
    checked = []
    for name, raw in headers:
        value = raw.strip(_HTTP_WHITESPACE)
        if (
            not _TOKEN.fullmatch(name)
            or any(c in value for c in "\0\r\n")
            or any(ord(c) > 0xFF for c in value)
        ):
            raise InternalError(f"a service answered with an invalid header {name[:40]!r}")
        checked.append((name.lower(), value))
    return tuple(checked)


def _duck_response(ctx: FlowContext, value: Mapping[str, JSONValue]) -> Respond:
    """``new Response(v.body, {status: v.status, headers: v.headers})`` for a plain object."""
    raw_body = value.get("body")
    body = None if raw_body is None else _utf8(js_string(raw_body))
    status = 200 if "status" not in value else response_status(value["status"], has_body=False)
    if body is not None and status in _NULL_BODY_STATUSES:
        raise InternalError(f"a pre_process hook answered status {status} with a body")
    headers = _checked_headers(_header_pairs(value.get("headers", _MISSING)))
    if body is not None and not any(name == "content-type" for name, _ in headers):
        headers = (*headers, _TEXT_PLAIN)  # Fetch adds it for a string body
    return ctx.respond(status, body or b"", headers=headers)


def _header_pairs(value: object) -> Headers:
    """``new Headers(value)``: a record or a sequence of pairs (else TypeError: 500)."""
    if value is _MISSING:
        return ()
    if isinstance(value, dict):
        return tuple((str(name), js_string(item)) for name, item in value.items())
    if isinstance(value, list) and all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        return tuple((js_string(pair[0]), js_string(pair[1])) for pair in value)
    raise InternalError("a pre_process hook answered headers that are neither a record nor pairs")
