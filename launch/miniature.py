"""The CPU miniature of "SFT Memorizes, RL Generalizes" (docs/miniature.md): does SFT memorise and RL generalise
at 10M parameters, on a 2-core CPU?

The paper's finding rests on a pretrained model that already reads the rule written in its prompt. A model
trained from scratch on in-distribution data alone can never pass a rule-OOD test, so the miniature first builds
that premise, then runs the paper's two arms from it:

  base/        the stand-in for pretraining (`memgen sft` from a random `small` model): GeneralPoints prompts
               that state the face-card rule (J/Q/K = 10, or 11/12/13), several targets, mixed suits, with expert
               answers and a share of multi-turn revision examples (wrong attempt, verifier message, right answer);
  rl-seedS/    PPO (or GRPO, rl.algorithm) with multi-turn verification (`memgen rl`) from base on
               in-distribution instances only (J/Q/K = 10, the post-training target, black suits);
  sft-seedS/   SFT (`memgen sft`) from base on in-distribution expert answers only, for as many steps as make its
               training GFLOPs equal the RL arm's (X = 6 N D for trained tokens + 2 N D for rollout tokens, both
               on top of the base's 6 N D_init, rl/compute.py).

Both arms are evaluated before their first update and at `eval_points` compute points on in-distribution and
rule-OOD (J/Q/K = 11/12/13, every hand holds a face card) with one evaluation (`launch.rl_common.evaluate`: greedy,
`max_verify_steps` verification steps) on hands from GeneralPoints' held-out pool: no evaluation hand is in any
training set of any stage, which `check_disjoint` verifies on the actual hands before anything trains.

OUT/report.md (what ran, wall times, the results table with standard errors, the reading, Figure 5/6 style
plots), OUT/metrics.jsonl (every stage's records, tagged with "stage") and OUT/summary.json. Every stage is a
resumable run directory: re-running the same command continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from launch.config import (CheckpointConfig, DataConfig, SFTConfig, check_counts, load_config, register_preset,
                           to_dict)
from sft.optim import OptimizerConfig

SUMMARY_FILENAME = "summary.json"


@dataclasses.dataclass(frozen=True)
class BaseStageConfig:
    """The stand-in for pretraining: ``steps`` SFT steps of ``batch_size`` examples (each example seen once) from
    scratch at peak ``lr``. The mixture: face-card rule uniform over ("ten", "distinct"), target uniform over
    ``targets``, suits mixed; ``face_card_share`` of the hands hold a J/Q/K (so the rule matters);
    ``revision_share`` of the examples are multi-turn revisions (1..max_verify_steps-1 wrong attempts with the
    verifier's messages, then the expert answer)."""

    # 450 x 32 is the shortest base measured that solves rule-OOD hands (14% greedy, the paper's base 11.5%), so
    # a drop under SFT is measurable; 300 steps solved none (docs/miniature.md).
    steps: int = 450
    batch_size: int = 32
    lr: float = 1e-3
    targets: tuple[int, ...] = (24, 18, 12)
    face_card_share: float = 0.5
    revision_share: float = 0.15

    def __post_init__(self) -> None:
        check_counts("base", 1, steps=self.steps, batch_size=self.batch_size)
        if not self.targets:
            raise ValueError("base.targets=[] needs at least one target")


@dataclasses.dataclass(frozen=True)
class SFTArmConfig:
    """The SFT arm: in-distribution optimal single-turn expert answers (``examples`` of them, the paper's main
    SFT data), batches of ``batch_size``, constant peak ``lr`` after a short warm-up. Its number of steps is
    derived from the RL arm's measured compute."""

    # the miniature's SFT-vs-RL result depends on this: at 1e-4 SFT ends below RL on rule-OOD (8 seeds), at RL's
    # 1e-5 or 3e-5 above it; with 3x the compute 3e-5 falls below RL too, 1e-5 does not (it never fits the
    # training rule hard; docs/miniature.md, "Control" and "Three times the compute")
    lr: float = 1e-4
    batch_size: int = 32
    examples: int = 4096

    def __post_init__(self) -> None:
        check_counts("sft", 1, batch_size=self.batch_size, examples=self.examples)


# RLArmConfig's fields that only PPO's critic reads; GRPO refuses any of them away from its default
CRITIC_FIELDS = ("value_loss_trains_trunk", "value_lr_scale", "critic_warmup", "value_clip_eps")


@dataclasses.dataclass(frozen=True)
class RLArmConfig:
    """The RL arm: ``updates`` updates on ``episodes_per_update`` in-distribution episodes sampled at
    ``temperature``; Adam at ``lr`` decaying (cosine) to ``final_lr``; ``epochs`` passes over the buffer in
    minibatches of ``minibatch_size`` transitions; the paper's clip 0.1. ``algorithm`` "ppo" (the paper: a value
    head, value coefficient 0.5, GAE with gamma 0.9, lambda 0.95) or "grpo" (no critic: ``group_size`` episodes
    per hand, each episode's return normalised within its group, rl.grpo; the same clip, epochs, minibatches and
    optimizer, so only the advantage estimate differs). No KL to the base by default (the paper has none);
    ``kl_mode`` "k1_reward" or "k3_loss" with ``kl_coef`` > 0 adds one (rl.ppo.PPOConfig; GRPO takes k3_loss
    only), e.g. to hold a larger ``lr`` near the base."""

    updates: int = 12
    episodes_per_update: int = 32
    # by PPO's usual trust-region reading: the first update's approx_kl is 0.02 at 1e-5, 0.12 at 3e-5 and 0.7 at
    # 1e-4 (clipping 28% / 48% / 66% of the tokens; a seed apart from the reported ones, docs/miniature.md)
    lr: float = 1e-5
    final_lr: float = 1e-6
    epochs: int = 2
    minibatch_size: int = 32
    temperature: float = 0.7
    max_grad_norm: float = 1.0
    kl_mode: Optional[Literal["k1_reward", "k3_loss"]] = None
    kl_coef: float = 0.0
    algorithm: Literal["ppo", "grpo"] = "ppo"
    group_size: int = 8
    # False: PPO's value loss trains the value head only, not the shared trunk (rl.ppo.PPOConfig)
    value_loss_trains_trunk: bool = True
    # the value head's learning rate over the policy's: at 1 the fresh head learns nothing in 12 updates
    # (explained variance 0, docs/miniature.md)
    value_lr_scale: float = 1.0
    # the first critic_warmup of the updates train the value head alone (launch.rl_config.RLConfig.critic_warmup);
    # their compute counts toward the arm's GFLOPs, so the SFT arm's equal budget includes it
    critic_warmup: int = 0
    # PPO's value clip (the paper's 0.1; None: unclipped): with returns of -1..5 it lets the value head's
    # predictions move ~0.1 per update whatever its learning rate (docs/miniature.md)
    value_clip_eps: Optional[float] = 0.1

    def __post_init__(self) -> None:
        check_counts("rl", 1, updates=self.updates, episodes_per_update=self.episodes_per_update)
        if (self.kl_mode is None) != (self.kl_coef == 0.0) or self.kl_coef < 0:
            raise ValueError(f"a KL penalty needs both rl.kl_mode (k1_reward or k3_loss) and rl.kl_coef > 0, got "
                             f"kl_mode={self.kl_mode!r}, kl_coef={self.kl_coef}.")
        critic_fields = [f for f in dataclasses.fields(self) if f.name in CRITIC_FIELDS]
        if self.algorithm == "grpo" and any(getattr(self, f.name) != f.default for f in critic_fields):
            raise ValueError(f"GRPO has no critic: {', '.join('rl.' + name for name in CRITIC_FIELDS)} apply to "
                             "rl.algorithm=ppo only.")
        if not 0 <= self.critic_warmup <= self.updates:
            raise ValueError(f"rl.critic_warmup={self.critic_warmup} must be between 0 and rl.updates="
                             f"{self.updates}.")
        if self.algorithm == "grpo" and self.kl_mode == "k1_reward":
            raise ValueError("GRPO puts its KL in the loss: use rl.kl_mode=k3_loss with rl.algorithm=grpo.")
        if self.algorithm == "grpo" and (self.group_size < 2 or self.episodes_per_update % self.group_size):
            raise ValueError(f"rl.episodes_per_update={self.episodes_per_update} must be a multiple of "
                             f"rl.group_size={self.group_size} (at least 2) for GRPO; change one of them.")
        self.ppo_config()  # PPOConfig's own checks (positive clips and scales, final_lr <= lr) when configured

    def ppo_config(self):
        """The arm's rl.ppo.PPOConfig: the paper's clip and GAE (0.9, 0.95) with this arm's fields. Under GRPO it
        still carries the optimizer (launch.rl_config.RLConfig) and the KL moves to grpo.kl_coef."""
        from rl.gae import GAEConfig
        from rl.ppo import PPOConfig

        grpo = self.algorithm == "grpo"
        return PPOConfig(minibatch_size=self.minibatch_size, epochs=self.epochs, learning_rate=self.lr,
                         final_learning_rate=self.final_lr, max_grad_norm=self.max_grad_norm,
                         gae=GAEConfig(0.9, 0.95), kl_mode=None if grpo else self.kl_mode,
                         kl_coef=0.0 if grpo else self.kl_coef,
                         value_loss_trains_trunk=self.value_loss_trains_trunk, value_lr_scale=self.value_lr_scale,
                         value_clip_eps=self.value_clip_eps)


@dataclasses.dataclass(frozen=True)
class MiniatureConfig:
    """The whole miniature. ``modality`` "language" (GP-L: the labels in the prompt) or "vision" (GP-VL: the
    rendered hand as an image, adding the visual-OOD split, red suits); ``num_cards`` cards per hand,
    post-training ``target``; a compact prompt template (tasks/general_points/templates/compact.txt, or
    compact_vision.txt); ``max_verify_steps`` verification steps per episode in RL and in
    evaluation; answers of at most ``max_new_tokens`` tokens; ``heldout_share`` of the rank multisets are
    evaluation-only; one base, then both arms for every seed in ``seeds``, each evaluated ``eval_points`` times
    after its start on ``eval_episodes`` held-out hands per split."""

    model: str = "small"
    modality: Literal["language", "vision"] = "language"
    num_cards: int = 3
    target: int = 24
    max_verify_steps: int = 2
    max_new_tokens: int = 48
    feedback_len: int = 48
    heldout_share: float = 0.25
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_points: int = 4
    eval_episodes: int = 128
    base: BaseStageConfig = BaseStageConfig()
    sft: SFTArmConfig = SFTArmConfig()
    rl: RLArmConfig = RLArmConfig()

    def __post_init__(self) -> None:
        check_counts("", 1, max_verify_steps=self.max_verify_steps, max_new_tokens=self.max_new_tokens,
                     feedback_len=self.feedback_len, eval_points=self.eval_points, eval_episodes=self.eval_episodes)
        if not self.seeds:
            raise ValueError("seeds=[] needs at least one seed")
        task_config(self)  # GeneralPoints' own checks of num_cards, target and heldout_share


class MiniatureError(ValueError):
    """The miniature cannot run as configured; the message says what to change."""


# --- task configs and data ----------------------------------------------------------------------------------------

def _template(name: str) -> str:
    """A packaged template by name (not by path: run directories must resume from any checkout)."""
    from tasks.general_points.prompts import PACKAGED

    return PACKAGED + name


def task_config(config: MiniatureConfig, *, face_cards: str = "ten", target: Optional[int] = None,
                suits: str = "black", require_face_card: bool = False, hand_pool: str = "train"):
    """A GeneralPoints config of the miniature (compact templates, its hand size and held-out share)."""
    from tasks.general_points import GeneralPointsConfig

    prompt = "compact_vision.txt" if config.modality == "vision" else "compact.txt"
    return GeneralPointsConfig(target=config.target if target is None else target, num_cards=config.num_cards,
                               face_cards=face_cards, require_face_card=require_face_card, suits=suits,
                               modality=config.modality, max_verify_steps=max(2, config.max_verify_steps),
                               hand_pool=hand_pool, heldout_share=config.heldout_share,
                               prompt_template=_template(prompt), feedback_template=_template("compact_feedback.txt"))


# (registered after task_config: MiniatureConfig's own check builds its GeneralPoints config)
register_preset("miniature", MiniatureConfig())
# `memgen demo`: seed 0 of the full experiment (7.5 minutes on 2 Zen 5 cores). Shorter stages measured nothing: a
# 150- or 300-step base solves ~0% of rule-OOD hands, so SFT cannot be seen to lower it, and 6 PPO updates from the
# 150-step base left greedy success at 0% in 3 of 4 seeds (docs/miniature.md, 2026-12-06).
register_preset("miniature-demo", MiniatureConfig(seeds=(0,)))
# CI: the tiny model, a few steps of everything (seconds of compute; the numbers mean nothing).
register_preset("miniature-tiny", MiniatureConfig(
    model="tiny", seeds=(0,), eval_points=1, eval_episodes=8, max_new_tokens=12, feedback_len=64,
    base=BaseStageConfig(steps=3, batch_size=8, targets=(24, 12)), sft=SFTArmConfig(examples=64, batch_size=8),
    rl=RLArmConfig(updates=1, episodes_per_update=4, minibatch_size=8, epochs=1)))


def task_name(config: MiniatureConfig) -> str:
    return "gp-vl" if config.modality == "vision" else "gp-l"


def split_names(config: MiniatureConfig) -> list[str]:
    """The evaluation splits: in-distribution, rule-OOD and, for the vision variant, visual-OOD (red suits)."""
    from tasks.general_points import evaluation_splits

    return list(evaluation_splits(task_config(config)))


def episode_config(config: MiniatureConfig, *, temperature: float):
    """The RL / evaluation episodes: in-distribution training split on the training pool (evaluation then uses
    the held-out pool, launch.rl_common.evaluate)."""
    from launch.rl_config import EpisodeConfig

    gp = task_config(config)
    return EpisodeConfig(target=config.target, num_cards=config.num_cards, face_cards="ten", modality=config.modality,
                         max_verify_steps=config.max_verify_steps, max_new_tokens=config.max_new_tokens,
                         temperature=temperature, feedback_len=config.feedback_len, prompt_bucket=16,
                         prompt_template=gp.prompt_template, feedback_template=gp.feedback_template,
                         suits="black", hand_pool="train")


def _split_counts(total: int, shares: list[float]) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``shares`` (largest remainders)."""
    raw = np.asarray(shares, dtype=np.float64) / np.sum(shares) * total
    counts = np.floor(raw).astype(int)
    counts[np.argsort(raw - counts)[::-1][: total - counts.sum()]] += 1
    return counts.tolist()


def base_cells(config: MiniatureConfig, total: int) -> list[tuple[Any, str, int]]:
    """The base mixture as (task config, kind "expert"/"revision", count) cells summing to ``total``."""
    base = config.base
    cells, shares = [], []
    for face_cards in ("ten", "distinct"):
        for target in base.targets:
            for face, face_share in ((False, 1 - base.face_card_share), (True, base.face_card_share)):
                for kind, kind_share in (("expert", 1 - base.revision_share), ("revision", base.revision_share)):
                    if face_share > 0 and kind_share > 0:
                        cells.append((task_config(config, face_cards=face_cards, target=target, suits="mixed",
                                                  require_face_card=face), kind))
                        shares.append(face_share * kind_share)
    return [(gp, kind, count) for (gp, kind), count in zip(cells, _split_counts(total, shares)) if count > 0]


def _cell_seed(seed: int, index: int) -> int:
    return 7919 * seed + 104729 * (index + 1)


def cell_hands(cells: list[tuple[Any, str, int]], seed: int) -> list:
    """The hands of the cells' examples, in `cell_data`'s order (the expert writers draw exactly these: hand
    sampling is a pure function of (config, seed, size))."""
    from tasks.general_points import sample_hands

    hands = [hand for index, (gp, _, count) in enumerate(cells) for hand in sample_hands(gp, _cell_seed(seed, index),
                                                                                         count)]
    return [hands[i] for i in np.random.default_rng(seed).permutation(len(hands))]


def cell_data(cells: list[tuple[Any, str, int]], seed: int) -> list:
    """The conversations of the cells (expert answers or multi-turn revisions), shuffled with ``seed``."""
    from tasks.general_points import expert_conversations, suboptimal_trajectories

    conversations = []
    for index, (gp, kind, count) in enumerate(cells):
        make = expert_conversations if kind == "expert" else suboptimal_trajectories
        conversations += make(gp, _cell_seed(seed, index), count)
    return [conversations[i] for i in np.random.default_rng(seed).permutation(len(conversations))]


def training_and_evaluation_hands(config: MiniatureConfig) -> tuple[dict[str, list], dict[str, list]]:
    """Every hand any stage trains on ({stage: hands}) and every evaluation hand ({split-seed: hands})."""
    train = {"base": cell_hands(base_cells(config, config.base.steps * config.base.batch_size), seed=0),
             "sft": cell_hands(sft_arm_cells(config), seed=1)}
    evaluation = {}
    for seed in config.seeds:
        train[f"rl-seed{seed}"] = rl_training_hands(config, seed)
        evaluation.update({f"{split}-seed{seed}": hands for split, hands in evaluation_hands(config, seed).items()})
    return train, evaluation


def sft_arm_cells(config: MiniatureConfig) -> list[tuple[Any, str, int]]:
    return [(task_config(config), "expert", config.sft.examples)]


def rank_multisets(hands) -> set[tuple[int, ...]]:
    return {tuple(sorted(card.rank for card in hand)) for hand in hands}


def check_disjoint(train_hands: dict[str, list], eval_hands: dict[str, list]) -> dict[str, int]:
    """Raise MiniatureError when any evaluation hand (as a rank multiset) appears in any training set; returns
    the number of distinct multisets on each side (for the summary)."""
    train = {name: rank_multisets(hands) for name, hands in train_hands.items()}
    evaluation = {name: rank_multisets(hands) for name, hands in eval_hands.items()}
    for train_name, train_set in train.items():
        for eval_name, eval_set in evaluation.items():
            shared = train_set & eval_set
            if shared:
                raise MiniatureError(f"the evaluation split {eval_name} shares {len(shared)} hands with the training "
                                     f"data {train_name} (e.g. ranks {sorted(shared)[0]}); this is a bug in the hand "
                                     "pools, please report it")
    return {**{f"train:{k}": len(v) for k, v in train.items()}, **{f"eval:{k}": len(v) for k, v in evaluation.items()}}


def rl_training_hands(config: MiniatureConfig, seed: int) -> list:
    """Every hand the RL arm of ``seed`` trains on (launch.rl_run draws update i's hands from (seed, i))."""
    from launch.rl_common import task_config as rl_task_config
    from launch.rl_run import update_episodes

    arm = rl_arm_config(config, Path("base"), seed)
    gp = rl_task_config(arm.episodes)
    return [state.hand for update in range(arm.updates) for state in update_episodes(arm, gp, update)]


def evaluation_hands(config: MiniatureConfig, seed: int) -> dict[str, list]:
    """The hands of every evaluation split of ``seed`` (what launch.rl_common.evaluate draws)."""
    from launch.rl_common import evaluation_episodes

    episodes = episode_config(config, temperature=0.0)
    return {split: [state.hand for state in evaluation_episodes(
        episodes, split=split, budget=config.max_verify_steps, num_episodes=config.eval_episodes, n_samples=1,
        seed=seed + 1)] for split in split_names(config)}


# --- the stages -----------------------------------------------------------------------------------------------------

def write_data_once(path: Path, make: Callable[[], list]) -> str:
    """Write the JSONL once (a resumed run trains on the very file it started with)."""
    from tasks.general_points import write_jsonl

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        write_jsonl(make(), temporary)
        temporary.replace(path)
    return str(path)


def write_base_data(config: MiniatureConfig, out: Path) -> str:
    """OUT/data/base.jsonl: the base stage's mixture (written once); returns its path."""
    return write_data_once(out / "data" / "base.jsonl",
                           lambda: cell_data(base_cells(config, config.base.steps * config.base.batch_size), seed=0))


def write_sft_data(config: MiniatureConfig, out: Path) -> str:
    """OUT/data/sft_in_distribution.jsonl: the SFT arm's in-distribution expert answers (written once)."""
    return write_data_once(out / "data" / "sft_in_distribution.jsonl",
                           lambda: cell_data(sft_arm_cells(config), seed=1))


def base_sft_config(config: MiniatureConfig, data_path: str) -> SFTConfig:
    base = config.base
    return SFTConfig(model=config.model, seed=0, steps=base.steps, batch_size=base.batch_size,
                     compute_dtype="float32", train_examples=base.steps * base.batch_size, eval_examples=0,
                     eval_every=0, greedy_examples=0, max_new_tokens=config.max_new_tokens, log_every=10,
                     mesh=(1, 1, 1), data=DataConfig(path=data_path, length_multiple=16, length_buckets=2),
                     optimizer=OptimizerConfig(lr=base.lr, warmup_fraction=0.05),
                     checkpoint=CheckpointConfig(every_steps=max(1, base.steps // 4), keep=1, async_save=False))


def sft_arm_config(config: MiniatureConfig, base_dir: Path, data_path: str, seed: int, steps: int) -> SFTConfig:
    sft = config.sft
    return SFTConfig(model=str(base_dir), seed=seed, steps=steps, batch_size=sft.batch_size,
                     compute_dtype="float32", train_examples=sft.examples, eval_examples=0,
                     eval_every=max(1, steps // config.eval_points), greedy_examples=0,
                     max_new_tokens=config.max_new_tokens, log_every=5, mesh=(1, 1, 1),
                     data=DataConfig(path=data_path, length_multiple=16),
                     optimizer=OptimizerConfig(lr=sft.lr, schedule="constant", warmup_fraction=0.05),
                     checkpoint=CheckpointConfig(every_steps=max(1, steps // config.eval_points), keep=1,
                                                 async_save=False))


def rl_arm_config(config: MiniatureConfig, base_dir: Path, seed: int):
    from launch.rl_config import RLConfig
    from rl.grpo import GRPOConfig

    rl = config.rl
    grpo = rl.algorithm == "grpo"
    ppo = rl.ppo_config()
    grpo_config = GRPOConfig(group_size=rl.group_size, clip_eps=ppo.clip_eps, kl_coef=rl.kl_coef if grpo else 0.0,
                             epochs=rl.epochs, minibatch_size=rl.minibatch_size)
    return RLConfig(init=str(base_dir), seed=seed, updates=rl.updates, critic_warmup=rl.critic_warmup,
                    episodes_per_update=rl.episodes_per_update,
                    episodes=episode_config(config, temperature=rl.temperature), ppo=ppo, algorithm=rl.algorithm,
                    grpo=grpo_config,
                    eval_every=max(1, rl.updates // config.eval_points), eval_episodes=config.eval_episodes,
                    eval_temperature=0.0, checkpoint=CheckpointConfig(every_steps=1, keep=1, async_save=False))


def sft_arm_evaluator(config: MiniatureConfig, base_dir: Path, seed: int) -> Callable[[Any, int, float], list[dict]]:
    """The SFT arm's evaluation: the RL arm's (same episodes, hands, greedy decoding, budget), on SFT params."""
    from launch.metrics_schema import eval_record
    from launch.rl_common import evaluate, load_policy

    policy = load_policy(str(base_dir), seed=seed)
    value_head = policy.params["value_head"]  # it only feeds the rollout's (unused) values
    policy = dataclasses.replace(policy, params=None)  # the rest would stay in memory all through the SFT arm
    episodes = episode_config(config, temperature=0.0)
    runners: dict = {}

    def evaluate_params(params: Any, step: int, gflops: float) -> list[dict]:
        params = {**params, "value_head": value_head}
        return [eval_record(step=step, gflops=gflops, task=task_name(config), arm="sft", seed=seed, **evaluate(
            policy, params, episodes, split=split, budget=config.max_verify_steps,
            num_episodes=config.eval_episodes, n_samples=1, seed=seed + 1, runners=runners))
            for split in split_names(config)]

    return evaluate_params


def rl_post_training_gflops(run_dir: Path) -> float:
    """An RL run's GFLOPs beyond its starting point: the last train record's minus the evaluation before the
    first update (which sits at 6 N D_init)."""
    from launch.metrics import read_metrics

    records = read_metrics(run_dir)
    start = min(r["gflops"] for r in records if r["kind"] == "eval")
    return max(r["gflops"] for r in records if r["kind"] == "train") - start


def sft_steps_for(config: MiniatureConfig, rl_post_gflops: float, conversations: list, num_params: int,
                  tokenizer) -> int:
    """SFT steps whose 6 N D equals the RL arm's post-training GFLOPs (D from the arm data's mean length)."""
    from sft.batches import encoded_lengths

    tokens_per_step = float(np.mean(encoded_lengths(tokenizer, conversations))) * config.sft.batch_size
    return max(1, int(round(rl_post_gflops * 1e9 / (6.0 * num_params * tokens_per_step))))


def _stage(name: str, log: Callable[[str], None]):
    log(f"[miniature] {name}")
    return time.monotonic()


def run_miniature(config: MiniatureConfig, out_dir: str | Path, *, log: Callable[[str], None] = print,
                  progress: Optional[bool] = None) -> dict:
    """Run (or resume) the miniature in ``out_dir``; returns the summary (also OUT/summary.json)."""
    from launch.model_source import load_model
    from launch.rl_run import run_rl
    from tasks.general_points import read_jsonl
    from launch.sft_run import run_sft
    from rl.compute import parameter_count

    out = Path(out_dir)
    if config.rl.episodes_per_update * config.max_verify_steps % config.rl.minibatch_size:
        raise MiniatureError(f"rl.episodes_per_update x max_verify_steps must be a multiple of rl.minibatch_size "
                             f"({config.rl.minibatch_size}); change one of them")
    if (out / "miniature.json").is_file() and load_config(MiniatureConfig, out / "miniature.json") != config:
        raise MiniatureError(f"{out} holds a miniature with another config; use a new --out directory or the same "
                             "settings to resume it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "miniature.json").write_text(json.dumps(to_dict(config), indent=2) + "\n", encoding="utf-8")
    started, walls = time.monotonic(), {}

    began = _stage("data: base mixture, in-distribution SFT data, evaluation hands (held-out pool)", log)
    distinct = check_disjoint(*training_and_evaluation_hands(config))
    base_data, sft_data = write_base_data(config, out), write_sft_data(config, out)
    walls["data"] = time.monotonic() - began

    began = _stage(f"base stage: {config.model} from scratch, {config.base.steps} steps on the rule-stating mixture",
                   log)
    base_dir = out / "base"
    run_sft(base_sft_config(config, base_data), base_dir, progress=progress)
    walls["base"] = time.monotonic() - began

    source = load_model(str(base_dir), seed=0)
    num_params = parameter_count(source.params)
    runs, sft_steps = [], None
    for seed in config.seeds:
        began = _stage(f"RL arm, seed {seed}: {config.rl.algorithm.upper()}, {config.rl.updates} updates, "
                       "in-distribution only", log)
        rl_dir = out / f"rl-seed{seed}"
        run_rl(rl_arm_config(config, base_dir, seed), rl_dir, show_progress=progress)
        walls[f"rl-seed{seed}"] = time.monotonic() - began
        if sft_steps is None:  # every seed's SFT arm gets the first RL arm's compute, so their steps align
            sft_steps = sft_steps_for(config, rl_post_training_gflops(rl_dir), read_jsonl(sft_data), num_params,
                                      source.tokenizer)
        began = _stage(f"SFT arm, seed {seed}: {sft_steps} steps on in-distribution expert answers (equal GFLOPs)",
                       log)
        sft_dir = out / f"sft-seed{seed}"
        run_sft(sft_arm_config(config, base_dir, sft_data, seed, sft_steps), sft_dir, progress=progress,
                evaluate=sft_arm_evaluator(config, base_dir, seed))
        walls[f"sft-seed{seed}"] = time.monotonic() - began
        runs += [rl_dir, sft_dir]

    began = _stage("report", log)
    summary = write_outputs(config, out, base_dir, runs, distinct=distinct, walls=walls, sft_steps=sft_steps,
                            num_params=num_params, total_seconds=time.monotonic() - started)
    log(f"[miniature] done: {out / 'report.md'}")
    return summary


# --- outputs ----------------------------------------------------------------------------------------------------------

def combined_metrics(out: Path, stage_dirs: list[Path], base_stage: str = "base") -> Path:
    """OUT/metrics.jsonl: every stage's records in stage order, each tagged with its "stage"; the base stage's
    records (an SFT run, so they say arm "sft") get arm "base", so `memgen report OUT` does not count them as
    the SFT arm's."""
    from launch.metrics import read_metrics

    path = out / "metrics.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for stage_dir in stage_dirs:
            for record in read_metrics(stage_dir):
                tagged = {**record, "stage": stage_dir.name}
                if stage_dir.name == base_stage and "arm" in record:
                    tagged["arm"] = "base"
                file.write(json.dumps(tagged) + "\n")
    return path


def verdict_sentences(rows) -> list[str]:
    """The miniature's claim check on rule-OOD success (the rows of `launch.report.results_rows`): what each arm's
    change was, how the arms compare at the last (equal-compute) point, and whether the paper's claim "SFT OOD
    down, RL OOD up/flat" holds, decided by `launch.report.paper_claim` (the same function as report.md's
    reading, so the two never disagree); the claim is stated only when the intervals support it."""
    from launch.report import PAPER_CLAIM, paper_claim

    by_arm = {row.arm: row for row in rows if row.split == "rule_ood"}
    if "sft" not in by_arm or "rl" not in by_arm:
        return ["Rule-OOD was not evaluated for both arms, so there is no claim to check."]
    sft, rl = by_arm["sft"], by_arm["rl"]
    def said(row):
        if row.change is None:
            return "was evaluated once"
        return (f"changed by {100 * row.change:+.1f} points (2 SE = {200 * row.change_se:.1f})"
                + ("" if row.direction is None else f", significantly {row.direction}"))
    found = f"Rule-OOD success from the base to the last compute point: SFT {said(sft)}; RL {said(rl)}."
    gap, gap_se = rl.final - sft.final, math.hypot(rl.final_se, sft.final_se)
    versus = (f"At the last compute point (equal GFLOPs) rule-OOD success is RL {100 * rl.final:.1f}% vs SFT "
              f"{100 * sft.final:.1f}%: RL - SFT = {100 * gap:+.1f} points (2 SE = {200 * gap_se:.1f}), "
              + ("a significant difference." if abs(gap) > 2 * gap_se else "not a significant difference."))
    claim = paper_claim(sft, rl)
    if claim.holds:
        return [found, versus, f"At this scale the miniature reproduces the paper's pattern ({PAPER_CLAIM}) on "
                               f"rule-OOD at equal training compute: {claim.observed}."]
    return [found, versus, f"The paper's pattern ({PAPER_CLAIM}) is not established on rule-OOD by this run: "
                           f"{claim.observed}; the numbers above are what was measured."]


def write_outputs(config: MiniatureConfig, out: Path, base_dir: Path, runs: list[Path], *, distinct: dict,
                  walls: dict, sft_steps: Optional[int], num_params: int, total_seconds: float) -> dict:
    from launch.metrics_schema import load_runs
    from launch.plots import plot_all
    from launch.report import render_report, results_rows

    combined_metrics(out, [base_dir, *runs])
    loaded = load_runs(runs)
    made, skipped = plot_all(loaded, out)
    rows = results_rows(loaded, "success")
    verdict = verdict_sentences(rows)
    summary = {"config": to_dict(config), "num_params": num_params, "sft_steps": sft_steps,
               "wall_seconds": {**{k: round(v, 1) for k, v in walls.items()}, "total": round(total_seconds, 1)},
               "distinct_rank_multisets": distinct, "verdict": verdict,
               "results": [dict(split=r.split, arm=r.arm, seeds=r.seeds, initial=r.initial, initial_se=r.initial_se,
                                final=r.final, final_se=r.final_se, change=r.change, change_se=r.change_se,
                                initial_gflops=r.initial_gflops, final_gflops=r.final_gflops) for r in rows]}
    (out / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    arm_name = config.rl.algorithm.upper()
    groups = f" in groups of {config.rl.group_size} per hand" if config.rl.algorithm == "grpo" else ""
    header = [
        "# memgen miniature: does SFT memorise and RL generalise at 10M parameters?", "",
        f"One base model ({config.model}, {num_params:,} parameters) trained from scratch on GeneralPoints prompts "
        f"that state the face-card rule ({config.num_cards} cards, targets {list(config.base.targets)}, both rules, "
        f"{config.base.steps} steps x {config.base.batch_size}); then, per seed {list(config.seeds)}, {arm_name} with "
        f"{config.max_verify_steps} verification steps ({config.rl.updates} updates x {config.rl.episodes_per_update} "
        f"episodes{groups}) and SFT on in-distribution expert answers ({sft_steps} steps x {config.sft.batch_size}) "
        f"at equal training GFLOPs, both only on J/Q/K = 10, target {config.target}. Evaluation: greedy, "
        f"{config.max_verify_steps} verification steps, {config.eval_episodes} held-out hands per split and point "
        "(no evaluation hand occurs in any training set: checked). docs/miniature.md explains the design.", "",
        "## Verdict", "", *[f"- {sentence}" for sentence in verdict], "",
        "## Wall time (this machine)", "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in summary["wall_seconds"].items()], "", "---", ""]
    report = render_report(loaded, made, skipped)
    (out / "report.md").write_text("\n".join(header) + report, encoding="utf-8")
    return summary
