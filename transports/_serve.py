"""``sapg serve``'s server options and the choice of driver (trio, asyncio or blocking h11)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final

from sapg_core import PARSER_BACKENDS, ServerLimits

from ._common import GatewayFactory, GatewayLike, Reload, Timeouts
from ._logging import LOG_FORMATS
from ._services import ServiceRegistry
from .h11_blocking import DEFAULT_WORKERS

__all__ = ["TRANSPORTS", "add_server_arguments", "check_http", "run_driver", "timeouts_from"]

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


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every driver understands (``--workers`` is the blocking driver's)."""
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
        "byte for a later one)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive,
        default=Timeouts().read,
        metavar="SECONDS",
        help="a gap this long between the bytes of a request (head or body), or a write "
        "that stalls this long, cuts the connection off",
    )
    parser.add_argument(
        "--min-body-rate",
        type=_rate,
        default=Timeouts().min_body_rate,
        metavar="BYTES_PER_SECOND",
        help="the request body must average this rate over the time spent waiting for it, "
        "after a grace of --read-timeout seconds: it is cut off once the wait passes "
        "read-timeout + received/rate (0: no minimum)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive,
        default=Timeouts().idle,
        metavar="SECONDS",
        help="a keep-alive connection with no new request this long is closed",
    )
    parser.add_argument(
        "--max-header-size",
        type=int,
        default=ServerLimits().max_header_bytes,
        metavar="BYTES",
        help="largest request line plus headers, 431 beyond (0: no limit)",
    )
    parser.add_argument(
        "--workers",
        type=_count,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="h11 transport: worker threads, so requests carried out at once (idle "
        "connections and heads still arriving hold none); past them a request is answered 503",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines or one JSON object per line (the access log included)",
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
    workers: int,
    on_ready: Callable[[str, int], None],
    grace: float,
    services: ServiceRegistry | None = None,
    http: str | None = None,
) -> int:
    """Run the chosen driver until SIGINT/SIGTERM; its exit code.

    ``http`` is the request parser (see :func:`check_http`, which refuses a mismatch).
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
            workers=workers,
            on_ready=on_ready,
            grace=grace,
            services=services,
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
    )
