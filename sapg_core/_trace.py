"""Traces: the events fed to :meth:`Gateway.handle` and the actions it returned, as JSON lines.

Theory of operation
-------------------
The gateway is a function of its config and the ordered events it is fed
(time and entropy are event fields). A *trace* writes that down, so that
:func:`replay` can feed the same events to a fresh gateway and check that
every action comes out the same. A trace is JSON lines:

1. A :class:`TraceHeader`: the format and version, the raw config exactly as
   loaded (before ``$env.`` placeholders are resolved), the values of the
   environment names the config's placeholders read (only those) and the
   gateway options. Each header starts a gateway, numbered by ``gateway``;
   after a config reload a new header starts the next one while requests in
   flight finish on the old one, so the lines of two gateways may interleave.
2. One :class:`TraceStep` per :meth:`Gateway.handle` call: which gateway, the
   event, and the actions returned (or the exception raised, by type and text).
3. Before a step, a :class:`TraceEnv` when that step made the gateway read
   names from its own ``env`` for the first time (a recorder learns this with
   :class:`NotingEnv`); replay adds them to the fresh gateway's env.

Events and actions are encoded generically from their attrs fields:
``{"type": <class name>, <field>: <value>, ...}``, bytes as base64, enums by
value, tuples and frozensets as lists. Decoding is driven by the field types,
so every :class:`Event` and :class:`Action` subclass is covered, including
ones added later; a field type the codec cannot carry raises ``TypeError``.

This module does no I/O: transports read and write the text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, TypeVar

import attrs

from ._actions import Action
from ._config import ConfigError, compile_config
from ._events import Event
from ._forwarded import DEFAULT_FORWARDED_ALLOW_IPS
from ._gateway import Gateway

__all__ = [
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Divergence",
    "NotingEnv",
    "Raised",
    "TraceEnv",
    "TraceError",
    "TraceHeader",
    "TraceLine",
    "TraceStep",
    "decode_item",
    "dump_line",
    "encode_item",
    "load_line",
    "make_header",
    "parse_trace",
    "replay",
    "rerun",
]

#: The ``format`` of every header line.
TRACE_FORMAT: Final = "sapg-trace"
#: The version this code writes and reads.
TRACE_VERSION: Final = 1

_T = TypeVar("_T")


class TraceError(ValueError):
    """A trace that cannot be read or replayed (corrupt, truncated, from an unknown version).

    Fields:
        line: the 1-based line number, or 0 when it concerns the whole trace.
    """

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


# --------------------------------------------------------------------------- the codec


def _classes(base: type) -> dict[str, type]:
    found: dict[str, type] = {}
    pending: list[type] = list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not attrs.has(cls):
            continue
        other = found.setdefault(cls.__name__, cls)
        if other is not cls:
            raise TypeError(f"two {base.__name__} classes are named {cls.__name__}")
    return found


def encode_item(item: Event | Action) -> dict[str, object]:
    """``item`` as a JSON-able dict: ``{"type": class name, field: value, ...}``.

    Raises:
        TypeError: a field holds a value the codec cannot carry.
    """
    cls = type(item)
    if not attrs.has(cls):
        raise TypeError(f"{cls.__name__} is not an attrs class")
    encoded: dict[str, object] = {"type": cls.__name__}
    for field in attrs.fields(cls):
        encoded[field.name] = _encode(getattr(item, field.name))
    return encoded


def _encode(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, enum.Enum):
        return _encode(value.value)
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, frozenset | set):
        return sorted((_encode(item) for item in value), key=json.dumps)
    if isinstance(value, Mapping):
        return {str(key): _encode(item) for key, item in value.items()}
    cls = type(value)
    if attrs.has(cls):
        return {field.name: _encode(getattr(value, field.name)) for field in attrs.fields(cls)}
    raise TypeError(f"cannot put a {type(value).__name__} in a trace")


def decode_item(data: object, base: type[_T]) -> _T:
    """The :class:`Event` or :class:`Action` (``base``) that :func:`encode_item` encoded.

    Raises:
        TraceError: ``data`` is not an encoded ``base`` (line 0; callers add theirs).
    """
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise TraceError(0, f"expected an encoded {base.__name__}, got {_short(data)}")
    cls = _classes(base).get(data["type"])
    if cls is None:
        raise TraceError(0, f"unknown {base.__name__} type {data['type']!r}")
    fields = attrs.fields(cls)
    unknown = set(data) - {"type"} - {f.name for f in fields}
    if unknown:
        raise TraceError(0, f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    for field in fields:
        if field.name in data:
            try:
                kwargs[field.alias or field.name] = _decode(hints[field.name], data[field.name])
            except (TypeError, ValueError) as exc:
                raise TraceError(0, f"{cls.__name__}.{field.name}: {exc}") from None
    try:
        item = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise TraceError(0, f"{cls.__name__}: {exc}") from None
    if not isinstance(item, base):  # pragma: no cover - _classes only finds subclasses
        raise TraceError(0, f"{cls.__name__} is not a {base.__name__}")
    return item


_HINTS: dict[type, dict[str, object]] = {}


def _hints(cls: type) -> dict[str, object]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = dict(typing.get_type_hints(cls))
    return hints


def _decode(hint: object, value: object) -> object:  # noqa: C901, PLR0912
    """``value`` (decoded JSON) as an instance of the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is object or isinstance(hint, str | typing.ForwardRef):
        return value  # plain JSON (e.g. a JSONValue alias), carried as it is
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if bytes in args and str in args:  # both are JSON strings: which one was it?
            raise TypeError(f"the trace codec cannot tell the arms of {hint!r} apart")
        problems = []
        for arm in (arm for arm in args if arm is not type(None)):
            try:
                return _decode(arm, value)
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        raise TypeError("; ".join(problems) or f"{_short(value)} does not fit")
    if hint in _SCALARS:
        if not _is_scalar(hint, value):
            raise TypeError(f"expected {getattr(hint, '__name__', hint)}, got {_short(value)}")
        return value
    if hint is bytes:
        if not isinstance(value, str):
            raise TypeError(f"expected base64 text, got {_short(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not base64: {exc}") from None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if origin in (tuple, frozenset):
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {_short(value)}")
        if origin is frozenset:
            return frozenset(_decode(args[0], item) for item in value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in value)
        if len(args) != len(value):
            raise ValueError(f"expected {len(args)} items, got {len(value)}")
        return tuple(_decode(arm, item) for arm, item in zip(args, value, strict=True))
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_short(value)}")
        return {key: _decode(args[1], item) for key, item in value.items()}
    if isinstance(hint, type) and attrs.has(hint):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_short(value)}")
        nested = _hints(hint)
        kwargs = {
            field.alias or field.name: _decode(nested[field.name], value[field.name])
            for field in attrs.fields(hint)
            if field.name in value
        }
        return hint(**kwargs)
    raise TypeError(f"the trace codec cannot carry fields of type {hint!r}")


