"""Worker processes: one listening socket, N processes accepting on it, a parent that supervises.

Theory of operation. ``sapg serve --workers N`` (N > 1) makes this process a
supervisor. It binds the public address once, then starts N workers: each is
``python -m transports.cli`` with the same arguments plus ``--workers 1`` and a
hidden ``--worker-of``, which names the listening socket's file descriptor (the
worker inherits it and serves on it: the drivers' ``sock=``), a pipe on which
the worker writes its pid once it accepts, its index, and the supervisor's pid.
Each worker is a whole server with its own gateway, outbound pool, JWKS cache
and services: nothing is shared but the socket, so a worker that crashes takes
nothing with it.

One inherited socket rather than ``SO_REUSEPORT``: the address is bound once,
so a bind failure is one line and ``--port 0`` gives one port every worker
serves; connections waiting in the accept queue survive a worker that dies (with
``SO_REUSEPORT`` each worker has its own queue, and what is queued on a dead
worker's socket is reset); and it works the same on every platform (``SO_REUSEPORT``
balances only on Linux). The kernel wakes the workers waiting in ``accept``, so
an idle worker takes the next connection; each one's keep-alive connections
stay with it.

The supervisor prints the ready line once, when every worker has written its
pid. Worker 0 starts first and the others once it listens, so a config that
cannot be loaded is reported once, and then exit code is the worker's. It
watches its workers every 50 ms: one that dies is replaced (logged with its
exit status); one that dies within :data:`QUICK_EXIT` seconds of its start is a
crash loop, restarted after a delay that doubles each time up to
:data:`MAX_DELAY`. SIGTERM or SIGINT is sent on as SIGTERM to every worker (each
drains and exits 0; the supervisor exits 0 when all did); a second one is sent on
too (the workers stop at once; exit 1). SIGHUP is sent on to every worker (each
re-reads its config). The workers run in a process group of their own, so a
terminal's Ctrl-C reaches only the supervisor, which drains them once; on Linux
they also get SIGTERM if the supervisor dies.

With the admin endpoint on, the supervisor serves it: ``/metrics`` sums the
workers' values, which ``prometheus_client`` keeps in a temporary directory
(``PROMETHEUS_MULTIPROC_DIR``) the supervisor creates and removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import attrs

__all__ = ["WORKER_OPTION", "Worker", "supervise", "worker_from"]

logger = logging.getLogger("sapg")

#: The hidden option that makes ``sapg serve`` a worker of a supervisor.
WORKER_OPTION: Final = "--worker-of"
#: A worker that exits sooner than this after its start is crash-looping.
QUICK_EXIT: Final = 5.0
#: The longest delay before a crash-looping worker is started again (seconds).
MAX_DELAY: Final = 10.0
_FIRST_DELAY: Final = 0.5
_TICK: Final = 0.05
_BACKLOG: Final = 1024
#: After the workers were asked to stop, how long beyond ``grace`` before they are killed.
_STOP_MARGIN: Final = 10.0


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``'s first address, inheritable by the workers.

    Raises:
        OSError: ``host`` does not resolve, or the address cannot be bound.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.create_server(address, family=family, backlog=_BACKLOG)
    sock.set_inheritable(True)
    return sock


@attrs.define
class _Slot:
    """One worker's place: the process serving it now, and its crash-loop state."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    is_listening: bool = False
    quick_exits: int = 0  # deaths in a row, each soon after its start
    start_at: float | None = None  # when to start a replacement (None: none due)


