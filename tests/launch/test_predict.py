"""memgen predict: R^2 and Spearman against scipy.stats on synthetic checkpoints (with ties), the clear messages for
too few checkpoints, the input formats, and the command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from launch import predict
from launch.metrics_schema import eval_record
from launch.predict import (PredictError, linear_fit, load_checkpoints, predictor_table, spearman,
                            spearman_interval, target_noise)
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


def test_the_spearman_interval_covers_the_population_rho_95_percent_of_the_time():
    """Bonett and Wright's interval over 12 checkpoints drawn from a bivariate normal of correlation 0.6, whose
    population Spearman correlation is (6 / pi) asin(0.3); also its edge cases."""
    rng = np.random.default_rng(0)
    population = 6 / np.pi * np.arcsin(0.3)
    covered = []
    for _ in range(3000):
        x, y = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=12).T
        low, high = spearman_interval(spearman(x, y)[0], 12)
        covered.append(low <= population <= high)
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)
    assert all(math.isnan(v) for v in spearman_interval(0.5, 3) + spearman_interval(math.nan, 10))
    assert spearman_interval(-1.0, 8) == (-1.0, -1.0)
    low, high = spearman_interval(0.0, 28)  # symmetric, half-width 1.96 / 5 on the z scale
    assert low == pytest.approx(-high) and high == pytest.approx(math.tanh(1.959964 / 5), rel=1e-5)


def test_target_noise_separates_measurement_noise_from_the_checkpoints_spread():
    """Post-RL success measured on n instances per checkpoint (binomial draws of known true rates): the
    between-checkpoint variance estimate is unbiased for the true rates' variance, and ~0 when the rates are
    equal; the reliability is about the R^2 of a line through the true rates."""
    rng = np.random.default_rng(1)
    true = np.linspace(0.2, 0.5, 12)
    between, reliabilities, r2 = [], [], []
    for _ in range(2000):
        measured = rng.binomial(256, true) / 256
        noise = target_noise([{"post_rl_success": m, "post_rl_n": 256} for m in measured])
        between.append(noise.between_variance)
        reliabilities.append(noise.reliability)
        r2.append(linear_fit(true, measured)[2])
    assert np.mean(between) == pytest.approx(true.var(ddof=1), rel=0.03)
    assert np.mean(reliabilities) == pytest.approx(np.mean(r2), abs=0.03)
    equal = [target_noise([{"post_rl_success": m, "post_rl_n": 64} for m in rng.binomial(64, 0.3, 12) / 64])
             for _ in range(2000)]
    assert abs(np.mean([n.between_variance for n in equal])) < 0.1 * 0.3 * 0.7 / 64
    assert target_noise(_synthetic(0, count=4)) is None  # no post_rl_n
    with pytest.raises(PredictError, match="post_rl_n must be at least 2"):
        target_noise([{"post_rl_success": 0.5, "post_rl_n": 1}] * 3)


def test_target_noise_from_several_rl_runs_counts_rls_randomness():
    """Each RL run of a checkpoint lands at its true rate plus run-to-run noise (sd 5 points), then is measured on
    256 instances: with 3 runs per checkpoint the between-checkpoint variance is unbiased for the true rates'
    variance, while the binomial estimate from post_rl_n alone counts RL's randomness as signal."""
    rng = np.random.default_rng(2)
    true = np.linspace(0.2, 0.4, 12)
    from_runs, from_counts = [], []
    for _ in range(1000):
        runs = rng.binomial(256, np.clip(true[:, None] + rng.normal(0, 0.05, (12, 3)), 0, 1)) / 256
        checkpoints = [{"post_rl_success": float(r.mean()), "post_rl_runs": r.tolist(), "post_rl_n": 256}
                       for r in runs]
        noise = target_noise(checkpoints)
        assert noise.source == "runs" and noise.runs == 3
        from_runs.append(noise.between_variance)
        # one RL run per checkpoint, measured on 256 instances: only the binomial noise is known
        from_counts.append(target_noise([{"post_rl_success": r[0], "post_rl_n": 256} for r in runs]).between_variance)
    assert np.mean(from_runs) == pytest.approx(true.var(ddof=1), rel=0.05)
    assert np.mean(from_counts) == pytest.approx(true.var(ddof=1) + 0.05 ** 2, rel=0.05)  # RL's variance as signal
    bad = [{"name": "a", "post_rl_success": 0.5, "post_rl_runs": [0.2, 0.4]}] * 3
    with pytest.raises(PredictError, match="'a''s 'post_rl_runs' average 0.300000, not its post_rl_success 0.5"):
        target_noise(bad)
    with pytest.raises(PredictError, match="'post_rl_runs' must be a list of the RL runs' successes, got 0.5"):
        target_noise([{"name": "a", "post_rl_success": 0.5, "post_rl_runs": 0.5}] * 3)
    same = [{"post_rl_success": 0.25, "post_rl_n": 64}] * 3  # nothing spreads: no noise sentence
    assert math.isnan(target_noise(same).reliability) and predict.noise_markdown(target_noise(same), same) == []


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
    assert loaded[3]["post_rl_n"] == 64 and "post_rl_n" not in loaded[0]  # the RL record's instances
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
    payload = json.loads((out / "predict.json").read_text())
    assert [r["predictor"] for r in payload["rows"]] == ["sft_success", "heldout_loss", "pass@1", "pass@64"]
    assert all(r["rho_low"] <= r["spearman_rho"] <= r["rho_high"] for r in payload["rows"])
    assert payload["post_rl_noise"] is None and "spreads over the checkpoints" not in (out / "predict.md").read_text()
    assert "| pass@64 | 8 |" in capsys.readouterr().out
    # with the instances each post-RL success is over: the noise sentence and its numbers
    counted = [dict(c, post_rl_n=100) for c in _synthetic(0, count=8)]
    (tmp_path / "counted.json").write_text(json.dumps(counted))
    assert predict.run(_parse([str(tmp_path / "counted.json"), "--out", str(tmp_path / "counted")])) == 0
    noise = json.loads((tmp_path / "counted" / "predict.json").read_text())["post_rl_noise"]
    assert noise == pytest.approx(dataclasses.asdict(target_noise(counted)))
    assert f"~{100 * noise['reliability']:.0f}% of the spread" in (tmp_path / "counted" / "predict.md").read_text()


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
