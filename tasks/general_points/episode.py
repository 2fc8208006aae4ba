"""Multi-turn GeneralPoints episodes with sequential revision: a pure `reset` / `step` pair over an immutable
`EpisodeState`.

After a failed response the next prompt is the whole conversation so far, the model's response as an assistant
turn, and a feedback user turn built from the verifier's sentence (the context continues:
`Transition.fresh_context` is False). The image of the vision variant rides on the first user message only. An
episode ends at the first correct response or when `config.max_verify_steps` responses have been verified;
stepping an episode whose budget is spent returns the budget penalty (-1, category "budget_exceeded").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tasks.common import Conversation, Message, Transition, Verdict
from tasks.general_points.config import Card, GeneralPointsConfig
from tasks.general_points.hands import sample_hand
from tasks.general_points.prompts import feedback_text, prompt_text
from tasks.general_points.render import render_hand
from tasks.general_points.verifier import REWARDS, verify


@dataclass(frozen=True)
class EpisodeState:
    """One episode: the hand, the conversation the model answers next, and how many responses were verified."""

    config: GeneralPointsConfig
    hand: tuple[Card, ...]
    conversation: Conversation
    steps_taken: int = 0
    solved: bool = False

    @property
    def done(self) -> bool:
        return self.solved or self.steps_taken >= self.config.max_verify_steps


def first_prompt(hand: tuple[Card, ...], config: GeneralPointsConfig) -> Conversation:
    """The opening user turn: the text prompt, with the rendered hand attached in the vision modality."""
    labels = [card.label for card in hand]
    image = render_hand(hand, config.image_width, config.image_height) if config.modality == "vision" else None
    return (Message("user", prompt_text(labels, config), image),)


def reset(config: GeneralPointsConfig, seed: int | np.random.Generator | None = None,
          hand: tuple[Card, ...] | None = None) -> EpisodeState:
    """A new episode on `hand`, or on a solvable hand sampled from `seed` (an int or a Generator)."""
    if hand is None:
        if seed is None:
            raise ValueError("reset needs a seed (int or numpy Generator) or a hand.")
        hand = sample_hand(config, seed)
    elif len(hand) != config.num_cards:
        raise ValueError(f"the hand has {len(hand)} cards but the config asks for num_cards={config.num_cards}.")
    hand = tuple(hand)
    return EpisodeState(config=config, hand=hand, conversation=first_prompt(hand, config))


def step(state: EpisodeState, response: str) -> tuple[EpisodeState, Transition]:
    """Verify `response` to `state.conversation` and advance the episode."""
    config = state.config
    if state.solved:
        raise ValueError("this episode is already solved; start a new one with reset().")
    if state.done:
        verdict = Verdict(REWARDS["budget_exceeded"], False,
                          f"the verification budget of {config.max_verify_steps} attempts is spent.",
                          "budget_exceeded")
        return state, Transition(verdict=verdict, done=True, feedback=None, next_prompt=None)
    verdict = verify(response, state.hand, config)
    taken = state.steps_taken + 1
    if verdict.success or taken >= config.max_verify_steps:
        new_state = replace(state, steps_taken=taken, solved=verdict.success)
        return new_state, Transition(verdict=verdict, done=True, feedback=None, next_prompt=None)
    feedback = Message("user", feedback_text(verdict.feedback, config))
    conversation = state.conversation + (Message("assistant", response), feedback)
    new_state = replace(state, conversation=conversation, steps_taken=taken)
    return new_state, Transition(verdict=verdict, done=False, feedback=feedback, next_prompt=conversation,
                                 fresh_context=False)
