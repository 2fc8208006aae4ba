"""From a rollout's `Trajectory` to the flat PPO buffer that `rl.ppo_update` consumes with
`rl.rollout.transition_policy` as its policy_fn (or the GRPO buffer of `rl.grpo_update`), and the rollout
statistics a run logs. Pure jnp.

Axes: B episodes, K transitions per episode, N = B * K buffer entries (padded transitions included, `valid`
False: every mean skips them and the shapes stay static), C context tokens, S response tokens. With conversation
rows (`episode_rows`) the entries are the B rows instead: per-transition arrays (B, K, ...) beside each row's
stream (B, L), scored by one forward per row.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rl.gae import gae
from rl.grpo import GRPOConfig, group_advantages
from rl.ppo import PPOConfig, answer_key_token_weights, kl_penalized_rewards, sequence_logprob
from rl.rollout import (CONVERSATION_KEYS, Trajectory, conversation_rows, episode_cross_attention_mask,
                        episode_sequences, transition_cross_attention_mask, transition_sequences)
from rl.update import SHARED, SHARED_INDEX


class Images(NamedTuple):
    """An episode batch's images as the buffers take them: `states` (B, V, D), the encoded images the rollout
    attended, and the prompts' `cross_attention_mask` (B, P, I, T); with `pixel_values` (B, I, T, C, H, W),
    `aspect_ratio_ids` (B, I) and `aspect_ratio_mask` (B, I, T) the training sequences carry the pixels instead of
    the states, so the update encodes them again and its gradient reaches the vision encoder and projector (the
    reference trains the whole model); without, it reads the states and those params get no gradient. A plain
    (states, cross_attention_mask) pair is taken as Images without pixels."""
    states: jax.Array
    cross_attention_mask: jax.Array
    pixel_values: jax.Array | None = None
    aspect_ratio_ids: jax.Array | None = None
    aspect_ratio_mask: jax.Array | None = None

    def without_pixels(self) -> "Images":
        """The same images for an update that reads the encoded states (the vision encoder and projector frozen)."""
        return Images(self.states, self.cross_attention_mask)

    def per_row(self) -> dict[str, jax.Array]:
        """The arrays one training row reads its images from, keyed as `rl.rollout.transition_policy` reads them."""
        if self.pixel_values is None:
            return {"cross_attention_states": self.states}
        return {"pixel_values": self.pixel_values, "aspect_ratio_ids": self.aspect_ratio_ids,
                "aspect_ratio_mask": self.aspect_ratio_mask}


def _sequences(trajectory: Trajectory, images: Images | tuple[jax.Array, jax.Array] | None,
               rows: bool = False) -> dict[str, jax.Array]:
    """transition_sequences (or with `rows` episode_sequences: one stream per row), plus with `images` (`Images`)
    each training sequence's images and cross-attention mask ((B, K, C + S, I, T); rows: (B, L, I, T)). A row
    holds its images itself (`Images.per_row`, (B, ...)); the K transitions of an episode share them: its
    images once, (B, ...) under `rl.update.SHARED`, and each transition's row of them, (B, K) `SHARED_INDEX`
    (an episode's images are K times the bytes otherwise: at 11B, 2,000 GP-VL transitions' encoded images are
    105 GB over the mesh)."""
    sequences = episode_sequences(trajectory) if rows else transition_sequences(trajectory)
    order = None if rows else sequences.pop("context_order")
    if images is None:
        return sequences
    images = Images(*images)
    if rows:
        return dict(sequences, **images.per_row(), cross_attention_mask=episode_cross_attention_mask(
            images.cross_attention_mask, sequences["stream_ids"].shape[1]))
    batch, steps = trajectory.rewards.shape
    episode = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, steps))
    return dict(sequences, **{SHARED: images.per_row(), SHARED_INDEX: episode},
                cross_attention_mask=transition_cross_attention_mask(images.cross_attention_mask, order,
                                                                     trajectory.response_ids.shape[-1]))


def transition_arrays(trajectory: Trajectory, images: Images | tuple[jax.Array, jax.Array] | None = None,
                      terminal: jax.Array | None = None, *, rows: bool = False) -> dict[str, jax.Array]:
    """Everything the buffers need per transition, in the rollout layout (B, K, ...): context_ids, context_mask
    (C), response_ids, response_mask (S), old_token_logprobs (S) (the sampling log-probs), old_values, rewards,
    dones, valid (B, K); with `images` (`Images`) also the images' arrays (per episode, shared by its
    transitions) and cross_attention_mask (`_sequences`).
    `rows` (conversation rows, `PPOConfig.episode_rows`): each row's stream (`rl.rollout.episode_sequences`:
    stream_ids, stream_mask (B, L), response_starts, context_ends (B, K)) instead of per-transition contexts.
    `terminal` (B,) bool: which rows' episodes really ended in this rollout. By default every rollout `done` is an
    episode end (GeneralPoints); a V-IRL decision point is also `done` after a correct action, but the route goes
    on at the next decision point, so its run loop passes terminal = the episode is over, and GAE then carries
    value across decision points. Parts of several rollouts concatenate along K (`concatenate_transitions`) when
    their context lengths C agree (a fixed prompt length)."""
    t = trajectory
    dones = t.dones if terminal is None else t.dones & jnp.asarray(terminal, bool)[:, None]
    return dict(_sequences(t, images, rows), old_token_logprobs=t.response_logprobs, old_values=t.values,
                rewards=t.rewards, dones=dones, valid=t.valid)


def concatenate_transitions(parts: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """Per-transition dicts (B, K_i, ...) of consecutive rollouts of the same rows -> one (B, sum K_i, ...); of
    conversation rows (`transition_arrays(rows=True)`), each conversation's own arrays stack to (B, R, ...)
    (`rl.rollout.conversation_rows` makes them B * R rows once GAE has run along the whole row)."""
    rows = "stream_ids" in parts[0]
    joined = {name: (jnp.stack if rows and name in CONVERSATION_KEYS else jnp.concatenate)(
        [part[name] for part in parts], axis=1) for name in parts[0] if name not in (SHARED, SHARED_INDEX)}
    if SHARED in parts[0]:  # each part's shared images one after the other, each part's index moved past them
        offsets = [0]
        for part in parts[:-1]:
            offsets.append(offsets[-1] + part[SHARED_INDEX].shape[0])
        joined[SHARED] = {name: jnp.concatenate([part[SHARED][name] for part in parts]) for name in parts[0][SHARED]}
        joined[SHARED_INDEX] = jnp.concatenate([part[SHARED_INDEX] + offset for part, offset in zip(parts, offsets)],
                                               axis=1)
    return joined


def ppo_buffer_from_transitions(transitions: dict[str, jax.Array], bootstrap_value: jax.Array,
                                config: PPOConfig, token_weights: jax.Array | None = None,
                                ref_token_logprobs: jax.Array | None = None) -> dict[str, jax.Array]:
    """GAE over each row's transitions (B, T) (`transition_arrays` layout; several episodes and padding per row
    allowed; `bootstrap_value` (B,) for rows whose last episode is still running), then everything flattened to
    N = B * T: context_ids, context_mask (N, C), response_ids, response_mask (N, S), old_logprob (N,) (the
    sequence log-prob of the sampling log-probs, `sequence_logprob` with `token_weights` (B, T, S) when given,
    the weights `policy_fn`'s ratio uses: the buffer then carries them as "token_weights"), old_values,
    advantages, returns, rewards (N,), valid (N,) bool, and the images' keys when present. Conversation rows
    (`transition_arrays(rows=True)`) stay rows: every per-transition key keeps its (B, T, ...) shape beside the
    (B, L) streams, and the buffer's entries are the B rows (`PPOConfig.episode_rows`).

    KL to a frozen reference (config.kl_mode; `ref_token_logprobs` (B, T, S) from
    `rl.rollout.reference_token_logprobs`): "k1_reward" shapes the rewards before GAE with `kl_penalized_rewards`
    (the sequence log-probs of the rollout and of the reference under the same token weights; the buffer's
    "rewards" are then the shaped ones and "kl_k1" (N,) the per-transition k1); "k3_loss" puts
    "ref_token_logprobs" (N, S) into the buffer for `ppo_loss`."""
    per_transition = dict(transitions)
    token_logprobs = per_transition.pop("old_token_logprobs")
    dones = per_transition.pop("dones")
    response_mask = per_transition["response_mask"]
    old_logprob = sequence_logprob(token_logprobs, response_mask, token_weights)
    if config.kl_mode is not None and ref_token_logprobs is None:
        raise ValueError(f"PPOConfig.kl_mode={config.kl_mode!r} needs the reference policy's token log-probs "
                         "(ref_token_logprobs, rl.rollout.reference_token_logprobs).")
    if config.kl_mode == "k1_reward":
        ref_logprob = sequence_logprob(ref_token_logprobs, response_mask, token_weights)
        per_transition["rewards"], _ = kl_penalized_rewards(per_transition["rewards"], old_logprob, ref_logprob,
                                                            config.kl_coef, per_transition["valid"])
        per_transition["kl_k1"] = jnp.where(per_transition["valid"], old_logprob - ref_logprob, 0.0)
    elif config.kl_mode == "k3_loss":
        per_transition["ref_token_logprobs"] = ref_token_logprobs
    advantages, returns = gae(per_transition["rewards"], per_transition["old_values"], dones,
                              per_transition["valid"], bootstrap_value, config.gae)
    per_transition.update(old_logprob=old_logprob, advantages=advantages, returns=returns)
    if token_weights is not None:
        per_transition["token_weights"] = token_weights
    return _entries(per_transition)


def _entries(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A buffer's entries from its (B, T, ...) arrays: the B * T transitions, flattened, or with conversation
    streams ("stream_ids") the conversations (`conversation_rows`)."""
    if "stream_ids" in arrays:
        return conversation_rows(arrays)
    batch, steps = arrays["rewards"].shape
    return {name: value if name == SHARED else value.reshape(batch * steps, *value.shape[2:])
            for name, value in arrays.items()}


def answer_key_weights(response_mask: jax.Array, answer_start: jax.Array | None,
                       config: PPOConfig) -> jax.Array | None:
    """The (B, T, S) token weights of config.answer_key_weight (`rl.ppo.answer_key_token_weights`: the weight
    before each response's answer key, 1 from there on) given answer_start (B, T), the index of the answer key's
    first token in each response (S when absent); None (unit weights) when the weight is 1."""
    if config.answer_key_weight == 1.0:
        return None
    if answer_start is None:
        raise ValueError(f"PPOConfig.answer_key_weight={config.answer_key_weight} needs each response's answer-key "
                         "position (answer_start (B, T)); find it with launch.rl_common.answer_key_starts.")
    batch, steps, length = response_mask.shape
    weights = answer_key_token_weights(jnp.asarray(answer_start).reshape(-1), response_mask.reshape(-1, length) != 0,
                                       config.answer_key_weight)
    return weights.reshape(batch, steps, length)


def ppo_buffer(trajectory: Trajectory, config: PPOConfig,
               images: Images | tuple[jax.Array, jax.Array] | None = None, *, answer_start: jax.Array | None = None,
               reference_fn: ReferenceFn | None = None, reference_params: Any = None) -> dict[str, jax.Array]:
    """The PPO buffer of one rollout (GeneralPoints: every row one episode): `transition_arrays` then
    `ppo_buffer_from_transitions` with the rollout's bootstrap value. `images` (`Images`: the encoded images (B, V,
    D), the prompts' cross-attention mask (B, P, I, T), optionally the pixels) adds cross_attention_states (B, V, D)
    or the pixel inputs (B, I, T, ...) once per episode under `rl.update.SHARED` with SHARED_INDEX (N,) (a
    minibatch gets them per transition: `rl.update.take_items`), and cross_attention_mask (N, C + S, I, T). With
    config.kl_mode, `reference_fn(reference_params, transitions) -> (B, T, S)` gives the reference log-probs (e.g.
    `rl.rollout.reference_token_logprobs` with its static arguments bound). With config.answer_key_weight != 1,
    `answer_start` (B, K) gives the token weights (`answer_key_weights`): old_logprob and the buffer's
    "token_weights" (which `ppo_loss` applies to the new log-probs) use the same ones, so the first ratio is 1."""
    transitions = transition_arrays(trajectory, images, rows=config.episode_rows)
    return ppo_buffer_from_transitions(transitions, trajectory.bootstrap_value, config,
                                       token_weights=answer_key_weights(transitions["response_mask"], answer_start,
                                                                        config),
                                       ref_token_logprobs=reference(reference_fn, reference_params, transitions))


ReferenceFn = Callable[[Any, dict[str, jax.Array]], jax.Array]


def reference(reference_fn: ReferenceFn | None, reference_params: Any,
              transitions: dict[str, jax.Array]) -> jax.Array | None:
    """`reference_fn(reference_params, transitions)` (B, T, S), or None without a reference."""
    if reference_fn is None:
        return None
    if reference_params is None:
        raise ValueError("a reference_fn needs reference_params (the frozen reference policy's params).")
    return reference_fn(reference_params, transitions)


def rollout_statistics(trajectory: Trajectory) -> dict[str, jax.Array]:
    """Per-episode means over the B rows: return (sum of rewards), success (any successful transition), episode
    length (verified responses), response length (tokens per valid response), and the token counts of the rollout
    (prompt + responses + feedback: the forward-only tokens D_buffer of rl.compute)."""
    t = trajectory
    valid = t.valid.astype(jnp.float32)
    response_tokens = t.response_mask.sum(axis=-1)  # (B, K)
    return {
        "episode_return": jnp.mean(jnp.sum(t.rewards, axis=1)),
        "episode_success": jnp.mean(jnp.any(t.success, axis=1).astype(jnp.float32)),
        "episode_length": jnp.mean(jnp.sum(valid, axis=1)),
        "response_length": jnp.sum(response_tokens) / jnp.maximum(jnp.sum(valid), 1.0),
        "reward_mean": jnp.sum(t.rewards) / jnp.maximum(jnp.sum(valid), 1.0),
        "inference_tokens": (jnp.sum(t.prompt_mask) + jnp.sum(response_tokens) + jnp.sum(t.feedback_mask)),
    }


def train_token_count(buffer: dict[str, jax.Array]) -> jax.Array:
    """Tokens one pass of the update scores (D_RL per epoch): context + response of every valid transition, or
    the stream of every conversation row with a valid transition."""
    if "stream_ids" in buffer:
        return jnp.sum(jnp.where(jnp.any(buffer["valid"], axis=1), buffer["stream_mask"].sum(axis=-1), 0))
    per_entry = buffer["context_mask"].sum(axis=-1) + buffer["response_mask"].sum(axis=-1)
    return jnp.sum(jnp.where(buffer["valid"], per_entry, 0))


def grpo_buffer(trajectory: Trajectory, config: GRPOConfig,
                images: Images | tuple[jax.Array, jax.Array] | None = None, *, reference_fn: ReferenceFn | None = None,
                reference_params: Any = None) -> dict[str, jax.Array]:
    """The flat GRPO buffer: rows are G groups of `config.group_size` consecutive episodes on one instance; each
    episode's return (the sum of its transitions' rewards) is normalised within its group (`group_advantages`) and
    every transition of the episode gets that advantage. Keys: context_ids, context_mask, response_ids,
    response_mask (N, ...), old_token_logprobs (N, S), advantages, rewards, valid (N,). Padded transitions have an
    empty response mask, so they add no token to the loss. `images` as in `ppo_buffer`; with config.kl_coef > 0
    `reference_fn` / `reference_params` (as `ppo_buffer`) add ref_token_logprobs (N, S) for the k3 term. With
    config.episode_rows the entries are the B conversation rows (`ppo_buffer_from_transitions`)."""
    t = trajectory
    batch = t.rewards.shape[0]
    if batch % config.group_size:
        raise ValueError(f"grpo_buffer needs a multiple of group_size={config.group_size} episodes, got {batch}.")
    returns = jnp.sum(jnp.where(t.valid, t.rewards, 0.0), axis=1)
    advantages = group_advantages(returns.reshape(-1, config.group_size), config).reshape(batch)
    sequences = _sequences(t, images, config.episode_rows)
    per_transition = dict(sequences, old_token_logprobs=t.response_logprobs,
                          advantages=jnp.where(t.valid, advantages[:, None], 0.0), rewards=t.rewards, valid=t.valid)
    if config.kl_coef:
        per_transition["ref_token_logprobs"] = reference(reference_fn, reference_params, per_transition)
        if per_transition["ref_token_logprobs"] is None:
            raise ValueError("GRPOConfig.kl_coef > 0 needs reference_fn and reference_params.")
    return _entries(per_transition)
