"""The ``sapg`` command line: serve, check, routes, replay.

Exit codes: 0 success; 1 an invalid config (``check``), a refusal to start
(strict mode) or a trace whose replay diverges (``replay``); 2 a config or
trace that cannot be read or parsed at all, or bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sapg_core import (
    CompileResult,
    ConfigError,
    Diagnostic,
    Gateway,
    GatewayConfig,
    RouteMatch,
    ServerLimits,
    compile_config,
    explain_rank,
    mask_url,
    parse_config_text,
    split_target,
)

from ._common import Loaded
from ._demo import demo_config
from ._logging import configure_logging, flush_access_log
from ._record import TraceRecorder
from ._serve import _positive, add_server_arguments, check_http, run_driver, timeouts_from
from ._services import ServiceRegistry, check_services, load_services, parse_binding
from .replay import cmd_replay

DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 10 * 1024 * 1024
DEFAULT_SERVICE_TIMEOUT = 30.0


class LoadError(Exception):
    """The config cannot be read or parsed: one line for the user, exit 2."""

    exit_code = 2


class StartRefused(LoadError):
    """Strict mode and an invalid config: exit 1."""

    exit_code = 1


class BindFailed(LoadError):
    """The listening address cannot be bound (in use, not ours, no such host): exit 1."""

    exit_code = 1


def _port(text: str) -> int:
    """``--port``: 0 (any free port) to 65535; anything else is a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, not {value}")
    return value


def read_config(path: str | None, env: Mapping[str, str]) -> tuple[object, str] | None:
    """The raw config and where it came from; None means "use the demo".

    Precedence (as the original): ``--config PATH``, else the inline JSON in
    ``SAG_API_CONFIG_JSON`` when it is not blank, else the built-in demo.
    """
    if path is not None:
        try:
            with open(path, "rb") as file:
                text = file.read()
        except OSError as exc:
            raise LoadError(f"cannot read config {path}: {exc.strerror or exc}") from None
        source = path
    elif env.get("SAG_API_CONFIG_JSON", "").strip():
        text = env["SAG_API_CONFIG_JSON"].encode("utf-8", "surrogateescape")
        source = "SAG_API_CONFIG_JSON"
    else:
        return None
    try:
        return parse_config_text(text, source=source), source
    except ConfigError as exc:
        raise LoadError(str(exc)) from None


def strict_from_env(env: Mapping[str, str]) -> bool:
    return env.get("SAG_STRICT_CONFIG", "").strip().lower() == "true"


def _compile(
    raw: object, source: str, env: Mapping[str, str], *, strict: bool = False
) -> CompileResult:
    """Compile ``raw``; ``strict`` turns the findings that could open a route with no word
    (unknown keys in routes and integrations, empty authorizer fields) into errors.

    Raises:
        LoadError: the config cannot be used at all.
    """
    try:
        result = compile_config(raw, env=env, strict=strict)
    except ConfigError as exc:
        raise LoadError(f"{source}: {exc}") from None
    return result


def load_config_services(
    config: GatewayConfig, config_path: str | None, binding_specs: Sequence[str]
) -> tuple[ServiceRegistry, list[Diagnostic]]:
    """The services and bindings ``config`` names, loaded as ``sapg serve`` loads them (file
    paths relative to the config, import paths also from the working directory), and the
    warnings for those that cannot be called."""
    registry = load_services(
        config,
        config_path=config_path,
        binding_specs=binding_specs,
        search_path=[os.getcwd()],
    )
    return registry, check_services(config, registry)


def report_start_up(
    source: str, result: CompileResult, services: Sequence[Diagnostic], *, strict: bool
) -> None:
    """Print the config's errors and warnings and the services' warnings to stderr, as a
    server starts (or reloads).

    Raises:
        StartRefused: strict mode, and a config error or a service warning.
    """
    for diag in result.errors:
        print(f"sapg: config error: {source}: {diag}", file=sys.stderr)
    for diag in (*result.warnings, *services):
        print(f"sapg: warning: {source}: {diag}", file=sys.stderr)
    if strict and result.errors:
        raise StartRefused(f"{source}: invalid config, refusing to start (strict mode)")
    if strict and services:
        raise StartRefused(f"{source}: services that cannot be called (strict mode)")


def _print_diagnostics(result: CompileResult, *, stream: object = None) -> None:
    out = stream if stream is not None else sys.stdout
    for diag in result.errors:
        print(str(diag), file=out)  # type: ignore[arg-type]
    for diag in result.warnings:
        print(f"warning: {diag}", file=out)  # type: ignore[arg-type]


