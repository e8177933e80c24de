"""The configuration compiler: JSON text in, a frozen :class:`GatewayConfig` out.

Theory of operation (reference/UPSTREAM.md §1):

1. :func:`parse_config_text` parses the JSON (``NaN``/``Infinity`` refused).
2. :func:`normalise` (§1.2): deep copy, ``http`` -> ``http_proxy``, the deprecated
   ``servicesBindings`` merged into ``serviceBindings``.
3. :func:`resolve_placeholders` (§1.6): whole string values starting with ``$env.``,
   ``$secrets.`` or ``$secret.`` are replaced from the env mapping (missing -> ``""``).
4. :func:`validate` (§1.7): JSON Schema Draft 2020-12 (:data:`sapg_core._schema.SCHEMA`);
   each error becomes a :class:`Diagnostic` located by a JSON pointer.
5. :func:`compile_config` builds the frozen model.

Compatibility mode: like the original, an invalid config is still served. Only a config
that cannot be used at all (not an object, ``paths`` not an array) raises
:class:`ConfigError`; anything else of the wrong shape is skipped or coerced the way the
original's JavaScript would read it, and reported. Where the original fails open (``auth``
without an authorizer, an alias that names nothing) the route gets a ``defect``: it answers
500 at run time and the diagnostic is an ERROR (DESIGN.md, "Fail closed").

Configs that could silently open a route are reported too (issue 9):

- An unknown key anywhere is named by its own pointer, with a "did you mean" suggestion.
  Where the original's schema forbids extra keys it is a schema ERROR, as before; where the
  schema allows them (routes, ``integration``, ``pre_process``, ``post_process``) it is a
  WARNING, and an ERROR under ``strict`` (a misspelt ``"auht": true`` serves the route
  without authentication).
- An authorizer field given as a placeholder that resolves to ``""`` (a variable unset or
  empty) turns a check off with no word: a WARNING naming the field and the variable, an
  ERROR under ``strict``.
- Two routes with the same method and path, and a key repeated in one JSON object of the
  text (:func:`parse_config_text` notes them on the :class:`ParsedConfig` it returns), are
  WARNINGs.

Messages never echo a value under a secret-bearing key (``secret``, ``password``,
``token``, ``*_key``...) or one that came from ``$secrets.``/``$secret.``, and credentials
in URLs are masked (:func:`sapg_core._errors.mask_credentials`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final, TypeVar, cast

import attrs
from jsonschema import Draft202012Validator, FormatChecker

from ._errors import mask_credentials
from ._json import JSONValue, dumps, js_string, loads
from ._model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    Auth0Authorizer,
    Authorizer,
    Cors,
    Diagnostic,
    GatewayConfig,
    Integration,
    JwtAuthorizer,
    MappingSpec,
    Route,
    Server,
    ServiceBinding,
    ServiceEntry,
    Severity,
    SupabaseAuthorizer,
    UnknownAuthorizer,
)
from ._schema import SCHEMA, is_uri

__all__ = [
    "CompileResult",
    "ConfigError",
    "ConfigSyntaxError",
    "ParsedConfig",
    "compile_config",
    "json_pointer",
    "normalise",
    "parse_config_text",
    "resolve_placeholders",
    "validate",
]

Path = tuple[str | int, ...]
JSONObject = dict[str, object]


class ConfigError(Exception):
    """The configuration cannot be used at all (not an object, no ``paths`` array, ...).

    Fields:
        diagnostics: everything found, the cause included.
    """

    def __init__(self, message: str, diagnostics: Iterable[Diagnostic] = ()) -> None:
        super().__init__(message)
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)


class ConfigSyntaxError(ConfigError):
    """The text is not JSON. ``str()`` is one line: ``<source>: line L column C: <message>``."""

    def __init__(self, *, source: str, line: int, column: int, detail: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.detail = detail
        where = f"line {line} column {column}: {detail}"
        one_line = f"{source}: {where}".replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(one_line, (_error((), where),))


@attrs.frozen(kw_only=True)
class CompileResult:
    """A compiled config plus everything worth telling the operator, sorted by pointer."""

    config: GatewayConfig
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)


# --------------------------------------------------------------------------- parsing


class ParsedConfig(dict[str, object]):
    """A config object as :func:`parse_config_text` parsed it: a plain ``dict`` to every
    reader, plus what only the text could tell (:attr:`findings`: keys repeated in one
    object). :func:`compile_config` adds the findings to its diagnostics."""

    findings: tuple[Diagnostic, ...] = ()


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _decode_noting_repeats(text: str) -> object:
    """``JSON.parse``, also noting every object whose text repeats a key.

    The last value wins and keeps the first key's place, as in ``JSON.parse``.
    """
    repeats: dict[int, list[str]] = {}

    def make_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
        made = dict(pairs)
        if len(made) != len(pairs):
            seen: set[str] = set()
            names: list[str] = []
            for name, _ in pairs:
                if name in seen and name not in names:
                    names.append(name)
                seen.add(name)
            repeats[id(made)] = names
        return made

    decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=make_object)
    value: object = decoder.decode(text)
    if not isinstance(value, dict):
        return value
    parsed = ParsedConfig(value)
    if repeats:
        parsed.findings = tuple(_repeated_keys(value, repeats))
    return parsed


def _repeated_keys(root: dict[str, object], repeats: Mapping[int, list[str]]) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    pending: list[tuple[Path, object]] = [((), root)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            for name in repeats.get(id(value), ()):
                found.append(
                    _warning(
                        (*path, name),
                        "this key is repeated in its object: only the last value counts",
                    )
                )
            pending.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend(((*path, index), item) for index, item in enumerate(value))
    return _sorted(found)


def parse_config_text(text: str | bytes, *, source: str) -> object:
    """Parse config JSON; bytes are UTF-8 (a BOM is allowed).

    Returns:
        The JSON value; an object comes back as a :class:`ParsedConfig` (a ``dict``) that
        notes the keys its text repeated.

    Raises:
        ConfigSyntaxError: naming ``source``, the line and the column.
    """
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line, column = _line_column_bytes(data, exc.start)
            raise ConfigSyntaxError(
                source=source, line=line, column=column, detail=f"invalid UTF-8 ({exc.reason})"
            ) from None
    try:
        return _decode_noting_repeats(text)
    except json.JSONDecodeError as exc:
        detail, line, column = exc.msg, exc.lineno, exc.colno
    except RecursionError:
        detail, line, column = "nesting too deep", 1, 1
    except ValueError as exc:  # NaN / Infinity (refused by _json.loads), huge integers
        line, column = _line_column(text, _find_js_constant(text))
        detail = str(exc).splitlines()[0] if str(exc) else "invalid JSON"
    raise ConfigSyntaxError(source=source, line=line, column=column, detail=detail)


def _line_column(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def _line_column_bytes(data: bytes, offset: int) -> tuple[int, int]:
    return data.count(b"\n", 0, offset) + 1, offset - data.rfind(b"\n", 0, offset)


def _find_js_constant(text: str) -> int:
    """Offset of the first NaN / Infinity token outside strings (0 when none)."""
    in_string = escaped = False
    for offset, char in enumerate(text):
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif text.startswith(("NaN", "Infinity", "-Infinity"), offset):
            return offset
    return 0


# --------------------------------------------------------------------------- normalisation


def normalise(raw: object) -> object:
    """§1.2: a deep copy with ``http`` integrations renamed and service bindings merged.

    Non-containers are returned unchanged; the input is never mutated.
    """
    config = _clone(raw)
    if not isinstance(config, dict):
        return config
    paths = config.get("paths")
    if isinstance(paths, list):
        for route in paths:
            integration = route.get("integration") if isinstance(route, dict) else None
            if isinstance(integration, dict) and integration.get("type") == "http":
                integration["type"] = "http_proxy"
    merged = _merge_bindings(config.get("serviceBindings"), config.get("servicesBindings"))
    if merged:
        config["serviceBindings"] = merged
    return config


def _clone(value: object) -> object:
    return _copy_json(value, lambda leaf: leaf)


def _copy_json(value: object, leaf: Callable[[object], object]) -> object:
    """Copy nested dicts and lists, mapping every other value through ``leaf``.

    Iterative, so any depth the JSON parser accepts can be copied.
    """
    if not isinstance(value, dict | list):
        return leaf(value)
    Container = dict[str, object] | list[object]
    root: Container = {} if isinstance(value, dict) else []
    pending: list[tuple[object, Container]] = [(value, root)]
    while pending:
        source, target = pending.pop()
        items: Iterable[tuple[object, object]] = (
            source.items() if isinstance(source, dict) else enumerate(_list(source))
        )
        for key, item in items:
            copied: object = leaf(item)
            if isinstance(item, dict | list):
                child: Container = {} if isinstance(item, dict) else []
                pending.append((item, child))
                copied = child
            if isinstance(target, dict):
                target[str(key)] = copied
            else:
                target.append(copied)
    return root


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _merge_bindings(primary: object, legacy: object) -> list[object]:
    """``mergeServiceBindings``: legacy entries with a new truthy alias are appended."""
    merged: list[object] = list(primary) if isinstance(primary, list) else []
    known = {_same_value(alias) for alias in map(_alias_of, merged) if _truthy(alias)}
    for entry in legacy if isinstance(legacy, list) else []:
        alias = _alias_of(entry)
        if not _truthy(alias) or _same_value(alias) in known:
            continue
        merged.append(entry)
        known.add(_same_value(alias))
    return merged


def _alias_of(entry: object) -> object:
    return entry.get("alias") if isinstance(entry, dict) else None


def _same_value(value: object) -> tuple[str, object]:
    """A key under which two values are equal iff JS's SameValueZero says so."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return ("object", id(value))  # JSON objects/arrays: equal only to themselves


