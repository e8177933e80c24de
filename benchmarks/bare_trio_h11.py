"""The baseline: the smallest fair trio + h11 HTTP/1.1 server.

Same trio, same h11, same socket setup (``trio.serve_tcp``: TCP_NODELAY, 64 KiB
reads) as the sapg trio driver, and nothing else: no routing, no timeouts, no
``Date`` header. Every request gets ``200`` with a fixed 15-byte JSON body,
``content-type`` and ``content-length``; connections are kept alive.

    python benchmarks/bare_trio_h11.py --port 0

prints ``bare: listening on http://127.0.0.1:PORT`` on stderr when ready.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys

import h11
import trio

BODY = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"15")]
_RECEIVE_SIZE = 65536


async def handle(stream: trio.SocketStream) -> None:
    """One keep-alive connection: read, answer each complete request, repeat."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=HEADERS))
                    + conn.send(h11.Data(data=BODY))
                    + conn.send(h11.EndOfMessage())
                )
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            elif not isinstance(event, h11.Request | h11.Data):
                break  # ConnectionClosed (or PAUSED after a close)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), handle, port
        )
        bound = listeners[0].socket.getsockname()[1]
        print(f"bare: listening on http://127.0.0.1:{bound}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, args.port)
