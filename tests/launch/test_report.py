"""memgen report: the metrics schema and loader, the results table against hand-computed numbers, the
significance wording, the figures (valid PNGs, skipped cleanly without data), and the command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch import report
from launch.metrics_schema import MetricsFileError, eval_record, load_run, load_runs, train_record, validate_record
from launch.report import ChangeRow, reading_sentence, results_rows, write_report
from tests.launch.synthetic_runs import arm_run, full_study, write_run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The full synthetic study and its report, written once for the module."""
    root = tmp_path_factory.mktemp("study")
    dirs = full_study(root / "runs")
    path = write_report(dirs, root / "out")
    return dirs, root / "out", path.read_text()


# --- schema ------------------------------------------------------------------------------------------------------

def test_eval_record_fills_the_binomial_standard_error():
    record = eval_record(step=3, gflops=1.5, task="gp-l", split="rule_ood", n=234, success=0.115, arm="rl")
    assert record["success_se"] == pytest.approx(math.sqrt(0.115 * 0.885 / 234), rel=1e-6)
    assert "verify_budget" not in record  # absent fields are not written as null


def test_eval_record_pass_at_k_keys_become_sorted_strings():
    record = eval_record(step=0, gflops=0, task="gp-l", split="in_distribution", n=10, success=0.5,
                         pass_at_k={64: 0.9, 1: 0.5, 8: 0.7})
    assert list(record["pass_at_k"]) == ["1", "8", "64"]
    assert json.loads(json.dumps(record)) == record


@pytest.mark.parametrize("change, message", [
    ({"kind": None}, "'kind'"),
    ({"step": -1}, "'step'"),
    ({"gflops": None}, "'gflops'"),
    ({"task": "gp"}, "'task'"),
    ({"split": "ood"}, "'split'"),
    ({"n": 0}, "'n'"),
    ({"success": 1.5}, "'success'"),
    ({"success_se": None}, "'success_se'"),
    ({"arm": "ppo"}, "'arm'"),
    ({"verify_budget": 0}, "'verify_budget'"),
    ({"pass_at_k": {"x": 0.1}}, "'pass_at_k'"),
    ({"recognition_accuracy": 2.0}, "'recognition_accuracy'"),
])
def test_validate_record_rejects_each_bad_eval_field(change, message):
    good = eval_record(step=1, gflops=2.0, task="gp-vl", split="visual_ood", n=18, success=0.5)
    with pytest.raises(ValueError, match=message):
        validate_record({**good, **change})


def test_validate_record_train_needs_loss_lr_tokens_arm():
    good = train_record(step=1, gflops=2.0, loss=float("nan"), lr=1e-6, tokens=100, arm="sft")
    assert good["loss"] is None  # a non-finite loss is null, as MetricsWriter writes it
    for missing in ("loss", "lr", "tokens", "arm"):
        with pytest.raises(ValueError, match=repr(missing)):
            validate_record({k: v for k, v in good.items() if k != missing})


def test_unknown_kinds_and_extra_fields_pass():
    assert validate_record({"kind": "rollout", "step": 0, "gflops": 0.0, "reward_mean": -1.0})["reward_mean"] == -1.0
    assert validate_record({"kind": "sweep", "step": 0, "gflops": 1, "anything": [1, 2]})["kind"] == "sweep"
    record = eval_record(step=0, gflops=0, task="virl-l", split="in_distribution", n=48, success=0.8,
                         route_length=7.5)
    assert validate_record(record)["route_length"] == 7.5


