"""I/O for sapg: servers, the outbound HTTP executor and the command line.

Service authors and embedders use the names re-exported here (see docs/services.md).
"""

from ._services import (
    Context as Context,
    HeaderMap as HeaderMap,
    QueryParams as QueryParams,
    Request as Request,
    Response as Response,
    RouteInfo as RouteInfo,
    ServiceLoadError as ServiceLoadError,
    ServiceRegistry as ServiceRegistry,
    call_service as call_service,
    call_service_sync as call_service_sync,
    check_services as check_services,
    load_services as load_services,
    parse_binding as parse_binding,
    trio_native as trio_native,
)

__all__ = [name for name in dir() if not name.startswith("_")]
