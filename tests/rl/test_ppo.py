"""PPO losses against numpy references, hand-computed clipping cases, the optimizer against a numpy Adam, and
ppo_update on a toy linear softmax policy against a Python loop of the same epochs and minibatches."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl.ppo import (PPOConfig, answer_key_token_weights, kl_penalized_rewards, optimizer_steps_per_update,
                    learning_rate, peak_learning_rate, ppo_loss, ppo_optimizer, ppo_update, sequence_logprob,
                    with_peak_learning_rate, with_schedule)
from rl.update import init_train_state

ppo_loss_jit = jax.jit(ppo_loss, static_argnames="config")


def reference_ppo_loss(xp, new_tok, old_seq, adv, new_v, old_v, ret, mask, valid, cfg, weights=None,
                       entropy=None, ref_tok=None, normalize=False):
    """The PPO loss written out directly; xp is numpy (float64 checks) or jax.numpy (differentiable)."""
    mask = mask * valid[:, None]
    weights = xp.ones_like(new_tok) if weights is None else weights
    n_valid = valid.sum()
    if normalize:
        mean = (adv * valid).sum() / n_valid
        std = xp.sqrt((((adv - mean) ** 2) * valid).sum() / (n_valid - 1))
        adv = (adv - mean) / (std + cfg.advantage_eps) * valid
    new_seq = (new_tok * weights * mask).sum(-1)
    ratio = xp.exp(new_seq - old_seq)
    surr = xp.minimum(ratio * adv, xp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    policy = -(surr * valid).sum() / n_valid
    err = (new_v - ret) ** 2
    if cfg.value_clip_eps is not None:
        clipped = old_v + xp.clip(new_v - old_v, -cfg.value_clip_eps, cfg.value_clip_eps)
        err = xp.maximum(err, (clipped - ret) ** 2)
    value = 0.5 * (err * valid).sum() / n_valid
    loss = policy + cfg.vf_coef * value
    if entropy is not None:
        loss = loss - cfg.entropy_coef * (entropy * mask).sum() / mask.sum()
    if ref_tok is not None:
        d = ref_tok - new_tok
        loss = loss + cfg.kl_coef * ((xp.exp(d) - d - 1) * mask).sum() / mask.sum()
    return loss, policy, value, ratio


def random_batch(seed, n=6, s=5):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, s)) < 0.8
    mask[:, 0] = True
    valid = np.ones(n, bool)
    valid[-1] = False
    return dict(
        new_tok=-rng.random((n, s)) * 0.3, old_seq=None, adv=rng.normal(size=n), new_v=rng.normal(size=n),
        old_v=rng.normal(size=n), ret=rng.normal(size=n), mask=mask, valid=valid,
        weights=np.where(rng.random((n, s)) < 0.5, 0.5, 1.0), entropy=rng.random((n, s)),
        ref_tok=-rng.random((n, s)) * 0.3, old_noise=rng.normal(size=n) * 0.2)


@pytest.mark.parametrize("normalization", ["minibatch", "none"])
@pytest.mark.parametrize("value_clip", [0.1, None])
def test_loss_matches_numpy(normalization, value_clip):
    b = random_batch(0)
    cfg = PPOConfig(advantage_normalization=normalization, value_clip_eps=value_clip, entropy_coef=0.01,
                    kl_mode="k3_loss", kl_coef=0.05)
    new_seq = (b["new_tok"] * b["weights"] * b["mask"]).sum(-1)
    old_seq = new_seq + b["old_noise"]
    loss, metrics = ppo_loss_jit(
        jnp.asarray(b["new_tok"], jnp.float32), old_seq, b["adv"], b["new_v"], b["old_v"], b["ret"], b["mask"],
        b["valid"], cfg, token_weights=b["weights"], entropy=b["entropy"], ref_token_logprobs=b["ref_tok"])
    expected, policy, value, ratio = reference_ppo_loss(
        np, b["new_tok"], old_seq, b["adv"], b["new_v"], b["old_v"], b["ret"], b["mask"].astype(float),
        b["valid"].astype(float), cfg, b["weights"], b["entropy"], b["ref_tok"], normalize=normalization != "none")
    np.testing.assert_allclose(loss, expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["policy_loss"], policy, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["value_loss"], value, rtol=2e-5, atol=1e-6)
    v = b["valid"]
    np.testing.assert_allclose(metrics["clip_fraction"], np.mean(np.abs(ratio[v] - 1) > cfg.clip_eps), atol=1e-6)
    np.testing.assert_allclose(metrics["approx_kl"], np.mean(ratio[v] - 1 - np.log(ratio[v])), rtol=1e-4)
    resid = b["ret"][v] - b["new_v"][v]
    np.testing.assert_allclose(metrics["explained_variance"], 1 - resid.var() / b["ret"][v].var(), rtol=1e-4)
    tokens = b["mask"] & v[:, None]
    np.testing.assert_allclose(metrics["entropy"], b["entropy"][tokens].mean(), rtol=1e-5)


def test_hand_computed_clipping_and_its_gradients():
    cfg = PPOConfig(clip_eps=0.1, advantage_normalization="none", value_clip_eps=None, vf_coef=0.0)
    # One token per response, so the sequence log-ratio is the token log-ratio.
    ratios = np.array([1.5, 0.5, 1.5, 0.5, 1.05], np.float32)
    advantages = np.array([2.0, 2.0, -2.0, -2.0, 1.0], np.float32)
    # per-sample surrogate: clipped 1.1*2, unclipped 0.5*2, unclipped 1.5*-2, clipped 0.9*-2, inside 1.05*1
    expected_surrogate = np.array([2.2, 1.0, -3.0, -1.8, 1.05])
    new_tok = jnp.log(jnp.asarray(ratios))[:, None]
    zeros = jnp.zeros(5)
    mask, valid = np.ones((5, 1), bool), np.ones(5, bool)

    def loss_of(tokens):
        return ppo_loss(tokens, zeros, advantages, zeros, zeros, zeros, mask, valid, cfg)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(new_tok)
    np.testing.assert_allclose(loss, -expected_surrogate.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 4 / 5)
    # Clipped samples give no gradient; the others give -ratio * A / N (d ratio / d logp = ratio).
    expected_grad = np.array([0.0, -0.5 * 2.0, 1.5 * 2.0, 0.0, -1.05 * 1.0]) / 5
    np.testing.assert_allclose(grads[:, 0], expected_grad, rtol=1e-5, atol=1e-7)


def test_hand_computed_value_clipping():
    cfg = PPOConfig(value_clip_eps=0.1, advantage_normalization="none")
    old_v = np.array([0.0, 0.0, 0.0], np.float32)
    new_v = np.array([0.5, 0.5, 0.05], np.float32)
    ret = np.array([1.0, 0.0, 1.0], np.float32)
    # 1: unclipped (0.5)^2=.25, clipped (0.1-1)^2=.81 -> .81; 2: .25 vs .01 -> .25; 3: inside the clip -> .9025
    expected = 0.5 * np.mean([0.81, 0.25, 0.9025])
    _, metrics = ppo_loss_jit(jnp.zeros((3, 2)), jnp.zeros(3), jnp.zeros(3), new_v, old_v, ret,
                              np.ones((3, 2), bool), np.ones(3, bool), cfg)
    np.testing.assert_allclose(metrics["value_loss"], expected, rtol=1e-6)


def test_sequence_logprob_and_answer_key_weights():
    tokens = np.array([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_allclose(sequence_logprob(tokens, mask), [-6.0, -4.0])
    weights = answer_key_token_weights(np.array([2, 4]), mask, 0.5)
    np.testing.assert_allclose(weights, [[0.5, 0.5, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(sequence_logprob(tokens, mask, weights), [-4.5, -2.0])


def test_k1_reward_shaping():
    rewards = np.array([[1.0, 5.0], [-1.0, 0.0]], np.float32)
    logp = np.array([[-1.0, -2.0], [-3.0, -4.0]], np.float32)
    ref = np.array([[-1.5, -1.0], [-3.0, -9.0]], np.float32)
    valid = np.array([[True, True], [True, False]])
    shaped, metrics = kl_penalized_rewards(rewards, logp, ref, 0.1, valid)
    np.testing.assert_allclose(shaped, [[1.0 - 0.05, 5.0 + 0.1], [-1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(metrics["kl_k1"], (0.5 - 1.0 + 0.0) / 3, rtol=1e-6)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="kl_mode"):
        PPOConfig(kl_mode="k2")
    b = random_batch(1)
    with pytest.raises(ValueError, match="reference token log-probs"):
        ppo_loss(b["new_tok"], np.zeros(6), b["adv"], b["new_v"], b["old_v"], b["ret"], b["mask"], b["valid"],
                 PPOConfig(kl_mode="k3_loss", kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        ppo_loss(b["new_tok"], np.zeros(6), b["adv"], b["new_v"], b["old_v"], b["ret"], b["mask"], b["valid"],
                 PPOConfig(entropy_coef=0.1))


def test_optimizer_clips_then_runs_adam_with_cosine_decay():
    cfg = PPOConfig()  # lr 1e-6 -> 1e-9, eps 1e-7, max grad norm 0.01
    total = 4
    optimizer = ppo_optimizer(cfg, total_steps=total)
    params = jnp.zeros(2)
    state = optimizer.init(params)
    step_fn = jax.jit(optimizer.update)
    grads = [np.array([100.0, 0.0]), np.array([0.001, 0.0]), np.array([0.0, 3.0]), np.array([0.002, -0.004])]
    m = v = np.zeros(2)
    expected_params = np.zeros(2)
    for step, g in enumerate(grads):
        updates, state = step_fn(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
        g = g * min(1.0, 0.01 / np.linalg.norm(g))
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr = 1e-9 + (1e-6 - 1e-9) * 0.5 * (1 + np.cos(np.pi * step / total))
        expected_params = expected_params - lr * (m / (1 - 0.9 ** (step + 1))) / (
            np.sqrt(v / (1 - 0.999 ** (step + 1))) + 1e-7)
    np.testing.assert_allclose(params, expected_params, rtol=1e-4, atol=1e-13)

    # The peak learning rate is state: doubling it doubles the next step (same moments, same cosine factor).
    assert float(peak_learning_rate(state)) == pytest.approx(1e-6)
    g = jnp.asarray([0.003, -0.001], jnp.float32)
    single, _ = step_fn(g, state, params)
    double, doubled_state = step_fn(g, with_peak_learning_rate(state, 2e-6), params)
    np.testing.assert_allclose(double, 2 * np.asarray(single), rtol=1e-6)
    assert float(peak_learning_rate(doubled_state)) == pytest.approx(2e-6)
    assert optimizer_steps_per_update(256, PPOConfig(minibatch_size=64)) == 16


def test_the_schedule_is_optimizer_state_and_learning_rate_reads_it():
    """with_schedule sets the peak rate, horizon and final fraction of a state built for other numbers; the steps
    follow them (the first Adam step of each param is -lr x sign(g)) and learning_rate(state) names each step's."""
    optimizer = ppo_optimizer(PPOConfig(learning_rate=1.0, final_learning_rate=1.0, max_grad_norm=1e9), 1)
    state = with_schedule(optimizer.init(jnp.zeros(2)), learning_rate=1e-3, total_steps=4, final_fraction=0.1)
    cosine = [1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(step, 4) / 4))) for step in range(6)]
    rates = []
    for step in range(6):
        rates.append(float(learning_rate(state)))
        updates, state = optimizer.update(jnp.asarray([0.5, -2.0]), state)
        if step == 0:
            np.testing.assert_allclose(updates, [-1e-3, 1e-3], rtol=1e-5)
    np.testing.assert_allclose(rates, cosine, rtol=1e-5)
    assert float(learning_rate(with_schedule(state, final_fraction=1.0))) == pytest.approx(1e-3)