# --------------------------------------------------------------------------- placeholders

_PLACEHOLDER_PREFIXES: Final = ("$env.", "$secrets.", "$secret.")


def resolve_placeholders(raw: object, env: Mapping[str, str]) -> object:
    """§1.6: replace whole string *values* that start with a placeholder prefix.

    ``$env.NAME``, ``$secrets.NAME`` and ``$secret.NAME`` become ``env[NAME]`` (NAME is
    everything after the prefix, dots and slashes included), ``""`` when missing. Keys are
    never replaced, embedded placeholders are left alone, and a replaced value is not
    expanded again. Returns a new structure; ``raw`` is not mutated.
    """
    if not isinstance(raw, dict | list):
        return raw  # a top-level scalar is not a property value (JS for...in skips it)
    return _copy_json(raw, lambda value: _substitute(value, env))


def _substitute(value: object, env: Mapping[str, str]) -> object:
    if not isinstance(value, str):
        return value
    for prefix in _PLACEHOLDER_PREFIXES:
        if value.startswith(prefix):
            found = env.get(value[len(prefix) :])
            return "" if found is None else found
    return value


# --------------------------------------------------------------------------- validation

#: Checks only "uri" (jsonschema would need rfc3987 for it); shared with the compat tests.
FORMAT_CHECKER: Final = FormatChecker(formats=())


