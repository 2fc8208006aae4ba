"""`memgen sweep`: a grid of runs over SFT learning rates x freezing sets x verification budgets, resumable, with a
summary table (markdown + JSON) and plots.

    memgen sweep --preset SFT_PRESET --out DIR [--lrs 1e-4,3e-4]
                 [--freeze "none;vision_encoder;vision_encoder,projector"] [--budgets 1,3,5]
                 [--rl-preset RL_PRESET] [--eval-preset EVAL_PRESET] [--vmap auto|on|off]
                 [key=value | rl.key=value | eval.key=value ...]

The grid, one sub-directory per point (each an ordinary run directory of its command):

    DIR/sft/<freeze>/lr-<lr>/               `memgen sft` of the SFT preset with that freezing set and peak lr
    DIR/rl/<freeze>/lr-<lr>/budget-<b>/     with --rl-preset: `memgen rl` from that SFT policy with b verification
                                            steps per episode (episodes.max_verify_steps = b)
    DIR/eval/<freeze>/lr-<lr>/budget-<b>/   with --eval-preset: `memgen eval` at budget b of the RL policy of the
                                            same point (or of the SFT policy when there is no RL stage)

The learning rates of one freezing set are trained by ONE compiled program for small models
(`launch.sft_run.run_sft_sweep`, the vmapped `sft.step.sweep_train_step`; `--vmap auto` does so for the tiny and
small model presets); the other axes are separate runs (`run_sft`, `run_rl`, `run_eval`). Re-running the same
command skips finished points (an SFT or RL run whose final/ policy is written, an evaluation whose records are all
there) and resumes unfinished ones from their checkpoints; new learning rates, freezing sets or budgets added to
the command only run the new points. Overrides without a prefix set the SFT config, `rl.` ones the RL config and
`eval.` ones the evaluation config.

Outputs: DIR/sweep.json (the latest invocation's grid and overrides), DIR/summary.md and DIR/summary.json (one
row per grid point: final SFT train and held-out loss, RL episode return, success per split with its binomial
standard error), DIR/sweep_loss.png (final train and held-out loss vs learning rate, one line per freezing set)
and, with an evaluation stage, DIR/sweep_success.png (success vs learning rate per split, one line per freezing
set and budget).

Python API: ``run_sweep(sft_config, learning_rates, freeze_sets, out_dir, budgets=, rl_config=, eval_config=,
vmap=) -> {"rows": [...], "actions": [...]}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from launch.config import ConfigError, SFTConfig, load_config, preset_names, resolve, to_dict
from launch.metrics import read_metrics

SMALL_MODELS = ("tiny", "small")  # model presets whose learning rates `--vmap auto` trains in one program
SUMMARY_SPLITS = ("in_distribution", "rule_ood", "visual_ood")
FINISHED_MARKER = "final/preprocessor_config.json"  # the last file launch.model_source.save_policy writes


# --- names and parsing ------------------------------------------------------------------------------------------

def freeze_name(groups: Sequence[str]) -> str:
    """The directory name of a freezing set: "none", or its groups joined by "+" (regex characters replaced)."""
    if not groups:
        return "none"
    return "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", group) for group in groups)


def lr_name(lr: float) -> str:
    """The directory name of a learning rate, e.g. lr-0.0003, lr-1e-05 (``%g``: distinct rates stay distinct)."""
    return f"lr-{lr:g}"


def parse_learning_rates(text: str, option: str = "--lrs") -> tuple[float, ...]:
    """"1e-4,3e-4" -> (1e-4, 3e-4); each a distinct positive finite number (``option`` names the flag in the
    error)."""
    rates = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            rate = float(item)
        except ValueError:
            raise ConfigError(f"{option} item {item!r} is not a number; write e.g. {option} 1e-4,3e-4") from None
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"{option} item {item!r} must be a positive number")
        rates.append(rate)
    if not rates or len(set(rates)) != len(rates):
        raise ConfigError(f"{option} {text!r} must list distinct positive numbers, e.g. {option} 1e-4,3e-4")
    return tuple(rates)


def parse_freeze_sets(text: str) -> tuple[tuple[str, ...], ...]:
    """"none;vision_encoder;vision_encoder,projector" -> ((), ("vision_encoder",), ("vision_encoder",
    "projector")): sets separated by ";", groups (or param-path regexes) by ","; "none" or "" is no freezing."""
    sets = []
    for item in text.split(";"):
        groups = tuple(group.strip() for group in item.split(",") if group.strip())
        sets.append(() if groups in ((), ("none",)) else groups)
    names = [freeze_name(groups) for groups in sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"--freeze {text!r} lists the same freezing set twice ({', '.join(names)})")
    return tuple(sets)


def parse_budgets(text: str, option: str = "--budgets") -> tuple[int, ...]:
    """"1,3,5" -> (1, 3, 5); each a distinct positive integer (``option`` names the flag in the error)."""
    try:
        budgets = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be positive integers, e.g. {option} 1,3,5") from None
    if not budgets or min(budgets) < 1 or len(set(budgets)) != len(budgets):
        raise ConfigError(f"{option} {text!r} must be distinct positive integers, e.g. {option} 1,3,5")
    return budgets


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(SFT, RL, eval) overrides: ``rl.key=value`` and ``eval.key=value`` lose their prefix, others are SFT's."""
    sft, rl, evaluation = [], [], []
    for override in overrides:
        for prefix, target in (("rl.", rl), ("eval.", evaluation)):
            if override.startswith(prefix):
                target.append(override[len(prefix):])
                break
        else:
            sft.append(override)
    return sft, rl, evaluation


