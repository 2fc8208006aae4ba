"""`memgen eval --preset NAME --out DIR [key=value ...]`: evaluate a policy (`init`: a `memgen sft`/`memgen rl` run
directory, a Hugging Face directory or a model preset) on GeneralPoints splits, sweeping the verification budget.

For each split in `splits` and each budget in `verify_budgets`, `episodes` instances (hands from
Generator((seed, budget, split))) run as multi-turn revision episodes with the scan rollout (rl.rollout) and one
"eval" record goes to DIR/metrics.jsonl through launch.metrics_schema.eval_record: success within the budget with
its binomial standard error, the mean episode length, and pass@k (k = 1, 2, 4, ... <= n_samples) when
n_samples > 1. Records carry step 0 and the starting policy's GFLOPs (D_init from its run's metrics.jsonl), so
`memgen report` can put them next to training curves.

Python API: ``run_eval(config, out_dir) -> list of records``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.config import ConfigError, resolve, save_config
from launch.metrics import MetricsWriter
from launch.metrics_schema import eval_record
from launch.rl_common import TASK_NAMES, evaluate, load_policy
from launch.rl_config import EvalConfig
from launch.model_source import init_tokens
from rl.compute import ComputeCounter, parameter_count, total_gflops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="eval-tiny", help="a preset name (eval-tiny, eval-gp-l)")
    parser.add_argument("--out", required=True, help="directory for config.json and metrics.jsonl")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. init=runs/sft "
                                                     "verify_budgets=1,3,5,10 n_samples=8")


def run_eval(config: EvalConfig, out_dir: str | Path) -> list[dict]:
    if config.n_samples < 1 or config.episodes < 1 or not config.verify_budgets:
        raise ConfigError("memgen eval needs episodes >= 1, n_samples >= 1 and at least one verify budget")
    if config.n_samples > 1 and config.sampling.temperature == 0.0:
        raise ConfigError("n_samples > 1 needs sampling.temperature > 0 (greedy samples are all the same)")
    out = Path(out_dir)
    save_config(config, out)
    policy = load_policy(config.init, seed=config.seed)
    task = TASK_NAMES[(config.sampling.task, config.sampling.modality)]
    gflops = total_gflops(ComputeCounter(init_tokens=init_tokens(config.init)), parameter_count(policy.params))
    runners: dict = {}
    records = []
    with MetricsWriter(out) as writer:
        for budget in config.verify_budgets:
            for split in config.splits:
                fields = evaluate(policy, policy.params, config.sampling, split=split, budget=int(budget),
                                  num_episodes=config.episodes, n_samples=config.n_samples, seed=config.seed,
                                  runners=runners)
                record = eval_record(step=0, gflops=gflops, task=task, seed=config.seed, **fields)
                writer.write(0, record)
                records.append(record)
                print(f"{split:16s} budget {budget:3d}: success {record['success']:.3f} "
                      f"± {record['success_se']:.3f} (n={record['n']})", file=sys.stderr)
    return records


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