def test_the_value_heads_updates_are_scaled_and_the_default_state_keeps_its_structure():
    params = {"text_model": {"w": jnp.ones(3)}, "value_head": {"w": jnp.ones(2)}}
    grads = {"text_model": {"w": jnp.asarray([0.3, -0.2, 0.1])}, "value_head": {"w": jnp.asarray([0.5, -0.4])}}
    plain, scaled = (ppo_optimizer(PPOConfig(learning_rate=1e-3, final_learning_rate=1e-4, value_lr_scale=k), 10)
                     for k in (1.0, 100.0))
    base, _ = plain.update(grads, plain.init(params), params)
    more, state = scaled.update(grads, scaled.init(params), params)
    np.testing.assert_allclose(more["text_model"]["w"], base["text_model"]["w"], rtol=1e-6)
    np.testing.assert_allclose(more["value_head"]["w"], 100 * np.asarray(base["value_head"]["w"]), rtol=1e-6)
    assert float(peak_learning_rate(state)) == pytest.approx(1e-3)
    assert len(plain.init(params)) == 3  # a checkpoint of the default optimizer restores as before
    with pytest.raises(ValueError, match="value_lr_scale must be positive"):
        PPOConfig(value_lr_scale=0.0)


# ---- ppo_update on a toy policy: a linear softmax over a few tokens, with a linear value head ----------------
N, S, F, V = 8, 3, 4, 5


