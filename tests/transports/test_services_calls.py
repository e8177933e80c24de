"""transports._services: loading Python services and carrying out CallService, standalone.

Calls run under trio and under asyncio (and the blocking entry point), with real threads and
real event loops; the asyncio-under-trio case uses real asyncio streams over loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import attrs
import pytest
import trio
import trio_asyncio

from sapg_core import (
    ActionFailed,
    CallService,
    FailureReason,
    Gateway,
    RequestReceived,
    Respond,
    ServiceContext,
    ServiceKind,
    ServiceRequest,
    ServiceResultKind,
    ServiceReturned,
    ServiceStage,
    compile_config,
)
from transports._services import (
    Context,
    Request,
    Response,
    ServiceLoadError,
    ServiceRegistry,
    ServiceResultError,
    call_service,
    call_service_sync,
    check_services,
    load_object,
    load_services,
    parse_binding,
    service_result,
    trio_native,
)

pytestmark = pytest.mark.timeout(30)

BACKENDS = ["asyncio", "trio"]
HERE = "tests.transports.test_services_calls"

# --- services used by the tests (named by import path) ----------------------------------------

instances: list[object] = []


class Counter:
    """A binding class: instantiated once, keeps state across calls."""

    def __init__(self) -> None:
        instances.append(self)
        self.calls = 0

    def count(self, request: Request, env: Any, ctx: Context) -> dict[str, int]:
        self.calls += 1
        return {"calls": self.calls}


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("no database")


def fetch(request: Request, env: Any, ctx: Context) -> str:
    """This module itself is a service (``pkg.module`` form)."""
    return f"module fetch {request.method}"


class Bindings:
    """Sync and async functions for the calling tests."""

    def echo(self, request: Request, env: Any, ctx: Context) -> dict[str, object]:
        return {
            "method": request.method,
            "path": request.path,
            "params": dict(request.params),
            "q": request.query.get("q"),
            "all_q": request.query.get_all("q"),
            "accept": request.headers.get("ACCEPT"),
            "json": request.json(),
            "env": env.get("GREETING"),
            "route": [ctx.route.method, ctx.route.path],
            "claims": None if ctx.claims is None else dict(ctx.claims),
            "stage": ctx.stage,
            "thread": threading.current_thread().name,
        }

    def sleepy(self, request: Request, env: Any, ctx: Context) -> str:
        time.sleep(0.3)
        return "slept"

    def too_slow(self, request: Request, env: Any, ctx: Context) -> str:
        time.sleep(1.0)
        return "late"

    async def async_echo(self, request: Request, env: Any, ctx: Context) -> Response:
        await asyncio.sleep(0.01)
        return Response(request.body, status=201, headers={"x-kind": "async"})

    async def async_too_slow(self, request: Request, env: Any, ctx: Context) -> str:
        await asyncio.sleep(5)
        return "late"

    def boom(self, request: Request, env: Any, ctx: Context) -> None:
        raise KeyError("missing-key")

    async def async_boom(self, request: Request, env: Any, ctx: Context) -> None:
        raise ValueError("bad\nsecond line")

    def exits(self, request: Request, env: Any, ctx: Context) -> None:
        raise SystemExit(3)

    def returns_object(self, request: Request, env: Any, ctx: Context) -> object:
        return object()

    def returns_coroutine(self, request: Request, env: Any, ctx: Context) -> Any:
        async def later() -> str:
            await asyncio.sleep(0)
            return "from a coroutine"

        return later()

    def mutate(self, request: Request, env: Any, ctx: Context) -> str:
        failures = []
        attempts: list[Callable[[], object]] = [
            lambda: setattr(request, "method", "DELETE"),
            lambda: request.headers.__setitem__("x", "y"),  # type: ignore[attr-defined]
            lambda: request.params.__setitem__("id", "2"),  # type: ignore[attr-defined]
            lambda: env.__setitem__("GREETING", "changed"),
            lambda: ctx.claims["sub"].__class__,  # reading is fine
            lambda: ctx.claims.__setitem__("sub", "root"),  # type: ignore[union-attr]
            lambda: ctx.claims["roles"].append("admin"),  # type: ignore[index]
            lambda: setattr(ctx, "stage", "integration"),
        ]
        for attempt in attempts:
            try:
                attempt()
            except (AttributeError, TypeError, attrs.exceptions.FrozenInstanceError):
                failures.append("refused")
            else:
                failures.append("allowed")
        data = request.json()
        data["mutated"] = True  # a fresh copy: harmless
        return ",".join(failures) + f";{request.json()}"


class AsyncioStreams:
    """An asyncio-native binding: asyncio streams over loopback and asyncio.sleep."""

    async def roundtrip(self, request: Request, env: Any, ctx: Context) -> dict[str, str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            await asyncio.sleep(0.01)
            writer.write(line.upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request.body + b"\n")
        await writer.drain()
        answer = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        return {"echo": answer.decode().strip(), "library": "asyncio"}


class TrioNative:
    @trio_native
    async def nap(self, request: Request, env: Any, ctx: Context) -> str:
        await trio.sleep(0.01)
        return "trio"


# --- helpers --------------------------------------------------------------------------------------


def action(
    function: str,
    *,
    target: str = "B",
    kind: ServiceKind = ServiceKind.BINDING,
    body: bytes = b'{"n":1}',
    timeout: float = 5.0,
    claims: str | None = None,
) -> CallService:
    return CallService(
        request_id=7,
        kind=kind,
        target=target,
        alias="b",
        function=function,
        stage=ServiceStage.INTEGRATION,
        request=ServiceRequest(
            method="POST",
            url="http://api.test/orders/42?q=a+b&q=2",
            path="/orders/42",
            params=(("id", "42"),),
            query=(("q", "a b"), ("q", "2")),
            headers=(("accept", "text/html"), ("accept", "application/json")),
            body=body,
        ),
        context=ServiceContext(route_method="POST", route_path="/orders/{id}", claims=claims),
        timeout=timeout,
    )


REGISTRY = ServiceRegistry(
    bindings={
        "B": Bindings(),
        "STREAMS": AsyncioStreams(),
        "TRIO": TrioNative(),
    }
)
ENV = {"GREETING": "hello"}


def run(backend: str, coroutine_function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return anyio.run(coroutine_function, backend=backend)


def call(backend: str, act: CallService, registry: ServiceRegistry = REGISTRY) -> Any:
    async def main() -> Any:
        return await call_service(act, registry, env=ENV, clock=lambda: 123.0)

    return run(backend, main)


def value_of(event: object) -> object:
    assert isinstance(event, ServiceReturned), event
    assert event.kind is ServiceResultKind.JSON
    return json.loads(event.value)


# --- loading --------------------------------------------------------------------------------------


def test_an_import_path_names_a_class_which_is_instantiated_once() -> None:
    before = len(instances)
    config = compile_config(
        {
            "serviceBindings": [{"alias": "c", "binding": "COUNTER"}],
            "paths": [
                {
                    "method": "GET",
                    "path": "/c",
                    "integration": {"type": "service_binding", "binding": "c", "function": "count"},
                }
            ],
        },
        env={},
    ).config
    registry = load_services(config, binding_specs=[f"COUNTER={HERE}:Counter"])
    assert len(instances) == before + 1
    assert check_services(config, registry) == []
    act = action("count", target="COUNTER")
    assert value_of(call("asyncio", act, registry)) == {"calls": 1}
    assert value_of(call("trio", act, registry)) == {"calls": 2}
    assert len(instances) == before + 1


def test_a_module_import_path_is_the_module_itself() -> None:
    module = load_object(HERE)
    assert module is __import__(HERE, fromlist=["fetch"])
    assert load_object(f"{HERE}:Bindings.echo") is Bindings.echo


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ENDPOINT1 = """
from transports._services import Response

