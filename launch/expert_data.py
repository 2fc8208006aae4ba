"""The expert data of an SFT run: the training conversations (generated from the task config and the run's seed,
or read from a JSONL the task's writer made) and a held-out set from the same distribution that shares no prompt
with them (the "Quagmires" held-out generalisation loss is measured on it), plus the evaluation hands of the
greedy-success hook. Host side, numpy + the tasks' public functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tasks.common import Conversation

# Held-out and evaluation data are drawn with seeds derived from the run's seed, never equal to it.
HELDOUT_SEED_OFFSET = 1_000_003
GREEDY_SEED_OFFSET = 2_000_003


class DataError(ValueError):
    """The expert data cannot be built or read; the message says which file or setting and what to do."""


@dataclass(frozen=True)
class ExpertData:
    """``train``: the SFT examples; ``heldout``: examples from the same distribution whose prompts (text and
    image) appear nowhere in ``train``."""

    train: tuple[Conversation, ...]
    heldout: tuple[Conversation, ...]


def task_config(task: str, modality: str) -> Any:
    """The task's training config (the in-distribution setting of the paper)."""
    if task == "general_points":
        from tasks.general_points import GeneralPointsConfig
        return GeneralPointsConfig(modality=modality)
    raise DataError(f"task {task!r} has no expert data in this checkout yet (V-IRL lands with tasks/virl); "
                    "use task=general_points")


def prompt_key(conversation: Conversation) -> str:
    """A digest of everything before the last assistant turn (texts and image bytes): two examples with the same
    key ask the same question."""
    digest = hashlib.sha256()
    last = max(i for i, m in enumerate(conversation) if m.role == "assistant")
    for message in conversation[:last]:
        digest.update(f"{message.role}\x00{message.content}\x00".encode())
        if message.image is not None:
            digest.update(message.image.tobytes())
    return digest.hexdigest()


def _generate(task: str, modality: str, seed: int, size: int) -> list[Conversation]:
    config = task_config(task, modality)
    from tasks.general_points import expert_conversations
    return expert_conversations(config, seed, size)


def read_expert_jsonl(path: str) -> list[Conversation]:
    """Conversations from a JSONL written by ``tasks.general_points.write_jsonl``."""
    from tasks.general_points import read_jsonl

    if not Path(path).is_file():
        raise DataError(f"the expert data file {path} does not exist; write it with "
                        "tasks.general_points.write_jsonl or leave data.path empty to generate the data")
    try:
        conversations = read_jsonl(path)
    except ValueError as error:
        raise DataError(str(error)) from None
    if not conversations:
        raise DataError(f"the expert data file {path} holds no conversation; write some with write_jsonl")
    for number, conversation in enumerate(conversations, 1):
        if not any(m.role == "assistant" for m in conversation):
            raise DataError(f"{path}:{number} has no assistant turn to learn from; every line needs one")
    return conversations


def heldout_conversations(task: str, modality: str, seed: int, size: int,
                          exclude: Sequence[Conversation]) -> list[Conversation]:
    """``size`` expert examples drawn with ``seed`` whose prompts are not among ``exclude``'s."""
    if size <= 0:
        return []
    seen = {prompt_key(c) for c in exclude}
    drawn = size
    while True:
        candidates = _generate(task, modality, seed, drawn)
        kept = [c for c in candidates if prompt_key(c) not in seen]
        if len(kept) >= size:
            return kept[:size]
        if drawn > 64 * size + 4096:
            raise DataError(f"could not find {size} held-out examples that differ from the training prompts; "
                            "lower eval_examples")
        drawn *= 2


def load_expert_data(*, task: str, modality: str, seed: int, train_examples: int, eval_examples: int,
                     path: str = "") -> ExpertData:
    """The run's training and held-out expert data (see the module docstring)."""
    if path:
        train = read_expert_jsonl(path)
    else:
        if train_examples < 1:
            raise DataError(f"train_examples must be at least 1, got {train_examples}")
        train = _generate(task, modality, seed, train_examples)
    heldout = heldout_conversations(task, modality, seed + HELDOUT_SEED_OFFSET, eval_examples, train)
    return ExpertData(train=tuple(train), heldout=tuple(heldout))


def greedy_episodes(task: str, modality: str, seed: int, size: int) -> dict[str, list[tuple[Any, Any]]]:
    """{split: [(episode state, split config), ...]} for each of the paper's evaluation splits: ``size`` hands
    drawn with a seed derived from ``seed`` (the same hands at every evaluation of a run)."""
    from tasks.general_points import evaluation_splits, reset, sample_hands

    config = task_config(task, modality)
    episodes = {}
    for split, split_config in evaluation_splits(config).items():
        hands = sample_hands(split_config, seed + GREEDY_SEED_OFFSET, size)
        episodes[split] = [(reset(split_config, hand=hand), split_config) for hand in hands]
    return episodes
