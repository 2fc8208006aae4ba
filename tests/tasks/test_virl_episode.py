"""V-IRL episodes: the oracle solves routes in text and with views, correct actions start fresh conversations,
wrong ones append the verifier's message and are not executed, the budget of judged answers per decision, the
image rides on the first message only; metrics; expert data (optimal and sub-optimal) and its JSONL round trip;
prompt templates and config validation; the show entry point."""

import json

import numpy as np
import pytest

from tasks.common import Message
from tasks.virl.city import generate_city, generate_routes
from tasks.virl.config import VirlConfig
from tasks.virl.episode import VirlEpisode
from tasks.virl.expert import optimal_conversations, read_jsonl, suboptimal_conversations, write_jsonl
from tasks.virl.metrics import per_step_accuracy, route_success, summarize
from tasks.virl.prompts import format_instruction, instruction_lines, load_template
from tasks.virl.render import CityViews

SMALL = dict(forward_points=2, drop_probability=0.5)


@pytest.fixture(scope="module")
def city_route():
    city = generate_city(21, nx=5, ny=5)
    return city, generate_routes(city, 2, 0)


def _wrong(episode):
    return json.dumps({"current observation": episode.point.observation, "current instruction": "?",
                       "action": "stop()" if episode.point.expected_action != "stop()" else "forward()"})


@pytest.mark.parametrize("action_space", ["absolute", "relative"])
def test_oracle_solves_routes_in_text(city_route, action_space):
    _, routes = city_route
    for route in routes:
        episode = VirlEpisode(route, VirlConfig(action_space=action_space, **SMALL))
        first = episode.conversation
        assert len(first) == 1 and first[0].role == "user" and first[0].image is None
        assert format_instruction(route) in first[0].content and "O_1: " in first[0].content
        history_len = 0
        while not episode.done:
            t = episode.step(episode.oracle_response())
            assert t.verdict.category == "correct" and t.feedback is None
            if not t.done:
                history_len += 1
                assert t.fresh_context and len(t.next_prompt) == 1
                assert f"A_{history_len}: {episode.rail[history_len - 1].expected_action}" in t.next_prompt[0].content
                assert t.next_prompt[0].content.rstrip().endswith("}")
                assert f"A_{history_len + 1}:\n" in t.next_prompt[0].content
        assert t.done and t.next_prompt is None and t.verdict.success
        assert per_step_accuracy(episode.verdicts) == 1.0 and route_success(episode.verdicts)
        with pytest.raises(RuntimeError, match="reset"):
            episode.step("{}")


def test_oracle_solves_a_route_with_rendered_views(city_route):
    city, routes = city_route
    config = VirlConfig(modality="vision", view_size=48, forward_points=1, drop_probability=0.0)
    episode = VirlEpisode(routes[0], config, views=CityViews(city, 48, 5))
    shape = (101, 101, 3)
    while not episode.done:
        prompt = episode.conversation
        assert prompt[0].image is not None and prompt[0].image.shape == shape
        assert "(the street views in the image)" in prompt[0].content and "[front, right," in prompt[0].content
        wrong = episode.step(_wrong(episode))
        assert [m.image is None for m in wrong.next_prompt] == [False, True, True]  # image on the first only
        episode.step(episode.oracle_response())
    assert episode.verdicts[-1].success


def test_wrong_answers_are_not_executed_and_budget_ends_the_episode(city_route):
    _, routes = city_route
    episode = VirlEpisode(routes[0], VirlConfig(**SMALL))
    episode.step(episode.oracle_response())
    position, prompt = episode.position, episode.conversation
    t1 = episode.step(_wrong(episode))
    assert (t1.verdict.reward, t1.done, t1.fresh_context) == (-1.0, False, False)
    assert t1.feedback.role == "user" and t1.verdict.feedback in t1.feedback.content
    assert t1.next_prompt == prompt + (Message("assistant", _wrong(episode)), t1.feedback)
    assert episode.position == position
    t2 = episode.step("not json at all")
    assert (t2.verdict.category, t2.done, len(t2.next_prompt)) == ("invalid_format", False, 5)
    t3 = episode.step(episode.oracle_response())  # past the budget of 2: not judged
    assert (t3.verdict.reward, t3.verdict.category, t3.done) == (-1.0, "budget_exceeded", True)
    assert not route_success(episode.verdicts)
    assert per_step_accuracy(episode.verdicts) == pytest.approx(1 / 4)


