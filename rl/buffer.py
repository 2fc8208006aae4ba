"""From a rollout's `Trajectory` to the flat PPO buffer that `rl.ppo_update` consumes with
`rl.rollout.transition_policy` as its policy_fn (or the GRPO buffer of `rl.grpo_update`), and the rollout
statistics a run logs. Pure jnp.

Axes: B episodes, K transitions per episode, N = B * K buffer entries (padded transitions included, `valid`
False: every mean skips them and the shapes stay static), C context tokens, S response tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl.gae import gae
from rl.grpo import GRPOConfig, group_advantages
from rl.ppo import PPOConfig, sequence_logprob
from rl.rollout import Trajectory, transition_cross_attention_mask, transition_sequences


def _sequences(trajectory: Trajectory, images: tuple[jax.Array, jax.Array] | None) -> dict[str, jax.Array]:
    """transition_sequences, plus per transition the images (cross_attention_states (B, K, V, D)) and the
    training sequences' cross-attention mask (B, K, C + S, I, T) when `images` = (states (B, V, D), the prompts'
    cross-attention mask (B, P, I, T))."""
    sequences = transition_sequences(trajectory)
    order = sequences.pop("context_order")
    if images is not None:
        states, prompt_cross_mask = images
        steps = trajectory.rewards.shape[1]
        sequences["cross_attention_states"] = jnp.broadcast_to(states[:, None], (states.shape[0], steps,
                                                                                  *states.shape[1:]))
        sequences["cross_attention_mask"] = transition_cross_attention_mask(prompt_cross_mask, order,
                                                                            trajectory.response_ids.shape[-1])
    return sequences


def transition_arrays(trajectory: Trajectory, images: tuple[jax.Array, jax.Array] | None = None,
                      terminal: jax.Array | None = None) -> dict[str, jax.Array]:
    """Everything the buffers need per transition, in the rollout layout (B, K, ...): context_ids, context_mask
    (C), response_ids, response_mask (S), old_token_logprobs (S) (the sampling log-probs), old_values, rewards,
    dones, valid (B, K); with `images` also cross_attention_states and cross_attention_mask (`_sequences`).
    `terminal` (B,) bool: which rows' episodes really ended in this rollout. By default every rollout `done` is an
    episode end (GeneralPoints); a V-IRL decision point is also `done` after a correct action, but the route goes
    on at the next decision point, so its run loop passes terminal = the episode is over, and GAE then carries
    value across decision points. Parts of several rollouts concatenate along K (`concatenate_transitions`) when
    their context lengths C agree (a fixed prompt length)."""
    t = trajectory
    dones = t.dones if terminal is None else t.dones & jnp.asarray(terminal, bool)[:, None]
    return dict(_sequences(t, images), old_token_logprobs=t.response_logprobs, old_values=t.values,
                rewards=t.rewards, dones=dones, valid=t.valid)


def concatenate_transitions(parts: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """Per-transition dicts (B, K_i, ...) of consecutive rollouts of the same rows -> one (B, sum K_i, ...)."""
    return {name: jnp.concatenate([part[name] for part in parts], axis=1) for name in parts[0]}


def ppo_buffer_from_transitions(transitions: dict[str, jax.Array], bootstrap_value: jax.Array,
                                config: PPOConfig, token_weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """GAE over each row's transitions (B, T) (`transition_arrays` layout; several episodes and padding per row
    allowed; `bootstrap_value` (B,) for rows whose last episode is still running), then everything flattened to
    N = B * T: context_ids, context_mask (N, C), response_ids, response_mask (N, S), old_logprob (N,) (the
    sequence log-prob of the sampling log-probs, `sequence_logprob` with `token_weights` (B, T, S) when given,
    the weights `policy_fn`'s ratio uses: the buffer then carries them as "token_weights"), old_values,
    advantages, returns, rewards (N,), valid (N,) bool, and the images' keys when present."""
    per_transition = dict(transitions)
    token_logprobs = per_transition.pop("old_token_logprobs")
    dones = per_transition.pop("dones")
    advantages, returns = gae(per_transition["rewards"], per_transition["old_values"], dones,
                              per_transition["valid"], bootstrap_value, config.gae)
    per_transition.update(old_logprob=sequence_logprob(token_logprobs, per_transition["response_mask"], token_weights),
                          advantages=advantages, returns=returns)
    if token_weights is not None:
        per_transition["token_weights"] = token_weights
    batch, steps = per_transition["rewards"].shape
    return {name: value.reshape(batch * steps, *value.shape[2:]) for name, value in per_transition.items()}


def ppo_buffer(trajectory: Trajectory, config: PPOConfig,
               images: tuple[jax.Array, jax.Array] | None = None) -> dict[str, jax.Array]:
    """The PPO buffer of one rollout (GeneralPoints: every row one episode): `transition_arrays` then
    `ppo_buffer_from_transitions` with the rollout's bootstrap value. `images` = (the encoded images (B, V, D),
    the prompts' cross-attention mask (B, P, I, T)) adds cross_attention_states (N, V, D) and cross_attention_mask
    (N, C + S, I, T). The sequence log-prob uses unit token weights (config.answer_key_weight 1)."""
    if config.answer_key_weight != 1.0:
        raise ValueError("ppo_buffer supports answer_key_weight=1.0 only (the true log-prob); the reference's 0.5 "
                         "weight before the answer key needs its token position, which the rollout does not track yet.")
    return ppo_buffer_from_transitions(transition_arrays(trajectory, images), trajectory.bootstrap_value, config)


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
    """Tokens one pass of the update scores: context + response of every valid transition (D_RL per epoch)."""
    per_entry = buffer["context_mask"].sum(axis=-1) + buffer["response_mask"].sum(axis=-1)
    return jnp.sum(jnp.where(buffer["valid"], per_entry, 0))


def grpo_buffer(trajectory: Trajectory, config: GRPOConfig,
                images: tuple[jax.Array, jax.Array] | None = None) -> dict[str, jax.Array]:
    """The flat GRPO buffer: rows are G groups of `config.group_size` consecutive episodes on one instance; each
    episode's return (the sum of its transitions' rewards) is normalised within its group (`group_advantages`) and
    every transition of the episode gets that advantage. Keys: context_ids, context_mask, response_ids,
    response_mask (N, ...), old_token_logprobs (N, S), advantages, rewards, valid (N,). Padded transitions have an
    empty response mask, so they add no token to the loss. `images` as in `ppo_buffer`."""
    t = trajectory
    batch, steps = t.rewards.shape
    if batch % config.group_size:
        raise ValueError(f"grpo_buffer needs a multiple of group_size={config.group_size} episodes, got {batch}.")
    returns = jnp.sum(jnp.where(t.valid, t.rewards, 0.0), axis=1)
    advantages = group_advantages(returns.reshape(-1, config.group_size), config).reshape(batch)
    sequences = _sequences(t, images)
    per_transition = dict(sequences, old_token_logprobs=t.response_logprobs,
                          advantages=jnp.where(t.valid, advantages[:, None], 0.0), rewards=t.rewards, valid=t.valid)
    return {name: value.reshape(batch * steps, *value.shape[2:]) for name, value in per_transition.items()}
