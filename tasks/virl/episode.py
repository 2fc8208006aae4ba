"""One V-IRL episode: a route walked decision by decision under the verifier, with the reference's revision
loop.

`reset() -> Conversation` gives the first prompt; `step(response) -> Transition` judges the response at the
current decision. A correct action is executed, and the next decision starts a fresh conversation with the
updated history (`fresh_context=True`). A wrong answer is not executed: the verifier's message is appended as a
user turn to the same conversation. Each decision allows `max_verify_steps` judged answers; a further answer
at the same decision is past the budget: reward `reward_budget`, and the episode ends (as the reference's step
counter does). The episode also ends after the correct stop() (the route is solved).

For V-IRL-VL the view grid of the current point rides on the first user message of each conversation only.
"""

from __future__ import annotations

import json
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


class VirlEpisode:
    """A route under `config`. `views` renders the grid for modality "vision" (e.g. `render.CityViews` for a
    synthetic city, `loader.PanoramaViews` for real panoramas). `seed` (default `config.seed`) draws the rail."""

    def __init__(self, route: Route, config: VirlConfig, *, views: ViewSource | None = None,
                 seed: int | None = None):
        if config.modality == "vision" and views is None:
            raise ValueError("a V-IRL episode with modality 'vision' needs a view source (CityViews or "
                             "PanoramaViews); pass views=... or use modality 'language'.")
        self.route, self.config, self.views = route, config, views
        self.rail = build_rail(route, config, np.random.default_rng([config.seed if seed is None else seed, 1]))
        self.reset()

    def reset(self) -> Conversation:
        self.position = 0
        self.attempts = 0
        self.done = False
        self.verdicts: list[Verdict] = []
        self.past: list[tuple[str, str]] = []
        self.conversation = self._fresh_prompt()
        return self.conversation

    @property
    def point(self) -> DecisionPoint:
        return self.rail[self.position]

    def current_image(self) -> np.ndarray | None:
        if self.config.modality != "vision":
            return None
        return self.views.grid(self.point.geocode, self.point.heading_deg)

    def _fresh_prompt(self) -> Conversation:
        return build_prompt(self.route, self.past, self.point.observation, self.config, self.current_image())

    def oracle_response(self) -> str:
        return ideal_response(self.point, self.route)

    def step(self, response: str) -> Transition:
        if self.done:
            raise RuntimeError("this V-IRL episode is over; call reset() before stepping again.")
        point = self.point
        if self.attempts >= self.config.max_verify_steps:
            verdict = Verdict(self.config.reward_budget, False,
                              f"The budget of {self.config.max_verify_steps} answers for this step is spent.",
                              "budget_exceeded")
            self.verdicts.append(verdict)
            self.done = True
            return Transition(verdict, True, None, None)
        verdict = verify(response, point, self.config)
        self.verdicts.append(verdict)
        self.attempts += 1
        if verdict.category == "correct":
            self.past.append((point.observation, point.expected_action))
            if point.is_stop:
                self.done = True
                return Transition(verdict, True, None, None)
            self.position += 1
            self.attempts = 0
            self.conversation = self._fresh_prompt()
            return Transition(verdict, False, None, self.conversation, fresh_context=True)
        feedback = feedback_message(verdict)
        self.conversation = self.conversation + (Message("assistant", response), feedback)
        return Transition(verdict, False, feedback, self.conversation, fresh_context=False)
