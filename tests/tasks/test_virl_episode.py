"""V-IRL episodes (pure reset / step over a frozen EpisodeState): the oracle solves routes in text and with views,
correct actions start fresh conversations, wrong ones append the verifier's message and are not executed, the
budget of judged answers per decision, stepping never changes the given state, the image rides on the first
message only; metrics; expert data (optimal and sub-optimal) and its JSONL round trip; the package's exports;
prompt templates and config validation; the show entry point."""

import dataclasses
import json

import numpy as np
import pytest

from tasks.common import Message
from tasks.virl.city import generate_city, generate_routes
from tasks.virl.config import VirlConfig
from tasks.virl.episode import EpisodeState, current_image, oracle_response, reset, step
from tasks.virl.expert import optimal_conversations, read_jsonl, suboptimal_conversations, write_jsonl
from tasks.virl.metrics import per_step_accuracy, route_success, summarize
from tasks.virl.prompts import format_instruction, instruction_lines, load_template
from tasks.virl.render import CityViews

SMALL = dict(forward_points=2, drop_probability=0.5)


@pytest.fixture(scope="module")
def city_route():
    city = generate_city(21, nx=5, ny=5)
    return city, generate_routes(city, 2, 0)


def _wrong(state):
    return json.dumps({"current observation": state.point.observation, "current instruction": "?",
                       "action": "stop()" if state.point.expected_action != "stop()" else "forward()"})


@pytest.mark.parametrize("action_space", ["absolute", "relative"])
def test_oracle_solves_routes_in_text(city_route, action_space):
    _, routes = city_route
    for route in routes:
        state = reset(route, VirlConfig(action_space=action_space, **SMALL))
        first = state.conversation
        assert len(first) == 1 and first[0].role == "user" and first[0].image is None
        assert format_instruction(route) in first[0].content and "O_1: " in first[0].content
        assert current_image(state) is None
        history_len = 0
        while not state.done:
            state, t = step(state, oracle_response(state))
            assert t.verdict.category == "correct" and t.feedback is None
            if not t.done:
                history_len += 1
                assert t.fresh_context and len(t.next_prompt) == 1 and t.next_prompt == state.conversation
                assert f"A_{history_len}: {state.rail[history_len - 1].expected_action}" in t.next_prompt[0].content
                assert t.next_prompt[0].content.rstrip().endswith("}")
                assert f"A_{history_len + 1}:\n" in t.next_prompt[0].content
        assert t.done and t.next_prompt is None and t.verdict.success and state.solved
        assert len(state.verdicts) == len(state.rail) == len(state.past)
        assert per_step_accuracy(state.verdicts) == 1.0 and route_success(state.verdicts)
        with pytest.raises(ValueError, match="reset"):
            step(state, "{}")


def test_oracle_solves_a_route_with_rendered_views(city_route):
    city, routes = city_route
    config = VirlConfig(modality="vision", view_size=48, forward_points=1, drop_probability=0.0)
    state = reset(routes[0], config, views=CityViews(city, 48, 5))
    shape = (101, 101, 3)
    while not state.done:
        prompt = state.conversation
        assert prompt[0].image is not None and prompt[0].image.shape == shape
        assert np.array_equal(prompt[0].image, current_image(state))
        assert "(the street views in the image)" in prompt[0].content and "[front, right," in prompt[0].content
        state, wrong = step(state, _wrong(state))
        assert [m.image is None for m in wrong.next_prompt] == [False, True, True]  # image on the first only
        state, _ = step(state, oracle_response(state))
    assert state.verdicts[-1].success


def test_wrong_answers_are_not_executed_and_budget_ends_the_episode(city_route):
    _, routes = city_route
    state = reset(routes[0], VirlConfig(**SMALL))
    state, _ = step(state, oracle_response(state))
    position, prompt = state.position, state.conversation
    state, t1 = step(state, _wrong(state))
    assert (t1.verdict.reward, t1.done, t1.fresh_context) == (-1.0, False, False)
    assert t1.feedback.role == "user" and t1.verdict.feedback in t1.feedback.content
    assert t1.next_prompt == prompt + (Message("assistant", _wrong(state)), t1.feedback) == state.conversation
    assert state.position == position and state.attempts == 1
    # the budget-spending wrong answer does not end the episode (unlike GeneralPoints): it gets its feedback turn
    state, t2 = step(state, "not json at all")
    assert (t2.verdict.category, t2.done, len(t2.next_prompt)) == ("invalid_format", False, 5)
    assert not state.done and state.attempts == 2
    state, t3 = step(state, oracle_response(state))  # past the budget of 2: not judged, the episode ends
    assert (t3.verdict.reward, t3.verdict.category, t3.done, t3.next_prompt) == (-1.0, "budget_exceeded", True, None)
    assert state.done and state.over_budget and not state.solved and state.position == position
    assert not route_success(state.verdicts)
    assert per_step_accuracy(state.verdicts) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="reset"):
        step(state, oracle_response(state))


