"""The "Quagmires in SFT-RL Post-Training" predictor study at the CPU miniature's scale: do the held-out loss and
pass@large-k of an SFT checkpoint predict its success after RL better than its own success does?

From one miniature base (launch/miniature.py: the 10M-parameter `small` model trained from scratch on
rule-stating GeneralPoints prompts), SFT checkpoints on the miniature's in-distribution expert answers over a grid
of learning rates x steps (each a `memgen sft` run directory, with a held-out set of in-distribution expert answers
on held-out-pool hands, `data.heldout_path`); then `memgen predict`'s runner (launch.predict_run.run_predict) with
the miniature's RL arm as the RL config: per checkpoint the held-out loss, greedy success and pass@k before RL, RL,
greedy success after RL, and R^2 / Spearman of each predictor against the post-RL success.

    PYTHONPATH=. .venv/bin/python experiments/quagmires_miniature.py --out q --base mini/base \
        --lrs 1e-5,3e-5,1e-4,3e-4 --steps 30,90 rl.lr=3e-5 rl.final_lr=3e-6

OUT/data/ (the SFT and held-out JSONL), OUT/sft/lr-<lr>_steps-<n>/ (the checkpoints), OUT/predict/ (predict.md,
predict.json, checkpoints.jsonl, one scatter plot per predictor, runs/<checkpoint>/ with the RL runs). Every stage
resumes: re-running the same command measures only what is missing. docs/miniature.md records the measured runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from experiments.common import run_with_miniature_config
from launch.config import ConfigError
from launch.miniature import (MiniatureConfig, base_sft_config, rl_arm_config, sft_arm_config, task_config,
                              write_base_data, write_data_once, write_sft_data)
from launch.predict_run import PredictRunSettings, run_predict
from launch.sft_run import run_sft
from launch.sweep import lr_name, parse_budgets, parse_learning_rates

PROG = "quagmires_miniature"


def heldout_conversations(config: MiniatureConfig, size: int, seed: int = 11) -> list:
    """In-distribution expert answers (the SFT arm's task config) on hands of the held-out pool, which no stage of
    the miniature trains on."""
    from tasks.general_points import expert_conversations

    return expert_conversations(task_config(config, hand_pool="heldout"), seed, size)


def checkpoint_config(config: MiniatureConfig, base_dir: Path, data: str, heldout: str, *, lr: float, steps: int,
                      heldout_examples: int):
    """The SFT arm's run config at ``lr`` for ``steps`` steps, measuring its held-out loss on ``heldout`` at its end
    (no greedy hook: the predictor runner measures success itself)."""
    arm = sft_arm_config(config, base_dir, data, seed=0, steps=steps)
    return dataclasses.replace(arm, eval_examples=heldout_examples, eval_every=steps, greedy_examples=0,
                               optimizer=dataclasses.replace(arm.optimizer, lr=lr),
                               data=dataclasses.replace(arm.data, heldout_path=heldout))


def _study(config: MiniatureConfig, args: argparse.Namespace) -> int:
    """The base (unless --base), the SFT checkpoint grid, then the predictor runs (the options checked first)."""
    started = time.monotonic()
    steps_grid, lrs = parse_budgets(args.steps, "--steps"), parse_learning_rates(args.lrs)
    if args.rl_runs < 1 or args.max_rows < 0:
        raise ConfigError(f"--rl-runs must be at least 1 and --max-rows at least 0, got {args.rl_runs} and "
                          f"{args.max_rows}")
    base_dir = args.base
    if base_dir is None:
        base_dir = args.out / "base"
        run_sft(base_sft_config(config, write_base_data(config, args.out)), base_dir)
    data = write_sft_data(config, args.out)
    heldout = write_data_once(args.out / "data" / "heldout_in_distribution.jsonl",
                              lambda: heldout_conversations(config, args.heldout_examples))
    checkpoints = []
    for steps in steps_grid:
        for lr in lrs:
            directory = args.out / "sft" / f"{lr_name(lr)}_steps-{steps}"
            print(f"[quagmires] SFT checkpoint {directory.name}", flush=True)
            run_sft(checkpoint_config(config, base_dir, data, heldout, lr=lr, steps=steps,
                                      heldout_examples=args.heldout_examples), directory)
            checkpoints.append(directory)
    settings = PredictRunSettings(split=args.split, episodes=args.episodes, samples=args.samples,
                                  rl_runs=args.rl_runs, max_rows=args.max_rows or None)
    _, rows = run_predict(checkpoints, args.out / "predict", rl_arm_config(config, base_dir, seed=0), settings)
    for row in rows:
        print(row)
    print(f"[quagmires] done in {time.monotonic() - started:.0f} s: {args.out / 'predict' / 'predict.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="miniature", help="the miniature preset the base, data and RL come from")
    parser.add_argument("--base", type=Path, default=None,
                        help="a finished miniature base run directory (default: train one into OUT/base)")
    parser.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4", help="SFT learning rates of the checkpoint grid")
    parser.add_argument("--steps", default="30,90", help="SFT steps of the checkpoint grid")
    parser.add_argument("--heldout-examples", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=64, help="instances per measurement")
    parser.add_argument("--samples", type=int, default=32, help="samples per instance for pass@k")
    parser.add_argument("--rl-runs", type=int, default=1,
                        help="RL runs per checkpoint (seeds 0, 1, ...): post-RL success is their mean, and their "
                             "spread tells how much of the checkpoints' differences is RL's own randomness")
    parser.add_argument("--max-rows", type=int, default=0,
                        help="rows (instances x samples) per evaluation batch (0: one batch, as the documented "
                             "runs; 256 x 16 rows of the small model hold ~15 GB)")
    parser.add_argument("--split", default="in_distribution")
    parser.add_argument("overrides", nargs="*", help="miniature config overrides, e.g. rl.lr=3e-5")
    args = parser.parse_args(argv)

    return run_with_miniature_config(PROG, args, lambda config: _study(config, args))


if __name__ == "__main__":
    sys.exit(main())
