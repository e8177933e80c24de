"""The admin endpoint: ``/metrics``, ``/ready`` and ``/live`` on their own port.

Theory of operation. ``sapg serve --admin-port PORT`` starts a small HTTP server
on a port of its own (never the public one), in a thread of the process that
owns the public socket: the server itself, or the supervisor when there are
worker processes. It is the standard library's threaded ``http.server``, apart
from the drivers, so it answers whatever the driver is doing (a probe must
not depend on the event loop it probes) and costs the request path nothing.

- ``GET /metrics``: the Prometheus text format, from ``collect()`` (see
  :mod:`transports._metrics`).
- ``GET /ready``: 200 ``ready`` while the server accepts requests; 503
  ``starting`` before it listens and ``draining`` once SIGTERM began the graceful
  shutdown, so a load balancer stops sending new requests while those in flight end.
- ``GET /live``: 200 ``live`` as long as the process answers at all.

Anything else is 404, a method other than GET or HEAD 405. Nothing is logged per scrape.
"""

from __future__ import annotations

import http.server
import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["CONTENT_TYPE", "AdminServer", "start_admin"]

logger = logging.getLogger("sapg")

#: The Prometheus text exposition format, as ``prometheus_client`` renders it.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "sapg-admin"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # http.server calls do_<METHOD>
    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        admin = self.server.admin
        path = self.path.split("?", 1)[0]
        content_type = "text/plain; charset=utf-8"
        if path == "/metrics":
            try:
                status, body, content_type = 200, admin.collect(), CONTENT_TYPE
            except Exception:  # a scrape must not take the admin thread down
                logger.exception("admin: /metrics failed")
                status, body = 500, b"metrics failed\n"
        elif path == "/ready":
            state = admin.state()
            status, body = (200 if state == "ready" else 503), f"{state}\n".encode()
        elif path == "/live":
            status, body = 200, b"live\n"
        else:
            status, body = 404, b"not found: /metrics, /ready, /live\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _refuse(self) -> None:
        body = b"method not allowed\n"
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds: no line each


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    admin: AdminServer


class AdminServer:
    """The admin endpoint on ``host``:``port`` (0: a free port), served by a thread.

    Args:
        collect: the ``/metrics`` body.
        state: ``"ready"``, ``"starting"`` or ``"draining"``, for ``/ready``.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self, host: str, port: int, *, collect: Callable[[], bytes], state: Callable[[], str]
    ) -> None:
        self.collect = collect
        self.state = state
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        server_class = type("_AdminHTTPServer", (_HTTPServer,), {"address_family": family})
        self._httpd: _HTTPServer = server_class(infos[0][4][:2], _Handler)
        self._httpd.admin = self
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sapg-admin", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = str(self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def start_admin(
    host: str, port: int, *, collect: Callable[[], bytes], state: Callable[[], str]
) -> AdminServer:
    """Start the admin endpoint and announce it: ``sapg: admin on http://HOST:PORT``.

    Raises:
        OSError: the address cannot be bound.
    """
    admin = AdminServer(host, port, collect=collect, state=state)
    print(f"sapg: admin on {admin.url}", file=sys.stderr, flush=True)
    return admin
