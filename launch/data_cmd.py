"""`memgen data`: write a task's expert data (SFT training examples) or evaluation instances as JSONL, with
images as PNG files beside it for the vision variants, through the task's own writer (`write_jsonl`), plus the
resolved task config as JSON so the file can be regenerated.

    memgen data --task gp-l --out data/ --kind expert --size 1000 --seed 0 target=24
    memgen data --task gp-vl --out eval/ --split rule_ood --size 234

Training data (`--split train`, the default): `--kind expert` gives optimal single-turn examples, `--kind
suboptimal` the ablation's multi-turn trajectories (wrong attempts, the verifier's feedback, then the ideal
answer). Evaluation splits (`in_distribution`, `rule_ood`, `visual_ood`) give the first prompt of each episode
(the user turn, with its image for vision) of the split's config. For V-IRL `--size` counts routes: training
data has one conversation per decision of each route (train city, `absolute` actions unless overridden);
in_distribution / rule_ood are routes of the train city with `absolute` / `relative` actions, visual_ood
(virl-vl only) routes of the 9 other-style cities. Output: OUT/<task>_<split>[_<kind>].jsonl,
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
# The paper evaluates GeneralPoints on 234 instances per split, V-IRL on 48 routes (18 for visual OOD).
DEFAULT_EVAL_SIZE = 234
VIRL_DEFAULT_EVAL_SIZE = {"in_distribution": 48, "rule_ood": 48, "visual_ood": 18}
DEFAULT_TRAIN_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What `memgen data` needs from a task: its default config for a modality, the split configs, the
    training-data generators and the writer."""

    base_config: Any
    evaluation_splits: Any      # config -> {split name: config}
    expert: Any                 # (config, seed, size) -> conversations (V-IRL: size routes, one per decision)
    suboptimal: Any             # (config, seed, size) -> conversations
    first_prompts: Any          # (split, config, seed, size) -> conversations (the user turn of each episode)
    write_jsonl: Any            # (conversations, path) -> path


def _general_points(modality: str) -> TaskData:
    import tasks.general_points as gp

    def first_prompts(split, config, seed, size):
        return [gp.reset(config, hand=hand).conversation for hand in gp.sample_hands(config, seed, size)]

    return TaskData(gp.GeneralPointsConfig(modality=modality), gp.evaluation_splits, gp.expert_conversations,
                    gp.suboptimal_trajectories, first_prompts, gp.write_jsonl)


# V-IRL: the training routes and the in-distribution / rule-OOD evaluation routes come from the training city
# (as the paper's all come from New York), drawn with different route seeds; one synthetic city has 24 places
# (at most 552 ordered pairs), so training sets larger than VIRL_ROUTES_PER_TRAIN_CITY go on into further
# training-style cities train_city(1), train_city(2), ... Visual OOD is the VLN-mini-shaped set of 9 cities in
# the other styles.
VIRL_TRAIN_CITY_SEED = 0
VIRL_ROUTES_PER_TRAIN_CITY = 250
VIRL_EVAL_ROUTE_SEED_OFFSET = 1_000_003
VIRL_OOD_CITIES = 9


def _virl(modality: str) -> TaskData:
    import math

    import tasks.virl as virl
    from tasks.virl import expert
    from tasks.virl.render import CityViews

    def views_of(city, config):
        if config.modality != "vision":
            return None
        return CityViews(city, config.view_size, config.separator_px, config.landmark_radius_m)

    def training(walk):
        def generate(config, seed, size):
            out = []
            for k in range(math.ceil(size / VIRL_ROUTES_PER_TRAIN_CITY)):
                city = virl.train_city(VIRL_TRAIN_CITY_SEED + k)
                views = views_of(city, config)
                n = min(VIRL_ROUTES_PER_TRAIN_CITY, size - k * VIRL_ROUTES_PER_TRAIN_CITY)
                out += [conversation for route in virl.generate_routes(city, n, seed)
                        for conversation in walk(route, config, views=views)]
            return out
        return generate

    def evaluation_splits(config):
        splits = {"in_distribution": dataclasses.replace(config, action_space="absolute"),
                  "rule_ood": dataclasses.replace(config, action_space="relative")}
        if config.modality == "vision":
            splits["visual_ood"] = dataclasses.replace(config, action_space="absolute")
        return splits

    def first_prompts(split, config, seed, size):
        if split == "visual_ood":
            n_cities = min(size, VIRL_OOD_CITIES)
            pairs = [(city, route) for city, routes in virl.visual_ood_set(
                seed, n_cities=n_cities, routes_per_city=math.ceil(size / n_cities)) for route in routes][:size]
        else:
            city = virl.train_city(VIRL_TRAIN_CITY_SEED)
            pairs = [(city, route) for route in virl.generate_routes(city, size, seed + VIRL_EVAL_ROUTE_SEED_OFFSET)]
        return [virl.reset(route, config, views=views_of(city, config)).conversation for city, route in pairs]

    return TaskData(virl.VirlConfig(modality=modality), evaluation_splits, training(expert.optimal_conversations),
                    training(expert.suboptimal_conversations), first_prompts, expert.write_jsonl)


def task_data(task: str) -> TaskData:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    family, _, variant = task.partition("-")
    modality = "vision" if variant == "vl" else "language"
    return _general_points(modality) if family == "gp" else _virl(modality)


def resolve_config(data: TaskData, overrides: list[str]) -> Any:
    """The task config with `key=value` overrides applied; a field the task rejects is a ConfigError (raised by
    apply_overrides, which runs the task config's own checks once after all overrides)."""
    config = apply_overrides(data.base_config, overrides)
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
    if size is None:
        size = (DEFAULT_TRAIN_SIZE if split == "train" else
                VIRL_DEFAULT_EVAL_SIZE[split] if task.startswith("virl") else DEFAULT_EVAL_SIZE)
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
        split_config, stem = splits[split], f"{task}_{split}"

        def generate(config, seed, size):
            return data.first_prompts(split, config, seed, size)
    try:
        conversations = generate(split_config, seed, size)
    except (ValueError, RuntimeError) as error:  # RuntimeError: V-IRL cannot find that many routes
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
                        help=f"examples, V-IRL: routes (default {DEFAULT_TRAIN_SIZE} for train, {DEFAULT_EVAL_SIZE} for a "
                             "split; V-IRL 48, visual_ood 18)")
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
