"""Services and service bindings: loading Python code and carrying out ``CallService``.

Theory of operation
-------------------
The core asks for a call with a :class:`sapg_core.CallService` action; this module does it.

*Loading*, once, at start-up (:func:`load_services`):

- ``services[].entrypoint`` names code: an import path, ``pkg.module:attr`` (``attr`` may be
  dotted) or ``pkg.module`` (the module itself), or a file path relative to the config file
  in the original's form, ``./services/endpoint1`` being ``services/endpoint1.py`` beside the
  config (``.py`` may be written; ``:attr`` may follow). The object must have ``fetch``.
- ``serviceBindings[].binding`` names an object provided at start-up: ``NAME=pkg.mod:obj``
  strings (``sapg serve --binding``) or objects (the embedding API). The route's ``function``
  is an attribute of it.
- A class is instantiated once, with no arguments.
- Code that cannot be loaded is recorded, not raised: :func:`check_services` reports it (a
  warning from ``sapg check`` and at start-up; fatal under strict mode) and its calls fail
  (``ActionFailed(SERVICE_ERROR)``: the core answers 500).

*Calling* (:func:`call_service` under trio or asyncio, :func:`call_service_sync` for the
blocking driver): the callable gets ``(request, env, ctx)``, three read-only objects built
fresh for each call (:class:`Request`, a read-only ``env`` mapping, :class:`Context`). Sync
callables run in a worker thread (never on the event loop); coroutine functions are awaited.
Under trio, coroutines run on the trio-asyncio loop (most async libraries are asyncio's),
unless the callable is marked :func:`trio_native`. The action's ``timeout`` bounds the call
(``ActionFailed(TIMEOUT)``: 504); a raise is ``ActionFailed(SERVICE_ERROR)`` with a one-line
detail, and the traceback goes to the ``sapg`` logger only. The return value becomes a
:class:`sapg_core.ServiceReturned` by :func:`service_result`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import attrs
import sniffio

from sapg_core import (
    ActionFailed,
    CallService,
    Diagnostic,
    Event,
    FailureReason,
    GatewayConfig,
    ServiceKind,
    ServiceResultKind,
    ServiceReturned,
    Severity,
    dumps,
)

__all__ = [
    "Context",
    "HeaderMap",
    "QueryParams",
    "Request",
    "Response",
    "RouteInfo",
    "ServiceLoadError",
    "ServiceRegistry",
    "ServiceResultError",
    "call_service",
    "call_service_sync",
    "check_services",
    "load_object",
    "load_services",
    "parse_binding",
    "service_result",
    "trio_native",
]

logger = logging.getLogger("sapg")

_F = TypeVar("_F", bound=Callable[..., Any])
_MISSING: Final = object()
_BINDING_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMPORT_PATH: Final = re.compile(r"[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?")
_TEXT_PLAIN: Final = ("content-type", "text/plain;charset=UTF-8")
_NON_WORD: Final = re.compile(r"\W")
_ATTRIBUTE: Final = re.compile(r"[A-Za-z_][\w.]*")
#: Extra seconds the blocking driver waits past ``timeout`` for a call that blocks its loop.
_SYNC_GRACE: Final = 5.0


class ServiceLoadError(Exception):
    """Code named by the config or ``--binding`` cannot be loaded (or lacks the function)."""


class ServiceResultError(Exception):
    """A service returned something that is not a result (see :func:`service_result`)."""


# --- what services receive ----------------------------------------------------------------------


class HeaderMap(Mapping[str, str]):
    """Read-only request headers; names are case-insensitive.

    ``headers["accept"]`` and ``.get`` give all fields of that name joined by ``", "`` (as
    Fetch's ``Headers.get``); :meth:`get_all` gives them one by one; :attr:`raw` is the list
    as received (lower-cased names).
    """

    __slots__ = ("_joined", "raw")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.raw: tuple[tuple[str, str], ...] = tuple((k.lower(), v) for k, v in pairs)
        joined: dict[str, str] = {}
        for name, value in self.raw:
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        self._joined = joined

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.raw if key == name]

    def __repr__(self) -> str:
        return f"HeaderMap({list(self.raw)!r})"


class QueryParams(Mapping[str, str]):
    """The decoded query, read-only: ``query["q"]`` is the first value (``URLSearchParams.get``),
    :meth:`get_all` every value, :attr:`raw` the ``(name, value)`` pairs in order."""

    __slots__ = ("_first", "raw")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.raw: tuple[tuple[str, str], ...] = tuple(pairs)
        first: dict[str, str] = {}
        for name, value in self.raw:
            first.setdefault(name, value)
        self._first = first

    def __getitem__(self, name: str) -> str:
        return self._first[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.raw if key == name]

    def __repr__(self) -> str:
        return f"QueryParams({list(self.raw)!r})"


@attrs.frozen(kw_only=True)
class Request:
    """The client's request as a service sees it. Read-only; a fresh copy for each call.

    Fields:
        method: e.g. ``"POST"``.
        url: the absolute URL, ``scheme://host/path?query``.
        path: the path, still percent-encoded.
        params: the matched route's path parameters (``{id}`` segments), by name.
        query: the decoded query (:class:`QueryParams`).
        headers: :class:`HeaderMap`, case-insensitive.
        body: the whole body as bytes (``b""`` when there is none).
    """

    method: str
    url: str
    path: str
    params: Mapping[str, str]
    query: QueryParams
    headers: HeaderMap
    body: bytes

    def text(self) -> str:
        """The body decoded as UTF-8 (bad bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON, a new object on every call.

        Raises:
            ValueError: the body is not JSON.
        """
        return json.loads(self.text().removeprefix("\ufeff"))


@attrs.frozen(kw_only=True)
class RouteInfo:
    """The route the request matched, as configured."""

    method: str
    path: str


@attrs.frozen(kw_only=True)
class Context:
    """What the gateway decided about the request. Read-only; never the config or secrets.

    Fields:
        route: the matched route.
        claims: the verified token's claims (read-only: mappings and tuples), or ``None``
            when the route has no ``auth``.
        stage: ``"integration"``, ``"pre_process"`` or ``"post_process"``.
        alias: the config alias that named this service or binding.
        request_id: the request's ``X-Request-Id`` (the client's valid one, else the
            gateway's): the id the upstream, the answer and the logs carry.
    """

    route: RouteInfo
    claims: Mapping[str, Any] | None
    stage: str
    alias: str
    request_id: str = ""


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


def make_request(action: CallService) -> Request:
    """The :class:`Request` a service receives for ``action``."""
    snapshot = action.request
    return Request(
        method=snapshot.method,
        url=snapshot.url,
        path=snapshot.path,
        params=MappingProxyType(dict(snapshot.params)),
        query=QueryParams(snapshot.query),
        headers=HeaderMap(snapshot.headers),
        body=snapshot.body,
    )


def make_context(action: CallService, *, request_id: str = "") -> Context:
    """The :class:`Context` a service receives for ``action`` (``request_id``: the request's
    ``X-Request-Id``, which the driver knows)."""
    context = action.context
    claims = None if context.claims is None else _frozen(json.loads(context.claims))
    return Context(
        route=RouteInfo(method=context.route_method, path=context.route_path),
        claims=claims,
        stage=action.stage.value,
        alias=action.alias,
        request_id=request_id,
    )


# --- what services return -----------------------------------------------------------------------


def _header_pairs(headers: object) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    items = headers.items() if hasattr(headers, "items") else headers
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ServiceResultError(f"headers must be a mapping or pairs, not {type(headers)}")
    pairs = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise ServiceResultError(f"a header is not a (name, value) pair: {item!r}") from None
        pairs.append((_latin1(name), _latin1(value)))
    return tuple(pairs)


def _latin1(text: object) -> str:
    if isinstance(text, bytes):
        return text.decode("latin-1")
    if isinstance(text, str):
        return text
    raise ServiceResultError(f"a header name or value is a {type(text).__name__}, not a str")


def _body_bytes(body: object) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return _utf8(body)
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise ServiceResultError(f"a response body is a {type(body).__name__}, not str or bytes")


def _utf8(text: str) -> bytes:
    """UTF-8, lone surrogates replaced (as a JavaScript string becomes bytes)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


@attrs.frozen(init=False)
class Response:
    """A service's answer with its own status, headers and body (returned as it is).

    ``Response("hi")`` is a 200 ``text/plain;charset=UTF-8`` answer (a ``str`` body gets that
    ``Content-Type`` unless one is given, as a Fetch ``Response`` does); bytes bodies get none.
    :meth:`json` builds a JSON answer. Objects of other types with ``status`` (or
    ``status_code``), ``headers`` and ``body`` (or ``content``) attributes are accepted too.

    Args:
        body: ``str`` (UTF-8), ``bytes`` or ``None``.
        status: 200-599 (the core refuses others with a 500, as Fetch refuses them).
        headers: a mapping or ``(name, value)`` pairs.
    """

    body: bytes
    status: int
    headers: tuple[tuple[str, str], ...]

    def __init__(
        self,
        body: str | bytes | None = None,
        *,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        pairs = _header_pairs(headers)
        if isinstance(body, str) and not any(name.lower() == "content-type" for name, _ in pairs):
            pairs = (*pairs, _TEXT_PLAIN)
        self.__attrs_init__(body=_body_bytes(body), status=status, headers=pairs)

    @classmethod
    def json(
        cls,
        value: object,
        *,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Response:
        """A JSON answer: ``value`` serialised as JavaScript's ``JSON.stringify`` would."""
        pairs = _header_pairs(headers)
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs = (*pairs, ("content-type", "application/json"))
        return cls(dumps(_plain_json(value)), status=status, headers=pairs)


def _plain_json(value: object) -> object:
    """``value`` as plain JSON containers (dict, list, str, number, bool, None)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON.stringify writes null
    if isinstance(value, Mapping):
        return {_json_key(key): _plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(item) for item in value]
    raise ServiceResultError(f"a {type(value).__name__} is not JSON")


def _json_key(key: object) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    raise ServiceResultError(f"a {type(key).__name__} is not a JSON object key")


def _as_response(value: object) -> tuple[int, tuple[tuple[str, str], ...], bytes] | None:
    status = getattr(value, "status", _MISSING)
    if status is _MISSING:
        status = getattr(value, "status_code", _MISSING)
    if not isinstance(status, int) or isinstance(status, bool):
        return None
    body = getattr(value, "body", _MISSING)
    if body is _MISSING:
        body = getattr(value, "content", None)
    return status, _header_pairs(getattr(value, "headers", None)), _body_bytes(body)


def service_result(value: object, *, request_id: int, now: float) -> ServiceReturned:
    """A service's Python return value as the core's :class:`ServiceReturned`.

    ==============================================  ===========================================
    value                                           kind
    ==============================================  ===========================================
    ``None``                                        ``NONE`` (the original's ``undefined``)
    ``str``, ``bytes``                              ``TEXT``
    ``dict``/``Mapping``, ``list``/``tuple``,       ``JSON`` (``True`` is ``true``)
    ``int``, ``float``, ``bool``
    :class:`Response`, or an object with            ``RESPONSE``
    ``status``/``status_code``, ``headers`` and
    ``body``/``content``
    ==============================================  ===========================================

    Raises:
        ServiceResultError: anything else, or a container holding something that is not JSON.
    """
    common: dict[str, Any] = {"request_id": request_id, "now": now}
    if value is None:
        return ServiceReturned(kind=ServiceResultKind.NONE, **common)
    if isinstance(value, Response):
        return _response_result(value.status, value.headers, value.body, common)
    if isinstance(value, str | bytes | bytearray | memoryview):
        return ServiceReturned(kind=ServiceResultKind.TEXT, body=_body_bytes(value), **common)
    if isinstance(value, bool | int | float | Mapping | list | tuple):
        if isinstance(value, float) and not math.isfinite(value):
            value = 0  # still a number: JSON has no NaN, and the answer is the same
        try:
            text = dumps(_plain_json(value)).decode("utf-8", "surrogatepass")
        except RecursionError:
            raise ServiceResultError("the value is nested too deeply") from None
        return ServiceReturned(kind=ServiceResultKind.JSON, value=text, **common)
    found = _as_response(value)
    if found is None:
        raise ServiceResultError(f"a {type(value).__name__} is not a result or a response")
    return _response_result(*found, common)


def _response_result(
    status: int, headers: tuple[tuple[str, str], ...], body: bytes, common: dict[str, Any]
) -> ServiceReturned:
    try:
        return ServiceReturned(
            kind=ServiceResultKind.RESPONSE, status=status, headers=headers, body=body, **common
        )
    except (TypeError, ValueError) as exc:
        raise ServiceResultError(f"not a usable response: {exc}") from None


# --- loading ------------------------------------------------------------------------------------


def parse_binding(spec: str) -> tuple[str, str]:
    """``"NAME=pkg.mod:obj"`` (``sapg serve --binding``) as ``(NAME, "pkg.mod:obj")``.

    Raises:
        ValueError: not of that form.
    """
    name, sep, reference = spec.partition("=")
    name, reference = name.strip(), reference.strip()
    if not sep or not _BINDING_NAME.fullmatch(name) or not reference:
        raise ValueError(f"--binding wants NAME=pkg.module:object, not {spec!r}")
    return name, reference


def _is_file_reference(reference: str) -> bool:
    path = _split_attribute(reference)[0]
    return path.startswith(("./", "../", "/", "~")) or path.endswith(".py") or "/" in path


def _split_attribute(reference: str) -> tuple[str, str | None]:
    head, sep, attribute = reference.rpartition(":")
    if sep and _ATTRIBUTE.fullmatch(attribute) and head:
        return head, attribute
    return reference, None


def load_object(reference: str, *, base_dir: str | Path | None = None) -> object:
    """The object ``reference`` names; a class is instantiated once with no arguments.

    ``reference`` is an import path (``pkg.mod:attr``, ``pkg.mod``) or a file path, relative
    to ``base_dir`` (default: the working directory): ``./services/endpoint1`` is
    ``services/endpoint1.py`` (or the package ``services/endpoint1/``); ``:attr`` may follow.

    Raises:
        ServiceLoadError: with the reason (no such file or module, the import raised, no such
            attribute, the class could not be instantiated).
    """
    location, attribute = _split_attribute(reference)
    if _is_file_reference(reference):
        target: object = _load_file(location, Path(base_dir) if base_dir is not None else None)
    elif _IMPORT_PATH.fullmatch(reference):
        target = _import(location)
    else:
        raise ServiceLoadError(f"{reference!r} is neither an import path nor a file path")
    for part in (attribute or "").split(".") if attribute else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ServiceLoadError(f"{location} has no attribute {attribute!r}") from None
    if isinstance(target, type):
        cls = target
        try:
            target = cls()
        except Exception as exc:
            logger.debug("instantiating %s failed", reference, exc_info=True)
            message = f"instantiating {cls.__name__}() raised {_one_line(exc)}"
            raise ServiceLoadError(message) from None
    return target


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ServiceLoadError(f"no module named {exc.name!r}") from None
        logger.debug("importing %s failed", module_name, exc_info=True)
        raise ServiceLoadError(f"importing {module_name} raised {_one_line(exc)}") from None
    except Exception as exc:
        logger.debug("importing %s failed", module_name, exc_info=True)
        raise ServiceLoadError(f"importing {module_name} raised {_one_line(exc)}") from None


_FILE_MODULES: dict[Path, ModuleType] = {}


def _load_file(location: str, base_dir: Path | None) -> ModuleType:
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    path = path.resolve()
    candidates = [path] if path.suffix == ".py" else [Path(f"{path}.py"), path / "__init__.py"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ServiceLoadError(f"no file {candidates[0]}")
    cached = _FILE_MODULES.get(found)
    if cached is not None:
        return cached
    digest = hashlib.sha256(str(found).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    name = f"sapg_service_{_NON_WORD.sub('_', found.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, found)
    if spec is None or spec.loader is None:
        raise ServiceLoadError(f"{found} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        logger.debug("loading %s failed", found, exc_info=True)
        raise ServiceLoadError(f"loading {found} raised {_one_line(exc)}") from None
    _FILE_MODULES[found] = module
    return module


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@attrs.frozen(kw_only=True)
class _Failure:
    reason: str


class ServiceRegistry:
    """Loaded services and bindings, and why the others could not be loaded.

    Build it with :func:`load_services` (or directly, for tests and embedding).

    Args:
        services: entrypoint string -> object (with ``fetch``).
        bindings: binding name -> object.
        failures: ``(kind, target)`` -> why it cannot be loaded.
    """

    def __init__(
        self,
        *,
        services: Mapping[str, object] | None = None,
        bindings: Mapping[str, object] | None = None,
        failures: Mapping[tuple[ServiceKind, str], str] | None = None,
    ) -> None:
        self.services: Mapping[str, object] = MappingProxyType(dict(services or {}))
        self.bindings: Mapping[str, object] = MappingProxyType(dict(bindings or {}))
        self.failures: Mapping[tuple[ServiceKind, str], str] = MappingProxyType(
            dict(failures or {})
        )
        self._loop: _LoopThread | None = None
        self._loop_lock = threading.Lock()

    def resolve(self, kind: ServiceKind, target: str, function: str) -> Callable[..., Any]:
        """The callable for a ``CallService``.

        Raises:
            ServiceLoadError: not loaded (and why), or no callable ``function`` on it.
        """
        table = self.services if kind is ServiceKind.SERVICE else self.bindings
        found = table.get(target, _MISSING)
        if found is _MISSING:
            reason = self.failures.get((kind, target))
            if reason is None:
                reason = (
                    f"binding {target!r} was not provided (--binding {target}=pkg.mod:obj)"
                    if kind is ServiceKind.BINDING
                    else f"service {target!r} was not loaded"
                )
            raise ServiceLoadError(reason)
        callable_: Callable[..., Any] | None = getattr(found, function, None)
        if callable_ is None or not callable(callable_):
            raise ServiceLoadError(f"{_describe(kind, target)} has no callable {function!r}")
        return callable_

    def is_loaded(self, kind: ServiceKind, target: str) -> bool:
        table = self.services if kind is ServiceKind.SERVICE else self.bindings
        return target in table

    def has_callable(self, kind: ServiceKind, target: str, function: str) -> bool | None:
        """Whether ``target`` has ``function`` (``None``: ``target`` is not loaded)."""
        table = self.services if kind is ServiceKind.SERVICE else self.bindings
        found = table.get(target, _MISSING)
        if found is _MISSING:
            return None
        return callable(getattr(found, function, None))

    def _background_loop(self) -> _LoopThread:
        with self._loop_lock:
            if self._loop is None:
                self._loop = _LoopThread()
            return self._loop

    def close(self) -> None:
        """Stop the event-loop thread :func:`call_service_sync` started, if any."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()


def _describe(kind: ServiceKind, target: str) -> str:
    return f"service {target!r}" if kind is ServiceKind.SERVICE else f"binding {target!r}"


def load_services(
    config: GatewayConfig,
    *,
    config_path: str | Path | None = None,
    binding_specs: Iterable[str] = (),
    bindings: Mapping[str, object] | None = None,
    search_path: Sequence[str | Path] = (),
) -> ServiceRegistry:
    """Load every ``services[]`` entrypoint of ``config`` and the bindings provided.

    Args:
        config: the compiled config.
        config_path: the config file; file entrypoints are relative to its directory (to the
            working directory when there is none, e.g. an inline config).
        binding_specs: ``NAME=pkg.mod:obj`` strings (``sapg serve --binding``).
        bindings: binding objects by name (the embedding API); they win over specs.
        search_path: directories put in front of ``sys.path`` first (``sapg serve`` gives the
            working directory, as uvicorn does), so import paths can name local modules.

    Nothing raises for code that cannot be loaded: see :attr:`ServiceRegistry.failures` and
    :func:`check_services`.

    Raises:
        ValueError: a malformed ``binding_specs`` entry.
    """
    for directory in reversed([str(Path(d).resolve()) for d in search_path]):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    base_dir = Path(config_path).resolve().parent if config_path is not None else None
    loaded: dict[str, object] = {}
    failures: dict[tuple[ServiceKind, str], str] = {}
    for entry in config.services.values():
        if entry.entrypoint in loaded or (ServiceKind.SERVICE, entry.entrypoint) in failures:
            continue
        try:
            loaded[entry.entrypoint] = load_object(entry.entrypoint, base_dir=base_dir)
        except ServiceLoadError as exc:
            failures[(ServiceKind.SERVICE, entry.entrypoint)] = f"cannot load it: {exc}"
    objects: dict[str, object] = {}
    for name, reference in (parse_binding(spec) for spec in binding_specs):
        try:
            objects[name] = load_object(reference)
        except ServiceLoadError as exc:
            failures[(ServiceKind.BINDING, name)] = f"cannot load {reference}: {exc}"
    for name, value in (bindings or {}).items():
        failures.pop((ServiceKind.BINDING, name), None)
        objects[name] = value() if isinstance(value, type) else value
    return ServiceRegistry(services=loaded, bindings=objects, failures=failures)


def check_services(config: GatewayConfig, registry: ServiceRegistry) -> list[Diagnostic]:
    """Warnings for code the config names that cannot be called: not loaded, not provided,
    or without the function a route or hook names. ``sapg check`` and start-up print them;
    strict mode refuses to start on any."""
    found: list[Diagnostic] = []
    raw_services = config.raw.get("services")
    for index, alias in _aliases(raw_services):
        entry = config.services.get(alias)
        if entry is None or entry.alias != alias:
            continue
        pointer = f"/services/{index}/entrypoint"
        has = registry.has_callable(ServiceKind.SERVICE, entry.entrypoint, "fetch")
        if has is None:
            reason = registry.failures.get((ServiceKind.SERVICE, entry.entrypoint), "not loaded")
            found.append(_warning(pointer, f"{entry.entrypoint!r}: {reason}"))
        elif not has:
            found.append(
                _warning(pointer, f"{entry.entrypoint!r} has no callable fetch(request, env, ctx)")
            )
    named = set()
    for index, alias in _aliases(config.raw.get("serviceBindings")):
        binding = config.service_bindings.get(alias)
        if binding is None or binding.binding in named:
            continue
        named.add(binding.binding)
        if not registry.is_loaded(ServiceKind.BINDING, binding.binding):
            reason = registry.failures.get(
                (ServiceKind.BINDING, binding.binding),
                f"binding {binding.binding!r} was not provided "
                f"(sapg serve --binding {binding.binding}=pkg.module:object)",
            )
            found.append(_warning(f"/serviceBindings/{index}/binding", reason))
    found.extend(_missing_functions(config, registry))
    for name in sorted(set(registry.bindings) - named):
        message = f"binding {name!r} was provided but no serviceBindings entry names it"
        found.append(
            Diagnostic(severity=Severity.WARNING, pointer="/serviceBindings", message=message)
        )
    return found


def _aliases(entries: object) -> Iterator[tuple[int, str]]:
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("alias"), str):
            yield index, entry["alias"]


def _missing_functions(config: GatewayConfig, registry: ServiceRegistry) -> Iterator[Diagnostic]:
    for route in config.routes:
        hooks: list[tuple[str, object, object]] = []
        integration = route.integration
        if integration is not None and integration.type == "service_binding":
            hooks.append(("integration", integration.binding, integration.function))
        if route.pre_process is not None:
            hooks.append(("pre_process", *route.pre_process))
        post = integration.raw.get("post_process") if integration is not None else None
        if isinstance(post, dict) and post.get("type") == "service_binding":
            hooks.append(("integration/post_process", post.get("binding"), post.get("function")))
        for where, alias, function in hooks:
            binding = config.service_bindings.get(alias) if isinstance(alias, str) else None
            if binding is None or not isinstance(function, str):
                continue  # a config error, reported by compile_config
            if registry.has_callable(ServiceKind.BINDING, binding.binding, function) is False:
                found = f"/paths/{route.index}/{where}/function"
                yield _warning(found, f"binding {binding.binding!r} has no callable {function!r}")


def _warning(pointer: str, message: str) -> Diagnostic:
    return Diagnostic(
        severity=Severity.WARNING, pointer=pointer, message=f"{message}; its routes answer 500"
    )


# --- calling ------------------------------------------------------------------------------------


def trio_native(function: _F) -> _F:
    """Mark an async service as trio (or anyio) code: under the trio driver it is awaited on
    trio itself instead of through trio-asyncio. Other drivers ignore the mark."""
    function.__sapg_trio_native__ = True  # type: ignore[attr-defined]
    return function


def _is_trio_native(function: object) -> bool:
    owner = getattr(function, "__self__", None)
    return bool(
        getattr(function, "__sapg_trio_native__", False)
        or getattr(getattr(function, "__func__", None), "__sapg_trio_native__", False)
        or getattr(owner, "__sapg_trio_native__", False)
    )


def _is_async(function: object) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - an object with async __call__
    )


async def _await(awaitable: Any, function: object) -> Any:
    if sniffio.current_async_library() != "trio" or _is_trio_native(function):
        return await awaitable
    import trio_asyncio  # only under trio

    async def run() -> Any:
        return await awaitable

    if trio_asyncio.current_loop.get() is not None:
        return await trio_asyncio.aio_as_trio(run())
    # The driver opened no trio-asyncio loop for the server: one for this call.
    async with trio_asyncio.open_loop():
        return await trio_asyncio.aio_as_trio(run())


async def _invoke(function: Callable[..., Any], *args: object) -> Any:
    if _is_async(function):
        return await _await(function(*args), function)
    # Boxed: trio refuses a thread function whose result is a coroutine.
    boxed = await anyio.to_thread.run_sync(_boxed, function, args, abandon_on_cancel=True)
    value = boxed[0]
    if inspect.isawaitable(value):
        value = await _await(value, function)
    return value


def _boxed(function: Callable[..., Any], args: tuple[object, ...]) -> tuple[Any]:
    return (function(*args),)


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups (a trio nursery wraps it)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _failed(action: CallService, reason: FailureReason, detail: str, now: float) -> ActionFailed:
    return ActionFailed(request_id=action.request_id, reason=reason, detail=detail, now=now)


async def call_service(
    action: CallService,
    registry: ServiceRegistry,
    *,
    env: Mapping[str, str],
    clock: Callable[[], float] = time.time,
    request_id: str = "",
) -> Event:
    """Carry out ``action`` under trio or asyncio; return the event to feed the core.

    ``request_id`` is the request's ``X-Request-Id``, given to the service as ``ctx.request_id``.

    Returns:
        :class:`ServiceReturned`, or :class:`ActionFailed` with ``SERVICE_ERROR`` (not
        loaded, raised, returned something unusable) or ``TIMEOUT``. Never raises for the
        service's sake; cancellation of the caller propagates.
    """
    name = f"{action.stage.value} {_describe(action.kind, action.target)}.{action.function}"
    try:
        function = registry.resolve(action.kind, action.target, action.function)
    except ServiceLoadError as exc:
        return _failed(action, FailureReason.SERVICE_ERROR, str(exc), clock())
    context = make_context(action, request_id=request_id)
    arguments = (make_request(action), MappingProxyType(dict(env)), context)
    value: Any = _MISSING
    try:
        with anyio.move_on_after(action.timeout) as scope:
            value = await _invoke(function, *arguments)
    except (Exception, SystemExit) as exc:
        leaf = _leaf(exc)
        logger.error("request %d: %s raised", action.request_id, name, exc_info=leaf)
        return _failed(action, FailureReason.SERVICE_ERROR, _one_line(leaf), clock())
    if scope.cancelled_caught or value is _MISSING:
        logger.warning(
            "request %d: %s took longer than %g s (a sync one keeps running in its thread)",
            action.request_id,
            name,
            action.timeout,
        )
        return _failed(action, FailureReason.TIMEOUT, f"over {action.timeout:g} s", clock())
    try:
        return service_result(value, request_id=action.request_id, now=clock())
    except ServiceResultError as exc:
        logger.error("request %d: %s returned an unusable value: %s", action.request_id, name, exc)
        return _failed(action, FailureReason.SERVICE_ERROR, f"returned {exc}", clock())


class _LoopThread:
    """An asyncio loop in a daemon thread, for the blocking driver's async services."""

    def __init__(self) -> None:
        # A plain loop: trio-asyncio, once imported, makes new_event_loop() give its own.
        self.loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="sapg-services", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def call_service_sync(
    action: CallService,
    registry: ServiceRegistry,
    *,
    env: Mapping[str, str],
    clock: Callable[[], float] = time.time,
    request_id: str = "",
) -> Event:
    """:func:`call_service` for the blocking driver: blocks the calling thread until done.

    The call runs on one asyncio loop in a background thread (started on first use, stopped
    by :meth:`ServiceRegistry.close`), so async services keep one loop across calls; sync
    ones run in that loop's worker threads. Safe to call from many threads at once.
    """
    loop = registry._background_loop()
    try:
        event: Event = loop.run(
            call_service(action, registry, env=env, clock=clock, request_id=request_id),
            action.timeout + _SYNC_GRACE,
        )
    except concurrent.futures.TimeoutError:  # an async service blocked the loop itself
        logger.error("request %d: a service blocked its event loop", action.request_id)
        return _failed(action, FailureReason.TIMEOUT, f"over {action.timeout:g} s", clock())
    return event
