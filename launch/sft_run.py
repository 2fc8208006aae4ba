"""`memgen sft --preset NAME --out DIR [key=value ...]`: supervised fine-tuning from the task's expert data,
resumable. The imperative shell around the pure pieces of sft/: load the model and data, build the mesh, loop
over steps (batch -> jitted train step -> metrics -> evaluation -> checkpoint), and write the final policy.

Python API: ``run_sft(config, out_dir) -> summary dict`` does what the command does; ``run_sft_sweep(config,
learning_rates, out_dirs) -> [summary]`` trains K learning rates of one config in one vmapped program (what
`memgen sweep` uses for small models), each member in its own ordinary run directory.

A run directory holds config.json (the resolved config), metrics.jsonl and tensorboard/ (launch/metrics.py,
schema in docs/metrics.md), checkpoints/ (Orbax: the whole TrainState plus the loop's counters) and, when the
run ends, final/ (the trained policy as a Hugging Face mllama directory with its tokenizer). Re-running the same
command on the same directory resumes from the latest checkpoint and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from launch.checkpoint import CheckpointError, CheckpointManager
from launch.config import ConfigError, SFTConfig, check_run_directory, load_config, preset_names, resolve, save_config
from launch.expert_data import GREEDY_SEED_OFFSET, DataError, greedy_episodes, load_expert_data
from launch.mesh import (MeshError, host_local_batch_slice, host_params, jit_onto, make_global_batch,
                         place_full_batch, place_tree)
from launch.metrics import MetricsWriter
from launch.metrics_schema import eval_record, train_record
from launch.model_source import ModelSourceError, init_tokens, load_model, save_policy
from launch.progress import ProgressBar
from launch.sft_eval import (default_generate, generate_on_mesh, greedy_success, heldout_batches,
                              make_heldout_loss, virl_greedy_evaluator)
from rl.compute import ComputeCounter, add, parameter_count, total_gflops
from sft.batches import encoded_lengths, forward_from_batch, image_slots, padded_length, sft_batch
from sft.data_order import batch_example_indices, bucket_for, length_buckets, packed_layout
from sft.optim import make_optimizer, partition, trainable_mask, with_peak_learning_rate
from sft.packing import packed_batch, packed_forward_from_batch
from sft.step import init_train_state, stack_sweep, sweep_train_step, train_step, unstack_sweep

FINAL_DIR = "final"
CHECKPOINT_DIR = "checkpoints"
LENGTH_GROUP_BATCHES = 16  # data.length_buckets > 1: examples are sorted by length within chunks of 16 batches
TASK_NAMES = {("general_points", "language"): "gp-l", ("general_points", "vision"): "gp-vl",
              ("virl", "language"): "virl-l", ("virl", "vision"): "virl-vl"}


class SFTRunError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row, or a checkpoint that cannot be restored)."""


# --- the pieces the loop is made of ---------------------------------------------------------------------------

