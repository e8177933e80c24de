"""The blocking-socket server ("raw h11"): plain sockets and a bounded pool of worker threads.

The same loop as the trio and asyncio drivers, written with blocking calls. Method
names match the async drivers (``run``, ``_accept``, ``_serve_connection``,
``_handle_request``, ``_execute``, the executors, ``_client_body``, ``_send``, ``_close``).

Theory of operation. The main thread runs a selector that accepts and also holds
every connection that is idle (keep-alive) or still sending its request head: it
reads what they send, non-blocking, into their :class:`ServerConnection` and
enforces their deadlines (``--idle-timeout`` for a new request's first byte; the
whole head within ``--header-timeout``, no gap over ``--read-timeout``). Only a
connection with a complete request head takes a worker thread, which carries the
request out with blocking calls (reading the body under the body deadline and
minimum rate, see :class:`transports._common.Timeouts`), then answers pipelined
requests already buffered, and hands the connection back to the selector when it
waits for more. So clients dribbling their heads, or idle ones, hold no thread;
a body dribbled during a request holds one only until its deadline.

TLS (``ssl_context``): an accepted socket is wrapped at once, without a handshake,
and the handshake is part of receiving the first head: the selector thread drives
it non-blocking (``do_handshake`` on each readiness, watching for writability when
OpenSSL asks), under the head's deadline from the accept. So a client that never
completes its handshake is cut off with ``--header-timeout`` and holds no worker; a
failed handshake (a plain-HTTP client on the TLS port, say) closes the connection.
Decrypted bytes OpenSSL already holds are invisible to ``select``, so they are read
on at once (:func:`_pending`). The handshakes' CPU is the selector thread's.

When every worker is busy, a complete head waits at most :data:`_BUSY_WAIT`
(0.1 s, in order of arrival) for one, then is answered ``503`` JSON
``SERVER_BUSY`` and the connection closed, instead of waiting in a long queue.
The core is not thread-safe: calls to ``handle`` are serialised by one lock (they
are short: the I/O is outside). No policy lives here. The parser is always h11
(the "raw h11" driver).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import queue
import selectors
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Final

from sapg_core import (
    Action,
    ActionFailed,
    BodyChunk,
    BodyEnd,
    BodyReceived,
    CallService,
    ConnectionClosed,
    Event,
    FailureReason,
    ForwardUpstream,
    HTTPEvent,
    Log,
    NeedData,
    OpenTunnel,
    ProtocolFailure,
    ReadBody,
    RelayResponse,
    RequestAborted,
    RequestHead,
    Respond,
    SendHTTP,
    ServerConnection,
    ServerLimits,
)

from ._common import (
    DRAINING,
    SERVER_BUSY_RESPONSE,
    ClientBodyError,
    ExchangeBase,
    Exchanges,
    GatewayFactory,
    GatewayLike,
    Loaded,
    Reload,
    Timeouts,
    as_loaded,
    entropy,
    http_date,
    identify,
    is_key_set_fetch,
    log_action,
    request_received,
    try_reload,
    upstream_origin,
)
from ._logging import log_access
from ._netio import tunnel_blocking
from ._outbound import OutboundError, SyncOutbound, SyncUpstreamBody
from ._services import ServiceRegistry, call_service_sync

__all__ = ["BlockingServer", "run", "serve"]

logger = logging.getLogger("sapg")
_RECEIVE_SIZE = 65536
_BACKLOG = 1024
_MAX_REJECTED = 256  # refused connections lingering at once; past it, closed at once
_ACCEPT_BATCH = 64  # connections accepted per wake-up of the selector
_BUSY_WAIT = 0.1  # a complete head waits this long for a worker before the 503
_MAX_WAITING = 1024  # heads waiting for a worker at once; past it, 503 at once
_KEEP_WINDOW = 0.002  # a worker waits this long for a kept-alive client's next request
_TICK = 0.5  # the selector wakes at least this often (reload, shutdown, lingering sockets)
PARKED_LIMIT: Final = 120.0
DEFAULT_WORKERS: Final = 64


class ClientGone(Exception):
    """Writing to the client failed or stalled."""


class _Connection:
    def __init__(self, sock: socket.socket, peer: str, limits: ServerLimits) -> None:
        self.sock = sock
        self.peer = peer
        self.client = peer.rsplit(":", 1)[0] if ":" in peer else ""  # the peer's IP
        self.scheme = "http"  # "https" on a TLS connection
        self.http = ServerConnection(limits, backend="h11")
        self.is_broken = False
        self.timeout: float | None = None
        self.is_handshaking = False  # TLS: the handshake is not done yet
        # In the selector (idle or receiving a head): when it is cut off, and when the
        # head under way is due as a whole (None: no byte of it yet).
        self.deadline = 0.0
        self.head_due: float | None = None

    def settimeout(self, seconds: float) -> None:
        if seconds != self.timeout:
            self.sock.settimeout(seconds)
            self.timeout = seconds


class _Exchange(ExchangeBase):
    """One request in flight on a worker thread."""

    def __init__(self, serving: Loaded, head: RequestHead) -> None:
        super().__init__(serving, head.method, head.target, head.content_length)
        self.upstream: SyncUpstreamBody | None = None
        self._woken = threading.Event()

    def wake(self) -> None:
        self._woken.set()

    def wait_for_actions(self) -> bool:
        """Wait until another request delivers actions here; False after :data:`PARKED_LIMIT`."""
        self._woken.wait(PARKED_LIMIT)
        self._woken.clear()
        return bool(self.inbox)


class _Workers:
    """At most ``size`` requests carried out at once, on at most ``size`` daemon threads.

    :meth:`try_submit` refuses rather than queue past ``size``. A job may return a
    connection to *follow*: the thread then waits (``wait``, briefly) for that
    connection's next request and serves it itself (``serve``, which may return the
    connection again) if a slot is free and no job is queued; otherwise the
    connection goes back (``hand_back``) with what arrived. A thread that follows
    holds no slot: ``busy`` counts requests only, so following never refuses anyone;
    a queued job waits at most one ``wait`` for a thread.
    """

    def __init__(
        self,
        size: int,
        *,
        wait: Callable[[Any], Any],
        serve: Callable[[Any, Any], Any],
        hand_back: Callable[[Any, Any], None],
        on_free: Callable[[], None],
    ) -> None:
        self.size = size
        self.busy = 0  # requests admitted and not finished (queued or running)
        self.following = 0  # threads waiting for a followed connection's next request
        self._threads = 0
        self._wait, self._serve, self._hand_back = wait, serve, hand_back
        self._on_free = on_free
        self._lock = threading.Condition()
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )

    def try_submit(self, job: Callable[..., Any], *args: Any) -> bool:
        with self._lock:
            if self.busy >= self.size:
                return False
            self.busy += 1
            # Every queued job has a thread to run it, save those following (they
            # come back within one ``wait``); never more than ``size`` threads.
            if self._threads < self.size and self._threads - self.following < self.busy:
                self._threads += 1
                threading.Thread(target=self._work, name="sapg-worker", daemon=True).start()
        self._jobs.put((job, args))
        return True

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.busy == 0 and self.following == 0, timeout)

    def _release(self) -> None:
        with self._lock:
            self.busy -= 1
            self._lock.notify_all()
        self._on_free()

    def _work(self) -> None:
        while True:
            job, args = self._jobs.get()
            try:
                follow = job(*args)
            finally:
                self._release()
            while follow is not None:
                follow = self._follow(follow)

    def _follow(self, conn: Any) -> Any:
        with self._lock:
            wanted = not self._jobs.empty()
            if not wanted:
                self.following += 1
        if wanted:  # a request waits for this thread
            self._hand_back(conn, None)
            return None
        try:
            event = self._wait(conn)
        finally:
            with self._lock:
                self.following -= 1
                self._lock.notify_all()
        if event is None:
            self._hand_back(conn, None)
            return None
        with self._lock:
            admitted = self.busy < self.size and self._jobs.empty()
            if admitted:
                self.busy += 1
        if not admitted:
            self._hand_back(conn, event)
            return None
        try:
            return self._serve(conn, event)
        finally:
            self._release()


_Executor = Callable[[_Connection, _Exchange, Any], Event | None]


class BlockingServer:
    """Serves one gateway on a listening socket with worker threads; see :func:`serve`."""

    def __init__(
        self,
        *,
        gateway: GatewayLike | Loaded,
        limits: ServerLimits,
        timeouts: Timeouts,
        outbound: SyncOutbound,
        workers: int = DEFAULT_WORKERS,
        reload: Reload | None = None,
        services: ServiceRegistry | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.serving = as_loaded(gateway, services)
        self.limits, self.timeouts, self.outbound = limits, timeouts, outbound
        self.ssl_context = ssl_context
        self.reload = reload
        self.is_draining = False
        self._workers = _Workers(
            workers,
            wait=self._next_request_soon,
            serve=self._serve_connection,
            hand_back=self._hand_back,
            on_free=self._on_worker_free,
        )
        self._core_lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._exchanges = Exchanges()
        self._shutdown = threading.Event()
        self._reload_requested = False
        self._reloading = False  # a reload thread runs (the selector thread starts them)
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_w.setblocking(False)
        self._returned: queue.SimpleQueue[tuple[_Connection, HTTPEvent | None]] = (
            queue.SimpleQueue()
        )
        self._rejected: dict[socket.socket, float] = {}  # answered, lingering: when to close
        # Complete heads waiting (briefly) for a worker: (until when, connection, head).
        self._waiting: collections.deque[tuple[float, _Connection, RequestHead]] = (
            collections.deque()
        )
        self._parked: set[_Connection] = set()  # in the selector (selector thread only)
        self._due: list[tuple[float, int, _Connection]] = []  # their deadlines, a heap
        self._order = itertools.count().__next__
        self._selector: selectors.BaseSelector = selectors.DefaultSelector()
        self._executors: dict[type[Action], _Executor] = {
            Respond: self._respond,
            ForwardUpstream: self._forward,
            RelayResponse: self._relay,
            OpenTunnel: self._tunnel,
            ReadBody: self._read_body,
            SendHTTP: self._send_http,
            Log: self._log,
            CallService: self._call_service,
        }

    @property
    def gateway(self) -> GatewayLike:
        """The gateway new requests start on."""
        return self.serving.gateway

    @property
    def services(self) -> ServiceRegistry:
        """The services new requests call."""
        return self.serving.services

    # -- control, safe from signal handlers and other threads ------------------------------

    def shutdown(self) -> None:
        """Stop accepting; :meth:`run` then lets in-flight requests finish."""
        self._shutdown.set()
        self._wake()

    def request_reload(self) -> None:
        """Ask :meth:`run` to call :meth:`reload_config` (SIGHUP does)."""
        self._reload_requested = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._waker_w.send(b"\0")

    def _start_reload(self) -> None:
        """Run :meth:`reload_config` in a thread of its own (the selector thread keeps
        serving), one at a time: an ask during it leaves ``_reload_requested`` set, and the
        selector starts one more when this one is done (it wakes the selector)."""
        self._reload_requested = False
        self._reloading = True

        def reload_then_wake() -> None:
            try:
                self.reload_config()
            finally:
                self._reloading = False
                self._wake()

        threading.Thread(target=reload_then_wake, name="sapg-reload", daemon=True).start()

    def reload_config(self) -> bool:
        """Serve new requests with a gateway built from the config as it is now.

        Requests in flight finish on the gateway they started on. If the new
        config is refused, the old gateway keeps serving (the log says why).
        """
        if self.reload is None:
            logger.warning("reload asked for, but this server has no config file to re-read")
            return False
        gateway = try_reload(self.reload)
        if gateway is None:
            return False
        # One assignment: each new request sees the old pair or the new, whole.
        self.serving = as_loaded(gateway, self.serving.services)
        return True

    # -- the selector thread: accepting, idle connections, request heads -----------------

    def run(self, listener: socket.socket, *, grace: float) -> None:
        """Accept until :meth:`shutdown`, then let in-flight requests finish within ``grace``.

        Refused connections (every worker busy, or a malformed head) get their answer
        and linger here, read and discarded, so that the close does not destroy it.
        """
        selector = self._selector
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, "accept")
        selector.register(self._waker_r, selectors.EVENT_READ, "wake")
        rejected = self._rejected
        try:
            while not self._shutdown.is_set():
                self._select(listener)
                if self._reload_requested and not self._reloading:
                    self._start_reload()
            selector.unregister(listener)
            listener.close()
            self._drain(grace)
        finally:
            for conn in list(self._parked):
                self._unpark(conn)
                conn.sock.close()
            while self._waiting:
                self._waiting.popleft()[1].sock.close()
            selector.close()
            listener.close()
            for sock in rejected:
                sock.close()

    def _select(self, listener: socket.socket | None) -> None:
        """One round: wait for sockets or the next deadline, then serve what is ready."""
        now = time.monotonic()
        timeout = _TICK if not self._due else max(0.0, min(_TICK, self._due[0][0] - now))
        if self._waiting:
            timeout = max(0.0, min(timeout, self._waiting[0][0] - now))
        for key, _ in self._selector.select(timeout):
            data = key.data
            if isinstance(data, _Connection):
                self._on_readable(data)
            elif data == "accept" and listener is not None:
                self._accept(listener)
            elif data == "wake":
                with contextlib.suppress(OSError):
                    self._waker_r.recv(4096)
            else:
                self._linger(key.fileobj)  # type: ignore[arg-type]
        self._take_back()
        self._admit_waiting()
        self._expire_parked()
        _expire(self._rejected, self._selector)

    def _admit_waiting(self) -> None:
        """Give the heads waiting for a worker to the workers freed; refuse those past due."""
        waiting = self._waiting
        while waiting and self._workers.try_submit(
            self._serve_connection, waiting[0][1], waiting[0][2]
        ):
            waiting.popleft()
        now = time.monotonic()
        while waiting and waiting[0][0] <= now:
            _, conn, _ = waiting.popleft()
            logger.warning("server busy (%d workers): refused %s", self._workers.size, conn.peer)
            self._refuse(conn.sock, SERVER_BUSY_RESPONSE)

    def _on_worker_free(self) -> None:
        """A worker finished a request (its thread): wake the selector if a head waits."""
        if self._waiting:
            self._wake()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                logger.error("accept failed: %s", exc)
                time.sleep(0.1)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{address[0]}:{address[1]}"
            if self.ssl_context is not None:  # the handshake: in the selector, non-blocking
                try:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except OSError as exc:  # the client left already
                    logger.info("client %s: TLS refused: %s", peer, exc)
                    sock.close()
                    continue
            conn = _Connection(sock, peer, self.limits)
            if self.ssl_context is not None:
                conn.scheme, conn.is_handshaking = "https", True
            conn.head_due = time.monotonic() + self.timeouts.header  # the first head: from now
            self._park(conn)

    def _park(self, conn: _Connection) -> None:
        """Hold ``conn`` in the selector until a complete head (or its deadline)."""
        if conn.http.is_idle and conn.head_due is None and self.is_draining:
            conn.sock.close()
            return
        conn.sock.setblocking(False)
        conn.timeout = 0.0
        try:
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (ValueError, OSError):  # closed meanwhile
            conn.sock.close()
            return
        self._parked.add(conn)
        self._set_deadline(conn)
        if _pending(conn.sock):  # TLS bytes already decrypted: select() cannot see them
            self._on_readable(conn)

    def _set_deadline(self, conn: _Connection) -> None:
        now = time.monotonic()
        if conn.http.is_idle and conn.head_due is None:
            deadline = now + self.timeouts.idle
        else:
            if conn.head_due is None:
                conn.head_due = now + self.timeouts.header
            deadline = min(conn.head_due, now + self.timeouts.read)
        conn.deadline = deadline
        heapq.heappush(self._due, (deadline, self._order(), conn))
        if len(self._due) > 1024 + 4 * len(self._parked):  # mostly stale entries: rebuild
            self._due = [(c.deadline, self._order(), c) for c in self._parked]
            heapq.heapify(self._due)

    def _unpark(self, conn: _Connection) -> None:
        self._parked.discard(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)

    def _expire_parked(self) -> None:
        due, now = self._due, time.monotonic()
        while due and due[0][0] <= now:
            deadline, _, conn = heapq.heappop(due)
            if conn in self._parked and conn.deadline == deadline:
                if not conn.http.is_idle or conn.head_due is not None:  # a head under way
                    logger.info("client %s timed out: connection cut off", conn.peer)
                self._unpark(conn)
                conn.sock.close()

    def _take_back(self) -> None:
        """Take the connections workers gave back: park them, or dispatch the head they bring."""
        while True:
            try:
                conn, event = self._returned.get_nowait()
            except queue.Empty:
                return
            if event is None:
                self._park(conn)
            else:
                self._dispatch(conn, event)

    def _on_readable(self, conn: _Connection) -> None:
        if conn.is_handshaking and not self._handshake(conn):
            return
        try:
            data = conn.sock.recv(_RECEIVE_SIZE)
            conn.http.receive_data(data)
            event = conn.http.next_event()
            while isinstance(event, NeedData) and data and _pending(conn.sock):
                data = conn.sock.recv(_RECEIVE_SIZE)  # a TLS record at a time
                conn.http.receive_data(data)
                event = conn.http.next_event()
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:  # reset, or broken TLS
            self._unpark(conn)
            conn.sock.close()
            return
        if isinstance(event, NeedData):
            self._set_deadline(conn)  # a head under way: its deadline from the first byte on
            return
        self._unpark(conn)
        self._dispatch(conn, event)

    def _handshake(self, conn: _Connection) -> bool:
        """Move a TLS handshake on, non-blocking; whether it is done.

        It runs in the selector thread under the connection's head deadline (from the
        accept), so a client that stalls its handshake is cut off with the head timeout and
        never holds a worker. A failed one (a plain-HTTP client, say) closes the connection.
        """
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return False
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
            return False
        except OSError as exc:
            logger.info("client %s: TLS handshake failed: %s", conn.peer, exc)
            self._unpark(conn)
            sock.close()
            return False
        conn.is_handshaking = False
        self._watch(conn, selectors.EVENT_READ)
        return True

    def _watch(self, conn: _Connection, events: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            if self._selector.get_key(conn.sock).events != events:
                self._selector.modify(conn.sock, events, conn)

    def _dispatch(self, conn: _Connection, event: HTTPEvent) -> None:
        """A complete head goes to a worker (503 if none is free); a failure is answered."""
        conn.head_due = None
        if isinstance(event, RequestHead):
            conn.sock.setblocking(True)
            conn.timeout = None
            if self.is_draining:
                conn.http.stop_keep_alive()
            if not self._waiting and self._workers.try_submit(self._serve_connection, conn, event):
                return
            if len(self._waiting) < _MAX_WAITING:  # wait a moment for a worker, in order
                self._waiting.append((time.monotonic() + _BUSY_WAIT, conn, event))
                return
            logger.warning("server busy (%d workers): refused %s", self._workers.size, conn.peer)
            self._refuse(conn.sock, SERVER_BUSY_RESPONSE)
        elif isinstance(event, ProtocolFailure):
            logger.info("protocol failure from %s (%d): %s", conn.peer, event.status, event.detail)
            self._refuse(conn.sock, event.response_bytes)
        else:  # closed
            conn.sock.close()

    def _refuse(self, sock: socket.socket, answer: bytes) -> None:
        """Send a short final answer without blocking, then linger (see :meth:`run`)."""
        sock.setblocking(False)
        try:
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self._rejected) >= _MAX_REJECTED:
            sock.close()
            return
        self._rejected[sock] = time.monotonic() + self.timeouts.linger
        self._selector.register(sock, selectors.EVENT_READ, "linger")

    def _linger(self, sock: socket.socket) -> None:
        try:
            if sock.recv(_RECEIVE_SIZE):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._selector.unregister(sock)
        self._rejected.pop(sock, None)
        sock.close()

    def _drain(self, grace: float) -> None:
        """Close idle connections; let heads under way and requests in flight finish
        within ``grace``."""
        self.is_draining = True
        DRAINING.set()
        for conn in list(self._connections):
            conn.http.stop_keep_alive()
        for conn in list(self._parked):
            if conn.http.is_idle and conn.head_due is None:
                self._unpark(conn)
                conn.sock.close()
        deadline = time.monotonic() + grace
        while self._parked or self._waiting or self._workers.busy or self._workers.following:
            if time.monotonic() >= deadline:
                break
            self._select(None)
        self._take_back()
        if self._workers.busy:
            logger.warning("grace period over: closing %d connections", self._workers.busy)
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            self._workers.wait_idle(2)

    # -- a worker thread: one complete head, then what the connection has buffered --------

    def _serve_connection(self, conn: _Connection, event: HTTPEvent) -> _Connection | None:
        """Carry out ``event`` (a head), then what the connection has buffered.

        Returns:
            ``conn`` when it waits for a new request: the worker follows it for a
            moment (:class:`_Workers`); None when it is closed or given back.
        """
        self._connections.add(conn)
        done = False
        try:
            while True:
                if isinstance(event, RequestHead):
                    self._handle_request(conn, event)
                elif isinstance(event, ProtocolFailure):
                    logger.info(
                        "protocol failure from %s (%d): %s", conn.peer, event.status, event.detail
                    )
                    self._send(conn, event.response_bytes)
                    break
                else:
                    break
                if conn.is_broken:
                    break
                event = conn.http.next_event()
                if isinstance(event, NeedData):
                    done = True
                    self._connections.discard(conn)
                    if conn.http.is_idle and not self.is_draining:
                        return conn
                    self._hand_back(conn, None)  # part of the next head: the selector's
                    return None
        except ClientGone:
            pass
        except Exception:  # the boundary: one broken connection must not stop the server
            logger.exception("connection handler failed")
        finally:
            if not done:
                self._connections.discard(conn)
                self._close(conn)
                if self.is_draining:
                    self._wake()  # the selector thread waits for the workers to finish
        return None

    def _hand_back(self, conn: _Connection, event: HTTPEvent | None) -> None:
        """Give ``conn`` to the selector thread: to park, or with a head to dispatch."""
        self._returned.put((conn, event))
        self._wake()

    def _handle_request(self, conn: _Connection, head: RequestHead) -> None:
        exchange = _Exchange(self.serving, head)
        self._exchanges.add(exchange)
        event = request_received(
            head,
            request_id=exchange.request_id,
            now=time.time(),
            entropy=entropy(),
            scheme=conn.scheme,
            client=conn.client,
        )
        identify(exchange, event)
        try:
            self._execute(conn, exchange, self._handle(exchange, event))
        except ClientGone:  # the client's doing: INFO
            logger.info("client %s went away before its answer was sent", conn.peer)
            conn.is_broken = True
        finally:
            self._exchanges.discard(exchange)
            if not exchange.is_finished:  # the client left, or the request was given up
                conn.is_broken = True
                aborted = RequestAborted(request_id=exchange.request_id, now=time.time())
                self._exchanges.deliver(exchange, self._handle(exchange, aborted))
            log_access(exchange)
            if exchange.upstream is not None:
                exchange.upstream.close()

    def _handle(self, exchange: _Exchange, event: Event) -> list[Action]:
        with self._core_lock:
            return exchange.gateway.handle(event)

    def _execute(self, conn: _Connection, exchange: _Exchange, actions: list[Action]) -> None:
        """Carry out the request's actions in order, feeding each outcome back to its gateway."""
        self._exchanges.deliver(exchange, actions)
        inbox = exchange.inbox
        while inbox or not exchange.is_finished:
            if not inbox and not exchange.wait_for_actions():
                logger.error("request %d: the core gave no answer", exchange.request_id)
                return
            action = inbox.popleft()
            executor = self._executors.get(type(action))
            if executor is None:
                raise TypeError(f"no executor for {type(action).__name__}")
            outcome = executor(conn, exchange, action)
            if outcome is not None:
                self._exchanges.deliver(exchange, self._handle(exchange, outcome))

    def _next_request_soon(self, conn: _Connection) -> HTTPEvent | None:
        """What ``conn`` sends within :data:`_KEEP_WINDOW` if it is a whole head (or the
        end of the connection); None otherwise (part of a head is kept in ``conn.http``).

        A client that sends its next request at once (the usual keep-alive exchange)
        is then served without a round trip through the selector thread, and no
        head is ever waited for here beyond the window.
        """
        if self.is_draining:
            return None
        try:
            conn.settimeout(_KEEP_WINDOW)
            data = conn.sock.recv(_RECEIVE_SIZE)
        except OSError:  # nothing yet (TimeoutError is one), or reset: the selector sees it
            return None
        conn.http.receive_data(data)
        event = conn.http.next_event()
        return None if isinstance(event, NeedData) else event

    # -- executors, one per action type ------------------------------------------------------

    def _respond(self, conn: _Connection, exchange: _Exchange, action: Respond) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        date = http_date(time.time())
        self._send(
            conn, conn.http.send_response(action.status, action.headers, action.body, date=date)
        )

    def _forward(self, conn: _Connection, exchange: _Exchange, action: ForwardUpstream) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        if action.body is None:
            body = self._client_body(conn, exchange, action.body_limit)
            content_length = exchange.content_length
        else:  # already read (for a hook): exactly these bytes, nothing more from the client
            body, content_length = _given_body(action.body), len(action.body)
        try:
            result = self.outbound.forward(action, body, content_length=content_length)
        finally:
            body.close()
        if exchange.is_finished:  # the client went away while we streamed its body
            return RequestAborted(request_id=exchange.request_id, now=time.time())
        if isinstance(result, ActionFailed):
            exchange.upstream_failure = result.reason
            return result
        event, exchange.upstream = result
        return event

    def _relay(self, conn: _Connection, exchange: _Exchange, action: RelayResponse) -> None:
        exchange.is_finished = True
        exchange.status, exchange.route = action.status, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: RelayResponse without an upstream")
        date = http_date(time.time())
        out = conn.http.send_head(action.status, action.headers, date=date)
        ready, complete = upstream.take_ready()  # a small answer: head, body and end at once
        if ready:
            out += conn.http.send_body(ready)
        if complete:
            self._send(conn, out + conn.http.send_end())
            return
        self._send(conn, out)
        try:
            for chunk in upstream:
                self._send(conn, conn.http.send_body(chunk))
        except OutboundError as exc:  # the head is out: closing is all that is left to say
            logger.warning(
                "request %d: upstream body broke off (%s): %s",
                exchange.request_id,
                exc.reason.value,
                exc.detail,
            )
            exchange.upstream_failure = exc.reason
            conn.is_broken = True
            return
        self._send(conn, conn.http.send_end())

    def _tunnel(self, conn: _Connection, exchange: _Exchange, action: OpenTunnel) -> None:
        """The 101, then bytes both ways on this worker thread (:func:`tunnel_blocking`)
        until either side closes or nothing moves for ``idle`` seconds."""
        exchange.is_finished = True
        exchange.status, exchange.route = 101, action.route
        upstream = exchange.upstream
        if upstream is None:
            raise RuntimeError(f"request {exchange.request_id}: OpenTunnel without an upstream")
        stream, upstream_first = upstream.take_tunnel()
        head = conn.http.send_switch(action.headers, date=http_date(time.time()))
        client_first = conn.http.take_trailing()
        conn.is_broken = True  # no more HTTP on this connection: close it after the tunnel
        self._send(conn, head + upstream_first)
        conn.settimeout(self.timeouts.idle)
        tunnel_blocking(conn.sock, stream, client_first, idle=self.timeouts.idle)

    def _read_body(self, conn: _Connection, exchange: _Exchange, action: ReadBody) -> Event:
        try:
            body = b"".join(self._client_body(conn, exchange, action.limit))
        except ClientBodyError as exc:
            if exc.aborted:
                return RequestAborted(request_id=exchange.request_id, now=time.time())
            return ActionFailed(
                request_id=exchange.request_id,
                reason=exc.reason,
                detail=exc.detail,
                now=time.time(),
            )
        return BodyReceived(request_id=exchange.request_id, body=body, now=time.time())

    def _send_http(self, conn: _Connection, exchange: _Exchange, action: SendHTTP) -> Event:
        exchange.upstream_origin = upstream_origin(action.url)
        if is_key_set_fetch(action.url):
            exchange.jwks_fetches += 1
        return self.outbound.send(action)

    def _log(self, conn: _Connection, exchange: _Exchange, action: Log) -> None:
        log_action(exchange, action)

    def _call_service(self, conn: _Connection, exchange: _Exchange, action: CallService) -> Event:
        return call_service_sync(
            action, exchange.services, env=os.environ, request_id=exchange.x_request_id
        )

    # -- I/O helpers ---------------------------------------------------------------------------

    def _client_body(
        self, conn: _Connection, exchange: _Exchange, limit: int
    ) -> Generator[bytes, None, None]:
        """The request body as it arrives; raises :class:`ClientBodyError` on failure."""
        if exchange.is_body_done:
            return
        try:
            self._send(conn, conn.http.send_continue())
        except ClientGone:
            exchange.is_finished = True
            raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True) from None
        http, timeouts = conn.http, self.timeouts
        received = 0
        waited = 0.0
        while True:
            event = http.next_event()
            if isinstance(event, NeedData):
                data = None
                now = time.monotonic()
                wait = timeouts.body_deadline(now, received, waited) - now
                if wait > 0:
                    try:
                        conn.settimeout(wait)
                        data = conn.sock.recv(_RECEIVE_SIZE)
                    except OSError:  # timed out (TimeoutError is one), reset, shut down
                        pass
                waited += time.monotonic() - now
                if data is not None:
                    http.receive_data(data)
                    continue
                event = ConnectionClosed()
            if isinstance(event, BodyChunk):
                received += len(event.data)
                if limit and received > limit:
                    exchange.is_body_done = True
                    http.stop_keep_alive()
                    raise ClientBodyError(FailureReason.BODY_TOO_LARGE, f"body over {limit} bytes")
                yield event.data
                continue
            exchange.is_body_done = True
            if isinstance(event, BodyEnd):
                return
            if isinstance(event, ProtocolFailure):
                reason = (
                    FailureReason.BODY_TOO_LARGE if event.status == 413 else FailureReason.CLIENT
                )
                raise ClientBodyError(reason, event.detail)
            exchange.is_finished = True  # closed, or stalled past its deadline
            conn.is_broken = True
            logger.info("client %s: request body cut off (closed, or past its deadline)", conn.peer)
            raise ClientBodyError(FailureReason.CLIENT, "client went away", aborted=True)

    def _send(self, conn: _Connection, data: bytes) -> None:
        if not data:
            return
        try:
            conn.settimeout(self.timeouts.read)
            conn.sock.sendall(data)
            return
        except OSError:
            pass
        conn.http.stop_keep_alive()
        raise ClientGone

    def _close(self, conn: _Connection) -> None:
        """Close, first reading what the client still sends so the close is not a reset."""
        if conn.http.has_unread_input and not conn.is_broken:
            deadline = time.monotonic() + self.timeouts.linger
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
                while (left := deadline - time.monotonic()) > 0:
                    conn.settimeout(left)
                    if not conn.sock.recv(_RECEIVE_SIZE):
                        break
        conn.sock.close()