# -- sapg check -------------------------------------------------------------


def cmd_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = read_config(args.path, env)
    assert loaded is not None
    raw, source = loaded
    result = _compile(raw, source, env, strict=args.strict or strict_from_env(env))
    registry, found = load_config_services(result.config, args.path, args.binding)
    registry.close()
    result = CompileResult(config=result.config, diagnostics=(*result.diagnostics, *found))
    _print_diagnostics(result)
    if result.errors:
        print(f"{source}: {len(result.errors)} error(s)", file=sys.stderr)
        return 1
    print(
        f"{source}: valid ({len(result.config.routes)} routes, {len(result.warnings)} warning(s))"
    )
    return 0


# -- sapg routes ------------------------------------------------------------


def _describe(gateway: Gateway, index: int) -> str:
    route = gateway.config.routes[index]
    integration = route.integration
    if integration is None:
        target = "static response"
    elif integration.type == "http_proxy":
        server = gateway.config.servers.get(integration.server or "")
        target = f"http_proxy -> {mask_url(server.url) if server else integration.server}"
    else:
        target = integration.type
    auth = " [auth]" if route.auth else ""
    defect = f" [BROKEN: {route.defect}]" if route.defect else ""
    return f"#{index} {route.method} {route.path} ({target}){auth}{defect}"


def _match_facts(match: RouteMatch) -> str:
    return (
        f"exact={str(match.is_exact).lower()} matched_segments={match.matched_count} "
        f"wildcard={str(match.is_wildcard).lower()} "
        f"method={'equal' if match.method_equal else 'ANY'}"
    )


