"""`memgen rl --preset NAME --out DIR [key=value ...]`: PPO with multi-turn revision rollouts, resumable.

The imperative shell around rl/: load the policy (`init`: an SFT run, a Hugging Face directory or a preset),
then per update: fresh GeneralPoints episodes (hands from Generator((seed, update))) -> jitted scan rollout with the
verifier callback (rl.rollout) -> GAE and the flat buffer (rl.buffer) -> jitted `rl.ppo_update` with
`rl.rollout.transition_policy` -> metrics (train records through launch.metrics_schema, with GFLOPs of
X_RL = 6N(D_init + D_RL) + 2N D_buffer from the measured tokens) -> evaluation -> checkpoint. V-IRL
(episodes.task=virl): `episodes.decision_points` rollouts per update, one per decision point, rows playing routes
back to back (launch/rl_virl.py). Optional: the KL to the frozen initial policy (ppo.kl_mode k1_reward / k3_loss,
grpo.kl_coef), the entropy bonus (ppo.entropy_coef), the reference's answer-key weight (ppo.answer_key_weight).

Python API: ``run_rl(config, out_dir, *, stop_after=None) -> summary dict``.

A run directory holds config.json, metrics.jsonl, tensorboard/, checkpoints/ (Orbax: TrainState plus the loop's
counters: update index, compute counter) and final/ (the policy with its value head as a Hugging Face directory).
Re-running the same command on the same directory resumes from the latest checkpoint and ends exactly as an
uninterrupted run (every random draw is a function of (seed, update)).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp

from launch.checkpoint import CheckpointManager
from launch.config import ConfigError, check_run_directory, resolve, save_config
from launch.mesh import host_params, place_full_batch
from launch.metrics import MetricsWriter, is_primary_process
from launch.model_source import init_tokens
from launch.metrics_schema import eval_record, train_record
from launch.model_source import tokenizer_fingerprint
from launch.progress import ProgressBar
from launch.rl_common import (TASK_NAMES, RolloutRunner, answer_key_starts, checked_task_config, evaluate,
                              load_policy, make_rl_mesh, mesh_context, new_episodes, place_params, save_policy,
                              task_config, train_state_shardings)
from launch.rl_config import RLConfig
from rl.buffer import grpo_buffer, ppo_buffer, rollout_statistics, train_token_count
from rl.compute import ComputeCounter, add, parameter_count, total_gflops
from rl.grpo import grpo_update
from rl.ppo import (advance_schedule, learning_rate, optimizer_steps_per_update, ppo_optimizer, ppo_update,
                    with_schedule)
from rl.rollout import reference_token_logprobs, transition_policy
from rl.update import init_train_state

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="rl-tiny", help="a preset name (rl-tiny, rl-gp-l, rl-gp-vl, rl-virl-l, "
                                                            "rl-virl-vl, rl-virl-tiny); default rl-tiny")
    parser.add_argument("--out", required=True, help="the run directory (re-run the same command to resume)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="UPDATE",
                        help="stop after this update, as if interrupted (resume later with the same command)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. updates=100 ppo.epochs=2")


def _epochs_and_minibatch(config: RLConfig) -> tuple[int, int]:
    algorithm = _algorithm(config)
    return algorithm.epochs, algorithm.minibatch_size


def _plain_steps_per_update(config: RLConfig) -> int:
    """Gradient steps of a plain update of the run's algorithm (`rl.ppo.optimizer_steps_per_update`: epochs x
    N // minibatch_size); an update that skips the padding takes fewer, the cosine advanced by the rest."""
    return optimizer_steps_per_update(items_per_update(config), _algorithm(config))


def _algorithm(config: RLConfig):
    return config.ppo if config.algorithm == "ppo" else config.grpo


def transitions_per_update(config: RLConfig) -> int:
    """The buffer's N: episodes x verification steps (GeneralPoints), rows x decision points x (answers per
    decision + 1) (V-IRL, launch/rl_virl.py); padded transitions included."""
    episodes = config.episodes
    if episodes.task == "virl":
        from launch.rl_virl import rollout_steps
        return config.episodes_per_update * episodes.decision_points * rollout_steps(episodes.max_verify_steps)
    return config.episodes_per_update * episodes.max_verify_steps