_SCALARS: Final = (type(None), bool, int, float, str)


def _is_scalar(hint: object, value: object) -> bool:
    if hint is float:  # JSON may write a whole float as an integer
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _short(value: object) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- lines


def _sorted_env(env: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted(env.items()))


#: Gateway options a header carries, with their types: ``Gateway(config, **options)``.
_OPTIONS: Final[dict[str, type]] = {
    "max_body_bytes": int,
    "service_timeout": float,
    "forwarded_allow_ips": str,
}


@attrs.frozen(kw_only=True)
class TraceHeader:
    """Starts a gateway: what :func:`replay` needs to build it again.

    Fields:
        gateway: the number of this gateway in the trace (0, then 1 after a reload, ...).
        config: the raw config as loaded, before placeholder resolution.
        env: the environment values the config's placeholders read (only those).
        max_body_bytes, service_timeout, forwarded_allow_ips: the :class:`Gateway`
            options (a trace written before ``forwarded_allow_ips`` existed gets
            the default).
        gateway_env: values of the gateway's own ``env`` known up front; the
            names it reads later arrive in :class:`TraceEnv` lines.
    """

    gateway: int = 0
    config: object
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_env)
    max_body_bytes: int = 10 * 1024 * 1024
    service_timeout: float = 30.0
    gateway_env: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_env)
    forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW_IPS


