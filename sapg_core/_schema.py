"""The configuration's JSON Schema (Draft 2020-12), as a Python literal.

This is the original gateway's ``api-config.schema.json`` (kept in
``compat/``), extended with sapg's opt-in fields and never loosened for the
fields the original knows. The extensions, each marked in place:

- ``servers[].connect_timeout`` / ``servers[].read_timeout``: numbers > 0 (seconds);
- ``servers[].path_escapes``: ``"reject"`` (the default) or ``"forward"``;
- the ``auth0`` authorizer's ``audience`` (string) and ``require_state`` (boolean);
- the ``supabase`` authorizer's ``jwks_uri`` (format ``uri``).

``tests/core/test_schema_compat.py`` checks that removing exactly these
properties gives back the original schema. :data:`SCHEMA` is shared by the
module-level validator in :mod:`sapg_core._config`: never mutate it.

The schema uses ``format: "uri"``; :func:`is_uri` is the check behind it (the
original validates with ajv-formats, and jsonschema checks nothing for "uri"
unless rfc3987 is installed).
"""

from __future__ import annotations

import re
from typing import Final

from ._json import JSONValue

__all__ = ["SCHEMA", "is_uri"]

# RFC 3986 §3 "URI = scheme ":" hier-part [ "?" query ] [ "#" fragment ]", ASCII only.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT_ENCODED = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT_ENCODED})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT_ENCODED})*"
_IP_LITERAL = rf"\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT_ENCODED})*"
_AUTHORITY = rf"(?:{_USERINFO}@)?(?:{_IP_LITERAL}|{_REG_NAME})(?::[0-9]*)?"
_SEGMENTS = rf"{_PCHAR}+(?:/{_PCHAR}*)*"
_HIER_PART = rf"(?://{_AUTHORITY}(?:/{_PCHAR}*)*|/(?:{_SEGMENTS})?|{_SEGMENTS}|)"
_QUERY_OR_FRAGMENT = rf"(?:{_PCHAR}|[/?])*"
URI_PATTERN: Final = re.compile(
    rf"{_SCHEME}:{_HIER_PART}(?:\?{_QUERY_OR_FRAGMENT})?(?:#{_QUERY_OR_FRAGMENT})?", re.ASCII
)


def is_uri(text: str) -> bool:
    """Whether ``text`` is an absolute URI (RFC 3986): a scheme, ``:``, then only
    legal URI characters and ``%XX`` escapes. ``""`` and relative references are not."""
    return URI_PATTERN.fullmatch(text) is not None


