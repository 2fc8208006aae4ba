"""`memgen predict`: how well pre-RL measurements of SFT checkpoints predict their post-RL success ("Quagmires in
SFT-RL Post-Training"): for each predictor (post-SFT success, held-out generalisation loss, pass@k for each k, and
any custom predictor) the R^2 of a least-squares line and the Spearman rank correlation (two-sided p-value, 95%
interval) against post-RL success across checkpoints, as a table (DIR/predict.md, DIR/predict.json) and one
scatter plot with the fit line per predictor (DIR/predict_<predictor>.png). When the checkpoints carry the
successes of several RL runs each, or the number of instances their post-RL success was measured on, also how much
of its spread is noise (`target_noise`): the R^2 a perfect predictor could reach.

`predictor_table(checkpoints) -> rows` is the pure statistics a sweep runner calls; the CLI reads checkpoints from
JSON/JSONL files or run directories (docs/report.md, "memgen predict"), or, with --rl-preset, measures them
itself from SFT run directories and runs the RL (launch/predict_run.py).

A checkpoint is a mapping (rates in [0, 1]):
    {"name": "sft-lr1e-6-ep2",            # optional
     "post_rl_success": 0.41,             # required: success after RL from this checkpoint
     "post_rl_n": 256,                    # optional: the instances that rate is over (for target_noise)
     "post_rl_runs": [0.38, 0.44],        # optional: successes of RL runs with different seeds (their mean above)
     "sft_success": 0.30,                 # optional predictors ...
     "heldout_loss": 1.23,
     "pass_at_k": {"1": 0.30, "64": 0.81},
     "predictors": {"my_metric": 0.5}}    # any extra named predictors
Arrays: X (C,) predictor values and y (C,) post-RL success over C checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from launch.metrics_schema import METRICS_FILENAME, MetricsFileError, load_run

TARGET = "post_rl_success"
TARGET_N = "post_rl_n"
TARGET_RUNS = "post_rl_runs"
MIN_CHECKPOINTS = 3


class PredictError(ValueError):
    """Bad or insufficient checkpoint data for the predictor statistics; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class PredictorRow:
    """One predictor's fit against post-RL success over the n checkpoints that carry it. r2 = 1 - SS_res / SS_tot
    of the least-squares line post_rl = intercept + slope * predictor (= Pearson r^2); spearman_rho and its
    two-sided p-value (t distribution with n - 2 degrees of freedom, as scipy.stats.spearmanr) and 95% interval
    (`spearman_interval`). NaN where undefined, with `note` saying why."""

    predictor: str
    n: int
    r2: float
    slope: float
    intercept: float
    spearman_rho: float
    spearman_p: float
    note: str = ""
    rho_low: float = math.nan
    rho_high: float = math.nan


@dataclasses.dataclass(frozen=True)
class TargetNoise:
    """How much of post-RL success's spread over `checkpoints` checkpoints is noise no predictor can follow.
    spread: the standard deviation of the checkpoints' post-RL success (ddof 1); noise_se: the root-mean-square
    standard error of one checkpoint's value; between_variance: spread^2 - noise_se^2, an unbiased estimate of
    the variance of the checkpoints' true values (may come out negative); reliability: its share of spread^2,
    clipped to [0, 1]: about the R^2 a perfect predictor of the true values could reach.
    source "runs" (every checkpoint has post_rl_runs, the successes of >= 2 RL runs with different seeds, whose
    mean is post_rl_success): noise_se^2 = mean(var(runs, ddof 1) / runs), the whole run-to-run spread, RL's
    randomness and the evaluation's binomial noise alike; the true value is a checkpoint's expected post-RL
    success over RL seeds. Source "binomial" (post_rl_n only): noise_se^2 = mean(p (1 - p) / (n - 1)), each term
    an unbiased estimate of a rate's sampling variance over n instances; the evaluation's noise only, so RL's
    randomness counts as "true" difference and the reliability is an upper bound. `runs`: the fewest RL runs of
    a checkpoint (1 for "binomial")."""

    checkpoints: int
    spread: float
    noise_se: float
    between_variance: float
    reliability: float
    source: str = "binomial"
    runs: int = 1


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PredictError(f"{what} must be a finite number, got {value!r}.")
    return float(value)


