"""memgen predict: R^2 and Spearman against scipy.stats on synthetic checkpoints (with ties), the clear messages for
too few checkpoints, the input formats, and the command."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from launch import predict
from launch.metrics_schema import eval_record
from launch.predict import PredictError, linear_fit, load_checkpoints, predictor_table, spearman
from tests.launch.synthetic_runs import write_run


def _synthetic(seed: int, count: int = 15, round_to: int | None = None) -> list[dict]:
    """Post-RL success driven by a latent quality q: pass@64 and held-out loss follow q, SFT success is noise."""
    rng = np.random.default_rng(seed)
    checkpoints = []
    for i in range(count):
        q = rng.uniform()
        values = dict(post_rl=np.clip(0.2 + 0.5 * q + rng.normal(0, 0.05), 0, 1), sft=rng.uniform(0.2, 0.6),
                      loss=2 - q + rng.normal(0, 0.1), p1=rng.uniform(0, 0.3), p64=np.clip(0.3 + 0.6 * q, 0, 1))
        if round_to is not None:  # coarse values: many ties
            values = {k: round(float(v), round_to) for k, v in values.items()}
        checkpoints.append({"name": f"ck{i}", "post_rl_success": float(values["post_rl"]),
                            "sft_success": float(values["sft"]), "heldout_loss": float(values["loss"]),
                            "pass_at_k": {"1": float(values["p1"]), "64": float(values["p64"])}})
    return checkpoints


@pytest.mark.parametrize("seed, round_to", [(0, None), (1, None), (2, 1), (3, 1)])
def test_rows_match_scipy_linregress_and_spearmanr(seed, round_to):
    checkpoints = _synthetic(seed, round_to=round_to)
    rows = predictor_table(checkpoints)
    assert [row.predictor for row in rows] == ["sft_success", "heldout_loss", "pass@1", "pass@64"]
    y = np.array([c["post_rl_success"] for c in checkpoints])
    columns = {"sft_success": [c["sft_success"] for c in checkpoints],
               "heldout_loss": [c["heldout_loss"] for c in checkpoints],
               "pass@1": [c["pass_at_k"]["1"] for c in checkpoints],
               "pass@64": [c["pass_at_k"]["64"] for c in checkpoints]}
    for row in rows:
        x = np.array(columns[row.predictor])
        if round_to is not None:
            assert len(np.unique(x)) < len(x)  # the case really has ties
        fit = stats.linregress(x, y)
        reference = stats.spearmanr(x, y)
        assert row.n == len(checkpoints)
        assert row.r2 == pytest.approx(fit.rvalue ** 2, rel=1e-9)
        assert row.slope == pytest.approx(fit.slope, rel=1e-9)
        assert row.intercept == pytest.approx(fit.intercept, rel=1e-9, abs=1e-12)
        assert row.spearman_rho == pytest.approx(reference.statistic, rel=1e-9)
        assert row.spearman_p == pytest.approx(reference.pvalue, rel=1e-6)
    by_name = {row.predictor: row for row in rows}
    if round_to is None:  # the synthetic story: the proxies predict, SFT success does not
        assert by_name["pass@64"].r2 > 0.8 and by_name["heldout_loss"].spearman_rho < -0.7
        assert by_name["sft_success"].r2 < by_name["pass@64"].r2 - 0.4


def test_linear_fit_and_spearman_on_hand_examples():
    assert linear_fit(np.array([0.0, 1, 2]), np.array([1.0, 3, 5])) == pytest.approx((2.0, 1.0, 1.0))
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 9, 8, 1])) == (-1.0, 0.0)
    rho, p = spearman(np.array([1.0, 1, 2]), np.array([5.0, 6, 7]))  # tied ranks 1.5, 1.5, 3
    assert rho == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert p == pytest.approx(stats.spearmanr([1, 1, 2], [5, 6, 7]).pvalue)


def test_fewer_than_three_checkpoints_is_a_clear_message():
    with pytest.raises(PredictError, match="needs at least 3 checkpoints, got 2"):
        predictor_table(_synthetic(0, count=2))


def test_predictor_on_too_few_checkpoints_or_constant_gets_a_note():
    checkpoints = _synthetic(0, count=5)
    for c in checkpoints[2:]:
        del c["heldout_loss"]
    for c in checkpoints:
        c["predictors"] = {"constant": 0.5}
    rows = {row.predictor: row for row in predictor_table(checkpoints)}
    assert rows["heldout_loss"].n == 2 and math.isnan(rows["heldout_loss"].r2)
    assert "needs 3" in rows["heldout_loss"].note
    assert math.isnan(rows["constant"].r2) and math.isnan(rows["constant"].spearman_rho)
    assert "same for every checkpoint" in rows["constant"].note


def test_bad_checkpoints_are_named():
    checkpoints = _synthetic(0, count=3)
    del checkpoints[1]["post_rl_success"]
    with pytest.raises(PredictError, match="checkpoint 'ck1' has no 'post_rl_success'"):
        predictor_table(checkpoints)
    checkpoints = _synthetic(0, count=3)
    checkpoints[2]["sft_success"] = "high"
    with pytest.raises(PredictError, match="'ck2''s 'sft_success' must be a finite number"):
        predictor_table(checkpoints)


def test_json_jsonl_and_run_directory_inputs_agree(tmp_path):
    checkpoints = _synthetic(5, count=4)
    (tmp_path / "a.json").write_text(json.dumps({"checkpoints": checkpoints[:2]}))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(c) for c in checkpoints[2:3]) + "\n")
    # the fourth as a run directory with sft/ and rl/ subdirectories
    c = checkpoints[3]
    def ev(step, arm, success, **extra):  # noqa: E306
        return eval_record(step=step, gflops=float(step), task="gp-l", split="in_distribution", n=64,
                           success=success, arm=arm, **extra)
    write_run(tmp_path / "ck3" / "sft", [ev(0, "sft", 0.1), ev(5, "sft", c["sft_success"], pass_at_k=c["pass_at_k"],
                                                               heldout_loss=c["heldout_loss"])], None)
    write_run(tmp_path / "ck3" / "rl", [ev(0, "rl", 0.0), ev(9, "rl", c["post_rl_success"])], None)
    loaded = load_checkpoints([tmp_path / "a.json", tmp_path / "b.jsonl", tmp_path / "ck3"])
    assert [x["name"] for x in loaded] == ["ck0", "ck1", "ck2", "ck3"]
    assert predictor_table(loaded) == predictor_table(checkpoints)


def test_run_directory_without_rl_or_with_bad_json(tmp_path):
    write_run(tmp_path / "ck", [eval_record(step=0, gflops=0.0, task="gp-l", split="in_distribution", n=8,
                                            success=0.5, arm="sft")], None)
    with pytest.raises(PredictError, match="no RL-arm evaluation of gp-l on in_distribution"):
        load_checkpoints([tmp_path / "ck"])
    (tmp_path / "bad.jsonl").write_text('{"post_rl_success": 0.1}\n{oops\n')
    with pytest.raises(PredictError, match=r"bad\.jsonl line 2 is not valid JSON"):
        load_checkpoints([tmp_path / "bad.jsonl"])


def _parse(argv):
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_writes_table_json_and_one_scatter_per_predictor(tmp_path, capsys):
    (tmp_path / "ck.json").write_text(json.dumps(_synthetic(0, count=8)))
    assert predict.run(_parse([str(tmp_path / "ck.json"), "--out", str(tmp_path / "out")])) == 0
    out = tmp_path / "out"
    for name in ("predict_sft_success.png", "predict_heldout_loss.png", "predict_pass_at_1.png",
                 "predict_pass_at_64.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            image.verify()
        assert f"]({name})" in (out / "predict.md").read_text()
    rows = json.loads((out / "predict.json").read_text())["rows"]
    assert [r["predictor"] for r in rows] == ["sft_success", "heldout_loss", "pass@1", "pass@64"]
    assert "| pass@64 | 8 |" in capsys.readouterr().out


def test_command_with_two_checkpoints_fails_with_one_sentence(tmp_path, capsys):
    (tmp_path / "ck.json").write_text(json.dumps(_synthetic(0, count=2)))
    assert predict.run(_parse([str(tmp_path / "ck.json"), "--out", str(tmp_path / "out")])) == 2
    assert "needs at least 3 checkpoints, got 2" in capsys.readouterr().err


def test_the_cli_registers_predict_with_one_line(tmp_path, monkeypatch):
    from launch import cli

    monkeypatch.setattr(cli, "COMMANDS", {"predict": ("launch.predict", "predictors of post-RL success")})
    (tmp_path / "ck.jsonl").write_text("\n".join(json.dumps(c) for c in _synthetic(1, count=4)))
    assert cli.main(["predict", str(tmp_path / "ck.jsonl"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "predict.md").exists()
