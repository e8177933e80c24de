"""``sapg serve``'s server options and the choice of driver (trio, asyncio or blocking h11)."""

from __future__ import annotations

import argparse
import socket
import ssl
from collections.abc import Callable
from typing import Final

from sapg_core import PARSER_BACKENDS, ServerLimits

from ._common import GatewayFactory, GatewayLike, Reload, Timeouts
from ._logging import LOG_FORMATS
from ._services import ServiceRegistry
from .h11_blocking import DEFAULT_WORKERS

__all__ = [
    "TRANSPORTS",
    "add_server_arguments",
    "check_http",
    "run_driver",
    "timeouts_from",
    "tls_context",
    "tls_from",
]

TRANSPORTS: Final = ("trio", "asyncio", "h11")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _admin_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, not {value}")
    return value


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every driver understands (``--threads`` is the blocking driver's)."""
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="trio",
        help="trio (default), asyncio, or h11: blocking sockets and a bounded thread pool",
    )
    parser.add_argument(
        "--http",
        choices=PARSER_BACKENDS,
        default=None,
        help="the request parser of the trio and asyncio transports: httptools (llhttp, "
        "the default) or h11 (the reference); the h11 transport always uses h11",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive,
        default=Timeouts().header,
        metavar="SECONDS",
        help="the whole request head must arrive within this long, however slowly it is "
        "sent (from the accept for a connection's first request, from the head's first "
        f"byte for a later one; default {Timeouts().header:g})",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive,
        default=Timeouts().read,
        metavar="SECONDS",
        help="a gap this long between the bytes of a request (head or body), or a write "
        f"that stalls this long, cuts the connection off (default {Timeouts().read:g})",
    )
    parser.add_argument(
        "--min-body-rate",
        type=_rate,
        default=Timeouts().min_body_rate,
        metavar="BYTES_PER_SECOND",
        help="the request body must average this rate over the time spent waiting for it, "
        "after a grace of --read-timeout seconds: it is cut off once the wait passes "
        f"read-timeout + received/rate (0: no minimum; default {Timeouts().min_body_rate:g})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive,
        default=Timeouts().idle,
        metavar="SECONDS",
        help="a keep-alive connection with no new request this long is closed "
        f"(default {Timeouts().idle:g})",
    )
    parser.add_argument(
        "--max-header-size",
        type=int,
        default=ServerLimits().max_header_bytes,
        metavar="BYTES",
        help="largest request line plus headers, 431 beyond (0: no limit; default "
        f"{ServerLimits().max_header_bytes})",
    )
    parser.add_argument(
        "--ssl-certfile",
        default=None,
        metavar="PEM",
        help="serve HTTPS (TLS 1.2 or later) with this certificate chain, on every transport "
        "(default: plain HTTP)",
    )
    parser.add_argument(
        "--ssl-keyfile",
        default=None,
        metavar="PEM",
        help="the private key of --ssl-certfile (default: the key is in the certificate file)",
    )
    parser.add_argument(
        "--ssl-keyfile-password",
        default=None,
        metavar="PASSWORD",
        help="the password of an encrypted --ssl-keyfile",
    )
    parser.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="worker processes serving the one port, on every transport (default 1: this "
        "process serves); more than 1: this process supervises them",
    )
    parser.add_argument(
        "--threads",
        type=_count,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"h11 transport: worker threads per process, so requests carried out at once "
        f"(idle connections and heads still arriving hold none); past them a request is "
        f"answered 503 (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--admin-port",
        type=_admin_port,
        default=None,
        metavar="PORT",
        help="serve /metrics (Prometheus), /ready and /live on this port, never the public "
        "one (default: off; 0 picks a free port)",
    )
    parser.add_argument(
        "--admin-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the admin endpoint's address (default 127.0.0.1)",
    )
    parser.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines or one JSON object per line, the access log included (default text)",
    )


