"""Anchor: a reverse proxy as a Python user would write it, for comparison with sapg's.

A tiny ASGI app: every request is sent to ``$ANCHOR_UPSTREAM`` + its path and
query with one shared ``httpx.AsyncClient`` (keep-alive pool), and the answer
is sent back whole. Hop-by-hop headers are dropped both ways, as any proxy
must. Run under uvicorn with uvloop and httptools, the fastest stack a Python
user is likely to pick:

    ANCHOR_UPSTREAM=http://127.0.0.1:8080 uvicorn --app-dir benchmarks \\
        anchor_httpx_proxy:app --loop uvloop --http httptools --no-access-log

httpx and uvloop are installed by ``nox -s bench`` only; sapg does not depend
on them.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

UPSTREAM = os.environ.get("ANCHOR_UPSTREAM", "http://127.0.0.1:8080").rstrip("/")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_client: httpx.AsyncClient | None = None


async def _lifespan(receive: Any, send: Any) -> None:
    global _client
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            _client = httpx.AsyncClient(limits=limits, timeout=30.0)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _client is not None:
                await _client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    assert _client is not None
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    url = UPSTREAM + scope["path"]
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode("latin-1")
    headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1") not in HOP_BY_HOP]
    upstream = await _client.request(scope["method"], url, headers=headers, content=body)
    content = upstream.content  # decoded by httpx, so its own length is sent
    answer = [
        (k, v) for k, v in upstream.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP
    ]
    answer.append((b"content-length", str(len(content)).encode("ascii")))
    await send({"type": "http.response.start", "status": upstream.status_code, "headers": answer})
    await send({"type": "http.response.body", "body": content})
