"""Baseline for the ASGI adapter: the smallest ASGI app, run under the same uvicorn.

Every request gets ``200`` with a fixed 15-byte JSON body and the same two
headers as the other baselines. It also serves as the upstream of the proxied
benchmarks (uvicorn with httptools is the fastest upstream at hand).

    uvicorn --app-dir benchmarks bare_asgi:app --http httptools --port 0
"""

from __future__ import annotations

from typing import Any

BODY = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"15")]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
END = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send(START)
    await send(END)