def check_http(transport: str, http: str | None) -> str:
    """The parser backend to run (``--http``, or the transport's default).

    Raises:
        ValueError: ``--http httptools`` with the h11 transport, which is the raw h11 driver.
    """
    if transport == "h11":
        if http not in (None, "h11"):
            raise ValueError(
                f"--http {http}: the h11 transport always parses with h11 (it is the raw h11 "
                "driver); use --transport trio or asyncio for httptools"
            )
        return "h11"
    return http or "httptools"


def timeouts_from(args: argparse.Namespace) -> Timeouts:
    """The :class:`Timeouts` the options of :func:`add_server_arguments` give."""
    return Timeouts(
        read=args.read_timeout,
        idle=args.idle_timeout,
        header=args.header_timeout,
        min_body_rate=args.min_body_rate,
    )


def run_driver(
    transport: str,
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None,
    gateway_factory: GatewayFactory | None,
    reload: Reload | None,
    limits: ServerLimits,
    timeouts: Timeouts,
    threads: int,
    on_ready: Callable[[str, int], None],
    grace: float,
    services: ServiceRegistry | None = None,
    http: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Run the chosen driver until SIGINT/SIGTERM; its exit code. ``ssl_context``: serve
    HTTPS (:func:`tls_from`).

    ``http`` is the request parser (see :func:`check_http`, which refuses a mismatch);
    ``threads`` the blocking driver's; ``sock`` a listening socket to serve instead of
    binding ``host``:``port`` (a worker process's).
    """
    backend = check_http(transport, http)
    if transport == "h11":
        from . import h11_blocking

        return h11_blocking.run(
            host=host,
            port=port,
            gateway=gateway,
            gateway_factory=gateway_factory,
            reload=reload,
            limits=limits,
            timeouts=timeouts,
            workers=threads,
            on_ready=on_ready,
            grace=grace,
            services=services,
            ssl_context=ssl_context,
            sock=sock,
        )
    if transport == "asyncio":
        from . import asyncio_driver as driver
    elif transport == "trio":
        from . import trio_driver as driver  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown transport {transport!r}")
    return driver.run(
        host=host,
        port=port,
        gateway=gateway,
        gateway_factory=gateway_factory,
        reload=reload,
        limits=limits,
        timeouts=timeouts,
        on_ready=on_ready,
        grace=grace,
        services=services,
        http=backend,
        ssl_context=ssl_context,
        sock=sock,
    )


def tls_context(
    certfile: str, keyfile: str | None = None, password: str | None = None
) -> ssl.SSLContext:
    """A server-side TLS context: TLS 1.2 or later, the certificate chain and key loaded,
    ALPN offering ``http/1.1`` (the only protocol spoken).

    Raises:
        ValueError: a file cannot be read, or the certificate, key or password is wrong
            (one line, naming the files).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for what, path in (("certificate", certfile), ("key", keyfile)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None
    files = certfile if keyfile is None else f"{certfile}, {keyfile}"
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            why = "the key does not belong to the certificate"
        elif reason in ("", "PEM lib", "BAD_DECRYPT", "BAD_PASSWORD_READ"):
            why = "no usable certificate and key in PEM (a wrong --ssl-keyfile-password?)"
        else:
            why = reason
        raise ValueError(f"cannot load the TLS certificate and key ({files}): {why}") from None
    except OSError as exc:
        raise ValueError(
            f"cannot read the TLS certificate or key ({files}): {exc.strerror or exc}"
        ) from None
    return context


def tls_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context ``--ssl-certfile``/``--ssl-keyfile``/``--ssl-keyfile-password`` give,
    or None (plain HTTP).

    Raises:
        ValueError: as :func:`tls_context`, or a key or password without a certificate.
    """
    if args.ssl_certfile is None:
        if args.ssl_keyfile is not None or args.ssl_keyfile_password is not None:
            raise ValueError("--ssl-keyfile and --ssl-keyfile-password need --ssl-certfile")
        return None
    return tls_context(args.ssl_certfile, args.ssl_keyfile, args.ssl_keyfile_password)
