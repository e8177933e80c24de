"""What the gateway tells an upstream about the client, and the request's id.

Theory of operation
-------------------
A proxied request leaves with the three ``X-Forwarded-*`` fields that nginx,
Envoy, Traefik and uvicorn write and read (the de-facto form; RFC 7239's
``Forwarded`` is not written):

- ``X-Forwarded-For``: the chain of client addresses, the peer's (the address
  the gateway's socket saw, :attr:`RequestReceived.client`) appended with ``", "``;
- ``X-Forwarded-Proto``: the scheme the client used (``http`` or ``https``);
- ``X-Forwarded-Host``: the ``Host`` the client sent.

Incoming values of these fields are believed only from a *trusted proxy*: a peer
whose address is in :class:`TrustedProxies` (``sapg serve --forwarded-allow-ips``,
``127.0.0.1`` by default, ``*`` for every peer, as uvicorn). From a trusted peer
the chain is kept and the peer appended, and an incoming ``X-Forwarded-Proto`` or
``X-Forwarded-Host`` is passed on as that proxy said it. From any other peer they
are replaced: the chain starts at the peer, so a client cannot make the upstream
believe it is someone else by sending the fields itself.

The same rule picks the client address for logs (:func:`client_address`), as
uvicorn's proxy-headers middleware does: from a trusted peer, the rightmost
``X-Forwarded-For`` entry that is not itself a trusted proxy (the leftmost when
all are); from any other peer, the peer.

Request ids. Every request has one (:func:`request_id_for`): the client's
``X-Request-Id`` when it is 1 to 200 visible ASCII characters (0x21-0x7E), else
32 hex characters derived from the request's entropy. The entropy is drawn per
request by the transport, so the ids of worker processes never collide; they are
a one-way hash of it, so an id reveals nothing of the values other flows derive
from the same entropy (OAuth ``state``, nonces). The gateway sends the id upstream
and on every answer (``X-Request-Id``); a transport calls :func:`request_id_for`
on the same event to put it in its log lines, and gets the same id.

Everything here is pure: addresses arrive as text in events.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Final

from ._events import Headers, RequestReceived

__all__ = [
    "DEFAULT_FORWARDED_ALLOW_IPS",
    "MAX_REQUEST_ID_LENGTH",
    "REQUEST_ID_HEADER",
    "TrustedProxies",
    "client_address",
    "forwarded_headers",
    "is_valid_request_id",
    "request_id_for",
]

#: ``--forwarded-allow-ips`` when not given: the local host only (uvicorn's default).
DEFAULT_FORWARDED_ALLOW_IPS: Final = "127.0.0.1"
#: The field that carries a request's id, both ways.
REQUEST_ID_HEADER: Final = "x-request-id"
#: The longest incoming ``X-Request-Id`` kept as it is.
MAX_REQUEST_ID_LENGTH: Final = 200

_FORWARDED: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", REQUEST_ID_HEADER}
)
_VISIBLE: Final = frozenset(range(0x21, 0x7F))
_MAX_CACHED: Final = 4096
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> _Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as IPv4; brackets and a zone allowed)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
    return address


class TrustedProxies:
    """The peers whose ``X-Forwarded-*`` fields are believed.

    Args:
        spec: a comma-separated list of IP addresses and CIDR networks
            (``127.0.0.1, 10.0.0.0/8, ::1``), or ``*`` for every peer. Empty:
            no peer is trusted.

    Raises:
        ValueError: an entry is neither an address, a network nor ``*``.
    """

    def __init__(self, spec: str = DEFAULT_FORWARDED_ALLOW_IPS) -> None:
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self.spec = spec
        self.trusts_all = "*" in entries
        networks: list[_Network] = []
        for entry in entries:
            if entry == "*":
                continue
            address = _address(entry)
            try:
                network = (
                    ipaddress.ip_network(address)
                    if address is not None
                    else ipaddress.ip_network(entry, strict=False)
                )
            except ValueError:
                raise ValueError(
                    f"not an IP address, a network or '*': {entry!r} (in {spec!r})"
                ) from None
            networks.append(network)
        self.networks: tuple[_Network, ...] = tuple(networks)
        self._known: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"TrustedProxies({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        """The same peers are trusted (whatever the order and spelling of the list)."""
        return isinstance(other, TrustedProxies) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[bool, frozenset[_Network]]:
        return self.trusts_all, frozenset(self.networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (an address as text; ``""``: unknown) is a trusted proxy.

        An unknown or unparsable peer is trusted only under ``*``. Answers are
        cached per text (bounded), so a busy peer costs a dict lookup.
        """
        if self.trusts_all:
            return True
        known = self._known.get(peer)
        if known is not None:
            return known
        address = _address(peer) if peer else None
        answer = address is not None and any(address in network for network in self.networks)
        if len(self._known) < _MAX_CACHED:
            self._known[peer] = answer
        return answer


