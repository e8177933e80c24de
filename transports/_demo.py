"""The built-in demo config, served by ``sapg serve`` when given no config.

Its proxied route points back at the gateway's own static routes (the
driver knows the real port only after binding), so the demo shows a real
upstream round trip with nothing else running.
"""

from __future__ import annotations

from sapg_core import JSONValue


def demo_config(self_url: str) -> dict[str, JSONValue]:
    return {
        "title": "sapg demo",
        "description": "Built-in demo: static routes and a route proxied back to this gateway.",
        "servers": [{"alias": "self", "url": self_url}],
        "cors": {
            "allow_origins": ["*"],
            "allow_methods": ["GET", "POST", "OPTIONS"],
            "allow_headers": ["Authorization", "Content-Type"],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": 600,
        },
        "paths": [
            {
                "method": "GET",
                "path": "/",
                "response": {
                    "name": "sapg",
                    "message": "Hello from the sapg demo config. Try /health, /hello/you, "
                    "/proxy/health or sapg serve --config api-config.json.",
                },
            },
            {"method": "GET", "path": "/health", "response": {"status": "ok"}},
            {"method": "GET", "path": "/hello/{name}", "response": {"greeting": "hello"}},
            {"method": "GET", "path": "/string", "response": "string ok"},
            {
                "method": "ANY",
                "path": "/proxy/{.+}",
                "integration": {"type": "http_proxy", "server": "self"},
            },
        ],
    }