class _Supervisor:
    def __init__(
        self,
        *,
        count: int,
        command: Callable[[int], list[str]],
        env: dict[str, str],
        pass_fds: Sequence[int],
        ready_fd: int,
        on_all_ready: Callable[[], None],
        on_exit: Callable[[int], None],
        grace: float,
    ) -> None:
        self.slots = [_Slot(index) for index in range(count)]
        self._command = command
        self._env = env
        self._pass_fds = tuple(pass_fds)
        self._ready_fd = ready_fd
        self._ready_buffer = b""
        self._on_all_ready = on_all_ready
        self._on_exit = on_exit
        self._grace = grace
        self.state = "starting"  # then "ready", then "draining"
        self._signals: deque[int] = deque()
        self._stops = 0
        self._kill_at = float("inf")
        self._failed = 0  # a worker's exit code while starting: the supervisor's

    def on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        self._start(self.slots[0])
        while True:
            while self._signals:
                self._signal(self._signals.popleft())
            self._read_ready()
            self._reap()
            live = [slot for slot in self.slots if slot.process is not None]
            if self.state == "draining" or self._failed:
                if not live:
                    return self._failed or (1 if self._stops > 1 else 0)
                if time.monotonic() >= self._kill_at:
                    for slot in live:
                        logger.warning("worker %d did not stop in time: killing it", slot.index)
                        self._send(slot, signal.SIGKILL)
                    self._kill_at = float("inf")
            else:
                self._start_due()
            time.sleep(_TICK)

    # -- events ------------------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            if self.state == "draining":
                return
            logger.info("SIGHUP: reloading the config of %d workers", len(self.slots))
            for slot in self.slots:
                self._send(slot, signal.SIGHUP)
            return
        self._stops += 1
        if self._stops == 1:
            logger.info("signal %d: shutting down %d workers gracefully", signum, len(self.slots))
        else:
            logger.warning("signal %d again: stopping the workers now", signum)
        self.state = "draining"
        self._kill_at = time.monotonic() + self._grace + _STOP_MARGIN
        for slot in self.slots:
            slot.start_at = None
            self._send(slot, signal.SIGTERM)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_fd, 4096)
        except BlockingIOError:
            return
        self._ready_buffer += data
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        for line in lines:
            pid = int(line)
            for slot in self.slots:
                if slot.process is not None and slot.process.pid == pid:
                    slot.is_listening = True
        if self.state != "starting":
            return
        first = self.slots[0]
        if first.is_listening and any(slot.process is None for slot in self.slots[1:]):
            for slot in self.slots[1:]:
                if slot.process is None:
                    self._start(slot)
        if all(slot.is_listening for slot in self.slots):
            self.state = "ready"
            self._on_all_ready()

    def _reap(self) -> None:
        for slot in self.slots:
            process = slot.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            slot.process, slot.is_listening = None, False
            self._on_exit(process.pid)
            if self.state == "draining" or self._failed:
                continue
            if self.state == "starting":
                logger.error("worker %d exited (%s) before it listened", slot.index, _status(code))
                self._failed = code if code > 0 else 1
                self._kill_at = time.monotonic() + self._grace + _STOP_MARGIN
                for other in self.slots:
                    self._send(other, signal.SIGTERM)
                continue
            lived = time.monotonic() - slot.started_at
            slot.quick_exits = slot.quick_exits + 1 if lived < QUICK_EXIT else 0
            if slot.quick_exits <= 1:
                delay = 0.0
                logger.warning(
                    "worker %d (pid %d) exited (%s): starting a new one",
                    slot.index,
                    process.pid,
                    _status(code),
                )
            else:
                delay = min(_FIRST_DELAY * 2 ** (slot.quick_exits - 2), MAX_DELAY)
                logger.error(
                    "worker %d (pid %d) exited (%s) %d times in a row soon after starting: "
                    "next start in %.1fs",
                    slot.index,
                    process.pid,
                    _status(code),
                    slot.quick_exits,
                    delay,
                )
            slot.start_at = time.monotonic() + delay

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None and slot.start_at is not None and slot.start_at <= now:
                slot.start_at = None
                self._start(slot)

    # -- processes ---------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(
            self._command(slot.index),
            stdin=subprocess.DEVNULL,
            env=self._env,
            pass_fds=self._pass_fds,
            process_group=0,  # a terminal's Ctrl-C is the supervisor's to pass on
        )
        slot.started_at = time.monotonic()
        slot.is_listening = False
        logger.debug("worker %d started: pid %d", slot.index, slot.process.pid)

    @staticmethod
    def _send(slot: _Slot, signum: int) -> None:
        if slot.process is not None and slot.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signum)


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(
    transport: str,
    *,
    host: str,
    port: int,
    on_ready: Callable[[str, int], None],
    workers: int,
    argv: Sequence[str],
    grace: float,
    admin: Callable[[str | None, Callable[[], str]], Callable[[], None]] | None = None,
) -> int:
    """Serve ``host``:``port`` from ``workers`` processes until SIGTERM or SIGINT (main thread).

    Args:
        transport: the driver (for the log); the workers get it from ``argv``.
        on_ready: called once with the bound address, when every worker listens.
        argv: this ``sapg`` command's arguments (from ``serve`` on), given to each worker.
        grace: the workers' ``--grace``; a worker still running ``grace`` + 10 s after
            SIGTERM is killed.
        admin: starts the admin endpoint, given the directory the workers' metrics go
            to and the supervisor's state (for ``/ready``); returns what stops it.

    Returns:
        0 after every worker drained; 1 if a second signal cut it short; a worker's exit
        code if it could not start (a config that cannot be loaded: 2).

    Raises:
        OSError: the address cannot be bound.
    """
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    metrics_dir = tempfile.mkdtemp(prefix="sapg-metrics-") if admin is not None else None
    env = dict(os.environ)
    if metrics_dir is not None:
        from ._metrics import MULTIPROC_ENV

        env[MULTIPROC_ENV] = metrics_dir
    parent = os.getpid()

    def command(index: int) -> list[str]:
        spec = f"{sock.fileno()},{ready_w},{index},{parent}"
        cli = [sys.executable, "-m", "transports.cli"]
        return [*cli, *argv, "--workers", "1", WORKER_OPTION, spec]

    def on_exit(pid: int) -> None:
        if metrics_dir is not None:
            from ._metrics import forget_process

            forget_process(pid, metrics_dir)

    supervisor = _Supervisor(
        count=workers,
        command=command,
        env=env,
        pass_fds=(sock.fileno(), ready_w),
        ready_fd=ready_r,
        on_all_ready=lambda: on_ready(bound_host, bound_port),
        on_exit=on_exit,
        grace=grace,
    )
    stop_admin = None
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, supervisor.on_signal) for signum in handled}
    try:
        if admin is not None:
            stop_admin = admin(metrics_dir, lambda: supervisor.state)
        logger.info("starting %d worker processes (transport=%s)", workers, transport)
        return supervisor.run()
    finally:
        for slot in supervisor.slots:  # only on an error of our own: leave no orphan
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if stop_admin is not None:
            stop_admin()
        sock.close()
        os.close(ready_r)
        os.close(ready_w)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@attrs.frozen
class Worker:
    """What a worker process got from its supervisor (``--worker-of``)."""

    sock: socket.socket
    ready_fd: int
    index: int

    def on_ready(self, host: str, port: int) -> None:
        """Tell the supervisor this worker accepts (instead of printing the ready line)."""
        os.write(self.ready_fd, f"{os.getpid()}\n".encode())


def worker_from(spec: str) -> Worker:
    """The worker's inherited socket and pipe, from ``--worker-of FD,FD,INDEX,PID``.

    On Linux the worker is also asked to get SIGTERM when its supervisor dies.

    Raises:
        ValueError: a malformed spec, or the supervisor is already gone.
    """
    listen_fd, ready_fd, index, parent = (int(part) for part in spec.split(","))
    _die_with_parent()
    if os.getppid() != parent:
        raise ValueError("the supervisor is gone")
    return Worker(socket.socket(fileno=listen_fd), ready_fd, index)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
