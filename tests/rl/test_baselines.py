"""rl.baselines: the variance components and each baseline's advantage variance against brute-force simulation of
Bernoulli outcomes with known per-state success rates; the linear probe against regressions of known R^2."""

import numpy as np
import pytest

from rl.baselines import baseline_noise, linear_probe_explained_variance


def _plays(rng, success_rates, plays, reward=(-1.0, 5.0)):
    """returns (H, plays): each state's plays succeed with its own rate; rewards as GeneralPoints' (fail, correct)."""
    wins = rng.random((len(success_rates), plays)) < success_rates[:, None]
    return np.where(wins, reward[1], reward[0])


def test_components_and_noise_match_a_simulation_with_known_rates():
    rng = np.random.default_rng(0)
    rates = rng.beta(1.0, 3.0, size=4000)
    returns = _plays(rng, rates, 16)
    noise = baseline_noise(returns, group_size=8)
    # the truth of these states: reward spread 6, so Var(return | s) = 36 p (1 - p), Var_s E[return | s] = 36 Var(p)
    assert noise.within == pytest.approx(36 * np.mean(rates * (1 - rates)), rel=0.03)
    assert noise.between == pytest.approx(36 * rates.var(), rel=0.08)
    assert noise.mean == pytest.approx(-1 + 6 * rates.mean(), abs=0.03)

    # each baseline's residual, measured directly on fresh plays of the same states
    fresh = _plays(rng, rates, 8)
    expected = -1 + 6 * rates[:, None]
    assert noise.state_value_noise == pytest.approx((fresh - expected).var(), rel=0.03)
    assert noise.batch_mean_noise == pytest.approx((fresh - fresh.mean()).var(), rel=0.03)
    group_advantage = (fresh - fresh.mean(axis=1, keepdims=True)) * 8 / 7  # unit weight on the sample's deviation
    assert noise.group_mean_noise == pytest.approx(group_advantage.var(), rel=0.03)
    assert noise.critic_ceiling == pytest.approx(rates.var() / (rates.var() + np.mean(rates * (1 - rates))), rel=0.1)


def test_states_that_do_not_differ_leave_a_critic_nothing_and_grpo_adds_noise():
    rng = np.random.default_rng(1)
    noise = baseline_noise(_plays(rng, np.full(3000, 0.3), 16), group_size=8)
    assert abs(noise.between) < 0.02 * noise.within
    assert noise.critic_ceiling < 0.02
    assert noise.group_share == pytest.approx(-1 / 7, abs=0.02)


def test_states_that_differ_a_lot_favour_both_baselines():
    rng = np.random.default_rng(2)
    noise = baseline_noise(_plays(rng, rng.choice([0.02, 0.98], size=2000), 16), group_size=8)
    assert noise.critic_ceiling > 0.85 and noise.group_share > 0.8


def test_linear_probe_recovers_a_known_r2_on_unseen_states_and_nothing_from_noise():
    rng = np.random.default_rng(3)
    states = 600
    state_features = rng.normal(size=(states, 12))
    weights = rng.normal(size=12)
    signal = state_features @ weights
    ids = np.repeat(np.arange(states), 4)
    targets = signal[ids] + rng.normal(scale=signal.std(), size=ids.size)  # R^2 = 1/2
    ev = linear_probe_explained_variance(state_features[ids], targets, ids, ridge=1.0)
    assert ev == pytest.approx(0.5, abs=0.05)
    # features unrelated to the targets: a memorised state does not help on the held-out states
    unrelated = linear_probe_explained_variance(rng.normal(size=(states, 12))[ids], targets, ids, ridge=1.0)
    assert -0.05 < unrelated < 0.02


def test_bad_shapes_are_one_sentence():
    with pytest.raises(ValueError, match="states >= 2, plays >= 2"):
        baseline_noise(np.zeros((5, 1)), group_size=8)
    with pytest.raises(ValueError, match="group size of at least 2"):
        baseline_noise(np.zeros((5, 4)), group_size=1)
    with pytest.raises(ValueError, match="a state per fold"):
        linear_probe_explained_variance(np.zeros((6, 2)), np.zeros(6), np.array([0, 0, 1, 1, 2, 2]), ridge=1.0)
