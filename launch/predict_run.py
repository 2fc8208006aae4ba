"""The runner mode of `memgen predict` (the "Quagmires" study on small models): from SFT checkpoints (finished
`memgen sft` run directories) it measures the pre-RL predictors itself, runs RL from each checkpoint, measures the
post-RL success, and hands the checkpoints to launch.predict's statistics (R^2 and Spearman per predictor, plots).

Per checkpoint c, in DIR/runs/<name>/:
- heldout_loss: ``launch.sft_run.heldout_loss_of_run(c)``, the token-mean NLL of c's final policy on c's own
  held-out expert set (checkpoints of one data config share it).
- sft_success: greedy success (temperature 0) of c on ``episodes`` instances of ``split`` within ``budget``
  verification steps (``launch.rl_common.evaluate``; the instances are a function of ``seed`` only, so every
  checkpoint and the post-RL evaluation see the same ones).
- pass_at_k: the same instances sampled ``samples`` times each at ``temperature``; pass@k for k = 1, 2, 4, ...
  <= samples (the unbiased estimator, rl.pass_at_k, with n = samples >= k).
- RL: ``launch.rl_run.run_rl`` of the RL config with ``init=c`` into DIR/runs/<name>/rl (resumable); with
  ``rl_runs`` > 1 also runs with seeds seed + 1, ... into DIR/runs/<name>/rl-seed<seed>.
- post_rl_success: greedy success of the RL policy on the same instances at the same budget (the mean over the RL
  runs, each listed in post_rl_runs when there are several; post_rl_n the instances).
The measurements are written as eval records (arm "sft" before RL, with heldout_loss and pass_at_k; arm "rl"
after, one per RL run) to DIR/runs/<name>/metrics.jsonl and as one checkpoint line (launch.predict's input format) to
DIR/checkpoints.jsonl; a re-run skips checkpoints whose measurements are complete and resumes unfinished RL.

Python API: ``run_predict(checkpoint_dirs, out_dir, rl_config, settings) -> (checkpoints, rows)``.
Arrays: episodes x samples success matrices (M, N) bool, host side.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from launch.config import ConfigError, load_config, to_dict

MEASUREMENTS = "measurements.json"


@dataclasses.dataclass(frozen=True)
class PredictRunSettings:
    """How the predictors are measured. ``episodes`` instances of ``split`` (seeded by ``seed``) at ``budget``
    verification steps (None: the RL config's episodes.max_verify_steps); ``samples`` samples per instance at
    ``temperature`` for pass@k (k = 1, 2, 4, ... <= samples; the paper's k goes to 256, so samples=256);
    ``rl_runs`` RL runs per checkpoint (seeds: the RL config's seed + 0, 1, ...), post-RL success their mean."""

    split: str = "in_distribution"
    episodes: int = 64
    samples: int = 256
    temperature: float = 1.0
    budget: Optional[int] = None
    seed: int = 1234
    rl_runs: int = 1


def checkpoint_names(directories: Sequence[Path]) -> list[str]:
    """Distinct names for checkpoint directories: the shortest trailing path parts that tell them apart
    (runs/a/lr-0.001 and runs/b/lr-0.001 -> a_lr-0.001, b_lr-0.001)."""
    parts = [Path(d).absolute().parts for d in directories]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["_".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return [re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) for name in names]
    raise ConfigError(f"the checkpoints {[str(d) for d in directories]} are the same directory more than once")


def _sampling(rl_config: Any, temperature: float):
    return dataclasses.replace(rl_config.episodes, temperature=float(temperature))


def _check(checkpoint_dirs: Sequence[Path], rl_config: Any, settings: PredictRunSettings) -> int:
    from launch.sft_run import FINAL_DIR

    if settings.episodes < 1 or settings.samples < 1 or settings.temperature <= 0 or settings.rl_runs < 1:
        raise ConfigError(f"episodes ({settings.episodes}), samples ({settings.samples}) and RL runs "
                          f"({settings.rl_runs}) must be at least 1 and temperature ({settings.temperature}) positive "
                          "(pass@k needs sampled answers)")
    for directory in checkpoint_dirs:
        if not (Path(directory) / FINAL_DIR / "config.json").is_file():
            raise ConfigError(f"{directory} is not a finished `memgen sft` run directory (no final/ policy); pass "
                              "SFT run directories, or finish them by re-running their `memgen sft` command")
    budget = settings.budget if settings.budget is not None else rl_config.episodes.max_verify_steps
    if budget < 1:
        raise ConfigError(f"the verification budget must be at least 1, got {budget}")
    return int(budget)


class _Evaluator:
    """``launch.rl_common.evaluate`` with compiled rollouts shared by every policy of the same model config and
    tokenizer (checkpoints of one sweep), so each evaluation shape compiles once per process."""

    def __init__(self, settings: PredictRunSettings, budget: int):
        self.settings, self.budget = settings, budget
        self._runners: dict[Any, dict] = {}

    def __call__(self, policy, sampling, n_samples: int) -> dict:
        from launch.model_source import tokenizer_fingerprint
        from launch.rl_common import evaluate

        runners = self._runners.setdefault((policy.config, tokenizer_fingerprint(policy), sampling), {})
        return evaluate(policy, policy.params, sampling, split=self.settings.split, budget=self.budget,
                        num_episodes=self.settings.episodes, n_samples=n_samples, seed=self.settings.seed,
                        runners=runners)


def rl_run_name(index: int, seed: int) -> str:
    """The directory of a checkpoint's index-th RL run: rl/ for the first, rl-seed<seed>/ for the others."""
    return "rl" if index == 0 else f"rl-seed{seed}"


def measure_checkpoint(sft_dir: Path, run_dir: Path, rl_config: Any, settings: PredictRunSettings, budget: int,
                       evaluator: _Evaluator, log: Callable[[str], None] = print) -> dict:
    """The checkpoint dict of one SFT run (launch.predict's format), measuring and running RL as needed."""
    from launch.metrics import MetricsWriter
    from launch.metrics_schema import eval_record
    from launch.rl_common import load_policy
    from launch.rl_run import run_rl
    from launch.sft_run import TASK_NAMES, heldout_loss_of_run
    from launch.config import SFTConfig

    settings_spec = dataclasses.asdict(settings)
    if settings.rl_runs == 1:  # as measured before rl_runs existed, so those measurements still count
        del settings_spec["rl_runs"]
    spec = {"sft_dir": str(sft_dir), "rl": to_dict(rl_config), "settings": settings_spec, "budget": budget}
    cached = run_dir / MEASUREMENTS
    if cached.is_file():
        saved = json.loads(cached.read_text())
        if saved.get("spec") == spec:
            log(f"memgen predict: skipped {run_dir.name} (measured)")
            # measured before post_rl_n was recorded: the post-RL success is over the same n instances
            return {"post_rl_n": saved["checkpoint"]["n"], **saved["checkpoint"]}
    sft_config = load_config(SFTConfig, sft_dir)
    task = TASK_NAMES[(sft_config.task, sft_config.modality)]
    if (rl_config.episodes.task, rl_config.episodes.modality) != (sft_config.task, sft_config.modality):
        raise ConfigError(f"{sft_dir} trained {task} but the RL config samples {rl_config.episodes.task}/"
                          f"{rl_config.episodes.modality}; choose the RL preset of the same task")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"memgen predict: measuring {run_dir.name} before RL")
    heldout = heldout_loss_of_run(sft_dir)
    policy = load_policy(str(sft_dir), seed=rl_config.seed)
    greedy = evaluator(policy, _sampling(rl_config, 0.0), 1)
    sampled = evaluator(policy, _sampling(rl_config, settings.temperature), settings.samples)
    del policy
    posts = []
    for index in range(settings.rl_runs):
        seed = rl_config.seed + index
        log(f"memgen predict: RL from {run_dir.name}"
            + (f" (run {index + 1} of {settings.rl_runs}, seed {seed})" if settings.rl_runs > 1 else ""))
        rl_dir = run_dir / rl_run_name(index, seed)
        run_rl(dataclasses.replace(rl_config, init=str(sft_dir), seed=seed), rl_dir)
        posts.append(evaluator(load_policy(str(rl_dir), seed=seed), _sampling(rl_config, 0.0), 1))

    pass_at_k = {str(k): v for k, v in sampled["pass_at_k"].items()} if "pass_at_k" in sampled else {}
    with MetricsWriter(run_dir, tensorboard=False) as writer:
        writer.write(0, eval_record(step=0, gflops=0.0, task=task, arm="sft", seed=settings.seed,
                                    heldout_loss=heldout["loss"], pass_at_k=pass_at_k or None, **greedy))
        for index, post in enumerate(posts):  # one record per RL run, steps 1, 2, ...
            writer.write(index + 1, eval_record(step=index + 1, gflops=0.0, task=task, arm="rl", seed=settings.seed,
                                                **post))
    successes = [post["success"] for post in posts]
    checkpoint = {"name": run_dir.name, "sft_dir": str(sft_dir), "post_rl_success": float(np.mean(successes)),
                  "post_rl_n": posts[0]["n"], **({"post_rl_runs": successes} if len(posts) > 1 else {}),
                  "sft_success": greedy["success"], "heldout_loss": heldout["loss"], "pass_at_k": pass_at_k,
                  "n": greedy["n"], "samples": settings.samples, "budget": budget, "split": settings.split}
    cached.write_text(json.dumps({"spec": spec, "checkpoint": checkpoint}, indent=1) + "\n")
    return checkpoint


def run_predict(checkpoint_dirs: Sequence[str | Path], out_dir: str | Path, rl_config: Any,
                settings: PredictRunSettings = PredictRunSettings(), log: Callable[[str], None] = print
                ) -> tuple[list[dict], list]:
    """Measure every checkpoint (see the module docstring), write DIR/checkpoints.jsonl and the statistics
    (launch.predict.write_predict: predict.md, predict.json, one scatter plot per predictor); returns
    (checkpoints, predictor rows)."""
    from launch.predict import write_predict

    directories = [Path(d).absolute() for d in checkpoint_dirs]
    budget = _check(directories, rl_config, settings)
    out = Path(out_dir)
    evaluator = _Evaluator(settings, budget)
    checkpoints = [measure_checkpoint(sft_dir, out / "runs" / name, rl_config, settings, budget, evaluator, log)
                   for sft_dir, name in zip(directories, checkpoint_names(directories))]
    (out / "checkpoints.jsonl").write_text("".join(json.dumps(c) + "\n" for c in checkpoints))
    return checkpoints, write_predict(checkpoints, out)
