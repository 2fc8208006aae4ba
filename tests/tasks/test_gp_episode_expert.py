"""GeneralPoints prompts (rule, target, labels; template overrides), multi-turn episodes (feedback turns,
budget, image on the first turn only) and expert data (optimal and sub-optimal, JSONL round trip)."""

import json

import numpy as np
import pytest

from tasks.common import Message
from tasks.general_points import (Card, GeneralPointsConfig, expert_conversations, expert_response, first_prompt,
                                  read_jsonl, reset, sample_hands, step, suboptimal_trajectories, verify,
                                  write_jsonl)

HAND = (Card(11, "S"), Card(3, "C"), Card(8, "S"), Card(1, "C"))
WRONG = json.dumps({"cards": ["J", "3", "8", "A"], "formula": "10 + 3 + 8 + 1"})
RIGHT = json.dumps({"cards": ["J", "3", "8", "A"], "formula": "(10 - 1) * 8 / 3 = 24"})


def test_prompts_state_rule_target_and_cards():
    text = first_prompt(HAND, GeneralPointsConfig())[0]
    assert text.role == "user" and text.image is None
    assert "J, 3, 8, A" in text.content and "24" in text.content and "count as 10" in text.content
    for key in ('"cards"', '"number"', '"formula"', "[Task Description]", "[Input]", "[Output]"):
        assert key in text.content
    ood = first_prompt(HAND, GeneralPointsConfig(face_cards="distinct", target=30))[0].content
    assert "J counts as 11" in ood and "K counts as 13" in ood and "30" in ood and "count as 10" not in ood
    vision = first_prompt(HAND, GeneralPointsConfig(modality="vision"))[0]
    assert vision.image.shape == (560, 1120, 3) and "image" in vision.content
    assert "J, 3, 8, A" not in vision.content