def _check_uri(instance: object) -> bool:
    return not isinstance(instance, str) or is_uri(instance)


FORMAT_CHECKER.checks("uri")(_check_uri)


_VALIDATOR: Final = Draft202012Validator(SCHEMA, format_checker=FORMAT_CHECKER)

Finding = tuple[Path, str]


def validate(raw: object, *, secret_paths: Iterable[Path] = ()) -> list[Diagnostic]:
    """Check ``raw`` against the schema; one ERROR diagnostic per problem, sorted.

    Errors under a ``oneOf``/``anyOf`` are reported from the branch the value was meant
    for (the authorizer's ``type`` picks one), not as "not valid under any of ...". A key
    the schema does not allow is reported at its own pointer, with the closest allowed
    key. A value under a secret-bearing key, or at (or under) one of ``secret_paths`` (the
    values that came from ``$secrets.``), is never quoted.
    """
    secrets = frozenset(secret_paths)
    found = [
        _error(path, message)
        for error in _VALIDATOR.iter_errors(raw)
        for path, message in _explain(error, secrets)
    ]
    return _sorted(found)


# Keys whose values are secrets (compared lower-cased, "-" read as "_").
_SECRET_WORDS: Final = ("secret", "password", "passwd", "token", "credential", "private")
_SECRET_NAMES: Final = frozenset({"authorization", "cookie", "apikey", "key"})


def is_secret_key(name: str) -> bool:
    """Whether values under the key ``name`` are secrets: ``secret``, ``client_secret``,
    ``password``, ``token``, ``api_key``, ``service_role_key``, ``authorization``..."""
    lower = name.lower().replace("-", "_")
    return (
        lower in _SECRET_NAMES
        or lower.endswith("_key")
        or any(word in lower for word in _SECRET_WORDS)
    )


def _is_secret(path: Path, secrets: frozenset[Path]) -> bool:
    if any(isinstance(part, str) and is_secret_key(part) for part in path):
        return True
    return any(path[: len(secret)] == secret for secret in secrets)


def _hidden(error: object) -> str:
    """A schema message for a secret value: what was wrong, never the value itself."""
    validator = getattr(error, "validator", None)
    expected = getattr(error, "validator_value", None)
    if validator == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        return "the value (not shown: secret) is not of type " + ", ".join(map(repr, kinds))
    if validator in ("minLength", "maxLength", "minimum", "maximum", "format", "pattern"):
        return f"the value (not shown: secret) fails {validator} {expected!r}"
    return f"the value (not shown: secret) is not valid ({validator})"


def _unknown_key(name: str, known: Iterable[str]) -> str:
    """``unknown key 'auht' (did you mean 'auth'?)``."""
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.lower() == name.lower()][:1]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {name!r}{hint}"


