"""Real servers for the driver tests: the gateway under each transport, and a streaming upstream.

``start(kind, config, ...)`` runs the gateway as users run it, in a
subprocess: ``sapg serve --transport trio|asyncio|h11`` or, for ``asgi``, the
ASGI adapter under uvicorn (httptools). :class:`StreamingUpstream` is a
threaded h11 upstream on 127.0.0.1 that can be slow, stream its answers in
pieces and generate or swallow bodies of any size without holding them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import h11

KINDS = ("trio", "asyncio", "h11", "asgi")
ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(
    r"(?:sapg: listening on|Uvicorn running on) http://127\.0\.0\.1:(\d+)", re.IGNORECASE
)


class Server:
    """A running gateway subprocess; ``lines`` collects its stderr."""

    def __init__(self, kind: str, process: subprocess.Popen[str], port: int) -> None:
        self.kind = kind
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.lines: list[str] = []
        self.reader: threading.Thread | None = None  # collects ``lines`` until stderr ends

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        if self.reader is not None:  # every line the process wrote is in ``lines``
            self.reader.join(5)
        return code


def clean_exit(server: Server) -> int:
    """The exit status of a graceful stop by SIGTERM.

    0 for ``sapg serve``; uvicorn finishes its graceful shutdown, then
    re-raises the signal it caught, so its process ends with -SIGTERM.
    """
    return -signal.SIGTERM if server.kind == "asgi" else 0


def command(kind: str, config_path: Path, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that serve ``config_path`` with transport ``kind``.

    ``args`` are ``sapg serve`` options; for ``asgi`` the few with a uvicorn
    or environment equivalent are translated (``--idle-timeout``, ``--max-body-size``,
    ``--log-format``, ``--log-level``, ``--workers``, ``--http`` (uvicorn's parser),
    ``--max-header-size``, ``--read-timeout``, ``--min-body-rate``), others ignored.
    """
    if kind != "asgi":
        argv = [sys.executable, "-m", "transports.cli", "serve", "--transport", kind]
        return [*argv, "--port", "0", "--config", str(config_path), *args], {}
    options = dict(zip(args[::2], args[1::2], strict=False))
    env = {"SAPG_CONFIG": str(config_path)}
    if "--max-body-size" in options:
        env["SAPG_MAX_BODY_SIZE"] = options["--max-body-size"]
    if "--log-format" in options:
        env["SAPG_LOG_FORMAT"] = options["--log-format"]
    if "--log-level" in options:
        env["SAPG_LOG_LEVEL"] = options["--log-level"]
    for option, name in _ASGI_ENV.items():
        if option in options:
            env[name] = options[option]
    http = options.get("--http", "httptools")
    argv = [sys.executable, "-m", "uvicorn", "--factory", "transports.asgi:create_app"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--http", http, "--no-access-log"]
    argv += ["--lifespan", "on", "--backlog", "1024"]
    if "--workers" in options:
        argv += ["--workers", options["--workers"]]
    idle = options.get("--idle-timeout")
    if idle is not None:
        argv += ["--timeout-keep-alive", str(max(1, round(float(idle))))]
    return argv, env


#: ``sapg serve`` options the ASGI adapter reads from the environment instead.
_ASGI_ENV = {
    "--max-header-size": "SAPG_MAX_HEADER_SIZE",
    "--read-timeout": "SAPG_READ_TIMEOUT",
    "--min-body-rate": "SAPG_MIN_BODY_RATE",
}


def start(
    kind: str,
    config: object,
    tmp_path: Path,
    *,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Server:
    """Start the gateway for ``config`` (a dict, written to a file) and wait until it listens."""
    config_path = tmp_path / f"config-{kind}-{time.monotonic_ns()}.json"
    config_path.write_text(json.dumps(config))
    argv, extra = command(kind, config_path, list(args or []))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SAG_", "SAPG_"))}
    full_env.update(extra)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = _READY.search(line)
        if found:
            server = Server(kind, process, int(found.group(1)))
            server.lines = lines
            server.reader = threading.Thread(target=_drain, args=(process, lines), daemon=True)
            server.reader.start()
            server.config_path = config_path  # type: ignore[attr-defined]
            return server
    process.kill()
    process.wait(5)
    raise AssertionError(f"{kind} server did not become ready:\n" + "".join(lines))


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)


@contextlib.contextmanager
def running(kind: str, config: object, tmp_path: Path, **kwargs: object) -> Iterator[Server]:
    server = start(kind, config, tmp_path, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


# -- a raw HTTP/1.1 client -------------------------------------------------------------


class Client:
    """Bytes out, parsed responses in, over one socket (keep-alive, pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        if self.buffer:
            parser.receive_data(self.buffer)
        body, head = b"", None
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert head is not None
        self.buffer = parser.trailing_data[0]
        headers = {k.decode(): v.decode("latin-1") for k, v in head.headers}
        return head.status_code, headers, body

    def get(self, target: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
        self.send(f"GET {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode())
        return self.response()

    def is_closed_within(self, seconds: float) -> bool:
        """Whether the server closes within ``seconds`` (reading and dropping what comes)."""
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


# -- the upstream ----------------------------------------------------------------------

_PATTERN = bytes(range(256)) * 4096  # 1 MiB, sliced to generate bodies of any size


class StreamingUpstream:
    """A threaded HTTP/1.1 upstream on 127.0.0.1 (one thread per connection, backlog 1024).

    Paths (after any prefix; the query gives the numbers):

    - ``/slow?seconds=S``: waits, then echoes.
    - ``/stream?chunks=N&delay=S&size=B``: N chunks of B bytes, chunked, S apart.
    - ``/download?size=N``: N generated bytes with a Content-Length, sent fast.
    - anything else: echoes JSON ``{"method", "target", "length", "sha256", "headers"}``
      (the body is hashed as it arrives, never held; under ``/count`` only counted).
    """

    def __init__(self) -> None:
        self.received = 0  # requests seen (head complete)
        self.completed = 0  # requests received whole (body to its end)
        self.connections = 0  # connections accepted
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.received < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"upstream saw {self.received} requests, not {count}")
            time.sleep(0.02)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        sock.settimeout(60)
        with contextlib.suppress(OSError, h11.ProtocolError), sock:
            while True:
                request, length, digest = None, 0, hashlib.sha256()
                hashing = True
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = sock.recv(1 << 20)
                        conn.receive_data(data)
                        if not data and conn.their_state is h11.IDLE:
                            return
                    elif isinstance(event, h11.Request):
                        request = event
                        hashing = b"/count" not in request.target
                        with self._lock:
                            self.received += 1
                    elif isinstance(event, h11.Data):
                        length += len(event.data)
                        if hashing:
                            digest.update(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        with self._lock:
                            self.completed += 1
                        break
                    else:
                        return
                assert request is not None
                self._answer(sock, conn, request, length, digest.hexdigest())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()

    def _answer(
        self, sock: socket.socket, conn: h11.Connection, request: h11.Request, length: int, sha: str
    ) -> None:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        if path.endswith("/slow"):
            time.sleep(float(params.get("seconds", "1")))
        if path.endswith("/stream"):
            chunks, size = int(params.get("chunks", "3")), int(params.get("size", "10"))
            sock.sendall(conn.send(h11.Response(status_code=200, headers=[("x-upstream", "yes")])))
            for index in range(chunks):
                if index:
                    time.sleep(float(params.get("delay", "0.2")))
                sock.sendall(conn.send(h11.Data(data=bytes([65 + index % 26]) * size)))
            sock.sendall(conn.send(h11.EndOfMessage()))
            return
        if path.endswith("/download"):
            total = int(params.get("size", "0"))
            headers = [("content-length", str(total)), ("content-type", "application/octet-stream")]
            sock.sendall(conn.send(h11.Response(status_code=200, headers=headers)))
            left = total
            while left:
                piece = _PATTERN[: min(left, len(_PATTERN))]
                sock.sendall(conn.send(h11.Data(data=piece)))
                left -= len(piece)
            sock.sendall(conn.send(h11.EndOfMessage()))
            return
        seen = {k.decode(): v.decode("latin-1") for k, v in request.headers}
        payload = json.dumps(
            {
                "method": request.method.decode(),
                "target": target,
                "length": length,
                "sha256": sha,
                "headers": seen,
            }
        ).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("x-upstream", "yes"),
        ]
        sock.sendall(conn.send(h11.Response(status_code=200, headers=headers)))
        sock.sendall(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))


def pattern_chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """``total`` generated bytes in pieces, without ever holding them all."""
    left = total
    while left:
        piece = _PATTERN[: min(left, size)]
        yield piece
        left -= len(piece)


def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(total):
        digest.update(piece)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
