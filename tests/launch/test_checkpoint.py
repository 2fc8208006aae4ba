"""Checkpoints: a bit-exact round trip of a sharded train state with its optimizer state and RNG, the save
interval and retention, a save killed mid-write never restored, and a damaged latest checkpoint skipped."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from launch.checkpoint import CheckpointError, CheckpointManager, abstract_like
from sft.optim import OptimizerConfig, make_optimizer
from sft.step import init_train_state

REPO = Path(__file__).resolve().parents[2]


def sharded_train_state(seed: int = 0):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    rng = np.random.default_rng(seed)
    params = {
        "vision_encoder": {"kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)},
        "language_model": {"embed": jax.device_put(jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
                                                   NamedSharding(mesh, PartitionSpec("data", "model"))),
                           "norm": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16)},
    }
    optimizer = make_optimizer(OptimizerConfig(), total_steps=10)
    state = init_train_state(params, optimizer, ["vision_encoder"], jax.random.PRNGKey(seed))
    # Make the optimizer moments non-trivial so the round trip compares real values.
    moments = jax.tree.map(lambda x: x + 0.25 if x.dtype == jnp.float32 else x, state.opt_state.inner_state)
    return state.replace(opt_state=state.opt_state._replace(inner_state=moments), step=jnp.asarray(7, jnp.int32))


def assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bit_exact_with_shardings(tmp_path):
    state = sharded_train_state()
    with CheckpointManager(tmp_path, every_steps=1) as manager:
        assert manager.save(7, state, {"position": 112, "epoch": 1, "skips": 0})
    template = sharded_train_state(seed=1)  # other values, same structure and shardings
    with CheckpointManager(tmp_path) as manager:
        restored = manager.restore_latest(template)
    assert restored.step == 7 and restored.run_state == {"position": 112, "epoch": 1, "skips": 0}
    assert_bit_identical(restored.state, state)
    assert type(restored.state) is type(state)
    embed = restored.state.trainable["language_model"]["embed"]
    assert embed.sharding == state.trainable["language_model"]["embed"].sharding
    assert restored.state.trainable["language_model"]["norm"].dtype == jnp.bfloat16


def test_interval_retention_and_empty_directory(tmp_path):
    state = {"w": jnp.arange(4.0)}
    with CheckpointManager(tmp_path, every_steps=2, keep=2) as manager:
        assert manager.restore_latest(abstract_like(state)) is None
        started = [manager.save(step, {"w": state["w"] + step}, {"position": step}) for step in range(1, 6)]
        assert started == [False, True, False, True, False]
        donated = {"w": state["w"] + 5}
        assert manager.save(5, donated, {"position": 5}, force=True)
        donated["w"].delete()  # what donating the state to the next step does, while the save is in flight
        manager.wait()
        assert manager.steps() == [4, 5]
        latest = manager.restore_latest(state)
    assert latest.step == 5 and latest.run_state == {"position": 5}
    np.testing.assert_array_equal(np.asarray(latest.state["w"]), np.arange(4.0) + 5)


def test_a_save_killed_mid_write_is_never_restored(tmp_path):
    directory = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "tests/launch/checkpoint_kill_script.py"), str(directory)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]
    # The kill interrupted step 3: its temporary directory is all that exists of it.
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith("3")) == ["3.orbax-checkpoint-tmp"]
    sys.path.insert(0, str(REPO / "tests/launch"))
    try:
        from checkpoint_kill_script import make_state
    finally:
        sys.path.pop(0)
    with CheckpointManager(directory) as manager:
        assert manager.steps() == [1, 2]
        restored = manager.restore_latest(make_state(0))
    assert restored.step == 2 and restored.run_state == {"position": 2}
    assert_bit_identical(restored.state, make_state(2))
    assert not any(p.name.startswith("3") for p in directory.iterdir())  # the debris was cleaned up


def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning(tmp_path):
    state = {"w": jnp.arange(64.0)}
    with CheckpointManager(tmp_path, every_steps=1) as manager:
        for step in (1, 2):
            manager.save(step, {"w": state["w"] * step}, {"position": step})
            manager.wait()
    for path in (tmp_path / "2" / "state").rglob("*"):
        if path.is_file() and "manifest" in path.name:
            path.write_bytes(b"garbage")
    with CheckpointManager(tmp_path) as manager:
        with pytest.warns(RuntimeWarning, match="checkpoint step 2 .* cannot be restored .*; falling back to step 1$"):
            restored = manager.restore_latest(state)
    assert restored.step == 1
    np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.arange(64.0))


def test_an_interrupted_sft_loop_resumes_bit_identically(tmp_path):
    """The pieces together (data order, donated jitted step, async checkpoints, metrics writer): a run stopped
    after step 5, with checkpoints at steps 2 and 4, resumes from 4 and ends bit-identical to an uninterrupted
    run, with the same metrics.jsonl."""
    import functools

    from launch.metrics import MetricsWriter
    from sft.data_order import batch_example_indices
    from sft.step import train_step
    from tests.sft.tiny_lm import init_params, logits_fn, make_batch

    total_steps, batch_size, seed = 6, 4, 3
    dataset = make_batch(seed=11, batch_size=10)
    optimizer = make_optimizer(OptimizerConfig(lr=1e-2, warmup_fraction=0.2), total_steps)
    step_fn = jax.jit(functools.partial(train_step, logits_fn=logits_fn, optimizer=optimizer), donate_argnums=0)

    def run_loop(run_dir, stop_after=None):
        # Placed on a device, as a run places its state on its mesh: restored arrays are committed to their devices,
        # and an uncommitted initial state would make the resumed step compile a second time.
        state = jax.device_put(init_train_state(init_params(), optimizer, ["vision_encoder"],
                                                jax.random.PRNGKey(seed)), jax.devices()[0])
        with CheckpointManager(run_dir / "checkpoints", every_steps=2, keep=2) as checkpoints:
            restored = checkpoints.restore_latest(state)
            start = 0 if restored is None else restored.step
            if restored is not None:
                state = restored.state
                assert restored.run_state == {"position": start * batch_size}
            with MetricsWriter(run_dir, resume_step=None if restored is None else start,
                               tensorboard=False) as writer:
                for step in range(start, total_steps):
                    indices = batch_example_indices(seed, step, batch_size, 10)
                    state, metrics = step_fn(state, jax.tree.map(lambda x: x[indices], dataset))
                    writer.write(step + 1, metrics)
                    checkpoints.save(step + 1, state, {"position": (step + 1) * batch_size},
                                     force=step + 1 == total_steps)
                    if step + 1 == stop_after:
                        return None
        return jax.device_get(state)

    uninterrupted = run_loop(tmp_path / "a")
    assert run_loop(tmp_path / "b", stop_after=5) is None
    resumed = run_loop(tmp_path / "b")
    assert_bit_identical(resumed, uninterrupted)
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()
    assert int(resumed.step) == total_steps
    assert step_fn._cache_size() == 1  # resuming does not recompile


def test_after_a_refused_restore_only_the_abandoned_reads_are_kept_off_stderr(monkeypatch, caplog):
    """The hook drops the leftovers of a refused orbax restore (late reads on a closed event loop, collected orbax
    coroutines) and hands every other unraisable exception to the hook it replaced; installing it twice wraps once.
    asyncio's "exception was never retrieved" errors are dropped for orbax reads only (seen once in 64 loaded runs
    of a damaged checkpoint's export)."""
    import logging
    import types

    from launch.checkpoint import quiet_abandoned_reads

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    quiet_abandoned_reads()
    quiet_abandoned_reads()

    def unraisable(error, filename=None):
        traceback = None
        if filename:  # a traceback whose frame runs in `filename`
            try:
                exec(compile("raise error", filename, "exec"), {"error": error})
            except type(error) as raised:
                traceback = raised.__traceback__
        return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=traceback, err_msg=None,
                                     object=None)

    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "_src", "serialization.py")
    kept = [unraisable(ValueError("a real problem")), unraisable(RuntimeError("Event loop is closing soon")),
            unraisable(KeyError("x"), filename=os.path.join(os.sep, "work", "main", "launch", "sft_run.py"))]
    for args in [unraisable(RuntimeError("Event loop is closed")), unraisable(Exception("read"), orbax_file), *kept]:
        sys.unraisablehook(args)
    assert seen == kept

    def log(message, error):
        logging.getLogger("asyncio").error(message, exc_info=(type(error), error, error.__traceback__))

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        log("_GatheringFuture exception was never retrieved", unraisable(Exception("read"), orbax_file).exc_value)
        log("Task exception was never retrieved", unraisable(ValueError("mine"), "/work/main/rl/rollout.py").exc_value)
        log("Exception in callback", unraisable(Exception("read"), orbax_file).exc_value)
    assert [record.getMessage() for record in caplog.records] == ["Task exception was never retrieved",
                                                                 "Exception in callback"]