@attrs.frozen(kw_only=True)
class TraceEnv:
    """Names the gateway read from its ``env`` for the first time, during the next step.

    The gateway reads some settings (Supabase's URL and key) from its env when a
    request needs them, by name; a recorder writes the values just before the step.
    """

    gateway: int = 0
    values: Mapping[str, str] = attrs.field(converter=_sorted_env)


@attrs.frozen
class Raised:
    """:meth:`Gateway.handle` raised instead of returning actions (a transport bug)."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Raised:
        return cls(type(exc).__name__, str(exc))


@attrs.frozen(kw_only=True)
class TraceStep:
    """One :meth:`Gateway.handle` call: the event fed in and what came out."""

    gateway: int = 0
    event: Event
    actions: tuple[Action, ...] = ()
    raised: Raised | None = None


TraceLine = TraceHeader | TraceEnv | TraceStep


def make_header(
    raw_config: object,
    env: Mapping[str, str],
    *,
    max_body_bytes: int,
    service_timeout: float = 30.0,
    gateway: int = 0,
    forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW_IPS,
) -> TraceHeader:
    """The header for ``Gateway(compile_config(raw_config, env=env).config, **options)``.

    Only the names the config reads from ``env`` are kept (found by compiling
    it against a mapping that notes every lookup), so a trace never holds the
    rest of the environment.
    """
    noted = NotingEnv(env)
    with contextlib.suppress(ConfigError):  # replay meets the same error
        compile_config(raw_config, env=noted)
    return TraceHeader(
        gateway=gateway,
        config=raw_config,
        env=noted.take(),
        max_body_bytes=max_body_bytes,
        service_timeout=service_timeout,
        forwarded_allow_ips=forwarded_allow_ips,
    )


class NotingEnv(Mapping[str, str]):
    """A read-only view of ``env`` that notes each name looked up (and found).

    It refuses to be listed, so whoever reads it can only look names up:
    a recorder learns exactly which values the gateway used, and no others.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._read: dict[str, str] = {}
        self._new: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        value = self._env[key]
        if self._read.get(key) != value or key not in self._read:
            self._read[key] = self._new[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        raise TypeError("this env may only be looked up by name")  # listing would leak it all

    def __len__(self) -> int:
        return len(self._env)

    def take(self) -> dict[str, str]:
        """The values read since the last call (first reads, and changed values)."""
        new, self._new = self._new, {}
        return new


def dump_line(line: TraceLine) -> str:
    """One line of a trace (without the newline). Non-ASCII is escaped."""
    data: dict[str, object]
    if isinstance(line, TraceHeader):
        data = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "gateway": line.gateway,
            "config": line.config,
            "env": dict(line.env),
            "options": {name: getattr(line, name) for name in _OPTIONS},
        }
        if line.gateway_env:
            data["gateway_env"] = dict(line.gateway_env)
    elif isinstance(line, TraceEnv):
        data = {"gateway": line.gateway, "gateway_env": dict(line.values)}
    else:
        data = {"gateway": line.gateway, "event": encode_item(line.event)}
        if line.raised is None:
            data["actions"] = [encode_item(action) for action in line.actions]
        else:
            data["raised"] = {"type": line.raised.type, "message": line.raised.message}
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def load_line(text: str | bytes, *, line: int = 0) -> TraceLine:
    """Parse one line of a trace.

    Raises:
        TraceError: naming ``line``.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise TraceError(line, f"not JSON: {exc}") from None
    try:
        return _load(data)
    except TraceError as exc:
        raise TraceError(line, exc.message) from None


def _load(data: object) -> TraceLine:
    if not isinstance(data, dict):
        raise TraceError(0, "a trace line must be a JSON object")
    gateway = data.get("gateway", 0)
    if not isinstance(gateway, int) or isinstance(gateway, bool):
        raise TraceError(0, "'gateway' must be an integer")
    if "format" in data:
        return _load_header(data, gateway)
    if "event" not in data:
        if "gateway_env" in data:
            return TraceEnv(gateway=gateway, values=_env(data, "gateway_env"))
        raise TraceError(0, "neither a header nor a step (no 'format', no 'event')")
    event = decode_item(data["event"], Event)
    if "raised" in data:
        raised = data["raised"]
        if not (
            isinstance(raised, dict)
            and isinstance(raised.get("type"), str)
            and isinstance(raised.get("message"), str)
        ):
            raise TraceError(0, '\'raised\' must be {"type": ..., "message": ...}')
        return TraceStep(
            gateway=gateway, event=event, raised=Raised(raised["type"], raised["message"])
        )
    actions = data.get("actions")
    if not isinstance(actions, list):
        raise TraceError(0, "'actions' must be a list")
    return TraceStep(
        gateway=gateway,
        event=event,
        actions=tuple(decode_item(action, Action) for action in actions),
    )


def _env(data: dict[str, object], key: str) -> dict[str, str]:
    env = data.get(key, {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise TraceError(0, f"{key!r} must map names to strings")
    return env


def _load_header(data: dict[str, object], gateway: int) -> TraceHeader:
    if data["format"] != TRACE_FORMAT:
        raise TraceError(0, f"not a sapg trace (format {_short(data['format'])})")
    if data.get("version") != TRACE_VERSION:
        raise TraceError(
            0,
            f"trace version {_short(data.get('version'))}; this sapg reads version {TRACE_VERSION}",
        )
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise TraceError(0, "'options' must be an object")
    unknown = set(options) - set(_OPTIONS)
    if unknown:  # replaying without an option would not be faithful
        raise TraceError(0, f"unknown gateway option {sorted(unknown)[0]!r}")
    for name, value in options.items():
        if not _is_scalar(_OPTIONS[name], value):
            raise TraceError(0, f"option {name!r} must be a {_OPTIONS[name].__name__}")
    return TraceHeader(
        gateway=gateway,
        config=data.get("config"),
        env=_env(data, "env"),
        gateway_env=_env(data, "gateway_env"),
        **options,
    )


def parse_trace(text: str | bytes) -> list[TraceLine]:
    """Parse a whole trace; item ``i`` is line ``i + 1``.

    Raises:
        TraceError: a line is not a trace line, or the first is not a header.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(0, f"not UTF-8: {exc}") from None
    if not text.strip():
        raise TraceError(0, "the trace is empty")
    raw_lines = text.split("\n")
    if raw_lines[-1] == "":
        raw_lines.pop()
    lines = [load_line(raw, line=number) for number, raw in enumerate(raw_lines, 1)]
    if not isinstance(lines[0], TraceHeader):
        raise TraceError(1, "a trace starts with a header line")
    return lines