def test_malformed_line_is_one_sentence_with_file_and_line(tmp_path):
    good = json.dumps(eval_record(step=0, gflops=0, task="gp-l", split="rule_ood", n=10, success=0.1))
    (tmp_path / "metrics.jsonl").write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    with pytest.raises(MetricsFileError, match=r"metrics\.jsonl line 3 is not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(f"{good}\n" + json.dumps({"kind": "eval", "step": 1}) + "\n")
    with pytest.raises(MetricsFileError, match=r"line 2 does not follow the metrics schema: .*'gflops'"):
        load_run(tmp_path)


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    good = json.dumps(eval_record(step=0, gflops=0, task="gp-l", split="rule_ood", n=10, success=0.1))
    (tmp_path / "metrics.jsonl").write_text(f"{good}\n{good[:20]}")
    run = load_run(tmp_path)
    assert len(run.records) == 1 and "line 2" in run.warnings[0]


def test_missing_directory_and_bad_config(tmp_path):
    with pytest.raises(MetricsFileError, match="does not exist"):
        load_runs([tmp_path / "nope"])
    write_run(tmp_path / "run", [], None)
    (tmp_path / "run" / "config.json").write_text("{")
    with pytest.raises(MetricsFileError, match=r"config\.json is not valid JSON"):
        load_run(tmp_path / "run")


def test_arm_and_seed_fall_back_to_config(study):
    dirs, _, _ = study
    run = load_run(dirs[2])  # sft seed 2: its eval records carry neither arm nor seed
    assert all("arm" not in r for r in run.of_kind("eval"))
    assert {(r["arm"], r["seed"]) for r in run.evals()} == {("sft", 2)}


# --- the results table -------------------------------------------------------------------------------------------

def _by_hand(dirs: list[Path], task: str, split: str, arm: str) -> dict:
    """initial/final/change and their standard errors computed from the raw files, the documented way."""
    first, last = [], []
    for directory in dirs:
        config = json.loads((directory / "config.json").read_text())
        records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        evals = sorted((r for r in records if r["kind"] == "eval" and r["task"] == task and r["split"] == split
                        and r.get("arm", config["arm"]) == arm), key=lambda r: r["step"])
        if evals:
            first.append(evals[0])
            last.append(evals[-1])
    s = len(first)
    p0 = np.array([r["success"] for r in first])
    p1 = np.array([r["success"] for r in last])
    se0 = np.array([math.sqrt(r["success"] * (1 - r["success"]) / r["n"]) for r in first])
    se1 = np.array([math.sqrt(r["success"] * (1 - r["success"]) / r["n"]) for r in last])
    deltas = p1 - p0
    binomial = math.sqrt(sum(se0 ** 2) + sum(se1 ** 2)) / s
    seed_se = float(np.std(deltas, ddof=1)) / math.sqrt(s)
    return dict(seeds=s, initial=p0.mean(), initial_se=math.sqrt(sum(se0 ** 2)) / s, final=p1.mean(),
                final_se=math.sqrt(sum(se1 ** 2)) / s, change=deltas.mean(), change_se=max(binomial, seed_se),
                seed_sd_final=float(np.std(p1, ddof=1)), seed_sd_change=float(np.std(deltas, ddof=1)))


@pytest.mark.parametrize("split", ["in_distribution", "rule_ood", "visual_ood"])
@pytest.mark.parametrize("arm", ["sft", "rl"])
def test_table_numbers_equal_hand_computed(study, split, arm):
    dirs, _, text = study
    rows = {(r.task, r.split, r.arm): r for r in results_rows(load_runs(dirs))}
    row = rows[("gp-vl", split, arm)]
    expected = _by_hand(dirs[:6], "gp-vl", split, arm)
    for field, value in expected.items():
        # success_se comes from rl.metrics.binomial_standard_error in float32
        assert getattr(row, field) == pytest.approx(value, rel=1e-6, abs=1e-9), field
    line = (f"| GP-VL | {report.SPLIT_TITLES[split]} | {arm.upper()} | - | 3 | 0 -> 50 | "
            f"{100 * expected['initial']:.1f} ± {100 * expected['initial_se']:.1f} | "
            f"{100 * expected['final']:.1f} ± {100 * expected['final_se']:.1f} | {100 * expected['change']:+.1f} | "
            f"{200 * expected['change_se']:.1f} | ")
    assert line in text


def test_synthetic_story_reads_as_the_paper(study):
    _, _, text = study
    assert "SFT success rate on GP-VL rule OOD went down" in text
    assert "RL success rate on GP-VL rule OOD went up" in text
    assert "GP-VL visual OOD: SFT OOD went down and RL OOD went up, the paper's pattern" in text


def _row(change, change_se):
    return ChangeRow(task="gp-l", split="rule_ood", arm="sft", verify_budget=None, metric="success", seeds=1,
                     initial_step=0, final_step=10, initial_gflops=0.0, final_gflops=1.0, initial=0.3,
                     initial_se=0.01, final=0.3 + change, final_se=0.01, seed_sd_final=math.nan, change=change,
                     change_se=change_se, seed_sd_change=math.nan)


def test_significance_rule_is_two_standard_errors():
    assert "no significant difference at this sample size" in reading_sentence(_row(-0.1, 0.05))  # exactly 2 SE
    assert "went down from 30.0% to 20.0%" in reading_sentence(_row(-0.1, 0.0499))
    assert "went up" in reading_sentence(_row(0.1, 0.0499))
    assert "no significant difference" in reading_sentence(_row(0.1, 0.06))


def _arm_row(arm, change, change_se=0.02, split="rule_ood", initial=0.4, task="gp-l"):
    """A synthetic results row; change None: a single evaluation."""
    return ChangeRow(task=task, split=split, arm=arm, verify_budget=None, metric="success", seeds=1, initial_step=0,
                     final_step=0 if change is None else 10, initial_gflops=0.0, final_gflops=1.0, initial=initial,
                     initial_se=0.01, final=initial + (change or 0.0), final_se=0.01, seed_sd_final=math.nan,
                     change=change, change_se=None if change is None else change_se, seed_sd_change=math.nan)


@pytest.mark.parametrize("sft_change, rl_change, holds", [
    (-0.10, +0.10, True),    # SFT down, RL up
    (-0.10, +0.01, True),    # SFT down, RL flat (n.s.): issue 10's "up/flat"
    (-0.10, -0.01, True),    # RL slightly down but inside 2 SE is still flat
    (-0.10, -0.10, False),   # RL down too
    (-0.03, +0.10, False),   # SFT's drop inside 2 SE: not supported
    (+0.10, +0.10, False),   # SFT up
    (-0.10, None, False),    # RL evaluated once: its change is unknown
    (None, +0.10, False),    # SFT evaluated once
])
def test_paper_claim_is_stated_only_when_the_intervals_support_it(sft_change, rl_change, holds):
    claim = report.paper_claim(_arm_row("sft", sft_change), _arm_row("rl", rl_change))
    assert claim.holds is holds
    [sentence] = report.paper_pattern_sentences([_arm_row("sft", sft_change), _arm_row("rl", rl_change)])
    assert sentence.startswith("GP-L rule OOD: SFT OOD ")
    if holds:
        assert sentence.endswith("the paper's pattern (SFT OOD down, RL OOD up/flat: SFT memorizes, RL generalizes).")
        assert "not established" not in sentence
    else:
        assert sentence.endswith("the paper's pattern (SFT OOD down, RL OOD up/flat) is not established here.")


def test_paper_claim_says_what_was_observed():
    flat = report.paper_claim(_arm_row("sft", -0.10), _arm_row("rl", 0.01))
    assert flat.observed == "SFT went down and RL showed no significant change"
    once = report.paper_claim(_arm_row("sft", -0.10), _arm_row("rl", None))
    assert once.observed == "SFT went down and RL was evaluated only once"
    [sentence] = report.paper_pattern_sentences([_arm_row("sft", -0.1), _arm_row("rl", 0.1),
                                                 _arm_row("rl", 0.1, split="in_distribution")])
    assert sentence.startswith("GP-L rule OOD: SFT OOD went down and RL OOD went up, the paper's pattern")


def test_small_samples_are_not_called_significant(tmp_path):
    # 10 episodes per evaluation: a 10-point drop is well inside 2 standard errors.
    records = [eval_record(step=step, gflops=10.0 * step, task="gp-l", split="rule_ood", n=10, success=p, arm="sft")
               for step, p in ((0, 0.3), (5, 0.25), (10, 0.2))]
    write_run(tmp_path / "run", records, {"seed": 0})
    text = write_report([tmp_path / "run"], tmp_path / "out").read_text()
    assert "SFT success rate on GP-L rule OOD: no significant difference at this sample size (-10.0 points" in text
    assert "went down" not in text


# --- figures -----------------------------------------------------------------------------------------------------

EXPECTED_FIGURES = [
    "fig5_gp-vl_success_vs_gflops.png", "fig7_gp-vl_visual_ood_success_vs_gflops.png",
    "fig8_gp-vl_recognition_vs_success.png", "pass_at_k_gp-vl.png", "heldout_loss_gp-vl.png",
    "fig5_gp-l_success_vs_gflops.png", "fig10_gp-l_verify_budget.png",
]


def test_figures_exist_are_valid_pngs_and_are_linked(study):
    _, out, text = study
    for name in EXPECTED_FIGURES:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
            image.verify()
        assert f"]({name})" in text
    assert sorted(p.name for p in out.glob("*.png")) == sorted(EXPECTED_FIGURES)
    assert "- Figure 10 (GP-VL): skipped, no eval records carry verify_budget." in text
    assert "- Figure 7 (GP-L): skipped, no visual_ood evaluations." in text


def test_missing_data_skips_figures_and_says_why(tmp_path):
    run = arm_run(tmp_path, "rl", 0, task="gp-vl", splits=("in_distribution",), steps=(0, 10, 20),
                  recognition=False, pass_at_k=False, heldout=False)
    text = write_report([run], tmp_path / "out").read_text()
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["fig5_gp-vl_success_vs_gflops.png"]
    for skipped in ("Figure 7 (GP-VL): skipped, no visual_ood evaluations",
                    "Figure 8 (GP-VL): skipped, no eval records carry recognition_accuracy",
                    "Figure 10 (GP-VL): skipped, no eval records carry verify_budget",
                    "pass@k: skipped, no eval records carry pass_at_k",
                    "held-out loss: skipped, no eval records carry heldout_loss"):
        assert skipped in text
    assert "3 points, too few to smooth (Savitzky-Golay needs 5); raw points joined" in text


def test_runs_without_eval_records(tmp_path):
    records = [train_record(step=s, gflops=6.0 * s, loss=1.0, lr=1e-6, tokens=10, arm="sft") for s in (1, 2)]
    write_run(tmp_path / "run", records, None)
    text = write_report([tmp_path / "run"], tmp_path / "out").read_text()
    assert "No eval records in these runs" in text and "no config.json" in text
    assert not list((tmp_path / "out").glob("*.png"))


# --- the command -------------------------------------------------------------------------------------------------

def _parse(argv):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_writes_the_report(tmp_path, capsys):
    run = arm_run(tmp_path, "sft", 0, task="gp-l", splits=("rule_ood",), steps=(0, 5), recognition=False,
                  pass_at_k=False, heldout=False)
    assert report.run(_parse([str(run), "--out", str(tmp_path / "out")])) == 0
    assert (tmp_path / "out" / "report.md").exists()
    assert "wrote" in capsys.readouterr().out


def test_command_reports_a_bad_directory_in_one_sentence(tmp_path, capsys):
    assert report.run(_parse([str(tmp_path / "missing"), "--out", str(tmp_path / "out")])) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("memgen report: run directory") and error.count("\n") == 0


def test_virl_per_step_accuracy_gets_its_own_figure_and_table(tmp_path):
    records = []
    for step, accuracy in ((0, 0.357), (10, 0.40), (20, 0.45)):
        records.append(eval_record(step=step, gflops=50.0 * step, task="virl-vl", split="rule_ood", n=48,
                                   success=0.02, per_step_accuracy=accuracy, per_step_accuracy_se=0.01, arm="rl"))
    write_run(tmp_path / "virl", records, {"seed": 1})
    text = write_report([tmp_path / "virl"], tmp_path / "out").read_text()
    assert (tmp_path / "out" / "fig5_virl-vl_per_step_accuracy_vs_gflops.png").exists()
    assert "### per-step accuracy" in text
    assert "RL per-step accuracy on V-IRL-VL rule OOD went up from 35.7% to 45.0%" in text
    assert "| V-IRL-VL | rule OOD | 35.7 | 2.5 | 45.0 |" in text  # the paper's numbers for scale


def test_eval_record_takes_the_rl_metrics_outputs_directly():
    import jax.numpy as jnp

    from rl.metrics import per_step_accuracy, success_rate

    rate, se = success_rate(jnp.array([True, False, True, True]))
    accuracy, accuracy_se = per_step_accuracy(jnp.array([[1, 0], [1, 1]], bool), jnp.array([[1, 1], [1, 0]], bool))
    record = eval_record(step=jnp.int32(2), gflops=jnp.float32(3.0), task="virl-l", split="rule_ood", n=4,
                         success=rate, success_se=se, per_step_accuracy=accuracy, per_step_accuracy_se=accuracy_se,
                         seed=np.int64(1))
    assert record["success"] == pytest.approx(0.75) and record["per_step_accuracy"] == pytest.approx(2 / 3)
    assert json.loads(json.dumps(record)) == record


def test_the_cli_registers_report_with_one_line(tmp_path, monkeypatch):
    from launch import cli

    monkeypatch.setattr(cli, "COMMANDS", {"report": ("launch.report", "figures and report.md from runs")})
    run = arm_run(tmp_path, "rl", 0, task="gp-l", splits=("rule_ood",), steps=(0, 5), recognition=False,
                  pass_at_k=False, heldout=False)
    assert cli.main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").exists()


def _table(text: str, heading: str) -> list[str]:
    """The table lines under a '### heading' of report.md."""
    lines = text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0].splitlines()
    return [line for line in lines if line.startswith("| GP-L")]


