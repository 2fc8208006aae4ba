"""Curves and figures: averaging over seeds, Savitzky-Golay smoothing against scipy, the compute axis scale, and
Figure 10's fixed-compute comparison."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.signal import savgol_filter

from launch.curves import collect_curves, savgol_window, smooth
from launch.metrics_schema import eval_record, load_runs
from launch.plots import budget_points, set_compute_axis
from tests.launch.synthetic_runs import write_run


@pytest.mark.parametrize("points, window", [(1, None), (4, None), (5, 5), (6, 5), (10, 5), (11, 5), (14, 7),
                                            (15, 7), (40, 21)])
def test_savgol_window_is_odd_at_least_five_and_fits(points, window):
    assert savgol_window(points) == window
    if window is not None:
        assert window % 2 == 1 and 3 < window <= points


def test_smooth_is_scipy_savgol_order_3():
    values = np.random.default_rng(0).uniform(size=12)
    np.testing.assert_allclose(smooth(values), savgol_filter(values, 7, 3, mode="interp"))
    assert smooth(values[:4]) is None
    # a cubic is left unchanged by an order-3 filter
    x = np.linspace(-1, 1, 9)
    np.testing.assert_allclose(smooth(x ** 3 - x), x ** 3 - x, atol=1e-12)


def _eval(step, success, seed, n=100, **extra):
    return eval_record(step=step, gflops=10.0 * step + seed, task="gp-l", split="rule_ood", n=n, success=success,
                       arm="rl", seed=seed, **extra)


def test_curves_average_over_seeds_at_each_step(tmp_path):
    a = write_run(tmp_path / "a", [_eval(0, 0.1, 0), _eval(10, 0.3, 0), _eval(20, 0.5, 0)], None)
    # seed 1 misses step 10 and re-evaluates step 20 (the last record wins)
    b = write_run(tmp_path / "b", [_eval(0, 0.2, 1), _eval(20, 0.9, 1), _eval(20, 0.7, 1)], None)
    (curve,) = collect_curves(load_runs([a, b]))
    np.testing.assert_array_equal(curve.steps, [0, 10, 20])
    np.testing.assert_allclose(curve.value, [0.15, 0.3, 0.6])
    np.testing.assert_array_equal(curve.seed_count, [2, 1, 2])
    np.testing.assert_allclose(curve.gflops, [0.5, 100.0, 200.5])
    se = lambda p: math.sqrt(p * (1 - p) / 100)  # noqa: E731
    np.testing.assert_allclose(curve.se, [math.hypot(se(0.1), se(0.2)) / 2, se(0.3), math.hypot(se(0.5), se(0.7)) / 2],
                               rtol=1e-6)
    np.testing.assert_allclose(curve.seed_sd[[0, 2]], [np.std([0.1, 0.2], ddof=1), np.std([0.5, 0.7], ddof=1)])
    assert math.isnan(curve.seed_sd[1])


def test_verify_budgets_are_separate_curves(tmp_path):
    records = [_eval(s, 0.1 * b, 0, verify_budget=b) for b in (1, 3) for s in (0, 10)]
    (low, high) = collect_curves(load_runs([write_run(tmp_path / "r", records, None)]))
    assert (low.verify_budget, high.verify_budget) == (1, 3)


@pytest.mark.parametrize("gflops, scale", [([1, 2, 10], "linear"), ([1, 100, 1000], "log"),
                                           ([0, 1, 100, 1000], "symlog"), ([0, 5], "linear")])
def test_compute_axis_is_log_only_over_a_wide_range(gflops, scale):
    fig, ax = plt.subplots()
    set_compute_axis(ax, np.array(gflops, dtype=float))
    assert ax.get_xscale() == scale and "GFLOPs" in ax.get_xlabel()
    plt.close(fig)


def test_budget_points_compare_at_the_compute_all_budgets_reached(tmp_path):
    records = []
    for budget, steps in ((1, (0, 10, 20, 30)), (5, (0, 10, 20))):
        records += [eval_record(step=s, gflops=100.0 * s, task="gp-l", split="rule_ood", n=50,
                                success=0.1 + 0.002 * s * budget, arm="rl", verify_budget=budget) for s in steps]
    points, fixed = budget_points(collect_curves(load_runs([write_run(tmp_path / "r", records, None)])))
    assert fixed == {("gp-l", "rule_ood", "rl"): 2000.0}
    assert [(p.verify_budget, p.gflops) for p in points] == [(1, 2000.0), (5, 2000.0)]
    assert [p.final for p in points] == pytest.approx([0.14, 0.3])  # budget 1 at step 20, not its step 30
    assert [p.initial for p in points] == pytest.approx([0.1, 0.1])


def test_a_linear_compute_axis_far_from_zero_gets_short_tick_labels():
    """A miniature's x runs from the base's ~9.4e4 GFLOPs to ~1.3e5: plain six-digit labels overlapped."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([94_000, 130_000], [0, 1])
    set_compute_axis(ax, np.array([94_000, 105_000, 130_000], dtype=float))
    fig.canvas.draw()
    labels = [tick.get_text().replace("\\mathdefault", "").strip("${}") for tick in ax.get_xticklabels()]
    assert 3 <= len(labels) <= 7 and all(len(label) <= 5 for label in labels), labels
    assert "10^{5}" in ax.xaxis.get_offset_text().get_text()
    plt.close(fig)