# --------------------------------------------------------------------------- replay


@attrs.frozen(kw_only=True)
class Divergence:
    """The first step whose actions differ from the recorded ones.

    Fields:
        line: the 1-based line of the step in the trace.
        request_id: the ``request_id`` of the event fed in (None if it has none).
        event: the event fed in.
        expected: the recorded actions (or what was raised).
        actual: what the fresh gateway returned (or raised).
    """

    line: int
    request_id: int | None
    event: Event
    expected: tuple[Action, ...] | Raised
    actual: tuple[Action, ...] | Raised

    def __str__(self) -> str:
        """Which line and request, the event, and both outcomes; ``!`` marks what differs."""
        return (
            f"line {self.line}: request {self.request_id}: "
            f"the actions for {type(self.event).__name__} differ\n"
            f"event:\n  {self.event!r}\n"
            f"expected:\n{_show(self.expected, self.actual)}\n"
            f"actual:\n{_show(self.actual, self.expected)}"
        )


def _show(outcome: tuple[Action, ...] | Raised, other: tuple[Action, ...] | Raised) -> str:
    if isinstance(outcome, Raised):
        return f"! raised {outcome.type}: {outcome.message}"
    if not outcome:
        return "! (no actions)" if other else "  (no actions)"
    others = () if isinstance(other, Raised) else other
    return "\n".join(
        f"{' ' if index < len(others) and others[index] == action else '!'} {action!r}"
        for index, action in enumerate(outcome)
    )


