"""`memgen demo` and the CPU miniature (launch/miniature.py): the whole pipeline on the tiny model, the base data
mixture, equal compute between the arms, and evaluation hands that no stage ever trains on."""

import dataclasses
import json
import re

import pytest

from launch.cli import main
from launch.config import ConfigError, apply_overrides, get_preset
from launch.miniature import (MiniatureConfig, MiniatureError, base_cells, check_disjoint, rank_multisets,
                              rl_arm_config, rl_training_hands, training_and_evaluation_hands, verdict_sentences)
from launch.rl_common import task_config
from launch.rl_run import update_episodes
from launch.report import ChangeRow, paper_pattern_sentences
from tasks.general_points import Card, read_jsonl


def rank_multisets_of(conversations):
    """The hands of written conversations (their prompts' "Cards: ..." labels) as rank multisets."""
    labels = {"A": 1, "J": 11, "Q": 12, "K": 13, **{str(r): r for r in range(2, 11)}}
    return {tuple(sorted(labels[label.strip()] for label in re.search(r"Cards: ([^.]*)\.", c[0].content).group(1)
                         .split(","))) for c in conversations}


def _eval_records(records, arm):
    return [r for r in records if r["kind"] == "eval" and r["arm"] == arm]


def test_demo_runs_the_tiny_miniature_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "miniature-tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "J=Q=K=10" in printed and "(correct)" in printed  # the sample episode
    assert "[miniature] base stage" in printed and "report.md" in printed
    for name in ("report.md", "metrics.jsonl", "summary.json", "miniature.json", "fig5_gp-l_success_vs_gflops.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "## Results" in report and "Rule-OOD" in report

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"base", "rl-seed0", "sft-seed0"}
    rl, sft = _eval_records(records, "rl"), _eval_records(records, "sft")
    for arm in (rl, sft):
        assert {r["split"] for r in arm} == {"in_distribution", "rule_ood"}
        assert {r["step"] for r in arm} >= {0} and max(r["step"] for r in arm) > 0
        assert all(r["verify_budget"] == 2 and r["n"] == 8 for r in arm)
    # Both arms start from the same base and evaluate the same held-out hands greedily: identical step-0 results.
    start = {arm: {r["split"]: (r["success"], r["episode_length"], r["gflops"]) for r in records_
                   if r["step"] == 0} for arm, records_ in (("rl", rl), ("sft", sft))}
    assert start["rl"]["in_distribution"][:2] == start["sft"]["in_distribution"][:2]
    assert start["rl"]["rule_ood"][:2] == start["sft"]["rule_ood"][:2]
    # The starting compute is the base's 6 N D_init in both arms (N differs only by the RL value head).
    assert start["rl"]["rule_ood"][2] == pytest.approx(start["sft"]["rule_ood"][2], rel=0.05)
    assert start["sft"]["rule_ood"][2] > 0

    # The disjointness check ran on the hands the stages really trained on: the hands in the written data files
    # are exactly the rebuilt ones check_disjoint compared with the evaluation hands.
    config = get_preset("miniature-tiny")
    rebuilt, evaluation = training_and_evaluation_hands(config)
    for name, key in (("base.jsonl", "base"), ("sft_in_distribution.jsonl", "sft")):
        written = rank_multisets_of(read_jsonl(out / "data" / name))
        assert written == rank_multisets(rebuilt[key]), name
        assert not written & set().union(*(rank_multisets(hands) for hands in evaluation.values()))

    # `memgen report DEMO_OUT` reads the combined, stage-tagged metrics.jsonl (and miniature.json) as one run.
    assert {r["arm"] for r in records if r["stage"] == "base"} == {"base"}
    assert main(["report", str(out), "--out", str(tmp_path / "figs")]) == 0
    replotted = (tmp_path / "figs" / "report.md").read_text()
    assert (tmp_path / "figs" / "fig5_gp-l_success_vs_gflops.png").is_file()
    assert "| miniature.json |" in replotted and "| GP-L | rule OOD | SFT |" in replotted
    assert "| GP-L | rule OOD | RL |" in replotted

    summary = json.loads((out / "summary.json").read_text())
    train = [r for r in records if r["kind"] == "train" and r["stage"] == "sft-seed0"]
    rl_final = max(r["gflops"] for r in records if r["kind"] == "train" and r["stage"] == "rl-seed0")
    sft_final = max(r["gflops"] for r in train)
    assert summary["sft_steps"] >= 1
    # Equal compute up to the rounding to whole SFT steps.
    sft_step_gflops = (sft_final - start["sft"]["rule_ood"][2]) / summary["sft_steps"]
    assert abs(rl_final - sft_final) <= sft_step_gflops * 0.5 + 0.05 * rl_final
    assert summary["distinct_rank_multisets"]["train:base"] > 0

    # Re-running the finished demo resumes: nothing trains again, the outputs are rewritten.
    assert main(["demo", "--preset", "miniature-tiny", "--out", str(out)]) == 0
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(again) == len(records)