def checkpoint_predictors(checkpoint: Mapping[str, Any], where: str = "a checkpoint") -> dict[str, float]:
    """{predictor name: value} of one checkpoint: sft_success, heldout_loss, pass@k per k, and its "predictors"."""
    values: dict[str, float] = {}
    for name in ("sft_success", "heldout_loss"):
        if checkpoint.get(name) is not None:
            values[name] = _number(checkpoint[name], f"{where}'s {name!r}")
    curve = checkpoint.get("pass_at_k") or {}
    if not isinstance(curve, Mapping):
        raise PredictError(f"{where}'s 'pass_at_k' must be an object {{k: value}}, got {curve!r}.")
    for k in sorted(curve, key=lambda k: int(k) if str(k).isdigit() else math.inf):
        if not str(k).isdigit():
            raise PredictError(f"{where}'s 'pass_at_k' keys must be integers k, got {k!r}.")
        values[f"pass@{int(k)}"] = _number(curve[k], f"{where}'s pass@{k}")
    extra = checkpoint.get("predictors") or {}
    if not isinstance(extra, Mapping):
        raise PredictError(f"{where}'s 'predictors' must be an object {{name: value}}, got {extra!r}.")
    for name, value in extra.items():
        values[str(name)] = _number(value, f"{where}'s predictor {name!r}")
    return values


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, R^2) of the least-squares line y = intercept + slope x; R^2 is NaN when x or y is
    constant (no line or nothing to explain)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx == 0.0:
        return math.nan, math.nan, math.nan
    slope = float(dx @ dy) / sxx
    intercept = float(y.mean() - slope * x.mean())
    if syy == 0.0:
        return slope, intercept, math.nan
    residual = y - (intercept + slope * x)
    return slope, intercept, float(1.0 - (residual @ residual) / syy)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(rho, two-sided p): Pearson correlation of the average ranks (ties share their mean rank), p from
    t = rho sqrt((n - 2) / (1 - rho^2)) with n - 2 degrees of freedom. NaN when either side is constant."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0.0:
        return math.nan, math.nan
    rho = float(np.clip((dx @ dy) / denominator, -1.0, 1.0))
    n = len(rx)
    if abs(rho) == 1.0:
        return rho, 0.0
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho))
    return rho, float(2.0 * stats.t.sf(abs(t), n - 2))


def spearman_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """A `level` confidence interval for a Spearman correlation rho over n pairs: Fisher's z = atanh(rho) with
    Bonett and Wright's (2000) standard error sqrt((1 + rho^2 / 2) / (n - 3)), transformed back. NaN for n <= 3
    or an undefined rho; (rho, rho) at |rho| = 1."""
    if n <= 3 or math.isnan(rho):
        return math.nan, math.nan
    if abs(rho) == 1.0:
        return rho, rho
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt((1.0 + rho * rho / 2.0) / (n - 3))
    z = math.atanh(rho)
    return math.tanh(z - half), math.tanh(z + half)


def _run_successes(checkpoint: Mapping[str, Any]) -> Optional[np.ndarray]:
    """The checkpoint's post_rl_runs (None unless it has >= 2), checked against its post_rl_success (their mean)."""
    runs = checkpoint.get(TARGET_RUNS)
    where = f"checkpoint {checkpoint.get('name', '?')!r}'s {TARGET_RUNS!r}"
    if runs is not None and not isinstance(runs, (list, tuple)):
        raise PredictError(f"{where} must be a list of the RL runs' successes, got {runs!r}.")
    if runs is None or len(runs) < 2:
        return None
    values = np.array([_number(value, where) for value in runs])
    if abs(values.mean() - _number(checkpoint[TARGET], TARGET)) > 1e-6:
        raise PredictError(f"{where} average {values.mean():.6f}, not its {TARGET} {checkpoint[TARGET]}; the "
                           f"{TARGET} of several RL runs is their mean.")
    return values


