"""Issue 9 items 6 and 7 (the core's part): configs that cannot silently open a route, and
config messages that keep secrets out.

Each test here failed on the code before the fix it pins (see the commit message).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sapg_core
from sapg_core import (
    ActionFailed,
    CompileResult,
    FailureReason,
    Log,
    Severity,
    compile_config,
    mask_url,
    parse_config_text,
)
from sapg_core._config import validate
from tests.core.helpers import NOW, make_gateway, receive

COMPAT = Path(__file__).resolve().parents[1] / "data" / "compat"

JWT = {
    "type": "jwt",
    "secret": "s",
    "algorithm": "HS256",
    "issuer": "https://issuer.example",
    "audience": "api",
}


def texts(result: CompileResult, severity: Severity) -> list[str]:
    return [str(d) for d in result.diagnostics if d.severity is severity]


def compiled(
    config: object, env: dict[str, str] | None = None, *, strict: bool = False
) -> CompileResult:
    return compile_config(config, env=env or {}, strict=strict)


# -- unknown keys --------------------------------------------------------------------------


MISSPELT = {
    "authorizer": JWT,
    "paths": [{"method": "GET", "path": "/private", "auht": True, "response": {"ok": True}}],
}


def test_a_misspelt_route_key_is_named_with_a_suggestion() -> None:
    result = compiled(MISSPELT)
    assert texts(result, Severity.WARNING) == [
        "/paths/0/auht: unknown key 'auht' (did you mean 'auth'?)"
    ]
    assert result.errors == ()


def test_under_strict_a_misspelt_route_key_is_an_error() -> None:
    result = compiled(MISSPELT, strict=True)
    assert texts(result, Severity.ERROR) == [
        "/paths/0/auht: unknown key 'auht' (did you mean 'auth'?)"
    ]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            {"integration": {"type": "http_proxy", "sever": "a", "server": "a"}},
            "/paths/0/integration/sever: unknown key 'sever' (did you mean 'server'?)",
        ),
        (
            {"integration": {"type": "http_proxy", "server": "a"}, "Mapping": {}},
            "/paths/0/Mapping: unknown key 'Mapping' (did you mean 'mapping'?)",
        ),
        (
            {"pre_process": {"binding": "b", "function": "f", "fuction": "g"}},
            "/paths/0/pre_process/fuction: unknown key 'fuction' (did you mean 'function'?)",
        ),
        (
            {
                "integration": {
                    "type": "auth0_callback",
                    "post_process": {
                        "type": "service_binding",
                        "binding": "b",
                        "function": "f",
                        "bind": "x",
                    },
                }
            },
            "/paths/0/integration/post_process/bind: unknown key 'bind' (did you mean 'binding'?)",
        ),
        ({"zzz": 1}, "/paths/0/zzz: unknown key 'zzz'"),
    ],
)
def test_unknown_keys_where_the_schema_lets_them_through(
    route: dict[str, object], expected: str
) -> None:
    config = {
        "servers": [{"alias": "a", "url": "https://a.example"}],
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "paths": [{"method": "GET", "path": "/p", **route}],
    }
    assert expected in texts(compiled(config), Severity.WARNING)
    assert expected in texts(compiled(config, strict=True), Severity.ERROR)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"server": []}, "/server: unknown key 'server' (did you mean 'servers'?)"),
        (
            {"authorizer": {**JWT, "isuer": "x"}},
            "/authorizer/isuer: unknown key 'isuer' (did you mean 'issuer'?)",
        ),
        (
            {"servers": [{"alias": "a", "url": "https://a.example", "read_timeot": 1}]},
            "/servers/0/read_timeot: unknown key 'read_timeot' (did you mean 'read_timeout'?)",
        ),
        (
            {"paths": [{"method": "GET", "path": "/", "mapping": {"header": {}}}]},
            "/paths/0/mapping/header: unknown key 'header' (did you mean 'headers'?)",
        ),
    ],
)
def test_unknown_keys_the_schema_forbids_stay_errors_with_their_own_pointer(
    config: dict[str, object], expected: str
) -> None:
    result = compiled({"paths": [], **config})
    assert expected in texts(result, Severity.ERROR)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in COMPAT.glob("*.json") if "schema" not in p.name)
)
def test_the_originals_example_configs_have_no_unknown_keys(name: str) -> None:
    raw = parse_config_text((COMPAT / name).read_bytes(), source=name)
    env = {key: "https://x.example/" for key in ("AUTH0_DOMAIN",)}
    for strict in (False, True):
        result = compile_config(raw, env=env, strict=strict)
        assert not [d for d in result.diagnostics if "unknown key" in d.message], name
        assert not [d for d in result.diagnostics if "repeated" in d.message], name


def test_documented_extension_keys_are_known() -> None:
    config = {
        "servers": [
            {"alias": "a", "url": "https://a.example", "connect_timeout": 1, "read_timeout": 2}
        ],
        "paths": [
            {
                "method": "GET",
                "path": "/p",
                "auth": False,
                "integration": {"type": "http_proxy", "server": "a"},
                "mapping": {"headers": {}, "query": {}},
                "variables": {},
                "response": None,
            }
        ],
    }
    assert compiled(config, strict=True).diagnostics == ()


# -- authorizer fields that resolve to empty -------------------------------------------------


ENV_AUTHORIZER = {**JWT, "issuer": "$env.JWT_ISSUER", "audience": "$env.JWT_AUDIENCE"}


def test_an_authorizer_field_whose_variable_is_unset_is_named() -> None:
    config = {"authorizer": ENV_AUTHORIZER, "paths": []}
    warnings = texts(compiled(config, {"JWT_AUDIENCE": "api"}), Severity.WARNING)
    assert warnings == [
        "/authorizer/issuer: 'issuer' is empty: $env.JWT_ISSUER resolved to \"\" (the variable "
        "'JWT_ISSUER' is unset or empty), which turns off or breaks this check"
    ]
    errors = texts(compiled(config, {"JWT_ISSUER": ""}, strict=True), Severity.ERROR)
    assert [e.split(":")[0] for e in errors] == ["/authorizer/audience", "/authorizer/issuer"]
    assert "JWT_AUDIENCE" in errors[0] and "JWT_ISSUER" in errors[1]


def test_a_set_variable_gives_no_warning() -> None:
    config = {"authorizer": ENV_AUTHORIZER, "paths": []}
    env = {"JWT_ISSUER": "https://issuer.example", "JWT_AUDIENCE": "api"}
    assert compiled(config, env, strict=True).diagnostics == ()


def test_an_empty_secret_from_secrets_is_named_too() -> None:
    config = {
        "authorizer": {
            "type": "supabase",
            "jwt_secret": "$secrets.SUPABASE_JWT_SECRET",
            "issuer": "i",
            "audience": "a",
        },
        "paths": [],
    }
    warnings = texts(compiled(config), Severity.WARNING)
    assert any(
        w.startswith("/authorizer/jwt_secret:") and "SUPABASE_JWT_SECRET" in w for w in warnings
    )


# -- duplicates ---------------------------------------------------------------------------------


def test_duplicate_routes_are_warnings() -> None:
    config = {
        "paths": [
            {"method": "GET", "path": "/items/{id}", "response": 1},
            {"method": "POST", "path": "/items/{id}", "response": 2},
            {"method": "GET", "path": "/items/{.+}", "response": 3},
            {"method": "GET", "path": "/items/{name}", "response": 4},
            {"method": "ANY", "path": "/items/{id}", "response": 5},
        ]
    }
    result = compiled(config)
    assert texts(result, Severity.WARNING) == [
        "/paths/3: same method and path as /paths/0, which comes first: this route never answers"
    ]
    gateway = make_gateway({"paths": [config["paths"][0], config["paths"][3]]})
    _, actions = receive(gateway, "GET", "/items/7")
    assert actions[-1].body == b"1"  # type: ignore[attr-defined]  # the first always wins


def test_repeated_json_keys_are_warnings() -> None:
    text = (
        '{"paths": [{"method": "GET", "path": "/a", "auth": true, "response": 1, "auth": false}],'
        ' "variables": {"k": 1, "k": 2, "k": 3}}'
    )
    raw = parse_config_text(text, source="t.json")
    assert isinstance(raw, dict)
    assert raw["variables"] == {"k": 3}  # the last value wins, as in JSON.parse
    result = compile_config(raw, env={})
    assert texts(result, Severity.WARNING) == [
        "/paths/0/auth: this key is repeated in its object: only the last value counts",
        "/variables/k: this key is repeated in its object: only the last value counts",
    ]
    assert not result.config.routes[0].auth


def test_a_parsed_config_is_a_plain_mapping_to_every_reader() -> None:
    raw = parse_config_text(b'{"paths": []}', source="t.json")
    assert raw == {"paths": []}
    assert json.dumps(raw) == '{"paths": []}'


# -- item 7: secrets stay out of messages ----------------------------------------------------


@pytest.mark.parametrize(
    ("authorizer", "pointer"),
    [
        ({**JWT, "secret": 987654321123}, "/authorizer/secret"),
        (
            {
                "type": "auth0",
                "domain": "d",
                "client_id": "c",
                "client_secret": 987654321123,
                "redirect_uri": "https://r.example",
                "scope": "openid",
                "jwks_uri": "https://j.example",
            },
            "/authorizer/client_secret",
        ),
        (
            {"type": "supabase", "jwt_secret": 987654321123, "issuer": "i", "audience": "a"},
            "/authorizer/jwt_secret",
        ),
    ],
)
def test_schema_errors_never_echo_a_secret(authorizer: dict[str, object], pointer: str) -> None:
    found = [str(d) for d in validate({"paths": [], "authorizer": authorizer})]
    assert found == [f"{pointer}: the value (not shown: secret) is not of type 'string'"]


def test_a_value_from_secrets_is_never_echoed() -> None:
    config = {
        "servers": [{"alias": "a", "url": "$secrets.UPSTREAM"}],
        "variables": {"api_key": "$secret.KEY"},
        "paths": [],
    }
    result = compiled(config, {"UPSTREAM": "not a uri hunter2", "KEY": "k"})
    [error] = result.errors
    assert str(error) == "/servers/0/url: the value (not shown: secret) fails format 'uri'"
    assert "hunter2" not in str(result.diagnostics)


def test_credentials_in_urls_are_masked_in_messages() -> None:
    config = {"servers": [{"alias": "a", "url": "https://user:hunter2@up.example/ x"}], "paths": []}
    [error] = compiled(config).errors
    assert "hunter2" not in str(error)
    assert "https://user:***@up.example/ x" in str(error)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:pw@host:8443/base", "https://user:***@host:8443/base"),
        ("https://token@host/x", "https://***@host/x"),
        ("https://:pw@host", "https://***@host"),
        ("https://host/p?email=a@b.example", "https://host/p?email=a@b.example"),
        ("http://host:8080/a", "http://host:8080/a"),
        ("https://u:p/w@host/x", "https://u:***@host/x"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert sapg_core.mask_url is mask_url


def test_a_jwks_uri_with_credentials_is_masked_in_the_log() -> None:
    config = {
        "authorizer": {
            "type": "auth0",
            "domain": "tenant.example",
            "client_id": "c",
            "client_secret": "s",
            "redirect_uri": "https://r.example",
            "scope": "openid",
            "jwks_uri": "https://user:hunter2@tenant.example/jwks.json",
        },
        "paths": [{"method": "GET", "path": "/p", "auth": True, "response": 1}],
    }
    gateway = make_gateway(config)
    token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln"
    request_id, _ = receive(gateway, "GET", "/p", [("authorization", f"Bearer {token}")])
    failed = ActionFailed(request_id=request_id, reason=FailureReason.CONNECT, detail="x", now=NOW)
    actions = gateway.handle(failed)
    [log] = [a for a in actions if isinstance(a, Log)]
    assert "hunter2" not in log.message
    assert "user:***@tenant.example" in log.message
