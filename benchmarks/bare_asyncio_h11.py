"""Baseline for the asyncio driver: the smallest fair asyncio + h11 HTTP/1.1 server.

The same socket layer as ``sapg serve --transport asyncio`` (``asyncio.start_server``
streams, 64 KiB reads, TCP_NODELAY as asyncio sets it) and the same h11, and
nothing else: no routing, no timeouts, no ``Date``. Every request gets ``200``
with a fixed 15-byte JSON body; connections are kept alive.

    python benchmarks/bare_asyncio_h11.py --port 0

prints ``bare: listening on http://127.0.0.1:PORT`` on stderr when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import h11

BODY = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"15")]


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.EndOfMessage):
                writer.write(
                    conn.send(h11.Response(status_code=200, headers=HEADERS))
                    + conn.send(h11.Data(data=BODY))
                    + conn.send(h11.EndOfMessage())
                )
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            elif not isinstance(event, h11.Request | h11.Data):
                break
    except (h11.ProtocolError, OSError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"bare: listening on http://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