def test_budget_resets_after_a_correct_action(city_route):
    _, routes = city_route
    episode = VirlEpisode(routes[0], VirlConfig(max_verify_steps=2, **SMALL))
    for _ in range(3):
        episode.step(_wrong(episode))
        t = episode.step(episode.oracle_response())
        assert t.verdict.category == "correct" and t.fresh_context
    assert not episode.done and episode.position == 3


def test_rail_is_seeded(city_route):
    _, routes = city_route
    rails = {tuple(p.geocode for p in VirlEpisode(routes[1], VirlConfig(seed=s)).rail) for s in range(6)}
    assert len(rails) > 1
    assert VirlEpisode(routes[1], VirlConfig(seed=3)).rail == VirlEpisode(routes[1], VirlConfig(seed=3)).rail


def test_summarize():
    from tasks.common import Verdict

    ok, bad, win = (Verdict(1.0, False, "", "correct"), Verdict(-1.0, False, "", "wrong_action"),
                    Verdict(1.0, True, "", "correct"))
    s = summarize([[ok, win], [ok, bad, bad]])
    assert s["per_step_accuracy"] == pytest.approx(3 / 5) and s["route_success_rate"] == 0.5
    assert s["route_success_stderr"] == pytest.approx(np.sqrt(0.25 / 2))
    assert per_step_accuracy([]) == 0.0


def test_expert_data_and_jsonl_round_trip(city_route, tmp_path):
    city, routes = city_route
    route = routes[0]
    config = VirlConfig(**SMALL)
    optimal = optimal_conversations(route, config, seed=4)
    episode = VirlEpisode(route, config, seed=4)
    assert len(optimal) == len(episode.rail)
    lines = instruction_lines(route)
    for conversation, point in zip(optimal, episode.rail):
        assert [m.role for m in conversation] == ["user", "assistant"]
        answer = json.loads(conversation[-1].content)
        assert answer == {"current observation": point.observation,
                          "current instruction": lines[point.instruction_line], "action": point.expected_action}
    sub = suboptimal_conversations(route, config, seed=4, error_seed=1)
    assert len(sub) == len(optimal)
    for conversation, good in zip(sub, optimal):
        assert [m.role for m in conversation] == ["user", "assistant", "user", "assistant"]
        assert conversation[0] == good[0] and conversation[-1] == good[-1]
        assert conversation[1].content != good[-1].content and "not accepted" in conversation[2].content
    with pytest.raises(ValueError, match="max_verify_steps >= 2"):
        suboptimal_conversations(route, VirlConfig(max_verify_steps=1))
    path = write_jsonl(sub, tmp_path / "virl_sub.jsonl")
    assert read_jsonl(path) == sub
    vision = VirlConfig(modality="vision", view_size=32, forward_points=0)
    with_images = optimal_conversations(route, vision, views=CityViews(city, 32, 5))
    path = write_jsonl(with_images, tmp_path / "vl" / "virl_vl.jsonl")
    assert (tmp_path / "vl" / "virl_vl_images" / "000000_00.png").is_file()
    assert read_jsonl(path) == with_images


def test_prompt_template_override(tmp_path, city_route):
    _, routes = city_route
    custom = tmp_path / "t.txt"
    custom.write_text("Go: {instruction}\nA: {action_space}\nH: {history}\n{{json}}")
    episode = VirlEpisode(routes[0], VirlConfig(prompt_path=str(custom)))
    assert episode.conversation[0].content.startswith("Go: You start facing")
    assert episode.conversation[0].content.endswith("{json}")
    bad = tmp_path / "bad.txt"
    bad.write_text("{instruction} {oops}")
    with pytest.raises(ValueError, match="placeholders"):
        load_template("language", str(bad))
    with pytest.raises(FileNotFoundError, match="prompt_path"):
        load_template("language", str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("field, value, message", [
    ("action_space", "polar", "action_space"), ("modality", "audio", "modality"),
    ("max_verify_steps", 0, "max_verify_steps"), ("drop_probability", 1.5, "drop_probability"),
    ("view_size", 8, "view_size"), ("city_style", "gothic", "city_style"), ("forward_points", -1, "forward_points"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        VirlConfig(**{field: value})


def test_vision_needs_views(city_route):
    with pytest.raises(ValueError, match="view source"):
        VirlEpisode(city_route[1][0], VirlConfig(modality="vision"))


def test_show_entry_point(tmp_path, capsys):
    from tasks.virl.show import main

    assert main(["--city-seed", "1", "--view-size", "40", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1. Turn to face" in out and "Route solved: True" in out and "A_1: turn_direction(" in out
    assert (tmp_path / "map.png").is_file() and (tmp_path / "step_000.png").is_file()
    assert (tmp_path / "route_infos.json").is_file()
