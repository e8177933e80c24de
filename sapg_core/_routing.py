"""Route matching: the route the original picks, found in time linear in the path.

Theory of operation
-------------------
The original (``src/path-ops.js`` plus the sort in ``src/index.js``; UPSTREAM.md
§3) matches the request against *every* route, keeps the matches, stable-sorts
them (exact first, then more matched segments, then non-wildcard, then the route
whose method equals the request's) and takes the first. We pick the same winner
without looking at every route, using three facts about that algorithm. With C
the route's segments, R the request's (both ``split("/")``, empty strings kept)
and ``w`` the position of the route's first ``{.+}``:

Fact A (no ``{.+}``): the route matches iff ``len(R) == len(C)`` and every
    literal segment is equal (parameters match anything, even ``""``).
    matchedCount is ``len(C)``; the match is exact iff there is no parameter.

Fact B (a ``{.+}`` at ``w``): the route matches iff ``C[:w]`` matches ``R[:w]``
    segment by segment and the length guard holds: ``len(R) >= len(C) - 1`` when
    the *last* segment is ``{.+}``, else ``len(R) == len(C)``. Segments after
    ``w`` are never compared (``/a/{.+}/c`` matches ``/a/x/zzz``).
    matchedCount is ``min(len(C), len(R))``; the match is exact iff ``C[:w]``
    has no parameter and ``len(C) == len(R)`` (hence ``/items/{.+}`` is exact
    for ``/items/42``, and ``/v1/files/{.+}`` matches ``/v1/files``).

Fact C: the original's "ran past either list" branch is unreachable, because
    the length guard runs first; a successful walk always counts the leading
    segment, so "matchedCount > 0" adds nothing.

So whether a route matches depends only on its literal/parameter prefix up to
``w`` (or its end), and its rank only on that prefix having a parameter, its
length, its method and its config position. The routes are compiled once into a
segment tree: one child per literal segment plus one shared parameter child per
node. A route without ``{.+}`` is stored at its terminal node; a route with one is
stored at the node where its first ``{.+}`` sits. Matching walks the tree along
the request's segments (branching only where a literal and a parameter child both
continue it), takes the routes stored on the way that pass the method test and the
length guard, and keeps the one with the least :func:`priority_key`.

Making that cheap:

* Rank keys are precomputed per route for the three cases ``len(R) < len(C)``,
  ``==`` and ``>``. Their fourth element is "method is ``ANY``" rather than
  "method differs from the request's": the same order among routes that match one
  request, since those have either the request's method or ``ANY`` (and all
  ``ANY`` when the request method is ``ANY`` itself).
* Per node and method, only the routes that can win are kept for :meth:`match`:
  the first of each (length, guard) kind, with ``ANY`` routes merged in.
* A route with neither parameter nor ``{.+}`` that matches always wins (nothing
  else is exact, as long and not a wildcard; a same-path route with the request's
  own method beats an ``ANY`` one), so those are also looked up by the whole
  path first.
* Results without parameters are cached per route: building a frozen instance
  costs more than the walk.

Parameters are recorded as the original's plain JS object ``params`` would hold
them: a repeated name keeps its first position and its last value, names that are
array indices (``{0}``, ``{12}``) enumerate first in numeric order, and
``{__proto__}`` records nothing (assigning a string to ``__proto__`` is a no-op).
That order is what a hook sees in the serialised context (UPSTREAM.md §8.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

# Everything in __all__ gets re-exported.
__all__ = ["RouteMatch", "RouteTable", "explain_rank", "priority_key"]

#: The wildcard segment; any other ``{...}`` segment is a parameter.
WILDCARD: Final = "{.+}"
#: A route with this method matches every request method.
ANY_METHOD: Final = "ANY"
_MAX_ARRAY_INDEX: Final = 2**32 - 2

PriorityKey = tuple[bool, int, bool, bool, int]


@attrs.frozen(kw_only=True)
class RouteMatch:
    """One route that matches a request, with what the original computed for it.

    Fields:
        index: position of the route in the config's ``paths`` (config order).
        matched_count: the original's ``matchedCount``; it counts the leading
            empty segment, and for a ``{.+}`` route it is
            ``min(len(route segments), len(request segments))``.
        is_exact: the original's ``isExact`` (quirks included, see the module doc).
        is_wildcard: the route matched through a ``{.+}``.
        method_equal: the route's method equals the request method (``False``
            when it matched through ``ANY``).
        params: ``(name, raw segment)`` pairs in the order the original's
            ``params`` object enumerates them: path order, except that a
            repeated name keeps its first place with its last value, array-index
            names come first in numeric order and ``__proto__`` is absent.
            Nothing is recorded for ``{.+}`` or for segments after it.
    """

    index: int
    matched_count: int
    is_exact: bool
    is_wildcard: bool
    method_equal: bool
    params: tuple[tuple[str, str], ...] = ()


def priority_key(m: RouteMatch) -> PriorityKey:
    """The ascending sort key of the original's route sort (UPSTREAM.md §3.3).

    Equal to its comparator on every pair of routes that match the same request:
    two matching routes with different methods have one equal to the request's
    and the other ``ANY``. ``index`` last makes the order total, like its stable sort.
    """
    return (not m.is_exact, -m.matched_count, m.is_wildcard, not m.method_equal, m.index)


def explain_rank(winner: RouteMatch, other: RouteMatch) -> str:
    """Say which priority rule (1-5 of UPSTREAM.md §3.3) puts ``winner`` before ``other``.

    Both must be matches for the same request (as from :meth:`RouteTable.candidates`).

    Raises:
        ValueError: ``winner`` does not rank before ``other``.
    """
    if priority_key(winner) >= priority_key(other):
        raise ValueError(f"route #{winner.index} does not rank before route #{other.index}")
    if winner.is_exact != other.is_exact:
        return "exact match beats non-exact (rule 1)"
    if winner.matched_count != other.matched_count:
        return (
            f"more matched segments win ({winner.matched_count} vs {other.matched_count}) (rule 2)"
        )
    if winner.is_wildcard != other.is_wildcard:
        return "non-wildcard beats wildcard (rule 3)"
    if winner.method_equal != other.method_equal:
        return "the route whose method equals the request method beats ANY (rule 4)"
    return f"earlier in config order (#{winner.index} vs #{other.index}) (rule 5)"


_NO_RANK: Final[PriorityKey] = (True, 1, True, True, 2**63)  # worse than any real rank
_UNBOUNDED: Final = 2**63  # a final {.+} takes any number of trailing segments


@attrs.frozen(kw_only=True, eq=False)
class _Entry:
    """A compiled route, stored at one node of the tree."""

    index: int
    method: str
    length: int  # number of route segments
    is_wildcard: bool  # has a {.+}; stored at the node of its first one
    min_n: int  # the length guard: it matches requests of min_n..max_n segments
    max_n: int
    # priority keys when the request has fewer, as many or more segments (see module doc)
    ranks: tuple[PriorityKey, PriorityKey, PriorityKey]
    param_slots: tuple[tuple[str, int], ...]  # (name, request segment position)
    # RouteMatch objects without params, by (rank, method_equal): a handful at most.
    results: dict[tuple[PriorityKey, bool], RouteMatch] = attrs.field(factory=dict)

    def rank(self, n: int) -> PriorityKey:
        return self.ranks[(n >= self.length) + (n > self.length)]

    def result(self, rank: PriorityKey, segments: list[str], method: str) -> RouteMatch:
        """The :class:`RouteMatch` of this route, already known to match with ``rank``."""
        method_equal = self.method == method
        if self.param_slots:
            return self._build(rank, method_equal, segments)
        cached = self.results.get((rank, method_equal))
        if cached is None:
            cached = self.results[rank, method_equal] = self._build(rank, method_equal, segments)
        return cached

    def _build(self, rank: PriorityKey, method_equal: bool, segments: list[str]) -> RouteMatch:
        return RouteMatch(
            index=self.index,
            matched_count=-rank[1],
            is_exact=not rank[0],
            is_wildcard=self.is_wildcard,
            method_equal=method_equal,
            params=tuple([(name, segments[position]) for name, position in self.param_slots]),
        )


def _compile(index: int, method: str, segments: list[str], wildcard_at: int) -> _Entry:
    """The :class:`_Entry` of route ``segments``, whose first ``{.+}`` is at ``wildcard_at``."""
    length = len(segments)
    prefix = segments if wildcard_at < 0 else segments[:wildcard_at]
    named = [(segment[1:-1], i) for i, segment in enumerate(prefix) if _is_param(segment)]
    is_wildcard = wildcard_at >= 0
    is_any = method == ANY_METHOD

    def rank(n: int) -> PriorityKey:
        matched_count = min(length, n)
        is_exact = not named and matched_count == length == n
        return (not is_exact, -matched_count, is_wildcard, is_any, index)

    final_wildcard = segments[-1] == WILDCARD
    return _Entry(
        index=index,
        method=method,
        length=length,
        is_wildcard=is_wildcard,
        min_n=length - 1 if final_wildcard else length,
        max_n=_UNBOUNDED if final_wildcard else length,
        ranks=(rank(length - 1), rank(length), rank(length + 1)),
        param_slots=_js_param_slots(named),
    )


class _Node:
    """A tree node; mutated only while the table is compiled."""

    __slots__ = ("literal", "param", "terminal", "terminal_first", "wildcard", "wildcard_best")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        # Every route stored here, by method, in config order.
        self.terminal: dict[str, list[_Entry]] = {}
        self.wildcard: dict[str, list[_Entry]] = {}
        # Only what match() needs. Routes here share a prefix, so they differ in
        # rank only by method, index and (for {.+} routes) length and guard.
        self.terminal_first: dict[str, _Entry] = {}
        self.wildcard_best: dict[str, list[_Entry]] = {}  # method's own + ANY's

    def add(self, entry: _Entry) -> None:
        if not entry.is_wildcard:
            self.terminal.setdefault(entry.method, []).append(entry)
            self.terminal_first.setdefault(entry.method, entry)
            return
        self.wildcard.setdefault(entry.method, []).append(entry)
        if entry.method not in self.wildcard_best:
            self.wildcard_best[entry.method] = list(self.wildcard_best.get(ANY_METHOD, ()))
        if entry.method == ANY_METHOD:
            lists = list(self.wildcard_best.values())
        else:
            lists = [self.wildcard_best[entry.method]]
        for best in lists:
            if all(_kind(other) != _kind(entry) for other in best):
                best.append(entry)


def _kind(entry: _Entry) -> tuple[str, int, int]:
    return (entry.method, entry.min_n, entry.max_n)


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _is_array_index(name: str) -> bool:
    return (
        name.isascii()
        and name.isdigit()
        and (name == "0" or not name.startswith("0"))
        and int(name) <= _MAX_ARRAY_INDEX
    )


def _js_param_slots(named: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """Replay ``params[name] = R[i]`` on a plain JS object, returning its key order."""
    slots: dict[str, int] = {}
    for name, position in named:
        if name != "__proto__":
            slots[name] = position
    indices = sorted((name for name in slots if _is_array_index(name)), key=int)
    others = [name for name in slots if not _is_array_index(name)]
    return tuple((name, slots[name]) for name in indices + others)


class RouteTable:
    """The routes of a config, compiled once for matching.

    Immutable after construction (apart from a cache of result objects), so one
    table can serve every request.
    """

    __slots__ = ("_root", "_size", "_static")

    def __init__(self, routes: Sequence[tuple[str, str]]) -> None:
        """Compile ``(method, path)`` pairs, given in config order."""
        self._root = _Node()
        self._size = len(routes)
        # Routes without params or {.+}: path -> method -> the first such route.
        self._static: dict[str, dict[str, _Entry]] = {}
        for index, (method, path) in enumerate(routes):
            self._add(index, method, path)

    def __len__(self) -> int:
        return self._size

    def _add(self, index: int, method: str, path: str) -> None:
        segments = path.split("/")
        node = self._root
        wildcard_at = -1
        for position, segment in enumerate(segments):
            if segment == WILDCARD:
                wildcard_at = position
                break
            if _is_param(segment):
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.literal.setdefault(segment, _Node())
        entry = _compile(index, method, segments, wildcard_at)
        node.add(entry)
        if not entry.is_wildcard and not entry.ranks[1][0]:
            self._static.setdefault(path, {}).setdefault(method, entry)

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The route the original would pick for this request, or ``None`` (its 404).

        Args:
            method: the request method, as received (compared case-sensitively).
            path: the request path without query, already normalised
                (percent-encoded, dot segments resolved); never decoded here.
        """
        static = self._static.get(path)
        if static is not None:
            entry = static.get(method) or static.get(ANY_METHOD)
            if entry is not None:
                return entry.result(entry.ranks[1], path.split("/"), method)
        segments = path.split("/")
        passed: list[_Node] = []
        ends: list[_Node] = []
        _descend(self._root, segments, 0, passed, ends)
        best, rank = _pick_terminal(ends, method)
        best, rank = _pick_wildcard(passed, method, len(segments), best, rank)
        return None if best is None else best.result(rank, segments, method)

    def has_route_for_method(self, method: str, path: str) -> bool:
        """Whether a route whose method is literally ``method`` matches ``path``.

        ``ANY`` routes do not count: this is the CORS preflight test of
        UPSTREAM.md §2 step 5 (an ``OPTIONS`` route must be configured explicitly).
        """
        return bool(self._all_entries(path.split("/"), (method,)))

    def candidates(self, method: str, path: str) -> list[RouteMatch]:
        """Every route that matches, best first: the original's sorted list."""
        segments = path.split("/")
        methods = (method,) if method == ANY_METHOD else (method, ANY_METHOD)
        found = self._all_entries(segments, methods)
        n = len(segments)
        matches = [entry.result(entry.rank(n), segments, method) for entry in found]
        return sorted(matches, key=priority_key)

    def _all_entries(self, segments: list[str], methods: tuple[str, ...]) -> list[_Entry]:
        """Every route with one of ``methods`` that matches."""
        passed: list[_Node] = []
        ends: list[_Node] = []
        _descend(self._root, segments, 0, passed, ends)
        n = len(segments)
        found: list[_Entry] = []
        for method in methods:
            for node in ends:
                found.extend(node.terminal.get(method, ()))
            for node in passed:
                wildcards = node.wildcard.get(method, ())
                found.extend(entry for entry in wildcards if entry.min_n <= n <= entry.max_n)
        return found


