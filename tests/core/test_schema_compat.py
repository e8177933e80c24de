"""Our schema against the original's ``api-config.schema.json`` and example configs.

The rule (DESIGN.md): the schema is extended with opt-in fields, never loosened. These tests
load the original schema and examples from ``../shared/compat`` at test time.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from jsonschema import Draft202012Validator

from sapg_core._config import (
    FORMAT_CHECKER,
    compile_config,
    normalise,
    parse_config_text,
    resolve_placeholders,
    validate,
)
from sapg_core._schema import SCHEMA

#: The original's schema and example configs, copied from ``shared/compat`` so that a
#: clone without ``shared/`` beside it runs every test (``test_compat_copy_is_current``
#: checks the copy whenever ``shared/`` is there).
COMPAT = Path(__file__).resolve().parents[1] / "data" / "compat"
SHARED_COMPAT = Path(__file__).resolve().parents[3] / "shared" / "compat"
ORIGINAL_SCHEMA = COMPAT / "api-config.schema.json"


@pytest.mark.skipif(not SHARED_COMPAT.is_dir(), reason="shared/ is not beside this checkout")
def test_compat_copy_is_current() -> None:
    shared = {p.name: p.read_bytes() for p in SHARED_COMPAT.glob("*.json")}
    copied = {p.name: p.read_bytes() for p in COMPAT.glob("*.json")}
    assert shared, "shared/compat holds no JSON files"
    assert copied == shared


#: Plausible values for every placeholder the examples use.
ENV = {
    "AUTH0_DOMAIN": "tenant.us.auth0.com",
    "AUTH0_CLIENT_ID": "client-id",
    "AUTH0_CLIENT_SECRET": "client-secret",
    "AUTH0_JWKS": '{"keys":[]}',
    "VAR_TEST_RESPONSE_TEXT": "This response from environment",
    "VAR_TEST_RESPONSE_TEXT_SECRET": "secret response",
    "SUPABASE_JWT_SECRET": "supabase-jwt-secret",
}

#: The properties our schema adds, by where they sit: removing them gives the original back.
EXTENSIONS = {
    ("properties", "servers", "items", "properties"): (
        "connect_timeout",
        "read_timeout",
        "path_escapes",
    ),
    ("properties", "authorizer", "oneOf", 1, "properties"): ("audience", "require_state"),
    ("properties", "authorizer", "oneOf", 2, "properties"): ("jwks_uri",),
}


def example_files() -> list[Path]:
    if not COMPAT.is_dir():
        return []
    return sorted(p for p in COMPAT.glob("*.json") if p != ORIGINAL_SCHEMA)


@functools.cache
def original_validator() -> Draft202012Validator:
    schema = json.loads(ORIGINAL_SCHEMA.read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


OURS = Draft202012Validator(SCHEMA, format_checker=FORMAT_CHECKER)


def error_paths(validator: Draft202012Validator, instance: object) -> list[list[object]]:
    return sorted((list(e.absolute_path) for e in validator.iter_errors(instance)), key=repr)


def resolved(path: Path) -> object:
    """An example as validation sees it: normalised, placeholders replaced."""
    raw = parse_config_text(path.read_bytes(), source=path.name)
    return resolve_placeholders(normalise(raw), ENV)


# --------------------------------------------------------------------------- the schema itself


def test_our_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_removing_the_extensions_gives_the_original_schema() -> None:
    ours = copy.deepcopy(SCHEMA)
    for where, names in EXTENSIONS.items():
        node: object = ours
        for step in where:
            assert isinstance(node, dict | list)
            node = node[step]  # type: ignore[index]
        assert isinstance(node, dict)
        for name in names:
            del node[name]
    original = json.loads(ORIGINAL_SCHEMA.read_text(encoding="utf-8"))
    assert ours == original


def test_extensions_are_new_properties_not_changed_ones() -> None:
    original = json.loads(ORIGINAL_SCHEMA.read_text(encoding="utf-8"))
    for where, names in EXTENSIONS.items():
        node = original
        for step in where:
            node = node[step]
        assert not set(names) & set(node), f"{names} already exist in the original at {where}"


# --------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_compiles_without_errors(path: Path) -> None:
    raw = parse_config_text(path.read_bytes(), source=path.name)
    result = compile_config(raw, env=ENV)
    assert [str(d) for d in result.errors] == []
    # None of the shipped examples trips a warning today; a change here is worth a look.
    assert [str(d) for d in result.warnings] == []
    assert all(route.defect is None for route in result.config.routes)


def test_examples_are_there() -> None:
    names = {p.name for p in example_files()}
    assert {"api-config.json", "example-minimal.json"} <= names


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_both_schemas_accept_the_examples(path: Path) -> None:
    instance = resolved(path)
    assert error_paths(original_validator(), instance) == []
    assert error_paths(OURS, instance) == []


def test_bundled_sample_without_env_still_compiles() -> None:
    sample = COMPAT / "api-config.json"
    result = compile_config(parse_config_text(sample.read_bytes(), source="local"), env={})
    assert result.errors == ()  # jwks "" is falsy; jwks_uri is used
    health = next(r for r in result.config.routes if r.path == "/api/v1/env")
    assert health.static_body == b'{"status":""}'
    string_route = next(r for r in result.config.routes if r.path == "/api/v1/health/string")
    assert string_route.static_body == b'"string ok"'


# --------------------------------------------------------------------------- invalid configs

_JWT = {"type": "jwt", "secret": "s", "algorithm": "HS256", "issuer": "i", "audience": "a"}
_AUTH0 = {
    "type": "auth0",
    "domain": "d.auth0.com",
    "client_id": "c",
    "client_secret": "s",
    "redirect_uri": "https://a.example/cb",
    "jwks_uri": "https://d.auth0.com/.well-known/jwks.json",
    "scope": "openid",
}
_ROUTE = {"method": "GET", "path": "/x"}

INVALID = {
    "paths missing": {},
    "paths not an array": {"paths": {}},
    "unknown top-level key": {"paths": [], "routes": []},
    "method INVALID (case 80)": {"paths": [{"method": "INVALID", "path": "/x"}]},
    "method HEAD": {"paths": [{"method": "HEAD", "path": "/x"}]},
    "method missing": {"paths": [{"path": "/x"}]},
    "path without slash": {"paths": [{"method": "GET", "path": "x"}]},
    "route not an object": {"paths": ["GET /x"]},
    "unknown integration type": {"paths": [{**_ROUTE, "integration": {"type": "grpc"}}]},
    "http_proxy without server": {"paths": [{**_ROUTE, "integration": {"type": "http_proxy"}}]},
    "http without server": {"paths": [{**_ROUTE, "integration": {"type": "http"}}]},
    "service without binding": {"paths": [{**_ROUTE, "integration": {"type": "service"}}]},
    "service_binding without function": {
        "paths": [{**_ROUTE, "integration": {"type": "service_binding", "binding": "b"}}]
    },
    "auth a string": {"paths": [{**_ROUTE, "auth": "yes"}]},
    "mapping extra key": {"paths": [{**_ROUTE, "mapping": {"body": {}}}]},
    "response an array": {"paths": [{**_ROUTE, "response": [1]}]},
    "pre_process a string": {"paths": [{**_ROUTE, "pre_process": "guard"}]},
    "server url not a uri": {"paths": [], "servers": [{"alias": "a", "url": "backend"}]},
    "server url empty": {"paths": [], "servers": [{"alias": "a", "url": ""}]},
    "server alias empty": {"paths": [], "servers": [{"alias": "", "url": "https://a.example"}]},
    "server unknown key": {
        "paths": [],
        "servers": [{"alias": "a", "url": "https://a.example", "timeout": 5}],
    },
    "service entrypoint empty": {"paths": [], "services": [{"alias": "a", "entrypoint": ""}]},
    "binding missing binding": {"paths": [], "serviceBindings": [{"alias": "a"}]},
    "legacy binding extra key": {
        "paths": [],
        "servicesBindings": [{"alias": "a", "binding": "B", "x": 1}],
    },
    "cors incomplete": {"paths": [], "cors": {"allow_origins": ["*"]}},
    "cors bad method": {
        "paths": [],
        "cors": {
            "allow_origins": ["*"],
            "allow_methods": ["TRACE"],
            "allow_headers": [],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": 0,
        },
    },
    "cors negative max_age": {
        "paths": [],
        "cors": {
            "allow_origins": ["*"],
            "allow_methods": ["GET"],
            "allow_headers": [],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": -1,
        },
    },
    "cors duplicate origins": {
        "paths": [],
        "cors": {
            "allow_origins": ["*", "*"],
            "allow_methods": ["GET"],
            "allow_headers": [],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": 1,
        },
    },
    "cors origin not a uri": {
        "paths": [],
        "cors": {
            "allow_origins": ["app.example.com"],
            "allow_methods": ["GET"],
            "allow_headers": [],
            "expose_headers": [],
            "allow_credentials": False,
            "max_age": 1,
        },
    },
    "jwt HS512": {"paths": [], "authorizer": {**_JWT, "algorithm": "HS512"}},
    "jwt without issuer": {
        "paths": [],
        "authorizer": {k: v for k, v in _JWT.items() if k != "issuer"},
    },
    "jwt with require_state": {
        "paths": [],
        "authorizer": {**_JWT, "require_state": True},
    },
    "auth0 without jwks sources": {
        "paths": [],
        "authorizer": {k: v for k, v in _AUTH0.items() if k != "jwks_uri"},
    },
    "auth0 redirect_uri not a uri": {
        "paths": [],
        "authorizer": {**_AUTH0, "redirect_uri": "callback"},
    },
    "auth0 redirect_uri from a missing env var": {
        "paths": [],
        "authorizer": {**_AUTH0, "redirect_uri": ""},
    },
    "auth0 unknown key": {"paths": [], "authorizer": {**_AUTH0, "nonce": True}},
    "supabase unknown key": {
        "paths": [],
        "authorizer": {"type": "supabase", "jwt_secret": "", "issuer": "", "audience": "", "x": 1},
    },
    "unknown authorizer type": {"paths": [], "authorizer": {"type": "ldap"}},
    "authorizer null": {"paths": [], "authorizer": None},
    "variables an array": {"paths": [], "variables": []},
}


@pytest.mark.parametrize("config", INVALID.values(), ids=INVALID.keys())
def test_both_schemas_reject_invalid_configs_at_the_same_places(config: object) -> None:
    original = error_paths(original_validator(), config)
    ours = error_paths(OURS, config)
    assert original, "the original schema should reject this"
    assert ours == original
    assert validate(config)


# --------------------------------------------------------------------------- the new fields

_SUPABASE = {"type": "supabase", "jwt_secret": "s", "issuer": "i", "audience": "a"}


def with_server(**fields: object) -> dict[str, object]:
    return {"paths": [], "servers": [{"alias": "a", "url": "https://a.example", **fields}]}


NEW_FIELDS_VALID = {
    "connect_timeout": with_server(connect_timeout=2),
    "read_timeout float": with_server(read_timeout=0.5),
    "both timeouts": with_server(connect_timeout=1e-3, read_timeout=600),
    "path_escapes forward": with_server(path_escapes="forward"),
    "path_escapes reject": with_server(path_escapes="reject"),
    "auth0 audience": {"paths": [], "authorizer": {**_AUTH0, "audience": "https://api"}},
    "auth0 require_state": {"paths": [], "authorizer": {**_AUTH0, "require_state": False}},
    "supabase jwks_uri": {
        "paths": [],
        "authorizer": {**_SUPABASE, "jwks_uri": "https://p.supabase.co/auth/v1/jwks"},
    },
}

NEW_FIELDS_INVALID = {
    "negative connect_timeout": (with_server(connect_timeout=-1), "/servers/0/connect_timeout"),
    "zero read_timeout": (with_server(read_timeout=0), "/servers/0/read_timeout"),
    "string timeout": (with_server(read_timeout="30"), "/servers/0/read_timeout"),
    "boolean timeout": (with_server(connect_timeout=True), "/servers/0/connect_timeout"),
    "path_escapes unknown": (with_server(path_escapes="allow"), "/servers/0/path_escapes"),
    "path_escapes a boolean": (with_server(path_escapes=True), "/servers/0/path_escapes"),
    "require_state a string": (
        {"paths": [], "authorizer": {**_AUTH0, "require_state": "yes"}},
        "/authorizer/require_state",
    ),
    "require_state a number": (
        {"paths": [], "authorizer": {**_AUTH0, "require_state": 1}},
        "/authorizer/require_state",
    ),
    "auth0 audience a number": (
        {"paths": [], "authorizer": {**_AUTH0, "audience": 5}},
        "/authorizer/audience",
    ),
    "supabase jwks_uri not a uri": (
        {"paths": [], "authorizer": {**_SUPABASE, "jwks_uri": "jwks.json"}},
        "/authorizer/jwks_uri",
    ),
    "supabase jwks_uri empty": (
        {"paths": [], "authorizer": {**_SUPABASE, "jwks_uri": ""}},
        "/authorizer/jwks_uri",
    ),
}


@pytest.mark.parametrize("config", NEW_FIELDS_VALID.values(), ids=NEW_FIELDS_VALID.keys())
def test_new_fields_are_accepted_by_us_only(config: object) -> None:
    assert error_paths(OURS, config) == []
    assert validate(config) == []
    assert error_paths(original_validator(), config) != []


@pytest.mark.parametrize(
    ("config", "pointer"), NEW_FIELDS_INVALID.values(), ids=NEW_FIELDS_INVALID.keys()
)
def test_bad_values_of_new_fields_are_rejected(config: object, pointer: str) -> None:
    assert [d.pointer for d in validate(config)] == [pointer]


# --------------------------------------------------------------------------- never looser

_VALUES: st.SearchStrategy[object] = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        -1,
        1,
        2.5,
        "",
        "x",
        "/x",
        "*",
        "GET",
        "ANY",
        "FETCH",
        "HS256",
        "https://a.example",
        "http_proxy",
        "service_binding",
        "jwt",
        "auth0",
        "supabase",
        [],
        {},
    ]
)
_FIELDS = st.sampled_from(
    [
        "method",
        "path",
        "integration",
        "auth",
        "response",
        "mapping",
        "type",
        "server",
        "binding",
        "function",
        "alias",
        "url",
        "allow_origins",
        "max_age",
        "secret",
        "algorithm",
        "issuer",
        "audience",
        "jwt_secret",
        "domain",
        "client_id",
        "client_secret",
        "redirect_uri",
        "scope",
        "jwks",
        "jwks_uri",
        "connect_timeout",
        "read_timeout",
        "require_state",
    ]
)
_OBJECTS = st.dictionaries(_FIELDS, _VALUES, max_size=7)
_RANDOM_CONFIGS = st.fixed_dictionaries(
    {"paths": st.lists(_OBJECTS, max_size=3)},
    optional={
        "servers": st.lists(_OBJECTS, max_size=2),
        "authorizer": _OBJECTS,
        "cors": _OBJECTS,
        "serviceBindings": st.lists(_OBJECTS, max_size=2),
    },
)
_CORS = {
    "allow_origins": ["https://app.example.com", "*"],
    "allow_methods": ["GET", "POST"],
    "allow_headers": ["Authorization"],
    "expose_headers": [],
    "allow_credentials": False,
    "max_age": 60,
}
_BASES: list[dict[str, object]] = [
    {
        "servers": [{"alias": "a", "url": "https://a.example"}],
        "serviceBindings": [{"alias": "b", "binding": "B"}],
        "cors": _CORS,
        "authorizer": authorizer,
        "paths": [
            {"method": "GET", "path": "/p", "integration": {"type": "http_proxy", "server": "a"}},
            {"method": "ANY", "path": "/{.+}", "auth": True, "response": {"ok": True}},
            {
                "method": "POST",
                "path": "/s",
                "integration": {"type": "service_binding", "binding": "b", "function": "f"},
            },
        ],
    }
    for authorizer in (_JWT, _AUTH0, _SUPABASE)
]
_DELETE = object()


@st.composite
def _near_valid_configs(draw: st.DrawFn) -> dict[str, object]:
    """A valid config with a few fields set to random values or deleted."""
    config: dict[str, object] = copy.deepcopy(draw(st.sampled_from(_BASES)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        nodes: list[dict[str, object]] = []
        pending: list[object] = [config]
        while pending:
            node = pending.pop()
            if isinstance(node, dict):
                nodes.append(node)
                pending.extend(node.values())
            elif isinstance(node, list):
                pending.extend(node)
        target = draw(st.sampled_from(nodes))
        key = draw(_FIELDS | st.sampled_from(sorted(target)) if target else _FIELDS)
        value = draw(st.just(_DELETE) | _VALUES)
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return config


_CONFIGS = _RANDOM_CONFIGS | _near_valid_configs()


def uses_an_extension(config: dict[str, object]) -> bool:
    servers = config.get("servers")
    if isinstance(servers, list) and any(
        {"connect_timeout", "read_timeout"} & set(server) for server in servers
    ):
        return True
    authorizer = config.get("authorizer")
    return isinstance(authorizer, dict) and bool(
        {"audience", "require_state", "jwks_uri"} & set(authorizer)
    )


@settings(max_examples=300, deadline=None)
@given(config=_CONFIGS)
def test_our_schema_is_never_looser(config: dict[str, object]) -> None:
    original = error_paths(original_validator(), config)
    ours = error_paths(OURS, config)
    if not original:
        assert not ours  # whatever the original accepts, we accept
    if not uses_an_extension(config):
        assert ours == original  # and without the new fields, exactly the same verdicts
