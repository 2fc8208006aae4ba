"""Freezing (groups and regexes), partitions, the optimizer's defaults, schedule and injected learning rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft.optim import (OptimizerConfig, combine, flatten_paths, learning_rate, lr_multiplier_schedule,
                       make_optimizer, partition, trainable_mask, tree_bytes, with_peak_learning_rate)
from tests.sft.tiny_lm import init_params


def frozen_paths(params, freeze):
    return sorted(path for path, trains in flatten_paths(trainable_mask(params, freeze)).items() if not trains)


def test_freeze_by_group_and_by_regex():
    params = init_params()
    assert frozen_paths(params, []) == []
    assert frozen_paths(params, ["vision_encoder", "projector"]) == [
        "projector/bias", "projector/kernel", "vision_encoder/patch_embedding/kernel"]
    assert frozen_paths(params, [r"language_model/layers/.*", r".*/gate"]) == [
        "cross_attention/gate", "language_model/layers/mlp/down_proj/kernel",
        "language_model/layers/mlp/up_proj/kernel"]
    # A regex must match the whole path: 'lm_head' alone is not a path.
    with pytest.raises(ValueError, match="matches no parameter"):
        trainable_mask(params, ["lm_head"])
    with pytest.raises(ValueError, match="valid regular expression"):
        trainable_mask(params, ["language_model/("])


def test_partition_and_combine_round_trip_and_drop_empty_groups():
    params = init_params()
    trainable, frozen = partition(params, trainable_mask(params, ["vision_encoder", ".*/bias"]))
    assert "vision_encoder" not in trainable and set(frozen) == {"vision_encoder", "projector"}
    assert set(frozen["projector"]) == {"bias"}
    merged = combine(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        assert a is b
    # Partitions are ordinary pytrees: jit sees only arrays.
    assert jax.jit(lambda t, f: combine(t, f))(trainable, frozen)["projector"]["bias"].shape == (8,)


def test_defaults_are_the_reference_values():
    config = OptimizerConfig()
    assert (config.lr, config.beta1, config.beta2, config.eps, config.weight_decay) == (
        1e-6, 0.9, 0.98, 1e-7, 0.0)
    assert (config.schedule, config.warmup_fraction, config.max_grad_norm) == ("cosine", 0.03, 1.0)


def test_schedule_warms_up_then_cosine_decays_to_the_end_factor():
    schedule = lr_multiplier_schedule(OptimizerConfig(end_lr_factor=0.1), total_steps=100)  # 3 warm-up steps
    values = np.array([float(schedule(step)) for step in range(101)])
    np.testing.assert_allclose(values[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert np.all(np.diff(values[3:]) <= 1e-7)
    np.testing.assert_allclose(values[100], 0.1, rtol=1e-5)
    cos_mid = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5))  # halfway through the 97 decay steps
    np.testing.assert_allclose(float(schedule(3 + 97 / 2)), cos_mid, rtol=1e-5)
    constant = lr_multiplier_schedule(OptimizerConfig(schedule="constant", warmup_fraction=0.0), 10)
    assert float(constant(0)) == float(constant(9)) == 1.0


def test_frozen_groups_carry_no_optimizer_state():
    params = init_params()
    optimizer = make_optimizer(OptimizerConfig(), total_steps=10)
    full_bytes = tree_bytes(optimizer.init(params))
    trainable, _ = partition(params, trainable_mask(params, ["language_model"]))
    frozen_bytes = tree_bytes(optimizer.init(trainable))
    assert tree_bytes(jax.eval_shape(optimizer.init, trainable)) == frozen_bytes
    language_model_bytes = tree_bytes(params["language_model"])
    # Adam keeps two fp32 moments per trainable param; freezing removes exactly those of the frozen group.
    assert full_bytes - frozen_bytes == 2 * language_model_bytes
    assert frozen_bytes < full_bytes / 2


def test_learning_rate_is_optimizer_state_not_a_compiled_constant():
    params = {"w": jnp.ones((3, 3))}
    config = OptimizerConfig(lr=0.1, warmup_fraction=0.0, schedule="constant", max_grad_norm=None)
    optimizer = make_optimizer(config, total_steps=10)
    update = jax.jit(lambda grads, state: optimizer.update(grads, state, params))
    grads = {"w": jnp.full((3, 3), 2.0)}
    state = optimizer.init(params)
    first, state_after = update(grads, state)
    second, _ = update(grads, with_peak_learning_rate(state, 0.02))
    # Adam's first normalised step is ~1 in magnitude, so the update is -lr.
    np.testing.assert_allclose(np.asarray(first["w"]), -0.1, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(second["w"]), -0.02, rtol=1e-4)
    assert update._cache_size() == 1
    np.testing.assert_allclose(float(learning_rate(state_after)), 0.1, rtol=1e-6)


def test_weight_decay_spares_vectors():
    params = {"matrix": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    config = OptimizerConfig(lr=0.1, weight_decay=0.5, schedule="constant", warmup_fraction=0.0)
    optimizer = make_optimizer(config, total_steps=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["matrix"]), -0.05, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(updates["bias"]), 0.0)


def _numpy_adamw(gradients, lr, beta1, beta2, eps, max_grad_norm):
    """The updates of clip_by_global_norm + Adam (bias-corrected) + scale(-lr), in float64 numpy."""
    mu = {k: np.zeros_like(v, np.float64) for k, v in gradients[0].items()}
    nu = {k: np.zeros_like(v, np.float64) for k, v in gradients[0].items()}
    updates = []
    for t, grads in enumerate(gradients, start=1):
        grads = {k: np.asarray(v, np.float64) for k, v in grads.items()}
        if max_grad_norm is not None:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
            grads = {k: g * min(1.0, max_grad_norm / norm) for k, g in grads.items()}
        step = {}
        for k, g in grads.items():
            mu[k] = beta1 * mu[k] + (1 - beta1) * g
            nu[k] = beta2 * nu[k] + (1 - beta2) * g * g
            step[k] = -lr * (mu[k] / (1 - beta1 ** t)) / (np.sqrt(nu[k] / (1 - beta2 ** t)) + eps)
        updates.append(step)
    return updates


def test_a_huge_gradient_is_clipped_to_max_grad_norm_before_adam():
    """Adam's first step is scale-free, so clipping shows in the second: after a huge gradient (norm ~1e6) the
    clipped chain's moments hold a gradient of norm max_grad_norm and the next, ordinary gradient still moves the
    params; unclipped, the huge gradient's second moment swamps it. Both match the numpy reference."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}
    huge = {"w": rng.normal(size=(4, 3)) * 3e5, "b": rng.normal(size=(3,)) * 3e5}
    ordinary = {"w": rng.normal(size=(4, 3)) * 0.1, "b": rng.normal(size=(3,)) * 0.1}
    assert np.sqrt(sum(np.sum(g ** 2) for g in huge.values())) > 1e5
    results = {}
    for max_grad_norm in (1.0, None):
        config = OptimizerConfig(lr=0.1, schedule="constant", warmup_fraction=0.0, max_grad_norm=max_grad_norm)
        optimizer = make_optimizer(config, total_steps=2)
        state = optimizer.init(params)
        got = []
        for grads in (huge, ordinary):
            update, state = jax.jit(optimizer.update)(jax.tree.map(jnp.float32, grads), state, params)
            got.append(update)
        want = _numpy_adamw([huge, ordinary], 0.1, config.beta1, config.beta2, config.eps, max_grad_norm)
        for g, w in zip(got, want):
            for name in w:
                np.testing.assert_allclose(np.asarray(g[name]), w[name], rtol=2e-4, atol=1e-7)
        results[max_grad_norm] = want[1]["w"]
    # the reference itself tells the two apart: clipping changes the second update by far more than rounding
    assert np.max(np.abs(results[1.0] - results[None])) > 1e-2