def target_noise(checkpoints: Sequence[Mapping[str, Any]]) -> Optional[TargetNoise]:
    """`TargetNoise` of the checkpoints' post-RL success: from the RL runs when at least 3 checkpoints all carry
    >= 2 `post_rl_runs`, else from the instance counts when they all carry `post_rl_n` (at least 2); else None."""
    if len(checkpoints) < MIN_CHECKPOINTS:
        return None
    means = np.array([_number(c[TARGET], TARGET) for c in checkpoints])
    observed = float(means.var(ddof=1))
    runs = [_run_successes(c) for c in checkpoints]
    if all(r is not None for r in runs):
        noise = float(np.mean([r.var(ddof=1) / len(r) for r in runs]))
        source, fewest = "runs", min(len(r) for r in runs)
    elif all(c.get(TARGET_N) is not None for c in checkpoints):
        counts = np.array([_number(c[TARGET_N], TARGET_N) for c in checkpoints])
        if np.any(counts < 2):
            raise PredictError(f"{TARGET_N} must be at least 2 instances for every checkpoint, got {counts.min():g}.")
        noise = float(np.mean(means * (1.0 - means) / (counts - 1.0)))
        source, fewest = "binomial", 1
    else:
        return None
    between = observed - noise
    reliability = float(np.clip(between / observed, 0.0, 1.0)) if observed > 0 else math.nan
    return TargetNoise(len(means), math.sqrt(observed), math.sqrt(noise), between, reliability, source, fewest)


def _predictor_order(name: str) -> tuple:
    if name == "sft_success":
        return (0, 0, name)
    if name == "heldout_loss":
        return (1, 0, name)
    match = re.fullmatch(r"pass@(\d+)", name)
    return (2, int(match.group(1)), name) if match else (3, 0, name)


def predictor_table(checkpoints: Sequence[Mapping[str, Any]]) -> list[PredictorRow]:
    """One row per predictor (sft_success, heldout_loss, pass@k by k, then custom ones) over the checkpoints that
    carry it. Raises PredictError when fewer than 3 checkpoints have post_rl_success."""
    targets, predictor_values = [], []
    for index, checkpoint in enumerate(checkpoints):
        where = f"checkpoint {checkpoint.get('name', index)!r}"
        if checkpoint.get(TARGET) is None:
            raise PredictError(f"{where} has no {TARGET!r}; every checkpoint needs its success after RL.")
        targets.append(_number(checkpoint[TARGET], f"{where}'s {TARGET!r}"))
        predictor_values.append(checkpoint_predictors(checkpoint, where))
    if len(targets) < MIN_CHECKPOINTS:
        raise PredictError(f"predicting post-RL success needs at least {MIN_CHECKPOINTS} checkpoints, got "
                           f"{len(targets)}; a line and a rank correlation through fewer points say nothing.")
    names = sorted({name for values in predictor_values for name in values}, key=_predictor_order)
    if not names:
        raise PredictError("no checkpoint carries a predictor (sft_success, heldout_loss, pass_at_k or predictors).")
    rows = []
    for name in names:
        keep = [i for i, values in enumerate(predictor_values) if name in values]
        x = np.array([predictor_values[i][name] for i in keep])
        y = np.array([targets[i] for i in keep])
        if len(keep) < MIN_CHECKPOINTS:
            rows.append(PredictorRow(name, len(keep), *(math.nan,) * 5,
                                     note=f"only {len(keep)} checkpoints carry it; needs {MIN_CHECKPOINTS}"))
            continue
        slope, intercept, r2 = linear_fit(x, y)
        rho, p = spearman(x, y)
        note = ""
        if np.all(x == x[0]):
            note = "the predictor is the same for every checkpoint"
        elif np.all(y == y[0]):
            note = "post-RL success is the same for every checkpoint"
        rows.append(PredictorRow(name, len(keep), r2, slope, intercept, rho, p, note,
                                 *spearman_interval(rho, len(keep))))
    return rows


# --- inputs -----------------------------------------------------------------------------------------------------

