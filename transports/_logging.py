"""Logging for the drivers: an access-log line per request, text or JSON, written in batches.

Two loggers: ``sapg`` for diagnostics (the core's ``Log`` actions, protocol
failures, reloads, shutdown) and ``sapg.access`` for one line per request.
Nothing here logs credentials: the access line has the path *without* its
query (queries carry tokens and OAuth codes), no headers, no bodies; the
upstream is logged as its origin only (no userinfo, path or query). It does have
the client's address (``X-Forwarded-For`` believed only from trusted proxies)
and the request's ``X-Request-Id``, the one the upstream and the answer carry.

Theory of operation. A ``logging`` call and a stream write per request cost more
than the gateway's own decision, so once :func:`configure_logging` has run the
access log bypasses ``logging``: :func:`log_access` appends the request's fields
to a queue (a few attribute reads), and one writer thread formats what has
queued, exactly as the ``logging`` formatters would, and writes it in one call
at least every :data:`FLUSH_INTERVAL` seconds. The queue is flushed at exit
(``atexit``, so after a graceful SIGTERM) and by :func:`flush_access_log`. The
diagnostics still go through ``logging``; an access line may therefore appear
up to :data:`FLUSH_INTERVAL` after a diagnostic logged later. Without
:func:`configure_logging` (embedding), access lines are plain ``logging`` records.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

from ._common import ExchangeBase

__all__ = [
    "FLUSH_INTERVAL",
    "LOG_FORMATS",
    "AccessLog",
    "access_logger",
    "configure_logging",
    "flush_access_log",
    "log_access",
]

LOG_FORMATS: Final = ("text", "json")

logger = logging.getLogger("sapg")
access_logger = logging.getLogger("sapg.access")

_TEXT_FORMAT: Final = "sapg: %(levelname)s %(message)s"
#: The longest an access line waits in memory before it is written (seconds).
FLUSH_INTERVAL: Final = 0.25
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


#: One finished request: (wall time, request_id, method, path, status, duration_ms,
#: route, upstream origin, client address, X-Request-Id).
_Entry = tuple[float, int, str, str, int | None, float, str, str, str, str]


def _message(entry: _Entry) -> str:
    _, request_id, method, path, status, duration_ms, route, upstream, client, xid = entry
    return (
        f"access {method} {path} {status or '-'} {duration_ms:.1f}ms "
        f'route="{route}" upstream={upstream or "-"} client={client or "-"} '
        f"x_request_id={xid or '-'} id={request_id}"
    )


def _text_line(entry: _Entry) -> str:
    return f"sapg: INFO {_message(entry)}\n"


def _json_line(entry: _Entry) -> str:
    created, request_id, method, path, status, duration_ms, route, upstream, client, xid = entry
    msecs = int((created - int(created)) * 1000)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z",
        "level": "INFO",
        "logger": access_logger.name,
        "message": _message(entry),
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "route": route,
        "upstream": upstream,
        "client": client,
        "x_request_id": xid,
    }
    return json.dumps(record, default=str) + "\n"


class AccessLog:
    """Access lines queued by any thread, written in batches by one writer thread.

    Args:
        handler: where lines go: its stream, under its lock (so a batch never
            interleaves with a diagnostic line).
        fmt: ``"text"`` or ``"json"``, the lines :class:`JsonFormatter` and the
            text format would give.
        interval: the longest a line waits before it is written.
    """

    def __init__(
        self, handler: logging.StreamHandler[TextIO], fmt: str, interval: float = FLUSH_INTERVAL
    ) -> None:
        self._handler = handler
        self._format = _json_line if fmt == "json" else _text_line
        self._interval = interval
        self._queue: collections.deque[_Entry] = collections.deque()
        self._write_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sapg-access-log", daemon=True)
        self._thread.start()

    def add(self, entry: _Entry) -> None:
        """Queue one line (thread-safe: ``deque.append`` is atomic)."""
        self._queue.append(entry)

    def flush(self) -> None:
        """Write every queued line now, in one write."""
        with self._write_lock:
            queue, lines = self._queue, []
            while queue:
                lines.append(self._format(queue.popleft()))
            if not lines:
                return
            handler = self._handler
            handler.acquire()
            try:
                handler.stream.write("".join(lines))
                handler.stream.flush()
            except (OSError, ValueError):  # the stream is gone (closed pipe, at exit)
                pass
            finally:
                handler.release()

    def close(self) -> None:
        """Stop the writer thread and write what is left."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2 * self._interval + 1)
        self.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self.flush()


_access_log: AccessLog | None = None

#: Takes each finished request's metrics record, once :func:`transports._metrics.enable`
#: has set it (route, method, status or None, seconds, upstream failure, JWKS fetches).
metrics_sink: Callable[[tuple[Any, ...]], None] | None = None


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the ``sapg`` loggers to ``stream`` (stderr) at ``level``, as text or JSON lines.

    The access log is then buffered (see the module docstring).
    """
    global _access_log
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    for existing in list(logger.handlers):
        logger.removeHandler(existing)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    previous, _access_log = _access_log, AccessLog(handler, fmt)
    if previous is not None:
        previous.close()


def flush_access_log() -> None:
    """Write the access lines still queued (the drivers' exit does it too)."""
    if _access_log is not None:
        _access_log.flush()


@atexit.register
def _close_access_log() -> None:
    if _access_log is not None:
        _access_log.close()


def _path(target: str) -> str:
    """The request target without its query or fragment: queries can hold secrets."""
    end = len(target)
    for mark in ("?", "#"):
        found = target.find(mark)
        if found != -1:
            end = min(end, found)
    return target[:end]


def log_access(exchange: ExchangeBase) -> None:
    """One line for a finished request (status ``-`` / null: the client left unanswered),
    and its record for the metrics when they are on."""
    if metrics_sink is not None:
        metrics_sink(
            (
                exchange.route,
                exchange.method,
                exchange.status or None,
                time.perf_counter() - exchange.started,
                exchange.upstream_failure,
                exchange.jwks_fetches,
            )
        )
    if not access_logger.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - exchange.started) * 1000, 2)
    path = _path(exchange.target)
    status = exchange.status or None
    if _access_log is not None:
        _access_log.add(
            (
                time.time(),
                exchange.request_id,
                exchange.method,
                path,
                status,
                duration_ms,
                exchange.route,
                exchange.upstream_origin,
                exchange.client,
                exchange.x_request_id,
            )
        )
        return
    fields = {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "route": exchange.route,
        "upstream": exchange.upstream_origin,
        "client": exchange.client,
        "x_request_id": exchange.x_request_id,
    }
    access_logger.info(
        'access %s %s %s %.1fms route="%s" upstream=%s client=%s x_request_id=%s id=%d',
        exchange.method,
        path,
        status or "-",
        duration_ms,
        exchange.route,
        exchange.upstream_origin or "-",
        exchange.client or "-",
        exchange.x_request_id or "-",
        exchange.request_id,
        extra=fields,
    )