def test_template_overrides(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Make ${target} from ${cards} ($$5 prize). ${rule}")
    feedback = tmp_path / "feedback.txt"
    feedback.write_text("Nope: ${reason}")
    config = GeneralPointsConfig(prompt_template=str(prompt), feedback_template=str(feedback))
    state = reset(config, hand=HAND)
    assert state.conversation[0].content.startswith("Make 24 from J, 3, 8, A ($5 prize).")
    _, transition = step(state, WRONG)
    assert transition.feedback.content == "Nope: the formula evaluates to 22, not 24."
    prompt.write_text("Edited: ${cards}")  # an edited file is read again in the same process (a notebook)
    assert reset(config, hand=HAND).conversation[0].content == "Edited: J, 3, 8, A"
    bad = tmp_path / "bad.txt"
    bad.write_text("${target} ${hand}")
    with pytest.raises(ValueError, match="unknown placeholders"):
        reset(GeneralPointsConfig(prompt_template=str(bad)), hand=HAND)
    with pytest.raises(ValueError, match="cannot read the template"):
        reset(GeneralPointsConfig(prompt_template=str(tmp_path / "missing.txt")), hand=HAND)


def test_episode_revision_and_success():
    config = GeneralPointsConfig(modality="vision")
    state = reset(config, hand=HAND)
    state, transition = step(state, WRONG)
    assert transition.verdict.category == "wrong_value" and not transition.done
    assert transition.fresh_context is False
    prompt = transition.next_prompt
    assert [m.role for m in prompt] == ["user", "assistant", "user"]
    assert prompt[1].content == WRONG and prompt[2] == transition.feedback
    assert "evaluates to 22" in prompt[2].content
    assert prompt[0].image is not None and prompt[1].image is None and prompt[2].image is None
    state, transition = step(state, RIGHT)
    assert transition.verdict.reward == 5.0 and transition.done and transition.next_prompt is None
    assert state.solved and state.steps_taken == 2
    with pytest.raises(ValueError, match="already solved"):
        step(state, RIGHT)


def test_episode_budget():
    config = GeneralPointsConfig(max_verify_steps=3)
    state = reset(config, hand=HAND)
    rewards = []
    for _ in range(3):
        state, transition = step(state, WRONG)
        rewards.append(transition.verdict.reward)
    assert rewards == [-1.0, -1.0, -1.0] and transition.done and state.done and not state.solved
    assert transition.next_prompt is None
    assert len(state.conversation) == 5  # prompt + 2 x (response, feedback); the last failure ends the episode
    state, transition = step(state, RIGHT)
    assert (transition.verdict.category, transition.verdict.reward, transition.done) == ("budget_exceeded", -1.0,
                                                                                        True)


def test_reset_from_seed_and_hand_checks():
    config = GeneralPointsConfig()
    assert reset(config, seed=3).hand == sample_hands(config, 3, 1)[0]
    with pytest.raises(ValueError, match="num_cards"):
        reset(config, hand=HAND[:3])
    with pytest.raises(ValueError, match="seed"):
        reset(config)


@pytest.mark.parametrize("config", [GeneralPointsConfig(), GeneralPointsConfig(face_cards="distinct",
                                                                               require_face_card=True)])
def test_expert_single_turn_answers_are_correct(config):
    conversations = expert_conversations(config, seed=5, size=40)
    assert len(conversations) == 40 and conversations == expert_conversations(config, seed=5, size=40)
    for conversation, hand in zip(conversations, sample_hands(config, 5, 40)):
        assert [m.role for m in conversation] == ["user", "assistant"]
        reply = json.loads(conversation[1].content)
        assert reply["cards"] == [card.label for card in hand]
        assert verify(conversation[1].content, hand, config).category == "correct"
        assert reply["formula"].endswith(f"= {config.target}")
    with pytest.raises(ValueError, match="cannot reach"):
        expert_response((Card(1, "S"),) * 4, GeneralPointsConfig())


@pytest.mark.parametrize("modality", ["language", "vision"])
def test_suboptimal_trajectories(modality):
    config = GeneralPointsConfig(modality=modality)
    trajectories = suboptimal_trajectories(config, seed=1, size=30)
    hands = sample_hands(config, 1, 30)
    categories = set()
    for conversation, hand in zip(trajectories, hands):
        roles = [m.role for m in conversation]
        attempts = roles.count("assistant")
        assert 2 <= attempts <= config.max_verify_steps
        assert roles == ["user"] + ["assistant", "user"] * (attempts - 1) + ["assistant"]
        for response in [m.content for m in conversation if m.role == "assistant"][:-1]:
            verdict = verify(response, hand, config)
            assert not verdict.success
            categories.add(verdict.category)
        assert verify(conversation[-1].content, hand, config).success
        assert sum(m.image is not None for m in conversation) == (modality == "vision")
    expected = {"wrong_value", "illegal_numbers", "illegal_formula"} | ({"wrong_cards"} if modality == "vision"
                                                                       else set())
    assert categories == expected


def test_jsonl_round_trip(tmp_path):
    config = GeneralPointsConfig(modality="vision", image_width=280, image_height=140)
    conversations = suboptimal_trajectories(config, seed=2, size=3) + expert_conversations(config, seed=2, size=2)
    path = write_jsonl(conversations, tmp_path / "data" / "gp.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    first = json.loads(lines[0])["messages"][0]
    assert first["image"] == "gp_images/000000.png" and (tmp_path / "data" / first["image"]).is_file()
    assert read_jsonl(path) == conversations
    (tmp_path / "broken.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        read_jsonl(tmp_path / "broken.jsonl")
    text = expert_conversations(GeneralPointsConfig(), seed=2, size=2)
    assert read_jsonl(write_jsonl(text, tmp_path / "text.jsonl")) == text
    assert not (tmp_path / "text_images").exists()
    assert isinstance(text[0][0], Message) and np.all([m.image is None for c in text for m in c])