def cmd_routes(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = read_config(args.path, env)
    assert loaded is not None
    raw, source = loaded
    gateway = Gateway(_compile(raw, source, env).config, env=dict(env))
    if args.method is None:
        for index in range(len(gateway.config.routes)):
            print(_describe(gateway, index))
        return 0
    if args.request_path is None:
        print("sapg routes: give both METHOD and PATH", file=sys.stderr)
        return 2
    try:
        path, _ = split_target(args.request_path)  # normalised exactly as `serve` does
    except ValueError:
        print(f"sapg routes: {args.request_path!r} is not a request path", file=sys.stderr)
        return 2
    candidates = gateway.routes.candidates(args.method, path)
    if not candidates:
        print(
            f"no route matches {args.method} {path}: the gateway answers 404 "
            '{"message":"No match found."}'
        )
        return 0
    winner = candidates[0]
    print(f"winner: {_describe(gateway, winner.index)}")
    print(f"  {_match_facts(winner)}")
    if winner.params:
        print("  params: " + ", ".join(f"{k}={v}" for k, v in winner.params))
    for other in candidates[1:]:
        print(f"loses: {_describe(gateway, other.index)}")
        print(f"  {_match_facts(other)}; {explain_rank(winner, other)}")
    return 0


# -- sapg serve -------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        http = check_http(args.transport, args.http)
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    configure_logging(args.log_level, args.log_format)
    strict = args.strict or strict_from_env(env)
    loaded = read_config(args.config, env)
    limits = ServerLimits(max_header_bytes=args.max_header_size, max_body_bytes=args.max_body_size)
    recorder = _open_recorder(args.record)
    registries: list[ServiceRegistry] = []  # every one built, closed on exit

    def build(raw: object, source: str) -> Loaded:
        result = _compile(raw, source, env, strict=strict)
        registry, found = load_config_services(result.config, args.config, args.binding)
        registries.append(registry)
        report_start_up(source, result, found, strict=strict)
        built = Gateway(
            result.config,
            max_body_bytes=args.max_body_size,
            env=dict(env),
            service_timeout=args.service_timeout,
        )
        if recorder is not None:  # a new header line per build
            return Loaded(recorder.wrap(built, raw_config=raw, env=env), registry)
        return Loaded(built, registry)

    factory: Callable[[str, int], Loaded] | None = None
    if loaded is not None:
        first: Loaded | None = build(*loaded)
    else:
        first = None

        def factory(host: str, port: int) -> Loaded:
            return build(demo_config(f"http://{_url_host(host)}:{port}"), "built-in demo config")

    def reload() -> Loaded:  # SIGHUP: a config with errors is refused, strict or not
        if args.config is None:
            raise LoadError("the config did not come from a file (--config): nothing to re-read")
        raw, source = read_config(args.config, env) or (None, "")
        errors = _compile(raw, source, env, strict=strict).errors
        if errors:
            raise LoadError(f"{source}: {len(errors)} error(s): " + "; ".join(map(str, errors)))
        return build(raw, source)

    try:
        return _run_listening(
            args,
            gateway=None if first is None else first.gateway,
            gateway_factory=factory,
            reload=reload,
            limits=limits,
            timeouts=timeouts_from(args),
            workers=args.workers,
            grace=args.grace,
            services=None if first is None else first.services,
            http=http,
        )
    finally:
        flush_access_log()  # the lines of the last requests (at exit too: belt and braces)
        for registry in registries:
            registry.close()


def _run_listening(args: argparse.Namespace, **driver: Any) -> int:
    """:func:`run_driver` on ``--host``/``--port``, announcing the address once bound.

    Raises:
        BindFailed: the address cannot be bound (in use, no such host): one line, exit 1.
    """
    ready = False

    def on_ready(host: str, port: int) -> None:
        nonlocal ready
        ready = True
        print(
            f"sapg: listening on http://{_url_host(host)}:{port} (transport={args.transport})",
            file=sys.stderr,
            flush=True,
        )

    try:
        return run_driver(
            args.transport, host=args.host, port=args.port, on_ready=on_ready, **driver
        )
    except (OSError, ExceptionGroup) as exc:
        cause = None if ready else _only_os_error(exc)  # a fault while serving keeps its trace
        if cause is None:
            raise
        address = f"{_url_host(args.host)}:{args.port}"
        raise BindFailed(f"error: cannot listen on {address}: {cause.strerror or cause}") from None


def _only_os_error(exc: BaseException) -> OSError | None:
    """The first ``OSError`` of ``exc`` if that is all it is (trio's nursery wraps the bind
    error in an exception group), else None."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        causes = [_only_os_error(inner) for inner in exc.exceptions]
        if causes and all(cause is not None for cause in causes):
            return causes[0]
    return None


def _open_recorder(path: str | None) -> TraceRecorder | None:
    if path is None:
        return None
    try:
        return TraceRecorder(path)
    except OSError as exc:
        raise LoadError(f"cannot create trace {path}: {exc.strerror or exc}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- entry point ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sapg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config",
        metavar="PATH",
        help="JSON config (default: $SAG_API_CONFIG_JSON, else a built-in demo)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="0 to 65535; 0 picks a free port"
    )
    add_server_arguments(serve)  # --transport, timeouts, --max-header-size, --workers, ...
    serve.add_argument(
        "--strict",
        action="store_true",
        help="refuse to start on an invalid config (also SAG_STRICT_CONFIG=true)",
    )
    serve.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY,
        metavar="BYTES",
        help="largest request body accepted, 413 beyond (0: no limit)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, time given to in-flight requests",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--record",
        metavar="TRACE",
        help="write every event and action to TRACE (JSON lines, mode 0600; holds credentials)",
    )
    _add_binding_argument(serve)
    serve.add_argument(
        "--service-timeout",
        type=_positive,
        default=DEFAULT_SERVICE_TIMEOUT,
        metavar="SECONDS",
        help="time a service, binding or hook may take, 504 after (default 30)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config; exit 1 on errors")
    check.add_argument("path")
    check.add_argument(
        "--strict",
        action="store_true",
        help="unknown keys in routes and integrations and authorizer fields that resolve "
        "to empty are errors, not warnings (also SAG_STRICT_CONFIG=true)",
    )
    _add_binding_argument(check)
    check.set_defaults(func=cmd_check)

    routes = sub.add_parser("routes", help="print the route table, or which route wins and why")
    routes.add_argument("path", help="the config file")
    routes.add_argument("method", nargs="?")
    routes.add_argument("request_path", nargs="?", metavar="PATH")
    routes.set_defaults(func=cmd_routes)

    replay = sub.add_parser(
        "replay", help="feed a recorded trace to a fresh gateway; exit 1 if an action differs"
    )
    replay.add_argument("trace", metavar="TRACE")
    replay.set_defaults(func=cmd_replay)
    return parser


def _binding_spec(text: str) -> str:
    try:
        parse_binding(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_binding_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--binding",
        action="append",
        default=[],
        type=_binding_spec,
        metavar="NAME=pkg.module:object",
        help="the object behind serviceBindings[].binding NAME (repeatable; a file path "
        "such as NAME=./guards.py:Guard works too)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    try:
        code: int = args.func(args, env)
    except LoadError as exc:
        print(f"sapg: {exc}", file=sys.stderr)
        return exc.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