def _checkpoints_from_file(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise PredictError(f"{path} line {number} is not valid JSON ({error.msg}); fix or delete it.") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PredictError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}).") from None
        items = data.get("checkpoints") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise PredictError(f"{path} must hold a list of checkpoints or {{\"checkpoints\": [...]}}.")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise PredictError(f"{path} checkpoint {index} must be a JSON object, got {type(item).__name__}.")
        item.setdefault("name", f"{path.stem}[{index}]")
    return items


def _latest(records: list[dict], field: str, **match: Any) -> Optional[dict]:
    chosen = [r for r in records if r.get(field) is not None and all(r.get(k) == v for k, v in match.items())]
    return max(chosen, key=lambda r: r["step"]) if chosen else None


def checkpoint_from_run_dir(directory: Path, split: str, task: Optional[str]) -> dict:
    """One checkpoint from a directory whose metrics.jsonl (its own and its immediate subdirectories', e.g.
    sft/ and rl/) holds eval records: predictors from the latest SFT-arm evaluation on `split`, post-RL success
    from the latest RL-arm evaluation on `split`."""
    run_dirs = [directory] if (directory / METRICS_FILENAME).exists() else []
    run_dirs += sorted(d for d in directory.iterdir() if d.is_dir() and (d / METRICS_FILENAME).exists())
    if not run_dirs:
        raise PredictError(f"{directory} holds no metrics.jsonl (nor do its subdirectories); pass run directories "
                           "or a JSON/JSONL file of checkpoints.")
    records = [r for d in run_dirs for r in load_run(d).evals()]
    tasks = sorted({r["task"] for r in records})
    if task is None and len(tasks) > 1:
        raise PredictError(f"{directory} has evaluations of several tasks ({', '.join(tasks)}); choose one with --task.")
    task = task or (tasks[0] if tasks else None)
    records = [r for r in records if r["task"] == task and r["split"] == split]
    sft = _latest(records, "success", arm="sft")
    rl = _latest(records, "success", arm="rl")
    if rl is None:
        raise PredictError(f"{directory} has no RL-arm evaluation of {task} on {split}; post-RL success is needed.")
    checkpoint: dict[str, Any] = {"name": directory.name, TARGET: rl["success"]}
    if rl.get("n") is not None:
        checkpoint[TARGET_N] = rl["n"]
    if sft is not None:
        checkpoint["sft_success"] = sft["success"]
    loss = _latest(records, "heldout_loss", arm="sft")
    if loss is not None:
        checkpoint["heldout_loss"] = loss["heldout_loss"]
    passes = _latest(records, "pass_at_k", arm="sft")
    if passes is not None:
        checkpoint["pass_at_k"] = passes["pass_at_k"]
    return checkpoint


def load_checkpoints(inputs: Sequence[str | Path], split: str = "in_distribution",
                     task: Optional[str] = None) -> list[dict]:
    """Checkpoints from JSON (.json: a list or {"checkpoints": [...]}) / JSONL files and run directories."""
    checkpoints = []
    for item in map(Path, inputs):
        if item.is_dir():
            checkpoints.append(checkpoint_from_run_dir(item, split, task))
        elif item.is_file():
            checkpoints.extend(_checkpoints_from_file(item))
        else:
            raise PredictError(f"{item} does not exist; pass JSON/JSONL checkpoint files or run directories.")
    return checkpoints


# --- outputs ----------------------------------------------------------------------------------------------------

def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _p_text(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}"


