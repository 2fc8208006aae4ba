"""experiments/: the critic-ceiling script end to end on a tiny random policy (its pieces: the returns against a
hand computation; rl.baselines has the statistics' own tests), and bad settings of both scripts as one sentence
before anything runs (the Quagmires study's checkpoint grid is tested in test_demo.py)."""

import json

import numpy as np
import pytest

from experiments import critic_ceiling, quagmires_miniature


def test_first_state_returns_discount_the_episode_and_stop_at_its_end():
    rewards = np.array([[-1.0, 5.0, 0.0], [5.0, 0.0, 0.0], [-1.0, -1.0, 7.0]])
    dones = np.array([[False, True, False], [True, False, False], [False, False, False]])
    valid = np.array([[True, True, False], [True, False, False], [True, True, True]])
    returns = critic_ceiling.first_state_returns(rewards, dones, valid, gamma=0.9)
    np.testing.assert_allclose(returns, [-1 + 0.9 * 5, 5.0, -1 - 0.9 + 0.81 * 7], rtol=1e-6)


def test_the_script_measures_a_policy_and_adds_a_row_per_policy(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--preset", "miniature-tiny", "--hands", "4", "--plays", "2", "--batch", "4",
            "--groups", "2,4", "--ridges", "10"]
    assert critic_ceiling.main([*argv, "--policy", "tiny"]) == 0
    assert critic_ceiling.main([*argv, "--policy", "tiny", "--seed", "1"]) == 0  # replaces its row
    rows = json.loads((tmp_path / "critic.json").read_text())
    assert [row["policy"] for row in rows] == ["tiny"]
    row = rows[0]
    assert (row["hands"], row["plays"], set(row["group_share"]), set(row["linear_probe"])) == (4, 2, {"2", "4"},
                                                                                                {"10"})
    assert 0.0 <= row["success"] <= 1.0 and 0.0 <= row["critic_ceiling"] <= 1.0 and row["critic_ceiling_se"] >= 0
    table = (tmp_path / "critic.md").read_text().splitlines()
    assert len(table) == 3 and "GRPO g=4" in table[0] and table[2].startswith("| tiny | 4 x 2 |")


@pytest.mark.parametrize("script, argv, message", [
    (critic_ceiling, ["--policy", "tiny", "rl.no_such_knob=1"], "no_such_knob"),
    (critic_ceiling, ["--policy", "tiny", "--plays", "3"], "--plays (3) must be at least 2 and divide --batch"),
    (critic_ceiling, ["--policy", "tiny", "--ridges", "0"], "--ridges item '0' must be a positive number"),
    (quagmires_miniature, ["rl.no_such_knob=1"], "no_such_knob"),
    (quagmires_miniature, ["--steps", "30,30"], "--steps '30,30' must be distinct positive integers"),
    (quagmires_miniature, ["--lrs", "1e-4,fast"], "--lrs item 'fast' is not a number"),
    (quagmires_miniature, ["--rl-runs", "0"], "--rl-runs must be at least 1 and --max-rows at least 0, got 0"),
])
def test_bad_settings_stop_with_one_sentence(tmp_path, capsys, script, argv, message):
    assert script.main(["--out", str(tmp_path / "out"), "--preset", "miniature-tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{script.PROG}: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before anything ran