def test_bfloat16_params_keep_float32_hyperparameters_and_finite_updates():
    """With bf16 params (memgen sft / rl param_dtype=bfloat16) the injected hyperparameters stay float32 (cast to the
    params' dtype, PPO's Adam b2 0.999 would round to 1.0 and its bias correction divide by zero: NaN updates),
    while the updates and Adam's moments stay bf16 (`model.dtypes.keep_dtypes`)."""
    from rl.ppo import PPOConfig, ppo_optimizer, with_schedule
    from sft.optim import OptimizerConfig, make_optimizer

    params = {"w": jnp.ones((4, 4), jnp.bfloat16)}
    grads = {"w": jnp.full((4, 4), 0.1, jnp.bfloat16)}
    ppo = ppo_optimizer(PPOConfig(learning_rate=1e-2, final_learning_rate=1e-3, max_grad_norm=1.0), total_steps=8)
    sft_opt = make_optimizer(OptimizerConfig(), total_steps=8)
    for optimizer, state in ((ppo, with_schedule(ppo.init(params), total_steps=3001)), (sft_opt, sft_opt.init(params))):
        floats = [x for x in jax.tree.leaves(state) if x.ndim == 0 and jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float32 for x in floats)
        updates, new_state = optimizer.update(grads, state, params)
        assert updates["w"].dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(updates["w"])))
        assert bool(jnp.all(updates["w"] != 0))
        # the state keeps its types (Adam's moments bf16), as a scan over optimizer steps needs
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert float(ppo.init(params)[1].hyperparams["b2"]) == np.float32(0.999)