def table_markdown(rows: Sequence[PredictorRow]) -> list[str]:
    lines = ["| predictor | checkpoints | R^2 (linear fit) | Spearman rho | rho 95% interval | p-value | slope | note |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        interval = "-" if math.isnan(row.rho_low) else f"{row.rho_low:.2f} .. {row.rho_high:.2f}"
        lines.append(f"| {row.predictor} | {row.n} | {_fmt(row.r2)} | {_fmt(row.spearman_rho)} | {interval} | "
                     f"{_p_text(row.spearman_p)} | {_fmt(row.slope, 4)} | {row.note} |")
    return lines


def noise_markdown(noise: Optional[TargetNoise], checkpoints: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sentence on the noise in post-RL success (none when `target_noise` has nothing to go on, or post-RL
    success is the same for every checkpoint: the table's notes say so)."""
    if noise is None or math.isnan(noise.reliability):
        return []
    share = (f"so ~{100 * noise.reliability:.0f}% of the spread's variance is differences between the "
             "checkpoints: about the R^2 a perfect predictor of their true post-RL success could reach")
    head = (f"Post-RL success spreads over the checkpoints with a standard deviation of {100 * noise.spread:.1f} "
            "points; ")
    if noise.source == "runs":
        return [head + f"their RL runs (at least {noise.runs} each, different seeds) leave each checkpoint's mean "
                f"a standard error of ~{100 * noise.noise_se:.1f} points (RL's randomness and the evaluation's), "
                + share + ".", ""]
    counts = [c[TARGET_N] for c in checkpoints]
    instances = f"{min(counts):g}" if min(counts) == max(counts) else f"{min(counts):g}-{max(counts):g}"
    return [head + f"measuring each on {instances} instances has a standard error of ~{100 * noise.noise_se:.1f} "
            f"points, " + share + " (an upper bound: one RL run per checkpoint cannot tell RL's run-to-run "
            "randomness from the checkpoints' differences; several RL seeds per checkpoint, `post_rl_runs`, "
            "can).", ""]


def _file_name(predictor: str) -> str:
    return "predict_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", predictor.replace("@", "_at_")) + ".png"


def plot_predictor(checkpoints: Sequence[Mapping[str, Any]], row: PredictorRow, out_dir: Path) -> Optional[str]:
    """Scatter of post-RL success against one predictor with the least-squares line; returns the file name."""
    from launch.plots import finish_panel, plt, save_figure  # matplotlib (Agg) only when plotting

    points = [(checkpoint_predictors(c)[row.predictor], c[TARGET], str(c.get("name", i)))
              for i, c in enumerate(checkpoints) if row.predictor in checkpoint_predictors(c)]
    if len(points) < MIN_CHECKPOINTS:
        return None
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points]) * 100
    is_rate = row.predictor != "heldout_loss" and np.all((x >= 0) & (x <= 1))
    x_plot = x * 100 if is_rate else x
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.scatter(x_plot, y, color="tab:blue", zorder=3)
    if len(points) <= 20:
        for xp, yp, (_, _, name) in zip(x_plot, y, points):
            ax.annotate(name, (xp, yp), fontsize=6, xytext=(3, 3), textcoords="offset points", color="dimgray")
    if not math.isnan(row.slope):
        grid = np.linspace(x.min(), x.max(), 50)
        ax.plot(grid * 100 if is_rate else grid, (row.intercept + row.slope * grid) * 100, color="tab:red",
                label=f"least-squares fit, R^2 = {_fmt(row.r2)}")
    unit = "%" if is_rate else ("nats/token" if row.predictor == "heldout_loss" else "value")
    finish_panel(ax, xlabel=f"{row.predictor} before RL ({unit})", ylabel="success after RL (%)",
                 title=f"{row.predictor}: Spearman rho = {_fmt(row.spearman_rho)} (p = {_p_text(row.spearman_p)}), "
                       f"{row.n} checkpoints", title_size=9)
    name = _file_name(row.predictor)
    save_figure(fig, out_dir / name)
    return name


