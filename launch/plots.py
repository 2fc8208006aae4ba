"""The paper's figures from run directories (matplotlib, Agg backend, PNG): success vs training GFLOPs per arm
(Figures 5/6: in-distribution and rule-OOD panels; Figure 7: visual OOD), recognition accuracy vs success
(Figure 8), success and OOD gain vs verification budget (Figure 10), pass@k curves and held-out loss.

`plot_all(runs, out_dir)` makes every figure whose data is present and says why each other one was skipped.
Rates are plotted in percent; error bars and bands are binomial standard errors sqrt(p (1 - p) / n) (of the mean
over seeds when several seeds exist; the seeds' own curves are drawn faintly to show their spread).
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from launch.curves import Curve, collect_curves, savgol_window, smooth  # noqa: E402
from launch.metrics_schema import Run  # noqa: E402

ARM_COLORS = {"sft": "tab:red", "rl": "tab:blue", "base": "tab:gray"}
ARM_COLORMAPS = {"sft": "Reds", "rl": "Blues", "base": "Greys"}  # shades when one arm has several verify budgets
ARM_ORDER = {"base": 0, "sft": 1, "rl": 2}
FOOTNOTE = ("points: mean over seeds ± 1 binomial SE; line: Savitzky-Golay (order 3) over the points, dashed when "
            "too few to smooth; band: ± 1 SE; faint lines: single seeds")
SPLIT_TITLES = {"in_distribution": "in-distribution", "rule_ood": "rule OOD", "visual_ood": "visual OOD"}
METRIC_LABELS = {"success": "success rate (%)", "per_step_accuracy": "per-step accuracy (%)",
                 "recognition_accuracy": "recognition accuracy (%)", "heldout_loss": "held-out loss (nats/token)",
                 "rule_accuracy": "rule accuracy (%)"}
TASK_TITLES = {"gp-l": "GP-L", "gp-vl": "GP-VL", "virl-l": "V-IRL-L", "virl-vl": "V-IRL-VL"}
DPI = 110


@dataclasses.dataclass(frozen=True)
class MadeFigure:
    """A written PNG: file name (relative to the output directory), what it shows, and notes (e.g. curves with
    too few points to smooth)."""

    file: str
    caption: str
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SkippedFigure:
    figure: str
    reason: str


def arm_color(arm: str) -> str:
    return ARM_COLORS.get(arm, "tab:purple")


def curve_label(curve: Curve, with_budget: bool) -> str:
    label = curve.arm.upper()
    if with_budget and curve.verify_budget is not None:
        label += f" (budget {curve.verify_budget})"
    seeds = len(curve.seeds)
    return label + (f", mean of {seeds} seeds" if seeds > 1 else "")


def set_compute_axis(ax, gflops: np.ndarray) -> None:
    """Log x when the positive compute values span more than a decade and a half, symlog when such a range also
    holds 0 (the initial checkpoint), linear otherwise."""
    gflops = np.asarray(gflops, dtype=np.float64)
    positive = gflops[gflops > 0]
    ax.set_xlabel("training compute (GFLOPs)")
    if positive.size < 2 or positive.max() / positive.min() < 30:
        # a run's compute sits far from 0 (the base's GFLOPs come first): six-digit plain labels would overlap
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
        return
    if np.any(gflops <= 0):
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    else:
        ax.set_xscale("log")


def _scale(curve: Curve) -> float:
    return 1.0 if curve.metric == "heldout_loss" else 100.0


def draw_curve(ax, curve: Curve, label: str, color: Optional[str] = None) -> Optional[str]:
    """Raw points with error bars, the Savitzky-Golay curve over them (or the points joined when there are too
    few), a +-1 se band, and each seed's own points faintly when there are several seeds. Returns a note when the
    curve could not be smoothed."""
    color, scale = color or arm_color(curve.arm), _scale(curve)
    x, y, se = curve.gflops, curve.value * scale, curve.se * scale
    if len(curve.seeds) > 1:
        for seed in curve.seeds:
            ax.plot(seed.gflops, seed.value * scale, color=color, alpha=0.25, linewidth=0.8, marker=".",
                    markersize=3)
    ax.errorbar(x, y, yerr=se, fmt="o", color=color, markersize=4, capsize=2, alpha=0.8)
    smoothed = smooth(curve.value)
    note = None
    if smoothed is None:
        line = y
        note = (f"{TASK_TITLES.get(curve.task, curve.task)} {SPLIT_TITLES.get(curve.split, curve.split)} "
                f"{curve.arm.upper()}{'' if curve.verify_budget is None else f' (budget {curve.verify_budget})'} "
                f"{METRIC_LABELS.get(curve.metric, curve.metric).split(' (')[0]}: "
                f"{len(x)} points, too few to smooth (Savitzky-Golay needs 5); raw points joined")
        ax.plot(x, line, color=color, linewidth=1.5, linestyle="--", label=label)
    else:
        line = smoothed * scale
        if curve.metric != "heldout_loss":
            line = np.clip(line, 0.0, 100.0)
        ax.plot(x, line, color=color, linewidth=2.0,
                label=f"{label} (Savitzky-Golay, window {savgol_window(len(x))})")
    if np.any(se > 0):
        ax.fill_between(x, line - se, line + se, color=color, alpha=0.15, linewidth=0)
    return note


def finish_panel(ax, *, ylabel: str, title: str, xlabel: Optional[str] = None, xscale: Optional[str] = None,
                 title_size: Optional[float] = None, legend_size: float = 8) -> None:
    """The house style of one panel: labels, title, a light grid and a legend when something is labelled."""
    if xscale:
        ax.set_xscale(xscale)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size)


def save_figure(fig, path: Path) -> None:
    """Lay out, write as PNG at the house DPI and free the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_vs_compute(curves: Sequence[Curve], splits: Sequence[str], title: str, out_dir: Path,
                    file: str, footnote: str = FOOTNOTE) -> MadeFigure:
    """One panel per split (those with data), one curve per (arm, verify budget), x = training GFLOPs."""
    splits = [s for s in splits if any(c.split == s for c in curves)]
    width = max(7.0, 5.2 * len(splits))  # one panel still needs room for the title and the footnote
    fig, axes = plt.subplots(1, len(splits), figsize=(width, 4.4), squeeze=False)
    notes = []
    metric = curves[0].metric
    for ax, split in zip(axes[0], splits):
        panel = sorted((c for c in curves if c.split == split),
                       key=lambda c: (ARM_ORDER.get(c.arm, 9), -1 if c.verify_budget is None else c.verify_budget))
        several_budgets = len({c.verify_budget for c in panel}) > 1
        for curve in panel:
            color = None
            if several_budgets:
                same_arm = [c for c in panel if c.arm == curve.arm]
                shade = 0.45 + 0.5 * same_arm.index(curve) / max(len(same_arm) - 1, 1)
                color = matplotlib.colormaps[ARM_COLORMAPS.get(curve.arm, "Purples")](shade)
            note = draw_curve(ax, curve, curve_label(curve, several_budgets), color)
            if note:
                notes.append(note)
        set_compute_axis(ax, np.concatenate([c.gflops for c in panel]))
        finish_panel(ax, ylabel=METRIC_LABELS.get(metric, metric), title=SPLIT_TITLES.get(split, split))
    fig.suptitle(title)
    footnote = textwrap.fill(footnote, width=int(width * 15))
    fig.text(0.5, 0.005, footnote, ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.025 * (footnote.count("\n") + 1.2), 1, 1))
    fig.savefig(out_dir / file, dpi=DPI)
    plt.close(fig)
    return MadeFigure(file=file, caption=title, notes=tuple(notes))


