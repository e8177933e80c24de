"""The compiled configuration: frozen objects built once from the JSON config.

:func:`sapg_core.compile_config` builds these from a parsed JSON document
(after normalisation, placeholder replacement and validation). Everything
the request path needs is precomputed here (static bodies serialised, CORS
header values joined), so handling a request allocates little.

``raw`` fields keep the resolved JSON for integrations that read extra keys
(``post_process`` and the like); nothing may mutate them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from ._json import JSONValue
from ._url import upstream_base

__all__ = [
    "Auth0Authorizer",
    "Authorizer",
    "Cors",
    "Diagnostic",
    "GatewayConfig",
    "Integration",
    "JwtAuthorizer",
    "MappingSpec",
    "Route",
    "Server",
    "ServiceBinding",
    "ServiceEntry",
    "Severity",
    "SupabaseAuthorizer",
    "UnknownAuthorizer",
]

#: Upstream timeouts when a server entry sets none (seconds).
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@attrs.frozen(kw_only=True)
class Diagnostic:
    """One finding about a config, located by a JSON pointer (RFC 6901)."""

    severity: Severity
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.pointer or '(root)'}: {self.message}"


@attrs.frozen(kw_only=True)
class Server:
    """One ``servers`` entry; ``base`` is what its upstream URLs start with (computed once).

    ``forward_path_escapes``: ``path_escapes: "forward"``; a request path holding an encoded
    slash, backslash or dot-segment is forwarded as sent instead of refused with 400.
    """

    alias: str
    url: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    forward_path_escapes: bool = False
    base: str = attrs.field(
        init=False,
        eq=False,
        repr=False,
        default=attrs.Factory(lambda s: upstream_base(s.url), takes_self=True),
    )


@attrs.frozen(kw_only=True)
class ServiceEntry:
    alias: str
    entrypoint: str


@attrs.frozen(kw_only=True)
class ServiceBinding:
    alias: str
    binding: str


@attrs.frozen(kw_only=True)
class Cors:
    """The ``cors`` block with its header values ready to send.

    ``allow_origins`` is empty when the config's value is not an array (then
    no origin ever matches, as in the original).
    """

    allow_origins: tuple[str, ...]
    allow_methods: str
    allow_headers: str
    expose_headers: str
    allow_credentials: bool
    max_age: str


@attrs.frozen(kw_only=True)
class JwtAuthorizer:
    """``type: jwt``: HMAC with a shared secret.

    ``issuer``/``audience`` are ``None`` when the key is absent (then the claim
    is not required); ``""`` requires only the claim's presence (jose's rule).
    """

    secret: str
    algorithm: str
    issuer: str | None
    audience: str | None


@attrs.frozen(kw_only=True)
class Auth0Authorizer:
    domain: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scope: str
    jwks: str | None = None
    jwks_uri: str | None = None
    callback_uri: str | None = None
    audience: str | None = None
    require_state: bool = False


@attrs.frozen(kw_only=True)
class SupabaseAuthorizer:
    jwt_secret: str
    issuer: str | None
    audience: str | None
    jwks_uri: str | None = None


@attrs.frozen(kw_only=True)
class UnknownAuthorizer:
    """An authorizer whose ``type`` this gateway does not know (fails closed)."""

    type: str


Authorizer = JwtAuthorizer | Auth0Authorizer | SupabaseAuthorizer | UnknownAuthorizer


@attrs.frozen(kw_only=True)
class Integration:
    """``paths[].integration``; ``http`` is already normalised to ``http_proxy``."""

    type: str
    server: str | None = None
    binding: str | None = None
    function: str | None = None
    raw: Mapping[str, JSONValue] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class MappingSpec:
    """``paths[].mapping``: (name, value) pairs; ``query`` is None when absent."""

    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] | None = None


@attrs.frozen(kw_only=True)
class Route:
    """One entry of ``paths``, compiled.

    Fields:
        index: position in ``paths`` (ties in route priority go to the lower one).
        static_body: the JSON-serialised ``response`` (``None`` when absent:
            an empty body).
        defect: why the route cannot be served safely (an unknown alias, auth
            without an authorizer, ...). Such a route answers 500 and logs it.
    """

    index: int
    method: str
    path: str
    integration: Integration | None = None
    auth: bool = False
    mapping: MappingSpec | None = None
    variables: Mapping[str, JSONValue] = attrs.field(factory=dict, eq=False)
    static_body: bytes | None = None
    pre_process: tuple[str, str] | None = None
    defect: str | None = None
    raw: Mapping[str, JSONValue] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class GatewayConfig:
    routes: tuple[Route, ...]
    servers: Mapping[str, Server] = attrs.field(factory=dict, eq=False)
    services: Mapping[str, ServiceEntry] = attrs.field(factory=dict, eq=False)
    service_bindings: Mapping[str, ServiceBinding] = attrs.field(factory=dict, eq=False)
    cors: Cors | None = None
    authorizer: Authorizer | None = None
    variables: Mapping[str, JSONValue] = attrs.field(factory=dict, eq=False)
    raw: Mapping[str, JSONValue] = attrs.field(factory=dict, eq=False)