def write_predict(checkpoints: Sequence[Mapping[str, Any]], out_dir: str | Path) -> list[PredictorRow]:
    """predict.md, predict.json and one scatter PNG per predictor into out_dir; returns the rows."""
    rows = predictor_table(checkpoints)
    noise = target_noise(checkpoints)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [(row, plot_predictor(checkpoints, row, out_dir)) for row in rows]
    lines = ["# memgen predict: pre-RL predictors of post-RL success", "",
             f"{len(checkpoints)} checkpoints. For each predictor: R^2 of the least-squares line post-RL success ~ "
             "predictor, and Spearman's rank correlation with its 95% interval and two-sided p-value. A loss "
             "predicts well with a negative rho (lower loss, higher post-RL success).", ""]
    lines += noise_markdown(noise, checkpoints)
    lines += table_markdown(rows)
    lines.append("")
    for row, file in figures:
        if file:
            lines += [f"![{row.predictor}]({file})", ""]
    (out_dir / "predict.md").write_text("\n".join(lines), encoding="utf-8")
    def plain(item) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(item).items()}

    payload = {"checkpoints": list(checkpoints), "rows": [plain(row) for row in rows],
               "post_rl_noise": plain(noise) if noise is not None else None}
    (out_dir / "predict.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="JSON/JSONL files of checkpoints, or run directories (one checkpoint each); with "
                             "--rl-preset: finished `memgen sft` run directories, and rl.key=value overrides of the "
                             "RL config")
    parser.add_argument("--out", required=True, help="directory for predict.md, predict.json and the scatter plots")
    parser.add_argument("--split", default="in_distribution",
                        choices=("in_distribution", "rule_ood", "visual_ood"),
                        help="evaluation split read from run directories, or measured with --rl-preset "
                             "(default: in_distribution)")
    parser.add_argument("--task", default=None, choices=("gp-l", "gp-vl", "virl-l", "virl-vl"),
                        help="task read from run directories (needed when they hold several)")
    runner = parser.add_argument_group(
        "runner mode", "measure the predictors and run RL from each SFT checkpoint (launch/predict_run.py)")
    runner.add_argument("--rl-preset", default=None,
                        help="run RL from every checkpoint with this `memgen rl` preset (e.g. rl-tiny)")
    defaults = _runner_defaults()
    runner.add_argument("--episodes", type=int, default=defaults.episodes,
                        help=f"instances per evaluation (default {defaults.episodes})")
    runner.add_argument("--samples", type=int, default=defaults.samples,
                        help=f"samples per instance for pass@k, k = 1, 2, 4, ... <= samples (default "
                             f"{defaults.samples})")
    runner.add_argument("--temperature", type=float, default=defaults.temperature,
                        help=f"sampling temperature of the pass@k samples (default {defaults.temperature})")
    runner.add_argument("--budget", type=int, default=None,
                        help="verification budget of every evaluation (default: the RL preset's max_verify_steps)")
    runner.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the evaluation instances (default {defaults.seed})")
    runner.add_argument("--max-rows", type=int, default=1024,
                        help="rows (instances x samples) per rollout batch of an evaluation: bounds its memory "
                             "(default 1024; 0: all in one batch)")
    runner.add_argument("--rl-runs", type=int, default=defaults.rl_runs,
                        help="RL runs per checkpoint, seeds the RL config's seed + 0, 1, ...; post-RL success is "
                             "their mean, and their spread measures the noise no predictor can follow (default "
                             f"{defaults.rl_runs})")


def _runner_defaults():
    from launch.predict_run import PredictRunSettings
    return PredictRunSettings()


_RL_OVERRIDE = re.compile(r"^rl\.[A-Za-z0-9_.]+=")


def _run_runner(args: argparse.Namespace) -> list[PredictorRow]:
    import launch.rl_config  # noqa: F401  (registers the rl presets)
    from launch.config import resolve
    from launch.predict_run import PredictRunSettings, run_predict
    from launch.rl_config import RLConfig

    overrides = [item[len("rl."):] for item in args.inputs if _RL_OVERRIDE.match(item)]
    directories = [item for item in args.inputs if not _RL_OVERRIDE.match(item)]
    rl_config = resolve(args.rl_preset, overrides, kind=RLConfig)
    settings = PredictRunSettings(split=args.split, episodes=args.episodes, samples=args.samples,
                                  temperature=args.temperature, budget=args.budget, seed=args.seed,
                                  rl_runs=args.rl_runs, max_rows=args.max_rows or None)
    _, rows = run_predict(directories, args.out, rl_config, settings)
    return rows


def run(args: argparse.Namespace) -> int:
    from launch.config import ConfigError

    try:
        if args.rl_preset:
            rows = _run_runner(args)
        else:
            checkpoints = load_checkpoints(args.inputs, split=args.split, task=args.task)
            rows = write_predict(checkpoints, args.out)
    except (PredictError, MetricsFileError, ConfigError) as error:
        print(f"memgen predict: {error}", file=sys.stderr)
        return 2
    print("\n".join(table_markdown(rows)))
    print(f"wrote {Path(args.out) / 'predict.md'}")
    return 0
