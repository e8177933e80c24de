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

A route whose integration is ``http_proxy`` first refuses a request-target
whose path holds an encoded slash, backslash or dot-segment (400, before the
authorizer; :func:`escaped_path_problem`): the upstream must not read the path
another way than the gateway routed it. A server with ``path_escapes:
"forward"`` opts out.

Errors are values: deep code raises :class:`GatewayError`; :meth:`_run` is
the one place that turns them into responses (with CORS and X-Powered-By).
An event for a request that has no pending action, or of a type the pending
action cannot produce, raises :class:`IllegalTransition` and changes nothing.

Every request has an id (:func:`request_id_for`: the client's valid
``X-Request-Id``, else one made from the request's entropy). The gateway *sets*
``X-Request-Id`` on every final answer (:meth:`_with_request_id`: static,
proxied, errors, preflight, redirects), and on each :class:`ForwardUpstream` a
flow yields it sets ``X-Forwarded-For``/``-Proto``/``-Host`` and ``X-Request-Id``
(:func:`forwarded_headers`, believing incoming values only from the peers in
``forwarded_allow_ips``). Both happen here, as the actions pass, so no
integration can forget them.

The gateway is deterministic: its output depends only on the config and
the ordered events fed in (time and entropy are event fields), which is what
makes record/replay possible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

import attrs

from ._actions import (
    Action,
    CallService,
    ForwardUpstream,
    Log,
    LogLevel,
    ReadBody,
    RelayResponse,
    Respond,
    SendHTTP,
)
from ._auth import build_authenticator
from ._auth0 import (
    callback_flow,
    login_redirect_flow,
    refresh_flow,
    userinfo_flow,
)
from ._cors import CorsPolicy
from ._errors import (
    ConfigDefect,
    GatewayError,
    IllegalTransition,
    InternalError,
    NoRouteMatched,
    mask_credentials,
)
from ._events import (
    ActionFailed,
    BodyReceived,
    Event,
    Headers,
    HTTPResponseReceived,
    RequestAborted,
    RequestReceived,
    ServiceReturned,
    UpstreamResponded,
)
from ._flow import JSON_HEADERS, Flow, FlowContext, Request, Shared, Step, normalise_method
from ._forwarded import (
    DEFAULT_FORWARDED_ALLOW_IPS,
    REQUEST_ID_HEADER,
    TrustedProxies,
    forwarded_headers,
    request_id_for,
)
from ._model import GatewayConfig
from ._proxy import proxy_flow
from ._routing import RouteMatch, RouteTable
from ._services import run_pre_process, service_binding_flow, service_flow
from ._supabase import (
    passwordless_auth_alt_flow,
    passwordless_auth_flow,
    passwordless_verify_flow,
)
from ._url import BadTarget, escaped_path_problem, split_target

__all__ = ["INTEGRATIONS", "POWERED_BY", "Gateway"]

#: The value of ``X-Powered-By`` on every answer that passes the pipeline.
POWERED_BY: Final = "sapg"

#: Integration flows by ``integration.type``. A route with no integration, or
#: one whose type is not the original's, serves its static ``response``.
INTEGRATIONS: Final[dict[str, Callable[[FlowContext], Flow]]] = {
    "http_proxy": proxy_flow,
    "service": service_flow,
    "service_binding": service_binding_flow,
    "supabase_passwordless_auth": passwordless_auth_flow,
    "supabase_passwordless_verify": passwordless_verify_flow,
    "supabase_passwordless_auth_alt": passwordless_auth_alt_flow,
    "auth0_callback": callback_flow,
    "auth0_callback_redirect": login_redirect_flow,
    "auth0_userinfo": userinfo_flow,
    "auth0_refresh": refresh_flow,
}

# Which events may answer which pending action.
_ANSWERS: Final[dict[type[Action], tuple[type[Event], ...]]] = {
    ForwardUpstream: (UpstreamResponded, ActionFailed),
    ReadBody: (BodyReceived, ActionFailed),
    SendHTTP: (HTTPResponseReceived, ActionFailed),
    CallService: (ServiceReturned, ActionFailed),
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


_MAX_CACHED_ORIGINS: Final = 1024


def _set_headers(headers: Headers, replace: Headers) -> Headers:
    """Fetch ``Headers.set`` for each of ``replace``: drop old values, append new."""
    names = {name for name, _ in replace}
    return (*(item for item in headers if item[0] not in names), *replace)


def _with_request_id(headers: Headers, x_request_id: str) -> Headers:
    """``headers`` with ``X-Request-Id`` set (an upstream's own value is replaced)."""
    pair = (REQUEST_ID_HEADER, x_request_id)
    for name, _ in headers:
        if name == REQUEST_ID_HEADER:
            return (*(item for item in headers if item[0] != REQUEST_ID_HEADER), pair)
    return (*headers, pair)


def _path_escape(problem: str) -> GatewayError:
    """*New*: 400 for a proxied path that could step out of the server URL's base path.

    Envoy's ``path_with_escaped_slashes_action: REJECT_REQUEST``, widened to encoded
    backslashes and dot-segments (docs/differences.md).
    """
    return GatewayError(
        "Request path holds an encoded slash, backslash or dot-segment",
        status=400,
        code="BAD_REQUEST_PATH",
        log=f"refused a proxied request whose path holds {problem}",
    )


class Gateway:
    """The gateway for one compiled config.

    Args:
        config: the compiled config (see :func:`compile_config`).
        max_body_bytes: request bodies larger than this are refused with 413
            (0 means no limit).
        env: the environment integrations read at request time (Supabase's
            ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY``, see
            :data:`SUPABASE_ENV`). Only looked up by name, never listed.
        service_timeout: seconds a service, binding or hook may take (504 after).
        forwarded_allow_ips: the peers whose ``X-Forwarded-*`` fields are
            believed (:class:`TrustedProxies`: addresses and networks, comma
            separated, or ``*``); from any other peer they are replaced.

    Raises:
        ValueError: ``forwarded_allow_ips`` holds something that is not an
            address, a network or ``*``.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        max_body_bytes: int = 10 * 1024 * 1024,
        env: Mapping[str, str] | None = None,
        service_timeout: float = 30.0,
        forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW_IPS,
    ) -> None:
        self.config = config
        self.forwarded_allow_ips = forwarded_allow_ips
        self.trusted_proxies = TrustedProxies(forwarded_allow_ips)
        self.max_body_bytes = max_body_bytes
        self.env: Mapping[str, str] = MappingProxyType({}) if env is None else env
        self.service_timeout = service_timeout
        self.routes = RouteTable([(route.method, route.path) for route in config.routes])
        self._cors = CorsPolicy(config.cors) if config.cors is not None else None
        self._authenticator = build_authenticator(config.authorizer)
        self._pending: dict[int, _Pending] = {}
        self._shared: dict[str, list[_Parked]] = {}
        self._route_labels: dict[int, str] = {}  # request id -> matched route, until final
        self._labels = tuple(f"{route.method} {route.path}" for route in config.routes)
        # Routes answered with their static body and nothing else: no flow needed.
        self._plain_static = tuple(
            route.defect is None
            and not route.auth
            and route.pre_process is None
            and (route.integration is None or route.integration.type not in INTEGRATIONS)
            for route in config.routes
        )
        # CORS + X-Powered-By for each Origin value seen (bounded): one "set" pass per answer.
        self._decorations: dict[str | None, Headers] = {}

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
        """Route the request; answer at once when no flow is needed, else start one.

        CORS preflight, 404 and plain static routes (no auth, hook, integration
        or defect) are answered here directly: the common case needs no
        generator. Everything else runs :meth:`_pipeline` as a flow.
        """
        x_request_id = request_id_for(event)
        try:
            path, query = split_target(event.target)
        except BadTarget:
            request = Request(
                event=event, path="", query="", method=event.method, x_request_id=x_request_id
            )
            error = GatewayError("Malformed request target", status=400, code="BAD_REQUEST")
            return [self._with_route(request, self._error_response(request, error))]
        request = Request(
            event=event,
            path=path,
            query=query,
            method=normalise_method(event.method),
            x_request_id=x_request_id,
        )
        if (
            self._cors is not None
            and request.method == "OPTIONS"
            and not self.routes.has_route_for_method("OPTIONS", path)
        ):
            preflight = self._respond(request, 204, b"", json=False)
            return [self._with_route(request, preflight)]
        match = self.routes.match(request.method, path)
        if match is None:
            return [self._with_route(request, self._error_response(request, NoRouteMatched()))]
        if self._plain_static[match.index]:
            route = self.config.routes[match.index]
            headers = (
                *self._decorate(request, JSON_HEADERS),
                (REQUEST_ID_HEADER, x_request_id),
            )
            body = route.static_body or b""
            label = self._labels[match.index]
            return [
                Respond(
                    request_id=event.request_id, status=200, headers=headers, body=body, route=label
                )
            ]
        return self._run(request, self._pipeline(request, match), None)

    def _run(self, request: Request, flow: Flow, outcome: Event | None) -> list[Action]:
        """Advance ``flow`` by one step; the single place errors become answers."""
        try:
            step = next(flow) if outcome is None else flow.send(outcome)
        except StopIteration as stop:
            final: Action = stop.value
            return [self._with_route(request, final)]
        except GatewayError as exc:
            response = self._with_route(request, self._error_response(request, exc))
            if exc.log is None:
                return [response]
            message = mask_credentials(exc.log)  # a URL in a log line keeps no password
            log = Log(level=exc.level, message=message, request_id=request.id)
            return [log, response]
        except Exception as exc:  # the boundary: a bug must not reach the client
            log = Log(
                level=LogLevel.ERROR,
                message=mask_credentials(f"internal error: {type(exc).__name__}: {exc}"),
                request_id=request.id,
            )
            error = self._error_response(request, InternalError("unexpected"))
            return [log, self._with_route(request, error)]
        return self._wait(request, flow, step)

    def _with_route(self, request: Request, final: Action) -> Action:
        """Stamp the matched route on a final action (for the transport's access log) and
        set its ``X-Request-Id``."""
        label = self._route_labels.pop(request.id, "")
        changes: dict[str, object] = {}
        if label and isinstance(final, Respond | RelayResponse) and final.route != label:
            changes["route"] = label
        headers = getattr(final, "headers", None)  # every final answer has them
        if isinstance(headers, tuple):
            changes["headers"] = _with_request_id(headers, request.x_request_id)
        return attrs.evolve(final, **changes) if changes else final  # type: ignore[misc]

    def _wait(self, request: Request, flow: Flow, step: Step) -> list[Action]:
        if isinstance(step, ForwardUpstream):  # every proxied request, whatever the flow
            headers = forwarded_headers(
                step.headers, request.event, self.trusted_proxies, request.x_request_id
            )
            step = attrs.evolve(step, headers=headers)
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
        self._route_labels.pop(request_id, None)
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
        return bool(self._shared) and any(
            w.request.id == request_id for ws in self._shared.values() for w in ws
        )

    # -- answers -------------------------------------------------------------

    def _decorate(self, request: Request, headers: Headers) -> Headers:
        """CORS (when configured), then X-Powered-By, each with "set" semantics.

        The two sets touch distinct names, so they are one pass over ``headers``.
        """
        origin = request.header("origin")
        extra = self._decorations.get(origin)
        if extra is None:
            cors = self._cors.headers(origin) if self._cors is not None else ()
            extra = (*cors, ("x-powered-by", POWERED_BY))
            if len(self._decorations) < _MAX_CACHED_ORIGINS:
                self._decorations[origin] = extra
        if headers is JSON_HEADERS or not headers:  # nothing in them to replace
            return headers + extra
        return _set_headers(headers, extra)

    def _respond(self, request: Request, status: int, body: bytes, *, json: bool = True) -> Respond:
        headers = self._decorate(request, JSON_HEADERS if json else ())
        label = self._route_labels.get(request.id, "")
        return Respond(
            request_id=request.id, status=status, headers=headers, body=body, route=label
        )

    def _error_response(self, request: Request, exc: GatewayError) -> Respond:
        return self._respond(request, exc.status, exc.body())

    # -- the pipeline --------------------------------------------------------

    def _pipeline(self, request: Request, match: RouteMatch) -> Flow:
        route = self.config.routes[match.index]
        self._route_labels[request.id] = self._labels[match.index]
        if route.defect is not None:
            raise ConfigDefect(f"route {route.method} {route.path}: {route.defect}")
        integration = route.integration
        if integration is not None and integration.type == "http_proxy":
            server = self.config.servers.get(integration.server or "")
            problem = escaped_path_problem(request.event.target)
            if problem is not None and not (server is not None and server.forward_path_escapes):
                raise _path_escape(problem)
        claims = None
        if route.auth:
            # Compilation marks auth routes without a usable authorizer as defects.
            assert self._authenticator is not None
            claims = yield from self._authenticator.authenticate(request)
        kind = integration.type if integration is not None else None
        run = INTEGRATIONS.get(kind or "")
        if run is None and route.pre_process is None:
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
            env=self.env,
            service_timeout=self.service_timeout,
            label=self._labels[match.index],
        )
        if route.pre_process is not None:
            # Unlike the original, a static route runs its hook too: a hook is a
            # guard, and skipping it would fail open (UPSTREAM.md §11 item 5).
            stop, ctx = yield from run_pre_process(ctx)
            if stop is not None:
                return stop
        if run is None:
            return self._respond(request, 200, route.static_body or b"")
        return (yield from run(ctx))
