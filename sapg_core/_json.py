"""JSON the way the original's ``JSON.stringify`` writes it.

Compact separators, non-ASCII kept as UTF-8, keys in insertion order, and
numbers formatted as JavaScript does (``1.0`` is ``1``, ``1e-7`` is ``1e-7``,
integers beyond 2**53 lose precision as JS numbers do). Parsing refuses
``NaN``/``Infinity``, which are not JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TypeAlias

__all__ = ["JSONValue", "dumps", "js_number", "js_string", "loads"]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

_MAX_SAFE = 2**53


def js_number(value: int | float) -> str:
    """Format a number as ``Number.prototype.toString`` does."""
    if isinstance(value, int):
        if -_MAX_SAFE <= value <= _MAX_SAFE:
            return str(value)
        try:
            value = float(value)
        except OverflowError:  # beyond any double: JavaScript reads it as Infinity
            return "null"
    if not math.isfinite(value):
        return "null"  # what JSON.stringify writes for NaN and Infinity
    if value == 0:
        return "0"
    text = repr(value)  # shortest round-trip digits, which JS uses too
    if "e" not in text:  # Python's plain range (1e-4..1e16) lies inside JS's
        return text[:-2] if text.endswith(".0") else text
    mantissa, _, exponent = text.partition("e")
    exp = int(exponent)
    if not 1e-6 <= abs(value) < 1e21:
        return f"{mantissa}e{'+' if exp > 0 else '-'}{abs(exp)}"
    sign = "-" if value < 0 else ""
    digits = mantissa.lstrip("-").replace(".", "")
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    if len(digits) <= exp + 1:
        return f"{sign}{digits.ljust(exp + 1, '0')}"
    return f"{sign}{digits[: exp + 1]}.{digits[exp + 1 :]}"


def js_string(value: object) -> str:
    """JavaScript's ``String(value)`` for a JSON value (numbers as ``Number#toString``)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        try:
            as_float = float(value)
        except OverflowError:
            as_float = math.inf if value > 0 else -math.inf
        if math.isinf(as_float):
            return "Infinity" if as_float > 0 else "-Infinity"
        return "NaN" if math.isnan(as_float) else js_number(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


def _has_float_or_big(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return True
    if isinstance(value, int):
        return not -_MAX_SAFE <= value <= _MAX_SAFE
    if isinstance(value, Mapping):
        return any(_has_float_or_big(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float_or_big(v) for v in value)
    return False


_fast = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: object) -> bytes:
    """Serialise ``value`` to UTF-8 JSON bytes exactly as ``JSON.stringify`` would."""
    text = _encode_js(value) if _has_float_or_big(value) else _fast.encode(value)
    return text.encode("utf-8", "surrogatepass")


def _encode_js(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return _fast.encode(value)
    if isinstance(value, int | float):
        return js_number(value)
    if isinstance(value, str):
        return _fast.encode(value)
    if isinstance(value, Mapping):
        items = ",".join(f"{_fast.encode(str(k))}:{_encode_js(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode_js(v) for v in value) + "]"
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str | bytes) -> object:
    """Parse JSON text; ``NaN``/``Infinity`` are refused as in JavaScript.

    Bytes must be UTF-8 (a leading BOM is refused, as ``JSON.parse`` would).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    result: object = _decoder.decode(text)
    return result
