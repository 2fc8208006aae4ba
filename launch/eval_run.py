"""`memgen eval --preset NAME --out DIR [key=value ...]`: evaluate a policy (`init`: a `memgen sft`/`memgen rl` run
directory, a Hugging Face directory or a model preset) on GeneralPoints or V-IRL splits, sweeping the verification
budget.

For each split in `splits` and each budget in `verify_budgets`, `episodes` instances (hands from
Generator((seed, budget, split))) run as multi-turn revision episodes with the scan rollout (rl.rollout) and one
"eval" record goes to DIR/metrics.jsonl through launch.metrics_schema.eval_record: success within the budget with
its binomial standard error, the mean episode length, and pass@k (k = 1, 2, 4, ... <= n_samples) when
n_samples > 1. Records carry step 0 and the starting policy's GFLOPs (D_init from its run's metrics.jsonl), so
`memgen report` can put them next to training curves. V-IRL records add per-step accuracy (launch/rl_virl.py).

With `heldout_examples` > 0 each split's records also carry the held-out generalisation loss (the "Quagmires"
predictor): the token-mean NLL (`heldout_loss`, with `heldout_accuracy` and `heldout_tokens`) of the expert
responses of `heldout_examples` fresh instances of the split (drawn with seed + HELDOUT_SEED_OFFSET), computed with
the SFT loss (sft/loss.py through launch.sft_eval). Records carry `arm`: `EvalConfig.arm`, or when empty the arm of
the `init` run directory's train records ("sft" / "rl"), else "base"; `memgen predict` reads the latest SFT-arm
record's heldout_loss, success and pass@k as predictors and the RL-arm record's success as the target.

Python API: ``run_eval(config, out_dir) -> list of records``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from launch.config import ConfigError, check_run_directory, resolve, save_config
from launch.expert_data import HELDOUT_SEED_OFFSET
from launch.mesh import place_full_batch
from launch.metrics import MetricsWriter, is_primary_process, read_metrics
from launch.metrics_schema import ARMS, default_arm, eval_record, load_run
from launch.rl_common import (FINAL_DIR, TASK_NAMES, checked_task_config, evaluate, heldout_expert_conversations,
                              load_policy, make_rl_mesh, mesh_context, place_params)
from launch.rl_config import EvalConfig
from launch.model_source import init_tokens
from launch.progress import ProgressBar
from launch.rl_run import shared_eval_runners
from rl.compute import ComputeCounter, parameter_count, total_gflops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="eval-tiny", help="a preset name (eval-tiny, eval-gp-l, eval-gp-vl, "
                                                              "eval-virl-l, eval-virl-vl, eval-virl-tiny)")
    parser.add_argument("--out", required=True, help="directory for config.json and metrics.jsonl")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. init=runs/sft "
                                                     "verify_budgets=1,3,5,10 n_samples=8")


def evaluation_arm(config: EvalConfig) -> str:
    """config.arm, or the arm of the `init` run directory (its train records: "sft" or "rl"), else "base"."""
    if config.arm:
        if config.arm not in ARMS:
            raise ConfigError(f"arm={config.arm!r} is not one of {', '.join(ARMS)} (or empty: from init)")
        return config.arm
    path = Path(config.init)
    if path.name == FINAL_DIR and not (path / "metrics.jsonl").is_file():
        path = path.parent
    if (path / "metrics.jsonl").is_file():
        arm = default_arm(load_run(path))
        if arm in ARMS:
            return arm
    return "base"


def heldout_losses(policy, config: EvalConfig, splits, mesh=None) -> dict[str, dict[str, float]]:
    """{split: {"loss", "accuracy", "tokens"}} for each of `splits`: the SFT loss (token means over the assistant
    tokens) of `config.heldout_examples` expert conversations per split (`heldout_expert_conversations`), in
    batches of `heldout_batch_size` padded to one length for all of `config.splits` (one compilation, and the same
    padding whichever splits a resumed evaluation has left). `mesh`: the batches are placed on it (batch over
    data x fsdp; pass params placed there)."""
    import functools

    from launch.sft_eval import heldout_batches, make_heldout_loss
    from sft.batches import encoded_lengths, forward_from_batch, image_slots, padded_length

    budget = int(config.verify_budgets[0])
    data = {split: heldout_expert_conversations(config.sampling, split, budget, config.seed + HELDOUT_SEED_OFFSET,
                                                config.heldout_examples) for split in config.splits}
    everything = [c for conversations in data.values() for c in conversations]
    length = padded_length(encoded_lengths(policy.tokenizer, everything), 64)
    slots = image_slots(everything)
    loss = make_heldout_loss(functools.partial(forward_from_batch, config=policy.config))
    with mesh_context(mesh):
        return {split: loss(policy.params, [place_full_batch(batch, mesh) for batch in heldout_batches(
                    policy.tokenizer, data[split], policy.image_config, batch_size=config.heldout_batch_size,
                    length=length, num_image_slots=slots)])
                for split in splits}


def run_eval(config: EvalConfig, out_dir: str | Path, *, show_progress: bool | None = None) -> list[dict]:
    """Evaluate every (verification budget, split) cell of `config` into `out_dir`; returns their records in
    budget-major order. Re-running on the same directory resumes: the cells whose records are already in its
    metrics.jsonl are kept as they are and only the others run (a directory holding another config is refused)."""
    checked_task_config(config.sampling)
    out = Path(out_dir)
    resuming = check_run_directory(config, out)
    save_config(config, out)
    cells = [(int(budget), split) for budget in config.verify_budgets for split in config.splits]
    done = {(r["verify_budget"], r["split"]): r for r in read_metrics(out)
            if resuming and r.get("kind") == "eval"}
    todo = [cell for cell in cells if cell not in done]
    if todo:
        mesh = make_rl_mesh(config.mesh)
        policy = load_policy(config.init, seed=config.seed, mesh=mesh, param_dtype=config.param_dtype,
                             compute_dtype=config.compute_dtype)
        policy = dataclasses.replace(policy, params=place_params(policy.params, policy.config, mesh))
        task = TASK_NAMES[(config.sampling.task, config.sampling.modality)]
        gflops = total_gflops(ComputeCounter(init_tokens=init_tokens(config.init)), parameter_count(policy.params))
        arm = evaluation_arm(config)
        heldout = (heldout_losses(policy, config, sorted({split for _, split in todo}, key=config.splits.index),
                                  mesh) if config.heldout_examples else {})
        runners = shared_eval_runners(policy, config.sampling, mesh)  # compiled rollouts shared within the process
        # resume_step 0 keeps every complete eval record (all at step 0) and drops a torn last line
        with MetricsWriter(out, resume_step=0 if resuming else None) as writer, \
                ProgressBar(len(cells), description="eval", initial=len(cells) - len(todo),
                            enabled=show_progress) as bar:
            for budget, split in todo:
                fields = evaluate(policy, policy.params, config.sampling, split=split, budget=budget,
                                  num_episodes=config.episodes, n_samples=config.n_samples, seed=config.seed,
                                  runners=runners, mesh=mesh, max_rows=config.max_rows)
                extra = {}
                if split in heldout:
                    extra = dict(heldout_loss=heldout[split]["loss"], heldout_accuracy=heldout[split]["accuracy"],
                                 heldout_tokens=int(heldout[split]["tokens"]))
                record = eval_record(step=0, gflops=gflops, task=task, seed=config.seed, arm=arm, **fields, **extra)
                done[(budget, split)] = writer.write(0, record)
                bar.update(len(done))
                if is_primary_process():
                    print(_summary_line(record), file=sys.stderr)
    return [done[cell] for cell in cells]


def _summary_line(record: dict) -> str:
    line = (f"{record['split']:16s} budget {record['verify_budget']:3d}: success {record['success']:.3f} "
            f"± {record['success_se']:.3f} (n={record['n']})")
    if "per_step_accuracy" in record:
        line += f", per-step accuracy {record['per_step_accuracy']:.3f}"
    if "heldout_loss" in record:
        line += f", held-out loss {record['heldout_loss']:.4f}"
    return line


def run(args: argparse.Namespace) -> int:
    import launch.rl_config  # noqa: F401  (registers the eval presets)

    try:
        config = resolve(args.preset, args.overrides, kind=EvalConfig)
        records = run_eval(config, args.out)
    except ConfigError as error:
        print(f"memgen eval: {error}", file=sys.stderr)
        return 2
    print(f"memgen eval: {len(records)} records in {Path(args.out) / 'metrics.jsonl'}")
    return 0
