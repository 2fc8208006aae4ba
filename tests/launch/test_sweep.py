"""memgen sweep on the tiny model: a 3 learning rates x 2 freezing sets grid (the rates vmapped in one program; the
third diverges and is marked so while the others go on), interrupted and resumed; its members equal separate
`memgen sft` runs; summary files; re-running is a no-op; the RL + eval stages over a budget; argument parsing and
errors. Also `memgen predict`'s runner mode on the grid's SFT runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from launch import sweep
from launch.cli import main
from launch.config import ConfigError, resolve
from launch.metrics import read_metrics
from launch.sft_run import run_sft, run_sft_sweep, with_learning_rate
from tests.launch.resume_check import saved_weights

OVERRIDES = ["steps=4", "eval_every=2", "checkpoint.every_steps=2", "train_examples=16", "eval_examples=4",
             "greedy_examples=0", "log_every=1", "max_consecutive_skips=2"]
LRS = (1e-3, 3e-3)
DIVERGING = 1e30  # the first update blows the params up; every later step is non-finite and skipped
GRID_LRS = LRS + (DIVERGING,)


@pytest.fixture(scope="module")
def grid(cache, tmp_path_factory):
    """The sweep directory: the "none" freezing set's members first interrupted after step 2 (run_sft_sweep with
    stop_after), then the whole grid through the command, which resumes them and runs the rest."""
    out = tmp_path_factory.mktemp("sweep")
    config = resolve("sft-tiny", OVERRIDES)
    partial = run_sft_sweep(config, GRID_LRS, [out / "sft" / "none" / sweep.lr_name(lr) for lr in GRID_LRS],
                            stop_after=2)
    assert [s["step"] for s in partial] == [2, 2, 2] and all(s["stopped_early"] for s in partial)
    assert [s["diverged"] for s in partial] == [False, False, False]  # one skipped step so far, of 2 allowed
    argv = ["sweep", "--preset", "sft-tiny", "--out", str(out), "--lrs", ",".join(map(str, GRID_LRS)),
            "--freeze", "none;vision_encoder", *OVERRIDES]
    assert main(argv) == 0
    return out, argv


def test_the_grid_runs_and_writes_its_summary(grid):
    out, _ = grid
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["freeze"], r["lr"]) for r in rows] == [(f, lr) for f in ("none", "vision_encoder") for lr in GRID_LRS]
    for row in rows:
        run_dir = out / row["sft_dir"]
        assert (run_dir / "final" / "preprocessor_config.json").is_file()
        train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2, 3, 4]  # the resumed members' files have no duplicate steps
        assert json.loads((run_dir / "config.json").read_text())["optimizer"]["lr"] == row["lr"]
        if row["lr"] == DIVERGING:  # steps 2-4 skipped: their losses, and the last held-out loss, are null
            assert [r["skipped"] for r in train] == [0, 1, 1, 1] and row["sft_skipped_steps"] == 3
            assert row["sft_loss"] is None and row["heldout_loss"] is None
            continue
        assert row["sft_loss"] == train[-1]["loss"] and np.isfinite(row["heldout_loss"])
        assert row["sft_skipped_steps"] == 0
    assert rows[0]["heldout_loss"] != rows[1]["heldout_loss"]  # the learning rate made a difference
    markdown = (out / "summary.md").read_text()
    assert "| vision_encoder | 1e+30 |" in markdown and "(3 non-finite steps skipped)" in markdown
    assert "| vision_encoder | 0.003 |" in markdown and "![loss vs learning rate](sweep_loss.png)" in markdown
    with Image.open(out / "sweep_loss.png") as image:
        assert image.format == "PNG"
    assert json.loads((out / "sweep.json").read_text())["freeze_sets"] == [[], ["vision_encoder"]]


def test_vmapped_members_equal_separate_runs(grid, tmp_path):
    """The none set at 1e-3 (a member interrupted and resumed) against a plain run_sft run of the same config (the
    pure vmapped step is checked against separate steps for every member in tests/sft/test_step.py)."""
    out, _ = grid
    for freeze, lr in (((), 1e-3),):
        config = with_learning_rate(resolve("sft-tiny", OVERRIDES + [f"freeze=[{','.join(freeze)}]"]), lr)
        separate = tmp_path / sweep.freeze_name(freeze)
        run_sft(config, separate)
        member = out / "sft" / sweep.freeze_name(freeze) / sweep.lr_name(lr)
        assert (member / "config.json").read_text() == (separate / "config.json").read_text()
        ours, theirs = read_metrics(member), read_metrics(separate)
        assert [(r["kind"], r["step"]) for r in ours] == [(r["kind"], r["step"]) for r in theirs]
        for a, b in zip(ours, theirs):
            for key in ("loss", "heldout_loss", "lr", "gflops", "tokens"):
                if key in b:
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["step"])
        ours, theirs = saved_weights(member / "final"), saved_weights(separate / "final")
        assert ours.keys() == theirs.keys()
        for name in theirs:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_rerunning_the_sweep_is_a_no_op(grid, capsys):
    out, argv = grid
    before = {path: path.read_bytes() for path in out.rglob("metrics.jsonl")}
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 6 and "ran " not in printed
    assert "(0 runs done now, 6 already finished)" in printed
    assert {path: path.read_bytes() for path in out.rglob("metrics.jsonl")} == before


@pytest.mark.slow
def test_rl_and_eval_stages_per_budget(cache, tmp_path):
    """One SFT point, then RL from it and an evaluation of the RL policy at a budget of 2 (the rl-tiny shapes)."""
    argv = ["sweep", "--preset", "sft-tiny", "--out", str(tmp_path), "--budgets", "2", "--rl-preset", "rl-tiny",
            "--eval-preset", "eval-tiny", *OVERRIDES, "rl.updates=1", "rl.checkpoint.every_steps=1",
            "rl.eval_episodes=2", "eval.episodes=2", "eval.splits=in_distribution"]
    assert main(argv) == 0
    row, = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert row["budget"] == 2 and row["rl_dir"] == "rl/none/lr-0.001/budget-2"
    rl_config = json.loads((tmp_path / row["rl_dir"] / "config.json").read_text())
    assert rl_config["episodes"]["max_verify_steps"] == 2 and rl_config["init"] == str(tmp_path / row["sft_dir"])
    eval_config = json.loads((tmp_path / row["eval_dir"] / "config.json").read_text())
    assert eval_config["init"] == str(tmp_path / row["rl_dir"]) and eval_config["verify_budgets"] == [2]
    evaluation, = [r for r in read_metrics(tmp_path / row["eval_dir"]) if r["kind"] == "eval"]
    assert row["success_in_distribution"] == evaluation["success"] and evaluation["verify_budget"] == 2
    assert np.isfinite(row["rl_episode_return"]) and (tmp_path / "sweep_success.png").is_file()
    assert main(argv) == 0  # finished: nothing runs again
    assert (tmp_path / row["eval_dir"] / "metrics.jsonl").read_text().count('"kind": "eval"') == 1


def test_parsing_of_the_axes():
    assert sweep.parse_freeze_sets("none;vision_encoder;vision_encoder, projector") == (
        (), ("vision_encoder",), ("vision_encoder", "projector"))
    assert sweep.freeze_name(("language_model/layers/.*", "value_head")) == "language_model_layers_._+value_head"
    assert sweep.parse_learning_rates("1e-4, 3e-4") == (1e-4, 3e-4)
    assert sweep.lr_name(2.5e-4) != sweep.lr_name(2e-4) and sweep.lr_name(1e-5) == "lr-1e-05"
    assert sweep.parse_budgets("1,3,5") == (1, 3, 5)
    assert sweep.split_overrides(["steps=3", "rl.updates=2", "eval.episodes=4"]) == (
        ["steps=3"], ["updates=2"], ["episodes=4"])
    for parse, text in ((sweep.parse_learning_rates, "1e-4,fast"), (sweep.parse_learning_rates, "1e-4,1e-4"),
                        (sweep.parse_learning_rates, "-1"), (sweep.parse_budgets, "0,1"),
                        (sweep.parse_budgets, "1,x"), (sweep.parse_freeze_sets, "none;")):
        with pytest.raises(ConfigError):
            parse(text)


@pytest.mark.parametrize("extra, message", [
    (["--budgets", "1,3"], "--budgets needs an RL or evaluation stage"),
    (["rl.updates=2"], r"rl.\* overrides \(updates=2\) need --rl-preset"),
    (["--eval-preset", "eval-tiny", "eval.sampling.modality=vision"], "the eval stage samples modality=vision"),
    (["stepz=2"], "unknown config key 'stepz'"),
])
def test_bad_sweeps_stop_with_one_sentence(tmp_path, capsys, extra, message):
    assert main(["sweep", "--preset", "sft-tiny", "--out", str(tmp_path), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("memgen sweep: ") and len(error.strip().splitlines()) == 1
    assert __import__("re").search(message, error)


# --- memgen predict's runner mode on three of the grid's SFT checkpoints (same module: it shares their runs and,
# through the fingerprint-keyed caches, the RL programs compiled by the test above) ----------------------------

@pytest.mark.slow
def test_predict_runner_measures_runs_rl_and_reports(grid, tmp_path, capsys):
    from launch.predict import load_checkpoints, predictor_table
    from launch.sft_run import heldout_loss_of_run

    out, _ = grid
    sft_dirs = [out / "sft" / freeze / sweep.lr_name(lr) for freeze, lr in (("none", 1e-3), ("none", 3e-3),
                                                                             ("vision_encoder", 1e-3))]
    argv = ["predict", *map(str, sft_dirs), "rl.updates=1", "rl.eval_episodes=2", "rl.checkpoint.every_steps=1",
            "--out", str(tmp_path), "--rl-preset", "rl-tiny", "--episodes", "2", "--samples", "4", "--budget", "2",
            "--rl-runs", "2"]
    assert main(argv) == 0
    checkpoints = load_checkpoints([tmp_path / "checkpoints.jsonl"])
    assert [c["name"] for c in checkpoints] == [f"{d.parent.name}_{d.name}" for d in sft_dirs]
    for checkpoint, sft_dir in zip(checkpoints, sft_dirs):
        # the held-out loss is the SFT run's own final held-out evaluation, recomputed from its final/ policy
        last = [r for r in read_metrics(sft_dir) if r.get("heldout_loss") is not None][-1]
        assert checkpoint["heldout_loss"] == pytest.approx(last["heldout_loss"], rel=1e-5)
        assert checkpoint["heldout_loss"] == heldout_loss_of_run(sft_dir)["loss"]
        curve = [checkpoint["pass_at_k"][k] for k in ("1", "2", "4")]
        assert all(0 <= a <= b <= 1 for a, b in zip(curve, curve[1:]))
        run_dir = tmp_path / "runs" / checkpoint["name"]
        pre, *posts = read_metrics(run_dir)  # two RL runs (seeds 0 and 1), one record each
        assert [r["arm"] for r in (pre, *posts)] == ["sft", "rl", "rl"] and pre["n"] == posts[0]["n"] == 2
        assert pre["success"] == checkpoint["sft_success"]
        assert checkpoint["post_rl_runs"] == [r["success"] for r in posts] and checkpoint["post_rl_n"] == 2
        assert checkpoint["post_rl_success"] == pytest.approx(np.mean(checkpoint["post_rl_runs"]))
        assert json.loads((run_dir / "rl-seed1" / "config.json").read_text())["seed"] == 1
        assert pre["verify_budget"] == 2 and pre["pass_at_k"] == checkpoint["pass_at_k"]
        rl_config = json.loads((run_dir / "rl" / "config.json").read_text())
        assert rl_config["init"] == str(sft_dir) and (run_dir / "rl" / "final").is_dir()
    payload = json.loads((tmp_path / "predict.json").read_text())
    assert payload["post_rl_noise"]["source"] == "runs" and payload["post_rl_noise"]["runs"] == 2
    rows = payload["rows"]
    assert [r["predictor"] for r in rows] == [r.predictor for r in predictor_table(checkpoints)] == [
        "sft_success", "heldout_loss", "pass@1", "pass@2", "pass@4"]
    assert (tmp_path / "predict_heldout_loss.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # measured: nothing runs again
    assert capsys.readouterr().out.count("(measured)") == len(sft_dirs)

    # one RL run: the first of the two above (seed 0), measured already
    assert main(argv[:-2] + ["--rl-runs", "1"]) == 0
    assert capsys.readouterr().out.count("(measured)") == len(sft_dirs)
    single = load_checkpoints([tmp_path / "checkpoints.jsonl"])
    assert [c["post_rl_success"] for c in single] == [c["post_rl_runs"][0] for c in checkpoints]
    assert all("post_rl_runs" not in c for c in single)
    # a cache as written before the RL runs were cached one by one ({"spec", "checkpoint"}) reads back from the
    # run's metrics.jsonl; then a third RL run is the only thing that runs
    run_dir = tmp_path / "runs" / checkpoints[0]["name"]
    cache = json.loads((run_dir / "measurements.json").read_text())
    (run_dir / "measurements.json").write_text(json.dumps({"spec": cache["spec"], "checkpoint": single[0]}))
    assert main(argv[:-2] + ["--rl-runs", "1"]) == 0
    assert capsys.readouterr().out.count("(measured)") == len(sft_dirs)
    assert load_checkpoints([tmp_path / "checkpoints.jsonl"]) == single
    assert main(argv[:-2] + ["--rl-runs", "3"]) == 0
    log = capsys.readouterr().out
    assert log.count("(run 3 of 3, seed 2)") == len(sft_dirs) and "before RL" not in log
    # the downgraded cache forgot seed 1's evaluation: its finished RL run is evaluated again, to the same result
    assert log.count("(run 2 of 3, seed 1)") == 1
    three = load_checkpoints([tmp_path / "checkpoints.jsonl"])
    assert [c["post_rl_runs"][:2] for c in three] == [c["post_rl_runs"] for c in checkpoints]


def test_predict_runner_refuses_unfinished_checkpoints(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--rl-preset", "rl-tiny"]) == 2
    assert "is not a finished `memgen sft` run directory" in capsys.readouterr().err