def toy_policy(params, minibatch):
    logits = minibatch["features"] @ params["policy"]                       # (n, S, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    token_logprobs = jnp.take_along_axis(logp, minibatch["tokens"][..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    values = minibatch["features"][:, 0, :] @ params["value"]              # (n,)
    return token_logprobs, values, entropy


def toy_buffer_and_params(seed=0):
    rng = np.random.default_rng(seed)
    params = {"policy": jnp.asarray(rng.normal(size=(F, V)) * 0.5, jnp.float32),
              "value": jnp.asarray(rng.normal(size=F) * 0.5, jnp.float32)}
    features = jnp.asarray(rng.normal(size=(N, S, F)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, V, size=(N, S)), jnp.int32)
    mask = rng.random((N, S)) < 0.8
    mask[:, 0] = True
    valid = np.ones(N, bool)
    valid[3] = False
    buffer = {"features": features, "tokens": tokens, "response_mask": jnp.asarray(mask),
              "valid": jnp.asarray(valid)}
    token_logprobs, values, _ = toy_policy(params, buffer)
    buffer.update(old_logprob=sequence_logprob(token_logprobs, mask), old_values=values,
                  advantages=jnp.asarray(rng.normal(size=N), jnp.float32),
                  returns=jnp.asarray(rng.normal(size=N), jnp.float32))
    return params, buffer


