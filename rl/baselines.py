"""How much of the policy gradient's noise a baseline can remove, measured from repeated plays of the same states.

A policy gradient weighs each sampled response by its advantage, return - baseline. With an outcome reward the
return of a state (a hand, a route) is mostly sampling luck; only its expected value p(s) is something a baseline
can know. The variance of the returns splits into the part between states, tau^2 = Var_s p(s), and the part within
a state, sigma^2 = E_s Var(return | s). A baseline leaves the advantage noise:

- the batch mean (a critic that learned only the mean return, or none): sigma^2 + tau^2;
- the true state value (a perfect critic, PPO's ideal): sigma^2;
- GRPO's group mean over g plays of the state, the sample itself included: its advantage is (1 - 1/g) times the
  sample's deviation from p(s) minus the others' mean deviation, so scaled back to unit weight on the sample's own
  deviation it leaves sigma^2 * g / (g - 1) (GRPO's further division by the group's standard deviation rescales
  groups, which this leaves out).

So a critic can remove at most tau^2 / (sigma^2 + tau^2) of the noise, and GRPO's group mean helps only where
tau^2 > sigma^2 / (g - 1). Numpy on host arrays: returns (H, n) = n plays of each of H states; features (N, D) with
targets (N,) and a state id per row for the linear probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class BaselineNoise:
    """Variance components of the returns of H states played n times each (one-way random-effects estimates:
    unbiased, so `between` can come out slightly negative when the states do not differ) and the advantage noise
    each baseline leaves (see the module docstring). `critic_ceiling`: the share of the batch-mean baseline's
    noise that a perfect critic removes, tau^2 / (sigma^2 + tau^2), clipped to [0, 1]; `group_share`: the share
    GRPO's group mean of `group_size` removes (negative: it adds noise)."""

    states: int
    plays: int
    mean: float
    between: float
    within: float
    group_size: int

    @property
    def batch_mean_noise(self) -> float:
        return self.within + self.between

    @property
    def state_value_noise(self) -> float:
        return self.within

    @property
    def group_mean_noise(self) -> float:
        return self.within * self.group_size / (self.group_size - 1)

    @property
    def critic_ceiling(self) -> float:
        return float(np.clip(self.between / self.batch_mean_noise, 0.0, 1.0)) if self.batch_mean_noise > 0 else 0.0

    @property
    def group_share(self) -> float:
        return 1.0 - self.group_mean_noise / self.batch_mean_noise if self.batch_mean_noise > 0 else 0.0


def baseline_noise(returns: np.ndarray | Sequence[Sequence[float]], group_size: int) -> BaselineNoise:
    """The variance components of `returns` (H, n): n >= 2 plays of each of H >= 2 states, and the noise each
    baseline leaves, GRPO's with groups of `group_size` >= 2."""
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 2 or returns.shape[0] < 2 or returns.shape[1] < 2:
        raise ValueError(f"baseline_noise needs returns of shape (states >= 2, plays >= 2); got {returns.shape}.")
    if group_size < 2:
        raise ValueError(f"baseline_noise needs a GRPO group size of at least 2, got {group_size}.")
    states, plays = returns.shape
    within = float(returns.var(axis=1, ddof=1).mean())
    # the spread of the state means holds the between-state variance plus each mean's own sampling noise
    between = float(returns.mean(axis=1).var(ddof=1) - within / plays)
    return BaselineNoise(states=states, plays=plays, mean=float(returns.mean()), between=between, within=within,
                         group_size=group_size)


def linear_probe_explained_variance(features: np.ndarray, targets: np.ndarray, state_ids: np.ndarray, *,
                                    ridge: float, folds: int = 4) -> float:
    """The explained variance on states it never saw of a ridge regression from `features` (N, D) to `targets` (N,)
    (a linear critic on those features): rows are split into `folds` groups by `state_ids` (N,) so no state is in
    both the training and the test part, features standardised on the training part, `ridge` the L2 penalty
    (intercept unpenalised). 1 - Var(residual) / Var(target) over all held-out rows; <= 0: no better than a
    constant."""
    features = np.asarray(features, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    state_ids = np.asarray(state_ids)
    if features.ndim != 2 or targets.shape != (features.shape[0],) or state_ids.shape != targets.shape:
        raise ValueError(f"the linear probe needs features (N, D), targets (N,) and state ids (N,); got "
                         f"{features.shape}, {targets.shape}, {state_ids.shape}.")
    unique = np.unique(state_ids)
    if len(unique) < folds or folds < 2:
        raise ValueError(f"the linear probe needs at least 2 folds and a state per fold; got {folds} folds over "
                         f"{len(unique)} states.")
    fold_of_state = dict(zip(unique, np.arange(len(unique)) % folds))
    fold = np.array([fold_of_state[s] for s in state_ids])
    residuals = np.empty_like(targets)
    for k in range(folds):
        test, train = fold == k, fold != k
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-8
        design = np.c_[(features[train] - mean) / std, np.ones(train.sum())]
        penalty = ridge * np.eye(design.shape[1])
        penalty[-1, -1] = 0.0
        weights = np.linalg.solve(design.T @ design + penalty, design.T @ targets[train])
        residuals[test] = targets[test] - np.c_[(features[test] - mean) / std, np.ones(test.sum())] @ weights
    return float(1.0 - residuals.var() / targets.var()) if targets.var() > 0 else 0.0
