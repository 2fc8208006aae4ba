"""`memgen report RUN_DIR [RUN_DIR ...] --out DIR`: the paper's figures (launch/plots.py) and DIR/report.md from the
metrics.jsonl (docs/metrics.md) and config.json of any runs: what was run, a results table per task x split x arm
(initial, final, change, standard errors, seed spread), the figures, and an automatic reading that calls a change
"up" or "down" only when it exceeds two standard errors.

Standard errors (docs/report.md): a rate p measured on n episodes has the binomial se sqrt(p (1 - p) / n); the
mean over S seeds has se sqrt(sum_i se_i^2) / S; the change final - initial has the binomial se
sqrt(sum_i (se_initial_i^2 + se_final_i^2)) / S, and with S >= 2 seeds the se used is the larger of that and the
seeds' own sd(change_i) / sqrt(S).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from launch.curves import Curve, collect_curves
from launch.metrics_schema import MetricsFileError, Run, load_runs
from launch.plots import METRIC_LABELS, SPLIT_TITLES, TASK_TITLES, MadeFigure, SkippedFigure, budget_points, plot_all

SIGNIFICANCE_SE = 2.0  # a change counts as up/down when |change| > 2 standard errors
REPORT_FILENAME = "report.md"

# The paper's Llama-3.2-11B-Vision numbers (Init -> SFT / RL, %), notes/reference-protocol.md "Headline numbers".
PAPER_HEADLINES = {
    ("gp-l", "rule_ood"): (11.5, 3.4, 15.0), ("virl-l", "rule_ood"): (80.8, 1.3, 91.8),
    ("gp-vl", "rule_ood"): (11.2, 5.6, 14.2), ("virl-vl", "rule_ood"): (35.7, 2.5, 45.0),
    ("gp-vl", "visual_ood"): (23.6, 13.7, 41.2), ("virl-vl", "visual_ood"): (16.7, 11.1, 77.8),
}


@dataclasses.dataclass(frozen=True)
class ChangeRow:
    """Initial (first evaluation) and final (last evaluation) of one curve, averaged over its seeds, as rates in
    [0, 1]. change, change_se and seed_sd_change are None when no seed has two evaluations; seed_sd_* are NaN with
    one seed. change_se is the se the significance rule uses (see the module docstring)."""

    task: str
    split: str
    arm: str
    verify_budget: Optional[int]
    metric: str
    seeds: int
    initial_step: int
    final_step: int
    initial_gflops: float
    final_gflops: float
    initial: float
    initial_se: float
    final: float
    final_se: float
    seed_sd_final: float
    change: Optional[float]
    change_se: Optional[float]
    seed_sd_change: Optional[float]

    @property
    def significant(self) -> bool:
        return self.change is not None and abs(self.change) > SIGNIFICANCE_SE * self.change_se

    @property
    def direction(self) -> Optional[str]:
        """"up" / "down" when significant, else None."""
        if not self.significant:
            return None
        return "up" if self.change > 0 else "down"


def change_row(curve: Curve) -> ChangeRow:
    """The table row of one curve: each seed's first and last evaluation, combined over seeds."""
    seeds = curve.seeds
    count = len(seeds)
    p0 = np.array([s.value[0] for s in seeds])
    se0 = np.array([s.se[0] for s in seeds])
    p1 = np.array([s.value[-1] for s in seeds])
    se1 = np.array([s.se[-1] for s in seeds])
    with_change = np.array([len(s.steps) > 1 for s in seeds])
    change = change_se = seed_sd_change = None
    if with_change.any():
        deltas = (p1 - p0)[with_change]
        m = len(deltas)
        change = float(deltas.mean())
        change_se = float(np.sqrt(np.sum(se0[with_change] ** 2 + se1[with_change] ** 2)) / m)
        seed_sd_change = float(deltas.std(ddof=1)) if m > 1 else math.nan
        if m > 1:
            change_se = max(change_se, seed_sd_change / math.sqrt(m))
    return ChangeRow(
        task=curve.task, split=curve.split, arm=curve.arm, verify_budget=curve.verify_budget, metric=curve.metric,
        seeds=count, initial_step=int(min(s.steps[0] for s in seeds)), final_step=int(max(s.steps[-1] for s in seeds)),
        initial_gflops=float(np.mean([s.gflops[0] for s in seeds])),
        final_gflops=float(np.mean([s.gflops[-1] for s in seeds])),
        initial=float(p0.mean()), initial_se=float(np.sqrt(np.sum(se0 ** 2)) / count),
        final=float(p1.mean()), final_se=float(np.sqrt(np.sum(se1 ** 2)) / count),
        seed_sd_final=float(p1.std(ddof=1)) if count > 1 else math.nan,
        change=change, change_se=change_se, seed_sd_change=seed_sd_change)