def test_step_is_pure(city_route):
    """The given state is never changed: stepping it again gives the same result, and states can branch."""
    _, routes = city_route
    start = reset(routes[0], VirlConfig(**SMALL))
    assert dataclasses.is_dataclass(start) and isinstance(start, EpisodeState)
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.position = 3
    snapshot = (start.position, start.attempts, start.past, start.verdicts, start.conversation)
    right, t_right = step(start, oracle_response(start))
    wrong, t_wrong = step(start, _wrong(start))
    assert (start.position, start.attempts, start.past, start.verdicts, start.conversation) == snapshot
    again, t_again = step(start, oracle_response(start))
    assert t_again == t_right and again.conversation == right.conversation and again.position == right.position == 1
    assert (wrong.position, wrong.attempts, t_wrong.verdict.category) == (0, 1, "wrong_action")
    assert right.verdicts == (t_right.verdict,) and wrong.verdicts == (t_wrong.verdict,)
    assert reset(routes[0], VirlConfig(**SMALL)).conversation == start.conversation


def test_budget_resets_after_a_correct_action(city_route):
    _, routes = city_route
    state = reset(routes[0], VirlConfig(max_verify_steps=2, **SMALL))
    for _ in range(3):
        state, _ = step(state, _wrong(state))
        state, t = step(state, oracle_response(state))
        assert t.verdict.category == "correct" and t.fresh_context and state.attempts == 0
    assert not state.done and state.position == 3


def test_rail_is_seeded(city_route):
    _, routes = city_route
    rails = {tuple(p.geocode for p in reset(routes[1], VirlConfig(seed=s)).rail) for s in range(6)}
    assert len(rails) > 1
    assert reset(routes[1], VirlConfig(seed=3)).rail == reset(routes[1], VirlConfig(seed=3)).rail
    assert reset(routes[1], VirlConfig(), seed=3).rail == reset(routes[1], VirlConfig(seed=3)).rail


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
    rail = reset(route, config, seed=4).rail
    assert len(optimal) == len(rail)
    lines = instruction_lines(route)
    for conversation, point in zip(optimal, rail):
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
    state = reset(routes[0], VirlConfig(prompt_path=str(custom)))
    assert state.conversation[0].content.startswith("Go: You start facing")
    assert state.conversation[0].content.endswith("{json}")
    custom.write_text("Edited: {instruction}\n{action_space}\n{history}")  # read again once edited
    assert reset(routes[0], VirlConfig(prompt_path=str(custom))).conversation[0].content.startswith("Edited: You")
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
        reset(city_route[1][0], VirlConfig(modality="vision"))


def test_package_exports_the_episode_and_expert_data():
    """As GeneralPoints' package does: the episode's reset / step and the expert-data functions."""
    import tasks.virl as virl
    from tasks.virl import episode, expert, loader

    for name, module in [("reset", episode), ("step", episode), ("EpisodeState", episode),
                         ("oracle_response", episode), ("current_image", episode),
                         ("optimal_conversations", expert), ("suboptimal_conversations", expert),
                         ("write_jsonl", expert), ("read_jsonl", expert), ("load_dataset", loader)]:
        assert getattr(virl, name) is getattr(module, name) and name in virl.__all__
    assert not hasattr(virl, "VirlEpisode")
    assert all(hasattr(virl, name) for name in virl.__all__)


def test_show_entry_point(tmp_path, capsys):
    from tasks.virl.show import main

    assert main(["--city-seed", "1", "--view-size", "40", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1. Turn to face" in out and "Route solved: True" in out and "A_1: turn_direction(" in out
    assert (tmp_path / "map.png").is_file() and (tmp_path / "step_000.png").is_file()
    assert (tmp_path / "route_infos.json").is_file()
