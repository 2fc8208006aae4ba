"""Expert data for SFT: the ideal answer at every decision of a route (the main-body data), and the sub-optimal
variant of the ablation (a wrong answer, the verifier's message, then the ideal answer), as conversations ending
with the assistant message to supervise; plus a JSONL writer/reader (PNG files beside it for V-IRL-VL).

Both walk the route through the episode's `reset` / `step`, so prompts, images and feedback are exactly what RL
sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tasks.common import Conversation, Message
from tasks.virl.config import VirlConfig
from tasks.virl.directions import ABSOLUTE_DIRECTIONS, RELATIVE_DIRECTIONS
from tasks.virl.episode import ViewSource, oracle_response, reset, step
from tasks.virl.observe import INTERSECTION
from tasks.virl.oracle import FORWARD, STOP, DecisionPoint, turn_action
from tasks.virl.route import Route
from tasks.virl.prompts import instruction_lines


def all_actions(action_space: str) -> tuple[str, ...]:
    words = ABSOLUTE_DIRECTIONS if action_space == "absolute" else RELATIVE_DIRECTIONS
    return (FORWARD, STOP) + tuple(turn_action(w) for w in words)


def optimal_conversations(route: Route, config: VirlConfig, *, views: ViewSource | None = None,
                          seed: int | None = None) -> list[Conversation]:
    """One conversation per decision of the route: the prompt, then the ideal assistant answer."""
    state = reset(route, config, views=views, seed=seed)
    out = []
    while not state.done:
        answer = oracle_response(state)
        out.append(state.conversation + (Message("assistant", answer),))
        state, _ = step(state, answer)
    return out


def wrong_response(point: DecisionPoint, route: Route, config: VirlConfig, rng: np.random.Generator) -> str:
    """A plausible wrong answer: a misread intersection (when observations are judged, one time in four) or a
    wrong action from the action space."""
    observation, action = point.observation, point.expected_action
    if config.check_observation and rng.random() < 0.25:
        base = observation.split(";")[0]
        observation = f"{base}; {'' if point.at_intersection else INTERSECTION}".rstrip()
    else:
        choices = [a for a in all_actions(config.action_space) if a != point.expected_action]
        action = choices[int(rng.integers(len(choices)))]
    return json.dumps({"current observation": observation,
                       "current instruction": instruction_lines(route)[point.instruction_line],
                       "action": action}, indent=2)


def suboptimal_conversations(route: Route, config: VirlConfig, *, views: ViewSource | None = None,
                             seed: int | None = None, error_seed: int = 0) -> list[Conversation]:
    """One conversation per decision: prompt, a wrong answer, the verifier's message, the ideal answer."""
    if config.max_verify_steps < 2:
        raise ValueError("sub-optimal expert data needs VirlConfig.max_verify_steps >= 2 (a wrong answer and its "
                         "correction at one decision).")
    rng = np.random.default_rng([error_seed, 17])
    state = reset(route, config, views=views, seed=seed)
    out = []
    while not state.done:
        state, wrong = step(state, wrong_response(state.point, route, config, rng))
        if wrong.verdict.category == "correct" or wrong.next_prompt is None:
            raise RuntimeError("a generated wrong answer was judged correct; this is a bug in wrong_response.")
        answer = oracle_response(state)
        out.append(wrong.next_prompt + (Message("assistant", answer),))
        state, _ = step(state, answer)
    return out


def write_jsonl(conversations: Sequence[Conversation], path: str | Path, image_dir: str | Path | None = None) -> Path:
    """One JSON line per conversation: {"messages": [{"role", "content", "image"}]}; images are PNG files in
    `image_dir` (default: <path stem>_images beside the file), referenced by path relative to the JSONL file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    with path.open("w", encoding="utf-8") as handle:
        for i, conversation in enumerate(conversations):
            messages = []
            for j, message in enumerate(conversation):
                image_ref = None
                if message.image is not None:
                    image_dir.mkdir(parents=True, exist_ok=True)
                    image_path = image_dir / f"{i:06d}_{j:02d}.png"
                    Image.fromarray(np.asarray(message.image, dtype=np.uint8)).save(image_path)
                    image_ref = str(image_path.relative_to(path.parent)) if image_path.is_relative_to(
                        path.parent) else str(image_path)
                messages.append({"role": message.role, "content": message.content, "image": image_ref})
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Conversation]:
    """The conversations of a file written by `write_jsonl` (images loaded back)."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            messages = []
            for m in record["messages"]:
                image = None
                if m.get("image"):
                    with Image.open(path.parent / m["image"]) as im:
                        image = np.asarray(im.convert("RGB"), dtype=np.uint8)
                messages.append(Message(m["role"], m["content"], image))
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise ValueError(f"{path} line {n} is not an expert-data record ({error}).") from None
        out.append(tuple(messages))
    return out
