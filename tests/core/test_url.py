"""URL handling: the original's path normalisation, form encoding and upstream targets."""

import pytest

from sapg_core._url import BadTarget, build_upstream_url, form_decode, form_encode, split_target


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/a/b?x=1", "/a/b", "x=1"),
        ("/", "/", ""),
        ("/a/", "/a/", ""),
        ("/a/./b", "/a/b", ""),
        ("/a/b/..", "/a/", ""),
        ("/a/b/../c", "/a/c", ""),
        ("/..", "/", ""),
        ("/a/%2e%2E/b", "/b", ""),
        ("/a/.", "/a/", ""),
        ("//a", "//a", ""),
        ("/a\\b", "/a/b", ""),
        ("/caf\xc3\xa9", "/caf%C3%A9", ""),  # UTF-8 bytes arrive one char per byte
        ("/a%2Fb", "/a%2Fb", ""),  # escapes kept as sent, never decoded
        ("/a b", "/a%20b", ""),
        ("/{id}", "/%7Bid%7D", ""),
        ("/p?q=a b'", "/p", "q=a%20b%27"),
        ("/p?", "/p", ""),
        ("/p#frag", "/p", ""),
        ("http://example.com/x/y?z=1", "/x/y", "z=1"),
        ("https://example.com", "/", ""),
        ("http://example.com?z=1", "/", "z=1"),
    ],
)
def test_split_target_normalises_like_the_url_parser(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


@pytest.mark.parametrize("target", ["*", "example.com:443", "ftp://x/y"])
def test_split_target_refuses_targets_that_are_not_paths(target: str) -> None:
    with pytest.raises(BadTarget):
        split_target(target)


def test_form_encoding_is_urlsearchparams() -> None:
    assert form_encode([("q", "a b"), ("r", "https://x"), ("s", "*-._~é")]) == (
        "q=a+b&r=https%3A%2F%2Fx&s=*-._%7E%C3%A9"
    )
    assert form_decode("q=a%20b&q=2&&flag&x=a+b") == [
        ("q", "a b"),
        ("q", "2"),
        ("flag", ""),
        ("x", "a b"),
    ]
    assert form_decode("bad=%ZZ%") == [("bad", "%ZZ%")]


@pytest.mark.parametrize(
    ("server", "route", "path", "query", "expected"),
    [
        # UPSTREAM.md §8.1 step 3 and §13.6 cases 69-70
        (
            "https://backend.example.com",
            "/api/v1/proxy/{.+}",
            "/api/v1/proxy/orders/1",
            "x=1",
            "https://backend.example.com/orders/1?x=1",
        ),
        (
            "https://backend.example.com/base",
            "/api/v1/health",
            "/api/v1/health",
            "x=1",
            "https://backend.example.com/base/api/v1/health?x=1",
        ),
        (
            "https://backend.example.com/prefix/",
            "/{.+}",
            "/v1/items/2",
            "debug=true",
            "https://backend.example.com/prefix/v1/items/2?debug=true",
        ),
        (
            "https://backend.example.com/base",
            "/prefix/{.+}",
            "/prefix",
            "",
            "https://backend.example.com/base/",
        ),
        (
            "https://backend.example.com/base",
            "/prefix/{.+}",
            "/prefix/",
            "",
            "https://backend.example.com/base/",
        ),
        (
            "https://u.example.com/base",
            "/proxy/{.+}",
            "/proxy/orders/7",
            "source=web",
            "https://u.example.com/base/orders/7?source=web",
        ),
        # a {param} in the base never prefixes the request literally: full path
        ("http://h:8080", "/u/{id}/{.+}", "/u/7/x", "", "http://h:8080/u/7/x"),
        # runs of slashes collapse, the server URL's query is replaced
        ("http://h/base//?a=b", "/x", "//x//y", "", "http://h/base/x/y"),
    ],
)
def test_upstream_url_is_built_as_the_original_builds_it(
    server: str, route: str, path: str, query: str, expected: str
) -> None:
    assert build_upstream_url(server, route, path, query) == expected


from hypothesis import given, strategies as st  # noqa: E402

from sapg_core._url import _PATH_UNSAFE, _QUERY_UNSAFE, _percent_encode  # noqa: E402


def _slow_encode(text: str, unsafe: frozenset[str]) -> str:
    return "".join(
        "".join(f"%{b:02X}" for b in c.encode("latin-1"))
        if ord(c) < 0x20 or ord(c) > 0x7E or c in unsafe
        else c
        for c in text
    )


@given(st.text(alphabet=st.characters(max_codepoint=0xFF)))
def test_the_fast_path_never_skips_a_character_that_needs_encoding(text: str) -> None:
    for unsafe in (_PATH_UNSAFE, _QUERY_UNSAFE):
        assert _percent_encode(text, unsafe) == _slow_encode(text, unsafe)
