"""Baseline for the blocking driver: the smallest fair blocking-socket + h11 server.

A thread per connection, like ``sapg serve --transport h11`` (plain sockets,
TCP_NODELAY, 64 KiB reads), and nothing else: no pool bound, no timeouts, no
``Date``. Every request gets ``200`` with a fixed 15-byte JSON body;
connections are kept alive.

    python benchmarks/bare_blocking_h11.py --port 0

prints ``bare: listening on http://127.0.0.1:PORT`` on stderr when ready.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading

import h11

BODY = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"15")]


def handle(sock: socket.socket) -> None:
    conn = h11.Connection(h11.SERVER)
    with sock, contextlib.suppress(h11.ProtocolError, OSError):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.EndOfMessage):
                sock.sendall(
                    conn.send(h11.Response(status_code=200, headers=HEADERS))
                    + conn.send(h11.Data(data=BODY))
                    + conn.send(h11.EndOfMessage())
                )
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            elif not isinstance(event, h11.Request | h11.Data):
                break


def main(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    bound = listener.getsockname()[1]
    print(f"bare: listening on http://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        main(parser.parse_args().port)
