"""The V-IRL verifier: judges one model response at one decision point.

Order of checks: a JSON object with an "action" (else wrong action, "invalid_format"); when
`config.check_observation`, the "current observation" must report the same route landmarks and the same
intersection flag as the expected observation (else -1.5, "wrong_observation"); the action must be in the action
space (else -1, "invalid_action") and equal the expected one (else -1, "wrong_action"); a correct action is +1
("correct"), and `Verdict.success` is True only for the correct stop() (the route is solved).

The observation is read leniently: a landmark counts as reported when its name occurs in the text (longest names
first, case-insensitive); an intersection when the word occurs without a nearby negation. Spatial relations are
not judged. The response is untrusted: parsing is linear in a bounded length and never evaluates it.
"""

from __future__ import annotations

import re

from tasks.common import MAX_RESPONSE_CHARS, Verdict, parse_json_object
from tasks.virl.config import VirlConfig
from tasks.virl.directions import ABSOLUTE_DIRECTIONS, RELATIVE_DIRECTIONS
from tasks.virl.oracle import FORWARD, STOP, DecisionPoint, turn_action

_FORWARD = re.compile(r"^forward\s*(\(\s*\))?$")
_STOP = re.compile(r"^stop\s*(\(\s*\))?$")
_TURN = re.compile(r"^turn_direction\s*\(\s*['\"]?\s*([a-z][a-z _-]{0,30}?)\s*['\"]?\s*\)$")
_NEGATED_INTERSECTION = re.compile(r"(\bno|\bnot|\bwithout|n't|\bnever|\bnone)\s+(?:\w+\s+){0,3}?intersection")


def _normalise_keys(parsed: dict) -> dict:
    return {" ".join(str(k).lower().replace("_", " ").split()): v for k, v in parsed.items()}


def parse_action(text: object, action_space: str) -> str | None:
    """The canonical action ("forward()", "stop()", "turn_direction(x)") of a response's action text, or None
    when it is not an action of `action_space`."""
    if not isinstance(text, str):
        return None
    a = " ".join(text[:200].strip().strip("`'\". ").lower().split())
    if _FORWARD.match(a):
        return FORWARD
    if _STOP.match(a):
        return STOP
    match = _TURN.match(a)
    if match is None:
        return None
    word = " ".join(match.group(1).replace("_", " ").replace("-", " ").split())
    if action_space == "absolute":
        word = word.replace(" ", "")
        return turn_action(word) if word in ABSOLUTE_DIRECTIONS else None
    return turn_action(word) if word in RELATIVE_DIRECTIONS else None


def reported_observation(text: str, candidates: tuple[str, ...]) -> tuple[frozenset[str], bool]:
    """(landmark names mentioned, intersection reported) of an observation text."""
    lowered = " ".join(text[:MAX_RESPONSE_CHARS].lower().split())
    found = set()
    for name in sorted(candidates, key=len, reverse=True):
        key = " ".join(name.lower().split())
        if key and key in lowered:
            found.add(name)
            lowered = lowered.replace(key, " ")
    intersection = "intersection" in lowered and _NEGATED_INTERSECTION.search(lowered) is None
    return frozenset(found), intersection


def verify(response: str, step: DecisionPoint, config: VirlConfig) -> Verdict:
    """Judge `response` at decision `step`; never raises on any response."""
    parsed = parse_json_object(response) if isinstance(response, str) else None
    if parsed is None:
        return Verdict(config.reward_wrong_action, False,
                       'The answer is not a JSON object with the keys "current observation", '
                       '"current instruction" and "action".', "invalid_format")
    fields = _normalise_keys(parsed)
    if "action" not in fields:
        return Verdict(config.reward_wrong_action, False, 'The answer has no "action" key.', "invalid_format")
    if config.check_observation:
        observation = fields.get("current observation")
        if not isinstance(observation, str):
            return Verdict(config.reward_wrong_observation, False,
                           'The answer has no "current observation" text.', "wrong_observation")
        landmarks, intersection = reported_observation(observation, step.landmark_candidates)
        if intersection != step.at_intersection:
            said = "an intersection that is not there" if intersection else "no intersection where there is one"
            return Verdict(config.reward_wrong_observation, False,
                           f"The current observation reports {said}.", "wrong_observation")
        if landmarks != frozenset(step.visible_landmarks):
            return Verdict(config.reward_wrong_observation, False,
                           "The landmarks in the current observation do not match what can be seen here.",
                           "wrong_observation")
    action = parse_action(fields["action"], config.action_space)
    if action is None:
        shown = str(fields["action"])[:60]
        return Verdict(config.reward_wrong_action, False,
                       f"The action {shown!r} is not in the action space.", "invalid_action")
    if action != step.expected_action:
        return Verdict(config.reward_wrong_action, False, f"The action {action} is not the right one here.",
                       "wrong_action")
    solved = action == STOP
    return Verdict(config.reward_correct, solved,
                   "Correct: you arrived at the destination." if solved else "Correct action.", "correct")
