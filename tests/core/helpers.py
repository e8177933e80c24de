"""Helpers for core tests: build a gateway from a config dict, feed events, read actions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import Mapping, Sequence

from sapg_core import (
    Action,
    Gateway,
    RelayResponse,
    RequestReceived,
    Respond,
    compile_config,
)

NOW = 1_800_000_000.0
_ids = itertools.count(1)


def make_gateway(
    config: Mapping[str, object], env: Mapping[str, str] | None = None, **kwargs: int
) -> Gateway:
    result = compile_config(dict(config), env=env or {})
    return Gateway(result.config, **kwargs)


def receive(
    gateway: Gateway,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    now: float = NOW,
) -> tuple[int, list[Action]]:
    request_id = next(_ids)
    event = RequestReceived(
        request_id=request_id,
        method=method,
        target=target,
        headers=tuple(headers),
        now=now,
        entropy=bytes(32),
    )
    return request_id, gateway.handle(event)


def final(actions: list[Action]) -> Respond | RelayResponse:
    """The one final action in ``actions`` (logs may precede it)."""
    finals = [a for a in actions if isinstance(a, Respond | RelayResponse)]
    assert len(finals) == 1, actions
    return finals[0]


def respond(
    gateway: Gateway,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    now: float = NOW,
) -> Respond:
    _, actions = receive(gateway, method, target, headers, now=now)
    answer = final(actions)
    assert isinstance(answer, Respond), answer
    return answer


def header(answer: Respond | RelayResponse, name: str) -> str | None:
    values = [v for k, v in answer.headers if k == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def body_json(answer: Respond) -> object:
    return json.loads(answer.body)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_token(claims: Mapping[str, object], secret: str, alg: str = "HS256") -> str:
    """A real HMAC-signed JWT, built by hand so tests do not trust the code under test."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(secret.encode(), signing_input, digest).digest())
    return f"{header}.{payload}.{signature}"
