"""sapg_core: the pure, I/O-free core of the sapg API gateway.

Feed :class:`Event` objects to :meth:`Gateway.handle` and carry out the
:class:`Action` objects it returns. The core never touches sockets, files,
the environment, the clock or randomness: those arrive inside events.

Everything public is re-exported here; the ``_modules`` are private.
"""

from ._actions import (
    Action as Action,
    CallService as CallService,
    ForwardUpstream as ForwardUpstream,
    Log as Log,
    LogLevel as LogLevel,
    OpenTunnel as OpenTunnel,
    ReadBody as ReadBody,
    RelayResponse as RelayResponse,
    Respond as Respond,
    SendHTTP as SendHTTP,
    ServiceContext as ServiceContext,
    ServiceKind as ServiceKind,
    ServiceRequest as ServiceRequest,
    ServiceStage as ServiceStage,
)
from ._auth0 import (
    LOGIN_COOKIE as LOGIN_COOKIE,
    Auth0Authenticator as Auth0Authenticator,
    LoginState as LoginState,
)
from ._client import (
    ClientConnection as ClientConnection,
    ClientEvent as ClientEvent,
    ParserBackend as ParserBackend,
    ResponseData as ResponseData,
    ResponseEnd as ResponseEnd,
    ResponseHead as ResponseHead,
    ResponsePending as ResponsePending,
    UpstreamProtocolError as UpstreamProtocolError,
    UpstreamTarget as UpstreamTarget,
    check_request as check_request,
    split_upstream_url as split_upstream_url,
)
from ._config import (
    CompileResult as CompileResult,
    ConfigError as ConfigError,
    ConfigSyntaxError as ConfigSyntaxError,
    ParsedConfig as ParsedConfig,
    compile_config as compile_config,
    json_pointer as json_pointer,
    normalise as normalise,
    parse_config_text as parse_config_text,
    resolve_placeholders as resolve_placeholders,
    validate as validate,
)
from ._errors import (
    AuthError as AuthError,
    BodyTooLarge as BodyTooLarge,
    ConfigDefect as ConfigDefect,
    GatewayError as GatewayError,
    IllegalTransition as IllegalTransition,
    InternalError as InternalError,
    NoRouteMatched as NoRouteMatched,
    UpstreamError as UpstreamError,
    mask_url as mask_url,
)
from ._events import (
    ActionFailed as ActionFailed,
    BodyReceived as BodyReceived,
    Event as Event,
    FailureReason as FailureReason,
    Headers as Headers,
    HTTPResponseReceived as HTTPResponseReceived,
    RequestAborted as RequestAborted,
    RequestReceived as RequestReceived,
    ServiceResultKind as ServiceResultKind,
    ServiceReturned as ServiceReturned,
    UpstreamResponded as UpstreamResponded,
)
from ._forwarded import (
    DEFAULT_FORWARDED_ALLOW_IPS as DEFAULT_FORWARDED_ALLOW_IPS,
    MAX_REQUEST_ID_LENGTH as MAX_REQUEST_ID_LENGTH,
    REQUEST_ID_HEADER as REQUEST_ID_HEADER,
    TrustedProxies as TrustedProxies,
    client_address as client_address,
    forwarded_headers as forwarded_headers,
    is_valid_request_id as is_valid_request_id,
    request_id_for as request_id_for,
)
from ._gateway import (
    POWERED_BY as POWERED_BY,
    Gateway as Gateway,
)
from ._http import (
    PARSER_BACKENDS as PARSER_BACKENDS,
    BodyChunk as BodyChunk,
    BodyEnd as BodyEnd,
    ConnectionClosed as ConnectionClosed,
    HTTPEvent as HTTPEvent,
    LocalProtocolError as LocalProtocolError,
    NeedData as NeedData,
    ProtocolFailure as ProtocolFailure,
    RequestHead as RequestHead,
    ServerConnection as ServerConnection,
    ServerLimits as ServerLimits,
    render_response as render_response,
)
from ._json import JSONValue as JSONValue, dumps as dumps, loads as loads
from ._jwks import (
    ALLOWED_JWS_ALGORITHMS as ALLOWED_JWS_ALGORITHMS,
    JwksCache as JwksCache,
    JwksPolicy as JwksPolicy,
    KeySet as KeySet,
    RemoteJwks as RemoteJwks,
    StaticJwks as StaticJwks,
)
from ._model import (
    Auth0Authorizer as Auth0Authorizer,
    Authorizer as Authorizer,
    Cors as Cors,
    Diagnostic as Diagnostic,
    GatewayConfig as GatewayConfig,
    Integration as Integration,
    JwtAuthorizer as JwtAuthorizer,
    MappingSpec as MappingSpec,
    Route as Route,
    Server as Server,
    ServiceBinding as ServiceBinding,
    ServiceEntry as ServiceEntry,
    Severity as Severity,
    SupabaseAuthorizer as SupabaseAuthorizer,
    UnknownAuthorizer as UnknownAuthorizer,
)
from ._pool import (
    ConnectionPool as ConnectionPool,
    Open as Open,
    Origin as Origin,
    PooledConnection as PooledConnection,
    PoolLimits as PoolLimits,
    Reuse as Reuse,
    Ticket as Ticket,
    Wait as Wait,
    may_retry as may_retry,
)
from ._routing import (
    RouteMatch as RouteMatch,
    RouteTable as RouteTable,
    explain_rank as explain_rank,
    priority_key as priority_key,
)
from ._services import envelope as envelope
from ._supabase import SUPABASE_ENV as SUPABASE_ENV
from ._trace import (
    TRACE_FORMAT as TRACE_FORMAT,
    TRACE_VERSION as TRACE_VERSION,
    Divergence as Divergence,
    NotingEnv as NotingEnv,
    Raised as Raised,
    TraceEnv as TraceEnv,
    TraceError as TraceError,
    TraceHeader as TraceHeader,
    TraceLine as TraceLine,
    TraceStep as TraceStep,
    decode_item as decode_item,
    dump_line as dump_line,
    encode_item as encode_item,
    load_line as load_line,
    make_header as make_header,
    parse_trace as parse_trace,
    replay as replay,
    rerun as rerun,
)
from ._url import BadTarget as BadTarget, split_target as split_target

__all__ = [name for name in dir() if not name.startswith("_")]
