"""Recording: a gateway wrapper that writes every ``handle`` call to a trace file.

:class:`RecordingGateway` has the same ``handle(event) -> list[Action]`` as
:class:`sapg_core.Gateway`, so any driver records without knowing it. All the
gateways of one process share one :class:`TraceRecorder`: each
:meth:`TraceRecorder.wrap` writes a header line (a new gateway number, e.g.
after a config reload) and every ``handle`` call then writes one line.

The file is created with mode 0600 and never overwritten (it holds
credentials). Each line is flushed as it is written, so a trace survives a
crash up to its last complete line. If a line cannot be written (a full disk,
a value the codec cannot carry), recording stops with one error in the log and
the gateway keeps serving.

The gateway reads some settings from its own ``env`` by name when a request
needs them (Supabase's URL and key); the wrapper notes those reads and writes
the values in a line just before the step that read them.

``handle`` and the write happen under one lock, so the order of the lines is
the order in which the gateways saw the events, even when the blocking driver
calls ``handle`` from several threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import BinaryIO

from sapg_core import (
    Action,
    Event,
    Gateway,
    GatewayConfig,
    NotingEnv,
    Raised,
    TraceEnv,
    TraceLine,
    TraceStep,
    TrustedProxies,
    dump_line,
    make_header,
)

__all__ = ["RecordingGateway", "TraceRecorder"]

logger = logging.getLogger("sapg")


class TraceRecorder:
    """One trace file, shared by every gateway a process records.

    Args:
        path: the trace to create. It must not exist yet.

    Raises:
        OSError: the file exists or cannot be created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask took away
            self._file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._next_gateway = 0
        self._failed = False

    def wrap(
        self, gateway: Gateway, *, raw_config: object, env: Mapping[str, str]
    ) -> RecordingGateway:
        """Record ``gateway`` from now on; writes its header line.

        Args:
            gateway: built by ``Gateway(compile_config(raw_config, env=env).config, ...)``.
                Its own ``env`` is replaced by a view that notes each name the
                gateway reads, so those values (and only those) are recorded.
            raw_config: the config as loaded, before placeholder resolution.
            env: the environment the config was compiled with; only the names
                the config reads are written.
        """
        with self._lock:
            number = self._next_gateway
            self._next_gateway += 1
            header = make_header(
                raw_config,
                env,
                max_body_bytes=gateway.max_body_bytes,
                service_timeout=gateway.service_timeout,
                gateway=number,
                forwarded_allow_ips=gateway.forwarded_allow_ips,
            )
            self._write(header)
            noting = NotingEnv(gateway.env)
            gateway.env = noting
        return RecordingGateway(gateway, self, number, noting)

    def _write(self, line: TraceLine) -> None:
        if self._failed:
            return
        try:
            self._file.write(dump_line(line).encode("ascii") + b"\n")
            self._file.flush()
        except (OSError, ValueError, TypeError) as exc:  # a full disk must not stop serving
            self._failed = True
            logger.error("recording stopped: cannot write %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RecordingGateway:
    """A :class:`sapg_core.Gateway` whose every ``handle`` call goes into a trace."""

    def __init__(
        self, gateway: Gateway, recorder: TraceRecorder, number: int, env: NotingEnv
    ) -> None:
        self.gateway = gateway
        self.number = number
        self._recorder = recorder
        self._env = env

    def handle(self, event: Event) -> list[Action]:
        """``gateway.handle(event)``, written to the trace (exceptions too, then re-raised)."""
        recorder = self._recorder
        with recorder._lock:
            try:
                actions = self.gateway.handle(event)
            except Exception as exc:
                self._write_env()
                step = TraceStep(gateway=self.number, event=event, raised=Raised.of(exc))
                recorder._write(step)
                raise
            self._write_env()
            recorder._write(TraceStep(gateway=self.number, event=event, actions=tuple(actions)))
        return actions

    def _write_env(self) -> None:
        values = self._env.take()  # read during this step: replay needs them before it
        if values:
            self._recorder._write(TraceEnv(gateway=self.number, values=values))

    # What drivers and the CLI read of a Gateway besides handle().

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    @property
    def max_body_bytes(self) -> int:
        return self.gateway.max_body_bytes

    @property
    def pending_count(self) -> int:
        return self.gateway.pending_count

    @property
    def trusted_proxies(self) -> TrustedProxies:
        return self.gateway.trusted_proxies
