"""What `memgen rl` and `memgen eval` share: where the policy comes from, GeneralPoints episodes as rollout
prompts, one compiled rollout per shape (`RolloutRunner`), and the evaluation of a policy on a split at a
verification budget. Host side (I/O, numpy episode states); the pure pieces are rl.rollout and rl.buffer.

`load_policy` is `launch.model_source.load_model` (what `memgen sft` uses) plus run directories (their final/) and a
value head; `save_policy` is model_source's.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from launch.config import ConfigError
from launch.episodes import EpisodeVerifier
from launch.model_source import ModelSource, ModelSourceError, load_model, save_policy  # noqa: F401 (re-exported)
from launch.rl_config import EpisodeConfig
from model.chat import batch_conversations
from model.sampler import SamplingConfig
from rl.rollout import RolloutConfig, rollout

FINAL_DIR = "final"
TASK_NAMES = {("general_points", "language"): "gp-l", ("general_points", "vision"): "gp-vl"}


Policy = ModelSource  # config, float32 params (with a value head here), tokenizer, tokenizer_dir, image_config


def load_policy(spec: str, *, seed: int) -> ModelSource:
    """`spec`: what `launch.model_source.load_model` takes (a model preset: random init from `seed` with the
    offline tokenizer; or a Hugging Face mllama directory), or a run directory of `memgen sft` / `memgen rl` (its
    final/ policy). A value head is initialised from `seed` when the source has none."""
    from model.value_head import init_value_head

    if not spec:
        raise ConfigError("this preset needs init=DIR: a `memgen sft` run directory or a Hugging Face mllama "
                          "directory (or a model preset name such as tiny for a random policy)")
    path = Path(spec)
    if (path / FINAL_DIR).is_dir():
        spec = str(path / FINAL_DIR)
    try:
        source = load_model(spec, seed=seed)
    except ModelSourceError as error:
        raise ConfigError(str(error)) from None
    if "value_head" not in source.params:
        params = dict(source.params, value_head=init_value_head(jax.random.key(seed), source.config))
        source = dataclasses.replace(source, params=params)
    return source


# --------------------------------------------------------------------------------------------- episodes
def task_config(episodes: EpisodeConfig, max_verify_steps: int | None = None):
    """The GeneralPoints config of the training split."""
    from tasks.general_points import GeneralPointsConfig

    return GeneralPointsConfig(target=episodes.target, num_cards=episodes.num_cards, face_cards=episodes.face_cards,
                               modality=episodes.modality, suits=episodes.suits, hand_pool=episodes.hand_pool,
                               max_verify_steps=max_verify_steps or episodes.max_verify_steps,
                               prompt_template=episodes.prompt_template,
                               feedback_template=episodes.feedback_template)


def digit_share(text: str) -> float:
    """The share of characters of `text` that are digits (0 for an empty text): the "digits" reward."""
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0


def step_function(reward: str):
    """The episode step of GeneralPoints, with the verifier's reward or the "digits" reward (EpisodeConfig)."""
    from tasks.common import Verdict
    from tasks.general_points import step

    if reward == "task":
        return step

    def digits_step(state, response):
        state, transition = step(state, response)
        verdict = transition.verdict
        return state, dataclasses.replace(transition, verdict=Verdict(digit_share(response), verdict.success,
                                                                      verdict.feedback, verdict.category))
    return digits_step


def new_episodes(gp_config, seed_sequence: tuple[int, ...], count: int, repeats: int = 1) -> list:
    """`count` fresh episodes on hands drawn from numpy's Generator(seed_sequence), each repeated `repeats` times
    (consecutive rows)."""
    from tasks.general_points import reset, sample_hands

    hands = sample_hands(gp_config, np.random.default_rng(list(seed_sequence)), count)
    return [reset(gp_config, hand=tuple(hand)) for hand in hands for _ in range(repeats)]


class RolloutRunner:
    """One compiled rollout per (batch, prompt bucket): prompts from episode states, then `rl.rollout.rollout`
    with a single `EpisodeVerifier` reset per call (a static argument: the same object keeps the compilation)."""

    def __init__(self, policy: Policy, episodes: EpisodeConfig, max_verify_steps: int, batch_size: int):
        self.policy, self.episodes, self.batch_size = policy, episodes, batch_size
        tokenizer = policy.tokenizer
        sampling = SamplingConfig(episodes.max_new_tokens, episodes.temperature, stop_tokens=tokenizer.stop_ids)
        self.rollout_config = RolloutConfig(sampling, max_verify_steps, episodes.feedback_len)
        self.verifier = EpisodeVerifier(tokenizer, [], step_function(episodes.reward), episodes.feedback_len)
        self._rollout = jax.jit(functools.partial(rollout, config=policy.config, verifier=self.verifier,
                                                  rollout_config=self.rollout_config))

    def prompts(self, states):
        """The left-padded prompt batch (`model.chat.ConversationBatch`; one image slot in the vision modality)."""
        vision = self.episodes.modality == "vision"
        return batch_conversations(self.policy.tokenizer, [s.conversation for s in states], self.policy.image_config,
                                   add_generation_prompt=True, padding_side="left", bucket=self.episodes.prompt_bucket,
                                   num_image_slots=1 if vision else None)

    def __call__(self, params, states, rng: jax.Array):
        """(trajectory, verifier, images): images = (encoded images (B, V, D), the prompts' cross-attention mask
        (B, P, I, T)) for the vision modality (what the buffer needs), else None."""
        if len(states) != self.batch_size:
            raise ValueError(f"the rollout was built for {self.batch_size} episodes, got {len(states)}")
        batch = self.prompts(states)
        images = None
        image_inputs = {}
        if batch.pixel_values is not None:
            encoded = _encode_images(params, self.policy.config, jnp.asarray(batch.pixel_values),
                                     jnp.asarray(batch.aspect_ratio_ids), jnp.asarray(batch.aspect_ratio_mask))
            images = (encoded, jnp.asarray(batch.cross_attention_mask, jnp.int32))
            image_inputs = dict(cross_attention_states=images[0], cross_attention_mask=images[1])
        self.verifier.reset(states)
        trajectory = self._rollout(params, prompt_ids=jnp.asarray(batch.input_ids),
                                   prompt_mask=jnp.asarray(batch.attention_mask), rng=rng, **image_inputs)
        return jax.device_get(trajectory), self.verifier, images


