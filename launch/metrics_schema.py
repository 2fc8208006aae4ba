"""The record schema of DIR/metrics.jsonl (docs/metrics.md) and the loader that reports and predictors read.

Every line of a run's metrics.jsonl is one JSON object with at least ``kind``, ``step`` and ``gflops`` (cumulative
training compute as the paper counts it, rl/compute.py). The kinds this module knows:

- ``"train"``: one optimizer step or update: loss, lr, tokens, arm ("sft" | "rl" | "base").
- ``"eval"``: one evaluation of the current policy on one task and split: task, split, n (episodes), success
  (rate in [0, 1]) and success_se, optionally per_step_accuracy(_se), recognition_accuracy(_se), verify_budget,
  heldout_loss, pass_at_k ({k: value}) and pass_at_k_se ({k: standard error}), seed, arm.
- ``"rollout"``: statistics of one RL rollout (reward_mean, episodes, ...); only the common fields are checked.

Other kinds and extra fields are allowed (a run loop may log more than the report reads). A run directory also
holds config.json, the resolved config of the run. Writers (launch/metrics.py) turn non-finite floats into JSON
null; optional fields that are null count as absent.

Arrays: none; records are host-side dicts of Python scalars.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypedDict

METRICS_FILENAME = "metrics.jsonl"
CONFIG_FILENAME = "config.json"

KINDS = ("train", "eval", "rollout")
ARMS = ("base", "sft", "rl")
TASKS = ("gp-l", "gp-vl", "virl-l", "virl-vl")
SPLITS = ("in_distribution", "rule_ood", "visual_ood")
# Rates in [0, 1] that an eval record may carry, each with an optional "<name>_se" standard error.
EVAL_RATES = ("success", "per_step_accuracy", "recognition_accuracy")


class MetricsFileError(ValueError):
    """A metrics.jsonl or config.json is missing or malformed; the message names the file, the line and the fix."""


class _Common(TypedDict):
    kind: str
    step: int
    gflops: float


class TrainRecord(_Common, total=False):
    """kind "train". Required: loss, lr, tokens (tokens trained in this step), arm."""
    loss: Optional[float]
    lr: float
    tokens: int
    arm: str


class EvalRecord(_Common, total=False):
    """kind "eval". Required: task, split, n, success, success_se; the rest when measured."""
    task: str
    split: str
    n: int
    success: float
    success_se: float
    per_step_accuracy: float
    per_step_accuracy_se: float
    recognition_accuracy: float
    recognition_accuracy_se: float
    verify_budget: int
    heldout_loss: float
    pass_at_k: dict[str, float]
    pass_at_k_se: dict[str, float]
    seed: int
    arm: str


class RolloutRecord(_Common, total=False):
    """kind "rollout". Free-form statistics of one rollout (reward_mean, episodes, inference_tokens, ...)."""


# --- validation ------------------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_rate(record: Mapping[str, Any], name: str, required: bool) -> None:
    value = record.get(name)
    if value is None:
        _require(not required, f"an eval record needs {name!r} (a rate in [0, 1])")
        return
    _require(_is_number(value) and 0.0 <= value <= 1.0, f"{name!r} must be a rate in [0, 1], got {value!r}")
    se = record.get(f"{name}_se")
    if se is None:
        _require(not required, f"an eval record needs {name + '_se'!r} (the binomial standard error of {name!r})")
        return
    _require(_is_number(se) and se >= 0.0, f"{name + '_se'!r} must be a number >= 0, got {se!r}")


def validate_record(record: Any) -> dict:
    """Check one metrics record against the schema and return it as a dict; raises ValueError with one sentence
    saying which field is wrong. Extra fields and unknown kinds pass (only the common fields are checked)."""
    _require(isinstance(record, Mapping), f"a metrics record must be a JSON object, got {type(record).__name__}")
    record = dict(record)
    kind = record.get("kind")
    _require(isinstance(kind, str) and kind != "", "a metrics record needs a 'kind' string (train, eval, rollout, ...)")
    _require(_is_int(record.get("step")) and record["step"] >= 0,
             f"a metrics record needs an integer 'step' >= 0, got {record.get('step')!r}")
    _require(_is_number(record.get("gflops")) and record["gflops"] >= 0,
             f"a metrics record needs 'gflops' (cumulative training compute, a number >= 0), "
             f"got {record.get('gflops')!r}")
    arm = record.get("arm")
    _require(arm is None or arm in ARMS, f"'arm' must be one of {', '.join(ARMS)}, got {arm!r}")
    if kind == "train":
        for name in ("lr", "tokens"):
            _require(_is_number(record.get(name)) and record[name] >= 0,
                     f"a train record needs {name!r} (a number >= 0), got {record.get(name)!r}")
        _require("loss" in record and (record["loss"] is None or _is_number(record["loss"])),
                 f"a train record needs 'loss' (a number, or null when it was not finite), "
                 f"got {record.get('loss', '<missing>')!r}")
        _require(arm is not None, "a train record needs 'arm' (base, sft or rl)")
    elif kind == "eval":
        _require(record.get("task") in TASKS, f"'task' must be one of {', '.join(TASKS)}, got {record.get('task')!r}")
        _require(record.get("split") in SPLITS,
                 f"'split' must be one of {', '.join(SPLITS)}, got {record.get('split')!r}")
        _require(_is_int(record.get("n")) and record["n"] >= 1,
                 f"an eval record needs 'n' (the number of episodes, an integer >= 1), got {record.get('n')!r}")
        for name in EVAL_RATES:
            _check_rate(record, name, required=name == "success")
        budget = record.get("verify_budget")
        _require(budget is None or (_is_int(budget) and budget >= 1),
                 f"'verify_budget' must be an integer >= 1, got {budget!r}")
        loss = record.get("heldout_loss")
        _require(loss is None or _is_number(loss), f"'heldout_loss' must be a number, got {loss!r}")
        seed = record.get("seed")
        _require(seed is None or _is_int(seed), f"'seed' must be an integer, got {seed!r}")
        curve = record.get("pass_at_k")
        if curve is not None:
            _require(isinstance(curve, Mapping) and len(curve) > 0,
                     f"'pass_at_k' must be a non-empty object {{k: value}}, got {curve!r}")
            for k, value in curve.items():
                _require(str(k).isdigit() and int(k) >= 1 and _is_number(value) and 0.0 <= value <= 1.0,
                         f"'pass_at_k' needs integer keys k >= 1 and values in [0, 1], got {k!r}: {value!r}")
        errors = record.get("pass_at_k_se")
        if errors is not None:
            _require(isinstance(errors, Mapping) and set(map(str, errors)) == set(map(str, curve or {})),
                     f"'pass_at_k_se' must be an object with the keys of 'pass_at_k', got {errors!r}")
            for k, value in errors.items():  # NaN (null in the file): undefined for a single instance
                _require(value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                           and (math.isnan(value) or 0.0 <= value < math.inf)),
                         f"'pass_at_k_se' values must be numbers >= 0 (or null), got {k!r}: {value!r}")
    return record


# --- builders that run loops call -------------------------------------------------------------------------------

def _drop_none(fields: Mapping[str, Any]) -> dict:
    return {key: value for key, value in fields.items() if value is not None}


def train_record(*, step: int, gflops: float, loss: Optional[float], lr: float, tokens: int, arm: str,
                 **extra: Any) -> dict:
    """A validated "train" record; extra keyword fields (grad_norm, clip_fraction, ...) are kept. A non-finite
    loss (a skipped step) becomes None, as MetricsWriter writes it (JSON null)."""
    loss = None if loss is None or not math.isfinite(float(loss)) else float(loss)
    return validate_record({"kind": "train", "step": int(step), "gflops": float(gflops), "loss": loss,
                            "lr": float(lr), "tokens": int(tokens), "arm": arm, **extra})


def eval_record(*, step: int, gflops: float, task: str, split: str, n: int, success: float,
                success_se: Optional[float] = None, arm: Optional[str] = None, seed: Optional[int] = None,
                per_step_accuracy: Optional[float] = None, per_step_accuracy_se: Optional[float] = None,
                recognition_accuracy: Optional[float] = None, recognition_accuracy_se: Optional[float] = None,
                verify_budget: Optional[int] = None, heldout_loss: Optional[float] = None,
                pass_at_k: Optional[Mapping[int, float]] = None,
                pass_at_k_se: Optional[Mapping[int, float]] = None, **extra: Any) -> dict:
    """A validated "eval" record. success_se defaults to the binomial sqrt(p (1 - p) / n) over the n episodes;
    pass_at_k is {k: value} and pass_at_k_se {k: its standard error} (JSON keys become strings). Accuracy standard errors are not filled in: they are
    over steps, not episodes, so the caller passes them (rl.metrics.per_step_accuracy returns them)."""
    if success_se is None:
        success_se = binomial_se(success, n)
    def by_k(curve):  # {k: value} sorted by k, with string keys (as JSON writes them)
        return None if curve is None else {str(int(k)): float(v) for k, v in
                                           sorted(curve.items(), key=lambda kv: int(kv[0]))}

    def number(value, kind=float):  # device or numpy scalars -> Python numbers (None stays None)
        return None if value is None else kind(value)

    fields = dict(kind="eval", step=int(step), gflops=float(gflops), task=task, split=split, n=int(n),
                  success=float(success), success_se=float(success_se), arm=arm, seed=number(seed, int),
                  per_step_accuracy=number(per_step_accuracy), per_step_accuracy_se=number(per_step_accuracy_se),
                  recognition_accuracy=number(recognition_accuracy),
                  recognition_accuracy_se=number(recognition_accuracy_se),
                  verify_budget=number(verify_budget, int), heldout_loss=number(heldout_loss), pass_at_k=by_k(pass_at_k),
                  pass_at_k_se=by_k(pass_at_k_se))
    return validate_record(_drop_none({**fields, **extra}))


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n) as a Python float (rl.metrics.binomial_standard_error, the paper's error bar)."""
    from rl.metrics import binomial_standard_error  # imports jax: only when a standard error is computed here

    return float(binomial_standard_error(float(p), int(n)))


