"""`memgen sft --preset NAME --out DIR [key=value ...]`: supervised fine-tuning from the task's expert data,
resumable. The imperative shell around the pure pieces of sft/: load the model and data, build the mesh, loop
over steps (batch -> jitted train step -> metrics -> evaluation -> checkpoint), and write the final policy.

Python API: ``run_sft(config, out_dir) -> summary dict`` does what the command does.

A run directory holds config.json (the resolved config), metrics.jsonl and tensorboard/ (launch/metrics.py,
schema in docs/metrics.md), checkpoints/ (Orbax: the whole TrainState plus the loop's counters) and, when the
run ends, final/ (the trained policy as a Hugging Face mllama directory with its tokenizer). Re-running the same
command on the same directory resumes from the latest checkpoint and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np

from launch.checkpoint import CheckpointError, CheckpointManager
from launch.config import CONFIG_FILENAME, ConfigError, SFTConfig, load_config, preset_names, resolve, save_config
from launch.expert_data import DataError, greedy_episodes, load_expert_data
from launch.mesh import host_local_batch_slice
from launch.metrics import MetricsWriter
from launch.metrics_schema import eval_record, train_record
from launch.model_source import ModelSourceError, init_tokens, load_model, save_policy
from launch.progress import ProgressBar
from launch.sft_eval import default_generate, greedy_success, heldout_batches, make_heldout_loss
from rl.compute import ComputeCounter, add, parameter_count, total_gflops
from sft.batches import encoded_lengths, forward_from_batch, image_slots, padded_length, sft_batch
from sft.data_order import batch_example_indices, bucket_for, length_buckets
from sft.optim import make_optimizer, partition, trainable_mask
from sft.step import init_train_state, train_step

FINAL_DIR = "final"
CHECKPOINT_DIR = "checkpoints"
LENGTH_GROUP_BATCHES = 16  # data.length_buckets > 1: examples are sorted by length within chunks of 16 batches
TASK_NAMES = {("general_points", "language"): "gp-l", ("general_points", "vision"): "gp-vl",
              ("virl", "language"): "virl-l", ("virl", "vision"): "virl-vl"}


class SFTRunError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row, or DIR holds another config's run)."""


# --- the pieces the loop is made of ---------------------------------------------------------------------------

def make_mesh_from_config(shape: tuple[int, int, int]) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh of ``launch.mesh``; -1 takes all remaining devices, and sizes without a -1
    that multiply to fewer than the visible devices use the first that many (e.g. (1, 1, 1): one device)."""
    from launch.mesh import MeshConfig, MeshError, make_mesh

    try:
        mesh_config = MeshConfig(*shape)
        devices = jax.devices()
        if -1 not in shape and int(np.prod(shape)) < len(devices):
            devices = devices[:int(np.prod(shape))]
        return make_mesh(mesh_config, devices)
    except MeshError as error:
        raise ConfigError(f"mesh={list(shape)}: {error}") from None


def place_state(state: Any, params_shardings: Any, freeze: tuple[str, ...], mesh, optimizer) -> Any:
    """The train state committed to the mesh: params by the model's sharding rules, optimizer moments like their
    params (``launch.mesh.optimizer_state_specs``), scalars replicated. Committed arrays make a restored state
    compile to the same program."""
    from jax.sharding import NamedSharding, PartitionSpec

    from launch.mesh import optimizer_state_specs

    trainable_sh, frozen_sh = partition(params_shardings, trainable_mask(params_shardings, freeze))
    specs = jax.tree.map(lambda sharding: sharding.spec, trainable_sh)
    opt_specs = optimizer_state_specs(optimizer, state.opt_state, specs)
    named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    shardings = state.replace(step=named(PartitionSpec()), trainable=trainable_sh, frozen=frozen_sh,
                              opt_state=jax.tree.map(named, opt_specs,
                                                     is_leaf=lambda x: isinstance(x, PartitionSpec)),
                              rng=named(PartitionSpec()))
    return jax.device_put(state, shardings)


@functools.lru_cache(maxsize=8)
def compiled_train_step(model_config, optimizer_config, total_steps: int, grad_accum_steps: int,
                        compute_dtype: str) -> tuple[Any, Callable]:
    """(optimizer, jitted donating train step) for these settings, memoised so that several runs in one process
    (a notebook, a sweep driver, the tests) share one compiled program per shape."""
    optimizer = make_optimizer(optimizer_config, total_steps)
    logits_fn = functools.partial(forward_from_batch, config=model_config)
    step = jax.jit(functools.partial(train_step, logits_fn=logits_fn, optimizer=optimizer,
                                     grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype),
                   donate_argnums=0)
    return optimizer, step


@functools.lru_cache(maxsize=8)
def compiled_heldout_loss(model_config) -> Callable:
    """The memoised held-out loss function of a model config (see compiled_train_step)."""
    return make_heldout_loss(functools.partial(forward_from_batch, config=model_config))


def place_batch(batch: dict, mesh) -> dict:
    """This host's rows of a batch (all rows on one host) -> global arrays sharded over data x fsdp."""
    from launch.mesh import make_global_batch

    return make_global_batch(batch, mesh)


