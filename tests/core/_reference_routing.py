"""A deliberately naive port of the original's route matching, for differential tests.

Line by line from ``PathOperator.match`` (``src/path-ops.js``) and the filter +
sort in ``src/index.js`` (UPSTREAM.md §3.2-3.3): match every route, keep the
matches, stable-sort with the original comparator, take the first. No cleverness
on purpose (dead branches kept), and nothing imported from ``sapg_core._routing``:
this is the oracle the segment tree is checked against.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RefMatch", "first_route_for_method", "matched_paths", "winner"]


@dataclass(frozen=True)
class RefMatch:
    """One entry of the original's ``matchedPaths`` (index = position in ``paths``)."""

    index: int
    method: str
    matched_count: int
    is_exact: bool
    is_wildcard: bool
    method_equal: bool
    params: tuple[tuple[str, str], ...]


class _JsObject:
    """Just enough of a plain ``{}`` for ``params[name] = value`` with string values."""

    def __init__(self) -> None:
        self._props: dict[str, str] = {}

    def __setitem__(self, key: str, value: str) -> None:
        if key == "__proto__":
            return  # Object.prototype.__proto__ setter ignores non-object values
        self._props[key] = value

    def items(self) -> tuple[tuple[str, str], ...]:
        # OrdinaryOwnPropertyKeys: array indices ascending, then strings by creation.
        def is_array_index(key: str) -> bool:
            if not key or not all("0" <= c <= "9" for c in key):
                return False
            return str(int(key)) == key and int(key) < 2**32 - 1

        indices = sorted((k for k in self._props if is_array_index(k)), key=int)
        strings = [k for k in self._props if not is_array_index(k)]
        return tuple((k, self._props[k]) for k in indices + strings)


@dataclass(frozen=True)
class _JsResult:
    matchedCount: int  # the original's field names
    isExact: bool
    isWildcard: bool
    methodMatches: bool
    params: tuple[tuple[str, str], ...] = ()


def is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def is_wildcard(segment: str) -> bool:
    return segment == "{.+}"


def match(
    config_path: str, request_path: str, request_method: str, config_method: str
) -> _JsResult:
    """``PathOperator.match``."""
    config_segments = config_path.split("/")
    request_segments = request_path.split("/")
    matched_segments = 0
    is_exact = True
    is_wildcard_used = False
    method_matches = request_method == config_method or config_method == "ANY"

    if not method_matches:
        return _JsResult(0, False, False, method_matches)

    if not is_wildcard(config_segments[len(config_segments) - 1]) and len(request_segments) != len(
        config_segments
    ):
        return _JsResult(0, False, False, method_matches)

    if is_wildcard(config_segments[len(config_segments) - 1]) and len(request_segments) < (
        len(config_segments) - 1
    ):
        return _JsResult(0, False, False, method_matches)

    params = _JsObject()

    for i in range(max(len(config_segments), len(request_segments))):
        if i < len(config_segments) and is_wildcard(config_segments[i]):
            is_wildcard_used = True
            matched_segments = min(len(config_segments), len(request_segments))
            break

        if i >= len(config_segments) or i >= len(request_segments):
            is_exact = False
            break

        if is_param(config_segments[i]):
            is_exact = False
            param_name = config_segments[i][1:-1]
            params[param_name] = request_segments[i]
            matched_segments += 1
        elif config_segments[i] == request_segments[i]:
            matched_segments += 1
        else:
            return _JsResult(0, False, False, method_matches)

    return _JsResult(
        matchedCount=matched_segments,
        isExact=is_exact
        and matched_segments == len(config_segments)
        and matched_segments == len(request_segments),
        isWildcard=is_wildcard_used,
        methodMatches=method_matches,
        params=params.items(),
    )


def matched_paths(routes: Sequence[tuple[str, str]], method: str, path: str) -> list[RefMatch]:
    """The original's ``matchedPaths``, after its sort (best first)."""
    items: list[tuple[int, str, _JsResult]] = []
    for index, (config_method, config_path) in enumerate(routes):
        result = match(config_path, path, method, config_method)
        if result.matchedCount > 0 and result.methodMatches:
            items.append((index, config_method, result))

    def compare(a: tuple[int, str, _JsResult], b: tuple[int, str, _JsResult]) -> int:
        _, a_method, a_result = a
        _, b_method, b_result = b
        if a_result.isExact != b_result.isExact:
            return -1 if a_result.isExact else 1
        if a_result.matchedCount != b_result.matchedCount:
            return b_result.matchedCount - a_result.matchedCount
        if a_result.isWildcard != b_result.isWildcard:
            return 1 if a_result.isWildcard else -1
        if a_method != b_method:
            if a_method == method:
                return -1
            if b_method == method:
                return 1
        return 0

    items.sort(key=functools.cmp_to_key(compare))  # list.sort is stable, like V8's
    return [
        RefMatch(
            index=index,
            method=config_method,
            matched_count=result.matchedCount,
            is_exact=result.isExact,
            is_wildcard=result.isWildcard,
            method_equal=config_method == method,
            params=result.params,
        )
        for index, config_method, result in items
    ]


def winner(routes: Sequence[tuple[str, str]], method: str, path: str) -> RefMatch | None:
    """``matchedPaths.sort(...)[0]``."""
    found = matched_paths(routes, method, path)
    return found[0] if found else None


def first_route_for_method(routes: Sequence[tuple[str, str]], method: str, path: str) -> int | None:
    """The preflight ``paths.find``: first route whose method is literally ``method``."""
    for index, (config_method, config_path) in enumerate(routes):
        result = match(config_path, path, method, config_method)
        if config_method == method and result.matchedCount > 0 and result.methodMatches:
            return index
    return None
