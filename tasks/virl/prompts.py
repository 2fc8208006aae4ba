"""Prompts of the V-IRL task: the numbered instruction built from a route's milestones, the action-space text,
the observation/action history, and the user turn (with the view grid for V-IRL-VL).

Templates are text files with the placeholders {instruction}, {action_space}, {history} and (vision)
{observation_format}; literal braces are doubled. `VirlConfig.prompt_path` replaces the built-in template
(prompts/language.txt or prompts/vision.txt beside this module).
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.common import Conversation, Message, file_stamp
from tasks.virl.config import VirlConfig
from tasks.virl.directions import ABSOLUTE_DIRECTIONS, absolute_direction
from tasks.virl.route import Route

TEMPLATE_DIR = Path(__file__).parent / "prompts"
PLACEHOLDERS = {"instruction", "action_space", "history", "observation_format"}
REQUIRED_PLACEHOLDERS = {"instruction", "action_space", "history"}
VIEW_ORDER = ("front", "right", "back", "left")
OBSERVATION_FORMAT = (
    "A 2x2 grid of four street views, each 90 degrees wide, around where you stand:\n"
    "[front, right,\n back, left]\n"
    "Signs carry the names of nearby places. Report which landmarks of the instructions you can see and\n"
    "whether a crossing street shows that you are at an intersection.")


def _heading_words(heading_deg: float) -> str:
    return f"{absolute_direction(heading_deg)} ({heading_deg:g} degrees)"


def instruction_lines(route: Route) -> tuple[str, ...]:
    """The instruction sentences: per milestone a turn and a move, then the stop (2K + 1 lines)."""
    lines = []
    last = len(route.milestones) - 1
    for k, m in enumerate(route.milestones):
        lines.append(f"Turn to face {_heading_words(m.next_heading_deg)}.")
        phrase = m.landmark_phrase
        if phrase.startswith("The "):  # "The destination X is ..." reads on inside the sentence
            phrase = "the " + phrase[4:]
        if k < last:
            lines.append(f"Move forward until you reach the intersection where {phrase}.")
        else:
            lines.append(f"Move forward until {phrase}.")
    lines.append("Stop: you have arrived at the destination.")
    return tuple(lines)


def format_instruction(route: Route) -> str:
    head = f"You start facing {_heading_words(route.init_heading_deg)}."
    return "\n".join([head] + [f"{i + 1}. {line}" for i, line in enumerate(instruction_lines(route))])


def action_space_text(action_space: str) -> str:
    if action_space == "absolute":
        turn = "turn to face compass direction x, one of " + ", ".join(ABSOLUTE_DIRECTIONS)
    else:
        turn = ("turn relative to the way you face now, x one of left (more than 45 degrees counter-clockwise), "
                "slightly left (up to 45 degrees counter-clockwise), slightly right (up to 45 degrees clockwise), "
                "right (more than 45 degrees clockwise)")
    return "\n".join(['"forward()": walk on to the next point along the street',
                      f'"turn_direction(x)": {turn}',
                      '"stop()": end the walk, you have arrived at the destination'])


def history_text(past: list[tuple[str, str]], current_observation: str) -> str:
    """"O_1: ...\\nA_1: ...\\nO_t: <current>\\nA_t:" from (observation, action) pairs of executed actions."""
    lines = []
    for i, (obs, act) in enumerate(past, start=1):
        lines += [f"O_{i}: {obs}", f"A_{i}: {act}"]
    t = len(past) + 1
    lines += [f"O_{t}: {current_observation}", f"A_{t}:"]
    return "\n".join(lines)


def load_template(modality: str, prompt_path: str | None) -> str:
    """The prompt template of `prompt_path` (None: the packaged one of `modality`), its placeholders checked;
    cached while the file is unchanged."""
    path = Path(prompt_path) if prompt_path else TEMPLATE_DIR / f"{modality}.txt"
    return _parse_template(path, file_stamp(path))


@lru_cache(maxsize=16)
def _parse_template(path: Path, stamp) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FileNotFoundError(f"the V-IRL prompt template {path} cannot be read ({error.strerror}); "
                                "fix VirlConfig.prompt_path.") from None
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:
        raise ValueError(f"the V-IRL prompt template {path} is not a valid format string ({error}); "
                         "double literal braces.") from None
    if fields - PLACEHOLDERS or REQUIRED_PLACEHOLDERS - fields:
        raise ValueError(f"the V-IRL prompt template {path} must use the placeholders "
                         f"{sorted(REQUIRED_PLACEHOLDERS)} (optionally observation_format) and no others; "
                         f"it uses {sorted(fields)}.")
    return text


def build_prompt(route: Route, past: list[tuple[str, str]], current_observation: str, config: VirlConfig,
                 image: np.ndarray | None = None) -> Conversation:
    """The one-message conversation for a decision. V-IRL-VL: the current observation is the image."""
    vision = config.modality == "vision"
    current = "(the street views in the image)" if vision else current_observation
    text = load_template(config.modality, config.prompt_path).format(
        instruction=format_instruction(route), action_space=action_space_text(config.action_space),
        history=history_text(past, current), observation_format=OBSERVATION_FORMAT)
    return (Message("user", text, image if vision else None),)
