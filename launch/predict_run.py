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
DIR/checkpoints.jsonl; a re-run skips what is measured (cached per checkpoint in measurements.json: the pre-RL
record and each RL seed's record) and resumes unfinished RL, so raising ``rl_runs`` runs only the new seeds.

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
    ``rl_runs`` RL runs per checkpoint (seeds: the RL config's seed + 0, 1, ...), post-RL success their mean;
    ``max_rows``: play at most that many rows (instances x samples) per rollout batch (``rl_common.evaluate``;
    None: all in one batch), which bounds the memory of a large pass@k."""

    split: str = "in_distribution"
    episodes: int = 64
    samples: int = 256
    temperature: float = 1.0
    budget: Optional[int] = None
    seed: int = 1234
    rl_runs: int = 1
    max_rows: Optional[int] = None


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

    if (settings.episodes < 1 or settings.samples < 1 or settings.temperature <= 0 or settings.rl_runs < 1
            or (settings.max_rows is not None and settings.max_rows < 1)):
        raise ConfigError(f"episodes ({settings.episodes}), samples ({settings.samples}), RL runs "
                          f"({settings.rl_runs}) and max rows ({settings.max_rows}) must be at least 1 and temperature "
                          f"({settings.temperature}) positive (pass@k needs sampled answers)")
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
                        runners=runners, max_rows=self.settings.max_rows)


def rl_run_name(index: int, seed: int) -> str:
    """The directory of a checkpoint's index-th RL run: rl/ for the first, rl-seed<seed>/ for the others."""
    return "rl" if index == 0 else f"rl-seed{seed}"


def _policy_as_rl_evaluates(directory: Path, rl_config: Any, seed: int):
    """The policy of a run directory in the params and compute dtypes `memgen rl` evaluates with under
    `rl_config` (its param_dtype, compute_dtype), so that predictors and targets are measured alike."""
    from launch.rl_common import load_policy

    return load_policy(str(directory), seed=seed, param_dtype=rl_config.param_dtype,
                       compute_dtype=rl_config.compute_dtype)


def measure_checkpoint(sft_dir: Path, run_dir: Path, rl_config: Any, settings: PredictRunSettings, budget: int,
                       evaluator: _Evaluator, log: Callable[[str], None] = print) -> dict:
    """The checkpoint dict of one SFT run (launch.predict's format), measuring and running RL as needed: the
    pre-RL measurements and each RL run's evaluation are cached in DIR/runs/<name>/measurements.json as eval
    records, so a re-run (or one with more ``rl_runs``) measures only what is missing."""
    from launch.metrics import MetricsWriter
    from launch.metrics_schema import eval_record
    from launch.rl_run import run_rl
    from launch.sft_run import TASK_NAMES, heldout_loss_of_run
    from launch.config import SFTConfig

    from launch.rl_common import evaluation_chunk

    # rl_runs is not a property of a measurement (each RL seed is cached apart), and max_rows only where it splits
    # a batch (chunked draws differ from one batch's), so caches from before either existed still count
    settings_spec = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("rl_runs", "max_rows")}
    if evaluation_chunk(settings.episodes, settings.samples, settings.max_rows) < settings.episodes:
        settings_spec["max_rows"] = settings.max_rows
    spec = {"sft_dir": str(sft_dir), "rl": to_dict(rl_config), "settings": settings_spec, "budget": budget}
    cache = _read_cache(run_dir, spec, rl_config.seed)
    seeds = [rl_config.seed + index for index in range(settings.rl_runs)]
    if cache["sft"] is not None and all(str(seed) in cache["rl"] for seed in seeds):
        log(f"memgen predict: skipped {run_dir.name} (measured)")
    else:
        sft_config = load_config(SFTConfig, sft_dir)
        task = TASK_NAMES[(sft_config.task, sft_config.modality)]
        if (rl_config.episodes.task, rl_config.episodes.modality) != (sft_config.task, sft_config.modality):
            raise ConfigError(f"{sft_dir} trained {task} but the RL config samples {rl_config.episodes.task}/"
                              f"{rl_config.episodes.modality}; choose the RL preset of the same task")
        run_dir.mkdir(parents=True, exist_ok=True)

        def save() -> None:
            (run_dir / MEASUREMENTS).write_text(json.dumps(cache, indent=1) + "\n")

        if cache["sft"] is None:
            log(f"memgen predict: measuring {run_dir.name} before RL")
            heldout = heldout_loss_of_run(sft_dir)
            policy = _policy_as_rl_evaluates(sft_dir, rl_config, rl_config.seed)
            greedy = evaluator(policy, _sampling(rl_config, 0.0), 1)
            sampled = evaluator(policy, _sampling(rl_config, settings.temperature), settings.samples)
            del policy
            cache["sft"] = eval_record(step=0, gflops=0.0, task=task, arm="sft", seed=settings.seed,
                                       heldout_loss=heldout["loss"], pass_at_k=sampled.get("pass_at_k"), **greedy)
            save()
        for index, seed in enumerate(seeds):
            if str(seed) in cache["rl"]:
                continue
            log(f"memgen predict: RL from {run_dir.name}"
                + (f" (run {index + 1} of {settings.rl_runs}, seed {seed})" if settings.rl_runs > 1 else ""))
            rl_dir = run_dir / rl_run_name(index, seed)
            run_rl(dataclasses.replace(rl_config, init=str(sft_dir), seed=seed), rl_dir)
            post = evaluator(_policy_as_rl_evaluates(rl_dir, rl_config, seed), _sampling(rl_config, 0.0), 1)
            cache["rl"][str(seed)] = eval_record(step=1, gflops=0.0, task=task, arm="rl", seed=settings.seed, **post)
            save()
    records = [cache["sft"]] + [dict(cache["rl"][str(seed)], step=index + 1) for index, seed in enumerate(seeds)]
    with MetricsWriter(run_dir, tensorboard=False) as writer:  # one record per RL run, steps 1, 2, ...
        for record in records:
            writer.write(record["step"], record)
    sft, successes = cache["sft"], [record["success"] for record in records[1:]]
    return {"name": run_dir.name, "sft_dir": str(sft_dir), "post_rl_success": float(np.mean(successes)),
            "post_rl_n": records[1]["n"], **({"post_rl_runs": successes} if len(successes) > 1 else {}),
            "sft_success": sft["success"], "heldout_loss": sft["heldout_loss"], "pass_at_k": sft.get("pass_at_k") or {},
            "n": sft["n"], "samples": settings.samples, "budget": budget, "split": settings.split}


def _read_cache(run_dir: Path, spec: dict, first_seed: int) -> dict:
    """The checkpoint's cached measurements for `spec`: {"spec", "sft": the pre-RL eval record or None, "rl":
    {seed: the post-RL eval record}}; empty when there are none or they were measured under another spec. A cache
    written before 2026-12-07 ({"spec", "checkpoint"}, one RL run with the config's seed) is read back from the
    run's metrics.jsonl, which holds those two records."""
    from launch.metrics import read_metrics

    empty = {"spec": spec, "sft": None, "rl": {}}
    path = run_dir / MEASUREMENTS
    if not path.is_file():
        return empty
    saved = json.loads(path.read_text())
    if saved.get("spec") != spec:
        return empty
    if "checkpoint" not in saved:
        return saved
    records = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    sft = [r for r in records if r.get("arm") == "sft"]
    rl = [r for r in records if r.get("arm") == "rl"]
    if not sft or not rl:
        return empty
    return {"spec": spec, "sft": sft[0], "rl": {str(first_seed): rl[0]}}


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