def _paired_points(success: Curve, recognition: Curve) -> tuple[np.ndarray, ...]:
    steps = np.intersect1d(success.steps, recognition.steps)
    s_index = np.searchsorted(success.steps, steps)
    r_index = np.searchsorted(recognition.steps, steps)
    return (success.value[s_index], success.se[s_index], recognition.value[r_index], recognition.se[r_index],
            success.gflops[s_index])


def plot_recognition(success: Sequence[Curve], recognition: Sequence[Curve], task: str, out_dir: Path,
                     file: str) -> Optional[MadeFigure]:
    """Figure 8: recognition accuracy (y) against success rate (x), one panel per split, each arm's points joined
    in order of training compute (the hollow marker is the first evaluation)."""
    by_key = {c.key: c for c in success}
    pairs = [(by_key[r.key], r) for r in recognition if r.key in by_key]
    pairs = [(s, r) for s, r in pairs if len(_paired_points(s, r)[0]) > 0]
    if not pairs:
        return None
    splits = [s for s in SPLIT_TITLES if any(r.split == s for _, r in pairs)]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.8 * len(splits), 4.2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        panel = sorted(((s, r) for s, r in pairs if r.split == split), key=lambda p: ARM_ORDER.get(p[1].arm, 9))
        for s_curve, r_curve in panel:
            x, xerr, y, yerr, gflops = _paired_points(s_curve, r_curve)
            color = arm_color(r_curve.arm)
            ax.errorbar(x * 100, y * 100, xerr=xerr * 100, yerr=yerr * 100, color=color, marker="o", markersize=4,
                        capsize=2, linewidth=1.2, label=f"{r_curve.arm.upper()} ({len(x)} evals, "
                                                        f"{gflops[0]:.4g} -> {gflops[-1]:.4g} GFLOPs)")
            ax.plot(x[:1] * 100, y[:1] * 100, marker="o", markersize=10, markerfacecolor="none", color=color)
        finish_panel(ax, xlabel="success rate (%)", ylabel="recognition accuracy (%)",
                     title=SPLIT_TITLES.get(split, split))
    title = f"{TASK_TITLES.get(task, task)}: recognition vs success as compute grows (Figure 8 style)"
    fig.suptitle(title)
    save_figure(fig, out_dir / file)
    return MadeFigure(file=file, caption=title)


