"""The trimmed proxy path gives the answers the straightforward one gave.

``forwardable`` and the upstream URL were made cheaper per request (the
server URL parsed once at compile time into ``Server.base``; no new set for
the usual ``Connection`` values). The references below are the plain
versions they replaced, kept as the oracle for property tests; the gateway
tests check the whole path on top of these.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from hypothesis import example, given, settings, strategies as st

from sapg_core import ForwardUpstream, RelayResponse, UpstreamResponded
from sapg_core._proxy import _NOT_FORWARDED, HOP_BY_HOP, forwardable
from sapg_core._url import build_upstream_url, upstream_base, upstream_url
from tests.core.helpers import NOW, make_gateway, receive

Headers = tuple[tuple[str, str], ...]


def reference_forwardable(headers: Headers, *, response: bool = False) -> Headers:
    named = {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
    }
    drop = (HOP_BY_HOP if response else _NOT_FORWARDED) | named
    return tuple(item for item in headers if item[0] not in drop)


_SLASHES = re.compile(r"/{2,}")


def reference_upstream_url(server_url: str, route_path: str, request_path: str, query: str) -> str:
    parts = urlsplit(server_url)
    path = request_path
    if route_path.endswith("/{.+}"):
        base = route_path[: -len("/{.+}")]
        if base not in ("", "/"):
            if request_path == base:
                path = "/"
            elif request_path.startswith(base + "/"):
                path = request_path[len(base) :]
    if not path.startswith("/"):
        path = "/" + path
    url = f"{parts.scheme}://{parts.netloc}{_SLASHES.sub('/', parts.path.rstrip('/') + path)}"
    return f"{url}?{query}" if query else url


# -- forwardable ---------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        "connection",
        "Connection",
        "keep-alive",
        "host",
        "expect",
        "te",
        "transfer-encoding",
        "upgrade",
        "x-private",
        "x-a",
        "accept",
        "content-length",
        "cookie",
    ]
)
_TOKENS = st.sampled_from(["keep-alive", "close", "x-private", " X-A ", "upgrade", "", "cookie"])
_VALUES = st.one_of(
    st.lists(_TOKENS, min_size=1, max_size=4).map(",".join),
    st.text(alphabet="abc ,-", max_size=12),
)
_HEADER = st.one_of(
    st.tuples(st.just("connection"), _VALUES),  # often: Connection names other fields
    st.tuples(_NAMES, _VALUES),
)
_HEADERS = st.lists(_HEADER, max_size=12).map(tuple)


@settings(max_examples=300)
@given(_HEADERS, st.booleans())
@example((("connection", "close, X-Private"), ("x-private", "1"), ("x-a", "2")), False)
@example((("connection", "keep-alive"), ("connection", "cookie"), ("cookie", "a=b")), True)
def test_forwardable_drops_what_the_reference_drops(headers: Headers, response: bool) -> None:
    assert forwardable(headers, response=response) == reference_forwardable(
        headers, response=response
    )


def test_forwardable_returns_the_same_tuple_when_nothing_is_dropped() -> None:
    headers = (("content-type", "application/json"), ("connection", "keep-alive"))
    assert forwardable(headers) == (("content-type", "application/json"),)
    kept = (("content-type", "application/json"), ("x-a", "1"))
    assert forwardable(kept) is kept


def test_a_connection_header_naming_a_field_drops_that_field_too() -> None:
    headers = (("connection", "close, X-Private"), ("x-private", "1"), ("x-public", "2"))
    assert forwardable(headers, response=True) == (("x-public", "2"),)


# -- upstream URL --------------------------------------------------------------------

_SEGMENT = st.sampled_from(["a", "b", "", "base", "v1", "%2F", "x y", "prefix"])
_PATHS = st.lists(_SEGMENT, max_size=5).map(lambda s: "/" + "/".join(s))
_SERVERS = st.builds(
    lambda scheme, host, path, query: f"{scheme}://{host}{path}{query}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["h", "h:8080", "user@h", "[::1]:9", "backend.example.com"]),
    st.one_of(st.just(""), _PATHS, _PATHS.map(lambda p: p + "/"), _PATHS.map(lambda p: p + "//")),
    st.sampled_from(["", "?a=b", "#frag", "?a=b#frag"]),
)
_ROUTES = st.one_of(
    _PATHS,
    _PATHS.map(lambda p: p.rstrip("/") + "/{.+}"),
    st.sampled_from(["/{.+}", "/u/{id}/{.+}", "/prefix/{.+}", "/base/{.+}"]),
)
_QUERIES = st.sampled_from(["", "x=1", "a=b&c=d", "q=%20"])


@given(_SERVERS, _ROUTES, _PATHS, _QUERIES)
def test_the_split_url_build_agrees_with_the_reference(
    server: str, route: str, path: str, query: str
) -> None:
    expected = reference_upstream_url(server, route, path, query)
    assert upstream_url(upstream_base(server), route, path, query) == expected
    assert build_upstream_url(server, route, path, query) == expected


def test_the_server_base_is_computed_once_at_compile_time() -> None:
    config = {
        "servers": [{"alias": "up", "url": "https://h.example.com//base//?drop=me"}],
        "paths": [
            {
                "method": "ANY",
                "path": "/p/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            }
        ],
    }
    gw = make_gateway(config)
    server = gw.config.servers["up"]
    assert server.base == "https://h.example.com/base"
    _, actions = receive(gw, "GET", "/p//x/y?z=1", [("host", "gw"), ("connection", "close")])
    (action,) = actions
    assert isinstance(action, ForwardUpstream)
    assert action.url == "https://h.example.com/base/x/y?z=1"
    # Only the fields the gateway sets on every proxied request (test_forwarded.py).
    assert [name for name, _ in action.headers] == ["x-forwarded-proto", "x-request-id"]


def test_the_relayed_head_drops_hop_by_hop_fields_and_is_decorated() -> None:
    config = {
        "servers": [{"alias": "up", "url": "http://127.0.0.1:9"}],
        "paths": [
            {
                "method": "GET",
                "path": "/p/{.+}",
                "integration": {"type": "http_proxy", "server": "up"},
            }
        ],
    }
    gw = make_gateway(config)
    request_id, _ = receive(gw, "GET", "/p/x")
    upstream = (
        ("server", "nginx"),
        ("content-length", "15"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
    )
    actions = gw.handle(
        UpstreamResponded(request_id=request_id, status=200, headers=upstream, now=NOW)
    )
    (relay,) = actions
    assert isinstance(relay, RelayResponse)
    assert relay.headers[:-1] == (
        ("server", "nginx"),
        ("content-length", "15"),
        ("x-powered-by", "sapg"),
    )
    assert relay.headers[-1][0] == "x-request-id"  # on every answer (test_request_id.py)
