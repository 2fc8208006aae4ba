"""The GeneralPoints solver against an independent brute force, on every 4-card rank multiset under both
face-card rules, and its formulas checked by an independent evaluator (Python's ast, test-side only)."""

import ast
from collections import Counter
from fractions import Fraction
from itertools import combinations_with_replacement

import pytest

from tasks.general_points import card_value, is_solvable, solve

_BRUTE_MEMO: dict[tuple[Fraction, ...], bool] = {}


def brute_force_reaches(numbers: tuple[Fraction, ...], target: Fraction) -> bool:
    """The classic search: replace any two numbers by one of their six combinations until one number is left.
    Independent of the solver's split-and-invert method."""
    if len(numbers) == 1:
        return numbers[0] == target
    key = tuple(sorted(numbers)) + (target,)
    if key in _BRUTE_MEMO:
        return _BRUTE_MEMO[key]
    found = False
    n = len(numbers)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = numbers[i], numbers[j]
            rest = tuple(numbers[k] for k in range(n) if k not in (i, j))
            results = {a + b, a - b, b - a, a * b}
            if b != 0:
                results.add(a / b)
            if a != 0:
                results.add(b / a)
            if any(brute_force_reaches(rest + (r,), target) for r in results):
                found = True
                break
        if found:
            break
    _BRUTE_MEMO[key] = found
    return found


def evaluate_independently(formula: str) -> tuple[Fraction, Counter]:
    """Value (exact) and the multiset of integer literals of a formula, by walking Python's ast."""
    literals: Counter = Counter()

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            literals[node.value] += 1
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            ops = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
            if isinstance(node.op, ast.Div):
                return left / right
            return ops[type(node.op)]
        raise AssertionError(f"unexpected syntax in solver formula: {ast.dump(node)}")

    return walk(ast.parse(formula, mode="eval")), literals


@pytest.mark.parametrize("face_cards", ["ten", "distinct"])
def test_solver_matches_brute_force_on_every_four_card_multiset(face_cards):
    multisets = list(combinations_with_replacement(range(1, 14), 4))
    assert len(multisets) == 1820
    solvable = 0
    for ranks in multisets:
        values = [card_value(rank, face_cards) for rank in ranks]
        expected = brute_force_reaches(tuple(Fraction(v) for v in values), Fraction(24))
        formula = solve(values, 24)
        assert (formula is not None) == expected, (ranks, formula)
        if formula is not None:
            solvable += 1
            value, literals = evaluate_independently(formula)
            assert value == 24, (values, formula)
            assert literals == Counter(values), (values, formula)
    if face_cards == "distinct":
        assert solvable == 1362  # the well-known count of solvable 24-game hands with ranks 1..13


def test_solver_needs_exact_fractions():
    formula = solve([8, 8, 3, 3], 24)
    assert formula is not None
    assert evaluate_independently(formula)[0] == 24
    assert solve([1, 1, 1, 1], 24) is None
    assert solve([3, 3, 7, 7], 24) is not None  # (3 + 3/7) * 7


@pytest.mark.parametrize("values,target", [
    ([5], 5), ([5], 6), ([2, 3], 6), ([2, 3], 1), ([1, 2, 3], 0), ([13, 13, 13, 13, 13], 1),
    ([1, 2, 3, 4, 5], 120), ([2, 2, 2, 2, 2], 33), ([6, 6], -0), ([7, 7, 7], 0), ([4, 7, 9], 100),
])
def test_solver_other_targets_and_sizes(values, target):
    expected = brute_force_reaches(tuple(Fraction(v) for v in values), Fraction(target))
    formula = solve(values, target)
    assert (formula is not None) == expected
    assert is_solvable(values, target) == expected
    if formula is not None:
        value, literals = evaluate_independently(formula)
        assert value == target and literals == Counter(values)