@dataclasses.dataclass(frozen=True)
class BudgetPoint:
    """Success of one (task, split, arm, verify budget) at the fixed compute: the last evaluation at or below
    it (final, se) and the first evaluation (initial, se)."""

    task: str
    split: str
    arm: str
    verify_budget: int
    gflops: float
    final: float
    final_se: float
    initial: float
    initial_se: float


def budget_points(curves: Sequence[Curve]) -> tuple[list[BudgetPoint], dict[tuple, float]]:
    """Figure 10's numbers. For each (task, split, arm) the fixed compute is the largest compute every verify
    budget's run reached (min over budgets of their last gflops), as in the paper's equal-compute comparison.
    Returns the points and {(task, split, arm): fixed gflops}."""
    groups: dict[tuple, list[Curve]] = defaultdict(list)
    for curve in curves:
        if curve.verify_budget is not None:
            groups[(curve.task, curve.split, curve.arm)].append(curve)
    points, fixed = [], {}
    for key, members in sorted(groups.items()):
        limit = min(float(c.gflops[-1]) for c in members)
        fixed[key] = limit
        for curve in sorted(members, key=lambda c: c.verify_budget):
            last = int(np.flatnonzero(curve.gflops <= limit * (1 + 1e-9))[-1])
            points.append(BudgetPoint(task=curve.task, split=curve.split, arm=curve.arm,
                                      verify_budget=int(curve.verify_budget), gflops=float(curve.gflops[last]),
                                      final=float(curve.value[last]), final_se=float(curve.se[last]),
                                      initial=float(curve.value[0]), initial_se=float(curve.se[0])))
    return points, fixed