# --- loading run directories ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory: its name (for legends and tables), path, resolved config (None without config.json),
    all valid records in file order, and warnings (e.g. a torn last line that was skipped)."""

    name: str
    path: Path
    config: Optional[dict]
    records: tuple[dict, ...]
    warnings: tuple[str, ...] = ()

    def of_kind(self, kind: str) -> list[dict]:
        return [record for record in self.records if record["kind"] == kind]

    def evals(self) -> list[dict]:
        """The eval records with arm and seed filled in when the record lacks them (`default_arm`,
        `default_seed`)."""
        arm, seed = default_arm(self), default_seed(self)
        return [{**record, "arm": record.get("arm") or arm,
                 "seed": seed if record.get("seed") is None else int(record["seed"])}
                for record in self.of_kind("eval")]


def default_arm(run: Run) -> str:
    """The arm of a record that names none: config.json's "arm", else the one arm of the run's train records,
    else "unknown"."""
    if run.config and run.config.get("arm") in ARMS:
        return run.config["arm"]
    train_arms = {r["arm"] for r in run.of_kind("train")}
    return train_arms.pop() if len(train_arms) == 1 else "unknown"


def default_seed(run: Run) -> int:
    """The seed of a record that names none: config.json's "seed", else 0."""
    if run.config and _is_int(run.config.get("seed")):
        return int(run.config["seed"])
    return 0


