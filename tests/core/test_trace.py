"""Traces: the event/action codec, trace lines, and replay, all without sockets."""

from __future__ import annotations

import enum
import inspect
import json
import types
import typing
from collections.abc import Mapping

import attrs
import pytest

from sapg_core import (
    TRACE_FORMAT,
    TRACE_VERSION,
    Action,
    ActionFailed,
    BodyReceived,
    Event,
    FailureReason,
    ForwardUpstream,
    Gateway,
    IllegalTransition,
    NotingEnv,
    Raised,
    RelayResponse,
    RequestReceived,
    Respond,
    TraceEnv,
    TraceError,
    TraceHeader,
    TraceLine,
    TraceStep,
    UpstreamResponded,
    compile_config,
    decode_item,
    dump_line,
    encode_item,
    load_line,
    make_header,
    parse_trace,
    replay,
    rerun,
)

from .helpers import NOW, hs_token

SECRET = "trace-secret"

CONFIG: dict[str, object] = {
    "servers": [{"alias": "up", "url": "http://upstream.test/base"}],
    "authorizer": {"type": "jwt", "secret": "$env.JWT_SECRET", "algorithm": "HS256"},
    "cors": {
        "allow_origins": ["https://app.test"],
        "allow_methods": ["GET"],
        "allow_headers": ["Authorization"],
        "expose_headers": [],
        "allow_credentials": False,
        "max_age": 60,
    },
    "paths": [
        {"method": "GET", "path": "/health", "response": {"status": "ok"}},
        {"method": "GET", "path": "/private", "auth": True, "response": {"secret": "$env.ANSWER"}},
        {
            "method": "ANY",
            "path": "/proxy/{.+}",
            "integration": {"type": "http_proxy", "server": "up"},
        },
    ],
}
ENV = {"JWT_SECRET": SECRET, "ANSWER": "42", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "nope"}


# -- the codec: every Event and Action subclass ------------------------------


def _subclasses(base: type) -> list[type]:
    found: list[type] = []
    pending: list[type] = list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found.append(cls)
    return sorted(found, key=lambda cls: cls.__name__)


EVENT_CLASSES = _subclasses(Event)
ACTION_CLASSES = _subclasses(Action)


