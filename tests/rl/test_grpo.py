"""GRPO: group advantages and the token-level clipped loss against numpy, and grpo_update on the toy policy."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl.grpo import GRPOConfig, group_advantages, grpo_loss, grpo_update
from rl.update import init_train_state
from tests.rl.test_ppo import toy_buffer_and_params, toy_policy

grpo_loss_jit = jax.jit(grpo_loss, static_argnames="config")


def test_group_advantages_match_numpy():
    rewards = np.array([[5.0, -1.0, -2.0, 5.0], [1.0, 1.0, 1.0, 1.0], [0.0, 3.0, -3.0, 1.5]], np.float32)
    cfg = GRPOConfig(group_size=4)
    expected = np.array([(row - row.mean()) / (row.std(ddof=1) + 1e-6) for row in rewards.astype(np.float64)])
    np.testing.assert_allclose(group_advantages(rewards, cfg), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(group_advantages(rewards, cfg))[1] == 0.0)
    with pytest.raises(ValueError, match="group_size=3"):
        group_advantages(rewards, GRPOConfig(group_size=3))
    dr = group_advantages(rewards, GRPOConfig(group_size=4, dr_grpo=True))
    np.testing.assert_allclose(dr, rewards - rewards.mean(axis=1, keepdims=True), rtol=1e-6)


def reference_grpo_loss(new, old, adv, mask, cfg, ref=None, aggregation="token_mean"):
    ratio = np.exp(new - old)
    high = cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
    per_token = -np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - cfg.clip_eps, 1 + high) * adv[:, None])
    if ref is not None:
        per_token = per_token + cfg.kl_coef * (np.exp(ref - new) - (ref - new) - 1)
    per_token = per_token * mask
    if aggregation == "token_mean":
        return per_token.sum() / mask.sum()
    if aggregation == "sequence_mean":
        return np.mean(per_token.sum(1) / mask.sum(1))
    length = mask.shape[1] if cfg.norm_length is None else cfg.norm_length
    return per_token.sum() / (mask.shape[0] * length)


@pytest.mark.parametrize("cfg", [
    GRPOConfig(group_size=3),
    GRPOConfig(group_size=3, aggregation="sequence_mean", kl_coef=0.04),
    GRPOConfig(group_size=3, dr_grpo=True, clip_eps_high=0.28),
    GRPOConfig(group_size=3, aggregation="token_sum_norm", norm_length=10, kl_coef=0.1),
])
def test_loss_matches_numpy(cfg):
    rng = np.random.default_rng(0)
    n, s = 6, 5
    new = -rng.random((n, s))
    old = new + rng.normal(size=(n, s)) * 0.3
    ref = new + rng.normal(size=(n, s)) * 0.2
    mask = rng.random((n, s)) < 0.7
    mask[:, 0] = True
    adv = np.asarray(group_advantages(rng.normal(size=(2, 3)), cfg)).reshape(-1)
    loss, metrics = grpo_loss_jit(new, old, adv, mask, cfg, ref_token_logprobs=ref)
    expected = reference_grpo_loss(new, old, adv, mask.astype(float), cfg, ref if cfg.kl_coef else None,
                                   cfg.loss_aggregation)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    ratio = np.exp(new - old)[mask]
    high = cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
    np.testing.assert_allclose(metrics["clip_fraction"], np.mean((ratio < 1 - cfg.clip_eps) | (ratio > 1 + high)))
    sequence = np.where(mask, new - old, 0.0).sum(-1)  # every row has a token (mask[:, 0])
    np.testing.assert_allclose(metrics["sequence_approx_kl"], np.mean(np.exp(sequence) - 1 - sequence), rtol=1e-5)


def test_dr_grpo_uses_a_constant_normaliser():
    assert GRPOConfig(dr_grpo=True).loss_aggregation == "token_sum_norm"
    assert GRPOConfig().loss_aggregation == "token_mean"
    with pytest.raises(ValueError, match="sequence_mean"):
        GRPOConfig(dr_grpo=True, aggregation="sequence_mean")
    # A longer response with the same per-token loss weighs more under Dr. GRPO, the same under sequence_mean.
    new = np.zeros((2, 4), np.float32)
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 1]], bool)
    adv = np.array([1.0, 1.0], np.float32)
    dr, _ = grpo_loss_jit(new, new, adv, mask, GRPOConfig(dr_grpo=True))
    seq, _ = grpo_loss_jit(new, new, adv, mask, GRPOConfig(aggregation="sequence_mean"))
    np.testing.assert_allclose(dr, -5 / 8)
    np.testing.assert_allclose(seq, -1.0)


def test_kl_needs_reference_logprobs():
    with pytest.raises(ValueError, match="reference token log-probs"):
        grpo_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2), np.ones((2, 3), bool), GRPOConfig(kl_coef=0.1))


def test_grpo_update_takes_the_steps_and_reduces_the_loss():
    params, ppo_buffer = toy_buffer_and_params(seed=1)
    token_logprobs, _, _ = toy_policy(params, ppo_buffer)
    cfg = GRPOConfig(group_size=4, epochs=2, minibatch_size=4)
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    buffer = {"features": ppo_buffer["features"], "tokens": ppo_buffer["tokens"],
              "response_mask": ppo_buffer["response_mask"], "old_token_logprobs": token_logprobs,
              "advantages": group_advantages(rewards, cfg).reshape(-1)}
    optimizer = optax.adam(0.05)

    def logprob_fn(p, mb):
        return toy_policy(p, mb)[0]

    @jax.jit
    def loss_at(p):
        return grpo_loss(logprob_fn(p, buffer), buffer["old_token_logprobs"], buffer["advantages"],
                         buffer["response_mask"], cfg)[0]

    update = jax.jit(functools.partial(grpo_update, logprob_fn=logprob_fn, optimizer=optimizer, config=cfg))
    state, metrics = update(init_train_state(params, optimizer), buffer, jax.random.key(0))
    assert int(state.step) == 4
    assert np.isfinite(metrics["policy_loss"]) and np.isfinite(metrics["grad_norm"])
    assert float(loss_at(state.params)) < float(loss_at(params)) - 1e-3
    np.testing.assert_allclose(state.params["value"], params["value"])  # not in the GRPO loss: untouched

    # skip_padding: the 3 valid responses of 8 fill one minibatch of 4 per epoch; without "valid" it says so
    skipping = dataclasses.replace(cfg, skip_padding=True)
    with pytest.raises(ValueError, match=r"lacks \['valid'\]"):
        grpo_update(init_train_state(params, optimizer), buffer, jax.random.key(0), logprob_fn=logprob_fn,
                    optimizer=optimizer, config=skipping)
    valid = jnp.asarray([True, False, False, True, False, True, False, False])
    padded = dict(buffer, valid=valid, response_mask=buffer["response_mask"] & valid[:, None])
    state, metrics = jax.jit(functools.partial(grpo_update, logprob_fn=logprob_fn, optimizer=optimizer,
                                               config=skipping))(init_train_state(params, optimizer), padded,
                                                                 jax.random.key(0))
    assert int(state.step) == 2 and np.isfinite(metrics["policy_loss"])


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "token_sum_norm"])
def test_microbatched_update_equals_the_whole_minibatch(aggregation):
    """Each minibatch of 4 responses in 2 microbatches (uneven response lengths, so their token counts differ) gives
    the whole minibatch's params and metrics under every loss aggregation, with the k3 KL; SGD, so that a
    gradient off by any factor would show."""
    params, ppo_buffer = toy_buffer_and_params(seed=2)
    token_logprobs, _, _ = toy_policy(params, ppo_buffer)
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    mask = np.asarray(ppo_buffer["response_mask"]).copy()
    mask[1, 1:] = False  # a one-token response
    buffer = {"features": ppo_buffer["features"], "tokens": ppo_buffer["tokens"], "response_mask": mask,
              "old_token_logprobs": token_logprobs + 0.1, "ref_token_logprobs": token_logprobs - 0.2,
              "advantages": group_advantages(rewards, GRPOConfig(group_size=4)).reshape(-1)}
    optimizer = optax.sgd(0.3)

    def update(microbatches):
        cfg = GRPOConfig(group_size=4, epochs=2, minibatch_size=4, aggregation=aggregation, kl_coef=0.05,
                         microbatches=microbatches)
        step = jax.jit(functools.partial(grpo_update, logprob_fn=lambda p, mb: toy_policy(p, mb)[0],
                                         optimizer=optimizer, config=cfg))
        return step(init_train_state(params, optimizer), buffer, jax.random.key(1))

    (whole, whole_metrics), (parts, parts_metrics) = update(1), update(2)
    np.testing.assert_allclose(parts.params["policy"], whole.params["policy"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(whole.params["policy"], params["policy"])
    for key, value in whole_metrics.items():
        np.testing.assert_allclose(parts_metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)

