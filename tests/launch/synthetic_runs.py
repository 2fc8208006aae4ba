"""Synthetic run directories for the report tests: metrics.jsonl + config.json written with the schema's builders,
with known success probabilities (SFT: in-distribution up, OOD down; RL: all up) and binomial draws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from launch.metrics_schema import eval_record, train_record

SPLITS = ("in_distribution", "rule_ood", "visual_ood")
STEPS = (0, 10, 20, 30, 40, 50)
GFLOPS_PER_STEP = {"sft": 40.0, "rl": 250.0}
INIT_GFLOPS = 100.0


def true_rate(arm: str, split: str, fraction: float) -> float:
    """fraction in [0, 1] of the run; the SFT-RL story of the paper."""
    start = {"in_distribution": 0.3, "rule_ood": 0.15, "visual_ood": 0.25}[split]
    slope = {("sft", "in_distribution"): 0.5, ("sft", "rule_ood"): -0.12, ("sft", "visual_ood"): -0.15,
             ("rl", "in_distribution"): 0.5, ("rl", "rule_ood"): 0.3, ("rl", "visual_ood"): 0.4}[(arm, split)]
    return float(np.clip(start + slope * fraction, 0.0, 1.0))


def write_run(directory: Path, records: list[dict], config: dict | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metrics.jsonl", "w") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def arm_run(root: Path, arm: str, seed: int, *, task: str = "gp-vl", n: int = 200, steps=STEPS,
            splits=SPLITS, recognition: bool = True, pass_at_k: bool = True, heldout: bool = True,
            verify_budget: int | None = None, arm_in_records: bool = True, name: str | None = None) -> Path:
    rng = np.random.default_rng(1000 * seed + (0 if arm == "sft" else 1) + 7 * (verify_budget or 0))
    records = []
    for step in steps:
        fraction = step / max(steps[-1], 1)
        gflops = INIT_GFLOPS + GFLOPS_PER_STEP[arm] * step
        if step > 0:
            records.append(train_record(step=step, gflops=gflops, loss=1.0 / (1 + step), lr=1e-6, tokens=512,
                                        arm=arm))
        for split in splits:
            p = true_rate(arm, split, fraction)
            if verify_budget is not None and split != "in_distribution":
                p = float(np.clip(p + 0.01 * verify_budget * fraction, 0, 1))
            successes = int(rng.binomial(n, p))
            extra = {}
            if recognition:
                extra["recognition_accuracy"] = float(np.clip(0.6 + (0.2 if arm == "rl" else -0.2) * fraction, 0, 1))
                extra["recognition_accuracy_se"] = 0.02
            if pass_at_k:
                base = successes / n
                extra["pass_at_k"] = {1: base, 4: min(1.0, base * 2), 16: min(1.0, base * 3)}
            if heldout and arm == "sft":
                extra["heldout_loss"] = 2.0 - fraction + 0.5 * fraction ** 2
            records.append(eval_record(step=step, gflops=gflops, task=task, split=split, n=n, success=successes / n,
                                       arm=arm if arm_in_records else None, seed=seed if arm_in_records else None,
                                       verify_budget=verify_budget, **extra))
    config = {"arm": arm, "seed": seed, "task": task, "optimizer": {"lr": 1e-6}, "steps": steps[-1]}
    return write_run(root / (name or f"{arm}-seed{seed}"), records, config)


def full_study(root: Path) -> list[Path]:
    """Two arms x three seeds on GP-VL (three splits, recognition, pass@k, held-out loss) plus RL runs on GP-L with
    verify budgets 1, 3, 5, 10 (one seed)."""
    dirs = [arm_run(root, arm, seed, arm_in_records=seed != 2) for arm in ("sft", "rl") for seed in range(3)]
    dirs += [arm_run(root, "rl", 0, task="gp-l", splits=("in_distribution", "rule_ood"), recognition=False,
                     pass_at_k=False, heldout=False, verify_budget=budget, name=f"gpl-rl-budget{budget}",
                     steps=STEPS[: 3 + budget // 4])
             for budget in (1, 3, 5, 10)]
    return dirs
