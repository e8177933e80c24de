"""Value mapping into upstream headers and query (UPSTREAM.md §9)."""

import pytest

from sapg_core._errors import InternalError
from sapg_core._json import js_string
from sapg_core._mapping import MappingSources, apply_mapping
from sapg_core._model import MappingSpec


def sources(**kw: object) -> MappingSources:
    base: dict[str, object] = {
        "headers": (("x-test", "v"), ("x-multi", "a"), ("x-multi", "b")),
        "query": "source=web&empty=&q=a%20b",
        "claims": {"sub": "user-123", "n": 7, "roles": ["a", "b"], "obj": {"k": 1}, "nul": None},
        "route_variables": {"api_key": "api-key-1", "shadow": None, "blank": ""},
        "global_variables": {"region": "eu-west-1", "shadow": "global", "api_key": "global-key"},
    }
    base.update(kw)
    return MappingSources(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$request.header.X-Test", "v"),
        ("$request.header.x-multi", "a, b"),
        ("$request.header.Missing", None),
        ("$request.jwt.sub", "user-123"),
        ("Bearer $request.jwt.sub", "user-123"),  # whole value replaced, text discarded
        ("$request.jwt.n", 7),
        ("$request.jwt.nul", None),
        ("$request.jwt.absent", None),
        ("$config.api_key", "api-key-1"),  # route before global
        ("$config.region", "eu-west-1"),
        ("$config.shadow", None),  # a route-level null shadows the global value
        ("$config.blank", ""),
        ("$request.query.source", "web"),
        ("$request.query.empty", None),
        ("$request.query.q", "a b"),
        ("hello", None),  # constants cannot be injected
        ("$request.jwt.sub and $config.region", "user-123"),  # first template only
    ],
)
def test_templates_resolve_as_the_original(template: str, expected: object) -> None:
    assert sources().resolve(template) == expected


def test_jwt_templates_resolve_to_nothing_without_claims() -> None:
    assert sources(claims=None).resolve("$request.jwt.sub") is None


def test_js_string_conversions() -> None:
    assert js_string(7) == "7"
    assert js_string(1.0) == "1"
    assert js_string(True) == "true"
    assert js_string(["a", "b", None, 2]) == "a,b,,2"
    assert js_string({"k": 1}) == "[object Object]"


def test_headers_are_set_and_unresolved_ones_left_alone() -> None:
    spec = MappingSpec(
        headers=(
            ("x-static", "hello"),
            ("X-Pre", "Bearer $request.header.X-Test"),
            ("authorization", "$request.jwt.sub"),
        ),
    )
    headers, query = apply_mapping(
        spec, sources(), (("authorization", "Bearer t"), ("x-pre", "old")), "q=a%20b"
    )
    assert headers == (("x-pre", "v"), ("authorization", "user-123"))
    assert query == "q=a%20b"  # no query mapping: the query is untouched


def test_query_mapping_reserialises_the_whole_query() -> None:
    # case 71: an empty query mapping still re-encodes (a%20b -> a+b)
    _, query = apply_mapping(MappingSpec(query=()), sources(), (), "q=a%20b&r=https://x")
    assert query == "q=a+b&r=https%3A%2F%2Fx"
    spec = MappingSpec(
        query=(
            ("user", "$request.jwt.sub"),
            ("source", "$request.jwt.n"),
            ("none", "$request.jwt.absent"),
        )
    )
    _, query = apply_mapping(spec, sources(), (), "source=web&x=1&source=2")
    assert query == "source=7&x=1&user=user-123"


def test_a_claim_that_is_not_latin1_is_an_internal_error() -> None:
    spec = MappingSpec(headers=(("x-name", "$request.jwt.name"),))
    with pytest.raises(InternalError):
        apply_mapping(spec, sources(claims={"name": "Zoë 😀"}), (), "")


def test_js_string_of_numbers_beyond_a_double_is_infinity() -> None:
    assert js_string(10**400) == "Infinity"
    assert js_string(-(10**400)) == "-Infinity"
