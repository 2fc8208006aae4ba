"""Exact solver of the 24-points game over every expression tree.

Every expression over a multiset of numbers is a binary tree whose root splits the multiset into two non-empty
parts, so the values reachable from a multiset are the union, over all splits into (A, B), of a + b, a - b, b - a,
a * b, a / b, b / a for a reachable from A and b from B (all tree shapes, operators and orders). Arithmetic is in
`fractions.Fraction`, so 8 / (3 - 8 / 3) = 24 exactly.

Memoisation is per sorted value tuple: `reachable(values)` maps each reachable value to one formula reaching it
(built for at most TABLE_SIZE values). Whether a hand reaches the target is decided without building the hand's
own (large) table: for a split (A, B) and each a reachable from A, the value b that B would need is computed by
inverting each operator and searched in B (a table look-up, or the same search one level down).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from itertools import combinations

_ZERO = Fraction(0)


def _wrap(formula: str) -> str:
    return formula if formula.isdigit() else f"({formula})"


def _combine(x: Fraction, fx: str, y: Fraction, fy: str, out: dict[Fraction, str]) -> None:
    """Add every value of `x op y` and `y op x` with its formula to `out` (first formula found wins)."""
    wx, wy = _wrap(fx), _wrap(fy)
    out.setdefault(x + y, f"{wx} + {wy}")
    out.setdefault(x * y, f"{wx} * {wy}")
    out.setdefault(x - y, f"{wx} - {wy}")
    out.setdefault(y - x, f"{wy} - {wx}")
    if y != _ZERO:
        out.setdefault(x / y, f"{wx} / {wy}")
    if x != _ZERO:
        out.setdefault(y / x, f"{wy} / {wx}")


def _splits(values: tuple[int, ...]):
    """Each unordered split of a sorted multiset into two non-empty sorted sub-multisets, once per distinct
    pair of sub-multisets (the part holding values[0] is the first, so (A, B) and (B, A) are not both given)."""
    n = len(values)
    seen = set()
    rest_indices = range(1, n)
    for size in range(0, n - 1):
        for chosen in combinations(rest_indices, size):
            first = (values[0],) + tuple(values[i] for i in chosen)
            if first in seen:
                continue
            seen.add(first)
            picked = set(chosen)
            second = tuple(values[i] for i in rest_indices if i not in picked)
            yield first, second


@lru_cache(maxsize=None)
def reachable(values: tuple[int, ...]) -> dict[Fraction, str]:
    """Every value an expression using each of `values` (sorted) exactly once can take, with one formula each.
    The returned dict is shared by the cache: do not modify it."""
    if len(values) == 1:
        return {Fraction(values[0]): str(values[0])}
    out: dict[Fraction, str] = {}
    for first, second in _splits(values):
        left, right = reachable(first), reachable(second)
        for x, fx in left.items():
            for y, fy in right.items():
                _combine(x, fx, y, fy, out)
    return out


def _needed(x: Fraction, target: Fraction):
    """Each (b, builder) such that `x op b` or `b op x` equals the target; builder(fx, fb) writes the formula."""
    yield target - x, lambda fx, fb: f"{_wrap(fx)} + {_wrap(fb)}"
    yield x - target, lambda fx, fb: f"{_wrap(fx)} - {_wrap(fb)}"
    yield target + x, lambda fx, fb: f"{_wrap(fb)} - {_wrap(fx)}"
    if x != _ZERO:
        yield target / x, lambda fx, fb: f"{_wrap(fx)} * {_wrap(fb)}"
        yield target * x, lambda fx, fb: f"{_wrap(fb)} / {_wrap(fx)}"
        if target != _ZERO:
            yield x / target, lambda fx, fb: f"{_wrap(fx)} / {_wrap(fb)}"


# Sub-multisets up to this size get a full table of reachable values; larger ones are searched by inversion.
TABLE_SIZE = 3


@lru_cache(maxsize=1 << 18)
def _solve_sorted(values: tuple[int, ...], goal: Fraction) -> str | None:
    """One formula over `values` (sorted) equal to `goal`, or None. Small multisets look the goal up in their
    table; larger ones split into (A, B) with |A| <= |B|, enumerate A's table and search B for the value that
    each inverted operator needs (with 6 cards |A| <= 3, so only tables of at most 3 values are ever built)."""
    if len(values) <= TABLE_SIZE:
        return reachable(values).get(goal)
    for first, second in _splits(values):
        small, large = (first, second) if len(first) <= len(second) else (second, first)
        table = reachable(large) if len(large) <= TABLE_SIZE else None
        for x, fx in reachable(small).items():
            for b, build in _needed(x, goal):
                fb = table.get(b) if table is not None else _solve_sorted(large, b)
                if fb is not None:
                    return build(fx, fb)
            if x == _ZERO and goal == _ZERO:  # 0 * anything = 0, which no inversion expresses
                return f"{_wrap(fx)} * ({' + '.join(map(str, large))})"
    return None


def solve(values: Sequence[int], target: int = 24) -> str | None:
    """One formula using each of `values` exactly once (with + - * / and parentheses) whose exact value is
    `target`, or None when there is none. Cached per sorted value multiset and target."""
    return _solve_sorted(tuple(sorted(int(v) for v in values)), Fraction(int(target)))


def is_solvable(values: Sequence[int], target: int = 24) -> bool:
    return solve(values, target) is not None
