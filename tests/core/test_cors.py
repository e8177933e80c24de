"""CORS origin matching and header values (UPSTREAM.md §4, cases 17-26)."""

from sapg_core._cors import CorsPolicy
from sapg_core._model import Cors


def policy(origins: tuple[str, ...], *, credentials: bool = True) -> CorsPolicy:
    return CorsPolicy(
        Cors(
            allow_origins=origins,
            allow_methods="GET,POST,OPTIONS",
            allow_headers="Authorization,Content-Type,X-Refresh-Token",
            expose_headers="X-Request-Id",
            allow_credentials=credentials,
            max_age="600",
        )
    )


ALWAYS = (
    ("access-control-allow-methods", "GET,POST,OPTIONS"),
    ("access-control-allow-headers", "Authorization,Content-Type,X-Refresh-Token"),
    ("access-control-expose-headers", "X-Request-Id"),
    ("access-control-allow-credentials", "true"),
    ("access-control-max-age", "600"),
)


def test_allowed_origin_gets_origin_and_vary() -> None:
    headers = policy(("https://app.example.com",)).headers("https://app.example.com")
    assert headers == (
        ("access-control-allow-origin", "https://app.example.com"),
        ("vary", "Origin"),
        *ALWAYS,
    )


def test_unknown_or_absent_origin_gets_only_the_always_headers() -> None:
    p = policy(("https://app.example.com",))
    assert p.headers("https://evil.example") == ALWAYS
    assert p.headers(None) == ALWAYS


def test_wildcard_entries_are_anchored_and_match_dots() -> None:
    p = policy(("https://*.example.org",))
    assert p.allowed_origin("https://eu.example.org") == "https://eu.example.org"
    assert p.allowed_origin("https://a.b.example.org") == "https://a.b.example.org"
    assert p.allowed_origin("https://.example.org") == "https://.example.org"
    assert p.allowed_origin("https://eu.example.org.evil") is None
    assert p.allowed_origin("http://eu.example.org") is None
    # regex metacharacters in entries are literal
    assert policy(("https://a+b.*",)).allowed_origin("https://aab.x") is None


def test_star_echoes_the_origin_only_with_credentials() -> None:
    assert policy(("*",)).allowed_origin("https://mobile.example.net") == (
        "https://mobile.example.net"
    )
    assert policy(("*",), credentials=False).allowed_origin("https://x.test") == "*"


def test_first_entry_in_config_order_wins() -> None:
    # "*" before an exact entry: the result is the "*" rule's
    assert (
        policy(("*", "https://x.test"), credentials=False).allowed_origin("https://x.test") == "*"
    )
    assert policy(("https://x.test", "*"), credentials=False).allowed_origin("https://x.test") == (
        "https://x.test"
    )
    assert policy(("https://*.test", "*"), credentials=False).allowed_origin("https://a.test") == (
        "https://a.test"
    )


def test_matching_is_case_sensitive() -> None:
    assert policy(("https://app.example.com",)).allowed_origin("https://APP.example.com") is None
