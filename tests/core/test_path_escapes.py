"""Issue 9 item 2: encoded path escapes never reach an upstream.

With a server URL of ``https://files.example.com/public``, ``..%2f``, ``%2e%2e%2f``, ``..%5c`` and
``..;/`` reached the upstream verbatim, and an upstream that decodes the path read files outside
``/public``. A proxied request whose path holds an encoded slash, backslash or dot-segment is now
refused with 400 JSON; the property test decodes every forwarded path the way a naive upstream
would and checks that it stays under the server URL's base path.
"""

from __future__ import annotations

import json
import posixpath
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings, strategies as st

from sapg_core import ForwardUpstream, Log, LogLevel, Respond
from sapg_core._url import escaped_path_problem
from tests.core.helpers import final, make_gateway, receive

CONFIG = {
    "servers": [{"alias": "files", "url": "https://files.example.com/public"}],
    "paths": [
        {"method": "GET", "path": "/static/{.+}", "response": {"ok": True}},
        {
            "method": "GET",
            "path": "/public/{.+}",
            "integration": {"type": "http", "server": "files"},
        },
        {
            "method": "ANY",
            "path": "/{.+}",
            "integration": {"type": "http_proxy", "server": "files"},
        },
    ],
}
GATEWAY = make_gateway(CONFIG)
REFUSED = {
    "error": "Request path holds an encoded slash, backslash or dot-segment",
    "code": "BAD_REQUEST_PATH",
}

ESCAPES = [
    "/public/..%2fsecret",
    "/public/..%2Fsecret",
    "/public/%2e%2e%2fsecret",
    "/public/%2E%2E%2Fsecret",
    "/public/..%5csecret",
    "/public/..%5Csecret",
    "/public/..;/secret",
    "/public/..;jsessionid=1/secret",
    "/public/.;/x",
    "/public/%2e%2e;/x",
    "/public/%2e%2e/x",
    "/public/.%2e/x",
    "/public/%2e./x",
    "/public/%2E/x",
    "/public/a%2fb",
    "/public/a%5cb",
    "/%2e%2e/%2e%2e/etc/passwd",
    "http://gateway.test/public/..%2fsecret",
    "/public/..%2fsecret?x=1",
]


@pytest.mark.parametrize("target", ESCAPES)
def test_a_proxied_path_with_an_encoded_escape_is_refused(target: str) -> None:
    _, actions = receive(GATEWAY, "GET", target)
    assert not any(isinstance(a, ForwardUpstream) for a in actions), actions
    answer = final(actions)
    assert isinstance(answer, Respond)
    assert answer.status == 400
    assert json.loads(answer.body) == REFUSED
    assert ("x-powered-by", "sapg") in answer.headers
    [log] = [a for a in actions if isinstance(a, Log)]
    assert log.level is LogLevel.INFO  # the client's fault


ALLOWED = [
    "/public/a%20b",
    "/public/%2e%2e%2e",  # three dots: not a dot-segment
    "/public/...",
    "/public/..a/b",
    "/public/a;b/c",
    "/public/a%2",
    "/public/file?path=..%2fsecret",  # the query is not the path
    "/public/%E2%82%AC",
]


@pytest.mark.parametrize("target", ALLOWED)
def test_other_escapes_are_forwarded(target: str) -> None:
    _, actions = receive(GATEWAY, "GET", target)
    [action] = actions
    assert isinstance(action, ForwardUpstream)
    assert action.url.startswith("https://files.example.com/public/")


def test_a_route_that_is_not_proxied_is_not_affected() -> None:
    _, actions = receive(GATEWAY, "GET", "/static/..%2fx")
    answer = final(actions)
    assert (answer.status, answer.body) == (200, b'{"ok":true}')


def test_the_check_runs_before_the_authorizer() -> None:
    config = {
        **CONFIG,
        "authorizer": {
            "type": "jwt",
            "secret": "s",
            "algorithm": "HS256",
            "issuer": "i",
            "audience": "a",
        },
        "paths": [
            {
                "method": "GET",
                "path": "/public/{.+}",
                "auth": True,
                "integration": {"type": "http", "server": "files"},
            }
        ],
    }
    _, actions = receive(make_gateway(config), "GET", "/public/..%2fsecret")
    assert final(actions).status == 400


@pytest.mark.parametrize(
    "target",
    ["/public/../../etc/passwd", "/public/./../x", "/a/../../..", "/public/..\\..\\x", "/.."],
)
def test_plain_dot_segments_are_resolved_before_routing(target: str) -> None:
    _, actions = receive(GATEWAY, "GET", target)
    [action] = actions
    assert isinstance(action, ForwardUpstream)
    path = urlsplit(action.url).path
    assert path.startswith("/public/") or path == "/public"
    assert ".." not in path.split("/")


def _as_a_naive_upstream_reads_it(path: str) -> str:
    """Decode every escape, treat ``\\`` as ``/`` and ``..;x`` as ``..``, resolve dot-segments."""
    decoded = unquote(unquote(path)).replace("\\", "/")
    segments = [s.split(";", 1)[0] for s in decoded.split("/")]
    return posixpath.normpath("/".join(segments))


_SEGMENTS = st.sampled_from(
    [
        "a",
        "b.txt",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "..%2f",
        "..%2F",
        "%2f",
        "..%5c",
        "..;",
        "..;x=1",
        "%252e%252e",
        ";",
        "..\\",
        "%",
        "...",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENTS, max_size=8), st.sampled_from(["/public/", "/", "/static/"]))
def test_no_forwarded_path_leaves_the_server_base(segments: list[str], prefix: str) -> None:
    target = prefix + "/".join(segments)
    _, actions = receive(GATEWAY, "GET", target)
    forwarded = [a for a in actions if isinstance(a, ForwardUpstream)]
    if not forwarded:
        assert final(actions).status in (200, 400)
        return
    path = urlsplit(forwarded[0].url).path
    assert path == "/public" or path.startswith("/public/")
    resolved = _as_a_naive_upstream_reads_it(path)
    # %252e%252e decodes twice to "..": a double-decoding upstream is out of reach of any
    # gateway rule short of refusing every "%"; count it only when it is not that.
    if "%25" not in path:
        assert resolved == "/public" or resolved.startswith("/public/"), (target, path)


def test_escaped_path_problem_reads_only_the_path() -> None:
    assert escaped_path_problem("/a?b=%2f") is None
    assert escaped_path_problem("/a#%2f") is None
    assert escaped_path_problem("https://h/a%2fb") is not None
    assert escaped_path_problem("https://h%2f/a") is None  # the authority is not the path
    assert escaped_path_problem("/") is None


def test_a_server_may_opt_out_and_take_escaped_paths_as_sent() -> None:
    config = {
        "servers": [
            {"alias": "files", "url": "https://files.example.com/public"},
            {"alias": "git", "url": "https://git.example.com/api", "path_escapes": "forward"},
        ],
        "paths": [
            {
                "method": "GET",
                "path": "/projects/{.+}",
                "integration": {"type": "http", "server": "git"},
            },
            {
                "method": "GET",
                "path": "/files/{.+}",
                "integration": {"type": "http", "server": "files"},
            },
        ],
    }
    gateway = make_gateway(config)
    _, actions = receive(gateway, "GET", "/projects/group%2Fproject/issues")
    [action] = actions
    assert isinstance(action, ForwardUpstream)
    assert action.url == "https://git.example.com/api/group%2Fproject/issues"
    _, actions = receive(gateway, "GET", "/files/group%2Fproject")
    assert final(actions).status == 400  # the default, per server
