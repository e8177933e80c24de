"""The public surface (STYLE.md §1): sapg_core re-exports its modules' names; layers stay apart.

- ``sapg_core`` re-exports the whole vocabulary a driver needs: every
  Event, Action and HTTP glue event class, and the enums and attrs classes
  their fields use (discovered, so classes added later are checked too).
- Every name in ``sapg_core.__all__`` is importable and defined inside
  sapg_core; every name a module's ``__all__`` lists exists.
- ``transports/`` (and the embedding example) use only ``sapg_core``'s public
  names: no ``sapg_core._module`` imports.
- ``sapg_core`` stays pure: it imports neither ``transports`` nor anything
  that does I/O, reads the clock or draws randomness.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path

import attrs
import pytest

import sapg_core

ROOT = Path(__file__).resolve().parents[2]

#: Modules the pure core must never import (DESIGN.md: no I/O, clock, randomness, environment).
IMPURE = {
    "asyncio",
    "datetime",
    "http.client",
    "httpcore",
    "logging",
    "os",
    "pathlib",
    "random",
    "secrets",
    "select",
    "selectors",
    "socket",
    "ssl",
    "subprocess",
    "threading",
    "time",
    "transports",
    "trio",
    "urllib.request",
    "uuid",
}


def private_modules() -> list[str]:
    return sorted(
        f"sapg_core.{info.name}"
        for info in pkgutil.iter_modules(sapg_core.__path__)
        if info.name.startswith("_")
    )


def test_every_private_module_declares_all() -> None:
    missing = [
        name for name in private_modules() if not hasattr(importlib.import_module(name), "__all__")
    ]
    assert not missing, f"these modules have no __all__: {missing}"


@pytest.mark.parametrize("module_name", private_modules())
def _vocabulary() -> dict[str, type]:
    """What a driver must be able to name: every Event, Action and HTTPEvent class defined
    in the core, and every enum or attrs class their fields use (found from the type hints)."""
    found: dict[str, type] = {}
    pending: list[type] = [sapg_core.Event, sapg_core.Action, sapg_core.HTTPEvent]
    while pending:
        cls = pending.pop()
        if cls.__name__ in found or not cls.__module__.startswith("sapg_core"):
            continue
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
        if attrs.has(cls):
            for hint in typing.get_type_hints(cls).values():
                pending.extend(_classes_in(hint))
    return found


def _classes_in(hint: object) -> list[type]:
    if isinstance(hint, type) and (issubclass(hint, enum.Enum) or attrs.has(hint)):
        return [hint]
    return [cls for arg in typing.get_args(hint) for cls in _classes_in(arg)]


def test_every_event_action_and_the_types_of_their_fields_are_exported() -> None:
    vocabulary = _vocabulary()
    assert {"RequestReceived", "Respond", "RequestHead", "FailureReason", "LogLevel"} <= set(
        vocabulary
    )
    missing = sorted(
        f"{cls.__module__}.{name}"
        for name, cls in vocabulary.items()
        if name not in sapg_core.__all__
    )
    assert not missing, (
        "drivers carry these out or build them, so sapg_core must re-export them "
        f"(transports may not import private modules): {missing}"
    )
    for name, cls in vocabulary.items():
        assert getattr(sapg_core, name) is cls


@pytest.mark.parametrize("module_name", private_modules())
def test_a_module_all_names_only_what_the_module_has(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", ()):
        assert hasattr(module, name), f"{module_name}.__all__ lists {name}, which it lacks"


def test_every_public_name_is_importable_and_defined_in_the_core() -> None:
    assert sapg_core.__all__ == sorted(set(sapg_core.__all__), key=sapg_core.__all__.index)
    for name in sapg_core.__all__:
        assert not name.startswith("_")
        exec(f"from sapg_core import {name}", {})  # the import statement users write
        value = getattr(sapg_core, name)
        module = getattr(value, "__module__", None)
        if isinstance(value, type) or inspect.isfunction(value):
            assert module is not None and module.startswith("sapg_core"), (
                f"sapg_core.{name} comes from {module}: a leaked import, not the core's own"
            )


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, ``from x import y`` as ``x.y``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


DRIVER_FILES = sorted((ROOT / "transports").rglob("*.py")) + sorted(
    (ROOT / "docs" / "examples").glob("*.py")
)


@pytest.mark.parametrize("path", DRIVER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_transports_use_only_the_public_core(path: Path) -> None:
    private = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for line, name in imports(path)
        if name.startswith("sapg_core.") and name.split(".")[1].startswith("_")
    ]
    assert not private, "import the public name from sapg_core instead:\n" + "\n".join(private)


CORE_FILES = sorted((ROOT / "sapg_core").glob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_the_core_imports_nothing_impure(path: Path) -> None:
    bad = [
        f"{path.name}:{line}: {name}"
        for line, name in imports(path)
        if any(name == banned or name.startswith(banned + ".") for banned in IMPURE)
    ]
    assert not bad, "sapg_core must stay pure (DESIGN.md):\n" + "\n".join(bad)