def _explain(error: object, secrets: frozenset[Path] = frozenset()) -> list[Finding]:
    """Turn one jsonschema ``ValidationError`` into located messages.

    For ``anyOf``/``oneOf``, a branch whose errors show it was never meant for the value
    (a ``type``/``const``/``enum`` mismatch at the value itself, or the wrong ``type``
    property) is set aside. One branch left: its own errors. Several: the errors they
    share, or "at least one of ... is required" when they differ only in required keys.
    None: name the discriminating ``type`` or a shared type error.
    """
    validator = getattr(error, "validator", None)
    context = _items(error, "context")
    path: Path = tuple(p for p in _items(error, "absolute_path") if isinstance(p, str | int))
    instance: object = getattr(error, "instance", None)
    if validator == "additionalProperties" and isinstance(instance, dict):
        schema = getattr(error, "schema", None)
        known = schema.get("properties", {}) if isinstance(schema, dict) else {}
        return [
            ((*path, name), _unknown_key(name, known)) for name in instance if name not in known
        ]
    if validator not in ("anyOf", "oneOf") or not context:
        if _is_secret(path, secrets):
            return [(path, _hidden(error))]
        return [(path, _shorten(str(getattr(error, "message", "")), instance))]
    branches: dict[object, list[object]] = {}
    for sub in context:
        branch = (_items(sub, "relative_schema_path") or [None])[0]
        branches.setdefault(branch, []).append(sub)
    fitting = [subs for subs in branches.values() if not any(map(_is_mismatch, subs))]
    if len(fitting) == 1:
        return [finding for sub in fitting[0] for finding in _explain(sub, secrets)]
    if fitting:
        explained = [[f for sub in subs for f in _explain(sub, secrets)] for subs in fitting]
        common = [f for f in explained[0] if all(f in other for other in explained[1:])]
        if common:
            return common
        if all(getattr(sub, "validator", None) == "required" for sub in context):
            names = ", ".join(repr((_items(sub, "validator_value") or [""])[0]) for sub in context)
            return [(path, f"at least one of {names} is required")]
    if _is_secret(path, secrets):
        return [(path, _hidden(error))]
    return [_none_of(path, instance, list(branches.values()))]


def _items(error: object, name: str) -> list[object]:
    """A sequence attribute of a jsonschema error, as a list (``[]`` when absent)."""
    value: object = getattr(error, name, None)
    return list(value) if isinstance(value, Iterable) and not isinstance(value, str) else []


def _is_type_const(sub: object) -> bool:
    return getattr(sub, "validator", None) == "const" and _items(sub, "relative_path") == ["type"]


def _is_mismatch(sub: object) -> bool:
    """Whether a branch error shows the branch is not meant for this value at all."""
    at_value = not _items(sub, "relative_path")
    return _is_type_const(sub) or (
        at_value and getattr(sub, "validator", None) in ("type", "const", "enum")
    )


def _none_of(path: Path, instance: object, branches: list[list[object]]) -> Finding:
    """No branch fits: name the discriminating ``type``, a shared type error, or give up."""
    consts: list[object] = [
        getattr(sub, "validator_value", None)
        for subs in branches
        for sub in subs
        if _is_type_const(sub)
    ]
    if isinstance(instance, dict) and "type" in instance and len(consts) == len(branches):
        return (*path, "type"), f"{_describe(instance['type'])} is not one of {consts!r}"
    kinds = {
        str(getattr(sub, "message", ""))
        for subs in branches
        for sub in subs
        if getattr(sub, "validator", None) == "type" and not _items(sub, "relative_path")
    }
    if len(kinds) == 1 and all(
        any(getattr(sub, "validator", None) == "type" for sub in subs) for subs in branches
    ):
        return path, _shorten(kinds.pop(), instance)
    return path, f"{_describe(instance)} is not valid under any of the given schemas"


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "the object"
    if isinstance(value, list):
        return "the array"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shorten(message: str, instance: object) -> str:
    """Keep jsonschema's message, minus a long repr of the whole instance at its start."""
    if isinstance(instance, dict | list | str):
        text = repr(instance)
        if message.startswith(text) and (len(text) > 80 or not isinstance(instance, str)):
            return _describe(instance) + message[len(text) :]
    return message


# --------------------------------------------------------------------------- diagnostics


def json_pointer(path: Iterable[str | int]) -> str:
    """RFC 6901: ``("paths", 0, "a/b~c")`` -> ``/paths/0/a~1b~0c``; ``()`` -> ``""``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _error(path: Path, message: str) -> Diagnostic:
    return Diagnostic(
        severity=Severity.ERROR, pointer=json_pointer(path), message=mask_credentials(message)
    )


def _warning(path: Path, message: str) -> Diagnostic:
    return Diagnostic(
        severity=Severity.WARNING, pointer=json_pointer(path), message=mask_credentials(message)
    )


def _strict_warning(path: Path, message: str, *, strict: bool) -> Diagnostic:
    """A WARNING that strict mode makes an ERROR (it could open a route with no word)."""
    return _error(path, message) if strict else _warning(path, message)


def _pointer_key(pointer: str) -> tuple[tuple[int, int, str], ...]:
    return tuple(
        (0, int(t), "") if t.isascii() and t.isdigit() else (1, 0, t)
        for t in pointer.split("/")[1:]
    )


def _sorted(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    unique = dict.fromkeys(diagnostics)
    return sorted(
        unique,
        key=lambda d: (_pointer_key(d.pointer), d.severity is not Severity.ERROR, d.message),
    )


# --------------------------------------------------------------------------- JS semantics


def _truthy(value: object) -> bool:
    """JavaScript truthiness of a JSON value."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float | str):
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    return True