def items_per_update(config: RLConfig) -> int:
    """The buffer's items that minibatch_size counts: its transitions (`transitions_per_update`), or with
    episode_rows its conversations (episodes; V-IRL: rows x decision points)."""
    if not _algorithm(config).episode_rows:
        return transitions_per_update(config)
    virl = config.episodes.task == "virl"
    return config.episodes_per_update * (config.episodes.decision_points if virl else 1)


def _check_config(config: RLConfig) -> None:
    checked_task_config(config.episodes)
    items = items_per_update(config)
    _, minibatch = _epochs_and_minibatch(config)
    if items % minibatch:
        virl = config.episodes.task == "virl"
        if _algorithm(config).episode_rows:
            what = "episodes_per_update x episodes.decision_points" if virl else "episodes_per_update"
            unit = "conversations"
        else:
            what = ("episodes_per_update x episodes.decision_points x (episodes.max_verify_steps + 1)" if virl
                    else "episodes_per_update x episodes.max_verify_steps")
            unit = "transitions"
        raise ConfigError(f"{what} = {items} {unit} is not a multiple of {config.algorithm}.minibatch_size="
                          f"{minibatch}; change one of them")
    if config.episodes.task == "virl" and config.algorithm != "ppo":
        raise ConfigError("V-IRL trains with algorithm=ppo only (GRPO groups need one instance per group, V-IRL "
                          "rows play routes back to back); set algorithm=ppo")
    if config.algorithm == "grpo" and config.episodes_per_update % config.grpo.group_size:
        raise ConfigError(f"episodes_per_update={config.episodes_per_update} is not a multiple of "
                          f"grpo.group_size={config.grpo.group_size}; change one of them")
    if config.ppo.kl_coef and config.ppo.kl_mode is None and config.algorithm == "ppo":
        raise ConfigError("ppo.kl_coef > 0 needs ppo.kl_mode=k1_reward (KL in the reward) or k3_loss (in the loss)")
    if config.critic_warmup > config.updates or (config.critic_warmup and config.algorithm != "ppo"):
        raise ConfigError(f"critic_warmup={config.critic_warmup} must be between 0 and updates={config.updates} "
                          "and needs algorithm=ppo (GRPO has no critic)")
    if config.algorithm == "grpo" and (config.ppo.kl_mode is not None or config.ppo.entropy_coef):
        raise ConfigError("with algorithm=grpo the KL is grpo.kl_coef (k3 in the loss) and there is no entropy "
                          "bonus; leave ppo.kl_mode and ppo.entropy_coef unset")