def make_mesh_from_config(shape: tuple[int, int, int]) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh of ``launch.mesh``; -1 takes all remaining devices, and sizes without a -1
    that multiply to fewer than the visible devices use the first that many (e.g. (1, 1, 1): one device)."""
    from launch.mesh import MeshConfig, MeshError, make_mesh

    try:
        mesh_config = MeshConfig(*shape)
        devices = jax.devices()
        if -1 not in shape and int(np.prod(shape)) < len(devices):
            if jax.process_count() > 1:
                raise ConfigError(f"mesh={list(shape)} uses {int(np.prod(shape))} of the {len(devices)} devices of "
                                  f"this {jax.process_count()}-process run; a multi-host run spans all of them "
                                  "(e.g. mesh=[1,-1,1])")
            devices = devices[:int(np.prod(shape))]
        return make_mesh(mesh_config, devices)
    except MeshError as error:
        raise ConfigError(f"mesh={list(shape)}: {error}") from None


def state_shardings(state: Any, params_shardings: Any, freeze: tuple[str, ...], mesh, optimizer) -> Any:
    """NamedShardings for a train state (arrays or shapes): params by the model's sharding rules, optimizer
    moments like their params (``launch.mesh.optimizer_state_specs``), scalars replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    from launch.mesh import optimizer_state_specs

    trainable_sh, frozen_sh = partition(params_shardings, trainable_mask(params_shardings, freeze))
    specs = jax.tree.map(lambda sharding: sharding.spec, trainable_sh)
    opt_specs = optimizer_state_specs(optimizer, state.opt_state, specs)
    named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    return state.replace(step=named(PartitionSpec()), trainable=trainable_sh, frozen=frozen_sh,
                         opt_state=jax.tree.map(named, opt_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
                         rng=named(PartitionSpec()))


def place_state(state: Any, params_shardings: Any, freeze: tuple[str, ...], mesh, optimizer) -> Any:
    """The train state committed to the mesh by ``state_shardings``. Committed arrays make a restored state
    compile to the same program."""
    return place_tree(state, state_shardings(state, params_shardings, freeze, mesh, optimizer))


def initial_states(params: Any, optimizer, freeze: tuple[str, ...], seed: int, learning_rates: Sequence[float],
                   params_shardings: Any, mesh) -> list[Any]:
    """The fresh train state of each peak learning rate (``sft.step.init_train_state`` with the rate in the
    optimizer state), built straight onto the mesh by one jitted program with the ``state_shardings`` placement:
    eager, the optimizer's init and the placement would compile an XLA program per leaf shape. ``params`` are
    placed first (``launch.mesh.place_tree``), so that over several processes the program gets global arrays.
    The program is memoised on ``optimizer`` (pass the same object for the same settings) and the placement.
    A ``freeze`` that matches nothing raises ValueError."""
    init = _fresh_state(optimizer, tuple(freeze))
    params = place_tree(params, params_shardings)
    abstract = jax.eval_shape(init, params, 0, 0.0)
    build = jit_onto(init, state_shardings(abstract, params_shardings, freeze, mesh, optimizer))
    return [build(params, seed, learning_rate) for learning_rate in learning_rates]


@functools.lru_cache(maxsize=8)
def _fresh_state(optimizer, freeze: tuple[str, ...]) -> Callable:
    """``(params, seed, peak_learning_rate) -> TrainState``, one function per optimizer and freeze (for
    ``jit_onto``); seed and rate are host scalars every process passes alike."""
    def init(params, seed, learning_rate):
        state = init_train_state(params, optimizer, freeze, jax.random.PRNGKey(seed))
        return state.replace(opt_state=with_peak_learning_rate(state.opt_state, learning_rate))
    return init


@functools.lru_cache(maxsize=8)
def compiled_train_step(model_config, optimizer_config, total_steps: int, grad_accum_steps: int,
                        compute_dtype: str, sweep: bool = False, packed: bool = False) -> tuple[Any, Callable]:
    """(optimizer, jitted donating train step) for these settings, memoised so that several runs in one process
    (a notebook, a sweep driver, the tests) share one compiled program per shape. ``sweep``: the vmapped step of
    ``sft.step.sweep_train_step`` over a stacked state of K learning rates instead. ``packed``: batches of
    sft.packing (the segment-aware forward)."""
    optimizer = make_optimizer(optimizer_config, total_steps)
    logits_fn = functools.partial(packed_forward_from_batch if packed else forward_from_batch, config=model_config)
    step = jax.jit(functools.partial(sweep_train_step if sweep else train_step, logits_fn=logits_fn,
                                     optimizer=optimizer,
                                     grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype),
                   donate_argnums=0)
    return optimizer, step


@functools.lru_cache(maxsize=8)
def compiled_heldout_loss(model_config) -> Callable:
    """The memoised held-out loss function of a model config (see compiled_train_step)."""
    return make_heldout_loss(functools.partial(forward_from_batch, config=model_config))


def _global_sum(value: int) -> int:
    """The sum of a host-side count over all hosts (the value itself on one host)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(np.sum(multihost_utils.process_allgather(np.asarray(value, np.int64))))


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
    return _train(config, [config.optimizer.lr], [Path(out_dir)], vmapped=False, stop_after=stop_after,
                  generate=generate, progress=progress, evaluate=evaluate)[0]


def run_sft_sweep(config: SFTConfig, learning_rates: Sequence[float], out_dirs: Sequence[str | Path], *,
                  stop_after: Optional[int] = None, generate: Optional[Callable] = None,
                  progress: Optional[bool] = None) -> list[dict]:
    """K runs of ``config`` that differ only in the peak learning rate, trained together by ONE compiled program:
    ``sft.step.sweep_train_step`` vmaps the train step over K copies of the trainable params and their optimizer
    states (the frozen params are shared, every member sees the same batches), so a learning-rate ablation of a
    small model costs one compilation and runs the K members in lockstep. ``out_dirs[k]`` becomes an ordinary
    `memgen sft` run directory of ``config`` with ``optimizer.lr = learning_rates[k]`` (config.json, metrics.jsonl,
    checkpoints/, final/): the same files a separate ``run_sft`` of that config writes, equal to them up to float
    rounding, and `memgen sft` can resume any one of them alone. Re-running resumes from the latest step whose
    checkpoint every member holds. Where ``run_sft`` stops after ``max_consecutive_skips`` non-finite steps, a
    sweep member is marked ``diverged`` in its summary and the others go on. Returns one summary per member (as
    ``run_sft``'s, plus ``lr`` and ``diverged``)."""
    return _train(config, list(learning_rates), [Path(d) for d in out_dirs], vmapped=True, stop_after=stop_after,
                  generate=generate, progress=progress)


def with_learning_rate(config: SFTConfig, lr: float) -> SFTConfig:
    """``config`` with peak learning rate ``lr`` (a sweep member's config)."""
    return dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, lr=float(lr)))


