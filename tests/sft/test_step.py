"""The SFT train step: accumulation = one big batch, frozen params untouched and gradient-free, non-finite
updates skipped, jit with donation, bf16 compute over fp32 masters, eval loss, and the vmapped LR sweep."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft.loss import sft_loss
from sft.optim import OptimizerConfig, make_optimizer, with_peak_learning_rate
from sft.step import (eval_loss, init_train_state, stack_for_sweep, sweep_train_step, train_step,
                      unstack_sweep)
from tests.sft.tiny_lm import init_params, logits_fn, make_batch

CONFIG = OptimizerConfig(lr=3e-2, warmup_fraction=0.25)
# One optimizer object for the whole module, so that each jitted step variant compiles once (the tests share
# this machine's two cores; compilation dominates their time).
# For the same reason every test freezes the same params (a group and a regex), so the partitions' structure, and
# with it the compiled step, is shared; and every step donates its input state, as a run loop's does.
OPTIMIZER = make_optimizer(CONFIG, total_steps=8)
FREEZE = ("vision_encoder", r"cross_attention/gat.")


def make_state(freeze=FREEZE, optimizer=OPTIMIZER):
    return init_train_state(init_params(), optimizer, list(freeze), jax.random.PRNGKey(0)), optimizer


@functools.lru_cache(maxsize=None)
def jitted_step(optimizer, **kwargs):
    return jax.jit(functools.partial(train_step, logits_fn=logits_fn, optimizer=optimizer, **kwargs),
                   donate_argnums=0)


def run(state, optimizer, batches, **kwargs):
    step = jitted_step(optimizer, **kwargs)
    history = []
    for batch in batches:
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history


def assert_trees_close(a, b, **tolerance):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


def test_training_reduces_the_loss_and_reports_metrics():
    state, optimizer = make_state()
    batch = make_batch(0)
    state, history = run(state, optimizer, [batch] * 12)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert set(history[0]) == {"loss", "accuracy", "tokens", "lr", "grad_norm", "skipped"}
    assert history[0]["tokens"] == float(batch["loss_mask"][:, 1:].sum())
    assert int(state.step) == 12 and all(h["skipped"] == 0 for h in history)
    # lr follows the warm-up (ceil(0.25 * 8) = 2 steps), decays to 0 at step 8 and stays there.
    np.testing.assert_allclose([h["lr"] for h in history[:3]], [1e-2, 2e-2, 3e-2], rtol=1e-5)
    assert history[3]["lr"] < history[2]["lr"] and history[8]["lr"] == 0.0


def test_accumulating_two_microbatches_equals_one_big_batch():
    batches = [make_batch(seed, batch_size=4) for seed in range(3)]
    big, optimizer = make_state()
    accumulated, _ = make_state()
    big, big_history = run(big, optimizer, batches)
    accumulated, accumulated_history = run(accumulated, optimizer, batches, grad_accum_steps=2)
    assert_trees_close(big.trainable, accumulated.trainable, rtol=1e-5, atol=1e-6)
    assert_trees_close(big.opt_state, accumulated.opt_state, rtol=1e-5, atol=1e-7)
    for b, a in zip(big_history, accumulated_history):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
        assert a["tokens"] == b["tokens"]


def test_frozen_groups_stay_bit_identical_and_get_no_gradient():
    state, optimizer = make_state()
    before = jax.device_get(state.params)
    assert "vision_encoder" not in state.trainable and "gate" not in state.trainable["cross_attention"]
    state, _ = run(state, optimizer, [make_batch(s) for s in range(3)])
    after = jax.device_get(state.params)
    for x, y in zip(jax.tree.leaves(before["vision_encoder"]), jax.tree.leaves(after["vision_encoder"])):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(before["cross_attention"]["gate"], after["cross_attention"]["gate"])
    assert not np.array_equal(before["cross_attention"]["kernel"], after["cross_attention"]["kernel"])


def test_gradients_are_taken_with_respect_to_the_trainable_partition_only():
    state, optimizer = make_state()
    seen = {}

    def recording_logits_fn(params, batch):
        seen["frozen"] = params["vision_encoder"]["patch_embedding"]["kernel"]
        seen["trainable"] = params["projector"]["kernel"]
        return logits_fn(params, batch)

    # With the frozen partition closed over as concrete arrays, only differentiated inputs are tracers: the frozen
    # leaf reaches the model as a concrete array, so autodiff never builds a cotangent for it.
    jax.make_jaxpr(lambda trainable, opt_state: train_step(
        state.replace(trainable=trainable, opt_state=opt_state), make_batch(0), logits_fn=recording_logits_fn,
        optimizer=optimizer))(state.trainable, state.opt_state)
    assert isinstance(seen["trainable"], jax.core.Tracer)
    assert not isinstance(seen["frozen"], jax.core.Tracer)


def test_non_finite_batch_is_skipped():
    state, optimizer = make_state()
    state, _ = run(state, optimizer, [make_batch(0)])
    snapshot = jax.device_get((state.trainable, state.opt_state))
    poisoned = dict(make_batch(1))
    poisoned["pixel_values"] = poisoned["pixel_values"].at[0, 0, 0].set(jnp.nan)
    state, history = run(state, optimizer, [poisoned])
    assert history[0]["skipped"] == 1.0 and not np.isfinite(history[0]["loss"])
    assert int(state.step) == 2
    after = jax.device_get((state.trainable, state.opt_state))
    for x, y in zip(jax.tree.leaves(snapshot), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x, y)
    state, history = run(state, optimizer, [make_batch(2)])
    assert history[0]["skipped"] == 0.0 and np.isfinite(history[0]["loss"])


def test_jit_with_donation_consumes_the_old_state():
    state, optimizer = make_state()
    old_leaf = state.trainable["language_model"]["lm_head"]["kernel"]
    new_state, metrics = jitted_step(optimizer)(state, make_batch(0))
    assert old_leaf.is_deleted()
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1


def test_bf16_compute_keeps_fp32_masters_and_tracks_fp32_training():
    batches = [make_batch(s) for s in range(2)]
    fp32_state, optimizer = make_state()
    bf16_state, _ = make_state()
    fp32_state, fp32_history = run(fp32_state, optimizer, batches)
    bf16_state, bf16_history = run(bf16_state, optimizer, batches, compute_dtype="bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(bf16_state.trainable))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(bf16_state.frozen))
    np.testing.assert_allclose(bf16_history[0]["loss"], fp32_history[0]["loss"], rtol=3e-2)
    assert bf16_history[0]["loss"] != fp32_history[0]["loss"]  # it really computed in bf16


def test_eval_loss_matches_sft_loss_and_sums_add_up():
    params = init_params()
    batch = make_batch(5, batch_size=6)
    evaluate = jax.jit(functools.partial(eval_loss, logits_fn=logits_fn))
    metrics = evaluate(params, batch)
    loss, _ = jax.jit(lambda p, b: sft_loss(logits_fn(p, b), b))(params, batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    halves = [evaluate(params, jax.tree.map(lambda x: x[i:i + 3], batch)) for i in (0, 3)]
    pooled = (halves[0]["nll_sum"] + halves[1]["nll_sum"]) / (halves[0]["tokens"] + halves[1]["tokens"])
    np.testing.assert_allclose(float(pooled), float(loss), rtol=1e-6)


def test_vmapped_learning_rate_sweep_equals_separate_runs():
    learning_rates = [1e-3, 1e-2, 5e-2]
    batches = [make_batch(s) for s in range(3)]
    state, optimizer = make_state()
    stacked = stack_for_sweep(state, learning_rates)
    step = jax.jit(functools.partial(sweep_train_step, logits_fn=logits_fn, optimizer=optimizer),
                   donate_argnums=0)
    sweep_history = []
    for batch in batches:
        stacked, metrics = step(stacked, batch)
        sweep_history.append(jax.device_get(metrics))
    assert stacked.frozen["vision_encoder"]["patch_embedding"]["kernel"].ndim == 2  # shared, not copied K times
    for k, lr in enumerate(learning_rates):
        separate, _ = make_state()
        separate = separate.replace(opt_state=with_peak_learning_rate(separate.opt_state, lr))
        separate, history = run(separate, optimizer, batches)
        member = unstack_sweep(stacked, k)
        assert_trees_close(member.trainable, separate.trainable, rtol=1e-6, atol=1e-7)
        assert_trees_close(member.opt_state, separate.opt_state, rtol=1e-5, atol=1e-8)
        for sweep_metrics, metrics in zip(sweep_history, history):
            np.testing.assert_allclose(sweep_metrics["loss"][k], metrics["loss"], rtol=1e-6)
            np.testing.assert_allclose(sweep_metrics["lr"][k], metrics["lr"], rtol=1e-6)


def test_freezing_everything_is_a_clear_error():
    with pytest.raises(ValueError, match="freezes every parameter"):
        make_state(freeze=["vision_encoder", "projector", "language_model", "cross_attention"])


def test_data_parallel_sharded_step_matches_the_single_device_step():
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
    batches = [make_batch(s) for s in range(2)]
    single, optimizer = make_state()
    single, single_history = run(single, optimizer, batches)
    sharded, _ = make_state()
    sharded = jax.device_put(sharded, NamedSharding(mesh, PartitionSpec()))  # params replicated
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))             # examples split over devices
    sharded, sharded_history = run(sharded, optimizer, [jax.device_put(b, batch_sharding) for b in batches])
    assert sharded.trainable["language_model"]["lm_head"]["kernel"].sharding.mesh.size == 4
    assert_trees_close(sharded.trainable, single.trainable, rtol=1e-5, atol=1e-7)
    for a, b in zip(sharded_history, single_history):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)


# Logical axes of tests/sft/tiny_lm.py's params, for model.sharding's rules (embed -> fsdp, mlp / vocab -> tensor).
TINY_LM_AXES = {
    "vision_encoder": {"patch_embedding": {"kernel": (None, "embed")}},
    "projector": {"kernel": ("embed", "mlp"), "bias": ("mlp",)},
    "language_model": {"embed_tokens": {"embedding": ("vocab", "embed")},
                       "layers": {"mlp": {"up_proj": {"kernel": ("embed", "mlp")},
                                          "down_proj": {"kernel": ("mlp", "embed")}}},
                       "norm": {"scale": (None,)}, "lm_head": {"kernel": ("embed", "vocab")}},
    "cross_attention": {"kernel": ("embed", "mlp"), "gate": ()},
}


def test_fsdp_and_tensor_sharded_step_matches_the_single_device_step():
    """fsdp=4 x tensor=2 of the 8 CPU devices: params split by model.sharding's rules (embed over fsdp, mlp over
    tensor), Adam's moments like their params and the batch over fsdp, placed as `memgen sft` places its state
    (launch.sft_run.place_state): after two steps the trainable params, the optimizer state and the metrics equal
    the single-device step's within 1e-5."""
    from jax.sharding import NamedSharding, PartitionSpec

    from launch.mesh import MeshConfig, make_global_batch, make_mesh
    from launch.sft_run import place_state
    from model.sharding import partition_spec

    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    batches = [make_batch(s) for s in range(2)]
    single, optimizer = make_state()
    single, single_history = run(single, optimizer, batches)
    sharded, _ = make_state()
    shardings = jax.tree.map(lambda leaf, axes: NamedSharding(mesh, partition_spec(leaf.shape, axes, mesh)),
                             sharded.params, TINY_LM_AXES, is_leaf=lambda x: isinstance(x, tuple))
    sharded = place_state(sharded, shardings, FREEZE, mesh, optimizer)
    up = sharded.trainable["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert up.sharding.spec == PartitionSpec("fsdp", "tensor") and up.addressable_shards[0].data.size == up.size // 8
    moments = [leaf for leaf in jax.tree.leaves(sharded.opt_state) if leaf.shape == up.shape]  # Adam's mu and nu
    assert len(moments) == 2 and all(m.sharding == up.sharding for m in moments)
    placed = [make_global_batch(b, mesh) for b in batches]
    assert placed[0]["input_ids"].sharding.spec[0] in ("fsdp", ("data", "fsdp"))
    sharded, sharded_history = run(sharded, optimizer, placed)
    assert sharded.trainable["language_model"]["lm_head"]["kernel"].sharding.mesh.size == 8
    assert_trees_close(sharded.trainable, single.trainable, rtol=1e-5, atol=1e-5)
    assert_trees_close(sharded.opt_state, single.opt_state, rtol=1e-5, atol=1e-5)
    for a, b in zip(sharded_history, single_history):
        for name in b:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