def update_episodes(config: RLConfig, task_settings, index: int) -> list:
    """The GeneralPoints episodes update ``index`` plays: fresh hands drawn from (seed, index), each repeated
    grpo.group_size times under GRPO (one group per hand). `launch.miniature` rebuilds its RL arms' training hands
    with it."""
    group = config.grpo.group_size if config.algorithm == "grpo" else 1
    return new_episodes(task_settings, (config.seed, index), config.episodes_per_update // group, group)


# Compiled pieces shared by the runs of one process (tests, sweeps): a new jit object would compile again. The
# rollout depends only on the policy's shapes, the episode settings, the batch and the mesh, so runs that differ in
# their PPO / GRPO settings (a learning-rate or KL sweep) share it; evaluation runners likewise. Every cache is keyed
# on the mesh too (its shape and devices): a program compiled for one placement serves no other.
_COMPILED: dict = {}
_RUNNERS: dict = {}
_EVAL_RUNNERS: dict = {}


def shared_runner(policy, episodes, steps: int, batch: int, mesh=None) -> RolloutRunner:
    """The process's RolloutRunner for (model, tokenizer by content, episode settings, K, batch, mesh)."""
    key = (policy.config, tokenizer_fingerprint(policy), episodes, steps, batch, mesh)
    if key not in _RUNNERS:
        _RUNNERS[key] = RolloutRunner(policy, episodes, steps, batch, mesh=mesh)
    return _RUNNERS[key]


def shared_eval_runners(policy, episodes, mesh=None) -> dict:
    """The process's evaluation runners (`rl_common.evaluate`'s cache) for (model, tokenizer by content, episode
    settings, mesh)."""
    return _EVAL_RUNNERS.setdefault((policy.config, tokenizer_fingerprint(policy), episodes, mesh), {})


def evaluation_split_names(episodes) -> list[str]:
    """The paper's splits of a training config: in-distribution, rule-OOD and (vision) visual-OOD."""
    if episodes.task == "virl":
        from launch.rl_virl import evaluation_splits as virl_splits
        return list(virl_splits(episodes))
    from tasks.general_points import evaluation_splits
    return list(evaluation_splits(task_config(episodes)))


def _compiled(policy, config: RLConfig, mesh):
    """The rollout runner, the jitted PPO update (and its critic-only warm-up; None under GRPO), buffer builder,
    the train state's placement and its jitted initialiser of a run on `mesh`, shared by runs of the same shapes
    and mesh in one process (tests, sweeps): a new jit object would compile again. The update keeps the train
    state's placement (`train_state_shardings`) from update to update and runs under the mesh (the model's
    activation constraints)."""
    # The learning rates and the cosine's horizon are not part of the key: they are optimizer state
    # (rl.ppo.scale_by_cosine under inject_hyperparams), which `initialise` sets from its arguments, so runs that
    # differ only in their length or learning rate share the compiled update and each follows its own schedule.
    key = (policy.config, tokenizer_fingerprint(policy), config.episodes, config.episodes_per_update, config.algorithm,
           dataclasses.replace(config.ppo, learning_rate=1.0, final_learning_rate=1.0), config.grpo, mesh)
    if key not in _COMPILED:
        episodes = config.episodes
        steps = episodes.max_verify_steps
        if episodes.task == "virl":
            from launch.rl_virl import rollout_steps
            steps = rollout_steps(steps)
        runner = shared_runner(policy, episodes, steps, config.episodes_per_update, mesh)
        policy_fn = functools.partial(transition_policy, config=policy.config, temperature=episodes.temperature,
                                      return_entropy=config.algorithm == "ppo" and config.ppo.entropy_coef != 0,
                                      detach_value_input=not config.ppo.value_loss_trains_trunk)
        reference_fn = None
        if uses_reference(config):
            reference_fn = functools.partial(reference_token_logprobs, config=policy.config,
                                             temperature=episodes.temperature,
                                             chunk_size=_epochs_and_minibatch(config)[1])
        optimizer = ppo_optimizer(config.ppo, 1)  # its rates and horizon: placeholders, `initialise` sets them
        # the critic warm-up's update: the value loss alone, its gradient stopped at the value head's input
        warmup_update = None
        if config.algorithm == "ppo":
            update = functools.partial(ppo_update, policy_fn=policy_fn, optimizer=optimizer, config=config.ppo)
            warmup_update = functools.partial(
                ppo_update, policy_fn=functools.partial(policy_fn, detach_value_input=True), optimizer=optimizer,
                config=config.ppo, critic_only=True)
            make_buffer = functools.partial(ppo_buffer, config=config.ppo, reference_fn=reference_fn)
            if episodes.task == "virl":
                from launch.rl_virl import make_buffer_fn
                make_buffer = make_buffer_fn(config.ppo, reference_fn)
        else:
            logprob_fn = lambda params, minibatch: policy_fn(params, minibatch)[0]  # noqa: E731
            update = functools.partial(grpo_update, logprob_fn=logprob_fn, optimizer=optimizer, config=config.grpo)
            make_buffer = functools.partial(grpo_buffer, config=config.grpo, reference_fn=reference_fn)
        if episodes.task != "virl":
            make_buffer = jax.jit(make_buffer)
        if _algorithm(config).skip_padding:
            update, warmup_update = (None if fn is None else _keeping_schedule(fn, _plain_steps_per_update(config))
                                     for fn in (update, warmup_update))
        abstract_state = jax.eval_shape(lambda params: init_train_state(params, optimizer), policy.params)
        state_shardings = train_state_shardings(abstract_state, policy.config, mesh, optimizer)
        jitted_update, jitted_warmup = (
            None if fn is None else _under_mesh(jax.jit(fn, donate_argnums=0, out_shardings=(state_shardings, None)),
                                                mesh)
            for fn in (update, warmup_update))
        # The fresh state built straight onto its placement by one program (eager, the optimizer's init and the
        # placement would compile a program per leaf shape); its buffers are new, never the params passed in. The
        # schedule's numbers are arguments (host scalars every process passes alike), not constants of the program.
        def state_with_schedule(params, learning_rate, total_steps, final_fraction):
            state = init_train_state(params, optimizer)
            return state._replace(opt_state=with_schedule(state.opt_state, learning_rate=learning_rate,
                                                          total_steps=total_steps, final_fraction=final_fraction))

        initialise = jax.jit(state_with_schedule, out_shardings=state_shardings)
        _COMPILED[key] = (runner, jitted_update, jitted_warmup, _under_mesh(make_buffer, mesh), state_shardings,
                          initialise)
    return _COMPILED[key]


def _keeping_schedule(update, plain_steps: int):
    """`update` (an update that skips the padding: fewer optimizer steps when transitions are padding) followed by
    `rl.ppo.advance_schedule` by the steps it skipped of the plain update's `plain_steps`, so the cosine stands
    where the plain update would leave it and `total_steps` (plain_steps per update) stays the run's horizon."""
    @functools.wraps(update)
    def run(state, buffer, rng):
        new_state, metrics = update(state, buffer, rng)
        skipped = plain_steps - (new_state.step - state.step)
        return new_state._replace(opt_state=advance_schedule(new_state.opt_state, skipped)), metrics
    return run


def _under_mesh(fn, mesh):
    """`fn` called under `jax.set_mesh(mesh)` (traced with the model's activation constraints on the mesh)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with mesh_context(mesh):
            return fn(*args, **kwargs)
    return call


def uses_reference(config: RLConfig) -> bool:
    """Whether the run needs the frozen reference policy (the initial params): PPO with a kl_mode, GRPO with a
    kl_coef."""
    if config.algorithm == "ppo":
        return config.ppo.kl_mode is not None
    return config.grpo.kl_coef != 0


def run_rl(config: RLConfig, out_dir: str | Path, *, stop_after: Optional[int] = None,
           show_progress: Optional[bool] = None) -> dict[str, Any]:
    """Run (or resume) the RL run of `config` in `out_dir`; `stop_after` ends after that many updates in total
    (to test resumption). Returns a summary: updates done, last metrics, final GFLOPs."""
    _check_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_run_directory(config, out)
    mesh = make_rl_mesh(config.mesh)
    save_config(config, out)
    policy = load_policy(config.init, seed=config.seed, mesh=mesh, param_dtype=config.param_dtype,
                         compute_dtype=config.compute_dtype)
    policy = dataclasses.replace(policy, params=place_params(policy.params, policy.config, mesh),
                                 config=policy.config.replace(remat=config.remat,
                                                              attention_block=config.attention_block))
    episodes = config.episodes
    task_settings = task_config(episodes)
    task = TASK_NAMES[(episodes.task, episodes.modality)]
    virl_routes = None
    if episodes.task == "virl":
        from launch.rl_virl import TrainingRoutes
        virl_routes = TrainingRoutes(episodes, config.seed)
    epochs, _ = _epochs_and_minibatch(config)
    # A critic warm-up is a phase of its own: its updates run at the constant peak rate (the value head's, times
    # value_lr_scale), and PPO then starts from a fresh optimizer state (Adam's moments and step count zero, the
    # cosine from its peak over the PPO updates alone), so that the policy's first steps are ordinary first Adam
    # steps; continuing the warm-up's Adam count instead would mis-correct the bias of the policy's moments, which
    # stayed zero (up to ~1.5x larger steps for its first ~100 steps).
    total_steps = max(1, (config.updates - config.critic_warmup) * _plain_steps_per_update(config))

    def fresh_state(params, warmup: bool):
        final_fraction = 1.0 if warmup else config.ppo.final_learning_rate / config.ppo.learning_rate
        return initialise(params, config.ppo.learning_rate, total_steps, final_fraction)

    num_params = parameter_count(policy.params)
    runner, update, warmup_update, make_buffer, state_shardings, initialise = _compiled(policy, config, mesh)
    # the evaluation's runners sample at eval_temperature: they are keyed on it (not on the training temperature)
    evaluation = dataclasses.replace(episodes, temperature=config.eval_temperature)
    eval_runners = shared_eval_runners(policy, evaluation, mesh)
    # Committed to the mesh (params by the rules, moments like their params): the checkpoint's restore template,
    # so a resumed state has the same placement as a fresh one and the compiled update serves both.
    state = fresh_state(policy.params, warmup=config.critic_warmup > 0)
    # The KL reference: the initial policy, frozen (the train state, whose buffers the update donates, holds a
    # copy of it).
    reference_params = policy.params if uses_reference(config) else None
    policy = dataclasses.replace(policy, params=None)  # otherwise a second copy in device memory all run

    checkpoints = CheckpointManager(out / CHECKPOINT_DIR, every_steps=config.checkpoint.every_steps,
                                    keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    restored = checkpoints.restore_latest(state)
    start, counter = 0, ComputeCounter(init_tokens=init_tokens(config.init))
    if restored is not None:
        # Orbax restores onto the template's shardings; device_put keeps the placement exactly that of a fresh state
        # (a no-op when it already is), so jit's cache serves the resumed run with the same compiled programs.
        state = jax.device_put(restored.state, state_shardings)
        start = int(restored.run_state["update"])
        counter = ComputeCounter(**restored.run_state["compute"])
    end = config.updates if stop_after is None else min(config.updates, stop_after)
    last: dict[str, Any] = {}
    with checkpoints, MetricsWriter(out, resume_step=start if restored is not None else None) as writer, \
            ProgressBar(config.updates, description="rl", initial=start, enabled=show_progress) as bar:
        def write_evaluation(step: int, gflops: float) -> None:
            for split in evaluation_split_names(episodes):
                fields = evaluate(policy, state.params, evaluation, split=split, budget=episodes.max_verify_steps,
                                  num_episodes=config.eval_episodes, n_samples=1, seed=config.seed + 1,
                                  runners=eval_runners, mesh=mesh)
                writer.write(step, eval_record(step=step, gflops=gflops, task=task, arm="rl", seed=config.seed,
                                               **fields))

        if start == 0 and config.eval_every:
            write_evaluation(0, total_gflops(counter, num_params))
        def collect(index: int, rollout_key: jax.Array, began: float):
            """One update's rollout -> (its buffer, statistics, truncated feedback turns, rollout seconds). A function
            of its own so that the rollout's device arrays (the encoded images (B, V, D): 2.4 GiB per device for 400
            GP-VL episodes at 11B on 8 GPUs) are freed before the update runs: the buffer keeps what the update
            reads."""
            if virl_routes is not None:
                from launch.rl_virl import play, training_statistics, update_buffer
                supply = virl_routes.supply((config.seed, index))
                result = play(runner, state.params, [supply() for _ in range(config.episodes_per_update)],
                              rollout_key, calls=episodes.decision_points, replace=supply)
                rollout_seconds = time.perf_counter() - began
                buffer = place_full_batch(update_buffer(make_buffer, runner, state.params, result, reference_params,
                                                        config.ppo.answer_key_weight, config.freeze_vision), mesh)
                return buffer, training_statistics(result), result.truncated_feedback, rollout_seconds
            states = update_episodes(config, task_settings, index)
            trajectory, verifier, images = runner(state.params, states, rollout_key)
            rollout_seconds = time.perf_counter() - began
            extra = {}
            if config.algorithm == "ppo" and config.ppo.answer_key_weight != 1.0:
                extra["answer_start"] = answer_key_starts(policy.tokenizer, trajectory.response_ids,
                                                          trajectory.response_mask, episodes.task)
            if images is not None and config.freeze_vision:
                images = images.without_pixels()
            buffer = place_full_batch(make_buffer(trajectory, images=images, reference_params=reference_params,
                                                  **extra), mesh)
            return (buffer, jax.device_get(rollout_statistics(trajectory)), verifier.truncated_feedback,
                    rollout_seconds)

        for index in range(start, end):
            began = time.perf_counter()
            rollout_key, update_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), index))
            buffer, stats, truncated, rollout_seconds = collect(index, rollout_key, began)
            warming = index < config.critic_warmup
            if index == config.critic_warmup > 0:  # PPO begins (also when a run resumes right here)
                state = fresh_state(state.params, warmup=False)
            lr = float(learning_rate(state.opt_state))
            steps_before = int(state.step)
            state, metrics = (warmup_update if warming else update)(state, buffer, update_key)
            metrics = dict(jax.device_get(metrics), optimizer_steps=int(state.step) - steps_before)
            if "kl_k1" in buffer:  # the k1 KL of the rollout to the reference (its reward shaping)
                valid = buffer["valid"]  # device arrays (spread over the processes in a multi-host run)
                stats["kl_k1"] = float(jnp.sum(jnp.where(valid, buffer["kl_k1"], 0.0)) / jnp.maximum(valid.sum(), 1))
            trained = int(train_token_count(buffer)) * epochs
            del buffer  # not held through the evaluation and the next rollout
            counter = add(counter, train_tokens=trained, inference_tokens=int(stats["inference_tokens"]))
            step = index + 1
            gflops = total_gflops(counter, num_params)
            last = {name: float(value) for name, value in {**metrics, **stats}.items()}
            if step % config.log_every == 0 or step == end:
                writer.write(step, train_record(
                    step=step, gflops=gflops, loss=last["loss"], lr=lr, tokens=trained, arm="rl", task=task,
                    rollout_seconds=rollout_seconds, update_seconds=time.perf_counter() - began - rollout_seconds,
                    truncated_feedback=truncated, inference_tokens=int(stats["inference_tokens"]),
                    # the run's cumulative D_init, D_RL, D_buffer: X_RL of any record, whatever log_every skipped
                    compute_tokens=dataclasses.asdict(counter),
                    # a warm-up record's loss is vf_coef x value_loss (the policy's terms are logged, not trained)
                    **({"critic_warmup": True} if warming else {}),
                    **{k: v for k, v in last.items() if k not in ("loss", "inference_tokens")}))
            if (config.eval_every and step % config.eval_every == 0) or step == config.updates:
                write_evaluation(step, gflops)
            checkpoints.save(step, state, {"update": step, "compute": dataclasses.asdict(counter)},
                             force=step == end)
            bar.update(step, loss=last["loss"], tokens=trained)
        if end == config.updates and end > start:
            final_params = host_params(state.params)  # every process takes part; process 0 writes
            if is_primary_process():
                save_policy(out / FINAL_DIR, policy, final_params, compute=counter)
    return {"updates": end, "metrics": last, "gflops": total_gflops(counter, num_params), "params": state.params}


def run(args: argparse.Namespace) -> int:
    import launch.rl_config  # noqa: F401  (registers the rl presets)

    try:
        config = resolve(args.preset, args.overrides, kind=RLConfig)
        summary = run_rl(config, args.out, stop_after=args.stop_after)
    except ConfigError as error:
        print(f"memgen rl: {error}", file=sys.stderr)
        return 2
    print(f"memgen rl: {summary['updates']} updates, {summary['gflops']:.3g} GFLOPs, "
          f"episode return {summary['metrics'].get('episode_return', float('nan')):.4f}; run in {args.out}")
    return 0