def _values(headers: Headers, name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def _chain(headers: Headers) -> list[str]:
    """The ``X-Forwarded-For`` entries of every such field, in order, blanks dropped."""
    return [
        entry.strip()
        for value in _values(headers, "x-forwarded-for")
        for entry in value.split(",")
        if entry.strip()
    ]


def forwarded_headers(
    headers: Headers, event: RequestReceived, trusted: TrustedProxies, request_id: str
) -> Headers:
    """``headers`` (what goes upstream) with ``X-Forwarded-*`` and ``X-Request-Id`` set.

    Each of the four is *set*: any value of it in ``headers`` is dropped and the
    gateway's appended, so neither the client nor a route's mapping has the last
    word on them.

    Args:
        headers: the fields to forward (hop-by-hop ones already gone).
        event: the request as received: its incoming ``X-Forwarded-*``, peer
            (``client``), ``scheme`` and ``host``.
        trusted: whose incoming ``X-Forwarded-*`` to believe.
        request_id: the request's id (:func:`request_id_for`).
    """
    client = event.client
    received = event.headers
    believed = trusted.trusts(client)
    chain = _chain(received) if believed else []
    if client:
        chain.append(client)
    proto = (_values(received, "x-forwarded-proto") or [""])[0].strip() if believed else ""
    host = (_values(received, "x-forwarded-host") or [""])[0].strip() if believed else ""
    added: list[tuple[str, str]] = []
    if chain:
        added.append(("x-forwarded-for", ", ".join(chain)))
    added.append(("x-forwarded-proto", proto or event.scheme))
    if host or event.host:
        added.append(("x-forwarded-host", host or event.host))
    added.append((REQUEST_ID_HEADER, request_id))
    kept = tuple(item for item in headers if item[0] not in _FORWARDED)
    return (*kept, *added)


def client_address(event: RequestReceived, trusted: TrustedProxies) -> str:
    """The client's address as the logs give it (see the module docstring)."""
    client = event.client
    if not trusted.trusts(client):
        return client
    chain = _chain(event.headers)
    for entry in reversed(chain):
        if not trusted.trusts(entry):
            return entry
    return chain[0] if chain else client


def is_valid_request_id(value: str) -> bool:
    """Whether ``value`` is kept as a request id: 1 to 200 characters, each 0x21-0x7E."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and (
        value.isascii() and _VISIBLE.issuperset(value.encode("ascii"))
    )


def request_id_for(event: RequestReceived) -> str:
    """The request's id: its valid ``X-Request-Id``, else 32 hex characters from its entropy.

    Several ``X-Request-Id`` fields are joined with ``", "`` (as Fetch joins
    them), which is not a valid id, so a new one is made. Without entropy (a
    transport that gives none) the id is derived from ``request_id`` alone:
    unique in one process only.
    """
    values = _values(event.headers, REQUEST_ID_HEADER)
    if values:
        value = values[0] if len(values) == 1 else ", ".join(values)
        if is_valid_request_id(value):
            return value
    seed = event.entropy or event.request_id.to_bytes(16, "big", signed=True)
    return hashlib.blake2b(seed, digest_size=16, person=b"sapg-request-id").hexdigest()