SCHEMA: Final[dict[str, JSONValue]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://serverlessapigateway.com/api-config.schema.json",
    "title": "API Gateway Config",
    "description": "Configuration for the Serverless API Gateway",
    "type": "object",
    "properties": {
        "$schema": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "servers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "alias": {"type": "string", "minLength": 1},
                    "url": {"type": "string", "format": "uri"},
                    # sapg extension: upstream timeouts in seconds (opt-in).
                    "connect_timeout": {"type": "number", "exclusiveMinimum": 0},
                    "read_timeout": {"type": "number", "exclusiveMinimum": 0},
                    # sapg extension: encoded slashes / dot-segments in proxied paths.
                    "path_escapes": {"enum": ["reject", "forward"]},
                },
                "required": ["alias", "url"],
                "additionalProperties": False,
            },
        },
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "alias": {"type": "string", "minLength": 1},
                    "entrypoint": {"type": "string", "minLength": 1},
                },
                "required": ["alias", "entrypoint"],
                "additionalProperties": False,
            },
        },
        "serviceBindings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "alias": {"type": "string", "minLength": 1},
                    "binding": {"type": "string", "minLength": 1},
                },
                "required": ["alias", "binding"],
                "additionalProperties": False,
            },
        },
        "servicesBindings": {
            "type": "array",
            "description": "Deprecated alias for serviceBindings.",
            "items": {
                "type": "object",
                "properties": {
                    "alias": {"type": "string", "minLength": 1},
                    "binding": {"type": "string", "minLength": 1},
                },
                "required": ["alias", "binding"],
                "additionalProperties": False,
            },
        },
        "cors": {
            "type": "object",
            "properties": {
                "allow_origins": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {
                        "anyOf": [{"const": "*"}, {"type": "string", "format": "uri"}],
                    },
                },
                "allow_methods": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {
                        "type": "string",
                        "enum": [
                            "GET",
                            "POST",
                            "PUT",
                            "DELETE",
                            "OPTIONS",
                            "PATCH",
                            "*",
                        ],
                    },
                },
                "allow_headers": {"type": "array", "items": {"type": "string"}},
                "expose_headers": {"type": "array", "items": {"type": "string"}},
                "allow_credentials": {"type": "boolean"},
                "max_age": {"type": "integer", "minimum": 0},
            },
            "required": [
                "allow_origins",
                "allow_methods",
                "allow_headers",
                "expose_headers",
                "allow_credentials",
                "max_age",
            ],
            "additionalProperties": False,
        },
        "authorizer": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "jwt"},
                        "secret": {"type": "string"},
                        "algorithm": {"const": "HS256"},
                        "audience": {"type": "string"},
                        "issuer": {"type": "string"},
                    },
                    "required": ["type", "secret", "algorithm", "audience", "issuer"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "auth0"},
                        "domain": {"type": "string"},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"},
                        "redirect_uri": {"type": "string", "format": "uri"},
                        "callback_uri": {"type": "string", "format": "uri"},
                        "jwks": {"type": "string"},
                        "jwks_uri": {"type": "string", "format": "uri"},
                        "scope": {"type": "string"},
                        # sapg extensions (opt-in): access-token audience, OAuth state.
                        "audience": {"type": "string"},
                        "require_state": {"type": "boolean"},
                    },
                    "required": [
                        "type",
                        "domain",
                        "client_id",
                        "client_secret",
                        "redirect_uri",
                        "scope",
                    ],
                    "anyOf": [{"required": ["jwks"]}, {"required": ["jwks_uri"]}],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "supabase"},
                        "jwt_secret": {"type": "string"},
                        "issuer": {"type": "string"},
                        "audience": {"type": "string"},
                        # sapg extension (opt-in): asymmetric keys from a JWKS.
                        "jwks_uri": {"type": "string", "format": "uri"},
                    },
                    "required": ["type", "jwt_secret", "issuer", "audience"],
                    "additionalProperties": False,
                },
            ],
        },
        "paths": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "method": {
                        "type": "string",
                        "enum": [
                            "GET",
                            "POST",
                            "PUT",
                            "DELETE",
                            "OPTIONS",
                            "PATCH",
                            "ANY",
                        ],
                    },
                    "path": {"type": "string", "pattern": "^/"},
                    "integration": {
                        "type": "object",
                        "properties": {
                            "type": {
                                "type": "string",
                                "enum": [
                                    "http",
                                    "http_proxy",
                                    "service",
                                    "service_binding",
                                    "auth0_callback",
                                    "auth0_userinfo",
                                    "auth0_callback_redirect",
                                    "auth0_refresh",
                                    "supabase_passwordless_auth",
                                    "supabase_passwordless_verify",
                                    "supabase_passwordless_auth_alt",
                                ],
                            },
                            "server": {"type": "string"},
                            "binding": {"type": "string"},
                            "function": {"type": "string"},
                        },
                        "required": ["type"],
                        "allOf": [
                            {
                                "if": {
                                    "properties": {"type": {"enum": ["http", "http_proxy"]}},
                                },
                                "then": {"required": ["server"]},
                            },
                            {
                                "if": {"properties": {"type": {"const": "service"}}},
                                "then": {"required": ["binding"]},
                            },
                            {
                                "if": {
                                    "properties": {"type": {"const": "service_binding"}},
                                },
                                "then": {"required": ["binding", "function"]},
                            },
                        ],
                        "additionalProperties": True,
                    },
                    "auth": {"type": ["boolean", "null"]},
                    "mapping": {
                        "type": "object",
                        "properties": {
                            "headers": {"type": "object"},
                            "query": {"type": "object"},
                        },
                        "additionalProperties": False,
                    },
                    "variables": {"type": "object"},
                    "response": {"type": ["object", "string", "number", "boolean", "null"]},
                    "pre_process": {"type": "object"},
                },
                "required": ["method", "path"],
                "additionalProperties": True,
            },
        },
        "variables": {"type": "object"},
    },
    "required": ["paths"],
    "additionalProperties": False,
}
