"""Evaluation metrics: pass@k (unbiased), success rates with binomial standard errors, V-IRL per-step accuracy and
route success, GeneralPoints-VL recognition accuracy.

pass@k works on host integers (Python/numpy, exact enough in float64). The rate metrics are jnp functions, so they
run under jit on device arrays as well as on numpy input: B episodes (or routes), T steps per episode (padded,
marked by `valid`).
"""

from __future__ import annotations

import operator
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rl.masked import masked_count, masked_mean


def _check_counts(n: int, c: int, k: int) -> tuple[int, int, int]:
    try:
        n, c, k = operator.index(n), operator.index(c), operator.index(k)
    except TypeError as error:
        raise ValueError(f"pass@k needs integer n, c and k; got n={n!r}, c={c!r}, k={k!r}.") from error
    if n < 0 or c < 0 or k < 1:
        raise ValueError(f"pass@k needs n >= 0, c >= 0 and k >= 1; got n={n}, c={c}, k={k}.")
    if c > n:
        raise ValueError(f"pass@k: c={c} correct samples cannot exceed the n={n} samples drawn.")
    if k > n:
        raise ValueError(f"pass@k: k={k} exceeds the n={n} samples drawn; draw at least k samples per problem.")
    return n, c, k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from n samples of which c are correct: 1 - C(n-c, k) / C(n, k),
    computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms a large binomial. 1.0 when n - c < k."""
    n, c, k = _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_per_problem(ns: Sequence[int], cs: Sequence[int], ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The unbiased pass@k of each of P problems for each k in `ks` that is at most min(ns) (larger k are dropped:
    the estimator is undefined for a problem with fewer than k samples).

    ns, cs: (P,) samples drawn and correct per problem. Returns (kept ks (K,) int, pass@k (K, P) float64).
    """
    ns = np.asarray(ns, dtype=np.int64).reshape(-1)
    cs = np.asarray(cs, dtype=np.int64).reshape(-1)
    ks = np.asarray(ks, dtype=np.int64).reshape(-1)
    if ns.shape != cs.shape or ns.size == 0:
        raise ValueError(f"pass@k needs ns and cs of one non-empty shape (P,); got {ns.shape}, {cs.shape}.")
    if np.any(cs < 0) or np.any(cs > ns) or np.any(ks < 1):
        raise ValueError("pass@k needs 0 <= c <= n for every problem and every k >= 1.")
    kept = np.unique(ks[ks <= ns.min()])
    # i runs over 1..max(n); the product for a problem takes i in (n - c, n].
    i = np.arange(1, ns.max() + 1, dtype=np.float64)[None, :]
    in_product = (i > (ns - cs)[:, None]) & (i <= ns[:, None])
    values = []
    for k in kept:
        # log1p(-k/i) is finite wherever i > k; for problems with n - c < k the answer is 1 and the product unused.
        terms = np.where(in_product & (i > k), np.log1p(-k / np.maximum(i, k + 1)), 0.0)
        values.append(np.where(ns - cs < k, 1.0, -np.expm1(terms.sum(axis=1))))
    return kept, np.asarray(values, dtype=np.float64).reshape(len(kept), ns.size)


def pass_at_k_curve(ns: Sequence[int], cs: Sequence[int], ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """pass@k averaged over P problems (`pass_at_k_per_problem`). Returns (kept ks (K,), mean pass@k (K,))."""
    kept, per_problem = pass_at_k_per_problem(ns, cs, ks)
    return kept, per_problem.mean(axis=1)


def pass_at_k_standard_error(ns: Sequence[int], cs: Sequence[int], ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The standard error of `pass_at_k_curve`'s mean over the P problems: the sample standard deviation of the
    per-problem estimates (ddof 1) over sqrt(P); NaN for a single problem. Returns (kept ks (K,), se (K,)).
    The sampling noise within a problem is already averaged into its unbiased estimate, so the spread over
    problems is the error bar of the mean (as for a success rate, where it reduces to the binomial one)."""
    kept, per_problem = pass_at_k_per_problem(ns, cs, ks)
    problems = per_problem.shape[1]
    if problems < 2:
        return kept, np.full(len(kept), np.nan)
    return kept, per_problem.std(axis=1, ddof=1) / np.sqrt(problems)


def binomial_standard_error(p: jax.Array, num_trials: jax.Array) -> jax.Array:
    """sqrt(p (1 - p) / N): the error bar of a success rate p measured on N independent trials (the paper's)."""
    p = jnp.asarray(p, jnp.float32)
    return jnp.sqrt(p * (1.0 - p) / jnp.maximum(jnp.asarray(num_trials, jnp.float32), 1.0))


def masked_rate(outcomes: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(rate, standard error) of boolean outcomes (any shape) over the entries the mask keeps."""
    outcomes = jnp.asarray(outcomes)
    mask = jnp.ones(outcomes.shape, bool) if mask is None else jnp.asarray(mask, bool)
    rate = masked_mean(jnp.asarray(outcomes, jnp.float32), mask)
    return rate, binomial_standard_error(rate, masked_count(mask))


def success_rate(successes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, standard error) of per-episode success flags (B,): GeneralPoints success or V-IRL route success."""
    return masked_rate(successes)


def route_success(reached_destination: jax.Array) -> tuple[jax.Array, jax.Array]:
    """V-IRL route success rate (B,) -> (rate, se): a route succeeds when the agent stops correctly at the
    destination within its budget."""
    return success_rate(reached_destination)


def per_step_accuracy(correct: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """V-IRL per-step accuracy: the share of decision steps (B, T) whose action was correct, over the valid
    steps -> (accuracy, se). The se treats steps as independent trials (steps of one route are correlated, so it
    understates the uncertainty)."""
    return masked_rate(correct, valid)


def recognition_accuracy(cards_recognised: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """GeneralPoints-VL recognition accuracy: the share of verification steps (B, T) whose "cards" field matched
    the hand, over the valid steps -> (accuracy, se)."""
    return masked_rate(cards_recognised, valid)