def _descend(
    node: _Node, segments: list[str], depth: int, passed: list[_Node], ends: list[_Node]
) -> None:
    """Follow ``segments[depth:]`` down from ``node``, literal and parameter children alike.

    Appends to ``passed`` the nodes holding ``{.+}`` routes met on the way (their
    prefix matched), and to ``ends`` the nodes reached after the last segment.
    Recurses only where both a literal and the parameter child continue the path.
    """
    n = len(segments)
    while True:
        if node.wildcard:
            passed.append(node)
        if depth == n:
            ends.append(node)
            return
        child = node.literal.get(segments[depth])
        depth += 1
        if node.param is None:
            if child is None:
                return
            node = child
        else:
            if child is not None:
                _descend(child, segments, depth, passed, ends)
            node = node.param


def _pick_terminal(ends: list[_Node], method: str) -> tuple[_Entry | None, PriorityKey]:
    """The best route without ``{.+}`` ending at ``ends`` (all as long as the request)."""
    best = None
    best_rank = _NO_RANK
    for node in ends:
        table = node.terminal_first
        if table:
            entry = table.get(method) or table.get(ANY_METHOD)
            if entry is not None and entry.ranks[1] < best_rank:
                best, best_rank = entry, entry.ranks[1]
    return best, best_rank


def _pick_wildcard(
    passed: list[_Node], method: str, n: int, best: _Entry | None, best_rank: PriorityKey
) -> tuple[_Entry | None, PriorityKey]:
    """The better of ``best`` and the ``{.+}`` routes stored at ``passed``."""
    for node in passed:
        table = node.wildcard_best
        for entry in table.get(method) or table.get(ANY_METHOD) or ():
            if entry.min_n <= n <= entry.max_n:
                rank = entry.ranks[(n >= entry.length) + (n > entry.length)]
                if rank < best_rank:
                    best, best_rank = entry, rank
    return best, best_rank