def fetch(request, env, ctx):
    return Response("Hello from Worker 1!", headers={"content-type": "text/plain"})

class Worker:
    def fetch(self, request, env, ctx):
        return {"worker": True}
"""


def test_a_file_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "services" / "endpoint1.py", ENDPOINT1)
    config_path = tmp_path / "conf" / "api-config.json"
    raw = {
        "services": [
            {"alias": "endpoint1", "entrypoint": "./services/endpoint1"},
            {"alias": "worker", "entrypoint": "./services/endpoint1.py:Worker"},
            {"alias": "missing", "entrypoint": "./services/nothing"},
        ],
        "paths": [],
    }
    config = compile_config(raw, env={}).config
    registry = load_services(config, config_path=config_path)
    assert set(registry.services) == {"./services/endpoint1", "./services/endpoint1.py:Worker"}
    worker = registry.services["./services/endpoint1.py:Worker"]
    assert type(worker).__name__ == "Worker"  # the class, instantiated
    [problem] = check_services(config, registry)
    assert problem.pointer == "/services/2/entrypoint"
    expected = str(tmp_path / "conf" / "services" / "nothing.py")
    assert f"cannot load it: no file {expected}" in problem.message
    assert problem.message.endswith("its routes answer 500")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_package_xyz.mod:obj", "no module named 'no_such_package_xyz'"),
        (f"{HERE}:Nope", "has no attribute 'Nope'"),
        (f"{HERE}:Broken", "instantiating Broken() raised RuntimeError: no database"),
        ("not a path!", "is neither an import path nor a file path"),
    ],
)
def test_load_errors_say_why(reference: str, message: str) -> None:
    with pytest.raises(ServiceLoadError, match=re.escape(message)):
        load_object(reference)


def test_a_file_that_raises_on_import(tmp_path: Path) -> None:
    write(tmp_path / "bad.py", "raise ImportError('needs a driver')\n")
    with pytest.raises(ServiceLoadError, match=r"loading .*bad.py raised ImportError: needs a"):
        load_object("./bad", base_dir=tmp_path)


def test_search_path_makes_local_modules_importable(tmp_path: Path) -> None:
    write(
        tmp_path / "local_guard_mod.py",
        "class Guard:\n    def check(self, r, e, c):\n        return True\n",
    )
    config = compile_config({"paths": []}, env={}).config
    registry = load_services(
        config, binding_specs=["GUARD=local_guard_mod:Guard"], search_path=[tmp_path]
    )
    assert type(registry.bindings["GUARD"]).__name__ == "Guard"


def test_binding_problems_are_reported_with_pointers() -> None:
    raw = {
        "serviceBindings": [
            {"alias": "guard", "binding": "GUARD"},
            {"alias": "target", "binding": "TARGET"},
            {"alias": "broken", "binding": "BROKEN"},
        ],
        "paths": [
            {
                "method": "GET",
                "path": "/a",
                "integration": {"type": "service_binding", "binding": "target", "function": "nope"},
                "pre_process": {"binding": "guard", "function": "check"},
            }
        ],
    }
    config = compile_config(raw, env={}).config
    registry = load_services(
        config,
        binding_specs=[
            f"TARGET={HERE}:Bindings",
            f"BROKEN={HERE}:Broken",
            f"EXTRA={HERE}:Bindings",
        ],
    )
    found = {d.pointer: d.message for d in check_services(config, registry)}
    assert found == {
        "/serviceBindings/0/binding": "binding 'GUARD' was not provided "
        "(sapg serve --binding GUARD=pkg.module:object); its routes answer 500",
        "/serviceBindings/2/binding": f"cannot load {HERE}:Broken: instantiating Broken() "
        "raised RuntimeError: no database; its routes answer 500",
        "/paths/0/integration/function": "binding 'TARGET' has no callable 'nope'; "
        "its routes answer 500",
        "/serviceBindings": "binding 'EXTRA' was provided but no serviceBindings entry names it",
    }


def test_binding_objects_from_the_embedding_api() -> None:
    config = compile_config(
        {"serviceBindings": [{"alias": "g", "binding": "GUARD"}], "paths": []}, env={}
    ).config
    registry = load_services(config, bindings={"GUARD": Counter})
    assert isinstance(registry.bindings["GUARD"], Counter)
    assert check_services(config, registry) == []


@pytest.mark.parametrize("spec", ["NAME", "=x:y", "NAME=", "1X=a:b", "a b=c:d"])
def test_malformed_binding_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape("NAME=pkg.module:object")):
        parse_binding(spec)
    assert parse_binding(" GUARD = pkg.mod:obj ") == ("GUARD", "pkg.mod:obj")


# --- calling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sync_service_gets_read_only_views_and_runs_in_a_worker_thread(backend: str) -> None:
    claims = json.dumps({"sub": "user-1", "roles": ["a"]})
    got = value_of(call(backend, action("echo", claims=claims)))
    assert isinstance(got, dict)
    thread = got.pop("thread")
    assert thread != threading.main_thread().name
    assert got == {
        "method": "POST",
        "path": "/orders/42",
        "params": {"id": "42"},
        "q": "a b",
        "all_q": ["a b", "2"],
        "accept": "text/html, application/json",
        "json": {"n": 1},
        "env": "hello",
        "route": ["POST", "/orders/{id}"],
        "claims": {"sub": "user-1", "roles": ["a"]},
        "stage": "integration",
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sync_service_does_not_block_the_loop(backend: str) -> None:
    async def main() -> tuple[object, int]:
        ticks = 0
        result: object = None

        async def ticker() -> None:
            nonlocal ticks
            while result is None:
                ticks += 1
                await anyio.sleep(0.01)

        async def caller() -> None:
            nonlocal result
            result = await call_service(action("sleepy"), REGISTRY, env=ENV)

        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            group.start_soon(caller)
        return result, ticks

    result, ticks = run(backend, main)
    assert isinstance(result, ServiceReturned) and result.body == b"slept"
    assert ticks >= 10  # the loop kept running while the thread slept 0.3 s


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_async_service_is_awaited(backend: str) -> None:
    event = call(backend, action("async_echo", body=b"payload"))
    assert isinstance(event, ServiceReturned)
    assert (event.kind, event.status, event.body) == (ServiceResultKind.RESPONSE, 201, b"payload")
    assert event.headers == (("x-kind", "async"),)
    assert (event.request_id, event.now) == (7, 123.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sync_function_returning_a_coroutine(backend: str) -> None:
    event = call(backend, action("returns_coroutine"))
    assert isinstance(event, ServiceReturned) and event.body == b"from a coroutine"


def test_asyncio_native_code_runs_under_trio_through_trio_asyncio() -> None:
    act = action("roundtrip", target="STREAMS", body=b"ping")

    async def with_driver_loop() -> Any:  # how a driver runs: one loop for the server
        async with trio_asyncio.open_loop():
            first = await call_service(act, REGISTRY, env=ENV)
            second = await call_service(act, REGISTRY, env=ENV)
        return first, second

    first, second = trio.run(with_driver_loop)
    assert value_of(first) == value_of(second) == {"echo": "PING", "library": "asyncio"}
    # Without a loop opened by the driver, one is opened for the call.
    assert value_of(call("trio", act)) == {"echo": "PING", "library": "asyncio"}
    assert value_of(call("asyncio", act)) == {"echo": "PING", "library": "asyncio"}


def test_trio_native_code_is_awaited_on_trio() -> None:
    event = call("trio", action("nap", target="TRIO"))
    assert isinstance(event, ServiceReturned) and event.body == b"trio"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function", ["too_slow", "async_too_slow"])
def test_a_time_limit(backend: str, function: str) -> None:
    started = time.monotonic()
    event = call(backend, action(function, timeout=0.2))
    assert time.monotonic() - started < 0.9
    assert isinstance(event, ActionFailed)
    assert (event.reason, event.detail) == (FailureReason.TIMEOUT, "over 0.2 s")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("function", "detail"),
    [
        ("boom", "KeyError: 'missing-key'"),
        ("async_boom", "ValueError: bad"),
        ("exits", "SystemExit: 3"),
        ("returns_object", "returned a object is not a result or a response"),
        ("nope", "binding 'B' has no callable 'nope'"),
    ],
)
def test_failures_are_service_errors_and_tracebacks_stay_in_the_log(
    backend: str, function: str, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="sapg"):
        event = call(backend, action(function))
    assert isinstance(event, ActionFailed)
    assert (event.reason, event.detail) == (FailureReason.SERVICE_ERROR, detail)
    assert "\n" not in event.detail
    if function in ("boom", "async_boom"):
        [record] = [r for r in caplog.records if r.exc_info]
        assert f"Bindings.{function}" not in event.detail
        assert record.exc_info is not None and record.exc_info[0] in (KeyError, ValueError)


def test_code_that_was_not_loaded_fails_with_the_reason() -> None:
    registry = ServiceRegistry(
        failures={(ServiceKind.SERVICE, "./x"): "cannot load it: no file /srv/x.py"}
    )
    event = call("asyncio", action("fetch", kind=ServiceKind.SERVICE, target="./x"), registry)
    assert isinstance(event, ActionFailed)
    assert event.detail == "cannot load it: no file /srv/x.py"
    event = call("asyncio", action("f", target="GONE"), registry)
    assert isinstance(event, ActionFailed)
    assert event.detail == "binding 'GONE' was not provided (--binding GONE=pkg.mod:obj)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_services_cannot_change_what_they_were_given(backend: str) -> None:
    claims = json.dumps({"sub": "user-1", "roles": ["a"]})
    act = action("mutate", claims=claims)
    event = call(backend, act)
    assert isinstance(event, ServiceReturned)
    assert event.body.decode() == (
        "refused,refused,refused,refused,allowed,refused,refused,refused;{'n': 1}"
    )
    assert act.request.body == b'{"n":1}' and act.context.claims == claims
    assert ENV == {"GREETING": "hello"}


# --- the blocking entry point ---------------------------------------------------------------------


class LoopWitness:
    async def loop_id(self, request: Request, env: Any, ctx: Context) -> int:
        return id(asyncio.get_running_loop())

    def sync(self, request: Request, env: Any, ctx: Context) -> str:
        return threading.current_thread().name

    def slow(self, request: Request, env: Any, ctx: Context) -> str:
        time.sleep(1)
        return "late"


def test_call_service_sync_keeps_one_loop_and_works_from_many_threads() -> None:
    registry = ServiceRegistry(bindings={"W": LoopWitness()})
    try:
        first = value_of(call_service_sync(action("loop_id", target="W"), registry, env=ENV))
        second = value_of(call_service_sync(action("loop_id", target="W"), registry, env=ENV))
        assert first == second
        results: list[object] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    call_service_sync(action("sync", target="W"), registry, env=ENV)
                )
            )
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 8 and all(isinstance(r, ServiceReturned) for r in results)
        slow = call_service_sync(action("slow", target="W", timeout=0.1), registry, env=ENV)
        assert isinstance(slow, ActionFailed) and slow.reason is FailureReason.TIMEOUT
    finally:
        registry.close()


# --- results --------------------------------------------------------------------------------------


class Duck:
    status_code = 202
    headers = [(b"X-Duck", b"quack")]
    content = b"duck body"


RESULT_CASES: list[tuple[object, dict[str, object]]] = [
    (None, {"kind": ServiceResultKind.NONE}),
    ("héllo", {"kind": ServiceResultKind.TEXT, "body": "héllo".encode()}),
    (b"\x00raw", {"kind": ServiceResultKind.TEXT, "body": b"\x00raw"}),
    (True, {"kind": ServiceResultKind.JSON, "value": "true"}),
    (5, {"kind": ServiceResultKind.JSON, "value": "5"}),
    (2.0, {"kind": ServiceResultKind.JSON, "value": "2"}),
    (float("nan"), {"kind": ServiceResultKind.JSON, "value": "0"}),
    ({"a": (1, 2), 3: None}, {"kind": ServiceResultKind.JSON, "value": '{"a":[1,2],"3":null}'}),
    (MappingProxyType({"k": "v"}), {"kind": ServiceResultKind.JSON, "value": '{"k":"v"}'}),
    ([{"x": float("inf")}], {"kind": ServiceResultKind.JSON, "value": '[{"x":null}]'}),
    (
        Response("text"),
        {
            "kind": ServiceResultKind.RESPONSE,
            "status": 200,
            "headers": (("content-type", "text/plain;charset=UTF-8"),),
            "body": b"text",
        },
    ),
    (
        Response(b"\x01", status=418, headers=[("X-A", "1")]),
        {
            "kind": ServiceResultKind.RESPONSE,
            "status": 418,
            "headers": (("x-a", "1"),),
            "body": b"\x01",
        },
    ),
    (
        Response.json({"ok": 1.0}, status=201),
        {
            "kind": ServiceResultKind.RESPONSE,
            "status": 201,
            "headers": (("content-type", "application/json"),),
            "body": b'{"ok":1}',
        },
    ),
    (
        Duck(),
        {
            "kind": ServiceResultKind.RESPONSE,
            "status": 202,
            "headers": (("x-duck", "quack"),),
            "body": b"duck body",
        },
    ),
]


@pytest.mark.parametrize(("value", "fields"), RESULT_CASES)
def test_return_values_become_events(value: object, fields: dict[str, object]) -> None:
    assert service_result(value, request_id=1, now=2.0) == ServiceReturned(
        request_id=1,
        now=2.0,
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("value", [object(), {"a": {1, 2}}, [b"bytes in json"], {(1, 2): "k"}])
def test_values_that_are_not_results(value: object) -> None:
    with pytest.raises(ServiceResultError):
        service_result(value, request_id=1, now=2.0)


def test_a_response_with_an_impossible_status_is_refused() -> None:
    with pytest.raises(ServiceResultError, match="not a usable response"):
        service_result(Response(status=1000), request_id=1, now=0.0)


# --- the whole loop, without sockets -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_case_76_through_the_core_and_back(tmp_path: Path, backend: str) -> None:
    write(tmp_path / "services" / "endpoint1.py", ENDPOINT1)
    raw = {
        "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
        "paths": [
            {
                "method": "GET",
                "path": "/service",
                "integration": {"type": "service", "binding": "endpoint1"},
            }
        ],
    }
    config = compile_config(raw, env={}).config
    registry = load_services(config, config_path=tmp_path / "api-config.json")
    gateway = Gateway(config)

    async def main() -> list[object]:
        event = RequestReceived(request_id=1, method="GET", target="/service", headers=(), now=0.0)
        [act] = gateway.handle(event)
        assert isinstance(act, CallService)
        outcome = await call_service(act, registry, env={})
        return list(gateway.handle(outcome))

    [answer] = run(backend, main)
    assert isinstance(answer, Respond)
    assert (answer.status, answer.body) == (200, b"Hello from Worker 1!")
    assert ("content-type", "text/plain") in answer.headers
    assert ("x-powered-by", "sapg") in answer.headers


# --- the documentation's examples run as written ----------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"<!-- (file: (?P<file>\S+)|run|output) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)


def doc_blocks(name: str) -> tuple[dict[str, str], list[str], list[str]]:
    """The ``<!-- file: X -->``, ``<!-- run -->`` and ``<!-- output -->`` blocks of a doc."""
    files: dict[str, str] = {}
    runs: list[str] = []
    outputs: list[str] = []
    for match in _BLOCK.finditer((ROOT / "docs" / name).read_text()):
        if match.group("file"):
            files[match.group("file")] = match.group("body")
        elif match.group(0).startswith("<!-- run"):
            runs.append(match.group("body"))
        else:
            outputs.append(match.group("body"))
    return files, runs, outputs


def test_the_services_doc_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files, [program], [output] = doc_blocks("services.md")
    assert set(files) == {"api-config.json", "services/hello.py", "services/orders.py"}
    for name, text in files.items():
        write(tmp_path / name, text)
    monkeypatch.chdir(tmp_path)
    exec(compile(program, "docs/services.md", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out == output


# --- through `sapg serve` ------------------------------------------------------------------------


@pytest.mark.network
def test_sapg_serve_runs_bindings_and_hooks_under_trio(tmp_path: Path, serve: Any) -> None:
    write(tmp_path / "services" / "endpoint1.py", ENDPOINT1)
    config = {
        "services": [{"alias": "endpoint1", "entrypoint": "./services/endpoint1"}],
        "serviceBindings": [{"alias": "streams", "binding": "STREAMS"}],
        "paths": [
            {
                "method": "GET",
                "path": "/service",
                "integration": {"type": "service", "binding": "endpoint1"},
            },
            {
                "method": "POST",
                "path": "/roundtrip",
                "integration": {
                    "type": "service_binding",
                    "binding": "streams",
                    "function": "roundtrip",
                },
            },
        ],
    }
    config_path = tmp_path / "api-config.json"
    config_path.write_text(json.dumps(config))
    gateway = serve(
        args=[
            "--config",
            str(config_path),
            "--transport",
            "trio",
            "--binding",
            f"STREAMS={HERE}:AsyncioStreams",
        ]
    )
    status, headers, body = gateway.request("GET", "/service")
    assert (status, body) == (200, b"Hello from Worker 1!")
    assert headers["content-type"] == "text/plain"
    status, _, body = gateway.request("POST", "/roundtrip", body=b"ping")
    assert status == 200
    assert json.loads(body)["data"] == {"echo": "PING", "library": "asyncio"}