def read_records(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(valid records, warnings) of one metrics.jsonl. A malformed line raises MetricsFileError naming the file
    and line; only a torn last line (no trailing newline: the writer was killed mid-write) is skipped with a
    warning. Blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise MetricsFileError(f"{path} does not exist; pass run directories that hold a metrics.jsonl.") from error
    records, warnings = [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines) and not text.endswith("\n")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if torn:
                warnings.append(f"{path} line {number} is an incomplete last line (the run was cut off mid-write); "
                                "it was skipped.")
                continue
            raise MetricsFileError(f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno}); "
                                   "fix or delete that line.") from None
        try:
            records.append(validate_record(record))
        except ValueError as error:
            raise MetricsFileError(f"{path} line {number} does not follow the metrics schema: {error} "
                                   "(see docs/metrics.md).") from None
    return records, warnings


def load_run(directory: str | os.PathLike, name: Optional[str] = None) -> Run:
    """Read DIR/metrics.jsonl and DIR/config.json (optional) into a Run."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MetricsFileError(f"run directory {directory} does not exist; pass directories written by a memgen run.")
    records, warnings = read_records(directory / METRICS_FILENAME)
    config = None
    config_path = directory / CONFIG_FILENAME
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise MetricsFileError(f"{config_path} is not valid JSON (line {error.lineno}: {error.msg}); "
                                   "fix it or remove it.") from None
        if not isinstance(config, dict):
            raise MetricsFileError(f"{config_path} must hold a JSON object (the resolved run config).")
    return Run(name=name or directory.name, path=directory, config=config, records=tuple(records),
               warnings=tuple(warnings))


def load_runs(directories: Iterable[str | os.PathLike]) -> list[Run]:
    """Several runs; names are the directory names, made unique with their parent when two collide."""
    paths = [Path(d) for d in directories]
    if not paths:
        raise MetricsFileError("no run directories given; pass at least one directory holding a metrics.jsonl.")
    names = [p.resolve().name for p in paths]
    unique = [name if names.count(name) == 1 else f"{p.resolve().parent.name}/{name}" for p, name in zip(paths, names)]
    return [load_run(p, name) for p, name in zip(paths, unique)]
