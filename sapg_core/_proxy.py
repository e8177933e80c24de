"""The ``http_proxy`` integration (``http`` is normalised to it): UPSTREAM.md §8.1.

The target URL is built exactly as the original builds it; the client's
method, headers (less hop-by-hop ones) and body are forwarded, the body
streamed by the transport. Unlike the original, upstream failures answer JSON
(502/504 with a code) and every upstream call has timeouts.

WebSocket handshakes pass (RFC 6455 §4): a ``GET`` whose ``Upgrade`` names
``websocket`` and whose ``Connection`` names ``upgrade`` keeps those two
headers (and its ``Sec-WebSocket-*`` ones, which are end-to-end anyway) and
is forwarded with ``ForwardUpstream(upgrade=True)``, after CORS and the
authorizer like any request. Such a request with a body is refused 400
before anything is sent. A ``101`` answer becomes :class:`OpenTunnel` with the
upstream's headers (less hop-by-hop ones, then its ``Upgrade`` and
``Connection: upgrade`` again), decorated; any other answer is relayed as an
ordinary response. Any other ``Upgrade`` is dropped as today: the request is
forwarded as plain HTTP.
"""

from __future__ import annotations

import functools
from typing import Final

from ._actions import ForwardUpstream, OpenTunnel, RelayResponse
from ._errors import BodyTooLarge, GatewayError, UpstreamError
from ._events import ActionFailed, FailureReason, Headers, UpstreamResponded
from ._flow import Flow, FlowContext
from ._mapping import MappingSources, apply_mapping
from ._url import upstream_url

__all__ = ["HOP_BY_HOP", "forwardable", "is_websocket_upgrade", "proxy_flow"]

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Not hop-by-hop, but the transport owns them: Host follows the target URL,
# and 100-continue is negotiated with the client by the gateway itself.
_NOT_FORWARDED: Final = HOP_BY_HOP | {"host", "expect"}

_FAILURES: Final[dict[FailureReason, tuple[int, str, str]]] = {
    FailureReason.CONNECT: (502, "UPSTREAM_UNREACHABLE", "Upstream server unreachable"),
    FailureReason.TLS: (502, "UPSTREAM_TLS_ERROR", "Upstream TLS handshake failed"),
    FailureReason.RESET: (502, "UPSTREAM_CONNECTION_ERROR", "Upstream connection failed"),
    FailureReason.TIMEOUT: (504, "UPSTREAM_TIMEOUT", "Upstream server timed out"),
    FailureReason.CLIENT: (400, "BAD_REQUEST_BODY", "Request body could not be read"),
}


@functools.lru_cache(maxsize=64)
def _named_by(connection: str) -> frozenset[str]:
    """The field names a ``Connection`` value lists, beyond the hop-by-hop ones.

    Cached: the values seen in practice are a handful (``keep-alive``, ``close``).
    """
    return frozenset(token.strip().lower() for token in connection.split(",")) - HOP_BY_HOP


def forwardable(headers: Headers, *, response: bool = False) -> Headers:
    """Drop hop-by-hop headers, and those the ``Connection`` header names.

    Runs twice per proxied request (the client's headers, the upstream's), so
    the common case is one pass with no new set: the names a ``Connection``
    value lists are cached per value, and when nothing is dropped ``headers``
    itself comes back.
    """
    drop = HOP_BY_HOP if response else _NOT_FORWARDED
    for name, value in headers:
        if name == "connection":
            named = _named_by(value)
            if named and not named <= drop:
                drop = drop | named
    kept = [item for item in headers if item[0] not in drop]
    return headers if len(kept) == len(headers) else tuple(kept)


