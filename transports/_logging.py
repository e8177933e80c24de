"""Logging for the drivers: an access-log line per request, text or JSON.

Two loggers: ``sapg`` for diagnostics (the core's ``Log`` actions, protocol
failures, reloads, shutdown) and ``sapg.access`` for one line per request.
Nothing here logs credentials: the access line has the path *without* its
query (queries carry tokens and OAuth codes), no headers, no bodies; the
upstream is logged as its origin only (no userinfo, path or query).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final, TextIO

from ._common import ExchangeBase

__all__ = ["LOG_FORMATS", "access_logger", "configure_logging", "log_access"]

LOG_FORMATS: Final = ("text", "json")

logger = logging.getLogger("sapg")
access_logger = logging.getLogger("sapg.access")

_TEXT_FORMAT: Final = "sapg: %(levelname)s %(message)s"
#: Attributes of a LogRecord that are not the caller's ``extra``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the ``sapg`` loggers to ``stream`` (stderr) at ``level``, as text or JSON lines."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    for existing in list(logger.handlers):
        logger.removeHandler(existing)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _path(target: str) -> str:
    """The request target without its query or fragment: queries can hold secrets."""
    end = len(target)
    for mark in ("?", "#"):
        found = target.find(mark)
        if found != -1:
            end = min(end, found)
    return target[:end]


def log_access(exchange: ExchangeBase) -> None:
    """One line for a finished request (status ``-`` / null: the client left unanswered)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - exchange.started) * 1000, 2)
    path = _path(exchange.target)
    status = exchange.status or None
    fields = {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "route": exchange.route,
        "upstream": exchange.upstream_origin,
    }
    access_logger.info(
        'access %s %s %s %.1fms route="%s" upstream=%s id=%d',
        exchange.method,
        path,
        status or "-",
        duration_ms,
        exchange.route,
        exchange.upstream_origin or "-",
        exchange.request_id,
        extra=fields,
    )