def results_rows(runs: Sequence[Run], metric: str = "success") -> list[ChangeRow]:
    """One row per (task, split, arm, verify budget) of `metric`, ordered by task, split (ID, rule, visual), arm."""
    split_order = {split: i for i, split in enumerate(SPLIT_TITLES)}
    arm_order = {"base": 0, "sft": 1, "rl": 2}
    rows = [change_row(curve) for curve in collect_curves(runs, metric)]
    return sorted(rows, key=lambda r: (r.task, split_order.get(r.split, 9), arm_order.get(r.arm, 9),
                                       -1 if r.verify_budget is None else r.verify_budget))


# --- markdown ---------------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _name(row: ChangeRow) -> str:
    budget = "" if row.verify_budget is None else f", verify budget {row.verify_budget}"
    return f"{TASK_TITLES.get(row.task, row.task)} {SPLIT_TITLES.get(row.split, row.split)}{budget}"


def reading_sentence(row: ChangeRow) -> str:
    """The automatic reading of one row: "went up"/"went down" only beyond 2 standard errors."""
    what = f"{row.arm.upper()} {METRIC_LABELS.get(row.metric, row.metric).split(' (')[0]} on {_name(row)}"
    if row.change is None:
        return f"{what}: a single evaluation ({_pct(row.final)}%), so no change can be measured."
    margin = f"{row.change * 100:+.1f} points; 2 SE = {SIGNIFICANCE_SE * row.change_se * 100:.1f} points"
    if row.direction is None:
        return f"{what}: no significant difference at this sample size ({margin})."
    return f"{what} went {row.direction} from {_pct(row.initial)}% to {_pct(row.final)}% ({margin})."


PAPER_CLAIM = "SFT OOD down, RL OOD up/flat"


@dataclasses.dataclass(frozen=True)
class PaperClaim:
    """The check of the paper's claim on one OOD split: ``holds`` when the intervals support it, ``observed`` what
    was found, in words ("SFT went down and RL showed no significant change")."""

    holds: bool
    observed: str


def _arm_observed(arm: str, row: ChangeRow) -> str:
    if row.change is None:
        return f"{arm} was evaluated only once"
    return f"{arm} {'went ' + row.direction if row.direction else 'showed no significant change'}"


def paper_claim(sft: ChangeRow, rl: ChangeRow) -> PaperClaim:
    """The one place that decides the paper's claim (issue 10: "SFT OOD down, RL OOD up/flat", stated only if the
    intervals support it) from an OOD split's SFT and RL rows: it holds when SFT's change is down beyond 2
    standard errors and RL's change was measured (two evaluations) and is not down beyond 2 standard errors (up
    beyond 2 SE, or no significant change: "flat"). `memgen report`'s reading and the miniature's verdict both use
    it, so one report.md never says both."""
    holds = sft.direction == "down" and rl.change is not None and rl.direction != "down"
    return PaperClaim(holds=holds, observed=f"{_arm_observed('SFT', sft)} and {_arm_observed('RL', rl)}")


def paper_pattern_sentences(rows: Sequence[ChangeRow]) -> list[str]:
    """For each task and OOD split with both an SFT and an RL row: does it show the paper's pattern (SFT OOD
    down, RL OOD up/flat, beyond 2 standard errors; :func:`paper_claim`)?"""
    sentences = []
    keys = sorted({(r.task, r.split, r.verify_budget) for r in rows if r.split != "in_distribution"},
                  key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2]))
    for task, split, budget in keys:
        arms = {r.arm: r for r in rows if (r.task, r.split, r.verify_budget) == (task, split, budget)}
        if "sft" not in arms or "rl" not in arms:
            continue
        claim = paper_claim(arms["sft"], arms["rl"])
        name = _name(arms["sft"])
        observed = claim.observed.replace("SFT ", "SFT OOD ", 1).replace(" and RL ", " and RL OOD ", 1)
        if claim.holds:
            sentences.append(f"{name}: {observed}, the paper's pattern ({PAPER_CLAIM}: SFT memorizes, RL "
                             "generalizes).")
        else:
            sentences.append(f"{name}: {observed}; the paper's pattern ({PAPER_CLAIM}) is not established here.")
    return sentences


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(config, dict):
        items = []
        for key, value in config.items():
            items.extend(_flatten(value, f"{prefix}{key}."))
        return items
    return [(prefix[:-1], config)]


