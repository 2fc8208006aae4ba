"""GAE against a plain numpy reference that sums discounted TD errors forward along each episode."""

import functools

import jax
import numpy as np
import pytest

from rl.gae import GAEConfig, gae

gae_jit = jax.jit(gae, static_argnames="config")


def reference_gae(rewards, values, dones, valid, bootstrap, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} along the valid transitions of t's episode (forward sums)."""
    batch, steps = rewards.shape
    advantages = np.zeros((batch, steps))
    for b in range(batch):
        chain = [t for t in range(steps) if valid[b, t]]
        deltas = {}
        for position, t in enumerate(chain):
            if dones[b, t]:
                next_value = 0.0
            elif position + 1 < len(chain):
                next_value = values[b, chain[position + 1]]
            else:
                next_value = bootstrap[b]
            deltas[t] = rewards[b, t] + gamma * next_value - values[b, t]
        for position, t in enumerate(chain):
            total, factor = 0.0, 1.0
            for u in chain[position:]:
                total += factor * deltas[u]
                if dones[b, u]:
                    break
                factor *= gamma * lam
            advantages[b, t] = total
    returns = np.where(valid, advantages + values, 0.0)
    return advantages, returns


def random_rollout(seed, batch=3, steps=7):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(batch, steps)).astype(np.float32)
    values = rng.normal(size=(batch, steps)).astype(np.float32)
    dones = rng.random((batch, steps)) < 0.3
    valid = rng.random((batch, steps)) < 0.8
    bootstrap = rng.normal(size=(batch,)).astype(np.float32)
    return rewards, values, dones, valid, bootstrap


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.95), (1.0, 1.0), (0.9, 0.0), (0.0, 0.95), (0.99, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(gamma, lam, seed):
    rewards, values, dones, valid, bootstrap = random_rollout(seed)
    advantages, returns = gae_jit(rewards, values, dones, valid, bootstrap, config=GAEConfig(gamma, lam))
    expected_adv, expected_ret = reference_gae(rewards, values, dones, valid, bootstrap, gamma, lam)
    np.testing.assert_allclose(advantages, expected_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected_ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(advantages)[~valid] == 0.0)


def test_terminal_in_the_middle_and_truncated_tail_by_hand():
    # Row: episode 1 = slots 0, 1 (terminal at 1); episode 2 = slots 2, 4 (slot 3 padded), truncated -> bootstrap.
    gamma, lam = 0.5, 0.5
    rewards = np.array([[1.0, 2.0, 3.0, 100.0, 4.0, 100.0]], np.float32)
    values = np.array([[0.5, 0.25, 1.0, 100.0, 2.0, 100.0]], np.float32)
    dones = np.array([[False, True, False, True, False, False]])
    valid = np.array([[True, True, True, False, True, False]])
    bootstrap = np.array([8.0], np.float32)
    advantages, returns = gae_jit(rewards, values, dones, valid, bootstrap, config=GAEConfig(gamma, lam))
    d1 = 2.0 - 0.25                    # terminal: no bootstrap
    d0 = 1.0 + gamma * 0.25 - 0.5
    d4 = 4.0 + gamma * 8.0 - 2.0       # truncated: bootstraps from the given value
    d2 = 3.0 + gamma * 2.0 - 1.0       # the padded slot 3 is skipped
    expected = [d0 + gamma * lam * d1, d1, d2 + gamma * lam * d4, 0.0, d4, 0.0]
    np.testing.assert_allclose(advantages[0], expected, rtol=1e-6)
    np.testing.assert_allclose(returns[0], np.where(valid[0], np.array(expected) + values[0], 0.0), rtol=1e-6)


def test_lambda_zero_is_td0_and_lambda_one_is_monte_carlo():
    rewards, values, _, _, bootstrap = random_rollout(5, batch=2, steps=5)
    dones = np.zeros((2, 5), bool)
    dones[0, -1] = True  # row 0 ends in a terminal, row 1 is truncated
    gamma = 0.9
    td0, _ = gae_jit(rewards, values, dones, None, bootstrap, config=GAEConfig(gamma, 0.0))
    next_values = np.concatenate([values[:, 1:], bootstrap[:, None]], axis=1) * (1 - dones)
    np.testing.assert_allclose(td0, rewards + gamma * next_values - values, rtol=1e-5, atol=1e-6)

    _, mc_returns = gae_jit(rewards, values, dones, None, bootstrap, config=GAEConfig(gamma, 1.0))
    for b in range(2):
        for t in range(5):
            tail = 0.0 if dones[b, -1] else gamma ** (5 - t) * bootstrap[b]
            expected = sum(gamma ** (u - t) * rewards[b, u] for u in range(t, 5)) + tail
            np.testing.assert_allclose(mc_returns[b, t], expected, rtol=1e-5, atol=1e-5)


def test_defaults_are_the_papers_and_bad_values_are_refused():
    assert GAEConfig() == GAEConfig(gamma=0.9, lam=0.95)
    with pytest.raises(ValueError, match="gamma"):
        GAEConfig(gamma=1.5)
    with pytest.raises(ValueError, match="rewards, values and dones"):
        gae(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3), bool))


def test_vmaps_over_an_extra_axis():
    rewards, values, dones, valid, bootstrap = random_rollout(9)
    stacked = [np.stack([x, x[::-1]]) for x in (rewards, values, dones, valid, bootstrap)]
    advantages, _ = jax.vmap(functools.partial(gae, config=GAEConfig()))(*stacked)
    expected, _ = reference_gae(rewards[::-1], values[::-1], dones[::-1], valid[::-1], bootstrap[::-1], 0.9, 0.95)
    np.testing.assert_allclose(advantages[1], expected, rtol=1e-5, atol=1e-5)