def _pending(sock: socket.socket) -> int:
    """Decrypted bytes a TLS socket holds that ``select`` cannot see (0 for plain TCP)."""
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


def _given_body(data: bytes) -> Generator[bytes, None, None]:
    """A body the core already holds (``ForwardUpstream.body``)."""
    if data:
        yield data


def _expire(rejected: dict[socket.socket, float], selector: selectors.BaseSelector) -> None:
    if not rejected:
        return
    now = time.monotonic()
    for sock, deadline in list(rejected.items()):
        if deadline <= now:
            selector.unregister(sock)
            del rejected[sock]
            sock.close()


def serve(
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None = None,
    gateway_factory: GatewayFactory | None = None,
    reload: Reload | None = None,
    limits: ServerLimits | None = None,
    timeouts: Timeouts | None = None,
    workers: int = DEFAULT_WORKERS,
    on_ready: Callable[[str, int], None] | None = None,
    on_server: Callable[[BlockingServer], None] | None = None,
    grace: float = 10.0,
    outbound: SyncOutbound | None = None,
    services: ServiceRegistry | None = None,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until :meth:`BlockingServer.shutdown`, then shut down gracefully and return.

    Args:
        gateway: the core to drive; or ``gateway_factory(host, port)`` builds it
            once the listener is bound (give exactly one of them).
        services: what ``CallService`` actions call (see :func:`transports.load_services`);
            a factory or a reload may bring its own (:class:`transports._common.Loaded`).
            Their :meth:`~transports.ServiceRegistry.close` is the caller's.
        reload: builds the gateway for new requests when
            :meth:`BlockingServer.request_reload` is called (SIGHUP, under :func:`run`).
        limits, timeouts: the server's; defaults as in their classes.
        workers: worker threads, so also the most connections served at once.
        on_ready: called with the bound host and port once accepting.
        on_server: called with the server before accepting (to shut it down later).
        grace: on shutdown, how long in-flight requests may take to finish.
        outbound: the upstream executor (default: a fresh pool, closed on return).
        sock: a socket already bound and listening (a worker process's, inherited from
            its supervisor) to accept on instead of binding ``host`` and ``port``.
        ssl_context: serve HTTPS with it; None: plain HTTP. Handshakes run in the
            selector thread, non-blocking, under the header timeout.
    """
    if (gateway is None) == (gateway_factory is None):
        raise TypeError("give exactly one of gateway and gateway_factory")
    listener = _listen(host, port) if sock is None else sock
    bound_host, bound_port = listener.getsockname()[:2]
    built: GatewayLike | Loaded
    if gateway is None:
        assert gateway_factory is not None
        built = gateway_factory(bound_host, bound_port)
    else:
        built = gateway
    own_outbound = outbound is None
    outbound = SyncOutbound(max_connections=max(workers, 10)) if outbound is None else outbound
    server = BlockingServer(
        gateway=built,
        limits=limits or ServerLimits(),
        timeouts=timeouts or Timeouts(),
        outbound=outbound,
        workers=workers,
        reload=reload,
        services=services,
        ssl_context=ssl_context,
    )
    try:
        if on_server is not None:
            on_server(server)
        if on_ready is not None:
            on_ready(bound_host, bound_port)
        server.run(listener, grace=grace)
    finally:
        listener.close()
        if own_outbound:
            outbound.close()


def run(
    *,
    host: str,
    port: int,
    gateway: GatewayLike | None = None,
    gateway_factory: GatewayFactory | None = None,
    reload: Reload | None = None,
    limits: ServerLimits | None = None,
    timeouts: Timeouts | None = None,
    workers: int = DEFAULT_WORKERS,
    on_ready: Callable[[str, int], None] | None = None,
    grace: float = 10.0,
    services: ServiceRegistry | None = None,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Run :func:`serve` until SIGINT or SIGTERM, then shut down gracefully (main thread only).

    With a ``reload``, SIGHUP re-reads the config (see :func:`serve`).

    Returns:
        0 after a graceful shutdown; 1 if a second signal cut it short.
    """
    servers: list[BlockingServer] = []

    def on_signal(signum: int, frame: object) -> None:
        if not servers:
            raise KeyboardInterrupt
        if servers[0].is_draining or servers[0]._shutdown.is_set():
            logger.warning("signal %d again: stopping now", signum)
            raise _HardStop
        logger.info("signal %d: shutting down gracefully", signum)
        servers[0].shutdown()

    def on_sighup(signum: int, frame: object) -> None:
        if servers:
            logger.info("SIGHUP: reloading the config")
            servers[0].request_reload()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    if reload is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_sighup)
    try:
        serve(
            host=host,
            port=port,
            gateway=gateway,
            gateway_factory=gateway_factory,
            reload=reload,
            limits=limits,
            timeouts=timeouts,
            workers=workers,
            on_ready=on_ready,
            on_server=servers.append,
            grace=grace,
            services=services,
            sock=sock,
            ssl_context=ssl_context,
        )
    except _HardStop:
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``'s first address, of its family (``::1`` is IPv6).

    Raises:
        OSError: ``host`` does not resolve, or the address cannot be bound.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return socket.create_server(address, family=family, backlog=_BACKLOG)


class _HardStop(BaseException):
    """A second signal during the graceful shutdown."""