# --- the grid ---------------------------------------------------------------------------------------------------

def _finished_run(directory: Path, config: Any) -> bool:
    """A `memgen sft`/`memgen rl` run of exactly ``config`` whose final policy is written."""
    if not (directory / FINISHED_MARKER).is_file():
        return False
    try:
        return to_dict(load_config(type(config), directory)) == to_dict(config)
    except ConfigError:
        return False


def _finished_eval(directory: Path, config: Any) -> bool:
    """An evaluation of exactly ``config`` with a record for every split and budget."""
    if not _finished_config(directory, config):
        return False
    records = [r for r in read_metrics(directory) if r.get("kind") == "eval"]
    return len(records) == len(config.splits) * len(config.verify_budgets)


def _finished_config(directory: Path, config: Any) -> bool:
    try:
        return to_dict(load_config(type(config), directory)) == to_dict(config)
    except ConfigError:
        return False


def run_sweep(sft_config: SFTConfig, learning_rates: Sequence[float], freeze_sets: Sequence[Sequence[str]],
              out_dir: str | Path, *, budgets: Sequence[int] = (), rl_config: Any = None, eval_config: Any = None,
              vmap: Literal["auto", "on", "off"] = "auto", progress: Optional[bool] = None,
              generate: Optional[Callable] = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the grid into ``out_dir`` and write its summary; returns {"rows": summary rows, "actions":
    [{"stage", "point", "action": "ran" | "skipped"}]}. ``budgets``: verification budgets of the RL and evaluation
    stages (default: the RL config's max_verify_steps, else the evaluation config's verify_budgets); without
    ``rl_config`` and ``eval_config`` only the SFT grid runs. ``generate``: the SFT runs' greedy-success sampler."""
    from launch.sft_run import run_sft, run_sft_sweep, with_learning_rate

    out = Path(out_dir).absolute()
    learning_rates = tuple(float(lr) for lr in learning_rates)
    freeze_sets = tuple(tuple(groups) for groups in freeze_sets)
    if not learning_rates or not freeze_sets:
        raise ConfigError("a sweep needs at least one learning rate and one freezing set")
    if not budgets:
        budgets = (rl_config.episodes.max_verify_steps,) if rl_config is not None else \
            tuple(eval_config.verify_budgets) if eval_config is not None else ()
    elif rl_config is None and eval_config is None:
        raise ConfigError("--budgets needs an RL or evaluation stage: add --rl-preset and/or --eval-preset")
    policy_modality = sft_config.modality
    for stage, config, modality in (("rl", rl_config, rl_config and rl_config.episodes.modality),
                                    ("eval", eval_config, eval_config and eval_config.sampling.modality)):
        if config is not None and modality != policy_modality:
            raise ConfigError(f"the {stage} stage samples modality={modality} but the SFT preset trains "
                              f"modality={policy_modality}; choose matching presets or set {stage}."
                              f"{'episodes' if stage == 'rl' else 'sampling'}.modality={policy_modality}")
    use_vmap = vmap == "on" or (vmap == "auto" and sft_config.model in SMALL_MODELS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({
        "sft": to_dict(sft_config), "learning_rates": list(learning_rates),
        "freeze_sets": [list(groups) for groups in freeze_sets], "budgets": list(budgets),
        "rl": None if rl_config is None else to_dict(rl_config),
        "eval": None if eval_config is None else to_dict(eval_config), "vmap": vmap}, indent=1) + "\n")
    actions: list[dict] = []

    def note(stage: str, point: Path, action: str) -> None:
        actions.append({"stage": stage, "point": str(point.relative_to(out)), "action": action})
        log(f"memgen sweep: {action:7s} {point.relative_to(out)}")

    sft_dirs: dict[tuple[str, float], Path] = {}
    for groups in freeze_sets:
        config = dataclasses.replace(sft_config, freeze=groups)
        dirs = {lr: out / "sft" / freeze_name(groups) / lr_name(lr) for lr in learning_rates}
        sft_dirs.update({(freeze_name(groups), lr): directory for lr, directory in dirs.items()})
        pending = []
        for lr in learning_rates:
            if _finished_run(dirs[lr], with_learning_rate(config, lr)):
                note("sft", dirs[lr], "skipped")
            else:
                pending.append(lr)
        if use_vmap and len(pending) > 1:
            run_sft_sweep(config, pending, [dirs[lr] for lr in pending], generate=generate, progress=progress)
        else:
            for lr in pending:
                run_sft(with_learning_rate(config, lr), dirs[lr], generate=generate, progress=progress)
        for lr in pending:
            note("sft", dirs[lr], "ran")

    policies: dict[tuple[str, float, int], Path] = {}
    for (name, lr), sft_dir in sft_dirs.items():
        for budget in budgets:
            policies[(name, lr, budget)] = sft_dir
            if rl_config is None:
                continue
            from launch.rl_run import run_rl

            rl_dir = out / "rl" / name / lr_name(lr) / f"budget-{budget}"
            config = dataclasses.replace(rl_config, init=str(sft_dir), episodes=dataclasses.replace(
                rl_config.episodes, max_verify_steps=int(budget)))
            if _finished_run(rl_dir, config):
                note("rl", rl_dir, "skipped")
            else:
                run_rl(config, rl_dir, show_progress=progress)
                note("rl", rl_dir, "ran")
            policies[(name, lr, budget)] = rl_dir
    if eval_config is not None:
        from launch.eval_run import run_eval

        for (name, lr, budget), policy_dir in policies.items():
            eval_dir = out / "eval" / name / lr_name(lr) / f"budget-{budget}"
            config = dataclasses.replace(eval_config, init=str(policy_dir), verify_budgets=(int(budget),))
            if _finished_eval(eval_dir, config):
                note("eval", eval_dir, "skipped")
            else:
                run_eval(config, eval_dir)
                note("eval", eval_dir, "ran")

    rows = summary_rows(out, freeze_sets, learning_rates, budgets, rl=rl_config is not None,
                        evaluation=eval_config is not None)
    write_summary(rows, out)
    return {"rows": rows, "actions": actions}


# --- the summary ------------------------------------------------------------------------------------------------

def _last(records: list[dict], field: str, **match: Any) -> Optional[dict]:
    """The latest record carrying ``field`` (its value may be None: a non-finite measurement stays visible)."""
    chosen = [r for r in records if field in r and all(r.get(k) == v for k, v in match.items())]
    return max(chosen, key=lambda r: r["step"]) if chosen else None


def summary_rows(out: Path, freeze_sets, learning_rates, budgets, *, rl: bool, evaluation: bool) -> list[dict]:
    """One row per grid point (freeze, lr[, budget]) from the runs' metrics.jsonl: the SFT run's final train loss
    and final held-out loss (None when non-finite), its count of skipped (non-finite) steps and its greedy success
    per split when measured; the RL run's last episode return; the evaluation's success per split (with its
    standard error)."""
    rows = []
    for groups in freeze_sets:
        name = freeze_name(groups)
        for lr in learning_rates:
            sft_dir = out / "sft" / name / lr_name(lr)
            sft = read_metrics(sft_dir)
            train = _last(sft, "loss", kind="train")
            heldout = _last(sft, "heldout_loss")
            skipped = [r for r in sft if r.get("kind") == "train" and r.get("skipped")]
            base = {"freeze": name, "lr": lr, "sft_dir": str(sft_dir.relative_to(out)),
                    "sft_loss": None if train is None else train["loss"],
                    "heldout_loss": None if heldout is None else heldout["heldout_loss"],
                    "sft_skipped_steps": len(skipped)}
            for split in SUMMARY_SPLITS:
                record = _last(sft, "success", kind="eval", split=split, arm="sft")
                if record is not None:
                    base[f"sft_success_{split}"] = record["success"]
            if not budgets or not (rl or evaluation):
                rows.append(base)
                continue
            for budget in budgets:
                row = dict(base, budget=int(budget))
                if rl:
                    rl_dir = out / "rl" / name / lr_name(lr) / f"budget-{budget}"
                    records = read_metrics(rl_dir)
                    last = _last(records, "episode_return", kind="train")
                    row["rl_dir"] = str(rl_dir.relative_to(out))
                    row["rl_episode_return"] = None if last is None else last["episode_return"]
                if evaluation:
                    eval_dir = out / "eval" / name / lr_name(lr) / f"budget-{budget}"
                    row["eval_dir"] = str(eval_dir.relative_to(out))
                    for record in read_metrics(eval_dir):
                        if record.get("kind") == "eval":
                            row[f"success_{record['split']}"] = record["success"]
                            row[f"success_se_{record['split']}"] = record["success_se"]
                rows.append(row)
    return rows


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_summary(rows: list[dict], out: Path) -> None:
    """summary.json, summary.md and the plots (sweep_loss.png; sweep_success.png when rows carry success)."""
    (out / "summary.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    splits = [s for s in SUMMARY_SPLITS if any(f"success_{s}" in row for row in rows)]
    sft_splits = [s for s in SUMMARY_SPLITS if any(f"sft_success_{s}" in row for row in rows)]
    has_budget = any("budget" in row for row in rows)
    has_rl = any("rl_episode_return" in row for row in rows)
    header = ["freeze", "lr"] + (["budget"] if has_budget else []) + ["SFT train loss", "SFT held-out loss"]
    header += [f"SFT greedy success {s}" for s in sft_splits] + (["RL episode return"] if has_rl else [])
    header += [f"success {s} (± s.e.)" for s in splits]
    lines = ["# memgen sweep", "", f"{len(rows)} grid points. Losses are the SFT run's last train step and last "
             "held-out evaluation (token means, nats; - when not finite); success is the evaluation stage's rate at "
             "the row's verification budget with its binomial standard error.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["freeze"], _cell(row["lr"])] + ([_cell(row.get("budget"))] if has_budget else [])
        loss = _cell(row["sft_loss"]) + (f" ({row['sft_skipped_steps']} non-finite steps skipped)"
                                         if row["sft_skipped_steps"] else "")
        cells += [loss, _cell(row["heldout_loss"])] + [_cell(row.get(f"sft_success_{s}"), 3) for s in sft_splits]
        cells += [_cell(row.get("rl_episode_return"))] if has_rl else []
        for split in splits:
            value, se = row.get(f"success_{split}"), row.get(f"success_se_{split}")
            cells.append("-" if value is None else f"{value:.3f} ± {se:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![loss vs learning rate](sweep_loss.png)", ""]
    if splits:
        lines += ["![success vs learning rate](sweep_success.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))
    _plot_loss(rows, out / "sweep_loss.png")
    if splits:
        _plot_success(rows, splits, out / "sweep_success.png")


def _plot_loss(rows: list[dict], path: Path) -> None:
    from launch.plots import finish_panel, plt, save_figure  # matplotlib (Agg) only when plotting

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    points = {(row["freeze"], row["lr"]): row for row in rows}  # budgets share the SFT run
    for name in dict.fromkeys(row["freeze"] for row in rows):
        lrs = sorted(lr for freeze, lr in points if freeze == name)
        for ax, field in zip(axes, ("sft_loss", "heldout_loss")):
            pairs = [(lr, points[(name, lr)][field]) for lr in lrs if points[(name, lr)][field] is not None]
            if pairs:
                ax.plot(*zip(*pairs), marker="o", label=f"freeze: {name}")
    for ax, title in zip(axes, ("final SFT train loss", "final held-out loss")):
        finish_panel(ax, xscale="log", xlabel="peak learning rate", ylabel="loss (nats/token)", title=title,
                     title_size=10, legend_size=7)
    save_figure(fig, path)


def _plot_success(rows: list[dict], splits: list[str], path: Path) -> None:
    from launch.plots import finish_panel, plt, save_figure  # matplotlib (Agg) only when plotting

    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits), 3.6), squeeze=False)
    lines = dict.fromkeys((row["freeze"], row.get("budget")) for row in rows)
    for ax, split in zip(axes[0], splits):
        for name, budget in lines:
            chosen = sorted((row["lr"], row[f"success_{split}"], row[f"success_se_{split}"]) for row in rows
                            if row["freeze"] == name and row.get("budget") == budget and f"success_{split}" in row)
            if chosen:
                lr, success, se = zip(*chosen)
                ax.errorbar(lr, [100 * s for s in success], yerr=[100 * e for e in se], marker="o", capsize=3,
                            label=f"freeze: {name}, budget {budget}")
        finish_panel(ax, xscale="log", xlabel="peak learning rate", ylabel="success (%)", title=split,
                     title_size=10, legend_size=7)
    save_figure(fig, path)


# --- the command ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    import launch.rl_config  # noqa: F401  (registers the rl and eval presets for the help text)
    from launch.rl_config import EvalConfig, RLConfig

    parser.add_argument("--preset", required=True, help=f"the SFT preset, one of: {', '.join(preset_names(SFTConfig))}")
    parser.add_argument("--out", required=True, help="the sweep directory (re-run the same command to resume)")
    parser.add_argument("--lrs", default=None, metavar="LR,LR,...",
                        help="peak SFT learning rates, e.g. 1e-4,3e-4 (default: the preset's)")
    parser.add_argument("--freeze", default=None, metavar="SET;SET;...",
                        help='freezing sets separated by ";", groups by ",", e.g. '
                             '"none;vision_encoder;vision_encoder,projector" (default: the preset\'s)')
    parser.add_argument("--budgets", default=None, metavar="B,B,...",
                        help="verification budgets of the RL/eval stages, e.g. 1,3,5 (default: the RL preset's "
                             "max_verify_steps, else the eval preset's verify_budgets)")
    parser.add_argument("--rl-preset", default=None,
                        help=f"run RL from every SFT point at every budget: one of {', '.join(preset_names(RLConfig))}")
    parser.add_argument("--eval-preset", default=None,
                        help="evaluate every point's last policy at every budget: one of "
                             f"{', '.join(preset_names(EvalConfig))}")
    parser.add_argument("--vmap", choices=("auto", "on", "off"), default="auto",
                        help="train a freezing set's learning rates in one vmapped program (auto: for the "
                             f"{' and '.join(SMALL_MODELS)} model presets)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides: SFT ones as in memgen sft (steps=100), rl.KEY=VALUE for the RL "
                             "config (rl.updates=50), eval.KEY=VALUE for the evaluation config (eval.episodes=64)")


def run(args: argparse.Namespace) -> int:
    from launch.expert_data import DataError
    from launch.model_source import ModelSourceError
    from launch.rl_config import EvalConfig, RLConfig
    from launch.sft_run import SFTRunError

    try:
        sft_overrides, rl_overrides, eval_overrides = split_overrides(args.overrides)
        sft_config = resolve(args.preset, sft_overrides, kind=SFTConfig)
        if rl_overrides and not args.rl_preset:
            raise ConfigError(f"rl.* overrides ({rl_overrides[0]}) need --rl-preset")
        if eval_overrides and not args.eval_preset:
            raise ConfigError(f"eval.* overrides ({eval_overrides[0]}) need --eval-preset")
        rl_config = resolve(args.rl_preset, rl_overrides, kind=RLConfig) if args.rl_preset else None
        eval_config = resolve(args.eval_preset, eval_overrides, kind=EvalConfig) if args.eval_preset else None
        learning_rates = parse_learning_rates(args.lrs) if args.lrs else (sft_config.optimizer.lr,)
        freeze_sets = parse_freeze_sets(args.freeze) if args.freeze is not None else (sft_config.freeze,)
        budgets = parse_budgets(args.budgets) if args.budgets else ()
        result = run_sweep(sft_config, learning_rates, freeze_sets, args.out, budgets=budgets, rl_config=rl_config,
                           eval_config=eval_config, vmap=args.vmap)
    except (ConfigError, DataError, ModelSourceError, SFTRunError) as error:
        print(f"memgen sweep: {error}", file=sys.stderr)
        return 2
    ran = sum(action["action"] == "ran" for action in result["actions"])
    print(f"memgen sweep: {len(result['rows'])} grid points ({ran} runs done now, "
          f"{len(result['actions']) - ran} already finished); summary in {Path(args.out) / 'summary.md'}")
    return 0