MINIATURE_CONFIG_FILENAME = "miniature.json"  # what `memgen demo` writes in OUT instead of config.json


def run_config(run: Run) -> tuple[str, Optional[dict]]:
    """The config file a run directory holds and its content: config.json (a single run), else miniature.json (a
    `memgen demo` / miniature OUT directory, whose metrics.jsonl combines every stage's records), else none."""
    if run.config is not None:
        return "config.json", run.config
    path = Path(run.path) / MINIATURE_CONFIG_FILENAME
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return f"{MINIATURE_CONFIG_FILENAME} (not valid JSON)", None
        if isinstance(data, dict):
            return MINIATURE_CONFIG_FILENAME, data
    return "no config.json", None


def runs_section(runs: Sequence[Run]) -> list[str]:
    lines = ["## What was run", "",
             "| run | arms | tasks | seeds | records | last step | last GFLOPs | config |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        kinds = Counter(r["kind"] for r in run.records)
        evals = run.evals()
        arms = sorted({r["arm"] for r in evals} | {r["arm"] for r in run.of_kind("train")})
        tasks = sorted({r["task"] for r in evals})
        seeds = sorted({r["seed"] for r in evals})
        last = max(run.records, key=lambda r: r["step"]) if run.records else None
        counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        lines.append(f"| `{run.name}` | {', '.join(arms) or '-'} | {', '.join(tasks) or '-'} | "
                     f"{', '.join(map(str, seeds)) or '-'} | {counts} | {last['step'] if last else '-'} | "
                     f"{max((r['gflops'] for r in run.records), default=0):.4g} | {run_config(run)[0]} |")
    for run in runs:
        label, config = run_config(run)
        if config is None:
            continue
        lines += ["", f"<details><summary>config of <code>{run.name}</code> ({Path(run.path) / label})</summary>", "",
                  "```"]
        lines += [f"{key} = {value!r}" for key, value in _flatten(config)]
        lines += ["```", "</details>"]
    return lines


def _se_text(row_value: float, se: float) -> str:
    return f"{_pct(row_value)} ± {_pct(se)}"


def results_table(rows: Sequence[ChangeRow]) -> list[str]:
    lines = ["| task | split | arm | budget | seeds | steps | initial (%) | final (%) | change (points) | 2 SE | "
             "seed SD final / change | reading |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        spread = "-" if row.seeds < 2 else (
            f"{_pct(row.seed_sd_final)} / "
            f"{'-' if row.seed_sd_change is None or math.isnan(row.seed_sd_change) else _pct(row.seed_sd_change)}")
        change = "-" if row.change is None else f"{row.change * 100:+.1f}"
        two_se = "-" if row.change_se is None else f"{SIGNIFICANCE_SE * row.change_se * 100:.1f}"
        reading = "single eval" if row.change is None else (row.direction or "n.s.")
        lines.append(f"| {TASK_TITLES.get(row.task, row.task)} | {SPLIT_TITLES.get(row.split, row.split)} | "
                     f"{row.arm.upper()} | {'-' if row.verify_budget is None else row.verify_budget} | {row.seeds} | "
                     f"{row.initial_step} -> {row.final_step} | {_se_text(row.initial, row.initial_se)} | "
                     f"{_se_text(row.final, row.final_se)} | {change} | {two_se} | {spread} | {reading} |")
    return lines


def paper_table(rows: Sequence[ChangeRow]) -> list[str]:
    present = sorted({(r.task, r.split) for r in rows} & set(PAPER_HEADLINES))
    if not present:
        return []
    lines = ["", "For scale, the paper's Llama-3.2-11B-Vision numbers (Init -> SFT / RL, %; V-IRL-VL rule OOD is "
             "per-step accuracy):", "", "| task | split | init | SFT | RL |", "|---|---|---|---|---|"]
    for task, split in present:
        init, sft, rl = PAPER_HEADLINES[(task, split)]
        lines.append(f"| {TASK_TITLES[task]} | {SPLIT_TITLES[split]} | {init} | {sft} | {rl} |")
    return lines


def budget_table(runs: Sequence[Run]) -> list[str]:
    """Figure 10's numbers: success at the fixed compute per verify budget and its gain over the first evaluation
    (se of the gain: the two binomial se combined)."""
    points, _ = budget_points(collect_curves(runs, "success"))
    if not points:
        return []
    lines = ["### Verification budget at fixed compute", "",
             "Fixed compute = the largest training compute every budget's run reached; gain = success there - "
             "success at the first evaluation.", "",
             "| task | split | arm | budget | GFLOPs | success (%) | gain (points) |", "|---|---|---|---|---|---|---|"]
    for p in points:
        gain_se = math.hypot(p.final_se, p.initial_se)
        lines.append(f"| {TASK_TITLES.get(p.task, p.task)} | {SPLIT_TITLES.get(p.split, p.split)} | {p.arm.upper()} | "
                     f"{p.verify_budget} | {p.gflops:.4g} | {_se_text(p.final, p.final_se)} | "
                     f"{(p.final - p.initial) * 100:+.1f} ± {gain_se * 100:.1f} |")
    return lines + [""]


def render_report(runs: Sequence[Run], made: Sequence[MadeFigure], skipped: Sequence[SkippedFigure]) -> str:
    """report.md's text (no timestamps, so the same runs give the same file)."""
    lines = ["# memgen report", "",
             f"Runs: {', '.join(f'`{run.path}`' for run in runs)}. Compute is the runs' cumulative training GFLOPs "
             "(6 N D for trained tokens + 2 N D for rollout tokens, rl/compute.py). Rates are in percent with "
             "± 1 binomial standard error; see docs/report.md for how seeds are combined.", ""]
    lines += runs_section(runs)
    lines += ["", "## Results", ""]
    tables = [("success", results_rows(runs, "success")),
              ("per_step_accuracy", results_rows(runs, "per_step_accuracy")),
              ("recognition_accuracy", results_rows(runs, "recognition_accuracy")),
              ("rule_accuracy", results_rows(runs, "rule_accuracy"))]
    all_rows = []
    for metric, rows in tables:
        if not rows:
            continue
        all_rows.extend(rows)
        lines += [f"### {METRIC_LABELS[metric].split(' (')[0]}", "",
                  "initial = each seed's first evaluation, final = its last, averaged over seeds; change = final - "
                  f"initial; \"up\"/\"down\" only when |change| > {SIGNIFICANCE_SE:g} SE, else n.s.", ""]
        lines += results_table(rows)
        lines.append("")
    if not all_rows:
        lines += ["No eval records in these runs, so there is no results table.", ""]
    lines += budget_table(runs)
    lines += paper_table(tables[0][1])

    lines += ["", "## Reading", ""]
    if all_rows:
        lines += [f"- {reading_sentence(row)}" for row in tables[0][1] + tables[1][1] + tables[3][1]]
        lines += [f"- {sentence}" for sentence in paper_pattern_sentences(tables[0][1])]
        lines += ["", "\"Went up/down\" means the change exceeds 2 standard errors of the change (binomial over the "
                  "episodes, or the seeds' spread when larger); anything smaller is reported as no significant "
                  "difference at this sample size. This reading compares first and last evaluation only, and treats them as "
                  "independent samples (conservative when both used the same fixed episodes)."]
    else:
        lines.append("Nothing to read: no evaluations.")

    lines += ["", "## Figures", ""]
    for figure in made:
        lines += [f"### {figure.caption}", "", f"![{figure.caption}]({figure.file})", ""]
        lines += [f"- note: {note}" for note in figure.notes]
        if figure.notes:
            lines.append("")
    if not made:
        lines += ["No figures: the runs hold no data to plot.", ""]
    if skipped:
        lines += ["### Skipped figures", ""]
        lines += [f"- {s.figure}: skipped, {s.reason}." for s in skipped]
        lines.append("")
    warnings = [w for run in runs for w in run.warnings]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Load the runs, write the figures and report.md into out_dir; returns report.md's path."""
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    made, skipped = plot_all(runs, out_dir)
    path = out_dir / REPORT_FILENAME
    path.write_text(render_report(runs, made, skipped), encoding="utf-8")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, each holding metrics.jsonl (and config.json)")
    parser.add_argument("--out", required=True, help="directory for report.md and the PNG figures")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.runs, args.out)
    except MetricsFileError as error:
        print(f"memgen report: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} and its figures")
    return 0
