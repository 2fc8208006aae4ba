"""`memgen data`: write a task's expert data (SFT training examples) or evaluation instances as JSONL, with
images as PNG files beside it for the vision variants, through the task's own writer (`write_jsonl`), plus the
resolved task config as JSON so the file can be regenerated.

    memgen data --task gp-l --out data/ --kind expert --size 1000 --seed 0 target=24
    memgen data --task gp-vl --out eval/ --split rule_ood --size 234

Training data (`--split train`, the default): `--kind expert` gives optimal single-turn examples, `--kind
suboptimal` the ablation's multi-turn trajectories (wrong attempts, the verifier's feedback, then the ideal
answer). Evaluation splits (`in_distribution`, `rule_ood`, `visual_ood`) give the first prompt of each episode
(the user turn, with its image for vision) of the split's config. Output: OUT/<task>_<split>[_<kind>].jsonl,
OUT/<same stem>_images/*.png, OUT/<same stem>.config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from launch.config import ConfigError, apply_overrides, to_dict

TASKS = ("gp-l", "gp-vl", "virl-l", "virl-vl")
SPLITS = ("train", "in_distribution", "rule_ood", "visual_ood")
# The paper evaluates GeneralPoints on 234 instances per split.
DEFAULT_EVAL_SIZE = 234
DEFAULT_TRAIN_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What `memgen data` needs from a task: its default config for a modality, the split configs, the
    training-data generators and the writer."""

    base_config: Any
    evaluation_splits: Any      # config -> {split name: config}
    expert: Any                 # (config, seed, size) -> conversations
    suboptimal: Any             # (config, seed, size) -> conversations
    first_prompts: Any          # (config, seed, size) -> conversations (the user turn of each episode)
    write_jsonl: Any            # (conversations, path) -> path


def _general_points(modality: str) -> TaskData:
    import tasks.general_points as gp

    def first_prompts(config, seed, size):
        return [gp.reset(config, hand=hand).conversation for hand in gp.sample_hands(config, seed, size)]

    return TaskData(gp.GeneralPointsConfig(modality=modality), gp.evaluation_splits, gp.expert_conversations,
                    gp.suboptimal_trajectories, first_prompts, gp.write_jsonl)


def _virl(modality: str) -> TaskData:
    try:
        import tasks.virl as virl
    except ImportError:
        raise ConfigError("the V-IRL task (tasks/virl) is not in this checkout yet; use gp-l or gp-vl, or update "
                          "to a version of memgen that has it") from None
    needed = ("evaluation_splits", "expert_conversations", "suboptimal_trajectories", "first_prompts",
              "write_jsonl")
    missing = [name for name in needed if not hasattr(virl, name)]
    if missing:
        raise ConfigError(f"tasks.virl does not provide {', '.join(missing)} yet, which `memgen data` needs; use "
                          "gp-l or gp-vl for now")
    return TaskData(virl.VirlConfig(modality=modality), virl.evaluation_splits, virl.expert_conversations,
                    virl.suboptimal_trajectories, virl.first_prompts, virl.write_jsonl)


def task_data(task: str) -> TaskData:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    family, _, variant = task.partition("-")
    modality = "vision" if variant == "vl" else "language"
    return _general_points(modality) if family == "gp" else _virl(modality)


def resolve_config(data: TaskData, overrides: list[str]) -> Any:
    """The task config with `key=value` overrides applied; a field the task rejects is a ConfigError."""
    try:
        config = apply_overrides(data.base_config, overrides)
    except ValueError as error:  # the task config's own validation (__post_init__)
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"the task config rejects the overrides: {error}") from None
    if getattr(config, "modality", None) != getattr(data.base_config, "modality", None):
        raise ConfigError("the modality comes from --task (gp-l / gp-vl, virl-l / virl-vl); drop the modality= "
                          "override")
    return config


def write_data(task: str, out: str | Path, *, kind: str = "expert", split: str = "train", size: int | None = None,
               seed: int = 0, overrides: list[str] = ()) -> dict[str, Any]:
    """Generate and write the data; returns the summary (also written beside the JSONL as its config file)."""
    if kind not in ("expert", "suboptimal"):
        raise ConfigError(f"unknown kind {kind!r}; choose expert or suboptimal")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    data = task_data(task)
    config = resolve_config(data, list(overrides))
    size = size if size is not None else (DEFAULT_TRAIN_SIZE if split == "train" else DEFAULT_EVAL_SIZE)
    if size < 1:
        raise ConfigError(f"--size must be at least 1, got {size}")
    if split == "train":
        generate = data.expert if kind == "expert" else data.suboptimal
        split_config = config
        stem = f"{task}_train_{kind}"
    else:
        splits = data.evaluation_splits(config)
        if split not in splits:
            raise ConfigError(f"task {task} has no split {split!r}; its splits are: {', '.join(splits)}")
        generate, split_config, stem = data.first_prompts, splits[split], f"{task}_{split}"
    try:
        conversations = generate(split_config, seed, size)
    except ValueError as error:
        raise ConfigError(f"cannot generate {task} {split} data with this config: {error}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = data.write_jsonl(conversations, out / f"{stem}.jsonl")
    images = sorted((out / f"{stem}_images").glob("*.png")) if (out / f"{stem}_images").is_dir() else []
    summary = {
        "task": task, "split": split, "kind": kind if split == "train" else "first_prompt", "seed": seed,
        "size": len(conversations), "turns": sum(len(c) for c in conversations), "images": len(images),
        "jsonl": str(path), "config": to_dict(split_config),
    }
    config_path = out / f"{stem}.config.json"
    config_path.write_text(json.dumps(summary, indent=2) + "\n")
    summary["config_file"] = str(config_path)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--kind", default="expert", choices=["expert", "suboptimal"],
                        help="training data: optimal single-turn examples or multi-turn sub-optimal trajectories")
    parser.add_argument("--split", default="train", choices=list(SPLITS),
                        help="train (expert data) or an evaluation split (first prompts)")
    parser.add_argument("--size", type=int, default=None,
                        help=f"examples (default {DEFAULT_TRAIN_SIZE} for train, {DEFAULT_EVAL_SIZE} for a split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="task config fields, e.g. target=24 face_cards=distinct max_verify_steps=5")


def run(args: argparse.Namespace) -> int:
    try:
        summary = write_data(args.task, args.out, kind=args.kind, split=args.split, size=args.size,
                             seed=args.seed, overrides=args.overrides)
    except ConfigError as error:
        print(f"memgen data: {error}", file=sys.stderr)
        return 2
    print(f"{summary['task']} {summary['split']} ({summary['kind']}): {summary['size']} conversations, "
          f"{summary['turns']} turns, {summary['images']} images")
    print(f"  data:   {summary['jsonl']}")
    print(f"  config: {summary['config_file']}")
    return 0