def plot_verify_budget(curves: Sequence[Curve], task: str, out_dir: Path, file: str) -> Optional[MadeFigure]:
    """Figure 10: success at a fixed training compute against the verification budget, and (when the runs have
    an initial evaluation before it) the gain over that initial evaluation; one line per (arm, split)."""
    points, fixed = budget_points([c for c in curves if c.task == task])
    if not points:
        return None
    has_gain = any(len(c.steps) > 1 for c in curves if c.task == task and c.verify_budget is not None)
    fig, axes = plt.subplots(1, 2 if has_gain else 1, figsize=(10.4 if has_gain else 5.2, 4.2), squeeze=False)
    linestyles = {"in_distribution": "-", "rule_ood": "--", "visual_ood": ":"}
    series: dict[tuple, list[BudgetPoint]] = defaultdict(list)
    for point in points:
        series[(point.split, point.arm)].append(point)
    for (split, arm), members in sorted(series.items()):
        budgets = [p.verify_budget for p in members]
        label = f"{arm.upper()} {SPLIT_TITLES.get(split, split)} (at {fixed[(task, split, arm)]:.4g} GFLOPs)"
        style = dict(color=arm_color(arm), linestyle=linestyles.get(split, "-"), marker="o", capsize=3)
        axes[0][0].errorbar(budgets, [p.final * 100 for p in members], yerr=[p.final_se * 100 for p in members],
                            label=label, **style)
        if has_gain:
            gains = [(p.final - p.initial) * 100 for p in members]
            gain_se = [np.hypot(p.final_se, p.initial_se) * 100 for p in members]
            axes[0][1].errorbar(budgets, gains, yerr=gain_se, label=label, **style)
    all_budgets = sorted({p.verify_budget for p in points})
    titles = ["success at fixed compute", "gain over the first evaluation"]
    ylabels = ["success rate (%)", "success gain (percentage points)"]
    for ax, title, ylabel in zip(axes[0], titles, ylabels):
        ax.set_xticks(all_budgets)
        finish_panel(ax, xlabel="verification budget (max verification steps)", ylabel=ylabel, title=title,
                     legend_size=7)
    if has_gain:
        axes[0][1].axhline(0.0, color="black", linewidth=0.8)
    title = f"{TASK_TITLES.get(task, task)}: verification budget (Figure 10 style)"
    fig.suptitle(title)
    save_figure(fig, out_dir / file)
    return MadeFigure(file=file, caption=title)