def python_loop_ppo(params, buffer, rng, optimizer, cfg):
    """The same epochs x minibatches as plain Python, with the reference loss of this file."""
    valid = buffer["valid"].astype(jnp.float32)
    adv = buffer["advantages"]
    mean = (adv * valid).sum() / valid.sum()
    std = jnp.sqrt((((adv - mean) ** 2) * valid).sum() / (valid.sum() - 1))
    buffer = dict(buffer, advantages=(adv - mean) / (std + cfg.advantage_eps) * valid)
    opt_state = optimizer.init(params)

    def loss_fn(p, mb):
        tok, values, entropy = toy_policy(p, mb)
        return reference_ppo_loss(jnp, tok, mb["old_logprob"], mb["advantages"], values, mb["old_values"],
                                  mb["returns"], mb["response_mask"].astype(jnp.float32),
                                  mb["valid"].astype(jnp.float32), cfg, entropy=entropy)[0]

    @jax.jit  # one compiled step, called from the Python loop
    def step(params, opt_state, mb):
        updates, opt_state = optimizer.update(jax.grad(loss_fn)(params, mb), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    valid = np.asarray(buffer["valid"])
    for key in jax.random.split(rng, cfg.epochs):
        order = np.asarray(jax.random.permutation(key, N))
        items = N
        if cfg.skip_padding:  # the valid transitions first, in the permutation's order; whole minibatches of them
            order = np.concatenate([order[valid[order]], order[~valid[order]]])
            items = -(-int(valid.sum()) // cfg.minibatch_size) * cfg.minibatch_size
        for start in range(0, items, cfg.minibatch_size):
            idx = order[start:start + cfg.minibatch_size]
            params, opt_state = step(params, opt_state, {k: x[idx] for k, x in buffer.items()})
    return params


def full_buffer_loss(params, buffer, cfg):
    tok, values, entropy = toy_policy(params, buffer)
    return reference_ppo_loss(np, np.asarray(tok, np.float64), np.asarray(buffer["old_logprob"], np.float64),
                              np.asarray(buffer["advantages"], np.float64), np.asarray(values, np.float64),
                              np.asarray(buffer["old_values"], np.float64), np.asarray(buffer["returns"], np.float64),
                              np.asarray(buffer["response_mask"], np.float64), np.asarray(buffer["valid"], np.float64),
                              cfg, entropy=np.asarray(entropy, np.float64), normalize=True)[0]


def test_ppo_update_matches_python_loop_and_reduces_the_loss():
    cfg = PPOConfig(epochs=3, minibatch_size=4, entropy_coef=0.01, max_grad_norm=1.0)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(0.05, eps=cfg.adam_eps))
    params, buffer = toy_buffer_and_params()
    rng = jax.random.key(3)
    update = jax.jit(functools.partial(ppo_update, policy_fn=toy_policy, optimizer=optimizer, config=cfg))
    state, metrics = update(init_train_state(params, optimizer), buffer, rng)
    expected = python_loop_ppo(params, buffer, rng, optimizer, cfg)
    for name in params:
        np.testing.assert_allclose(state.params[name], expected[name], rtol=1e-4, atol=1e-6)
    assert int(state.step) == cfg.epochs * (N // cfg.minibatch_size)
    for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "entropy", "explained_variance", "loss",
                "grad_norm"):
        assert np.isfinite(metrics[key]), key
    assert full_buffer_loss(state.params, buffer, cfg) < full_buffer_loss(params, buffer, cfg) - 1e-3

    # The same update with the buffer sharded over 2 host devices along N (data parallel) gives the same params.
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
    sharded = jax.device_put(buffer, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    sharded_state, _ = update(init_train_state(params, optimizer), sharded, rng)
    for name in params:
        np.testing.assert_allclose(sharded_state.params[name], state.params[name], rtol=1e-5, atol=1e-7)


def test_skip_padding_trains_on_the_valid_transitions_only():
    """PPOConfig.skip_padding with 3 of 8 transitions padding and minibatches of 2: ceil(5 / 2) = 3 gradient steps
    per epoch (not 4), the same params as the Python loop over valid-first minibatches; `advance_schedule` then
    puts the cosine where the plain update's 8 steps leave it, Adam's count stays at the 6 steps taken."""
    from rl.ppo import advance_schedule, learning_rate, ppo_optimizer

    params, buffer = toy_buffer_and_params()
    buffer = dict(buffer, valid=buffer["valid"].at[jnp.asarray([5, 6])].set(False))
    cfg = PPOConfig(epochs=2, minibatch_size=2, max_grad_norm=1.0, skip_padding=True)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(0.05, eps=cfg.adam_eps))
    rng = jax.random.key(6)
    update = jax.jit(functools.partial(ppo_update, policy_fn=toy_policy, optimizer=optimizer, config=cfg))
    state, metrics = update(init_train_state(params, optimizer), buffer, rng)
    assert int(state.step) == 6 and all(np.isfinite(float(value)) for value in metrics.values())
    expected = python_loop_ppo(params, buffer, rng, optimizer, cfg)
    for name in params:
        np.testing.assert_allclose(state.params[name], expected[name], rtol=1e-4, atol=1e-6)
    # the buffer sharded over 2 devices along N (the trip count is a sum over shards): the same update
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
    sharded = jax.device_put(buffer, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    sharded_state, _ = update(init_train_state(params, optimizer), sharded, rng)
    assert int(sharded_state.step) == 6
    for name in params:
        np.testing.assert_allclose(sharded_state.params[name], state.params[name], rtol=1e-5, atol=1e-7)

    schedule = ppo_optimizer(PPOConfig(learning_rate=1e-3, final_learning_rate=1e-5), total_steps=20)
    scheduled = lambda config: jax.jit(functools.partial(  # noqa: E731
        ppo_update, policy_fn=toy_policy, optimizer=schedule, config=config))(
        init_train_state(params, schedule), buffer, rng)[0]
    plain, skipping = scheduled(dataclasses.replace(cfg, skip_padding=False)), scheduled(cfg)
    advanced = advance_schedule(skipping.opt_state, 8 - 6)
    assert float(learning_rate(advanced)) == pytest.approx(float(learning_rate(plain.opt_state)), rel=1e-6)
    assert float(learning_rate(skipping.opt_state)) > float(learning_rate(plain.opt_state))
    assert int(advanced[1].inner_state[0].count) == 6  # Adam's bias correction counts the steps taken


def test_a_critic_only_update_is_the_update_without_a_policy_gradient():
    """critic_only (a critic warm-up): the update a zero advantage would give, i.e. the value loss alone; the
    policy's params keep their bits under Adam (zero gradients, zero moments), and the metrics are the full loss's."""
    cfg = PPOConfig(epochs=3, minibatch_size=4, max_grad_norm=1.0)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(0.05, eps=cfg.adam_eps))
    params, buffer = toy_buffer_and_params()
    rng = jax.random.key(5)

    def update(critic_only, data):
        step = jax.jit(functools.partial(ppo_update, policy_fn=toy_policy, optimizer=optimizer, config=cfg,
                                         critic_only=critic_only))
        return step(init_train_state(params, optimizer), data, rng)

    warm, metrics = update(True, buffer)
    no_advantage, _ = update(False, dict(buffer, advantages=jnp.zeros_like(buffer["advantages"])))
    np.testing.assert_array_equal(np.asarray(warm.params["policy"]), np.asarray(params["policy"]))
    np.testing.assert_allclose(warm.params["value"], no_advantage.params["value"], rtol=1e-6, atol=1e-8)
    assert not np.allclose(warm.params["value"], params["value"])
    value_loss = lambda p: float(0.5 * np.mean(((buffer["features"][:, 0] @ p["value"]) - buffer["returns"])[  # noqa: E731
        np.asarray(buffer["valid"])] ** 2))
    assert value_loss(warm.params) < value_loss(params)
    assert float(metrics["policy_loss"]) != 0.0 and float(metrics["loss"]) == pytest.approx(
        cfg.vf_coef * float(metrics["value_loss"]), rel=1e-6)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_microbatched_update_equals_the_whole_minibatch(microbatches):
    """Gradient accumulation: each minibatch of 4 in microbatches of 2 or 1 gives the same params and metrics as
    the whole minibatch, with a masked-out transition and uneven response lengths (the microbatches' counts
    differ, so a mean of their means would not be the minibatch's mean), the entropy bonus, the k3 KL and token
    weights in the loss. SGD without clipping, so that a gradient off by any factor would show (Adam would
    hide a constant one)."""
    params, buffer = toy_buffer_and_params()
    rng = np.random.default_rng(7)
    buffer = dict(buffer, ref_token_logprobs=jnp.asarray(rng.normal(size=(N, S)) - 2.0, jnp.float32),
                  token_weights=jnp.asarray(rng.choice([0.5, 1.0], size=(N, S)), jnp.float32))
    optimizer = optax.sgd(0.3)

    def update(**changes):
        cfg = PPOConfig(epochs=2, minibatch_size=4, entropy_coef=0.01, kl_mode="k3_loss", kl_coef=0.05, **changes)
        step = jax.jit(functools.partial(ppo_update, policy_fn=toy_policy, optimizer=optimizer, config=cfg))
        return step(init_train_state(params, optimizer), buffer, jax.random.key(4))

    whole, whole_metrics = update()
    parts, parts_metrics = update(microbatches=microbatches)
    for name in params:
        np.testing.assert_allclose(parts.params[name], whole.params[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(whole.params["policy"], params["policy"])
    for key, value in whole_metrics.items():
        if key != "explained_variance":  # the microbatches' own, weighted by their valid transitions
            np.testing.assert_allclose(parts_metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    with pytest.raises(ValueError, match="microbatches=3 must be at least 1 and divide minibatch_size=4"):
        PPOConfig(minibatch_size=4, microbatches=3)
    with pytest.raises(ValueError, match="'minibatch' needs the whole minibatch"):
        PPOConfig(minibatch_size=4, microbatches=2, advantage_normalization="minibatch")


def test_ppo_update_rejects_an_incomplete_buffer_or_an_uneven_minibatch():
    params, buffer = toy_buffer_and_params()
    optimizer = optax.sgd(0.1)
    state = init_train_state(params, optimizer)
    incomplete = {k: x for k, x in buffer.items() if k != "returns"}
    with pytest.raises(ValueError, match="returns"):
        ppo_update(state, incomplete, jax.random.key(0), policy_fn=toy_policy, optimizer=optimizer,
                   config=PPOConfig(minibatch_size=4))
    with pytest.raises(ValueError, match="multiple of minibatch_size"):
        ppo_update(state, buffer, jax.random.key(0), policy_fn=toy_policy, optimizer=optimizer,
                   config=PPOConfig(minibatch_size=3))