def test_the_read_filter_is_installed_before_orbax_starts_reading(tmp_path, monkeypatch):
    """The first late reads of a refused restore arrive within a millisecond of the error, before it reaches the
    caller (a CI run printed tracebacks around the sentence that way): the filter must already be in place when
    orbax starts, not installed by the error handler."""
    import orbax.checkpoint as ocp

    from launch import checkpoint

    with CheckpointManager(tmp_path, every_steps=1, async_save=False) as manager:
        manager.save(1, {"w": jnp.arange(4.0)})
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    filtered_when_reading = []
    real_restore = ocp.CheckpointManager.restore

    def restore(self, *args, **kwargs):
        filtered_when_reading.append(getattr(sys.unraisablehook, "_memgen_filters_reads", False))
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    with CheckpointManager(tmp_path) as manager:
        assert manager.restore_latest({"w": jnp.zeros(4)}).step == 1
    assert filtered_when_reading == [True]
    assert checkpoint.refused_restore(ValueError("bad read. See full TensorStore details: x\nmore")) == \
        "ValueError: bad read."


def test_checkpoints_that_do_not_fit_the_state_stop_the_run(tmp_path):
    with CheckpointManager(tmp_path, every_steps=1) as manager:
        manager.save(1, {"w": jnp.arange(4.0)}, {})
    with CheckpointManager(tmp_path) as manager:
        with pytest.warns(RuntimeWarning, match="no earlier checkpoint is left"), \
                pytest.raises(CheckpointError, match=r"none of the checkpoints \[1\]"):
            manager.restore_latest({"w": jnp.arange(4.0), "extra": jnp.zeros(2)})