def _tokens(headers: Headers, name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` field, lower-cased."""
    return {
        token.strip().lower()
        for field, value in headers
        if field == name
        for token in value.split(",")
    }


def is_websocket_upgrade(method: str, headers: Headers) -> bool:
    """Whether a request is a WebSocket handshake the gateway passes through.

    A ``GET`` (as received) with ``Upgrade`` naming ``websocket`` and
    ``Connection`` naming ``upgrade`` (RFC 6455 §4.1), names lower-case.
    """
    return (
        method == "GET"
        and "websocket" in _tokens(headers, "upgrade")
        and "upgrade" in _tokens(headers, "connection")
    )


def _has_body(headers: Headers) -> bool:
    for name, value in headers:
        if name == "transfer-encoding" or (name == "content-length" and value.strip() != "0"):
            return True
    return False


def _with_upgrade(kept: Headers, original: Headers) -> Headers:
    """``kept`` plus the ``Upgrade`` fields of ``original`` and ``Connection: upgrade``."""
    upgrade = tuple(item for item in original if item[0] == "upgrade")
    return (*kept, *upgrade, ("connection", "upgrade"))


def _tunnel(ctx: FlowContext, outcome: UpstreamResponded, alias: str) -> OpenTunnel:
    """The upstream accepted the WebSocket handshake: the 101 and the tunnel."""
    if "websocket" not in _tokens(outcome.headers, "upgrade"):
        log = f"upstream {alias!r}: 101 without Upgrade: websocket"
        raise UpstreamError("Upstream switched to another protocol", log=log)
    kept = _with_upgrade(forwardable(outcome.headers, response=True), outcome.headers)
    return OpenTunnel(request_id=ctx.request.id, headers=ctx.decorate(kept), route=ctx.label)


def proxy_flow(ctx: FlowContext) -> Flow:
    integration = ctx.route.integration
    assert integration is not None and integration.server is not None
    server = ctx.config.servers[integration.server]  # compile marks unknown aliases as defects
    request = ctx.request
    headers = forwardable(request.event.headers)
    query = request.query
    if ctx.route.mapping is not None:
        sources = MappingSources(
            headers=request.event.headers,
            query=request.query,
            claims=ctx.claims,
            route_variables=ctx.route.variables,
            global_variables=ctx.config.variables,
        )
        headers, query = apply_mapping(ctx.route.mapping, sources, headers, query)
    upgrade = is_websocket_upgrade(request.event.method, request.event.headers)
    if upgrade:
        if _has_body(request.event.headers):
            raise GatewayError("A WebSocket handshake has no body", status=400, code="BAD_REQUEST")
        headers = _with_upgrade(headers, request.event.headers)
    outcome = yield ForwardUpstream(
        request_id=request.id,
        method=request.method,
        url=upstream_url(server.base, ctx.route.path, request.path, query),
        headers=headers,
        body_limit=ctx.max_body_bytes,
        connect_timeout=server.connect_timeout,
        read_timeout=server.read_timeout,
        body=ctx.body,  # set when a pre_process hook already read it
        upgrade=upgrade,
    )
    if isinstance(outcome, ActionFailed):
        raise _upstream_error(outcome, server.alias)
    assert isinstance(outcome, UpstreamResponded)
    if outcome.status == 101:
        if not upgrade:  # a transport lets a 101 through only for an upgrade
            raise UpstreamError(
                "Upstream switched protocols", log=f"upstream {server.alias!r}: 101"
            )
        return _tunnel(ctx, outcome, server.alias)
    relayed = ctx.decorate(forwardable(outcome.headers, response=True))
    return RelayResponse(
        request_id=request.id, status=outcome.status, headers=relayed, route=ctx.label
    )


def _upstream_error(failure: ActionFailed, alias: str) -> GatewayError:
    if failure.reason is FailureReason.BODY_TOO_LARGE:
        return BodyTooLarge()
    status, code, message = _FAILURES[failure.reason]
    if failure.reason is FailureReason.CLIENT:
        log = f"client request body broke off while forwarding it: {failure.detail}"
        return GatewayError(message, status=status, code=code, log=log)
    log = f"upstream {alias!r}: {failure.reason.value}: {failure.detail}"
    return UpstreamError(message, status=status, code=code, log=log)
