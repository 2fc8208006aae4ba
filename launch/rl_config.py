"""Configs and presets of `memgen rl` and `memgen eval` (registered in launch/config.py's preset registry when
this module is imported; kept apart from launch/config.py so the SFT and RL commands can evolve separately).

Presets: rl-gp-l, rl-gp-vl (registered by launch/presets.py from the preset matrix's reference cells: the paper's
PPO hyperparameters on Llama 3.2 11B Vision: lr 1e-6 -> 1e-9, 4 epochs, clip 0.1, grad-norm 0.01, gamma 0.9,
lambda 0.95, 5 verification steps, temperature 0.2, 512 new tokens), rl-tiny (the tiny random model with the
reachable "digits" reward, for tests and CPU demos), eval-gp-l, eval-gp-vl, eval-tiny (verification-budget sweep
1, 3, 5, 10 as the paper's Figure 10). The -vl presets are the vision variants (modality=vision: the rendered hand
is encoded once per episode). V-IRL: rl-virl-l, rl-virl-vl (15 updates, V-IRL-VL at lr 1e-7), eval-virl-l,
eval-virl-vl, and the CPU variants rl-virl-tiny, eval-virl-tiny (docs/rl.md "V-IRL"). The paper presets use the
reference's 0.5 weight before the answer key and the eval presets add the held-out loss.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from launch.config import CheckpointConfig, check_counts, register_preset
from rl.gae import GAEConfig
from rl.grpo import GRPOConfig
from rl.ppo import PPOConfig


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """The task instances and how a response is sampled. ``target``/``num_cards``/``face_cards`` configure
    GeneralPoints (the training split; evaluation derives rule-OOD and visual-OOD from it). ``reward``: "task"
    (the verifier's reward) or "digits" (the share of the response's characters that are digits, in [0, 1]: a
    dense reward a tiny random model can learn within a few updates; for tests and demos, not an experiment).
    ``feedback_len``: the feedback turn's token bucket; ``prompt_bucket``: prompts are left-padded to a multiple.
    ``prompt_template``/``feedback_template``: text files replacing GeneralPoints' packaged templates (docs/general_points.md), None = packaged.
    ``suits`` (GeneralPoints): the training hands' colours. ``hand_pool`` (GeneralPoints): "train" draws training
    hands from GeneralPoints' training pool of rank multisets and evaluates on the held-out pool, so no evaluation
    hand is ever trained on.

    V-IRL (``task="virl"``, docs/rl.md "V-IRL"): one rollout is one decision point; ``max_verify_steps`` is the
    number of judged answers per decision (the paper's 2; the scan runs one more step, the answer V-IRL's episode
    step judges "past the budget"); ``decision_points`` rollouts per update, every row playing routes back to back (a
    route that ends is replaced by a new one, a route still running at the end is bootstrapped with the value of
    its next prompt); the training pool holds ``train_routes`` routes of the training city, with
    ``min_route_steps``..``max_route_steps`` turn-by-turn steps (evaluation routes too, except visual OOD);
    ``prompt_len`` > 0 pads every prompt to exactly that many tokens (required for V-IRL: its prompts grow with
    the route's history, and one compiled rollout and update serve them all; a longer prompt is refused);
    ``prompt_template`` becomes VirlConfig.prompt_path (``feedback_template`` does not apply).

    ``cache_stages``: the rollout's KV cache grows in that many stages over the verification steps
    (`rl.rollout.RolloutConfig.cache_stages`; at most one per step): a turn's decode attention then reads the slots
    the conversation can hold so far, not all steps'; the same episodes, one more compiled decode loop per stage."""

    task: Literal["general_points", "virl"] = "general_points"
    modality: Literal["language", "vision"] = "language"
    target: int = 24
    num_cards: int = 4
    face_cards: Literal["ten", "distinct"] = "ten"
    max_verify_steps: int = 5
    max_new_tokens: int = 256
    temperature: float = 1.0
    feedback_len: int = 96
    prompt_bucket: int = 64
    reward: Literal["task", "digits"] = "task"
    prompt_template: str | None = None
    feedback_template: str | None = None
    suits: Literal["black", "red", "mixed"] = "black"
    hand_pool: Literal["all", "train"] = "all"
    prompt_len: int = 0
    decision_points: int = 8
    train_routes: int = 250
    min_route_steps: int = 2
    max_route_steps: int = 6
    cache_stages: int = 1

    def __post_init__(self):
        check_counts("EpisodeConfig", 1, max_verify_steps=self.max_verify_steps, max_new_tokens=self.max_new_tokens,
                     feedback_len=self.feedback_len, decision_points=self.decision_points,
                     train_routes=self.train_routes, min_route_steps=self.min_route_steps,
                     max_route_steps=self.max_route_steps, cache_stages=self.cache_stages)
        check_counts("EpisodeConfig", 0, prompt_len=self.prompt_len, temperature=self.temperature)
        if self.min_route_steps > self.max_route_steps:
            raise ValueError(f"EpisodeConfig.min_route_steps={self.min_route_steps} is above max_route_steps="
                             f"{self.max_route_steps}")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One RL run: ``updates`` PPO updates, each on a rollout of ``episodes_per_update`` episodes (N = episodes x
    max_verify_steps transitions, a multiple of ppo.minibatch_size). ``init``: where the policy comes from: a
    model preset name (random init from ``seed``), a Hugging Face mllama directory, or a `memgen sft` run
    directory (its final/ policy). A value head is added (random, from ``seed``) when the source has none.
    ``algorithm``: "ppo" (the paper) or "grpo" (groups of grpo.group_size consecutive episodes on one hand; the
    episode return is normalised within its group and given to each of its transitions; grpo.epochs and
    grpo.minibatch_size apply, and the optimizer is ppo_optimizer with the ppo.* learning-rate, eps and grad-norm
    fields).
    ``critic_warmup`` (PPO only, at most ``updates``): the first that many of the updates train the value head
    alone on the policy's rollouts (`rl.ppo_update(critic_only=True)` with the value head's input detached; the
    policy does not change, its tokens and FLOPs count as training compute), so that PPO starts with a critic
    that has learned something (verl's critic warm-up; OpenRLHF's freezing_actor_steps). They run at the constant
    peak rate; PPO then starts a fresh optimizer state (Adam's moments and count at zero, the cosine from its peak
    over the remaining updates), so the policy's first steps are ordinary first Adam steps.
    ``eval_every`` updates (0: only at the end; otherwise also before the first update) it evaluates
    ``eval_episodes`` episodes per split, sampled at ``eval_temperature`` (0: greedy).
    ``mesh``: the device mesh's (data, fsdp, tensor) sizes, as SFTConfig.mesh (-1: every remaining device; sizes
    that multiply to fewer than the visible devices use the first that many). Policy params, the train state
    (optimizer moments like their params), the rollout's prompts and KV cache and the PPO / GRPO buffer are placed
    on it by `model.sharding`'s rules. The default (1, 1, 1) is one device; e.g. mesh=1,-1,1 for FSDP over all
    the devices of one host (one process only, docs/rl.md).
    ``compute_dtype``, ``param_dtype``, ``remat``, ``attention_block``: the policy's compute dtype, its params'
    (and Adam's moments') dtype (float32 master weights; bfloat16 where they would not fit, as SFTConfig's),
    gradient-checkpointing policy in the update ("full": recompute each layer in the
    backward pass) and queries per attention block (model.config.ModelConfig; 0: all at once), for the rollouts,
    the update and the run's evaluations alike.
    ``freeze_vision`` (vision modality): the update reads the images the rollout encoded, so no gradient reaches
    the vision encoder and projector (they keep their params, and the update runs no encoder: cheaper). False (the
    default, as the reference, which trains the whole model): each training row's images are encoded again from
    their pixels inside the update, so the vision encoder and projector train with the rest."""

    init: str = "tiny"
    seed: int = 0
    updates: int = 20
    episodes_per_update: int = 64
    episodes: EpisodeConfig = EpisodeConfig()
    algorithm: Literal["ppo", "grpo"] = "ppo"
    critic_warmup: int = 0
    ppo: PPOConfig = PPOConfig()
    grpo: GRPOConfig = GRPOConfig()
    eval_every: int = 0
    eval_episodes: int = 64
    eval_temperature: float = 0.0
    log_every: int = 1
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=5)
    mesh: tuple[int, int, int] = (1, 1, 1)
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots"] = "none"
    attention_block: int = 0
    freeze_vision: bool = False

    def __post_init__(self):
        check_counts("", 1, episodes_per_update=self.episodes_per_update, eval_episodes=self.eval_episodes,
                     log_every=self.log_every)
        check_counts("", 0, seed=self.seed, updates=self.updates, critic_warmup=self.critic_warmup,
                     eval_every=self.eval_every, eval_temperature=self.eval_temperature,
                     attention_block=self.attention_block)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation: ``episodes`` instances per split and verification budget; ``verify_budgets`` the budgets
    swept (one record each); ``n_samples`` > 1 samples each instance that many times (at ``episodes.temperature``)
    and adds pass@k for k = 1, 2, 4, ... <= n_samples. ``init`` as RLConfig.init (also an `memgen rl` run dir).
    ``heldout_examples`` > 0 adds the held-out generalisation loss (token-mean NLL of that many expert responses per
    split, in batches of ``heldout_batch_size``) to each split's records. ``arm``: the records' arm (sft, rl,
    base); empty = the arm of the init run directory, else base. ``mesh``: as RLConfig.mesh (the policy, the
    rollouts and the held-out batches on it). ``max_rows``: play at most that many rows (instances x n_samples)
    per rollout batch, in chunks of whole instances (None: all in one batch; memory grows with the rows, e.g.
    pass@k over many samples); chunked sampling draws other samples of the same distribution (greedy: the same).
    ``compute_dtype``: the policy's (as RLConfig.compute_dtype; the reference eval presets bfloat16, as their RL
    runs' own evaluations). ``param_dtype``: the dtype the params are loaded in (as RLConfig.param_dtype); under
    bfloat16 compute, bfloat16 params give the same results in half the bytes (params are cast to the compute
    dtype at use; rounding once at load is the same rounding; only the vision encoder's layer norms, which apply
    their weights in fp32, differ, by ~1e-5), so the reference eval presets use it: a 90B's fp32 params are
    360 GB."""

    init: str = "tiny"
    seed: int = 1234
    episodes: int = 64
    verify_budgets: tuple[int, ...] = (5,)
    n_samples: int = 1
    splits: tuple[str, ...] = ("in_distribution", "rule_ood")
    sampling: EpisodeConfig = EpisodeConfig(temperature=0.0)
    heldout_examples: int = 0
    heldout_batch_size: int = 8
    arm: str = ""
    mesh: tuple[int, int, int] = (1, 1, 1)
    max_rows: Optional[int] = None
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        check_counts("", 1, episodes=self.episodes, n_samples=self.n_samples,
                     heldout_batch_size=self.heldout_batch_size, max_rows=1 if self.max_rows is None else self.max_rows)
        check_counts("", 0, seed=self.seed, heldout_examples=self.heldout_examples)
        if not self.verify_budgets or min(self.verify_budgets) < 1:
            raise ValueError(f"verify_budgets={list(self.verify_budgets)} needs at least one budget, each at least 1")
        if self.n_samples > 1 and self.sampling.temperature == 0.0:
            raise ValueError("n_samples > 1 needs sampling.temperature > 0 (greedy samples are all the same)")


# answer_key_weight 0.5: the reference's weight on the tokens before the answer key ("formula" / "action").
PAPER_PPO = PPOConfig(minibatch_size=64, gae=GAEConfig(0.9, 0.95), answer_key_weight=0.5)
# rl-gp-l / rl-gp-vl are registered by launch/presets.py: the preset matrix's reference rl-scale cells with
# init="" (one definition of the paper's GeneralPoints RL settings).
_TINY_EPISODES = EpisodeConfig(max_verify_steps=2, max_new_tokens=8, feedback_len=160, reward="digits")
register_preset("rl-tiny", RLConfig(
    init="tiny", updates=12, episodes_per_update=8, episodes=_TINY_EPISODES, eval_episodes=8,
    ppo=PPOConfig(minibatch_size=8, epochs=4, learning_rate=1e-2, final_learning_rate=1e-3, max_grad_norm=1.0),
    checkpoint=CheckpointConfig(every_steps=2, keep=2, async_save=False)))
register_preset("eval-gp-l", EvalConfig(init="", episodes=256, verify_budgets=(1, 3, 5, 10), heldout_examples=256,
                                        sampling=EpisodeConfig(temperature=0.0, cache_stages=5),
                                        compute_dtype="bfloat16", param_dtype="bfloat16"))
register_preset("eval-gp-vl", EvalConfig(init="", episodes=256, verify_budgets=(1, 3, 5, 10), heldout_examples=256,
                                         splits=("in_distribution", "rule_ood", "visual_ood"),
                                         sampling=EpisodeConfig(modality="vision", temperature=0.0, cache_stages=5),
                                         compute_dtype="bfloat16", param_dtype="bfloat16"))
register_preset("eval-tiny", EvalConfig(init="tiny", episodes=4, verify_budgets=(1, 2),
                                        sampling=dataclasses.replace(_TINY_EPISODES, temperature=0.0)))

# V-IRL (docs/rl.md "V-IRL"): the paper's PPO, 15 updates, 2 answers per decision, sampling temperature 0.2, 512 new
# tokens (evaluation 256), V-IRL-VL at lr 1e-7. 128 rows x 16 decision points = 2048 decision points per update
# (the reference's 256 transitions x 8 processes; every decision point is at least one transition). The rollout's
# cache grows per answer (cache_stages 3 = the scan's steps: 2 judged answers + the one past the budget).
_VIRL_EPISODES = EpisodeConfig(task="virl", max_verify_steps=2, max_new_tokens=512, temperature=0.2,
                               prompt_len=1024, decision_points=16, cache_stages=3)
_VIRL_EVAL = dataclasses.replace(_VIRL_EPISODES, max_new_tokens=256, temperature=0.0)
# bf16 compute (float32 master weights) and remat full, as the SFT presets; minibatches of 64 accumulated over 8
# microbatches (the same gradient; one transition per GPU of an 8-GPU fsdp mesh): a whole minibatch of ~2.8k-token
# transitions with an image does not fit an H100 (docs/plan.md, "RL plans"). Minibatches of real transitions only
# (skip_padding), as the reference's buffer.
_VIRL_PPO = dataclasses.replace(PAPER_PPO, microbatches=8, skip_padding=True)
register_preset("rl-virl-l", RLConfig(init="", updates=15, episodes_per_update=128, episodes=_VIRL_EPISODES,
                                      ppo=_VIRL_PPO, eval_episodes=48, compute_dtype="bfloat16", remat="full"))
register_preset("rl-virl-vl", RLConfig(init="", updates=15, episodes_per_update=128,
                                       episodes=dataclasses.replace(_VIRL_EPISODES, modality="vision"),
                                       ppo=dataclasses.replace(_VIRL_PPO, learning_rate=1e-7), eval_episodes=48,
                                       compute_dtype="bfloat16", remat="full"))
# The paper evaluates 48 routes in distribution and rule-OOD (18 for visual OOD: the 9-city set has 18 routes).
register_preset("eval-virl-l", EvalConfig(init="", episodes=48, verify_budgets=(2,), sampling=_VIRL_EVAL,
                                          heldout_examples=256, compute_dtype="bfloat16", param_dtype="bfloat16"))
register_preset("eval-virl-vl", EvalConfig(init="", episodes=48, verify_budgets=(2,), heldout_examples=256,
                                           splits=("in_distribution", "rule_ood", "visual_ood"),
                                           sampling=dataclasses.replace(_VIRL_EVAL, modality="vision"),
                                           compute_dtype="bfloat16", param_dtype="bfloat16"))
# CPU: the tiny random model on 2-step routes (12 decision points), 2 rows x 2 decision points x 3 answer slots.
_VIRL_TINY = EpisodeConfig(task="virl", max_verify_steps=2, max_new_tokens=8, feedback_len=128, prompt_len=1280,
                           decision_points=2, train_routes=32, min_route_steps=2, max_route_steps=2)
register_preset("rl-virl-tiny", RLConfig(
    init="tiny", updates=2, episodes_per_update=2, episodes=_VIRL_TINY, eval_episodes=2,
    ppo=PPOConfig(minibatch_size=6, epochs=2, learning_rate=1e-2, final_learning_rate=1e-3, max_grad_norm=1.0),
    checkpoint=CheckpointConfig(every_steps=1, keep=2, async_save=False)))
register_preset("eval-virl-tiny", EvalConfig(init="tiny", episodes=2, verify_budgets=(1, 2),
                                             sampling=dataclasses.replace(_VIRL_TINY, temperature=0.0)))
