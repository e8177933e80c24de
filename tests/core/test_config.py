"""The configuration compiler.

UPSTREAM.md §1, §8.6, cases 13-16 and 78-81; DESIGN.md "Fail closed".
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings, strategies as st

from sapg_core._config import (
    CompileResult,
    ConfigError,
    ConfigSyntaxError,
    compile_config,
    json_pointer,
    normalise,
    parse_config_text,
    resolve_placeholders,
    validate,
)
from sapg_core._model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    Auth0Authorizer,
    Cors,
    Diagnostic,
    JwtAuthorizer,
    MappingSpec,
    Route,
    Severity,
    SupabaseAuthorizer,
    UnknownAuthorizer,
)
from sapg_core._schema import is_uri

JWT = {"type": "jwt", "secret": "s", "algorithm": "HS256", "issuer": "i", "audience": "a"}
AUTH0 = {
    "type": "auth0",
    "domain": "example.auth0.com",
    "client_id": "cid",
    "client_secret": "secret",
    "redirect_uri": "https://api.example.com/callback",
    "jwks_uri": "https://example.auth0.com/.well-known/jwks.json",
    "scope": "openid",
}
BASE_CORS = {
    "allow_origins": ["https://app.example.com"],
    "allow_methods": ["GET", "POST", "OPTIONS"],
    "allow_headers": ["Authorization", "Content-Type", "X-Refresh-Token"],
    "expose_headers": ["X-Request-Id"],
    "allow_credentials": True,
    "max_age": 600,
}


def compiled(config: object, env: dict[str, str] | None = None) -> CompileResult:
    return compile_config(config, env=env or {})


def route(path: str = "/x", method: str = "GET", **fields: object) -> dict[str, object]:
    return {"method": method, "path": path, **fields}


def only_route(config: object, env: dict[str, str] | None = None) -> Route:
    (single,) = compiled(config, env).config.routes
    return single


def texts(diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> list[str]:
    return [str(d) for d in diagnostics]


# --------------------------------------------------------------------------- parsing


def test_parse_returns_the_json_value() -> None:
    assert parse_config_text('{"paths": []}', source="inline") == {"paths": []}
    assert parse_config_text(b'\xef\xbb\xbf{"paths": [1.5]}', source="kv") == {"paths": [1.5]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{\n  "paths": [\n    {"a": 1,}\n  ]\n}',
            "cfg.json: line 3 column 13: Expecting property",
        ),
        ('{"paths": [}', "cfg.json: line 1 column 12: Expecting value"),
        ("", "cfg.json: line 1 column 1: Expecting value"),
        ('{\n"a": NaN}', "cfg.json: line 2 column 6: NaN is not valid JSON"),
        ('{"s": "NaN Infinity", "b": -Infinity}', "cfg.json: line 1 column 28: -Infinity"),
        (b'{"a":\n "\xff"}', "cfg.json: line 2 column 3: invalid UTF-8"),
    ],
)
def test_syntax_error_is_one_line_with_line_and_column(text: str | bytes, expected: str) -> None:
    with pytest.raises(ConfigSyntaxError) as caught:
        parse_config_text(text, source="cfg.json")
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert isinstance(caught.value, ConfigError)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.severity is Severity.ERROR
    assert message == f"cfg.json: {diagnostic.message}"


def test_syntax_error_fields_and_one_line_even_for_odd_sources() -> None:
    with pytest.raises(ConfigSyntaxError) as caught:
        parse_config_text("[1,\n2,,]", source="a\nb")
    error = caught.value
    assert (error.line, error.column, error.detail) == (2, 3, "Expecting value")
    assert str(error) == "a\\nb: line 2 column 3: Expecting value"


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("value", [None, "text", 42, 1.5, True])
def test_normalise_returns_non_objects_unchanged(value: object) -> None:
    assert normalise(value) == value


def test_normalise_deep_copies_and_never_mutates() -> None:
    raw: dict[str, object] = {
        "paths": [route(integration={"type": "http", "server": "s"})],
        "variables": {"nested": {"a": [1]}},
    }
    before = copy.deepcopy(raw)
    result = normalise(raw)
    assert raw == before
    assert isinstance(result, dict)
    assert result["variables"] == raw["variables"]
    assert result["variables"] is not raw["variables"]
    array = [{"a": 1}]
    copied = normalise(array)
    assert copied == array and copied is not array


def test_normalise_renames_http_to_http_proxy_only() -> None:
    raw = {
        "paths": [
            route(integration={"type": "http", "server": "api", "extra": 1}),
            route(integration={"type": "http_proxy", "server": "api"}),
            route(integration={"type": "HTTP", "server": "api"}),
            route(response={"type": "http"}),
            "not a route",
        ]
    }
    result = normalise(raw)
    assert isinstance(result, dict)
    assert result["paths"] == [
        route(integration={"type": "http_proxy", "server": "api", "extra": 1}),
        route(integration={"type": "http_proxy", "server": "api"}),
        route(integration={"type": "HTTP", "server": "api"}),
        route(response={"type": "http"}),
        "not a route",
    ]


def test_normalise_merges_legacy_bindings_first_one_wins() -> None:
    raw = {
        "paths": [],
        "serviceBindings": [{"alias": "svc1", "binding": "SVC1"}],
        "servicesBindings": [
            {"alias": "svc1", "binding": "SVC1_DUP"},
            {"alias": "svc2", "binding": "SVC2"},
        ],
    }
    result = normalise(raw)
    assert isinstance(result, dict)
    assert result["serviceBindings"] == [
        {"alias": "svc1", "binding": "SVC1"},
        {"alias": "svc2", "binding": "SVC2"},
    ]
    assert result["servicesBindings"] == raw["servicesBindings"]  # never deleted


def test_normalise_merge_drops_empty_and_duplicate_legacy_entries() -> None:
    raw = {
        "paths": [],
        "serviceBindings": [{"binding": "NO_ALIAS"}, None],
        "servicesBindings": [
            {"alias": "", "binding": "EMPTY"},
            {"alias": None, "binding": "NULL"},
            {"binding": "MISSING"},
            "junk",
            {"alias": "a", "binding": "A1"},
            {"alias": "a", "binding": "A2"},
            {"alias": 1, "binding": "ONE"},
            {"alias": True, "binding": "TRUE"},
        ],
    }
    result = normalise(raw)
    assert isinstance(result, dict)
    assert result["serviceBindings"] == [
        {"binding": "NO_ALIAS"},  # primary entries are kept as they are
        None,
        {"alias": "a", "binding": "A1"},
        {"alias": 1, "binding": "ONE"},
        {"alias": True, "binding": "TRUE"},  # true and 1 differ in JS
    ]


def test_normalise_keeps_empty_bindings_and_adds_none() -> None:
    both_empty = normalise({"paths": [], "serviceBindings": [], "servicesBindings": []})
    assert both_empty == {"paths": [], "serviceBindings": [], "servicesBindings": []}
    assert normalise({"paths": []}) == {"paths": []}
    legacy_only = normalise({"servicesBindings": [{"alias": "h", "binding": "H"}], "paths": []})
    assert isinstance(legacy_only, dict)
    assert list(legacy_only) == ["servicesBindings", "paths", "serviceBindings"]


def test_case_81_legacy_bindings_and_http() -> None:
    raw = {
        "servicesBindings": [{"alias": "hook", "binding": "HOOK_SERVICE"}],
        "servers": [{"alias": "api", "url": "https://api.example.com"}],
        "paths": [route(integration={"type": "http", "server": "api"})],
    }
    result = normalise(raw)
    assert isinstance(result, dict)
    assert result["serviceBindings"] == [{"alias": "hook", "binding": "HOOK_SERVICE"}]
    compiled_config = compiled(raw).config
    assert compiled_config.service_bindings["hook"].binding == "HOOK_SERVICE"
    integration = compiled_config.routes[0].integration
    assert integration is not None and integration.type == "http_proxy"


# --------------------------------------------------------------------------- placeholders


def test_case_15_env_in_static_response() -> None:
    config = {"paths": [route(response={"runtime": "$env.RUNTIME"})]}
    assert only_route(config, {"RUNTIME": "staging"}).static_body == b'{"runtime":"staging"}'


def test_case_16_missing_is_empty_and_embedded_is_verbatim() -> None:
    config = {"paths": [route(response={"v": "$env.MISSING", "w": "x-$env.RUNTIME"})]}
    body = only_route(config, {"RUNTIME": "staging"}).static_body
    assert body == b'{"v":"","w":"x-$env.RUNTIME"}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$env.A", "a-value"),
        ("$secrets.A", "a-value"),
        ("$secret.A", "a-value"),
        ("$env.FOO/bar", "slash"),
        ("$env.a.b.c", "dots"),
        ("$secret.a.b.c", "dots"),
        ("$env.MISSING", ""),
        ("$secrets.MISSING", ""),
        ("$env.", ""),
        ("$env.NEXT", "$env.A"),  # single pass: the value is not expanded again
        ("$env.A ", ""),  # NAME is everything after the prefix, spaces included
        ("x$env.A", "x$env.A"),
        ("https://$env.DOMAIN/x", "https://$env.DOMAIN/x"),
        ("$ENV.A", "$ENV.A"),
        ("$secretsA", "$secretsA"),
        ("$request.header.X", "$request.header.X"),
        ("$config.A", "$config.A"),
    ],
)
def test_placeholder_values(value: str, expected: str) -> None:
    env = {"A": "a-value", "FOO/bar": "slash", "a.b.c": "dots", "NEXT": "$env.A", "DOMAIN": "d"}
    assert resolve_placeholders({"k": value}, env) == {"k": expected}
    assert resolve_placeholders([value], env) == [expected]


def test_placeholders_replace_values_never_keys_everywhere() -> None:
    raw = {
        "$env.KEY": "$env.V",
        "authorizer": {"type": "jwt", "secret": "$secret.S", "issuer": "$env.I"},
        "paths": [
            {
                "method": "GET",
                "path": "$env.P",
                "response": ["$env.V", {"$env.V": ["$secrets.V"]}, 1, None, True],
                "variables": {"a": "$env.V"},
            }
        ],
        "variables": {"g": "$env.V"},
    }
    env = {"V": "v", "S": "s", "I": "i", "P": "/p", "KEY": "nope"}
    before = copy.deepcopy(raw)
    assert resolve_placeholders(raw, env) == {
        "$env.KEY": "v",
        "authorizer": {"type": "jwt", "secret": "s", "issuer": "i"},
        "paths": [
            {
                "method": "GET",
                "path": "/p",
                "response": ["v", {"$env.V": ["v"]}, 1, None, True],
                "variables": {"a": "v"},
            }
        ],
        "variables": {"g": "v"},
    }
    assert raw == before


def test_top_level_scalar_is_not_a_value() -> None:
    assert resolve_placeholders("$env.A", {"A": "x"}) == "$env.A"
    assert resolve_placeholders(None, {}) is None


def test_placeholders_run_before_validation() -> None:
    config = {
        "servers": [{"alias": "api", "url": "$env.UPSTREAM"}],
        "paths": [route(integration={"type": "http_proxy", "server": "api"})],
    }
    good = compiled(config, {"UPSTREAM": "https://backend.example.com"})
    assert good.errors == ()
    assert good.config.servers["api"].url == "https://backend.example.com"
    missing = compiled(config)
    assert texts(missing.errors) == ["/servers/0/url: '' is not a 'uri'"]


def test_placeholder_in_path_and_alias_is_resolved_before_compiling() -> None:
    config = {
        "serviceBindings": [{"alias": "$env.ALIAS", "binding": "B"}],
        "paths": [route(path="$env.P", pre_process={"binding": "guard", "function": "f"})],
    }
    compiled_route = only_route(config, {"P": "/from-env", "ALIAS": "guard"})
    assert compiled_route.path == "/from-env"
    assert compiled_route.pre_process == ("guard", "f")
    assert compiled_route.defect is None


# --------------------------------------------------------------------------- validation


def test_minimal_config_is_valid() -> None:
    assert validate({"paths": [route(response={"status": "ok"})]}) == []


def test_case_80_invalid_method_names_the_pointer() -> None:
    raw = parse_config_text(
        '{"paths":[{"method":"INVALID","path":"/x","response":{"ok":true}}]}', source="inline"
    )
    result = compile_config(raw, env={})
    (error,) = result.errors
    assert error.pointer == "/paths/0/method"
    assert str(error) == (
        "/paths/0/method: 'INVALID' is not one of "
        "['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'ANY']"
    )
    assert result.config.routes[0].method == "INVALID"  # kept: it simply never matches


def test_validation_diagnostics_are_sorted_by_pointer_numerically() -> None:
    paths = [route() for _ in range(12)]
    paths[10] = route(method="FETCH")
    paths[2] = route(path="no-slash")
    found = validate({"paths": paths, "zzz": 1})
    # Issue 9 item 6: an unknown key is reported at its own pointer (was "(root): Additional
    # properties are not allowed ('zzz' was unexpected)").
    assert [d.pointer for d in found] == ["/paths/2/path", "/paths/10/method", "/zzz"]
    assert str(found[2]) == "/zzz: unknown key 'zzz'"
    assert all(d.severity is Severity.ERROR for d in found)


@pytest.mark.parametrize(
    ("authorizer", "expected"),
    [
        (
            {**AUTH0, "redirect_uri": "not a uri"},
            ["/authorizer/redirect_uri: 'not a uri' is not a 'uri'"],
        ),
        ({**AUTH0, "client_id": 7}, ["/authorizer/client_id: 7 is not of type 'string'"]),
        (
            {k: v for k, v in AUTH0.items() if k != "jwks_uri"},
            ["/authorizer: at least one of 'jwks', 'jwks_uri' is required"],
        ),
        ({**JWT, "algorithm": "HS512"}, ["/authorizer/algorithm: 'HS256' was expected"]),
        (
            {**JWT, "jwks_uri": "https://x.example"},
            ["/authorizer/jwks_uri: unknown key 'jwks_uri'"],
        ),
        (
            {"type": "supabase", "jwt_secret": "s", "issuer": "i"},
            ["/authorizer: 'audience' is a required property"],
        ),
        (
            {"type": "oauth", "secret": "s"},
            ["/authorizer/type: 'oauth' is not one of ['jwt', 'auth0', 'supabase']"],
        ),
        ("jwt", ["/authorizer: 'jwt' is not of type 'object'"]),
        ({"secret": "s"}, ["/authorizer: 'type' is a required property"]),
        (  # 'x' is unknown to every variant: named (issue 9 item 6)
            {"issuer": "i", "x": 1},
            ["/authorizer: 'type' is a required property", "/authorizer/x: unknown key 'x'"],
        ),
    ],
)
def test_authorizer_errors_come_from_the_branch_its_type_picks(
    authorizer: object, expected: list[str]
) -> None:
    found = texts(validate({"paths": [], "authorizer": authorizer}))
    assert found == sorted(expected, key=lambda text: text.split(":")[0])
    assert not any("under any of the given schemas" in text for text in found)


def test_cors_origin_errors_name_the_item() -> None:
    cors = {**BASE_CORS, "allow_origins": ["*", "not a uri", 5, "https://ok.example"]}
    assert texts(validate({"paths": [], "cors": cors})) == [
        "/cors/allow_origins/1: 'not a uri' is not a 'uri'",
        "/cors/allow_origins/2: 5 is not valid under any of the given schemas",
    ]


def test_messages_do_not_dump_whole_objects() -> None:
    found = texts(validate({"paths": {"secret": "hunter2"}}))
    assert found == ["/paths: the object is not of type 'array'"]


def test_validation_accepts_the_new_fields() -> None:
    config = {
        "servers": [
            {"alias": "a", "url": "https://a.example", "connect_timeout": 0.5, "read_timeout": 2}
        ],
        "authorizer": {**AUTH0, "audience": "https://api.example.com", "require_state": True},
        "paths": [],
    }
    assert validate(config) == []
    supabase = {"type": "supabase", "jwt_secret": "", "issuer": "", "audience": ""}
    assert (
        validate({"paths": [], "authorizer": {**supabase, "jwks_uri": "https://s.example/j"}}) == []
    )
    assert texts(validate({"paths": [], "authorizer": {**supabase, "jwks_uri": "x"}})) == [
        "/authorizer/jwks_uri: 'x' is not a 'uri'"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "https://api.example.com",
        "https://api.example.com:8443/a/b?c=d&e#frag",
        "http://[::1]:8080/",
        "https://*.example.org",
        "mailto:someone@example.com",
        "urn:isbn:0451450523",
        "https://example.com/%E2%82%AC",
        "https:",
    ],
)
def test_uri_format_accepts_absolute_uris(text: str) -> None:
    assert is_uri(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a uri",
        "/relative/path",
        "//host/x",
        "example.com",
        "https://exa mple.com",
        "https://example.com/%zz",
        "https://example.com/caf\u00e9",
        "1http://x",
        "https://a#b#c",
        "https://example.com/\n",
    ],
)
def test_uri_format_rejects_everything_else(text: str) -> None:
    assert not is_uri(text)


# --------------------------------------------------------------------------- pointers


@pytest.mark.parametrize(
    ("path", "pointer"),
    [
        ((), ""),
        (("paths", 0, "method"), "/paths/0/method"),
        (("a/b",), "/a~1b"),
        (("m~n",), "/m~0n"),
        (("~/",), "/~0~1"),
        (("~1",), "/~01"),
        (("",), "/"),
    ],
)
def test_json_pointer_escaping(path: tuple[str | int, ...], pointer: str) -> None:
    assert json_pointer(path) == pointer


def test_root_diagnostic_reads_root() -> None:
    (diagnostic,) = validate({})
    assert str(diagnostic) == "(root): 'paths' is a required property"


# --------------------------------------------------------------------------- structural errors


@pytest.mark.parametrize(
    "raw", [None, "config", 42, [], [{"paths": []}], {}, {"paths": None}, {"paths": {}}]
)
def test_unusable_configs_raise_config_error(raw: object) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_config(raw, env={})
    assert not isinstance(caught.value, ConfigSyntaxError)
    assert caught.value.diagnostics
    assert all(d.severity is Severity.ERROR for d in caught.value.diagnostics)
    assert "\n" not in str(caught.value)


def test_missing_paths_names_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_config({"servers": []}, env={})
    assert str(caught.value) == "/paths: 'paths' must be an array of routes"
    assert "(root): 'paths' is a required property" in texts(caught.value.diagnostics)


def test_deep_nesting() -> None:
    deep_text = "[" * 800 + "]" * 800
    raw = parse_config_text(
        f'{{"variables": {{"v": {deep_text}}}, "paths": [{{"method": "GET", "path": "/", '
        f'"response": {deep_text}}}]}}',
        source="deep",
    )
    result = compile_config(raw, env={})  # copying and resolving are iterative: no limit
    (deep_route,) = result.config.routes
    assert deep_route.defect == "/paths/0/response: nested too deeply to serialise"
    very_deep: object = []
    for _ in range(100_000):
        very_deep = [very_deep]
    assert compile_config({"paths": [], "variables": {"v": very_deep}}, env={}).errors == ()
    absurd = {"paths": [{"method": "GET", "path": "/", "mapping": {"headers": {"h": very_deep}}}]}
    with pytest.raises(ConfigError, match="nested too deeply"):
        compile_config(absurd, env={})
    with pytest.raises(ConfigSyntaxError, match="nesting too deep"):
        parse_config_text("[" * 100_000 + "]" * 100_000, source="deep")


# --------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("response", "body"),
    [
        ({"status": "ok"}, b'{"status":"ok"}'),
        ("string ok", b'"string ok"'),  # case 11: a JSON string, quotes included
        (None, b"null"),
        (42, b"42"),
        (1.0, b"1"),
        (True, b"true"),
        ({"caf\u00e9": "\u2603"}, '{"caf\u00e9":"\u2603"}'.encode()),
        ([1, "a"], b'[1,"a"]'),
        (10**400, b"null"),  # too large for a JS number: Infinity, which JSON writes as null
    ],
)
def test_static_body_is_the_serialised_response(response: object, body: bytes) -> None:
    assert only_route({"paths": [route(response=response)]}).static_body == body


def test_case_12_no_response_means_no_body() -> None:
    assert only_route({"paths": [route()]}).static_body is None


def test_case_13_unknown_integration_type_keeps_static_body() -> None:
    config = {"paths": [route(integration={"type": "no_such_type"}, response={"a": 1})]}
    result = compiled(config)
    compiled_route = result.config.routes[0]
    assert compiled_route.integration is not None
    assert compiled_route.integration.type == "no_such_type"
    assert compiled_route.static_body == b'{"a":1}'
    assert compiled_route.defect is None
    assert [d.pointer for d in result.errors] == ["/paths/0/integration/type"]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (True, True),
        (1, True),
        ("yes", True),
        ([], True),
        ({}, True),
        (False, False),
        (None, False),
        (0, False),
        ("", False),
        (0.0, False),
    ],
)
def test_auth_is_js_truthiness(auth: object, expected: bool) -> None:
    config = {"authorizer": JWT, "paths": [route(auth=auth)]}
    assert only_route(config).auth is expected


def test_route_fields() -> None:
    config = {
        "servers": [{"alias": "api", "url": "https://backend.example.com"}],
        "serviceBindings": [{"alias": "guard", "binding": "GUARD_SERVICE"}],
        "variables": {"region": "eu-west-1"},
        "paths": [
            "skipped: not an object",
            route(
                "/proxy/{.+}",
                integration={"type": "http", "server": "api", "post_process": {"x": 1}},
                mapping={
                    "headers": {"x-user": "$request.jwt.sub"},
                    "query": {"user": "$request.jwt.sub"},
                },
                variables={"api_key": "k"},
                pre_process={"binding": "guard", "function": "check"},
                unknown_key=True,
            ),
        ],
    }
    result = compiled(config)
    (compiled_route,) = result.config.routes
    assert compiled_route.index == 1
    assert (compiled_route.method, compiled_route.path) == ("GET", "/proxy/{.+}")
    assert compiled_route.integration is not None
    assert compiled_route.integration.type == "http_proxy"
    assert compiled_route.integration.server == "api"
    assert compiled_route.integration.raw["post_process"] == {"x": 1}
    assert compiled_route.mapping == MappingSpec(
        headers=(("x-user", "$request.jwt.sub"),), query=(("user", "$request.jwt.sub"),)
    )
    assert compiled_route.variables == {"api_key": "k"}
    assert compiled_route.pre_process == ("guard", "check")
    assert compiled_route.raw["unknown_key"] is True
    assert compiled_route.defect is None
    assert result.config.variables == {"region": "eu-west-1"}
    assert result.config.raw["variables"] == {"region": "eu-west-1"}


def test_wrong_shapes_are_coerced() -> None:
    config = {
        "paths": [
            {
                "method": 5,
                "path": ["/x"],
                "variables": [1],
                "mapping": "yes",
                "integration": "http",
            },
            {"method": "get", "path": "/y", "pre_process": "guard", "mapping": None},
        ]
    }
    first, second = compiled(config).config.routes
    assert (first.method, first.path, first.variables, first.integration) == ("", "", {}, None)
    assert first.mapping == MappingSpec(headers=(), query=None)
    assert second.method == "get"  # kept as written: it never matches (case-sensitive)
    assert second.mapping is None
    assert second.pre_process is None


def test_mapping_values_are_converted_like_js_string() -> None:
    headers = {
        "int": 7,
        "float": 1.5,
        "whole": 2.0,
        "small": 1e-7,
        "t": True,
        "f": False,
        "n": None,
        "list": ["a", 1, None, ["b", "c"]],
        "obj": {"a": 1},
        "s": "$config.x",
    }
    config = {"paths": [route(mapping={"headers": headers})]}
    mapping = only_route(config).mapping
    assert mapping == MappingSpec(
        headers=(
            ("int", "7"),
            ("float", "1.5"),
            ("whole", "2"),
            ("small", "1e-7"),
            ("t", "true"),
            ("f", "false"),
            ("n", "null"),
            ("list", "a,1,,b,c"),
            ("obj", "[object Object]"),
            ("s", "$config.x"),
        ),
        query=None,
    )


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"headers": {"a": "$request.query.a"}}, MappingSpec(headers=(("a", "$request.query.a"),))),
        ({"query": {}}, MappingSpec(headers=(), query=())),
        ({"query": {"q": 1}}, MappingSpec(query=(("q", "1"),))),
        ({"query": None}, MappingSpec(query=None)),
        ({}, MappingSpec()),
    ],
)
def test_mapping_query_is_none_only_without_query(mapping: object, expected: MappingSpec) -> None:
    assert only_route({"paths": [route(mapping=mapping)]}).mapping == expected


# --------------------------------------------------------------------------- top-level blocks


def test_cors_values_are_ready_to_send() -> None:
    cors = compiled({"cors": BASE_CORS, "paths": []}).config.cors
    assert cors == Cors(
        allow_origins=("https://app.example.com",),
        allow_methods="GET,POST,OPTIONS",
        allow_headers="Authorization,Content-Type,X-Refresh-Token",
        expose_headers="X-Request-Id",
        allow_credentials=True,
        max_age="600",
    )


def test_case_25_cors_with_only_origins_gets_defaults() -> None:
    result = compiled({"cors": {"allow_origins": ["https://a.example"]}, "paths": []})
    assert result.config.cors == Cors(
        allow_origins=("https://a.example",),
        allow_methods="",
        allow_headers="",
        expose_headers="",
        allow_credentials=False,
        max_age="0",
    )
    assert len(result.errors) == 5  # five required keys missing; served anyway


@pytest.mark.parametrize(
    ("cors", "origins", "max_age"),
    [
        ({"allow_origins": "https://a.example", "max_age": 3600}, (), "3600"),
        (
            {"allow_origins": ["*", 5, None, "https://b.example"], "max_age": 1.5},
            ("*", "https://b.example"),
            "1.5",
        ),
        ({"allow_origins": None, "max_age": None}, (), "0"),
        ("yes", (), "0"),
    ],
)
def test_cors_odd_shapes(cors: object, origins: tuple[str, ...], max_age: str) -> None:
    result = compiled({"cors": cors, "paths": []}).config.cors
    assert result is not None
    assert (result.allow_origins, result.max_age) == (origins, max_age)


@pytest.mark.parametrize("cors", [None, False, 0, ""])
def test_falsy_cors_is_no_cors(cors: object) -> None:
    assert compiled({"cors": cors, "paths": []}).config.cors is None


def test_authorizers_by_type() -> None:
    def authorizer_of(block: object) -> object:
        return compiled({"authorizer": block, "paths": []}).config.authorizer

    assert authorizer_of(JWT) == JwtAuthorizer(
        secret="s", algorithm="HS256", issuer="i", audience="a"
    )
    assert authorizer_of({"type": "jwt", "secret": None}) == JwtAuthorizer(
        secret="null", algorithm="", issuer=None, audience=None
    )
    assert authorizer_of(
        {**AUTH0, "jwks": '{"keys":[]}', "audience": "api", "require_state": True}
    ) == (
        Auth0Authorizer(
            domain="example.auth0.com",
            client_id="cid",
            client_secret="secret",
            redirect_uri="https://api.example.com/callback",
            scope="openid",
            jwks='{"keys":[]}',
            jwks_uri="https://example.auth0.com/.well-known/jwks.json",
            audience="api",
            require_state=True,
        )
    )
    assert authorizer_of(
        {"type": "supabase", "jwt_secret": "x", "issuer": None}
    ) == SupabaseAuthorizer(jwt_secret="x", issuer="", audience=None)
    assert authorizer_of({"type": "ldap"}) == UnknownAuthorizer(type="ldap")
    assert authorizer_of({"type": 5}) == UnknownAuthorizer(type="5")
    assert authorizer_of({"secret": "s"}) == UnknownAuthorizer(type="")
    assert authorizer_of("jwt") == UnknownAuthorizer(type="")
    assert authorizer_of(None) is None
    assert authorizer_of({}) == UnknownAuthorizer(type="")


def test_servers_services_and_bindings() -> None:
    config = {
        "servers": [
            {"alias": "a", "url": "https://a.example"},
            {"alias": "b", "url": "https://b.example", "connect_timeout": 0.25, "read_timeout": 90},
            {"alias": "a", "url": "https://duplicate.example"},
            {"alias": "c", "url": "https://c.example", "connect_timeout": -1, "read_timeout": True},
            {"alias": 5, "url": "https://x.example"},
            "junk",
        ],
        "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
        "serviceBindings": [{"alias": "guard", "binding": "GUARD"}, {"binding": "NO_ALIAS"}],
        "paths": [],
    }
    result = compiled(config).config
    assert sorted(result.servers) == ["a", "b", "c"]
    assert result.servers["a"].url == "https://a.example"  # the first alias wins, as find() does
    assert (result.servers["a"].connect_timeout, result.servers["a"].read_timeout) == (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_READ_TIMEOUT,
    )
    assert (result.servers["b"].connect_timeout, result.servers["b"].read_timeout) == (0.25, 90.0)
    assert (result.servers["c"].connect_timeout, result.servers["c"].read_timeout) == (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_READ_TIMEOUT,
    )
    assert result.services["endpoint1"].entrypoint == "./services/endpoint1"
    assert list(result.service_bindings) == ["guard"]


# --------------------------------------------------------------------------- fail closed


def defect_of(config: object) -> tuple[list[str], str | None]:
    result = compiled(config)
    return texts(result.errors), result.config.routes[-1].defect


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"paths": [route(auth=True, response={"ok": True})]},
            "/paths/0/auth: auth is on but no authorizer is configured",
        ),
        (
            {"authorizer": {"type": "ldap"}, "paths": [route(auth=1)]},
            "/paths/0/auth: auth is on but authorizer type 'ldap' is not supported",
        ),
        (
            {
                "servers": [{"alias": "api", "url": "https://a.example"}],
                "paths": [
                    route(),
                    route(),
                    route(),
                    route(),
                    route(integration={"type": "http_proxy", "server": "missing"}),
                ],
            },
            "/paths/4/integration/server: no server with alias 'missing'",
        ),
        (
            {"paths": [route(integration={"type": "http", "server": "api"})]},
            "/paths/0/integration/server: no server with alias 'api'",
        ),
        (
            {
                "services": [{"alias": "one", "entrypoint": "./one"}],
                "paths": [route(integration={"type": "service", "binding": "two"})],
            },
            "/paths/0/integration/binding: no service with alias 'two'",
        ),
        (
            {
                "services": [{"alias": "one", "entrypoint": "./one"}],
                "paths": [
                    route(
                        integration={"type": "service_binding", "binding": "one", "function": "f"}
                    )
                ],
            },
            "/paths/0/integration/binding: no service binding with alias 'one'",
        ),
        (
            {
                "serviceBindings": [{"alias": "guard", "binding": "G"}],
                "paths": [
                    route(pre_process={"binding": "gaurd", "function": "check"}, response={})
                ],
            },
            "/paths/0/pre_process/binding: no service binding with alias 'gaurd'",
        ),
        (
            {
                "authorizer": AUTH0,
                "paths": [
                    route(
                        integration={
                            "type": "auth0_callback",
                            "post_process": {
                                "type": "service_binding",
                                "binding": "after",
                                "function": "run",
                            },
                        }
                    )
                ],
            },
            "/paths/0/integration/post_process/binding: no service binding with alias 'after'",
        ),
    ],
)
def test_fail_closed_defects(config: object, expected: str) -> None:
    errors, defect = defect_of(config)
    assert expected in errors
    assert defect == expected


def test_case_14_unknown_server_is_a_defect_not_a_404() -> None:
    errors, defect = defect_of(
        {"paths": [route("/p", integration={"type": "http_proxy", "server": "missing"})]}
    )
    assert errors == [defect]


def test_missing_alias_fields_are_defects_too() -> None:
    config = {
        "serviceBindings": [{"alias": "g", "binding": "G"}],
        "paths": [
            route(integration={"type": "http_proxy"}),
            route(integration={"type": "service_binding", "binding": 5, "function": "f"}),
            route(pre_process={"function": "f"}),
            route(pre_process={"binding": "g"}),
            route(pre_process=["g", "f"]),
            route(pre_process={}),  # truthy in JS: a hook with no binding
        ],
    }
    result = compiled(config)
    defects = [r.defect for r in result.config.routes]
    assert defects == [
        "/paths/0/integration/server: no server with alias (none given)",
        "/paths/1/integration/binding: no service binding with alias 5",
        "/paths/2/pre_process/binding: no service binding with alias (none given)",
        "/paths/3/pre_process/function: the hook needs a function name",
        "/paths/4/pre_process: must be an object with 'binding' and 'function'",
        "/paths/5/pre_process/binding: no service binding with alias (none given); "
        "/paths/5/pre_process/function: the hook needs a function name",
    ]
    for defect in defects:
        assert defect is not None
        assert set(defect.split("; ")) <= set(texts(result.errors))


def test_several_defects_on_one_route_are_joined() -> None:
    _, defect = defect_of(
        {"paths": [route(auth=True, integration={"type": "http_proxy", "server": "x"})]}
    )
    assert defect == (
        "/paths/0/auth: auth is on but no authorizer is configured; "
        "/paths/0/integration/server: no server with alias 'x'"
    )


def test_sound_routes_have_no_defect() -> None:
    config = {
        "authorizer": JWT,
        "servers": [{"alias": "api", "url": "https://a.example"}],
        "services": [{"alias": "svc", "entrypoint": "./svc"}],
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": [  # distinct paths: one method and path twice is a warning (issue 9)
            route("/a", auth=True, integration={"type": "http_proxy", "server": "api"}),
            route(
                "/b",
                integration={"type": "service", "binding": "svc"},
                pre_process={"binding": "b", "function": "f"},
            ),
            route("/c", integration={"type": "service_binding", "binding": "b", "function": "f"}),
            route("/d", auth=False),
            route("/e", auth=None),
        ],
    }
    result = compiled(config)
    assert result.diagnostics == ()
    assert [r.defect for r in result.config.routes] == [None] * 5


def test_case_35_no_authorizer_without_auth_is_fine() -> None:
    result = compiled({"paths": [route("/private", response={"ok": True})]})
    assert result.diagnostics == ()


# --------------------------------------------------------------------------- warnings


def test_non_final_wildcard_warns() -> None:
    result = compiled({"paths": [route("/a/{.+}/c"), route("/a/{.+}"), route("/{.+}")]})
    assert texts(result.warnings) == [
        "/paths/0/path: '{.+}' is not the last segment: the segments after it are never "
        "compared (as in the original)"
    ]
    assert result.errors == ()
    assert result.config.routes[0].defect is None


def test_star_origin_with_credentials_warns() -> None:
    risky = compiled(
        {"cors": {**BASE_CORS, "allow_origins": ["https://a.example", "*"]}, "paths": []}
    )
    (warning,) = risky.warnings
    assert warning.pointer == "/cors/allow_origins/1"
    assert "reflects any Origin" in warning.message
    assert risky.errors == ()
    no_credentials = {**BASE_CORS, "allow_origins": ["*"], "allow_credentials": False}
    assert compiled({"cors": no_credentials, "paths": []}).diagnostics == ()
    pattern = {**BASE_CORS, "allow_origins": ["https://*.example.org"]}
    assert compiled({"cors": pattern, "paths": []}).diagnostics == ()


@pytest.mark.parametrize(
    ("jwks", "message"),
    [
        ("{invalid-json", "not valid JSON (Expecting property name"),
        ('{"keys": {}}', 'the JWKS has no "keys" array'),
        ("[]", 'the JWKS has no "keys" array'),
    ],
)
def test_bad_local_jwks_warns(jwks: str, message: str) -> None:
    result = compiled({"authorizer": {**AUTH0, "jwks": jwks}, "paths": []})
    (warning,) = result.warnings
    assert warning.pointer == "/authorizer/jwks"
    assert warning.message.startswith(message)
    assert result.errors == ()


@pytest.mark.parametrize("jwks", ['{"keys": []}', ""])
def test_good_or_empty_jwks_does_not_warn(jwks: str) -> None:
    assert compiled({"authorizer": {**AUTH0, "jwks": jwks}, "paths": []}).diagnostics == ()


def test_diagnostics_are_sorted_and_split_by_severity() -> None:
    config = {
        "cors": {**BASE_CORS, "allow_origins": ["*"]},
        "paths": [route("/a/{.+}/b", method="NOPE"), route(auth=True)],
    }
    result = compiled(config)
    assert [d.pointer for d in result.diagnostics] == [
        "/cors/allow_origins/0",
        "/paths/0/method",
        "/paths/0/path",
        "/paths/1/auth",
    ]
    assert [d.severity for d in result.errors] == [Severity.ERROR] * 2
    assert [d.severity for d in result.warnings] == [Severity.WARNING] * 2


def test_post_process_quirks_warn() -> None:
    config = {
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": [
            route(
                integration={
                    "type": "service_binding",
                    "binding": "b",
                    "function": "f",
                    "post_process": {"type": "service_binding", "binding": "b", "function": "g"},
                }
            ),
            route("/y", integration={"type": "auth0_callback", "post_process": {"type": "http"}}),
        ],
    }
    result = compiled(config)
    assert texts(result.warnings) == [
        "/paths/0/integration/post_process: post_process only runs for auth0_callback",
        "/paths/1/integration/post_process: post_process is ignored unless its type is "
        "'service_binding'",
    ]
    assert [r.defect for r in result.config.routes] == [None, None]


# --------------------------------------------------------------------------- compatibility mode

_STRINGS = st.sampled_from(
    [
        "GET",
        "ANY",
        "POST",
        "/x",
        "/{.+}",
        "/a/{.+}/b",
        "/{id}",
        "http",
        "http_proxy",
        "service",
        "service_binding",
        "auth0_callback",
        "jwt",
        "auth0",
        "supabase",
        "*",
        "https://a.example",
        "$env.X",
        "$secret.Y",
        "",
        "api",
        "b",
        '{"keys":[]}',
        "{bad",
    ]
)
_KEYS = st.sampled_from(
    [
        "method",
        "path",
        "integration",
        "type",
        "server",
        "binding",
        "function",
        "auth",
        "mapping",
        "headers",
        "query",
        "variables",
        "response",
        "pre_process",
        "post_process",
        "alias",
        "url",
        "entrypoint",
        "connect_timeout",
        "read_timeout",
        "allow_origins",
        "allow_methods",
        "allow_credentials",
        "max_age",
        "jwks",
        "jwks_uri",
        "secret",
        "issuer",
        "audience",
        "require_state",
        "jwt_secret",
    ]
) | st.text(max_size=4)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**308, max_value=10**320)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _STRINGS
    | st.text(max_size=8)
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)  # lone surrogates
)
JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=15,
)
SMALL_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=8,
)
_SECTIONS = [
    "paths",
    "cors",
    "authorizer",
    "servers",
    "services",
    "serviceBindings",
    "servicesBindings",
    "variables",
]


@settings(max_examples=200, deadline=None)
@given(
    sections=st.fixed_dictionaries({}, optional={name: SMALL_JSONISH for name in _SECTIONS}),
    routes=st.lists(st.dictionaries(_KEYS, SMALL_JSONISH, max_size=6), max_size=4),
    env=st.dictionaries(st.sampled_from(["X", "Y", "Z"]), st.text(max_size=5)),
)
def test_compile_never_fails_on_arbitrary_json(
    sections: dict[str, object], routes: list[object], env: dict[str, str]
) -> None:
    raw: dict[str, object] = {"paths": routes, **sections}
    try:
        result = compile_config(raw, env=env)
    except ConfigError:
        assert not isinstance(raw.get("paths"), list)
        return
    assert isinstance(raw["paths"], list)
    assert len(result.config.routes) == sum(isinstance(entry, dict) for entry in raw["paths"])
    for compiled_route in result.config.routes:
        assert compiled_route.defect is None or "\n" not in compiled_route.defect
    for diagnostic in result.diagnostics:
        assert str(diagnostic)
    keys = [d.pointer for d in result.diagnostics]
    assert len(keys) == len(result.errors) + len(result.warnings)


@settings(max_examples=200, deadline=None)
@given(raw=JSONISH)
def test_compile_raises_only_config_error_on_any_value(raw: object) -> None:
    try:
        compile_config(raw, env={})
    except ConfigError as error:
        assert error.diagnostics
        assert not (isinstance(raw, dict) and isinstance(raw.get("paths"), list))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40) | JSONISH.map(repr))
def test_parse_raises_only_one_line_syntax_errors(text: str) -> None:
    try:
        parse_config_text(text, source="fuzz")
    except ConfigSyntaxError as error:
        assert "\n" not in str(error)
        assert str(error).startswith("fuzz: line ")


@settings(max_examples=200, deadline=None)
@given(raw=JSONISH)
def test_resolving_with_an_empty_env_only_blanks_placeholders(raw: object) -> None:
    resolved = resolve_placeholders(raw, {})

    def check(before: object, after: object) -> None:
        if isinstance(before, dict):
            assert isinstance(after, dict) and list(after) == list(before)
            for key in before:
                check(before[key], after[key])
        elif isinstance(before, list):
            assert isinstance(after, list) and len(after) == len(before)
            for item_before, item_after in zip(before, after, strict=True):
                check(item_before, item_after)
        elif isinstance(before, str) and before.startswith(("$env.", "$secrets.", "$secret.")):
            assert after == ""
        else:
            assert after == before

    if isinstance(raw, dict | list):
        check(raw, resolved)
    else:
        assert resolved == raw


_HOOK = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["service_binding", "http"]),
        "binding": st.sampled_from(["b", "missing"]) | SMALL_JSONISH,
        "function": st.sampled_from(["f"]) | SMALL_JSONISH,
    },
)
_INTEGRATION = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["http", "http_proxy", "service", "service_binding", "auth0_callback", "unknown"]
        )
    },
    optional={
        "server": st.sampled_from(["api", "missing"]) | SMALL_JSONISH,
        "binding": st.sampled_from(["svc", "b", "missing"]) | SMALL_JSONISH,
        "function": st.just("f"),
        "post_process": _HOOK | SMALL_JSONISH,
    },
)
_ROUTE = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "ANY", "FETCH"]) | SMALL_JSONISH,
        "path": st.sampled_from(["/a", "/a/{.+}", "/{.+}/b"]) | SMALL_JSONISH,
    },
    optional={
        "integration": _INTEGRATION | SMALL_JSONISH,
        "auth": SMALL_JSONISH,
        "pre_process": _HOOK | SMALL_JSONISH,
        "response": SMALL_JSONISH,
        "mapping": st.fixed_dictionaries(
            {}, optional={"headers": SMALL_JSONISH, "query": SMALL_JSONISH}
        ),
    },
)


@settings(max_examples=150, deadline=None)
@given(
    routes=st.lists(_ROUTE, max_size=4),
    authorizer=st.sampled_from([None, JWT, AUTH0, {"type": "ldap"}]),
)
def test_defects_always_match_error_diagnostics(
    routes: list[dict[str, object]], authorizer: object
) -> None:
    config: dict[str, object] = {
        "servers": [{"alias": "api", "url": "https://a.example"}],
        "services": [{"alias": "svc", "entrypoint": "./svc"}],
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": routes,
    }
    if authorizer is not None:
        config["authorizer"] = authorizer
    result = compile_config(config, env={})
    errors = set(texts(result.errors))
    for compiled_route in result.config.routes:
        if compiled_route.auth and authorizer in (None, {"type": "ldap"}):
            assert compiled_route.defect is not None
        if compiled_route.defect is not None:
            assert set(compiled_route.defect.split("; ")) <= errors
        integration = compiled_route.integration
        if integration is not None and (integration.type, integration.server) == (
            "http_proxy",
            "missing",
        ):
            assert compiled_route.defect is not None