def _sample(hint: object, name: str) -> object:  # noqa: C901
    """A non-default value of type ``hint``; fails loudly on a type it does not know."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _sample(next(arm for arm in args if arm is not type(None)), name)
    if hint is bool:
        return True
    if hint is int:
        return 7 if name != "status" else 418
    if hint is float:
        return 1_800_000_000.125
    if hint is str:
        return f'{name} \u00e9\u2603 "q" \\ \n'  # non-ASCII, quotes, escapes
    if hint is bytes:
        return bytes(range(256))  # not UTF-8, NUL included
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_sample(args[0], name), _sample(args[0], name + "2"))
        return tuple(_sample(arm, name) for arm in args)
    if origin is frozenset:
        return frozenset({_sample(args[0], name), _sample(args[0], name + "2")})
    if origin in (dict, Mapping):
        return {"k": _sample(args[1], name)}
    if isinstance(hint, type) and attrs.has(hint):
        return _instance(hint)
    raise AssertionError(f"test_trace cannot make a sample {hint!r} for {name!r}: teach _sample")


def _instance(cls: type) -> object:
    hints = typing.get_type_hints(cls)
    kwargs = {
        field.alias or field.name: _sample(hints[field.name], field.name)
        for field in attrs.fields(cls)
    }
    return cls(**kwargs)


def test_there_are_events_and_actions_to_cover() -> None:
    assert {"RequestReceived", "UpstreamResponded", "ActionFailed"} <= {
        cls.__name__ for cls in EVENT_CLASSES
    }
    assert {"Respond", "ForwardUpstream", "RelayResponse", "Log"} <= {
        cls.__name__ for cls in ACTION_CLASSES
    }


@pytest.mark.parametrize(
    ("cls", "base"),
    [(cls, Event) for cls in EVENT_CLASSES] + [(cls, Action) for cls in ACTION_CLASSES],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_every_event_and_action_round_trips_through_json(
    cls: type, base: type[Event] | type[Action]
) -> None:
    assert attrs.has(cls), f"{cls.__name__} must be an attrs class to be recorded"
    item = _instance(cls)
    encoded = encode_item(item)  # type: ignore[arg-type]
    assert encoded["type"] == cls.__name__
    text = json.dumps(encoded)  # JSON-able as it stands
    decoded: object = decode_item(json.loads(text), base)
    assert decoded == item
    assert type(decoded) is cls


def test_bytes_are_base64_enums_by_value_tuples_as_lists() -> None:
    event = ActionFailed(request_id=3, reason=FailureReason.TIMEOUT, detail="slow", now=NOW)
    assert encode_item(event) == {
        "type": "ActionFailed",
        "request_id": 3,
        "reason": "timeout",
        "detail": "slow",
        "now": NOW,
    }
    respond = Respond(request_id=1, status=200, headers=(("a", "b"),), body=b"\x00hi")
    encoded = encode_item(respond)
    assert encoded["headers"] == [["a", "b"]]
    assert encoded["body"] == "AGhp"


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"type": "NoSuchEvent"}, "unknown Event type 'NoSuchEvent'"),
        ({"type": "Respond", "request_id": 1, "status": 200, "headers": []}, "unknown Event"),
        ({"request_id": 1}, "expected an encoded Event"),
        (
            {"type": "RequestAborted", "request_id": "1", "now": 1.0},
            "RequestAborted.request_id: expected int",
        ),
        ({"type": "RequestAborted", "request_id": True, "now": 1.0}, "expected int"),
        ({"type": "RequestAborted", "request_id": 1, "now": 1.0, "extra": 1}, "no field 'extra'"),
        ({"type": "RequestAborted", "request_id": 1}, "RequestAborted"),  # missing field
        (
            {"type": "BodyReceived", "request_id": 1, "body": "%%%", "now": 1.0},
            "not base64",
        ),
        (
            {"type": "ActionFailed", "request_id": 1, "reason": "nope", "now": 1.0},
            "ActionFailed.reason",
        ),
    ],
)
def test_decoding_refuses_what_is_not_an_encoded_event(data: object, complaint: str) -> None:
    with pytest.raises(TraceError, match=complaint):
        decode_item(data, Event)


# -- headers -----------------------------------------------------------------


def test_the_header_keeps_only_the_env_names_the_config_reads() -> None:
    header = make_header(CONFIG, ENV, max_body_bytes=1024)
    assert header.env == {"JWT_SECRET": SECRET, "ANSWER": "42"}
    assert header.config == CONFIG  # raw: placeholders unresolved
    line = json.loads(dump_line(header))
    assert line["format"] == TRACE_FORMAT and line["version"] == TRACE_VERSION
    assert line["config"]["authorizer"]["secret"] == "$env.JWT_SECRET"
    assert line["options"] == {
        "max_body_bytes": 1024,
        "service_timeout": 30.0,
        "forwarded_allow_ips": "127.0.0.1",
    }
    assert "HOME" not in dump_line(header)


def test_the_header_carries_every_gateway_option() -> None:
    """A new Gateway option must reach the trace, or replay builds a different gateway."""
    parameters = inspect.signature(Gateway.__init__).parameters
    options = set(parameters) - {"self", "config", "env"}  # env: see TraceEnv
    fields = {field.name for field in attrs.fields(TraceHeader)}
    assert options <= fields, f"TraceHeader lacks {sorted(options - fields)}"
    header = make_header(CONFIG, ENV, max_body_bytes=7, service_timeout=2.5)
    loaded = load_line(dump_line(header))
    assert isinstance(loaded, TraceHeader)
    assert (loaded.max_body_bytes, loaded.service_timeout) == (7, 2.5)


def test_noting_env_notes_what_is_read_and_refuses_to_be_listed() -> None:
    env = NotingEnv({"A": "1", "B": "2", "C": "3"})
    assert env.get("A") == "1" and env["B"] == "2" and env.get("MISSING") is None
    assert "C" in env
    assert env.take() == {"A": "1", "B": "2", "C": "3"}
    assert env.get("A") == "1"
    assert env.take() == {}  # only new reads are reported
    with pytest.raises(TypeError):
        dict(env)


def test_gateway_env_lines_feed_the_replayed_gateway() -> None:
    config = {
        "paths": [
            {
                "method": "POST",
                "path": "/otp",
                "integration": {"type": "supabase_passwordless_auth"},
            }
        ]
    }
    values = {"SUPABASE_URL": "https://sb.test", "SUPABASE_SERVICE_ROLE_KEY": "k"}
    gateway = Gateway(compile_config(config, env={}).config, max_body_bytes=1024, env=values)
    start = RequestReceived(
        request_id=1, method="POST", target="/otp", headers=(), now=NOW, entropy=bytes(32)
    )
    body = BodyReceived(request_id=1, body=b'{"email":"a@b.test"}', now=NOW)
    lines: list[TraceLine] = [
        make_header(config, {}, max_body_bytes=1024),
        TraceStep(event=start, actions=tuple(gateway.handle(start))),
        TraceEnv(values=values),
        TraceStep(event=body, actions=tuple(gateway.handle(body))),
    ]
    text = "".join(dump_line(line) + "\n" for line in lines)
    assert parse_trace(text) == lines
    assert replay(lines) is None
    divergence = replay([line for line in lines if not isinstance(line, TraceEnv)])
    assert divergence is not None and divergence.line == 3  # no values: a 500, not a call


def test_a_name_the_config_reads_but_the_env_lacks_stays_missing() -> None:
    header = make_header(CONFIG, {"ANSWER": "x"}, max_body_bytes=0)
    assert header.env == {"ANSWER": "x"}


def test_a_header_with_an_unknown_option_or_version_is_refused() -> None:
    line = json.loads(dump_line(make_header(CONFIG, ENV, max_body_bytes=5)))
    with pytest.raises(TraceError, match="unknown gateway option 'turbo'"):
        load_line(json.dumps({**line, "options": {"max_body_bytes": 5, "turbo": True}}), line=1)
    with pytest.raises(TraceError, match="line 1: trace version 99"):
        load_line(json.dumps({**line, "version": 99}), line=1)


def test_config_values_json_cannot_normally_write_survive_the_header() -> None:
    raw = {"paths": [], "big": 10**30, "inf": float("inf"), "neg0": -0.0, "lone": "\ud800"}
    header = make_header(raw, {}, max_body_bytes=1)
    loaded = load_line(dump_line(header))
    assert isinstance(loaded, TraceHeader)
    assert loaded.config == raw
    assert dump_line(header).isascii()


# -- replay ------------------------------------------------------------------


def record(events: list[Event], config: object = CONFIG) -> list[TraceLine]:
    """What a recording transport writes: a header, then one step per handle()."""
    header = make_header(config, ENV, max_body_bytes=1024)
    gateway = Gateway(compile_config(config, env=ENV).config, max_body_bytes=1024)
    lines: list[TraceLine] = [header]
    for event in events:
        try:
            lines.append(TraceStep(event=event, actions=tuple(gateway.handle(event))))
        except IllegalTransition as exc:
            lines.append(TraceStep(event=event, raised=Raised.of(exc)))
    return lines


def request(request_id: int, target: str, *headers: tuple[str, str]) -> RequestReceived:
    return RequestReceived(
        request_id=request_id,
        method="GET",
        target=target,
        headers=(("host", "gw.test"), *headers),
        now=NOW,
        entropy=bytes([request_id]) * 32,
    )


def session() -> list[Event]:
    good = hs_token({"sub": "u1", "exp": NOW + 60}, SECRET)
    expired = hs_token({"sub": "u1", "exp": NOW - 60}, SECRET)
    return [
        request(1, "/health"),
        request(2, "/private", ("authorization", f"Bearer {good}")),
        request(3, "/private", ("authorization", f"Bearer {expired}")),
        request(4, "/proxy/a?b=1", ("origin", "https://app.test")),
        request(5, "/proxy/down"),
        UpstreamResponded(request_id=4, status=201, headers=(("x-up", "1"),), now=NOW + 1),
        ActionFailed(request_id=5, reason=FailureReason.CONNECT, detail="refused", now=NOW + 1),
        request(6, "/nowhere"),
        UpstreamResponded(request_id=99, status=200, headers=(), now=NOW),  # a transport bug
    ]


def test_a_hand_built_trace_replays_without_sockets() -> None:
    lines = record(session())
    assert replay(lines) is None
    steps = [line for line in lines if isinstance(line, TraceStep)]
    assert isinstance(steps[3].actions[-1], ForwardUpstream)
    assert isinstance(steps[5].actions[-1], RelayResponse)
    assert steps[-1].raised is not None and steps[-1].raised.type == "IllegalTransition"


def test_a_trace_survives_the_text_round_trip() -> None:
    lines = record(session())
    text = "".join(dump_line(line) + "\n" for line in lines)
    assert parse_trace(text) == lines
    assert parse_trace(text.encode()) == lines
    assert replay(parse_trace(text)) is None


def test_a_changed_outcome_is_a_divergence_naming_the_line_and_request() -> None:
    lines = record(session())
    index = next(
        i
        for i, line in enumerate(lines)
        if isinstance(line, TraceStep) and isinstance(line.event, UpstreamResponded)
    )
    step = lines[index]
    assert isinstance(step, TraceStep) and isinstance(step.event, UpstreamResponded)
    lines[index] = attrs.evolve(step, event=attrs.evolve(step.event, status=500))
    divergence = replay(lines)
    assert divergence is not None
    assert divergence.line == index + 1
    assert divergence.request_id == 4
    assert divergence.expected == step.actions
    assert isinstance(divergence.actual, tuple)
    relay = divergence.actual[-1]
    assert isinstance(relay, RelayResponse) and relay.status == 500
    text = str(divergence)
    assert f"line {index + 1}: request 4" in text
    assert "expected:" in text and "actual:" in text and "status=500" in text


def test_a_changed_action_is_a_divergence_too() -> None:
    lines = record(session())
    step = lines[1]
    assert isinstance(step, TraceStep)
    answer = step.actions[-1]
    assert isinstance(answer, Respond)
    lines[1] = attrs.evolve(step, actions=(attrs.evolve(answer, body=b"changed"),))
    divergence = replay(lines)
    assert divergence is not None and divergence.line == 2 and divergence.request_id == 1


def test_an_exception_that_is_no_longer_raised_is_a_divergence() -> None:
    lines = record(session())
    last = lines[-1]
    assert isinstance(last, TraceStep)
    lines[-1] = attrs.evolve(last, raised=None, actions=())
    divergence = replay(lines)
    assert divergence is not None
    assert isinstance(divergence.actual, Raised)
    assert "raised IllegalTransition" in str(divergence)


def test_after_a_reload_two_gateways_interleave() -> None:
    changed = {**CONFIG, "paths": [{"method": "GET", "path": "/health", "response": "v2"}]}
    old = Gateway(compile_config(CONFIG, env=ENV).config, max_body_bytes=1024)
    new = Gateway(compile_config(changed, env=ENV).config, max_body_bytes=1024)
    lines: list[TraceLine] = [make_header(CONFIG, ENV, max_body_bytes=1024)]

    def step(number: int, gateway: Gateway, event: Event) -> None:
        lines.append(TraceStep(gateway=number, event=event, actions=tuple(gateway.handle(event))))

    step(0, old, request(1, "/proxy/slow"))  # in flight across the reload
    lines.append(make_header(changed, ENV, max_body_bytes=1024, gateway=1))
    step(1, new, request(2, "/health"))
    step(0, old, UpstreamResponded(request_id=1, status=200, headers=(), now=NOW))
    assert replay(lines) is None
    reloaded = [actual for _, _, actual in rerun(lines)][1]
    assert isinstance(reloaded, tuple) and isinstance(reloaded[0], Respond)
    assert reloaded[0].body == b'"v2"'


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "the trace is empty"),
        ("not json\n", "line 1: not JSON"),
        ('{"format":"other"}\n', "line 1: not a sapg trace"),
        (
            '{"gateway":0,"event":{"type":"RequestAborted","request_id":1,"now":1},"actions":[]}\n',
            "line 1: a trace starts with a header",
        ),
        ("HEADER\n\n", "line 2: not JSON"),  # blank lines are not skipped: numbers stay true
        ("HEADER\n" + '{"gateway":0,"event":{"type":"Req', "line 2: not JSON"),  # truncated
        ("HEADER\n" + '{"gateway":0}\n', "line 2: neither a header nor a step"),
        ("HEADER\n" + '{"event":{"type":"RequestAborted","request_id":1,"now":1}}\n', "actions"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_corrupt_trace_is_a_trace_error(text: str | bytes, complaint: str) -> None:
    header = dump_line(make_header(CONFIG, ENV, max_body_bytes=1))
    if isinstance(text, str):
        text = text.replace("HEADER", header)
    with pytest.raises(TraceError, match=complaint):
        parse_trace(text)


def test_a_step_for_a_gateway_without_a_header_is_a_trace_error() -> None:
    lines = record(session())
    lines.insert(2, TraceStep(gateway=3, event=request(50, "/health")))
    with pytest.raises(TraceError, match="line 3: gateway 3 has no header"):
        replay(lines)


def test_a_config_that_cannot_compile_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="line 1: the recorded config does not compile"):
        replay([TraceHeader(config=[1, 2], max_body_bytes=1)])
