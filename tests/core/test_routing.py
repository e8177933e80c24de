"""Route matching (UPSTREAM.md §3; cases 3-10 of §13.1), checked against a naive reference."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sapg_core._routing import RouteMatch, RouteTable, explain_rank, priority_key
from tests.core import _reference_routing as reference

Routes = list[tuple[str, str]]


def match_fields(m: RouteMatch | reference.RefMatch | None) -> tuple[object, ...] | None:
    if m is None:
        return None
    return (m.index, m.matched_count, m.is_exact, m.is_wildcard, m.method_equal, m.params)


# --- §3.2: one route, one request -------------------------------------------------------------

# (route, method, request path, expected (matched_count, is_exact, is_wildcard, params) or None)
SINGLE_ROUTE_CASES: list[
    tuple[str, str, str, tuple[int, bool, bool, tuple[tuple[str, str], ...]] | None]
] = [
    ("/v1/health", "GET", "/v1/health", (3, True, False, ())),
    ("/v1/users/{id}", "GET", "/v1/users/99", (4, False, False, (("id", "99"),))),
    ("/v1/files/{.+}", "GET", "/v1/files/a/b/c", (4, False, True, ())),
    ("/v1/files/{.+}", "GET", "/v1/files/a", (4, True, True, ())),
    ("/v1/files/{.+}", "GET", "/v1/files/", (4, True, True, ())),
    ("/v1/files/{.+}", "GET", "/v1/files", (3, False, True, ())),
    ("/v1/files/{.+}", "GET", "/v1", None),
    ("/{.+}", "GET", "/", (2, True, True, ())),
    ("/{.+}", "GET", "/x", (2, True, True, ())),
    ("/{.+}", "GET", "/a/b/c", (2, False, True, ())),
    ("/a/{.+}/c", "GET", "/a/x/zzz", (4, True, True, ())),
    ("/a/{.+}/c", "GET", "/a/x/y/c", None),
    ("/u/{id}/{.+}", "GET", "/u/7/x/y", (4, False, True, (("id", "7"),))),
    ("/v1/items", "GET", "/v1/items/extra", None),
    ("/v1/health", "POST", "/v1/health", None),
    # §3.1 segment rules
    ("/users/{id}", "GET", "/users/", (3, False, False, (("id", ""),))),
    ("/a", "GET", "/a/", None),
    ("/a/", "GET", "/a/", (3, True, False, ())),
    ("/caf%C3%A9", "GET", "/caf%C3%A9", (2, True, False, ())),
    ("/caf%C3%A9", "GET", "/caf%c3%a9", None),
    ("/Users", "GET", "/users", None),
    ("/x/{a.b}/{}", "GET", "/x/1/2", (4, False, False, (("a.b", "1"), ("", "2")))),
    ("/x/{id}", "GET", "/x/a%2Fb", (3, False, False, (("id", "a%2Fb"),))),
]


@pytest.mark.parametrize(("route", "method", "path", "expected"), SINGLE_ROUTE_CASES)
def test_single_route_table(
    route: str,
    method: str,
    path: str,
    expected: tuple[int, bool, bool, tuple[tuple[str, str], ...]] | None,
) -> None:
    got = RouteTable([("GET", route)]).match(method, path)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.matched_count, got.is_exact, got.is_wildcard, got.params) == expected
        assert got.index == 0
    assert match_fields(got) == match_fields(reference.winner([("GET", route)], method, path))


# --- §3.3 worked examples and §13.1 cases 3-10 -------------------------------------------------

ITEMS: Routes = [("GET", "/items/{.+}"), ("GET", "/items/{id}"), ("GET", "/items/special")]
METHOD: Routes = [("ANY", "/method"), ("GET", "/method")]
ROOT_AND_A: Routes = [("ANY", "/{.+}"), ("ANY", "/a/{.+}")]

# (routes, method, path, winning index or None)
PRIORITY_CASES: list[tuple[Routes, str, str, int | None]] = [
    # §3.3
    (ITEMS, "GET", "/items/special", 2),
    ([("GET", "/items/{id}"), ("GET", "/items/{.+}")], "GET", "/items/42", 1),
    ([("GET", "/a/{x}/{y}"), ("GET", "/a/{.+}")], "GET", "/a/1/2", 0),
    ([("GET", "/a/b/{.+}"), ("GET", "/a/{.+}")], "GET", "/a/b/c/d", 0),
    (ROOT_AND_A, "GET", "/a", 0),
    (METHOD, "GET", "/method", 1),
    (METHOD, "POST", "/method", 0),
    ([("GET", "/health"), ("ANY", "/{.+}")], "GET", "/health", 0),
    # §13.1 #3-#10
    (ITEMS, "GET", "/items/special", 2),
    (ITEMS, "GET", "/items/42", 0),
    ([("GET", "/v1/health")], "POST", "/v1/health", None),
    ([("GET", "/v1/items")], "GET", "/v1/items/", None),
    ([("GET", "/v1/files/{.+}")], "GET", "/v1/files", 0),
    (ROOT_AND_A, "GET", "/a/b/c", 1),
    ([("GET", "/a/{.+}/c")], "GET", "/a/x/zzz", 0),
    # method details (§3.1): HEAD only via ANY, case-sensitive, ties keep config order
    ([("GET", "/h"), ("ANY", "/h")], "HEAD", "/h", 1),
    ([("GET", "/h")], "HEAD", "/h", None),
    ([("PATCH", "/p")], "patch", "/p", None),
    ([("GET", "/t"), ("GET", "/t")], "GET", "/t", 0),
    ([("GET", "/t/{a}"), ("GET", "/t/{b}")], "GET", "/t/1", 0),
    ([("ANY", "/t"), ("ANY", "/t")], "ANY", "/t", 0),
    ([("OPTIONS", "/ok"), ("ANY", "/{.+}")], "OPTIONS", "/ok", 0),
]


@pytest.mark.parametrize(("routes", "method", "path", "expected"), PRIORITY_CASES)
def test_priority(routes: Routes, method: str, path: str, expected: int | None) -> None:
    got = RouteTable(routes).match(method, path)
    assert (None if got is None else got.index) == expected
    assert match_fields(got) == match_fields(reference.winner(routes, method, path))


def test_method_equal_flags_any() -> None:
    table = RouteTable(METHOD)
    assert [(m.index, m.method_equal) for m in table.candidates("GET", "/method")] == [
        (1, True),
        (0, False),
    ]


def test_repeated_matches_do_not_share_results() -> None:
    table = RouteTable([("GET", "/users/{id}"), ("ANY", "/x")])
    first, second = table.match("GET", "/users/1"), table.match("GET", "/users/2")
    assert first is not None
    assert second is not None
    assert (first.params, second.params) == ((("id", "1"),), (("id", "2"),))
    via_get, via_any = table.match("GET", "/x"), table.match("ANY", "/x")
    assert via_get is not None
    assert via_any is not None
    assert (via_get.method_equal, via_any.method_equal) == (False, True)
    assert len(table) == 2


# --- CORS preflight rule (§2 step 5; cases 17, 18, 20, 21) -------------------------------------


def test_preflight_needs_a_literal_options_route() -> None:
    assert not RouteTable([("GET", "/ok")]).has_route_for_method("OPTIONS", "/ok")
    assert RouteTable([("GET", "/ok"), ("OPTIONS", "/ok")]).has_route_for_method("OPTIONS", "/ok")
    any_only = RouteTable([("ANY", "/ok")])
    assert not any_only.has_route_for_method("OPTIONS", "/ok")
    match = any_only.match("OPTIONS", "/ok")  # without a cors block, ANY answers OPTIONS
    assert match is not None
    assert match.index == 0


def test_preflight_route_and_winner_may_differ() -> None:
    table = RouteTable([("OPTIONS", "/a/{x}"), ("ANY", "/a/b")])
    assert table.has_route_for_method("OPTIONS", "/a/b")
    winner = table.match("OPTIONS", "/a/b")
    assert winner is not None
    assert winner.index == 1


# --- params as the original's JS object holds them ----------------------------------------------


@pytest.mark.parametrize(
    ("route", "path", "params"),
    [
        ("/{a}/{b}", "/1/2", (("a", "1"), ("b", "2"))),
        ("/{x}/{y}/{x}", "/1/2/3", (("x", "3"), ("y", "2"))),
        ("/{b}/{10}/{2}/{a}", "/p/q/r/s", (("2", "r"), ("10", "q"), ("b", "p"), ("a", "s"))),
        ("/{01}/{0}", "/p/q", (("0", "q"), ("01", "p"))),
        ("/{__proto__}/{id}", "/p/q", (("id", "q"),)),
        ("/{id}/{.+}/{later}", "/p/q/r", (("id", "p"),)),
    ],
)
def test_params_follow_js_object_order(
    route: str, path: str, params: tuple[tuple[str, str], ...]
) -> None:
    got = RouteTable([("GET", route)]).match("GET", path)
    assert got is not None
    assert got.params == params
    ref = reference.winner([("GET", route)], "GET", path)
    assert ref is not None
    assert ref.params == params


# --- explain_rank -------------------------------------------------------------------------------


def ranked(routes: Routes, method: str, path: str) -> list[RouteMatch]:
    return RouteTable(routes).candidates(method, path)


@pytest.mark.parametrize(
    ("routes", "method", "path", "rule"),
    [
        ([("GET", "/items/{id}"), ("GET", "/items/special")], "GET", "/items/special", "rule 1"),
        ([("GET", "/a/{.+}"), ("GET", "/a/b/{.+}")], "GET", "/a/b/c/d", "rule 2"),
        ([("ANY", "/{.+}"), ("GET", "/health")], "GET", "/health", "rule 3"),
        (METHOD, "GET", "/method", "rule 4"),
        ([("GET", "/t/{a}"), ("GET", "/t/{b}")], "GET", "/t/1", "rule 5"),
    ],
)
def test_explain_rank_names_the_rule(routes: Routes, method: str, path: str, rule: str) -> None:
    first, second = ranked(routes, method, path)
    assert explain_rank(first, second).endswith(f"({rule})")
    with pytest.raises(ValueError):
        explain_rank(second, first)


def test_explain_rank_wording() -> None:
    first, second = ranked([("GET", "/a/{.+}"), ("GET", "/a/b/{.+}")], "GET", "/a/b/c/d")
    assert explain_rank(first, second) == "more matched segments win (4 vs 3) (rule 2)"
    first, second = ranked(ITEMS[1:], "GET", "/items/special")
    assert explain_rank(first, second) == "exact match beats non-exact (rule 1)"


def test_priority_key_orders_like_the_spec() -> None:
    a = RouteMatch(index=3, matched_count=2, is_exact=True, is_wildcard=True, method_equal=False)
    b = RouteMatch(index=0, matched_count=4, is_exact=False, is_wildcard=False, method_equal=True)
    assert priority_key(a) == (False, -2, True, True, 3)
    assert priority_key(a) < priority_key(b)


# --- a table shaped like a real API, against the reference --------------------------------------


def api_like_routes(n: int) -> Routes:
    """About ``n`` routes: many services with distinct prefixes, some ANY and ``{.+}`` routes."""
    routes: Routes = [("GET", "/health"), ("ANY", "/{.+}")]
    service = 0
    while len(routes) < n:
        base = f"/api/v{service % 3 + 1}/svc{service}"
        routes += [
            ("GET", f"{base}/items"),
            ("POST", f"{base}/items"),
            ("GET", f"{base}/items/{{id}}"),
            ("PUT", f"{base}/items/{{id}}"),
            ("DELETE", f"{base}/items/{{id}}"),
            ("GET", f"{base}/items/{{id}}/tags/{{tag}}"),
            ("OPTIONS", f"{base}/items/{{id}}"),
            ("ANY", f"{base}/files/{{.+}}"),
            ("GET", f"{base}/users/{{uid}}/orders/{{oid}}"),
            ("ANY", f"{base}/proxy"),
        ]
        service += 1
    return routes[:n]


def test_api_like_table_agrees_with_reference() -> None:
    routes = api_like_routes(300)
    table = RouteTable(routes)
    paths = [
        "/health",
        "/",
        "/nothing/here",
        "/api/v1/svc0/items",
        "/api/v2/svc1/items/42",
        "/api/v3/svc2/items/42/tags/x",
        "/api/v1/svc3/files",
        "/api/v1/svc3/files/a/b",
        "/api/v2/svc4/users/1/orders/2",
        "/api/v2/svc4/proxy",
        "/api/v1/svc29/items/",
    ]
    for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"):
        for path in paths:
            assert match_fields(table.match(method, path)) == match_fields(
                reference.winner(routes, method, path)
            ), (method, path)


# --- property: the tree agrees with the naive reference ------------------------------------------

COMMON = ["a", "b", ""]  # drawn often, so rival routes and requests meet
RARE = ["api", "A", "%7B", "{", "x}", "{.+"]  # case, escapes, brace look-alikes
PARAMS = ["{p}", "{q}", "{}", "{0}", "{1}", "{__proto__}", "{a.b}"]
WILD = "{.+}"
METHODS = ["GET", "POST", "ANY", "OPTIONS", "HEAD", "get", "PATCH"]
KEEP = "keep"  # in route_near: keep the request's segment

# Weighted by repetition: sampled_from is far cheaper to draw from than nested one_of.
literal_segment = st.sampled_from(COMMON * 3 + RARE)
route_segment = st.sampled_from(COMMON * 4 + RARE + ["{p}", "{q}"] * 2 + PARAMS + [WILD] * 3)
near_segment = st.sampled_from(
    [KEEP] * 20 + COMMON * 2 + RARE + ["{p}", "{q}"] * 2 + PARAMS + [WILD] * 2
)
first_segment = st.sampled_from(["", "", "", "", WILD, "{p}", "a"])
route_method = st.sampled_from(["GET", "ANY"] * 4 + METHODS)
request_method = st.sampled_from(["GET"] * 6 + METHODS)


@st.composite
def route_paths(draw: st.DrawFn) -> str:
    """A random route path (rarely without its leading slash)."""
    segments = draw(st.lists(route_segment, max_size=4))
    return draw(first_segment) + "/" + "/".join(segments) if segments else draw(first_segment)


@st.composite
def route_near(draw: st.DrawFn, request: list[str]) -> str:
    """A route derived from the request's segments, so that rival matches are common."""
    out = [draw(first_segment)]
    for segment in request[1:]:
        choice = draw(near_segment)
        out.append(segment if choice == KEEP else choice)
    tail = draw(st.integers(0, 4))
    cut = draw(st.integers(1, len(out)))
    if tail == 1:  # cut short, end in a wildcard (zero or more trailing segments)
        out = [*out[:cut], WILD]
    elif tail == 2:  # cut short, or one segment too long
        out = out[:cut] + draw(st.lists(route_segment, max_size=1))
    elif tail == 3:  # a non-final wildcard
        out = [*out[:cut], WILD, *draw(st.lists(route_segment, max_size=2))]
    return "/".join(out)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Routes, str, str]:
    """(routes, method, path): routes mostly near the request, a few unrelated."""
    request = ["", *draw(st.lists(literal_segment, max_size=5))]
    if draw(st.integers(0, 5)) == 0:
        request.append("42")
    path_strategy = st.one_of(route_near(request), route_near(request), route_paths())
    routes = draw(st.lists(st.tuples(route_method, path_strategy), min_size=2, max_size=12))
    for _ in range(draw(st.integers(0, 2))):  # the same path under another method
        _, path = draw(st.sampled_from(routes))
        routes.insert(draw(st.integers(0, len(routes))), (draw(route_method), path))
    return routes, draw(request_method), "/".join(request)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_tree_agrees_with_reference(scenario: tuple[Routes, str, str]) -> None:
    routes, method, path = scenario
    table = RouteTable(routes)

    assert match_fields(table.match(method, path)) == match_fields(
        reference.winner(routes, method, path)
    )
    assert [match_fields(m) for m in table.candidates(method, path)] == [
        match_fields(m) for m in reference.matched_paths(routes, method, path)
    ]
    for literal in {method, "OPTIONS", "ANY"}:
        expected = reference.first_route_for_method(routes, literal, path) is not None
        assert table.has_route_for_method(literal, path) == expected
