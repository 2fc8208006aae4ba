"""V-IRL episodes: a route walked decision by decision under the verifier, with the reference's revision loop, as
a pure `reset` / `step` pair over an immutable `EpisodeState` (the interface of GeneralPoints' episodes).

`reset(route, config, *, views=None, seed=None) -> EpisodeState` builds the oracle rail and the first prompt;
`step(state, response) -> (EpisodeState, Transition)` judges the response at the current decision and returns the
next state (the given state is never changed, so a caller can keep it, branch from it, or replay it). A correct
action is executed, and the next decision starts a fresh conversation with the updated history
(`fresh_context=True`). A wrong answer is not executed: the verifier's message is appended as a user turn to the
same conversation. The episode ends after the correct stop() (the route is solved) or past the budget.

Budget, and how it differs from GeneralPoints: each decision allows `max_verify_steps` judged answers. A wrong
answer that spends the budget does not end the episode: it gets its own verdict and the feedback turn like any
wrong answer; a further answer at the same decision is "past the budget": it is not judged, gets
`reward_budget` (-1, category "budget_exceeded") and ends the episode, as the reference's step counter does.
In GeneralPoints the budget-spending failure itself ends the episode (done=True on the max_verify_steps-th
answer; only a caller that steps on gets the budget verdict). Why V-IRL differs: the protocol's "-1 exceeding the
verification budget" is a reward of its own in V-IRL, charged per decision of a multi-decision route, and keeping
the reference's counter keeps per-route rewards and episode lengths comparable with the reference's; the cost is
one more scan step per decision point in RL (`launch.rl_virl.rollout_steps`: K = max_verify_steps + 1).

For V-IRL-VL the view grid of the current point rides on the first user message of each conversation only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from tasks.common import Conversation, Message, Transition, Verdict
from tasks.virl.config import VirlConfig
from tasks.virl.oracle import DecisionPoint, build_rail
from tasks.virl.prompts import build_prompt, instruction_lines
from tasks.virl.route import Route
from tasks.virl.verify import verify


class ViewSource(Protocol):
    def grid(self, geocode: tuple[float, float], heading_deg: float) -> np.ndarray: ...


def feedback_message(verdict: Verdict) -> Message:
    """The user turn that follows a rejected answer."""
    return Message("user", f"Your answer was not accepted: {verdict.feedback} "
                           "Look again and answer with one JSON object in the same format.")


def ideal_response(point: DecisionPoint, route: Route) -> str:
    """The expert answer at a decision point (the SFT target)."""
    return json.dumps({
        "current observation": point.observation,
        "current instruction": instruction_lines(route)[point.instruction_line],
        "action": point.expected_action,
    }, indent=2)


@dataclass(frozen=True, eq=False)
class EpisodeState:
    """One V-IRL episode at one moment.

    route, config, views: what `reset` was given (`views` renders the grid for modality "vision").
    rail:          the oracle's decision points (`oracle.build_rail`, drawn from the reset's seed).
    conversation:  the conversation the model answers next.
    position:      index of the current decision point in `rail`.
    attempts:      answers judged at the current decision (resets to 0 after a correct action).
    past:          (observation, action) of every executed decision, the prompt's O_k/A_k history.
    verdicts:      every verdict of the episode so far, in order (the metrics' input).
    solved:        the correct stop() was given.
    over_budget:   an answer came past the budget of a decision.
    """

    route: Route
    config: VirlConfig
    rail: tuple[DecisionPoint, ...]
    conversation: Conversation
    views: ViewSource | None = None
    position: int = 0
    attempts: int = 0
    past: tuple[tuple[str, str], ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    solved: bool = False
    over_budget: bool = False

    @property
    def done(self) -> bool:
        return self.solved or self.over_budget

    @property
    def point(self) -> DecisionPoint:
        """The current decision point."""
        return self.rail[self.position]


def current_image(state: EpisodeState) -> np.ndarray | None:
    """The view grid at the current decision point (None for modality "language")."""
    if state.config.modality != "vision":
        return None
    return state.views.grid(state.point.geocode, state.point.heading_deg)


def oracle_response(state: EpisodeState) -> str:
    """The ideal answer at the current decision point."""
    return ideal_response(state.point, state.route)


def _fresh_prompt(state: EpisodeState) -> Conversation:
    return build_prompt(state.route, list(state.past), state.point.observation, state.config, current_image(state))


def reset(route: Route, config: VirlConfig, *, views: ViewSource | None = None,
          seed: int | None = None) -> EpisodeState:
    """A new episode on `route` under `config`. `views` renders the grid for modality "vision" (e.g.
    `render.CityViews` for a synthetic city, `loader.PanoramaViews` for real panoramas). `seed` (default
    `config.seed`) draws the rail (which interpolated points are dropped)."""
    if config.modality == "vision" and views is None:
        raise ValueError("a V-IRL episode with modality 'vision' needs a view source (CityViews or "
                         "PanoramaViews); pass views=... or use modality 'language'.")
    rail = build_rail(route, config, np.random.default_rng([config.seed if seed is None else seed, 1]))
    state = EpisodeState(route=route, config=config, rail=rail, conversation=(), views=views)
    return replace(state, conversation=_fresh_prompt(state))


def step(state: EpisodeState, response: str) -> tuple[EpisodeState, Transition]:
    """Judge `response` to `state.conversation` at the current decision point and advance the episode."""
    config = state.config
    if state.done:
        raise ValueError("this V-IRL episode is over; start a new one with reset().")
    point = state.point
    if state.attempts >= config.max_verify_steps:
        verdict = Verdict(config.reward_budget, False,
                          f"The budget of {config.max_verify_steps} answers for this step is spent.",
                          "budget_exceeded")
        new_state = replace(state, verdicts=state.verdicts + (verdict,), over_budget=True)
        return new_state, Transition(verdict, True, None, None)
    verdict = verify(response, point, config)
    verdicts = state.verdicts + (verdict,)
    if verdict.category == "correct":
        past = state.past + ((point.observation, point.expected_action),)
        if point.is_stop:
            new_state = replace(state, attempts=state.attempts + 1, past=past, verdicts=verdicts, solved=True)
            return new_state, Transition(verdict, True, None, None)
        moved = replace(state, position=state.position + 1, attempts=0, past=past, verdicts=verdicts)
        moved = replace(moved, conversation=_fresh_prompt(moved))
        return moved, Transition(verdict, False, None, moved.conversation, fresh_context=True)
    feedback = feedback_message(verdict)
    conversation = state.conversation + (Message("assistant", response), feedback)
    new_state = replace(state, conversation=conversation, attempts=state.attempts + 1, verdicts=verdicts)
    return new_state, Transition(verdict, False, feedback, conversation, fresh_context=False)
