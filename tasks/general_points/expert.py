"""Expert data for supervised fine-tuning: optimal single-turn examples (prompt + the ideal JSON response) and the
ablation's sub-optimal multi-turn trajectories (wrong attempts, the verifier's feedback turns, then a correct
answer), seeded and of any size. `write_jsonl` / `read_jsonl` are the only I/O: one JSON line per conversation,
images as PNG files beside the JSONL, referenced by relative path.

JSONL line: {"messages": [{"role": "user", "content": "...", "image": "<stem>_images/000000.png"},
                          {"role": "assistant", "content": "{\"cards\": ...}"}, ...]}
("image" only on the message that carries one).
"""

from __future__ import annotations

import json
from fractions import Fraction
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.common import Conversation, Message
from tasks.general_points.config import Card, GeneralPointsConfig, card_value, rank_label
from tasks.general_points.episode import reset, step
from tasks.general_points.hands import hand_values, sample_hands
from tasks.general_points.solver import solve
from tasks.general_points.verifier import expected_fields

_OPERATORS = ("+", "-", "*", "/")


def expert_response(hand: Sequence[Card], config: GeneralPointsConfig) -> str:
    """The ideal answer: the hand's labels and values and a formula equal to the target."""
    formula = solve(hand_values(hand, config), config.target)
    if formula is None:
        raise ValueError(f"the hand {[card.label for card in hand]} cannot reach {config.target} under the "
                         f"'{config.face_cards}' rule; expert answers need a solvable hand.")
    return json.dumps({**expected_fields(hand, config), "formula": f"{formula} = {config.target}"})


def expert_conversations(config: GeneralPointsConfig, seed: int, size: int) -> list[Conversation]:
    """`size` optimal single-turn examples: (user prompt, assistant ideal response)."""
    conversations = []
    for hand in sample_hands(config, seed, size):
        state = reset(config, hand=hand)
        conversations.append(state.conversation + (Message("assistant", expert_response(hand, config)),))
    return conversations


def _random_formula(values: Sequence[int], rng: np.random.Generator) -> tuple[str, Fraction | None]:
    """A random expression tree over `values` (each once) and its value (None on division by zero)."""
    items: list[tuple[str, Fraction | None]] = [(str(v), Fraction(v)) for v in values]
    while len(items) > 1:
        i, j = rng.choice(len(items), size=2, replace=False)
        (fa, a), (fb, b) = items[i], items[j]
        op = _OPERATORS[int(rng.integers(4))]
        if a is None or b is None or (op == "/" and b == 0):
            value = None
        else:
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        wrap = lambda f: f if f.isdigit() else f"({f})"  # noqa: E731
        combined = (f"{wrap(fa)} {op} {wrap(fb)}", value)
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [combined]
    return items[0]


def wrong_response(hand: Sequence[Card], config: GeneralPointsConfig, rng: np.random.Generator) -> str:
    """A plausible wrong answer of a random kind: wrong value, illegal numbers, illegal formula, or (vision)
    misread cards. The verifier decides its category; this only makes it wrong."""
    fields = expected_fields(hand, config)
    values = list(fields["number"])
    correct = solve(values, config.target) or " + ".join(map(str, values))
    kinds = ["wrong_value", "illegal_numbers", "illegal_formula"] + (["wrong_cards"] if config.modality == "vision"
                                                                       else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    cards = list(fields["cards"])
    formula = correct
    if kind == "wrong_value":
        for _ in range(20):
            formula, value = _random_formula(values, rng)
            if value != config.target:
                break
        else:
            kind = "illegal_numbers"
    if kind == "illegal_numbers":
        position = int(rng.integers(len(values)))
        replacement = int(rng.integers(1, 14))
        replacement = replacement if replacement != values[position] else replacement % 13 + 1
        changed = values[:position] + [replacement] + values[position + 1:]
        formula = _random_formula(changed, rng)[0]
    elif kind == "illegal_formula":
        formula = correct.replace(" * ", " x ", 1) if " * " in correct else "(" + correct
    elif kind == "wrong_cards":
        # Misread one card and reason consistently with the misreading.
        position = int(rng.integers(len(cards)))
        rank = int(rng.integers(1, 14))
        if rank_label(rank) == cards[position]:
            rank = rank % 13 + 1
        cards[position] = rank_label(rank)
        values[position] = card_value(rank, config.face_cards)
        formula = solve(values, config.target) or _random_formula(values, rng)[0]
    return json.dumps({"cards": cards, "number": values, "formula": f"{formula} = {config.target}"})


def suboptimal_trajectories(config: GeneralPointsConfig, seed: int, size: int) -> list[Conversation]:
    """`size` multi-turn trajectories: 1..max_verify_steps-1 wrong attempts, each followed by the verifier's
    feedback turn, then the ideal answer (the sub-optimal expert data of the paper's ablation). Needs
    max_verify_steps >= 2."""
    if config.max_verify_steps < 2:
        raise ValueError("sub-optimal trajectories need max_verify_steps >= 2 (room for a wrong attempt).")
    rng = np.random.default_rng([seed, 1])
    conversations = []
    for hand in sample_hands(config, seed, size):
        state = reset(config, hand=hand)
        wrong_attempts = int(rng.integers(1, config.max_verify_steps))
        for _ in range(wrong_attempts):
            response = wrong_response(hand, config, rng)
            state, transition = step(state, response)
            if transition.verdict.success:  # cannot happen: every wrong answer is wrong by construction
                raise AssertionError("a generated wrong answer was judged correct")
        conversations.append(state.conversation + (Message("assistant", expert_response(hand, config)),))
    return conversations


def write_jsonl(conversations: Sequence[Conversation], path: str | Path) -> Path:
    """Write conversations as JSONL at `path`; images go to `<stem>_images/NNNNNN.png` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = path.parent / f"{path.stem}_images"
    with path.open("w", encoding="utf-8") as out:
        for index, conversation in enumerate(conversations):
            messages = []
            for turn, message in enumerate(conversation):
                record = {"role": message.role, "content": message.content}
                if message.image is not None:
                    image_dir.mkdir(exist_ok=True)
                    name = f"{index:06d}" + (f"_{turn}" if turn else "") + ".png"
                    Image.fromarray(message.image).save(image_dir / name)
                    record["image"] = f"{image_dir.name}/{name}"
                messages.append(record)
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Conversation]:
    """Read conversations written by `write_jsonl` (images loaded as (H, W, 3) uint8 arrays)."""
    path = Path(path)
    conversations = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                messages = tuple(
                    Message(m["role"], m["content"],
                            None if "image" not in m
                            else np.asarray(Image.open(path.parent / m["image"]).convert("RGB"), dtype=np.uint8))
                    for m in record["messages"])
            except (ValueError, KeyError, TypeError, OSError) as error:
                raise ValueError(f"{path}:{number} is not a conversation record ({error}); write it with "
                                 "tasks.general_points.write_jsonl.") from None
            conversations.append(messages)
    return conversations