def pass_at_k_curves(runs: Iterable[Run]) -> dict[tuple, dict[str, dict[int, float]]]:
    """{(task, split, arm): {"initial": {k: mean}, "final": {k: mean}}}: each seed's first and last evaluation
    that carries pass_at_k, averaged over seeds for the k every seed has."""
    per_seed: dict[tuple, dict[tuple, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        for record in run.evals():
            if record.get("pass_at_k"):
                key = (record["task"], record["split"], record["arm"])
                per_seed[key][(record["seed"], run.name)][record["step"]] = {
                    int(k): float(v) for k, v in record["pass_at_k"].items()}
    result = {}
    for key, seeds in sorted(per_seed.items()):
        result[key] = {}
        for which, pick in (("initial", min), ("final", max)):
            chosen = [steps[pick(steps)] for steps in seeds.values()]
            ks = sorted(set.intersection(*(set(c) for c in chosen)))
            result[key][which] = {k: float(np.mean([c[k] for c in chosen])) for k in ks}
    return result


def plot_pass_at_k(curves: dict, task: str, out_dir: Path, file: str) -> Optional[MadeFigure]:
    """pass@k against k (log2 axis), one panel per split: each arm's final evaluation (solid) and first (dashed)."""
    keys = [key for key in curves if key[0] == task]
    if not keys:
        return None
    splits = [s for s in SPLIT_TITLES if any(k[1] == s for k in keys)]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.8 * len(splits), 4.2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for key in sorted((k for k in keys if k[1] == split), key=lambda k: ARM_ORDER.get(k[2], 9)):
            color = arm_color(key[2])
            final, initial = curves[key]["final"], curves[key]["initial"]
            ax.plot(list(final), [v * 100 for v in final.values()], color=color, marker="o",
                    label=f"{key[2].upper()} final")
            if initial != final:
                ax.plot(list(initial), [v * 100 for v in initial.values()], color=color, marker=".",
                        linestyle="--", alpha=0.7, label=f"{key[2].upper()} first eval")
        ax.set_xscale("log", base=2)
        finish_panel(ax, xlabel="k (samples per problem)", ylabel="pass@k (%)", title=SPLIT_TITLES.get(split, split))
    title = f"{TASK_TITLES.get(task, task)}: pass@k (unbiased estimator)"
    fig.suptitle(title)
    save_figure(fig, out_dir / file)
    return MadeFigure(file=file, caption=title)


def plot_all(runs: Sequence[Run], out_dir: str | Path) -> tuple[list[MadeFigure], list[SkippedFigure]]:
    """Every figure whose data the runs hold, written as PNG into out_dir; the others come back as skipped with
    the reason."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[MadeFigure] = []
    skipped: list[SkippedFigure] = []
    success = collect_curves(runs, "success")
    per_step = collect_curves(runs, "per_step_accuracy")
    recognition_curves = collect_curves(runs, "recognition_accuracy")
    tasks = sorted({c.task for c in success})
    if not success:
        skipped.append(SkippedFigure("Figures 5-8, 10 (success curves)", "no eval records in the runs"))

    for task in tasks:
        name = TASK_TITLES.get(task, task)
        for metric, curves in (("success", success), ("per_step_accuracy", per_step)):
            rule = [c for c in curves if c.task == task and c.split in ("in_distribution", "rule_ood")]
            label = METRIC_LABELS[metric].split(" (")[0]
            if rule:
                made.append(plot_vs_compute(
                    rule, ["in_distribution", "rule_ood"],
                    f"{name}: {label} vs training compute (Figures 5/6 style)", out_dir,
                    f"fig5_{task}_{metric}_vs_gflops.png"))
            elif metric == "success":
                skipped.append(SkippedFigure(f"Figure 5/6 ({name})", "no in-distribution or rule-OOD evaluations"))
            visual = [c for c in curves if c.task == task and c.split == "visual_ood"]
            if visual:
                made.append(plot_vs_compute(visual, ["visual_ood"],
                                            f"{name}: visual-OOD {label} vs training compute (Figure 7 style)",
                                            out_dir, f"fig7_{task}_visual_ood_{metric}_vs_gflops.png"))
            elif metric == "success":
                skipped.append(SkippedFigure(f"Figure 7 ({name})", "no visual_ood evaluations"))

        recognition = [c for c in recognition_curves if c.task == task]
        figure = plot_recognition([c for c in success if c.task == task], recognition, task, out_dir,
                                  f"fig8_{task}_recognition_vs_success.png") if recognition else None
        if figure:
            made.append(figure)
        elif task.endswith("vl") or recognition:
            skipped.append(SkippedFigure(f"Figure 8 ({name})", "no eval records carry recognition_accuracy"))

        figure = plot_verify_budget(success, task, out_dir, f"fig10_{task}_verify_budget.png")
        if figure:
            made.append(figure)
        else:
            skipped.append(SkippedFigure(f"Figure 10 ({name})", "no eval records carry verify_budget"))

    passes = pass_at_k_curves(runs)
    for task in sorted({key[0] for key in passes}):
        figure = plot_pass_at_k(passes, task, out_dir, f"pass_at_k_{task}.png")
        if figure:
            made.append(figure)
    if not passes:
        skipped.append(SkippedFigure("pass@k", "no eval records carry pass_at_k"))

    losses = collect_curves(runs, "heldout_loss")
    for task in sorted({c.task for c in losses}):
        made.append(plot_vs_compute([c for c in losses if c.task == task], list(SPLIT_TITLES),
                                    f"{TASK_TITLES.get(task, task)}: held-out loss vs training compute", out_dir,
                                    f"heldout_loss_{task}.png",
                                    footnote="points: mean over seeds; line: Savitzky-Golay (order 3), dashed when "
                                             "too few points to smooth; faint lines: single seeds"))
    if not losses:
        skipped.append(SkippedFigure("held-out loss", "no eval records carry heldout_loss"))
    return made, skipped
