"""pass@k against exact combinatorics (math.comb with Fractions) and hypothesis properties; rate metrics."""

import math
from fractions import Fraction

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl import pass_at_k
from rl.metrics import (binomial_standard_error, pass_at_k_curve, pass_at_k_standard_error, per_step_accuracy,
                        recognition_accuracy, route_success, success_rate)


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


GRID = [(n, c, k) for n in (1, 2, 5, 16, 64, 100, 256) for c in sorted({0, 1, n // 3, n // 2, n - 1, n})
        for k in sorted({1, 2, 8, 64, n // 2, n - 1, n}) if 1 <= k <= n and 0 <= c <= n]


def test_pass_at_k_matches_exact_combinatorics_on_a_grid():
    assert len(GRID) > 150
    for n, c, k in GRID:
        expected = float(exact_pass_at_k(n, c, k))
        assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-9, abs=1e-12), (n, c, k)


def test_pass_at_k_special_cases():
    assert pass_at_k(256, 0, 64) == 0.0
    assert pass_at_k(256, 193, 64) == 1.0          # n - c = 63 < k: every k-subset holds a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(np.int64(5), np.int64(2), np.int64(2)) == pytest.approx(0.7)


@pytest.mark.parametrize("n,c,k,match", [(4, 1, 5, "exceeds"), (4, 5, 1, "cannot exceed"), (4, -1, 1, ">= 0"),
                                         (-1, 0, 1, ">= 0"), (4, 1, 0, "k >= 1"), (4.5, 1, 1, "integer")])
def test_pass_at_k_rejects_bad_counts(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_properties(case):
    n, c, k = case
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-9, abs=1e-12)
    if k < n:
        assert pass_at_k(n, c, k + 1) >= value - 1e-12          # monotone in k
    if c < n:
        assert pass_at_k(n, c + 1, k) >= value - 1e-12          # monotone in c
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)            # pass@1 is the success rate


def test_curve_averages_problems_and_drops_k_above_the_smallest_n():
    ns = [256, 256, 200, 256, 72]
    cs = [0, 3, 50, 256, 8]          # the last problem has n - c = 64 = k exactly
    kept, values = pass_at_k_curve(ns, cs, [64, 1, 8, 72, 200, 256])
    np.testing.assert_array_equal(kept, [1, 8, 64, 72])
    for k, value in zip(kept, values):
        expected = np.mean([float(exact_pass_at_k(n, c, int(k))) for n, c in zip(ns, cs)])
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    kept, values = pass_at_k_curve([5, 6], [2, 1], range(1, 7))   # n - c = k at k = 3 and k = 5
    np.testing.assert_array_equal(kept, [1, 2, 3, 4, 5])
    expected = [np.mean([float(exact_pass_at_k(n, c, k)) for n, c in ((5, 2), (6, 1))]) for k in kept]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k_curve([4], [5], [1])


def test_pass_at_k_standard_error_is_the_spread_of_exact_per_problem_values():
    ns, cs = [16, 16, 16, 16, 12], [0, 3, 8, 16, 1]
    kept, errors = pass_at_k_standard_error(ns, cs, [1, 4, 12])
    np.testing.assert_array_equal(kept, [1, 4, 12])
    for k, error in zip(kept, errors):
        exact = [float(exact_pass_at_k(n, c, int(k))) for n, c in zip(ns, cs)]
        mean = sum(exact) / len(exact)
        expected = math.sqrt(sum((x - mean) ** 2 for x in exact) / (len(exact) - 1) / len(exact))
        assert error == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # at k = 1 with equal n it is the standard error of the mean of the per-problem success fractions
    fractions = np.array(cs[:4]) / 16
    _, (error,) = pass_at_k_standard_error(ns[:4], cs[:4], [1])
    assert error == pytest.approx(fractions.std(ddof=1) / 2)
    assert np.isnan(pass_at_k_standard_error([8], [3], [2])[1][0])   # one problem: no spread to measure


def test_rates_and_standard_errors():
    mean, se = success_rate(np.array([1, 0, 1, 1], bool))
    assert float(mean) == pytest.approx(0.75)
    assert float(se) == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert float(route_success(np.array([True, False]))[0]) == pytest.approx(0.5)
    correct = np.array([[1, 1, 0], [1, 0, 0]], bool)
    valid = np.array([[1, 1, 1], [1, 0, 0]], bool)
    acc, se = jax.jit(per_step_accuracy)(correct, valid)
    assert float(acc) == pytest.approx(3 / 4)
    assert float(se) == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert float(recognition_accuracy(correct)[0]) == pytest.approx(3 / 6)
    assert float(binomial_standard_error(0.0, 10)) == 0.0