@functools.partial(jax.jit, static_argnums=1)
def _encode_images(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
    """The images' projected vision states (B, V, D), once per episode batch."""
    from model.forward import vision_states
    return vision_states(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)


# --------------------------------------------------------------------------------------------- evaluation
def pass_at_k_values(successes: np.ndarray, n_samples: int) -> dict[int, float]:
    """pass@k for k = 1, 2, 4, ... <= n_samples from successes (instances x n_samples), rl.pass_at_k_curve."""
    from rl.metrics import pass_at_k_curve

    ks = [1 << i for i in range(n_samples.bit_length()) if 1 << i <= n_samples]
    counts = successes.sum(axis=1).astype(int)
    kept, values = pass_at_k_curve([n_samples] * len(counts), counts.tolist(), ks)
    return {int(k): float(v) for k, v in zip(kept, values)}


def evaluation_splits_of(episodes: EpisodeConfig, budget: int) -> dict:
    """{split: GeneralPoints config} of the evaluation (the held-out hand pool when training uses the train pool)."""
    from tasks.general_points import evaluation_splits

    splits = evaluation_splits(task_config(episodes, budget))
    if episodes.hand_pool == "train":  # trained on the training pool: evaluate on hands never trained on
        splits = {name: dataclasses.replace(value, hand_pool="heldout") for name, value in splits.items()}
    return splits


def evaluation_episodes(episodes: EpisodeConfig, *, split: str, budget: int, num_episodes: int, n_samples: int,
                        seed: int) -> list:
    """The fresh episodes `evaluate` plays: `num_episodes` instances of `split`, each `n_samples` times."""
    splits = evaluation_splits_of(episodes, budget)
    if split not in splits:
        raise ConfigError(f"split {split!r} does not exist for this task; choose from {', '.join(splits)}")
    return new_episodes(splits[split], (seed, budget, sorted(splits).index(split)), num_episodes, n_samples)


def evaluate(policy: Policy, params, episodes: EpisodeConfig, *, split: str, budget: int, num_episodes: int,
             n_samples: int, seed: int, runners: dict) -> dict:
    """Success of `num_episodes` instances of `split` within `budget` verification steps (each instance sampled
    `n_samples` times; pass@k when > 1). Returns eval_record fields: split, n, success, success_se, verify_budget,
    pass_at_k; also the mean episode length."""
    from rl.metrics import binomial_standard_error

    states = evaluation_episodes(episodes, split=split, budget=budget, num_episodes=num_episodes,
                                 n_samples=n_samples, seed=seed)
    splits = evaluation_splits_of(episodes, budget)
    batch = num_episodes * n_samples
    key = (budget, batch)
    if key not in runners:
        runners[key] = RolloutRunner(policy, episodes, budget, batch)
    trajectory, verifier, _ = runners[key](params, states, jax.random.key(seed))
    solved = np.asarray(trajectory.success).any(axis=1).reshape(num_episodes, n_samples)
    rate = float(solved.mean())
    fields = dict(split=split, n=int(solved.size), success=rate,
                  success_se=float(binomial_standard_error(rate, solved.size)), verify_budget=budget,
                  episode_length=float(np.asarray(trajectory.valid).sum(axis=1).mean()))
    from tasks.general_points import rule_followed

    # the first answer of each episode: did its "number" field apply the split's face-card rule?
    followed = [rule_followed(texts[0], state.hand, splits[split]) for state, texts in zip(states, verifier.responses)
                if texts]
    if followed:
        followed_rate = float(np.mean(followed))
        fields.update(rule_accuracy=followed_rate,
                      rule_accuracy_se=float(binomial_standard_error(followed_rate, len(followed))))
    if episodes.modality == "vision":
        from rl.metrics import recognition_accuracy
        from tasks.general_points import recognition_correct

        # every verified response of every episode: did it name the hand's cards (GP-VL's recognition)?
        cards_ok = [recognition_correct(text, state.hand, splits[split])
                    for state, texts in zip(states, verifier.responses) for text in texts]
        accuracy, se = recognition_accuracy(jnp.asarray(cards_ok, bool))
        fields.update(recognition_accuracy=float(accuracy), recognition_accuracy_se=float(se))
    if n_samples > 1:
        fields["pass_at_k"] = pass_at_k_values(solved, n_samples)
    return fields
