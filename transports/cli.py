"""The ``sapg`` command line: serve, check, routes, replay.

Exit codes: 0 success; 1 an invalid config (``check``), a refusal to start
(strict mode) or a trace whose replay diverges (``replay``); 2 a config or
trace that cannot be read or parsed at all, or bad usage.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sapg_core import (
    DEFAULT_FORWARDED_ALLOW_IPS,
    CompileResult,
    ConfigError,
    Diagnostic,
    Gateway,
    GatewayConfig,
    RouteMatch,
    ServerLimits,
    TrustedProxies,
    compile_config,
    explain_rank,
    mask_url,
    parse_config_text,
    split_target,
)

from ._admin import AdminServer, start_admin
from ._common import DRAINING, Loaded
from ._demo import demo_config
from ._logging import configure_logging, flush_access_log
from ._record import TraceRecorder
from ._serve import (
    _positive,
    add_server_arguments,
    check_http,
    run_driver,
    timeouts_from,
    tls_from,
)
from ._services import ServiceRegistry, check_services, load_services, parse_binding
from ._supervisor import Worker, supervise, worker_from
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


class TLSFailed(LoadError):
    """The TLS certificate or key cannot be loaded: one line, exit 1."""

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
    source: str,
    result: CompileResult,
    services: Sequence[Diagnostic],
    *,
    strict: bool,
    quiet: bool = False,
) -> None:
    """Print the config's errors and warnings and the services' warnings to stderr, as a
    server starts (or reloads); ``quiet`` prints nothing (worker processes after the first,
    whose findings are the first's).

    Raises:
        StartRefused: strict mode, and a config error or a service warning.
    """
    for diag in () if quiet else result.errors:
        print(f"sapg: config error: {source}: {diag}", file=sys.stderr)
    for diag in () if quiet else (*result.warnings, *services):
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
    try:
        ssl_context = tls_from(args)  # also checked here when worker processes will serve
    except ValueError as exc:
        raise TLSFailed(f"error: {exc}") from None
    configure_logging(args.log_level, args.log_format)
    _settle_options(args, env)
    if args.worker_of is None and args.workers > 1:
        return _supervise(args, env)
    worker = _worker(args)
    strict = args.strict or strict_from_env(env)
    loaded = read_config(args.config, env)
    limits = ServerLimits(max_header_bytes=args.max_header_size, max_body_bytes=args.max_body_size)
    recorder = _open_recorder(args.record)
    registries: list[ServiceRegistry] = []  # every one built, closed on exit

    def build(raw: object, source: str) -> Loaded:
        result = _compile(raw, source, env, strict=strict)
        registry, found = load_config_services(result.config, args.config, args.binding)
        registries.append(registry)
        quiet = worker is not None and worker.index > 0
        report_start_up(source, result, found, strict=strict, quiet=quiet)
        built = Gateway(
            result.config,
            max_body_bytes=args.max_body_size,
            env=dict(env),
            service_timeout=args.service_timeout,
            forwarded_allow_ips=args.forwarded_allow_ips,
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

    driver: dict[str, Any] = dict(
        gateway=None if first is None else first.gateway,
        gateway_factory=factory,
        reload=reload,
        limits=limits,
        timeouts=timeouts_from(args),
        threads=args.threads,
        grace=args.grace,
        services=None if first is None else first.services,
        http=http,
        ssl_context=ssl_context,
    )
    try:
        return _serve_here(args, worker, driver)
    finally:
        flush_access_log()  # the lines of the last requests (at exit too: belt and braces)
        for registry in registries:
            registry.close()


def _settle_options(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """``SAPG_CONFIG`` is the config file when ``--config`` is absent (as under ASGI;
    ``SAG_API_CONFIG_JSON`` comes after it); the admin port is never the public one.

    Raises:
        LoadError: ``--admin-port`` is ``--port``.
    """
    if args.config is None and env.get("SAPG_CONFIG", "").strip():
        args.config = env["SAPG_CONFIG"].strip()
    if args.admin_port and args.admin_port == args.port:
        raise LoadError("--admin-port must not be the public --port")


def _worker(args: argparse.Namespace) -> Worker | None:
    """What this process got from its supervisor, if it is a worker process."""
    if args.worker_of is None:
        return None
    try:
        return worker_from(args.worker_of)
    except ValueError as exc:
        raise LoadError(f"cannot serve as a worker process: {exc}") from None


def _serve_here(args: argparse.Namespace, worker: Worker | None, driver: dict[str, Any]) -> int:
    """Serve from this process: on ``--host``/``--port``, or on a worker's inherited socket;
    with the admin endpoint when asked (a worker's metrics go to its supervisor's)."""
    listening = threading.Event()
    admin = None
    try:
        if args.admin_port is not None:
            from . import _metrics

            exposition = _metrics.enable(worker=worker is not None)
            if worker is None:
                admin = _start_admin(args, exposition, lambda: _state(listening))
        if worker is not None:
            return run_driver(
                args.transport,
                host=args.host,
                port=args.port,
                on_ready=worker.on_ready,
                sock=worker.sock,
                **driver,
            )
        return _run_listening(args, on_listening=listening.set, **driver)
    finally:
        if admin is not None:
            admin.close()


def _run_listening(
    args: argparse.Namespace,
    *,
    run: Callable[..., int] = run_driver,
    on_listening: Callable[[], None] | None = None,
    **driver: Any,
) -> int:
    """``run`` (:func:`run_driver`, or :func:`supervise` for worker processes) on
    ``--host``/``--port``, announcing the address once bound (and calling ``on_listening``).

    Raises:
        BindFailed: the address cannot be bound (in use, no such host): one line, exit 1.
    """
    ready = False
    scheme = "https" if args.ssl_certfile is not None else "http"

    def on_ready(host: str, port: int) -> None:
        nonlocal ready
        ready = True
        if on_listening is not None:  # first: /ready says so once the line is out
            on_listening()
        print(
            f"sapg: listening on {scheme}://{_url_host(host)}:{port} (transport={args.transport})",
            file=sys.stderr,
            flush=True,
        )

    try:
        return run(args.transport, host=args.host, port=args.port, on_ready=on_ready, **driver)
    except (OSError, ExceptionGroup) as exc:
        cause = None if ready else _only_os_error(exc)  # a fault while serving keeps its trace
        if cause is None:
            raise
        address = f"{_url_host(args.host)}:{args.port}"
        raise BindFailed(f"error: cannot listen on {address}: {cause.strerror or cause}") from None


def _supervise(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``--workers N``: this process binds, starts N workers and supervises them."""
    if args.record is not None:
        raise LoadError("--record writes one trace per process: use it with --workers 1")
    read_config(args.config, env)  # a config that cannot be read at all: one line, exit 2

    def admin(metrics_dir: str | None, state: Callable[[], str]) -> Callable[[], None]:
        from ._metrics import collector_for

        assert metrics_dir is not None
        return _start_admin(args, collector_for(metrics_dir), state).close

    return _run_listening(
        args,
        run=supervise,
        workers=args.workers,
        argv=args.argv,
        grace=args.grace,
        admin=None if args.admin_port is None else admin,
    )


def _start_admin(
    args: argparse.Namespace, collect: Callable[[], bytes], state: Callable[[], str]
) -> AdminServer:
    """The admin endpoint on ``--admin-host``/``--admin-port``, announced.

    Raises:
        BindFailed: its address cannot be bound.
    """
    try:
        return start_admin(args.admin_host, args.admin_port, collect=collect, state=state)
    except OSError as exc:
        address = f"{_url_host(args.admin_host)}:{args.admin_port}"
        raise BindFailed(
            f"error: cannot listen on {address} (admin): {exc.strerror or exc}"
        ) from None


def _state(listening: threading.Event) -> str:
    """``/ready``'s state of a single-process server."""
    if DRAINING.is_set():
        return "draining"
    return "ready" if listening.is_set() else "starting"


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


def version() -> str:
    """The installed ``sapg`` distribution's version."""
    try:
        return importlib.metadata.version("sapg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


#: The environment variables ``sapg serve`` takes as defaults for its options, with the same
#: meaning as under the ASGI factory (``transports.asgi.create_app``); an option given on the
#: command line wins. ``SAPG_CONFIG`` (the config file) is read by :func:`cmd_serve`.
ENV_OPTIONS: Final = {
    "SAPG_MAX_BODY_SIZE": "--max-body-size",
    "SAPG_MAX_HEADER_SIZE": "--max-header-size",
    "SAPG_READ_TIMEOUT": "--read-timeout",
    "SAPG_MIN_BODY_RATE": "--min-body-rate",
    "SAPG_SERVICE_TIMEOUT": "--service-timeout",
    "SAPG_LOG_LEVEL": "--log-level",
    "SAPG_LOG_FORMAT": "--log-format",
    "SAPG_BINDINGS": "--binding",
    "SAPG_FORWARDED_ALLOW_IPS": "--forwarded-allow-ips",
}


def env_defaults(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Make the :data:`ENV_OPTIONS` set in ``env`` the defaults of ``parser``'s options.

    Raises:
        LoadError: a value the option would refuse (exit 2), naming the variable.
    """
    actions = {option: action for action in parser._actions for option in action.option_strings}
    defaults: dict[str, object] = {}
    for name, option in ENV_OPTIONS.items():
        text = env.get(name, "").strip()
        if not text:
            continue
        action = actions.get(option)
        if action is None:
            continue
        value: object
        try:
            if option == "--binding":  # comma-separated, as SAPG_BINDINGS under ASGI
                value = [_binding_spec(part.strip()) for part in text.split(",") if part.strip()]
            else:
                if option == "--log-level":
                    text = text.lower()
                value = action.type(text) if callable(action.type) else text
                if action.choices is not None and value not in action.choices:
                    raise ValueError("must be one of " + ", ".join(map(str, action.choices)))
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise LoadError(f"{name}={text!r} ({option}): {exc}") from None
        defaults[action.dest] = value
    parser.set_defaults(**defaults)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``sapg`` parser; with ``env``, the ``SAPG_*`` variables of :data:`ENV_OPTIONS`
    are ``sapg serve``'s defaults.

    Raises:
        LoadError: such a variable holds a value its option refuses.
    """
    parser = argparse.ArgumentParser(prog="sapg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sapg {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Options also come from SAPG_* environment variables "
        "(SAPG_CONFIG, SAPG_MAX_BODY_SIZE, ...; see docs/configuration.md); the command "
        "line wins.",
    )
    serve.add_argument(
        "--config",
        metavar="PATH",
        help="JSON config (default: $SAPG_CONFIG, else the inline JSON in "
        "$SAG_API_CONFIG_JSON, else a built-in demo)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on, IPv4 or IPv6 (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"0 to 65535; 0 picks a free port (default {DEFAULT_PORT})",
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
        help=f"largest request body accepted, 413 beyond (0: no limit; default {DEFAULT_MAX_BODY})",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, time given to in-flight requests (default 10)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="info logs each request (the access log), warning does not (default info)",
    )
    serve.add_argument(
        "--record",
        metavar="TRACE",
        help="write every event and action to TRACE (JSON lines, mode 0600; holds "
        "credentials; default: none)",
    )
    _add_binding_argument(serve)
    serve.add_argument(
        "--service-timeout",
        type=_positive,
        default=DEFAULT_SERVICE_TIMEOUT,
        metavar="SECONDS",
        help="time a service, binding or hook may take, 504 after (default 30)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        type=_allow_ips,
        default=DEFAULT_FORWARDED_ALLOW_IPS,
        metavar="IPS",
        help="peers whose X-Forwarded-For/-Proto/-Host are believed: addresses and networks, "
        "comma separated, or * for every peer; from others they are replaced (default "
        f"{DEFAULT_FORWARDED_ALLOW_IPS})",
    )
    serve.set_defaults(func=cmd_serve)
    if env is not None:
        env_defaults(serve, env)

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


def _allow_ips(text: str) -> str:
    try:
        TrustedProxies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
    env = dict(os.environ)
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(env)
    except LoadError as exc:
        print(f"sapg: {exc}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(arguments)
    args.argv = arguments  # a supervisor gives its workers the same arguments
    try:
        code: int = args.func(args, env)
    except LoadError as exc:
        print(f"sapg: {exc}", file=sys.stderr)
        return exc.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