def _restore_members(managers: list[CheckpointManager], templates: list[Any]) -> Optional[list[Any]]:
    """Each member's Restored checkpoint at the latest step that every member holds and can read (one member: its
    latest readable one), or None for a fresh start."""
    try:
        if len(managers) == 1:
            restored = managers[0].restore_latest(templates[0])
            return None if restored is None else [restored]
        held = [set(manager.steps()) for manager in managers]
        if not any(held):
            return None
        for step in sorted(set.intersection(*held), reverse=True):
            try:
                return [manager.restore(step, template) for manager, template in zip(managers, templates)]
            except Exception as error:  # orbax raises many types for damaged files; any of them means skip
                warnings.warn(f"checkpoint step {step} of a sweep member cannot be restored ({type(error).__name__}"
                              "); falling back to the previous common step", RuntimeWarning, stacklevel=2)
    except CheckpointError as error:
        raise SFTRunError(str(error)) from None
    raise SFTRunError(f"the sweep members {', '.join(str(m.directory.parent) for m in managers)} share no readable "
                      "checkpoint step; resume them one by one with `memgen sft` or delete their checkpoints/")


def _train(config: SFTConfig, learning_rates: list[float], out_dirs: list[Path], *, vmapped: bool,
           stop_after: Optional[int], generate: Optional[Callable], progress: Optional[bool],
           evaluate: Optional[Callable[[Any, int, float], list[dict]]] = None) -> list[dict]:
    """The SFT loop of K >= 1 members that differ only in the peak learning rate: vmapped in one program
    (``vmapped``) or, with K = 1, the plain train step. Everything else (model, data, batches, evaluation) is
    shared; each member has its own run directory, metrics writer, checkpoints and counters."""
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(f"batch_size={config.batch_size} is not a multiple of grad_accum_steps="
                          f"{config.grad_accum_steps}")
    if not out_dirs or len(out_dirs) != len(learning_rates) or len(set(out_dirs)) != len(out_dirs):
        raise ConfigError(f"a learning-rate sweep needs one distinct run directory per learning rate, got "
                          f"{len(learning_rates)} rates and directories {[str(d) for d in out_dirs]}")
    members = range(len(out_dirs))
    configs = [with_learning_rate(config, lr) for lr in learning_rates]
    for out_dir, member_config in zip(out_dirs, configs):
        check_run_directory(member_config, out_dir)

    mesh = make_mesh_from_config(config.mesh)
    source = load_model(config.model, seed=config.seed, cache_dir=None, mesh=mesh, param_dtype=config.param_dtype)
    data = load_expert_data(task=config.task, modality=config.modality, seed=config.seed,
                            train_examples=config.train_examples, eval_examples=config.eval_examples,
                            path=config.data.path, heldout_path=config.data.heldout_path)
    tokenizer, image_config = source.tokenizer, source.image_config
    length = padded_length(encoded_lengths(tokenizer, data.train + data.heldout), config.data.length_multiple)
    slots = image_slots(data.train + data.heldout)
    model_config = source.config.replace(dtype=config.compute_dtype, remat=config.remat,  # remat: train step
                                         attention_block=config.attention_block)
    num_params = parameter_count(source.params)  # N of 6ND: every parameter, frozen ones included (docs/sft.md)

    from model.sharding import param_shardings
    params_sh = param_shardings(source.config, mesh, source.params)
    # The peak learning rate lives in the optimizer state (sft/optim.py), so the compiled step is shared by runs
    # (and sweep members) that differ only in it; each state is initialised with its own rate.
    packing = config.data.pack_length > 0
    if packing and config.data.length_buckets > 1:
        raise ConfigError("data.pack_length and data.length_buckets > 1 do not combine (a packed row has one "
                          "length); set one of them")
    try:  # the optimizer of the shared step (peak rate 0: each state carries its own)
        optimizer, step_fn = compiled_train_step(model_config, dataclasses.replace(config.optimizer, lr=0.0),
                                                 config.steps, config.grad_accum_steps, config.compute_dtype,
                                                 sweep=vmapped, packed=packing)
        templates = initial_states(source.params, optimizer, config.freeze, config.seed, learning_rates, params_sh,
                                   mesh)
    except ValueError as error:  # a freeze entry that matches nothing, a bad schedule setting
        raise ConfigError(str(error)) from None
    # The states hold their own copies: the loaded params would otherwise stay in device memory all run.
    source = dataclasses.replace(source, params=None)

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
    layout = None
    if packing:  # rows of consecutive examples (sft.data_order.packed_layout), each seeing only itself
        train_lengths = encoded_lengths(tokenizer, train)
        images = np.asarray([sum(m.image is not None for m in c) for c in train])
        # image slots of a row: the most examples that can share one, times the images of one example
        row_slots = slots * max(1, config.data.pack_length // int(train_lengths.min()))
        try:
            layout = packed_layout(config.seed, config.steps, config.batch_size, config.data.pack_length,
                                   train_lengths, images, row_slots)
        except ValueError as error:
            raise ConfigError(f"data.pack_length={config.data.pack_length}: {error}") from None

    def batch_at(step: int) -> dict:
        """This host's rows of batch ``step`` (every row on a single host)."""
        if layout is not None:
            return packed_batch(tokenizer, train, image_config, length=config.data.pack_length,
                                rows=layout[step][host_rows], num_image_slots=row_slots)
        indices = batch_example_indices(config.seed, step, config.batch_size, len(train), grouping_lengths,
                                        group)
        padded = length if buckets is None else bucket_for(train_lengths[indices], buckets)
        indices = indices[host_rows]
        return sft_batch(tokenizer, [train[i] for i in indices], image_config, length=padded,
                         num_image_slots=slots)

    def member_state(state: Any, k: int) -> Any:
        return unstack_sweep(state, k) if vmapped else state

    for out_dir, member_config in zip(out_dirs, configs):
        save_config(member_config, out_dir)  # only now: a bad model path, data file or freeze entry leaves no run
    ckpt = config.checkpoint
    with contextlib.ExitStack() as stack:
        checkpoints = [stack.enter_context(CheckpointManager(
            out_dir / CHECKPOINT_DIR, every_steps=ckpt.every_steps, keep=ckpt.keep, async_save=ckpt.async_save))
            for out_dir in out_dirs]
        restored = _restore_members(checkpoints, templates)
        start = 0 if restored is None else restored[0].step
        fresh = {"train_tokens": 0, "consecutive_skips": 0, "skipped": 0, "last_loss": None, "diverged": False}
        run_states = [dict(fresh) if restored is None else {**fresh, **restored[k].run_state} for k in members]
        states = templates if restored is None else [r.state for r in restored]
        state = stack_sweep(states) if vmapped else states[0]
        d_init = init_tokens(config.model)  # a run directory as the model: its tokens are D_init
        counters = [ComputeCounter(init_tokens=d_init, train_tokens=int(run_state["train_tokens"]))
                    for run_state in run_states]
        writers = [stack.enter_context(MetricsWriter(out_dir, resume_step=None if restored is None else start))
                   for out_dir in out_dirs]
        bar = stack.enter_context(ProgressBar(config.steps, initial=start, enabled=progress))

        def evaluate_members(step: int) -> None:
            for k in members:
                for record in evaluate(member_state(state, k).params, step, total_gflops(counters[k], num_params)):
                    writers[k].write(record["step"], record)

        if start == 0 and config.eval_every > 0:
            evaluate_members(0)
        step = start
        while step < config.steps:
            batch = batch_at(step)
            # D: every real token goes forward + backward (summed over hosts: the global batch's tokens).
            processed = _global_sum(int(batch["attention_mask"].sum()))
            state, metrics = step_fn(state, make_global_batch(batch, mesh))
            metrics = jax.device_get(metrics)
            step += 1
            losses = []
            for k in members:
                member = {key: float(value[k] if vmapped else value) for key, value in metrics.items()}
                run_state = run_states[k]
                skipped = member["skipped"] > 0
                run_state["consecutive_skips"] = run_state["consecutive_skips"] + 1 if skipped else 0
                run_state["skipped"] += int(skipped)
                if not skipped:
                    counters[k] = add(counters[k], train_tokens=processed)
                    run_state["train_tokens"] = counters[k].train_tokens
                    run_state["last_loss"] = member["loss"]
                    losses.append(member["loss"])
                if step % config.log_every == 0 or step == config.steps or skipped:
                    record = train_record(step=step, gflops=total_gflops(counters[k], num_params),
                                          loss=member["loss"], lr=member["lr"], tokens=processed if not skipped else 0,
                                          arm="sft", target_tokens=int(member["tokens"]), accuracy=member["accuracy"],
                                          grad_norm=member["grad_norm"], skipped=int(skipped))
                    writers[k].write(step, record)
                if run_state["consecutive_skips"] >= config.max_consecutive_skips:
                    message = (f"the loss or gradient was not finite for {run_state['consecutive_skips']} steps in a "
                               f"row (max_consecutive_skips={config.max_consecutive_skips})")
                    if not vmapped:
                        raise SFTRunError(f"stopped at step {step}: {message}; lower optimizer.lr or check the data "
                                          "and start again in a new --out directory")
                    if not run_state["diverged"]:
                        run_state["diverged"] = True
                        print(f"memgen sft: sweep member lr={learning_rates[k]:g} diverged at step {step}: {message}; "
                              "the other members go on", file=sys.stderr)
            bar.update(step, loss=min(losses) if losses else float("nan"), tokens=processed * len(out_dirs))
            if config.eval_every > 0 and (step % config.eval_every == 0 or step == config.steps):
                evaluate_members(step)
            for k in members:
                checkpoints[k].save(step, member_state(state, k), run_states[k], force=step == config.steps)
            if stop_after is not None and step >= stop_after:
                break
    finished = step >= config.steps
    summaries = []
    for k in members:
        final_dir = None
        if finished:
            params = host_params(member_state(state, k).params)  # every process takes part in gathering them
            final_dir = out_dirs[k] / FINAL_DIR
            if params is not None:
                save_policy(final_dir, source, params, compute=counters[k])
        summaries.append({"step": int(step), "loss": run_states[k]["last_loss"], "lr": float(learning_rates[k]),
                          "train_tokens": counters[k].train_tokens, "gflops": total_gflops(counters[k], num_params),
                          "skipped": run_states[k]["skipped"], "diverged": bool(run_states[k]["diverged"]),
                          "num_params": num_params, "final_dir": None if final_dir is None else str(final_dir),
                          "stopped_early": not finished})
    return summaries


def heldout_loss_of_run(run_dir: str | Path) -> dict[str, float]:
    """The held-out generalisation loss (the "Quagmires" predictor) of a finished `memgen sft` run's final policy,
    on the run's own held-out expert set (the examples its evaluations used, sharing no prompt with its training
    data), computed as the run computes it: {"loss" (token-mean NLL, nats), "accuracy", "tokens"}."""
    run_dir = Path(run_dir)
    config = load_config(SFTConfig, run_dir)
    if not (run_dir / FINAL_DIR / "config.json").is_file():
        raise ConfigError(f"{run_dir} has no final/ policy; finish the run first (re-run the same `memgen sft` "
                          "command to resume it)")
    if config.eval_examples < 1:
        raise ConfigError(f"{run_dir} ran with eval_examples={config.eval_examples}: it has no held-out set")
    source = load_model(str(run_dir / FINAL_DIR), seed=config.seed)
    data = load_expert_data(task=config.task, modality=config.modality, seed=config.seed,
                            train_examples=config.train_examples, eval_examples=config.eval_examples,
                            path=config.data.path, heldout_path=config.data.heldout_path)
    length = padded_length(encoded_lengths(source.tokenizer, data.train + data.heldout), config.data.length_multiple)
    batches = heldout_batches(source.tokenizer, data.heldout, source.image_config,
                              batch_size=config.batch_size // config.grad_accum_steps, length=length,
                              num_image_slots=image_slots(data.train + data.heldout))
    return compiled_heldout_loss(source.config.replace(dtype=config.compute_dtype))(source.params, batches)


def _make_evaluator(config: SFTConfig, source, model_config, data, length: int, slots: int, mesh,
                    generate: Optional[Callable]) -> Callable[[Any, int, float], list[dict]]:
    """``evaluate(params, step, gflops) -> [eval records]``: one record per evaluation split with the greedy
    success, the in-distribution one also carrying the held-out loss. Without a sampler, one record of kind
    "heldout" with the held-out loss (the schema's eval records need a success rate)."""
    task_name = TASK_NAMES[(config.task, config.modality)]
    heldout_loss = compiled_heldout_loss(model_config)
    eval_batch_size = config.batch_size // config.grad_accum_steps  # a microbatch: what fits for training fits
    batches = [place_full_batch(b, mesh) for b in heldout_batches(
        source.tokenizer, data.heldout, source.image_config, batch_size=eval_batch_size, length=length,
        num_image_slots=slots)] if data.heldout else []
    greedy = generate is not None and config.greedy_examples > 0
    if config.task == "virl":  # whole routes through `memgen eval`'s rollout (launch.sft_eval)
        virl_splits = virl_greedy_evaluator(
            source, model_config, modality=config.modality, seed=config.seed + GREEDY_SEED_OFFSET,
            routes=config.greedy_examples, max_new_tokens=config.max_new_tokens,
            prompt_multiple=config.data.length_multiple, mesh=mesh) if greedy else None
        episodes = {}
    else:
        virl_splits = None
        episodes = greedy_episodes(config.task, config.modality, config.seed, config.greedy_examples) \
            if greedy else {}
    generate_placed = generate_on_mesh(generate, mesh) if episodes else None
    from tasks.general_points import verify

    def greedy_fields(params: Any) -> dict[str, dict]:
        """{split: eval_record fields} of the greedy evaluation."""
        if virl_splits is not None:
            return virl_splits(params)
        out = {}
        for split, split_episodes in episodes.items():
            result = greedy_success(params, model_config, source.tokenizer, source.image_config, split_episodes,
                                    verify, generate=generate_placed, max_new_tokens=config.max_new_tokens,
                                    batch_size=eval_batch_size, num_image_slots=slots)
            out[split] = dict(split=split, n=result.n, success=result.success)
        return out

    def evaluate(params: Any, step: int, gflops: float) -> list[dict]:
        loss = heldout_loss(params, batches) if batches else None
        records = []
        for split, fields in greedy_fields(params).items():
            extra = {}
            if split == "in_distribution" and loss is not None:
                extra = dict(heldout_loss=loss["loss"], heldout_accuracy=loss["accuracy"],
                             heldout_tokens=int(loss["tokens"]))
            records.append(eval_record(step=step, gflops=gflops, task=task_name, arm="sft", seed=config.seed,
                                       **fields, **extra))
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
    except (ConfigError, DataError, ModelSourceError, SFTRunError, MeshError) as error:
        print(f"memgen sft: {error}", file=sys.stderr)
        return 2
    state = "stopped at" if summary["stopped_early"] else "finished"
    loss = "n/a" if summary["loss"] is None else f"{summary['loss']:.4f}"
    print(f"memgen sft: {state} step {summary['step']}/{config.steps} in {time.monotonic() - started:.1f} s, "
          f"loss {loss}, {summary['train_tokens']} tokens, {summary['gflops']:.3g} GFLOPs"
          + (f", policy in {summary['final_dir']}" if summary["final_dir"] else ""))
    return 0
