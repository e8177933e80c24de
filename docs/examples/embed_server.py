"""A complete sapg driver for a blocking socket server, on the public sans-IO API only.

Run it: python docs/examples/embed_server.py [PORT]   (PORT 0 picks a free one)
"""

import itertools
import secrets
import socket
import sys
import threading
import time
from collections import deque
from email.utils import formatdate

import sapg_core as sapg

CONFIG = {
    "servers": [{"alias": "api", "url": "http://127.0.0.1:9"}],
    "paths": [
        {"method": "GET", "path": "/health", "response": {"status": "ok"}},
        {"method": "GET", "path": "/hello/{name}", "response": "hello"},
        {"method": "ANY", "path": "/api/{.+}", "integration": {"type": "http", "server": "api"}},
    ],
}
gateway = sapg.Gateway(sapg.compile_config(CONFIG, env={}).config)  # env: for $env.NAME
lock = threading.Lock()  # a Gateway is not thread-safe: one handle() at a time
request_ids = itertools.count(1)


def handle(event: sapg.Event) -> list[sapg.Action]:
    with lock:
        return gateway.handle(event)


def answer(sock: socket.socket, conn: sapg.ServerConnection, head: sapg.RequestHead) -> None:
    """Feed the request to the core and carry out the actions it returns."""
    rid = next(request_ids)
    actions = deque(handle(sapg.RequestReceived(
        request_id=rid, method=head.method, target=head.target, headers=head.headers,
        now=time.time(), entropy=secrets.token_bytes(32),
    )))  # fmt: skip
    while actions:
        action = actions.popleft()
        if isinstance(action, sapg.Respond):
            date = formatdate(time.time(), usegmt=True)
            sock.sendall(conn.send_response(action.status, action.headers, action.body, date=date))
        elif isinstance(action, sapg.Log):
            print(f"request {rid}: {action.level.name} {action.message}", file=sys.stderr)
        else:  # ForwardUpstream, SendHTTP...: this server makes no outbound calls,
            # so it reports each one as failed, and the core answers for it (502 JSON).
            reason = sapg.FailureReason.CONNECT
            failed = sapg.ActionFailed(request_id=rid, reason=reason, detail="", now=time.time())
            actions.extend(handle(failed))


def serve_connection(sock: socket.socket) -> None:
    conn = sapg.ServerConnection()  # the HTTP/1.1 glue: bytes in, events out, bytes back
    with sock:
        while True:
            event = conn.next_event()
            if isinstance(event, sapg.NeedData):
                conn.receive_data(sock.recv(65536))  # b"" tells it the client closed
            elif isinstance(event, sapg.RequestHead):
                answer(sock, conn, event)
            elif isinstance(event, sapg.ProtocolFailure):  # broken HTTP, or over a limit
                sock.sendall(event.response_bytes)
                return
            elif isinstance(event, sapg.ConnectionClosed):
                return
            # BodyChunk, BodyEnd: a body no action asked for; the glue skips it


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8788
    with socket.create_server(("127.0.0.1", port)) as listener:
        print(f"listening on http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=serve_connection, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