def test_report_on_a_demo_out_directory(tmp_path, capsys):
    """`memgen report DEMO_OUT`: the demo's OUT holds one combined metrics.jsonl (every stage's records tagged with
    "stage", written by launch.miniature.combined_metrics) and miniature.json instead of config.json."""
    from launch import cli
    from launch.config import get_preset, to_dict
    from launch.miniature import MiniatureConfig, combined_metrics

    stages = tmp_path / "stages"
    base = write_run(stages / "base", [train_record(step=s, gflops=10.0 * s, loss=2.0 / s, lr=1e-3, tokens=256,
                                                    arm="sft") for s in (1, 2, 3)], {"seed": 0})
    arms = [arm_run(stages, arm, seed, task="gp-l", splits=("in_distribution", "rule_ood"), recognition=False,
                    pass_at_k=False, heldout=False, verify_budget=2) for seed in range(3) for arm in ("rl", "sft")]
    out = tmp_path / "demo_out"
    out.mkdir()
    combined_metrics(out, [base, *arms])
    (out / "miniature.json").write_text(json.dumps(to_dict(get_preset("miniature", MiniatureConfig))))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"base", "rl-seed0", "sft-seed0", "rl-seed1", "sft-seed1", "rl-seed2",
                                             "sft-seed2"}
    assert {r["arm"] for r in records if r["stage"] == "base"} == {"base"}
    assert not (out / "config.json").exists()

    assert cli.main(["report", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert "wrote" in capsys.readouterr().out
    text = (tmp_path / "figs" / "report.md").read_text()
    pngs = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert "fig5_gp-l_success_vs_gflops.png" in pngs
    for name in pngs:
        with Image.open(tmp_path / "figs" / name) as image:
            assert image.format == "PNG"
            image.verify()
        assert f"]({name})" in text
    assert "| `demo_out` | base, rl, sft | gp-l | 0, 1, 2 |" in text
    assert "| miniature.json |" in text and "eval_episodes = 128" in text  # its config is shown
    # The combined file reads exactly as the stage directories themselves: same seeds, same table.
    separate = write_report(arms, tmp_path / "separate").read_text()
    for heading in ("success rate", "Verification budget at fixed compute"):
        assert _table(text, heading) == _table(separate, heading) != []
    assert all("| 3 | 0 -> 50 |" in line for line in _table(text, "success rate"))


def test_budget_table_equals_hand_computed(study):
    dirs, _, text = study
    # GP-L rule OOD: budgets 1 and 3 end at step 20 (the smallest last compute, 100 + 250 * 20 GFLOPs)
    fixed = 100.0 + 250.0 * 20
    for directory, budget in zip(dirs[6:], (1, 3, 5, 10)):
        records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if r["kind"] == "eval" and r["split"] == "rule_ood"]
        first = evals[0]
        final = [r for r in evals if r["gflops"] <= fixed][-1]
        se = lambda r: math.sqrt(r["success"] * (1 - r["success"]) / r["n"])  # noqa: E731
        line = (f"| GP-L | rule OOD | RL | {budget} | {fixed:.4g} | {100 * final['success']:.1f} ± "
                f"{100 * se(final):.1f} | {100 * (final['success'] - first['success']):+.1f} ± "
                f"{100 * math.hypot(se(final), se(first)):.1f} |")
        assert line in text