def rerun(
    trace: Iterable[TraceLine],
) -> Iterator[tuple[int, TraceStep, tuple[Action, ...] | Raised]]:
    """Feed the trace's events to fresh gateways; yield ``(line, step, actual outcome)``.

    Each header builds a new :class:`Gateway` (the config compiled with the
    recorded env, the recorded options, an env holding only recorded values);
    each step's event goes to the gateway it names.

    Raises:
        TraceError: a line names a gateway no earlier header started, or a
            header's config cannot be compiled.
    """
    gateways: dict[int, tuple[Gateway, dict[str, str]]] = {}
    for number, line in enumerate(trace, 1):
        if isinstance(line, TraceHeader):
            gateways[line.gateway] = _build(line, number)
            continue
        built = gateways.get(line.gateway)
        if built is None:
            raise TraceError(number, f"gateway {line.gateway} has no header before this line")
        gateway, gateway_env = built
        if isinstance(line, TraceEnv):
            gateway_env.update(line.values)
            continue
        actual: tuple[Action, ...] | Raised
        try:
            actual = tuple(gateway.handle(line.event))
        except Exception as exc:  # recorded as data, compared like actions
            actual = Raised.of(exc)
        yield number, line, actual


def _build(header: TraceHeader, number: int) -> tuple[Gateway, dict[str, str]]:
    try:
        result = compile_config(header.config, env=header.env)
    except ConfigError as exc:
        raise TraceError(number, f"the recorded config does not compile: {exc}") from None
    gateway_env = dict(header.gateway_env)  # TraceEnv lines add to it as the trace goes
    try:
        gateway = Gateway(
            result.config,
            max_body_bytes=header.max_body_bytes,
            service_timeout=header.service_timeout,
            env=_LiveEnv(gateway_env),
            forwarded_allow_ips=header.forwarded_allow_ips,
        )
    except ValueError as exc:  # forwarded_allow_ips that is not a list of addresses
        raise TraceError(number, f"the recorded gateway options are unusable: {exc}") from None
    return gateway, gateway_env


class _LiveEnv(Mapping[str, str]):
    """Looks names up in a dict that replay fills as the trace goes; refuses to be copied."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        raise TypeError("the replayed env may only be looked up by name")

    def __len__(self) -> int:
        return len(self._values)


def replay(trace: Iterable[TraceLine]) -> Divergence | None:
    """Feed a trace to fresh gateways and compare every outcome with the recorded one.

    Returns:
        None when every step gives the recorded actions, else the first
        :class:`Divergence`.

    Raises:
        TraceError: the trace cannot be replayed at all (see :func:`rerun`).
    """
    for number, step, actual in rerun(trace):
        expected: tuple[Action, ...] | Raised = (
            step.raised if step.raised is not None else step.actions
        )
        if actual != expected:
            request_id = getattr(step.event, "request_id", None)
            return Divergence(
                line=number,
                request_id=request_id if isinstance(request_id, int) else None,
                event=step.event,
                expected=expected,
                actual=actual,
            )
    return None