def _json_bytes(value: object) -> bytes:
    """``JSON.stringify``; integers too large for a double become ``null`` as Infinity does."""
    try:
        return dumps(value)
    except OverflowError:
        return dumps(_clamp_big_ints(value))


def _clamp_big_ints(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
        return value
    if isinstance(value, dict):
        return {key: _clamp_big_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clamp_big_ints(item) for item in value]
    return value


def _as_json(value: JSONObject) -> dict[str, JSONValue]:
    return cast("dict[str, JSONValue]", value)


def _object(value: object) -> JSONObject:
    return value if isinstance(value, dict) else {}


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _show(value: object) -> str:
    return "(none given)" if value is None else _describe(value)


# --------------------------------------------------------------------------- compiling


def compile_config(raw: object, *, env: Mapping[str, str], strict: bool = False) -> CompileResult:
    """normalise -> resolve placeholders -> validate -> build the frozen model.

    Returns the config with every diagnostic, even when some are errors (compatibility
    mode: the original serves invalid configs as they are).

    Args:
        raw: the parsed config (a :class:`ParsedConfig` adds the keys its text repeated).
        env: what placeholders read.
        strict: strict mode. The findings that could open a route with no word (an unknown
            key in a route or integration, an authorizer field that resolves to empty) are
            ERRORs instead of WARNINGs, so a caller that refuses errors refuses them.

    Raises:
        ConfigError: only when the config cannot be used at all: not a JSON object,
            ``paths`` missing or not an array, or nested too deeply to process.
    """
    try:
        normalised = normalise(raw)
        resolved = resolve_placeholders(normalised, env)
        placeholders = _placeholders(normalised)
        secret_paths = [path for path, (prefix, _) in placeholders.items() if prefix != "$env."]
        found = validate(resolved, secret_paths=secret_paths)
        if isinstance(raw, ParsedConfig):
            found.extend(raw.findings)
        if not isinstance(resolved, dict):
            raise ConfigError("the configuration is not a JSON object", found)
        if not isinstance(resolved.get("paths"), list):
            cause = _error(("paths",), "'paths' must be an array of routes")
            raise ConfigError(str(cause), _sorted([*found, cause]))
        found.extend(_empty_authorizer_fields(placeholders, resolved, strict=strict))
        config = _Compiler(resolved, strict=strict).build(found)
    except RecursionError:
        cause = _error((), "the configuration is nested too deeply")
        raise ConfigError(str(cause), (cause,)) from None
    return CompileResult(config=config, diagnostics=tuple(_sorted(found)))


def _placeholders(config: object) -> dict[Path, tuple[str, str]]:
    """Where the (normalised) config holds a placeholder: path -> (prefix, variable name)."""
    found: dict[Path, tuple[str, str]] = {}
    pending: list[tuple[Path, object]] = [((), config)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            pending.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, str) and path:
            for prefix in _PLACEHOLDER_PREFIXES:
                if value.startswith(prefix):
                    found[path] = (prefix, value[len(prefix) :])
                    break
    return found


def _empty_authorizer_fields(
    placeholders: Mapping[Path, tuple[str, str]], config: JSONObject, *, strict: bool
) -> list[Diagnostic]:
    """An authorizer field whose placeholder resolved to ``""``: a check turned off silently.

    ``"issuer": "$env.ISSUER"`` with ``ISSUER`` unset makes the issuer check accept any
    ``iss``; an empty secret refuses every token or answers 500.
    """
    authorizer = config.get("authorizer")
    if not isinstance(authorizer, dict):
        return []
    found: list[Diagnostic] = []
    for path, (prefix, name) in placeholders.items():
        if len(path) == 2 and path[0] == "authorizer" and authorizer.get(path[1]) == "":
            found.append(
                _strict_warning(
                    path,
                    f'{path[1]!r} is empty: {prefix}{name} resolved to "" (the variable '
                    f"{name!r} is unset or empty), which turns off or breaks this check",
                    strict=strict,
                )
            )
    return found


_PARAM_SEGMENT: Final = re.compile(r"(?<=/)\{(?!\.\+\}(?:/|$))[^/]*\}(?=/|$)")


def _schema_keys(*path: str) -> frozenset[str]:
    node: object = SCHEMA
    for name in path:
        assert isinstance(node, dict)
        node = node[name]
    assert isinstance(node, dict)
    return frozenset(node)


#: Keys a route may hold, and an integration: the schema's, plus ``post_process``, which the
#: original reads but its schema does not list. Where the schema allows any extra key, a key
#: not in these is reported (a misspelt ``auth`` would serve the route unauthenticated).
_ROUTE_KEYS: Final = _schema_keys("properties", "paths", "items", "properties")
_INTEGRATION_KEYS: Final = frozenset({"type", "server", "binding", "function", "post_process"})
_HOOK_KEYS: Final = frozenset({"binding", "function"})
_POST_PROCESS_KEYS: Final = frozenset({"type", "binding", "function"})


class _Compiler:
    """Builds a :class:`GatewayConfig` from a resolved config, recording diagnostics."""

    def __init__(self, config: JSONObject, *, strict: bool = False) -> None:
        self.config = config
        self.strict = strict
        self.found: list[Diagnostic] = []
        self.servers = _entries(config.get("servers"), ("url",), _make_server)
        self.services = _entries(config.get("services"), ("entrypoint",), _make_service)
        self.bindings = _entries(config.get("serviceBindings"), ("binding",), _make_binding)

    def build(self, found: list[Diagnostic]) -> GatewayConfig:
        authorizer = self.authorizer(self.config.get("authorizer"))
        cors = self.cors(self.config.get("cors"))
        paths = self.config.get("paths")
        routes = tuple(
            self.route(index, entry, authorizer)
            for index, entry in enumerate(paths if isinstance(paths, list) else [])
            if isinstance(entry, dict)
        )
        self.duplicate_routes(routes)
        found.extend(self.found)
        return GatewayConfig(
            routes=routes,
            servers=self.servers,
            services=self.services,
            service_bindings=self.bindings,
            cors=cors,
            authorizer=authorizer,
            variables=_as_json(_object(self.config.get("variables"))),
            raw=_as_json(self.config),
        )

    # -- top-level blocks

    def cors(self, value: object) -> Cors | None:
        if not _truthy(value):
            return None
        block = _object(value)
        origins = block.get("allow_origins")
        allow_origins = (
            tuple(o for o in origins if isinstance(o, str)) if isinstance(origins, list) else ()
        )
        credentials = _truthy(block.get("allow_credentials"))
        if credentials:
            for position, origin in enumerate(origins if isinstance(origins, list) else []):
                if origin == "*":
                    self.found.append(
                        _warning(
                            ("cors", "allow_origins", position),
                            "'*' with allow_credentials true reflects any Origin back with "
                            "credentials allowed (CORS protection is off for credentialed "
                            "requests)",
                        )
                    )
        max_age = block.get("max_age")
        return Cors(
            allow_origins=allow_origins,
            allow_methods=_joined(block.get("allow_methods")),
            allow_headers=_joined(block.get("allow_headers")),
            expose_headers=_joined(block.get("expose_headers")),
            allow_credentials=credentials,
            max_age=js_string(max_age) if _truthy(max_age) else "0",
        )

    def authorizer(self, value: object) -> Authorizer | None:
        if not _truthy(value):
            return None
        block = _object(value)
        kind = block.get("type")
        builder = _AUTHORIZERS.get(kind) if isinstance(kind, str) else None
        if builder is None:
            unknown = "" if kind is None else js_string(kind)
            return UnknownAuthorizer(type=unknown)
        authorizer = builder(block)
        if isinstance(authorizer, JwtAuthorizer) and authorizer.secret == "":
            self.found.append(
                _warning(("authorizer", "secret"), "empty secret: every token will be refused")
            )
        if isinstance(authorizer, Auth0Authorizer) and _truthy(authorizer.jwks):
            self.check_jwks(authorizer.jwks or "")
        return authorizer

    def check_jwks(self, text: str) -> None:
        try:
            document = loads(text)
        except (ValueError, RecursionError) as exc:
            self.found.append(_warning(("authorizer", "jwks"), f"not valid JSON ({exc})"))
            return
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            self.found.append(
                _warning(("authorizer", "jwks"), 'the JWKS has no "keys" array (every token fails)')
            )

    # -- routes

    def duplicate_routes(self, routes: Iterable[Route]) -> None:
        """Two routes with one method and one path (parameter names aside): the later one
        never answers, since config order breaks the tie."""
        first: dict[tuple[str, str], int] = {}
        for route in routes:
            if not route.path:
                continue
            key = (route.method, _PARAM_SEGMENT.sub("{}", route.path))
            if key in first:
                self.found.append(
                    _warning(
                        ("paths", route.index),
                        f"same method and path as /paths/{first[key]}, which comes first: "
                        "this route never answers",
                    )
                )
            else:
                first[key] = route.index

    def unknown_keys(self, here: Path, block: object, known: frozenset[str]) -> None:
        """Keys the schema lets through but nothing reads: WARNING, ERROR under strict."""
        if not isinstance(block, dict):
            return
        for name in block:
            if name not in known:
                self.found.append(
                    _strict_warning((*here, name), _unknown_key(name, known), strict=self.strict)
                )

    def route(self, index: int, entry: JSONObject, authorizer: Authorizer | None) -> Route:
        here: Path = ("paths", index)
        self.unknown_keys(here, entry, _ROUTE_KEYS)
        integration_block = entry.get("integration")
        self.unknown_keys((*here, "integration"), integration_block, _INTEGRATION_KEYS)
        if isinstance(integration_block, dict):
            post = integration_block.get("post_process")
            self.unknown_keys((*here, "integration", "post_process"), post, _POST_PROCESS_KEYS)
        self.unknown_keys((*here, "pre_process"), entry.get("pre_process"), _HOOK_KEYS)
        method, path = entry.get("method"), entry.get("path")
        integration = _integration(entry.get("integration"))
        problems = self.route_problems(here, entry, integration, authorizer)
        static_body: bytes | None = None
        if "response" in entry:
            try:
                static_body = _json_bytes(entry["response"])
            except RecursionError:
                problems.append(_error((*here, "response"), "nested too deeply to serialise"))
        self.found.extend(problems)
        if isinstance(path, str):
            self.check_path(here, path)
        return Route(
            index=index,
            method=method if isinstance(method, str) else "",
            path=path if isinstance(path, str) else "",
            integration=integration,
            auth=_truthy(entry.get("auth")),
            mapping=_mapping(entry.get("mapping")),
            variables=_as_json(_object(entry.get("variables"))),
            static_body=static_body,
            pre_process=_pre_process(entry.get("pre_process")),
            defect="; ".join(map(str, problems)) or None,
            raw=_as_json(entry),
        )

    def check_path(self, here: Path, path: str) -> None:
        segments = path.split("/")
        if "{.+}" in segments[:-1]:
            self.found.append(
                _warning(
                    (*here, "path"),
                    "'{.+}' is not the last segment: the segments after it are never "
                    "compared (as in the original)",
                )
            )

    def route_problems(
        self,
        here: Path,
        entry: JSONObject,
        integration: Integration | None,
        authorizer: Authorizer | None,
    ) -> list[Diagnostic]:
        problems: list[Diagnostic] = []
        if _truthy(entry.get("auth")):
            if authorizer is None:
                problems.append(
                    _error((*here, "auth"), "auth is on but no authorizer is configured")
                )
            elif isinstance(authorizer, UnknownAuthorizer):
                problems.append(
                    _error(
                        (*here, "auth"),
                        f"auth is on but authorizer type {authorizer.type!r} is not supported",
                    )
                )
        if integration is not None:
            problems.extend(self.alias_problems((*here, "integration"), integration))
        if _truthy(entry.get("pre_process")):
            problems.extend(self.hook_problems((*here, "pre_process"), entry["pre_process"]))
        return problems

    def alias_problems(self, here: Path, integration: Integration) -> list[Diagnostic]:
        problems: list[Diagnostic] = []
        raw = integration.raw
        lookups: dict[str, tuple[str, Mapping[str, object], str]] = {
            "http_proxy": ("server", self.servers, "server"),
            "service": ("binding", self.services, "service"),
            "service_binding": ("binding", self.bindings, "service binding"),
        }
        if integration.type in lookups:
            key, table, noun = lookups[integration.type]
            alias = raw.get(key)
            if not isinstance(alias, str) or alias not in table:
                problems.append(_error((*here, key), f"no {noun} with alias {_show(alias)}"))
        post = raw.get("post_process")
        if _truthy(post):
            problems.extend(self.post_process_problems((*here, "post_process"), integration, post))
        return problems

    def post_process_problems(
        self, here: Path, integration: Integration, post: object
    ) -> list[Diagnostic]:
        if integration.type != "auth0_callback":
            # Never run here, so a broken reference cannot open anything: warn only.
            self.found.append(_warning(here, "post_process only runs for auth0_callback"))
            return []
        if not isinstance(post, dict) or post.get("type") != "service_binding":
            self.found.append(
                _warning(here, "post_process is ignored unless its type is 'service_binding'")
            )
            return []
        return self.hook_problems(here, post)

    def hook_problems(self, here: Path, hook: object) -> list[Diagnostic]:
        if not isinstance(hook, dict):
            return [_error(here, "must be an object with 'binding' and 'function'")]
        problems: list[Diagnostic] = []
        binding = hook.get("binding")
        if not isinstance(binding, str) or binding not in self.bindings:
            problems.append(
                _error((*here, "binding"), f"no service binding with alias {_show(binding)}")
            )
        if not isinstance(hook.get("function"), str):
            problems.append(_error((*here, "function"), "the hook needs a function name"))
        return problems


# --------------------------------------------------------------------------- route parts


def _integration(value: object) -> Integration | None:
    if not isinstance(value, dict):
        return None  # absent, or a shape the original reads as "no integration"
    kind = value.get("type")
    return Integration(
        type=kind if isinstance(kind, str) else "",
        server=_opt_str(value.get("server")),
        binding=_opt_str(value.get("binding")),
        function=_opt_str(value.get("function")),
        raw=_as_json(value),
    )


def _mapping(value: object) -> MappingSpec | None:
    if not _truthy(value):
        return None
    block = _object(value)
    headers, query = block.get("headers"), block.get("query")
    return MappingSpec(
        headers=_pairs(headers) if _truthy(headers) else (),
        query=_pairs(query) if "query" in block and _truthy(query) else None,
    )


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    return tuple((key, js_string(item)) for key, item in _object(value).items())


def _pre_process(value: object) -> tuple[str, str] | None:
    if not isinstance(value, dict):
        return None
    binding, function = value.get("binding"), value.get("function")
    if isinstance(binding, str) and isinstance(function, str):
        return (binding, function)
    return None


def _joined(value: object) -> str:
    return (
        ",".join("" if v is None else js_string(v) for v in value)
        if isinstance(value, list)
        else ""
    )


# --------------------------------------------------------------------------- top-level parts


_T = TypeVar("_T")


def _entries(
    value: object, fields: tuple[str, ...], make: Callable[[JSONObject], _T]
) -> dict[str, _T]:
    """Alias -> entry for the usable entries of a list (the first of an alias wins)."""
    table: dict[str, _T] = {}
    for entry in value if isinstance(value, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("alias"), str):
            continue
        if all(isinstance(entry.get(field), str) for field in fields):
            table.setdefault(entry["alias"], make(entry))
    return table


def _timeout(value: object, default: float) -> float:
    """A positive, finite number of seconds, else ``default`` (the schema reports it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    try:
        seconds = float(value)
    except OverflowError:
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default


def _make_server(entry: JSONObject) -> Server:
    return Server(
        alias=str(entry["alias"]),
        url=str(entry["url"]),
        connect_timeout=_timeout(entry.get("connect_timeout"), DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_timeout(entry.get("read_timeout"), DEFAULT_READ_TIMEOUT),
        forward_path_escapes=entry.get("path_escapes") == "forward",
    )


def _make_service(entry: JSONObject) -> ServiceEntry:
    return ServiceEntry(alias=str(entry["alias"]), entrypoint=str(entry["entrypoint"]))


def _make_binding(entry: JSONObject) -> ServiceBinding:
    return ServiceBinding(alias=str(entry["alias"]), binding=str(entry["binding"]))


def _text(block: JSONObject, key: str, *, null: str = "null") -> str:
    """A required string field as the original reads it: absent -> "", else String()."""
    if key not in block:
        return ""
    value = block[key]
    return null if value is None else js_string(value)


def _claim(block: JSONObject, key: str) -> str | None:
    """``issuer``/``audience``: None when absent (claim not required); null reads as ""."""
    if key not in block:
        return None
    return _text(block, key, null="")


def _optional(block: JSONObject, key: str) -> str | None:
    value = block.get(key)
    return None if value is None else js_string(value)


def _jwt(block: JSONObject) -> Authorizer:
    return JwtAuthorizer(
        secret=_text(block, "secret"),  # null is the 4-byte key "null" (§7.1)
        algorithm=_text(block, "algorithm"),
        issuer=_claim(block, "issuer"),
        audience=_claim(block, "audience"),
    )


def _auth0(block: JSONObject) -> Authorizer:
    return Auth0Authorizer(
        domain=_text(block, "domain"),
        client_id=_text(block, "client_id"),
        client_secret=_text(block, "client_secret"),
        redirect_uri=_text(block, "redirect_uri"),
        scope=_text(block, "scope"),
        jwks=_optional(block, "jwks"),
        jwks_uri=_optional(block, "jwks_uri"),
        callback_uri=_optional(block, "callback_uri"),
        audience=_optional(block, "audience"),
        require_state=_truthy(block.get("require_state")),
    )


def _supabase(block: JSONObject) -> Authorizer:
    return SupabaseAuthorizer(
        jwt_secret=_text(block, "jwt_secret", null=""),  # a falsy secret is "not configured"
        issuer=_claim(block, "issuer"),
        audience=_claim(block, "audience"),
        jwks_uri=_optional(block, "jwks_uri"),
    )


_AUTHORIZERS: Final[dict[str, Callable[[JSONObject], Authorizer]]] = {
    "jwt": _jwt,
    "auth0": _auth0,
    "supabase": _supabase,
}
