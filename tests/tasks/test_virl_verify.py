"""The V-IRL verifier: rewards of the protocol (+1, -1.5, -1), lenient reading of answers, the action spaces,
and fuzzing: any text gets a Verdict, never an exception, in bounded time."""

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tasks.common import Verdict
from tasks.virl.city import generate_city, generate_routes
from tasks.virl.config import VirlConfig
from tasks.virl.episode import ideal_response
from tasks.virl.oracle import build_rail
from tasks.virl.verify import parse_action, reported_observation, verify

ABS = VirlConfig()
REL = VirlConfig(action_space="relative")


@pytest.fixture(scope="module")
def rails():
    route = generate_routes(generate_city(8, nx=5, ny=5), 1, 0)[0]
    return route, build_rail(route, ABS, np.random.default_rng(0)), build_rail(route, REL, np.random.default_rng(0))


def _answer(obs, action, instruction="x"):
    return json.dumps({"current observation": obs, "current instruction": instruction, "action": action})


def test_ideal_answers_are_correct_and_only_stop_solves(rails):
    route, abs_rail, rel_rail = rails
    for rail, config in ((abs_rail, ABS), (rel_rail, REL)):
        for point in rail:
            verdict = verify(ideal_response(point, route), point, config)
            assert (verdict.reward, verdict.category) == (1.0, "correct")
            assert verdict.success == (point.expected_action == "stop()")


def test_wrong_action_and_wrong_observation(rails):
    _, rail, _ = rails
    turn = next(p for p in rail[1:] if p.at_intersection and p.expected_action.startswith("turn"))
    wrong = "forward()"
    assert verify(_answer(turn.observation, wrong), turn, ABS) == Verdict(
        -1.0, False, "The action forward() is not the right one here.", "wrong_action")
    missed = turn.observation.split(";")[0] + ";"
    v = verify(_answer(missed, turn.expected_action), turn, ABS)
    assert (v.reward, v.category) == (-1.5, "wrong_observation") and "no intersection" in v.feedback
    blind = "No landmarks nearby; You observe an intersection"
    v = verify(_answer(blind, turn.expected_action), turn, ABS)
    assert (v.reward, v.category) == (-1.5, "wrong_observation") and "landmarks" in v.feedback
    # the observation check can be switched off
    assert verify(_answer(blind, turn.expected_action), turn, VirlConfig(check_observation=False)).reward == 1.0
    plain = next(p for p in rail if not p.at_intersection and not p.visible_landmarks)
    v = verify(_answer("No landmarks nearby; You observe an intersection", plain.expected_action), plain, ABS)
    assert v.category == "wrong_observation" and "not there" in v.feedback


def test_observation_reading_is_lenient(rails):
    _, rail, _ = rails
    names = rail[0].landmark_candidates
    a, b = names[0], names[1]
    assert reported_observation(f"I see {a.upper()} on my left and {b}; at an intersection", names) == (
        frozenset({a, b}), True)
    assert reported_observation("No landmarks nearby, you observe an intersection", names) == (frozenset(), True)
    for negated in ("No intersection here", "I do not see an intersection", "there isn't any intersection",
                    "No landmarks nearby;"):
        assert reported_observation(negated, names)[1] is False


@pytest.mark.parametrize("text, space, expected", [
    ("forward()", "absolute", "forward()"), (" Forward ( ) ", "absolute", "forward()"), ("stop", "relative", "stop()"),
    ("turn_direction(north)", "absolute", "turn_direction(north)"),
    ("turn_direction('North East')", "absolute", "turn_direction(northeast)"),
    ('turn_direction("south-west")', "absolute", "turn_direction(southwest)"),
    ("`turn_direction(slightly left)`", "relative", "turn_direction(slightly left)"),
    ("turn_direction(slightly_right).", "relative", "turn_direction(slightly right)"),
    ("turn_direction(left)", "absolute", None), ("turn_direction(north)", "relative", None),
    ("turn_direction()", "absolute", None), ("go north", "absolute", None), ("forward(); stop()", "absolute", None),
    (None, "absolute", None), (42, "absolute", None),
])
def test_parse_action(text, space, expected):
    assert parse_action(text, space) == expected


def test_lenient_json_forms(rails):
    _, rail, _ = rails
    point = rail[1]
    fenced = f"Sure!\n```json\n{{'current observation': '{point.observation}', 'action': '{point.expected_action}',}}\n```"
    assert verify(fenced, point, ABS).category == "correct"
    underscored = json.dumps({"Current_Observation": point.observation, "ACTION": point.expected_action})
    assert verify(underscored, point, ABS).category == "correct"
    assert verify("forward()", point, ABS).category == "invalid_format"
    assert verify(json.dumps({"current observation": point.observation}), point, ABS).category == "invalid_format"
    assert verify(_answer(point.observation, "fly()"), point, ABS).category == "invalid_action"
    assert verify(json.dumps({"action": point.expected_action}), point, ABS).category == "wrong_observation"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["current observation", "current instruction", "action", "Action", "x"])
answers = st.one_of(
    st.text(max_size=400),
    st.builds(json.dumps, st.dictionaries(keys, json_values, max_size=4)),
    st.builds(lambda d: "```json\n" + json.dumps(d) + "\n```", st.dictionaries(keys, json_values, max_size=3)),
    st.builds(lambda a: json.dumps({"current observation": "x", "action": a}), st.text(max_size=60)),
)


@given(answers)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_answers_always_get_a_verdict(rails, text):
    _, rail, rel_rail = rails
    for point, config in ((rail[0], ABS), (rel_rail[-1], REL)):
        start = time.perf_counter()
        verdict = verify(text, point, config)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5, f"{elapsed:.2f} s for one verdict"
        assert isinstance(verdict, Verdict) and verdict.reward in (1.0, -1.0, -1.5)
        assert isinstance(verdict.feedback, str) and verdict.feedback


@pytest.mark.parametrize("text", [
    "{" * 20000, "[" * 20000 + "]" * 20000, '{"action": "' + "turn_direction(" * 3000 + '"}',
    '{"current observation": "' + "no " * 5000 + 'intersection", "action": "forward()"}',
    "x" * 10 ** 6, '{"action": "forward()", "current observation": "' + "a" * 100000 + '"}',
])
def test_adversarial_answers_are_judged_in_bounded_time(rails, text):
    _, rail, _ = rails
    start = time.perf_counter()
    verdict = verify(text, rail[0], ABS)
    assert time.perf_counter() - start < 1.0
    assert verdict.reward < 0