def test_a_changed_config_refuses_an_existing_directory(tmp_path, capsys):
    (tmp_path / "miniature.json").write_text(json.dumps({"num_cards": 4}))
    assert main(["demo", "--preset", "miniature-tiny", "--out", str(tmp_path)]) == 2
    assert "another config" in capsys.readouterr().err


def test_a_kl_penalty_and_the_critic_settings_reach_the_rl_arms_ppo_and_half_a_penalty_is_refused(tmp_path):
    config = apply_overrides(get_preset("miniature", kind=MiniatureConfig), ["rl.kl_mode=k3_loss", "rl.kl_coef=0.05"])
    ppo = rl_arm_config(config, tmp_path, seed=0).ppo
    assert (ppo.kl_mode, ppo.kl_coef) == ("k3_loss", 0.05)
    assert rl_arm_config(get_preset("miniature", kind=MiniatureConfig), tmp_path, seed=0).ppo.kl_mode is None
    detached = apply_overrides(get_preset("miniature", kind=MiniatureConfig),
                               ["rl.value_loss_trains_trunk=false", "rl.value_lr_scale=100", "rl.critic_warmup=4",
                                "rl.value_clip_eps=null"])
    assert rl_arm_config(detached, tmp_path, seed=0).ppo.value_loss_trains_trunk is False
    assert rl_arm_config(detached, tmp_path, seed=0).ppo.value_lr_scale == 100
    assert rl_arm_config(detached, tmp_path, seed=0).critic_warmup == 4
    assert rl_arm_config(detached, tmp_path, seed=0).ppo.value_clip_eps is None
    assert rl_arm_config(config, tmp_path, seed=0).ppo.value_clip_eps == 0.1
    assert rl_arm_config(config, tmp_path, seed=0).ppo.value_loss_trains_trunk is True
    for critic in ("rl.value_loss_trains_trunk=false", "rl.critic_warmup=2"):
        with pytest.raises(ConfigError, match="GRPO has no critic"):
            apply_overrides(get_preset("miniature", kind=MiniatureConfig), ["rl.algorithm=grpo", critic])
    with pytest.raises(ConfigError, match="rl.critic_warmup=13 must be between 0 and rl.updates=12"):
        apply_overrides(get_preset("miniature", kind=MiniatureConfig), ["rl.critic_warmup=13"])
    # PPOConfig's own checks, GeneralPoints' and the counts' run when the miniature is configured, not when a stage
    # starts (a traceback then)
    for bad, message in ((["rl.value_clip_eps=-1"], "value_clip_eps must be positive"),
                         (["rl.lr=1e-7"], "final_learning_rate <= learning_rate"),
                         (["num_cards=7"], "num_cards must be an integer 1..6, got 7"),
                         (["rl.episodes_per_update=0"], "rl.episodes_per_update=0 must be at least 1"),
                         (["sft.examples=0"], "sft.examples=0 must be at least 1"),
                         (["base.targets=[]"], r"base.targets=\[\] needs at least one target"),
                         (["eval_episodes=0"], "eval_episodes=0 must be at least 1")):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(get_preset("miniature", kind=MiniatureConfig), bad)
    for half in (["rl.kl_coef=0.05"], ["rl.kl_mode=k1_reward"]):
        with pytest.raises(ConfigError, match="needs both rl.kl_mode"):
            apply_overrides(get_preset("miniature", kind=MiniatureConfig), half)