def _global_sum(value: int) -> int:
    """The sum of a host-side count over all hosts (the value itself on one host)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(np.sum(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def _check_run_dir(out_dir: Path, config: SFTConfig) -> None:
    """A directory that already holds a run must hold this config's run: resuming another config would mix two
    runs in one metrics.jsonl."""
    if (out_dir / CONFIG_FILENAME).is_file():
        existing = load_config(SFTConfig, out_dir)
        if existing != config:
            from launch.config import to_dict
            old, new = to_dict(existing), to_dict(config)
            changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
            raise SFTRunError(f"{out_dir} holds a run with another config (differs in: {', '.join(changed)}); "
                              "use a new --out directory or the same settings to resume it")


# --- the loop ---------------------------------------------------------------------------------------------------

def run_sft(config: SFTConfig, out_dir: str | Path, *, stop_after: Optional[int] = None,
            generate: Optional[Callable] = None, progress: Optional[bool] = None,
            evaluate: Optional[Callable[[Any, int, float], list[dict]]] = None) -> dict:
    """Train (or resume) the run in ``out_dir``; returns a summary {step, loss, train_tokens, gflops, skipped,
    final_dir, stopped_early}. ``stop_after``: stop after that step as if interrupted (checkpoint and metrics as
    they are; for tests and time-boxed jobs). ``generate``: the sampler for the greedy-success hook (default
    ``model.generate`` when present; without one only the held-out loss is evaluated). ``evaluate``: replaces the
    built-in evaluation (held-out loss + greedy success on the task's default splits) with
    ``evaluate(params, step, gflops) -> [records]`` (validated metrics records), called at step 0 and every
    ``eval_every`` steps; an experiment with its own task variant (docs/miniature.md) brings its own.
    When ``model`` is a memgen run directory, its training tokens count as D_init on the compute axis."""
    out_dir = Path(out_dir)
    if config.steps < 1 or config.batch_size < 1 or config.batch_size % config.grad_accum_steps:
        raise ConfigError(f"steps ({config.steps}) and batch_size ({config.batch_size}) must be positive and "
                          f"batch_size a multiple of grad_accum_steps ({config.grad_accum_steps})")
    _check_run_dir(out_dir, config)

    source = load_model(config.model, seed=config.seed, cache_dir=None)
    data = load_expert_data(task=config.task, modality=config.modality, seed=config.seed,
                            train_examples=config.train_examples, eval_examples=config.eval_examples,
                            path=config.data.path)
    tokenizer, image_config = source.tokenizer, source.image_config
    length = padded_length(encoded_lengths(tokenizer, data.train + data.heldout), config.data.length_multiple)
    slots = image_slots(data.train + data.heldout)
    model_config = source.config.replace(dtype=config.compute_dtype)
    num_params = parameter_count(source.params)  # N of 6ND: every parameter, frozen ones included (docs/sft.md)

    mesh = make_mesh_from_config(config.mesh)
    from model.sharding import param_shardings
    params_sh = param_shardings(source.config, mesh, source.params)
    # The peak learning rate lives in the optimizer state (sft/optim.py), so the compiled step is shared by runs
    # that differ only in it; the state is initialised with the config's own rate.
    _, step_fn = compiled_train_step(model_config, dataclasses.replace(config.optimizer, lr=0.0), config.steps,
                                     config.grad_accum_steps, config.compute_dtype)
    try:
        optimizer = make_optimizer(config.optimizer, config.steps)
        state = init_train_state(source.params, optimizer, config.freeze, jax.random.PRNGKey(config.seed))
    except ValueError as error:  # a freeze entry that matches nothing, a bad schedule setting
        raise ConfigError(str(error)) from None
    state = place_state(state, params_sh, config.freeze, mesh, optimizer)

    if evaluate is None:
        evaluate = _make_evaluator(config, source, model_config, data, length, slots, mesh,
                                   generate if generate is not None else default_generate())
    train = list(data.train)
    buckets = grouping_lengths = None
    group = 0
    if config.data.length_buckets > 1:  # grouped by length, each batch padded to its bucket (sft.data_order)
        train_lengths = encoded_lengths(tokenizer, train)
        buckets = length_buckets(train_lengths, config.data.length_buckets, config.data.length_multiple)
        grouping_lengths, group = train_lengths, LENGTH_GROUP_BATCHES * config.batch_size

    host_rows = host_local_batch_slice(config.batch_size)

    def batch_at(step: int) -> dict:
        """This host's rows of batch ``step`` (every row on a single host)."""
        indices = batch_example_indices(config.seed, step, config.batch_size, len(train), grouping_lengths,
                                        group)
        padded = length if buckets is None else bucket_for(train_lengths[indices], buckets)
        indices = indices[host_rows]
        return sft_batch(tokenizer, [train[i] for i in indices], image_config, length=padded,
                         num_image_slots=slots)

    save_config(config, out_dir)  # only now: a bad model path, data file or freeze entry leaves no run behind
    ckpt = config.checkpoint
    with CheckpointManager(out_dir / CHECKPOINT_DIR, every_steps=ckpt.every_steps, keep=ckpt.keep,
                           async_save=ckpt.async_save) as checkpoints:
        try:
            restored = checkpoints.restore_latest(state)
        except CheckpointError as error:
            raise SFTRunError(str(error)) from None
        start, run_state = 0, {"train_tokens": 0, "consecutive_skips": 0, "skipped": 0, "last_loss": None}
        if restored is not None:
            start, state, run_state = restored.step, restored.state, {**run_state, **restored.run_state}
        counter = ComputeCounter(init_tokens=init_tokens(config.model), train_tokens=int(run_state["train_tokens"]))
        with MetricsWriter(out_dir, resume_step=None if restored is None else start) as writer, \
                ProgressBar(config.steps, initial=start, enabled=progress) as bar:
            if start == 0 and config.eval_every > 0:
                for record in evaluate(state.params, 0, total_gflops(counter, num_params)):
                    writer.write(record["step"], record)
            step = start
            while step < config.steps:
                batch = batch_at(step)
                # D: every real token goes forward + backward (summed over hosts: the global batch's tokens).
                processed = _global_sum(int(batch["attention_mask"].sum()))
                state, metrics = step_fn(state, place_batch(batch, mesh))
                metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
                step += 1
                skipped = metrics["skipped"] > 0
                run_state["consecutive_skips"] = run_state["consecutive_skips"] + 1 if skipped else 0
                run_state["skipped"] += int(skipped)
                if not skipped:
                    counter = add(counter, train_tokens=processed)
                    run_state["train_tokens"] = counter.train_tokens
                    run_state["last_loss"] = metrics["loss"]
                gflops = total_gflops(counter, num_params)
                if step % config.log_every == 0 or step == config.steps or skipped:
                    record = train_record(step=step, gflops=gflops, loss=metrics["loss"], lr=metrics["lr"],
                                          tokens=processed if not skipped else 0, arm="sft",
                                          target_tokens=int(metrics["tokens"]), accuracy=metrics["accuracy"],
                                          grad_norm=metrics["grad_norm"], skipped=int(skipped))
                    writer.write(step, record)
                bar.update(step, loss=metrics["loss"], tokens=processed)
                if run_state["consecutive_skips"] >= config.max_consecutive_skips:
                    raise SFTRunError(
                        f"stopped at step {step}: the loss or gradient was not finite for "
                        f"{run_state['consecutive_skips']} steps in a row (max_consecutive_skips="
                        f"{config.max_consecutive_skips}); lower optimizer.lr or check the data and start again "
                        "in a new --out directory")
                if config.eval_every > 0 and (step % config.eval_every == 0 or step == config.steps):
                    for record in evaluate(state.params, step, gflops):
                        writer.write(record["step"], record)
                checkpoints.save(step, state, run_state, force=step == config.steps)
                if stop_after is not None and step >= stop_after:
                    break
    finished = step >= config.steps
    final_dir = None
    if finished:
        final_dir = save_policy(out_dir / FINAL_DIR, source, jax.device_get(state.params), compute=counter)
    return {"step": int(step), "loss": run_state["last_loss"], "train_tokens": counter.train_tokens,
            "gflops": total_gflops(counter, num_params), "skipped": run_state["skipped"],
            "num_params": num_params, "final_dir": None if final_dir is None else str(final_dir),
            "stopped_early": not finished}


def _make_evaluator(config: SFTConfig, source, model_config, data, length: int, slots: int, mesh,
                    generate: Optional[Callable]) -> Callable[[Any, int, float], list[dict]]:
    """``evaluate(params, step, gflops) -> [eval records]``: one record per evaluation split with the greedy
    success, the in-distribution one also carrying the held-out loss. Without a sampler, one record of kind
    "heldout" with the held-out loss (the schema's eval records need a success rate)."""
    task_name = TASK_NAMES[(config.task, config.modality)]
    heldout_loss = compiled_heldout_loss(model_config)
    eval_batch_size = config.batch_size // config.grad_accum_steps  # a microbatch: what fits for training fits
    batches = [place_batch(b, mesh) for b in heldout_batches(
        source.tokenizer, data.heldout, source.image_config, batch_size=eval_batch_size, length=length,
        num_image_slots=slots)] if data.heldout else []
    episodes = greedy_episodes(config.task, config.modality, config.seed, config.greedy_examples) \
        if generate is not None and config.greedy_examples > 0 else {}
    from tasks.general_points import verify

    def evaluate(params: Any, step: int, gflops: float) -> list[dict]:
        loss = heldout_loss(params, batches) if batches else None
        records = []
        for split, split_episodes in episodes.items():
            result = greedy_success(params, model_config, source.tokenizer, source.image_config, split_episodes,
                                    verify, generate=generate, max_new_tokens=config.max_new_tokens,
                                    batch_size=eval_batch_size, num_image_slots=slots)
            extra = {}
            if split == "in_distribution" and loss is not None:
                extra = dict(heldout_loss=loss["loss"], heldout_accuracy=loss["accuracy"],
                             heldout_tokens=int(loss["tokens"]))
            records.append(eval_record(step=step, gflops=gflops, task=task_name, split=split, n=result.n,
                                       success=result.success, arm="sft", seed=config.seed, **extra))
        if not records and loss is not None:
            records.append({"kind": "heldout", "step": int(step), "gflops": float(gflops), "arm": "sft",
                            "heldout_loss": loss["loss"], "heldout_accuracy": loss["accuracy"],
                            "heldout_tokens": int(loss["tokens"])})
        return records

    return evaluate


# --- the command ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help=f"one of: {', '.join(preset_names(SFTConfig))}")
    parser.add_argument("--out", required=True, help="the run directory (re-run the same command to resume)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="stop after this step, as if interrupted (resume later with the same command)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. steps=100 optimizer.lr=1e-5 freeze=[vision_encoder]")


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve(args.preset, args.overrides, kind=SFTConfig)
        started = time.monotonic()
        summary = run_sft(config, args.out, stop_after=args.stop_after)
    except (ConfigError, DataError, ModelSourceError, SFTRunError) as error:
        print(f"memgen sft: {error}", file=sys.stderr)
        return 2
    state = "stopped at" if summary["stopped_early"] else "finished"
    loss = "n/a" if summary["loss"] is None else f"{summary['loss']:.4f}"
    print(f"memgen sft: {state} step {summary['step']}/{config.steps} in {time.monotonic() - started:.1f} s, "
          f"loss {loss}, {summary['train_tokens']} tokens, {summary['gflops']:.3g} GFLOPs"
          + (f", policy in {summary['final_dir']}" if summary["final_dir"] else ""))
    return 0