def test_a_state_with_nothing_frozen_round_trips(tmp_path):
    from tests.sft.tiny_lm import init_params

    state = init_train_state(init_params(), make_optimizer(OptimizerConfig(), 10), [], jax.random.PRNGKey(0))
    assert state.frozen == {}
    with CheckpointManager(tmp_path, every_steps=1) as manager:
        manager.save(1, state, {})
    with CheckpointManager(tmp_path) as manager:
        restored = manager.restore_latest(state)
    assert_bit_identical(restored.state, state)


def test_a_ppo_state_with_a_scaled_value_head_round_trips(tmp_path):
    """PPOConfig.value_lr_scale adds an optax.masked transform, whose state holds masked-out nodes."""
    from rl.ppo import PPOConfig, ppo_optimizer
    from rl.update import init_train_state

    params = {"text_model": {"w": jnp.arange(3.0)}, "value_head": {"w": jnp.ones(2)}}
    optimizer = ppo_optimizer(PPOConfig(learning_rate=1e-3, final_learning_rate=1e-4, value_lr_scale=100.0), 10)
    state = init_train_state(params, optimizer)
    with CheckpointManager(tmp_path, every_steps=1, async_save=False) as manager:
        manager.save(1, state, {"position": 1})
    with CheckpointManager(tmp_path) as manager:
        restored = manager.restore_latest(state)
    assert restored.step == 1 and jax.tree.structure(restored.state) == jax.tree.structure(state)
    assert_bit_identical(restored.state, state)