def test_a_grpo_arm_trains_groups_of_one_hand_with_the_ppo_arms_clip_and_optimizer(tmp_path):
    preset = get_preset("miniature", kind=MiniatureConfig)
    config = apply_overrides(preset, ["rl.algorithm=grpo", "rl.group_size=4", "rl.kl_mode=k3_loss", "rl.kl_coef=0.1"])
    arm, ppo_arm = rl_arm_config(config, tmp_path, seed=3), rl_arm_config(preset, tmp_path, seed=3)
    assert arm.algorithm == "grpo" and arm.grpo.group_size == 4 and arm.grpo.kl_coef == 0.1
    assert arm.grpo.clip_eps == ppo_arm.ppo.clip_eps == 0.1
    assert (arm.grpo.epochs, arm.grpo.minibatch_size) == (ppo_arm.ppo.epochs, ppo_arm.ppo.minibatch_size)
    assert arm.ppo.kl_mode is None and arm.ppo.learning_rate == ppo_arm.ppo.learning_rate
    # The hands check_disjoint sees are the ones `memgen rl` plays: one hand per group of 4 consecutive episodes.
    hands = rl_training_hands(config, seed=3)
    assert len(hands) == config.rl.updates * config.rl.episodes_per_update
    assert all(len({tuple(h) for h in hands[i:i + 4]}) == 1 for i in range(0, len(hands), 4))
    gp = task_config(arm.episodes)
    assert [s.hand for s in update_episodes(arm, gp, 5)] == hands[5 * 32:6 * 32]
    assert len(rank_multisets(hands)) > len(hands) // 8  # distinct hands across groups
    for bad, match in ((["rl.algorithm=grpo", "rl.group_size=5"], "multiple of rl.group_size"),
                       (["rl.algorithm=grpo", "rl.kl_mode=k1_reward", "rl.kl_coef=0.1"], "kl_mode=k3_loss")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(preset, bad)


def test_base_mixture_covers_both_rules_all_targets_and_revisions():
    config = get_preset("miniature", MiniatureConfig)
    cells = base_cells(config, 9600)
    assert sum(count for _, _, count in cells) == 9600
    rules = {gp.face_cards for gp, _, _ in cells}
    targets = {gp.target for gp, _, _ in cells}
    assert rules == {"ten", "distinct"} and targets == set(config.base.targets)
    revisions = sum(count for _, kind, count in cells if kind == "revision")
    assert revisions / 9600 == pytest.approx(config.base.revision_share, abs=0.01)
    faces = sum(count for gp, _, count in cells if gp.require_face_card)
    assert faces / 9600 == pytest.approx(config.base.face_card_share, abs=0.01)
    assert all(gp.hand_pool == "train" and gp.suits == "mixed" for gp, _, _ in cells)


@pytest.mark.parametrize("preset", ["miniature", "miniature-demo"])
def test_evaluation_hands_never_occur_in_any_training_set(preset):
    config = get_preset(preset, MiniatureConfig)
    config = dataclasses.replace(config, base=dataclasses.replace(config.base, steps=60))  # keep the test quick
    train, evaluation = training_and_evaluation_hands(config)
    counts = check_disjoint(train, evaluation)
    assert all(counts[f"train:{name}"] > 0 for name in train) and all(counts[f"eval:{n}"] > 0 for n in evaluation)
    ood = [hand for name, hands in evaluation.items() if name.startswith("rule_ood") for hand in hands]
    assert all(any(card.rank >= 11 for card in hand) for hand in ood)
    assert len(evaluation) == 2 * len(config.seeds)


def test_check_disjoint_names_a_shared_hand():
    hand = (Card(3, "S"), Card(12, "H"), Card(5, "C"))
    same_ranks = (Card(5, "D"), Card(3, "C"), Card(12, "S"))  # another order and suits: the same hand
    assert rank_multisets([hand]) == rank_multisets([same_ranks])
    with pytest.raises(MiniatureError, match="shares 1 hands"):
        check_disjoint({"base": [hand]}, {"rule_ood-seed0": [same_ranks]})
    assert check_disjoint({"base": [hand]}, {"rule_ood-seed0": [(Card(1, "S"),) * 3]}) == {
        "train:base": 1, "eval:rule_ood-seed0": 1}


def test_the_vision_variant_adds_visual_ood_and_keeps_its_hands_out_of_training():
    """modality=vision: images in every prompt (compact vision template), the visual-OOD split (red suits), and the
    same hand-pool guarantee. (The whole vision pipeline ran end to end by hand: `memgen demo --preset
    miniature-tiny modality=vision`; it is too slow for CI on 2 cores.)"""
    from launch.config import resolve
    from launch.miniature import episode_config, split_names, task_config, task_name
    from tasks.general_points import reset

    config = resolve("miniature-tiny", ["modality=vision"], kind=MiniatureConfig)
    assert task_name(config) == "gp-vl" and split_names(config) == ["in_distribution", "rule_ood", "visual_ood"]
    episodes = episode_config(config, temperature=0.0)
    assert episodes.modality == "vision" and episodes.hand_pool == "train"
    prompt = reset(task_config(config), seed=0).conversation[0]
    assert prompt.image is not None and "The image shows 3 cards" in prompt.content
    train, evaluation = training_and_evaluation_hands(config)
    check_disjoint(train, evaluation)
    assert any(name.startswith("visual_ood") for name in evaluation)
    red = [hand for name, hands in evaluation.items() if name.startswith("visual_ood") for hand in hands]
    assert red and all(card.suit in "HD" for hand in red for card in hand)


# --- the verdict: the paper's claim, decided by launch.report.paper_claim ---------------------------------------

def _row(arm, split, initial, change, change_se=0.02):
    return ChangeRow(task="gp-l", split=split, arm=arm, verify_budget=None, metric="success", seeds=1,
                     initial_step=0, final_step=0 if change is None else 12, initial_gflops=10.0, final_gflops=20.0,
                     initial=initial, initial_se=0.01, final=initial + (change or 0.0), final_se=0.01,
                     seed_sd_final=float("nan"), change=change, change_se=None if change is None else change_se,
                     seed_sd_change=float("nan"))


def _rows(sft_ood, rl_ood):
    return [_row("sft", "in_distribution", 0.5, 0.2), _row("rl", "in_distribution", 0.5, 0.1),
            _row("sft", "rule_ood", 0.4, sft_ood), _row("rl", "rule_ood", 0.4, rl_ood)]


def test_verdict_states_the_claim_when_sft_drops_and_rl_is_flat():
    found, versus, claim = verdict_sentences(_rows(-0.15, 0.01))
    assert found == ("Rule-OOD success from the base to the last compute point: SFT changed by -15.0 points "
                     "(2 SE = 4.0), significantly down; RL changed by +1.0 points (2 SE = 4.0).")
    assert versus.startswith("At the last compute point (equal GFLOPs) rule-OOD success is RL 41.0% vs SFT 25.0%: "
                             "RL - SFT = +16.0 points") and versus.endswith("a significant difference.")
    assert claim == ("At this scale the miniature reproduces the paper's pattern (SFT OOD down, RL OOD up/flat) on "
                     "rule-OOD at equal training compute: SFT went down and RL showed no significant change.")


@pytest.mark.parametrize("sft_ood, rl_ood, observed", [
    (-0.01, 0.10, "SFT showed no significant change and RL went up"),
    (-0.15, -0.15, "SFT went down and RL went down"),
    (-0.15, None, "SFT went down and RL was evaluated only once"),
])
def test_verdict_says_what_was_found_when_the_claim_is_not_supported(sft_ood, rl_ood, observed):
    claim = verdict_sentences(_rows(sft_ood, rl_ood))[-1]
    assert claim == (f"The paper's pattern (SFT OOD down, RL OOD up/flat) is not established on rule-OOD by this "
                     f"run: {observed}; the numbers above are what was measured.")
    assert "reproduces" not in " ".join(verdict_sentences(_rows(sft_ood, rl_ood)))


def test_verdict_without_both_arms_on_rule_ood():
    assert verdict_sentences(_rows(-0.1, 0.1)[:3]) == [
        "Rule-OOD was not evaluated for both arms, so there is no claim to check."]


@pytest.mark.parametrize("sft_ood", [-0.15, -0.03, 0.0, 0.1, None])
@pytest.mark.parametrize("rl_ood", [-0.15, -0.01, 0.01, 0.15, None])
def test_verdict_and_report_reading_never_disagree(sft_ood, rl_ood):
    """One report.md holds both the miniature's verdict and report's reading: they must make the same call."""
    rows = _rows(sft_ood, rl_ood)
    verdict = verdict_sentences(rows)[-1]
    [reading] = paper_pattern_sentences(rows)
    assert ("reproduces the paper's pattern" in verdict) == ("not established" not in reading)
    assert ("not established" in verdict) == ("not established" in reading)


def test_the_sample_episode_shows_a_wrong_and_a_right_answer_with_their_verdicts(capsys):
    import re

    from launch.config import resolve
    from launch.demo import show_sample_episode
    from launch.miniature import MiniatureConfig

    show_sample_episode(resolve("miniature-tiny", [], kind=MiniatureConfig))
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    speakers = [line.split(":")[0] for line in lines[1:]]
    assert speakers == ["user", "assistant", "verifier", "user", "assistant", "verifier"], lines
    assert re.fullmatch(r"verifier: +reward -[0-9.]+ \((wrong_value|illegal_numbers|illegal_formula)\)", lines[3])
    assert lines[4].startswith("user:") and len(lines[4]) > len("user:") + 10  # the verifier's feedback turn
    assert re.fullmatch(r"verifier: +reward \+5 \(correct\)", lines[6])


def test_the_quagmires_study_checkpoints_measure_their_loss_on_held_out_in_distribution_answers(tmp_path):
    """experiments/quagmires_miniature.py: every SFT checkpoint is the miniature's SFT arm at its own learning rate
    and length, with a held-out set of the arm's own prompt format on held-out-pool hands (no training question)."""
    from experiments.quagmires_miniature import checkpoint_config, heldout_conversations
    from launch.expert_data import load_expert_data, prompt_key
    from launch.miniature import cell_data, sft_arm_cells, sft_arm_config
    from tasks.general_points import write_jsonl

    config = get_preset("miniature", kind=MiniatureConfig)
    train = cell_data([(gp, kind, 200) for gp, kind, _ in sft_arm_cells(config)], seed=1)
    data = str(write_jsonl(train, tmp_path / "train.jsonl"))
    heldout = heldout_conversations(config, 64)
    heldout_file = str(write_jsonl(heldout, tmp_path / "heldout.jsonl"))
    assert heldout[0][0].content.split("Cards:")[0] == train[0][0].content.split("Cards:")[0]  # the same prompt
    assert rank_multisets_of(heldout).isdisjoint(rank_multisets_of(train))
    run = checkpoint_config(config, tmp_path / "base", data, heldout_file, lr=3e-4, steps=30, heldout_examples=64)
    arm = sft_arm_config(config, tmp_path / "base", data, seed=0, steps=30)
    assert run.optimizer.lr == 3e-4 and run.optimizer.schedule == arm.optimizer.schedule
    assert (run.steps, run.batch_size, run.model, run.eval_every, run.eval_examples) == (30, 32, arm.model, 30, 64)
    loaded = load_expert_data(task=run.task, modality=run.modality, seed=run.seed, train_examples=0,
                              eval_examples=run.eval_examples, path=run.data.path, heldout_path=run.data.heldout_path)
    assert [prompt_key(c) for c in loaded.heldout] == [prompt_key(c) for c in heldout]


def test_the_miniature_names_its_templates_without_a_path_and_they_give_the_files_prompts(tmp_path):
    """Run directories store the episode config; a path to the checkout's templates there made them refuse to
    resume from another checkout ("holds a run with another config: episodes")."""
    from importlib import resources

    from launch.miniature import task_config
    from tasks.general_points import prompt_text
    from tasks.general_points.prompts import feedback_text

    config = get_preset("miniature", kind=MiniatureConfig)
    episodes = rl_arm_config(config, tmp_path, seed=0).episodes
    assert episodes.prompt_template == "packaged:compact.txt"
    assert episodes.feedback_template == "packaged:compact_feedback.txt"
    gp = task_config(config)
    files = resources.files("tasks.general_points.templates")
    by_path = dataclasses.replace(gp, prompt_template=str(files / "compact.txt"),
                                  feedback_template=str(files / "compact_feedback.txt"))
    labels = ["A", "7", "K"]
    assert prompt_text(labels, gp) == prompt_text(labels, by_path) and "Make 24" in prompt_text(labels, gp)
    assert feedback_text("wrong", gp) == feedback_text("wrong", by_path)
    with pytest.raises(ValueError, match="no packaged template 'nope.txt'"):
        prompt_text(labels, dataclasses.replace(gp, prompt_template="packaged:nope.txt"))
