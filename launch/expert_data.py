"""The expert data of an SFT run: the training conversations (generated from the task config and the run's seed,
or read from a JSONL the task's writer made) and a held-out set from the same distribution that shares no prompt
with them (the "Quagmires" held-out generalisation loss is measured on it), plus the evaluation hands of the
greedy-success hook (GeneralPoints; V-IRL's greedy evaluation plays routes through launch.rl_common.evaluate).
Host side, numpy + the tasks' public functions.

GeneralPoints: one example per hand (``tasks.general_points.expert_conversations``; the sub-optimal ablation:
``suboptimal_trajectories``). V-IRL: one example per decision point of a route (``tasks.virl.expert``'s
``optimal_conversations`` / ``suboptimal_conversations``), on the routes ``memgen data --task virl-*`` draws for
training (launch/data_cmd.py: the training city ``train_city(0)``, then ``train_city(1)``, ... with 250 routes
each, route seed = the run's seed); ``size`` counts examples, so the routes are walked in order until there are
``size`` of them (the last route may be cut). V-IRL-VL examples carry the 2x2 view grid of every decision.
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


KINDS = ("optimal", "suboptimal")


def task_config(task: str, modality: str) -> Any:
    """The task's training config (the in-distribution setting of the paper)."""
    if task == "general_points":
        from tasks.general_points import GeneralPointsConfig
        return GeneralPointsConfig(modality=modality)
    if task == "virl":
        from tasks.virl import VirlConfig
        return VirlConfig(modality=modality)  # absolute actions, 2 answers per decision (the paper's training)
    raise DataError(f"task {task!r} has no expert data; use task=general_points or task=virl")


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


def _virl_conversations(config: Any, seed: int, size: int, kind: str) -> list[Conversation]:
    """The first ``size`` per-decision examples of the training routes of ``seed`` (module docstring)."""
    import itertools

    import tasks.virl as virl
    from launch.data_cmd import VIRL_ROUTES_PER_TRAIN_CITY, VIRL_TRAIN_CITY_SEED
    from tasks.virl import expert

    walk = expert.optimal_conversations if kind == "optimal" else expert.suboptimal_conversations
    out: list[Conversation] = []
    for k in itertools.count():
        city = virl.train_city(VIRL_TRAIN_CITY_SEED + k)
        views = None
        if config.modality == "vision":
            from tasks.virl.render import CityViews
            views = CityViews(city, config.view_size, config.separator_px, config.landmark_radius_m)
        for route in virl.generate_routes(city, VIRL_ROUTES_PER_TRAIN_CITY, seed):
            out += walk(route, config, views=views)
            if len(out) >= size:
                return out[:size]


def _generate(task: str, modality: str, seed: int, size: int, kind: str = "optimal") -> list[Conversation]:
    """``size`` expert examples of the task drawn with ``seed``: optimal ones, or the sub-optimal ablation's
    (a wrong answer, the verifier's message, then the ideal answer)."""
    if kind not in KINDS:
        raise DataError(f"expert data kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    config = task_config(task, modality)
    if task == "virl":
        return _virl_conversations(config, seed, size, kind)
    from tasks.general_points import expert_conversations, suboptimal_trajectories
    return (expert_conversations if kind == "optimal" else suboptimal_trajectories)(config, seed, size)


def read_expert_jsonl(path: str, task: str = "general_points") -> list[Conversation]:
    """Conversations from a JSONL written by the task's writer (``tasks.general_points.write_jsonl``,
    ``tasks.virl.expert.write_jsonl``; both are what ``memgen data`` writes), images loaded from the files beside
    it."""
    if task == "virl":
        from tasks.virl.expert import read_jsonl
        writer = "tasks.virl.expert.write_jsonl (memgen data --task virl-l|virl-vl)"
    else:
        from tasks.general_points import read_jsonl
        writer = "tasks.general_points.write_jsonl (memgen data --task gp-l|gp-vl)"

    if not Path(path).is_file():
        raise DataError(f"the expert data file {path} does not exist; write it with {writer} "
                        "or leave data.path empty to generate the data")
    try:
        conversations = read_jsonl(path)
    except ValueError as error:
        raise DataError(str(error)) from None
    if not conversations:
        raise DataError(f"the expert data file {path} holds no conversation; write some with {writer}")
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
                     path: str = "", kind: str = "optimal", heldout_path: str = "") -> ExpertData:
    """The run's training and held-out expert data (see the module docstring): read from ``path``, or
    ``train_examples`` generated examples of ``kind`` ("optimal", or "suboptimal" for the ablation; a JSONL of
    either comes from ``memgen data --kind expert|suboptimal``). The held-out set is the first ``eval_examples``
    of ``heldout_path``, or generated optimal examples of the task's default config (the held-out loss is the NLL
    of the ideal answers), which only match training data of that config: a ``path`` written with other
    templates or settings needs its own held-out file."""
    if path:
        train = read_expert_jsonl(path, task)
    else:
        if train_examples < 1:
            raise DataError(f"train_examples must be at least 1, got {train_examples}")
        train = _generate(task, modality, seed, train_examples, kind)
    if heldout_path:
        heldout = _read_heldout(heldout_path, task, eval_examples, train)
    else:
        heldout = heldout_conversations(task, modality, seed + HELDOUT_SEED_OFFSET, eval_examples, train)
    return ExpertData(train=tuple(train), heldout=tuple(heldout))


def _read_heldout(path: str, task: str, size: int, train: Sequence[Conversation]) -> list[Conversation]:
    """The first ``size`` conversations of a held-out JSONL, refused when it holds fewer or when any of them asks
    a question the training data also asks (the loss would not be held out)."""
    if size <= 0:
        return []
    heldout = read_expert_jsonl(path, task)[:size]
    if len(heldout) < size:
        raise DataError(f"the held-out file {path} holds {len(heldout)} conversations, eval_examples asks for "
                        f"{size}; lower eval_examples or write more")
    seen = {prompt_key(c) for c in train}
    shared = [number for number, c in enumerate(heldout, 1) if prompt_key(c) in seen]
    if shared:
        raise DataError(f"{len(shared)} of the first {size} conversations in the held-out file {path} ask a "
                        f"question of the training data (line {shared[0]} first); held-out examples must not")
    return heldout


def greedy_episodes(task: str, modality: str, seed: int, size: int) -> dict[str, list[tuple[Any, Any]]]:
    """GeneralPoints: {split: [(episode state, split config), ...]} for each of the paper's evaluation splits:
    ``size`` hands drawn with a seed derived from ``seed`` (the same hands at every evaluation of a run). V-IRL's
    greedy evaluation plays whole routes instead (launch.sft_run, through launch.rl_common.evaluate)."""
    from tasks.general_points import evaluation_splits, reset, sample_hands

    if task != "general_points":
        raise DataError(f"greedy_episodes draws GeneralPoints hands; task {task!r} is evaluated on routes")
    config = task_config(task, modality)
    episodes = {}
    for split, split_config in evaluation_splits(config).items():
        hands = sample_hands(split_config, seed + GREEDY_SEED_OFFSET, size)
        episodes[split] = [(reset(split_config, hand=hand), split_config) for hand in hands]
    return episodes
