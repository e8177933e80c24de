"""The gateway state machine: events in, actions out.

Theory of operation
-------------------
Each request is a *flow*: a generator that runs the pipeline of the original
gateway in order (CORS preflight, route match, authorizer, pre_process hook,
integration, response decoration) and yields an action whenever it needs the
world (forward upstream, read the body, call Auth0). :meth:`Gateway.handle`
starts a flow on :class:`RequestReceived`, sends the outcome event of the
pending action back into it, and returns the actions it produced. A flow ends
by returning its final action (:class:`Respond` or :class:`RelayResponse`).

Errors are values: deep code raises :class:`GatewayError`; :meth:`_run` is
the one place that turns them into responses (with CORS and X-Powered-By).
An event for a request that has no pending action, or of a type the pending
action cannot produce, raises :class:`IllegalTransition` and changes nothing.

The gateway is deterministic: its output depends only on the config and
the ordered events fed in (time and entropy are event fields), which is what
makes record/replay possible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from ._actions import (
    Action,
    ForwardUpstream,
    Log,
    LogLevel,
    ReadBody,
    Respond,
    SendHTTP,
)
from ._auth import build_authenticator
from ._cors import CorsPolicy
from ._errors import (
    ConfigDefect,
    GatewayError,
    IllegalTransition,
    InternalError,
    NoRouteMatched,
)
from ._events import (
    ActionFailed,
    BodyReceived,
    Event,
    Headers,
    HTTPResponseReceived,
    RequestAborted,
    RequestReceived,
    UpstreamResponded,
)
from ._flow import JSON_HEADERS, Flow, FlowContext, Request, Shared, Step, normalise_method
from ._model import Diagnostic, GatewayConfig, Severity
from ._proxy import proxy_flow
from ._routing import RouteTable
from ._url import BadTarget, split_target

__all__ = ["INTEGRATIONS", "POWERED_BY", "Gateway", "unavailable_features"]

#: The value of ``X-Powered-By`` on every answer that passes the pipeline.
POWERED_BY: Final = "sapg"

#: Integration flows by ``integration.type``. A route with no integration, or
#: one whose type is not the original's, serves its static ``response``.
INTEGRATIONS: Final[dict[str, Callable[[FlowContext], Flow]]] = {
    "http_proxy": proxy_flow,
}

#: Integration types of the original schema that this version does not carry
#: out yet. They answer 501 rather than pretend (see docs/differences.md).
UNIMPLEMENTED_INTEGRATIONS: Final = frozenset(
    {
        "service",
        "service_binding",
        "auth0_callback",
        "auth0_userinfo",
        "auth0_callback_redirect",
        "auth0_refresh",
        "supabase_passwordless_auth",
        "supabase_passwordless_verify",
        "supabase_passwordless_auth_alt",
    }
)

# Which events may answer which pending action.
_ANSWERS: Final[dict[type[Action], tuple[type[Event], ...]]] = {
    ForwardUpstream: (UpstreamResponded, ActionFailed),
    ReadBody: (BodyReceived, ActionFailed),
    SendHTTP: (HTTPResponseReceived, ActionFailed),
}


@attrs.define
class _Pending:
    """A flow waiting for the outcome of ``action``."""

    request: Request
    flow: Flow
    action: Action
    shared_key: str | None = None


@attrs.define
class _Parked:
    """A flow waiting for a :class:`Shared` action another flow started."""

    request: Request
    flow: Flow


def _set_headers(headers: Headers, replace: Headers) -> Headers:
    """Fetch ``Headers.set`` for each of ``replace``: drop old values, append new."""
    names = {name for name, _ in replace}
    return (*(item for item in headers if item[0] not in names), *replace)


class Gateway:
    """The gateway for one compiled config.

    Args:
        config: the compiled config (see :func:`compile_config`).
        max_body_bytes: request bodies larger than this are refused with 413
            (0 means no limit).
    """

    def __init__(self, config: GatewayConfig, *, max_body_bytes: int = 10 * 1024 * 1024) -> None:
        self.config = config
        self.max_body_bytes = max_body_bytes
        self.routes = RouteTable([(route.method, route.path) for route in config.routes])
        self._cors = CorsPolicy(config.cors) if config.cors is not None else None
        self._authenticator = build_authenticator(config.authorizer)
        self._pending: dict[int, _Pending] = {}
        self._shared: dict[str, list[_Parked]] = {}

    # -- the one entry point -------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to carry out, in order.

        Raises:
            IllegalTransition: the event answers nothing this gateway asked
                for. The gateway's state is unchanged.
        """
        if isinstance(event, RequestReceived):
            if event.request_id in self._pending or self._is_parked(event.request_id):
                raise IllegalTransition(event.request_id, "pending", event)
            return self._start(event)
        if isinstance(event, RequestAborted):
            return self._abort(event.request_id)
        request_id = getattr(event, "request_id", None)
        pending = self._pending.get(request_id) if isinstance(request_id, int) else None
        if pending is None:
            raise IllegalTransition(request_id, "idle", event)
        if not isinstance(event, _ANSWERS.get(type(pending.action), ())):
            raise IllegalTransition(request_id, type(pending.action).__name__, event)
        del self._pending[pending.request.id]
        parked = self._shared.pop(pending.shared_key, []) if pending.shared_key else []
        actions = self._run(pending.request, pending.flow, event)
        for waiter in parked:
            actions.extend(self._run(waiter.request, waiter.flow, event))
        return actions

    @property
    def pending_count(self) -> int:
        """Requests waiting for the outcome of an action (their own or a shared one)."""
        return len(self._pending) + sum(len(waiters) for waiters in self._shared.values())

    # -- driving flows -------------------------------------------------------

    def _start(self, event: RequestReceived) -> list[Action]:
        try:
            path, query = split_target(event.target)
        except BadTarget:
            request = Request(event=event, path="", query="", method=event.method)
            error = GatewayError("Malformed request target", status=400, code="BAD_REQUEST")
            return [self._error_response(request, error)]
        request = Request(
            event=event, path=path, query=query, method=normalise_method(event.method)
        )
        return self._run(request, self._pipeline(request), None)

    def _run(self, request: Request, flow: Flow, outcome: Event | None) -> list[Action]:
        """Advance ``flow`` by one step; the single place errors become answers."""
        try:
            step = next(flow) if outcome is None else flow.send(outcome)
        except StopIteration as stop:
            final: Action = stop.value
            return [final]
        except GatewayError as exc:
            response = self._error_response(request, exc)
            if exc.log is None:
                return [response]
            log = Log(level=LogLevel.ERROR, message=exc.log, request_id=request.id)
            return [log, response]
        except Exception as exc:  # the boundary: a bug must not reach the client
            log = Log(
                level=LogLevel.ERROR,
                message=f"internal error: {type(exc).__name__}: {exc}",
                request_id=request.id,
            )
            return [log, self._error_response(request, InternalError("unexpected"))]
        return self._wait(request, flow, step)

    def _wait(self, request: Request, flow: Flow, step: Step) -> list[Action]:
        if not isinstance(step, Shared):
            self._pending[request.id] = _Pending(request=request, flow=flow, action=step)
            return [step]
        waiters = self._shared.get(step.key)
        if waiters is not None:  # someone is already fetching it: wait for that
            waiters.append(_Parked(request=request, flow=flow))
            return []
        self._shared[step.key] = []
        self._pending[request.id] = _Pending(
            request=request, flow=flow, action=step.action, shared_key=step.key
        )
        return [step.action]

    def _abort(self, request_id: int) -> list[Action]:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            for waiters in self._shared.values():
                for waiter in waiters:
                    if waiter.request.id == request_id:
                        waiters.remove(waiter)
                        waiter.flow.close()
                        return []
            return []
        pending.flow.close()
        key = pending.shared_key
        if key is None:
            return []
        waiters = self._shared.pop(key, [])
        if not waiters:
            return []
        # The owner of a shared action left: hand the action to the next waiter.
        heir = waiters.pop(0)
        action = attrs.evolve(pending.action, request_id=heir.request.id)  # type: ignore[misc]
        self._shared[key] = waiters
        self._pending[heir.request.id] = _Pending(
            request=heir.request, flow=heir.flow, action=action, shared_key=key
        )
        return [action]

    def _is_parked(self, request_id: int) -> bool:
        return any(w.request.id == request_id for ws in self._shared.values() for w in ws)

    # -- answers -------------------------------------------------------------

    def _decorate(self, request: Request, headers: Headers) -> Headers:
        """CORS (when configured), then X-Powered-By, each with "set" semantics."""
        if self._cors is not None:
            headers = _set_headers(headers, self._cors.headers(request.header("origin")))
        return _set_headers(headers, (("x-powered-by", POWERED_BY),))

    def _respond(self, request: Request, status: int, body: bytes, *, json: bool = True) -> Respond:
        headers = self._decorate(request, JSON_HEADERS if json else ())
        return Respond(request_id=request.id, status=status, headers=headers, body=body)

    def _error_response(self, request: Request, exc: GatewayError) -> Respond:
        return self._respond(request, exc.status, exc.body())

    # -- the pipeline --------------------------------------------------------

    def _pipeline(self, request: Request) -> Flow:
        if (
            self._cors is not None
            and request.method == "OPTIONS"
            and not self.routes.has_route_for_method("OPTIONS", request.path)
        ):
            return self._respond(request, 204, b"", json=False)  # default preflight
        match = self.routes.match(request.method, request.path)
        if match is None:
            raise NoRouteMatched()
        route = self.config.routes[match.index]
        if route.defect is not None:
            raise ConfigDefect(f"route {route.method} {route.path}: {route.defect}")
        claims = None
        if route.auth:
            if self._authenticator is None:
                name = type(self.config.authorizer).__name__.removesuffix("Authorizer").lower()
                raise _not_implemented(f"The '{name}' authorizer")
            claims = yield from self._authenticator.authenticate(request)
        integration = route.integration
        if integration is not None and route.pre_process is not None:
            # Hooks need service bindings, which this version lacks: never run
            # an integration without its guard (fail closed).
            raise _not_implemented("The pre_process hook")
        kind = integration.type if integration is not None else None
        if kind in UNIMPLEMENTED_INTEGRATIONS and kind not in INTEGRATIONS:
            raise _not_implemented(f"Integration type '{kind}'")
        run = INTEGRATIONS.get(kind or "")
        if run is None:
            return self._respond(request, 200, route.static_body or b"")
        ctx = FlowContext(
            request=request,
            route=route,
            match=match,
            config=self.config,
            claims=claims,
            authenticator=self._authenticator,
            max_body_bytes=self.max_body_bytes,
            decorate=lambda headers: self._decorate(request, headers),
        )
        return (yield from run(ctx))


def _not_implemented(what: str) -> GatewayError:
    return GatewayError(
        f"{what} is not available in this version", status=501, code="NOT_IMPLEMENTED"
    )


def unavailable_features(config: GatewayConfig) -> list[Diagnostic]:
    """Warnings for routes that will answer 501 because this version lacks what they use."""
    found: list[Diagnostic] = []
    authorizer_missing = build_authenticator(config.authorizer) is None
    for route in config.routes:
        integration = route.integration
        if route.auth and authorizer_missing and route.defect is None:
            found.append(_unavailable(f"/paths/{route.index}/auth", "this authorizer type"))
        if integration is None:
            continue
        if integration.type in UNIMPLEMENTED_INTEGRATIONS and integration.type not in INTEGRATIONS:
            pointer = f"/paths/{route.index}/integration/type"
            found.append(_unavailable(pointer, f"integration type '{integration.type}'"))
        if route.pre_process is not None:
            found.append(_unavailable(f"/paths/{route.index}/pre_process", "pre_process hooks"))
    return found


def _unavailable(pointer: str, what: str) -> Diagnostic:
    return Diagnostic(
        severity=Severity.WARNING,
        pointer=pointer,
        message=f"{what} is not available in this version: the route answers 501",
    )
