"""Eval curves of runs: the eval records of several run directories grouped by (task, split, arm, verify
budget), one series per seed, aligned by training step and averaged over seeds, plus the Savitzky-Golay smoothing
of the paper's plots. Host-side numpy; shared by launch/plots.py (figures) and launch/report.py (tables).

Arrays: P points of one curve (sorted by step); S seeds.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Iterable, Optional

import numpy as np
from scipy.signal import savgol_filter

from launch.metrics_schema import Run

SAVGOL_POLYORDER = 3
MIN_POINTS_TO_SMOOTH = 5  # savgol with polyorder 3 needs an odd window > 3


@dataclasses.dataclass(frozen=True)
class SeedSeries:
    """One seed's raw points of a curve, sorted by step: steps, gflops, value, se, n (episodes): (P_seed,)."""

    seed: int
    run: str
    steps: np.ndarray
    gflops: np.ndarray
    value: np.ndarray
    se: np.ndarray
    n: np.ndarray


@dataclasses.dataclass(frozen=True)
class Curve:
    """One metric of one (task, split, arm, verify_budget) over training, averaged over seeds at each step.

    steps, gflops (mean over the seeds that have the step), value (mean), se (binomial standard error of the
    mean: sqrt(sum_i se_i^2) / S_p), seed_sd (standard deviation over seeds, ddof 1; NaN with one seed),
    seed_count (S_p): all (P,). seeds: the raw per-seed series."""

    task: str
    split: str
    arm: str
    verify_budget: Optional[int]
    metric: str
    steps: np.ndarray
    gflops: np.ndarray
    value: np.ndarray
    se: np.ndarray
    seed_sd: np.ndarray
    seed_count: np.ndarray
    seeds: tuple[SeedSeries, ...]

    @property
    def key(self) -> tuple:
        return (self.task, self.split, self.arm, self.verify_budget)


def _seed_series(points: dict[int, tuple[float, float, float, int]], seed: int, run: str) -> SeedSeries:
    steps = np.array(sorted(points), dtype=np.int64)
    columns = np.array([points[int(s)] for s in steps], dtype=np.float64).reshape(-1, 4)
    return SeedSeries(seed=seed, run=run, steps=steps, gflops=columns[:, 0], value=columns[:, 1],
                      se=columns[:, 2], n=columns[:, 3].astype(np.int64))


def collect_curves(runs: Iterable[Run], metric: str = "success") -> list[Curve]:
    """Every curve of `metric` ("success", "per_step_accuracy", "recognition_accuracy" or "heldout_loss") in the
    runs' eval records. Within one seed a repeated step keeps the last record (a re-evaluation). A metric's
    standard error is record[metric + "_se"] (0 when absent, e.g. heldout_loss)."""
    # key -> (seed, run) -> step -> (gflops, value, se, n)
    grouped: dict[tuple, dict[tuple[int, str], dict[int, tuple]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        for record in run.evals():
            if record.get(metric) is None:
                continue
            key = (record["task"], record["split"], record["arm"], record.get("verify_budget"))
            se = record.get(f"{metric}_se")
            grouped[key][(record["seed"], run.name)][record["step"]] = (
                float(record["gflops"]), float(record[metric]), 0.0 if se is None else float(se), int(record["n"]))
    curves = []
    for key in sorted(grouped, key=lambda k: (k[0], k[1], k[2], -1 if k[3] is None else k[3])):
        seeds = tuple(_seed_series(points, seed, run) for (seed, run), points in sorted(grouped[key].items()))
        curves.append(_average_over_seeds(key, metric, seeds))
    return curves


def _average_over_seeds(key: tuple, metric: str, seeds: tuple[SeedSeries, ...]) -> Curve:
    steps = np.unique(np.concatenate([s.steps for s in seeds]))
    gflops, value, se, sd, count = [], [], [], [], []
    for step in steps:
        rows = [(s.gflops[i], s.value[i], s.se[i]) for s in seeds for i in np.flatnonzero(s.steps == step)]
        g, v, e = (np.array(column) for column in zip(*rows))
        gflops.append(g.mean())
        value.append(v.mean())
        se.append(np.sqrt(np.sum(e ** 2)) / len(rows))
        sd.append(v.std(ddof=1) if len(rows) > 1 else np.nan)
        count.append(len(rows))
    return Curve(task=key[0], split=key[1], arm=key[2], verify_budget=key[3], metric=metric, steps=steps,
                 gflops=np.array(gflops), value=np.array(value), se=np.array(se), seed_sd=np.array(sd),
                 seed_count=np.array(count), seeds=seeds)


def savgol_window(num_points: int) -> Optional[int]:
    """The Savitzky-Golay window for a curve of `num_points` points: odd, about half the points, at least 5 (the
    smallest odd window above polyorder 3), never more than the points; None when there are too few to smooth."""
    if num_points < MIN_POINTS_TO_SMOOTH:
        return None
    return max(MIN_POINTS_TO_SMOOTH, (num_points // 2) | 1)


def smooth(values: np.ndarray) -> Optional[np.ndarray]:
    """Savitzky-Golay smoothing (polyorder 3, `savgol_window`) of a (P,) series sampled in order, as the paper's
    curves; None when P is too small to smooth. The filter treats points as evenly spaced."""
    window = savgol_window(len(values))
    if window is None:
        return None
    return savgol_filter(np.asarray(values, dtype=np.float64), window_length=window, polyorder=SAVGOL_POLYORDER,
                         mode="interp")
