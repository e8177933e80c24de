"""What a flow is, and what it can ask of the gateway.

A *flow* is a generator that carries one request through the pipeline. It
yields a *step* whenever it needs the world and receives the outcome event:

- an :class:`Action` that needs an outcome (``ForwardUpstream``, ``ReadBody``,
  ``SendHTTP``): the gateway hands it to the transport and sends the answering
  event back in;
- a :class:`Shared` step: the same, except that one action is in flight per
  ``key`` at a time. Other flows that yield the same key meanwhile wait, and
  all of them receive the one outcome (JWKS single-flight is built on this).

A flow ends by *returning* its final action (``Respond`` or ``RelayResponse``)
or by raising a :class:`GatewayError`, which the gateway renders.

Integrations are functions ``(FlowContext) -> Flow``; authorizers are objects
with ``authenticate(request) -> Generator[Step, Event, Claims]``. Both are
registered in ``_gateway.py`` by name or type.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Final, Protocol

import attrs

from ._actions import Action, ReadBody, Respond, SendHTTP
from ._errors import BodyTooLarge, GatewayError
from ._events import (
    ActionFailed,
    BodyReceived,
    Event,
    FailureReason,
    Headers,
    HTTPResponseReceived,
    RequestReceived,
)
from ._json import dumps
from ._model import GatewayConfig, Route
from ._routing import RouteMatch

__all__ = [
    "JSON_HEADERS",
    "Authenticator",
    "Claims",
    "Flow",
    "FlowContext",
    "Request",
    "Shared",
    "Step",
    "normalise_method",
]

JSON_HEADERS: Final[Headers] = (("content-type", "application/json"),)

Claims = Mapping[str, object]


@attrs.frozen(kw_only=True)
class Shared:
    """Run ``action`` once for everyone who needs ``key``; all get its outcome."""

    key: str
    action: Action


Step = Action | Shared
Flow = Generator[Step, Event, Action]


@attrs.frozen(kw_only=True)
class Request:
    """A request as the pipeline sees it: the event plus its parsed target."""

    event: RequestReceived
    path: str
    query: str
    #: The method as Fetch normalises it: only the six standard names are
    #: upper-cased (``get`` is ``GET``, ``patch`` stays ``patch``).
    method: str
    #: The request's ``X-Request-Id`` (see ``request_id_for``): sent upstream and
    #: on the answer.
    x_request_id: str = ""

    @property
    def id(self) -> int:
        return self.event.request_id

    @property
    def now(self) -> float:
        return self.event.now

    def header(self, name: str) -> str | None:
        """A header's value (all its fields joined by ``, ``, as Fetch does), or None.

        ``name`` must be lower-case.
        """
        values = [value for key, value in self.event.headers if key == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)


_STANDARD_METHODS: Final = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})


def normalise_method(method: str) -> str:
    """Fetch's method normalisation (the Workers platform applies it before the original)."""
    upper = method.upper()
    return upper if upper in _STANDARD_METHODS else method


class Authenticator(Protocol):
    """Checks a request's credentials for routes with ``auth: true``."""

    def authenticate(self, request: Request) -> Generator[Step, Event, Claims]:
        """Return the verified claims, or raise :class:`AuthError`."""
        ...


@attrs.frozen(kw_only=True)
class FlowContext:
    """Everything an integration's flow may use: the request, its route, the config.

    ``decorate`` adds CORS and X-Powered-By to a header list (every answer
    that passes the pipeline gets them). ``body`` is the request body when an
    earlier step (a ``pre_process`` hook) already read it, else ``None``.
    ``env`` is the gateway's environment (the ``env`` given to :class:`Gateway`);
    ``service_timeout`` bounds each service call (seconds). ``label`` names the
    matched route (``"GET /a/{id}"``) for the transport's access log.
    """

    request: Request
    route: Route
    match: RouteMatch
    config: GatewayConfig
    claims: Claims | None
    authenticator: Authenticator | None
    max_body_bytes: int
    decorate: Callable[[Headers], Headers]
    body: bytes | None = None
    env: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    service_timeout: float = 30.0
    label: str = ""

    def respond(self, status: int, body: bytes = b"", headers: Headers = JSON_HEADERS) -> Respond:
        return Respond(
            request_id=self.request.id,
            status=status,
            headers=self.decorate(headers),
            body=body,
            route=self.label,
        )

    def respond_json(self, status: int, value: object) -> Respond:
        return self.respond(status, dumps(value))

    def read_body(self) -> Generator[Step, Event, bytes]:
        """The whole request body (at most ``max_body_bytes``; over it: 413)."""
        outcome = yield ReadBody(request_id=self.request.id, limit=self.max_body_bytes)
        if isinstance(outcome, BodyReceived):
            return outcome.body
        assert isinstance(outcome, ActionFailed)
        if outcome.reason is FailureReason.BODY_TOO_LARGE:
            raise BodyTooLarge()
        raise GatewayError(
            "Request body could not be read",
            status=400,
            code="BAD_REQUEST_BODY",
            log=f"reading the request body: {outcome.reason.value}: {outcome.detail}",
        )

    def send_http(
        self,
        method: str,
        url: str,
        headers: Headers,
        body: bytes = b"",
        *,
        timeout: float = 10.0,
        shared_key: str | None = None,
    ) -> Generator[Step, Event, HTTPResponseReceived | ActionFailed]:
        """One buffered outbound call; the outcome is returned, failures included."""
        action = SendHTTP(
            request_id=self.request.id,
            method=method,
            url=url,
            headers=headers,
            body=body,
            timeout=timeout,
        )
        outcome = yield (action if shared_key is None else Shared(key=shared_key, action=action))
        assert isinstance(outcome, HTTPResponseReceived | ActionFailed)
        return outcome
