"""Multi-turn revision rollouts: one decision point of a batch of episodes as a `jax.lax.scan` over verification
steps on one KV cache, and the PPO training sequences built from the rollout's token ids.

Axes: B episodes (rows), P prompt tokens (left-padded), K verification steps (`max_verify_steps`), N response
tokens (`sampling.max_new_tokens`), F feedback tokens (`feedback_len`, right-padded), C context tokens of a
transition's training sequence (C = P + (K - 1) (N + F)), I images per row, T tiles, V vision tokens, D hidden.

One scan step (verification step k):
  1. `model.sampler.sample_turn` decodes a response for every live row into the cache (finished rows are masked
     with `active`: they sample nothing and write only never-attended padding slots);
  2. the host-side verifier judges it through `jax.pure_callback` (the imperative boundary, see
     `VerifierFn`): token ids (B, N) + lengths + active rows + k -> reward, done, success and the feedback turn's
     token ids (B, F) right-padded with their mask;
  3. the feedback turn (it ends with the assistant header) is appended to the same cache with `model.sampler.append`
     (rows that are done append nothing), and the value head reads the hidden state at the chunk's last valid
     token (`append(..., return_hidden=True)`): the position that generates the next response's first token.
The prompt is prefilled once; images are encoded once per episode by the caller (`cross_attention_states`) and
their cross-attention K/V live in the cache. Nothing is re-tokenised: the trajectory is the ids in the arrays.
With `RolloutConfig.cache_stages` > 1 the K steps run as several scans, the cache grown between them, so that a
turn's decode attention reads the slots the conversation can hold so far rather than all K turns'.

V-IRL (a correct action starts a fresh conversation): one call of `rollout` is one decision point; the run loop
calls it once per decision point with the fresh prompts of the rows' next decision and concatenates the (B, K)
transitions along K (GAE then runs over the whole route; `rl.gae` allows several episodes and padding per row).

Training sequences: per transition (`transition_sequences`: its context compacted, then its response; C + N
tokens, the context repeating the earlier turns for every transition) or per conversation (`episode_sequences`:
the row's stream as the cache held it, L = P + K N + (K - 1) F, one forward scoring all K responses;
`PPOConfig.episode_rows`). `transition_policy` scores either.

Log-probs: `Trajectory.response_logprobs` are the sampler's log_softmax(logits / temperature) (no top-k / top-p
when these are off); `transition_policy` recomputes them with `model.sampler.token_logprobs` from the same ids, so
the first PPO ratio is 1 (tests/rl/test_rollout.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig
from model.forward import forward_hidden, grow_cache, init_cache
from model.sampler import SamplerState, SamplingConfig, append, cache_shardings, sample_turn, start, token_logprobs
from model.value_head import policy_values
from rl.update import SHARED, SHARED_INDEX, with_shared

Params = dict[str, Any]

# verifier(tokens (B, N) int32, lengths (B,) int32, active (B,) bool, step () int32) ->
#   (rewards (B,) float32, done (B,) bool, success (B,) bool, feedback_ids (B, F) int32, feedback_mask (B, F) int32)
VerifierFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static shape of a rollout: how a response is sampled, the verification budget K (scan length) and the
    feedback bucket F (a feedback turn's ids are right-padded to F; the verifier must fit them).

    cache_stages: the K turns run as that many consecutive scans (`turn_stages`), each on a KV cache sized for its
    last turn (`model.forward.grow_cache` between stages). Decode attention reads every slot of its cache, so with
    one stage (the default) the first turn already reads the slots of all K turns; with K stages each turn reads
    only what it can hold: the same trajectory (to float rounding), fewer bytes per decode step, and one compiled
    decode loop per stage (measured: docs/benchmarks.md, "RL rollout")."""

    sampling: SamplingConfig
    max_verify_steps: int = 5
    feedback_len: int = 64
    cache_stages: int = 1

    def __post_init__(self):
        if self.max_verify_steps < 1 or self.feedback_len < 1:
            raise ValueError(f"RolloutConfig needs max_verify_steps >= 1 and feedback_len >= 1, got "
                             f"{self.max_verify_steps} and {self.feedback_len}.")
        if not 1 <= self.cache_stages <= self.max_verify_steps:
            raise ValueError(f"RolloutConfig.cache_stages={self.cache_stages} must be between 1 and "
                             f"max_verify_steps={self.max_verify_steps}.")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
    """What one decision point's rollout produced. prompt_ids / prompt_mask (B, P); per transition (B, K, ...):
    response_ids, response_logprobs (sampling log-probs, 0 off the mask), response_mask (N), feedback_ids,
    feedback_mask (F; all 0 when the episode ended at that step); values (value-head estimate at the context's last
    token before the response), rewards, dones (the episode ended at this transition), success, valid (the row was
    still running: a real transition) (B, K); bootstrap_value (B,) the value of the context after the last step
    (used by GAE for rows cut off by the budget K without the verifier saying done)."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    response_ids: jax.Array
    response_logprobs: jax.Array
    response_mask: jax.Array
    feedback_ids: jax.Array
    feedback_mask: jax.Array
    values: jax.Array
    rewards: jax.Array
    dones: jax.Array
    success: jax.Array
    valid: jax.Array
    bootstrap_value: jax.Array


def _value(params: Params, hidden: jax.Array) -> jax.Array:
    """The value head at hidden states (B, D) -> (B,)."""
    return policy_values(params, hidden[:, None], "an RL policy")[:, 0]


def call_verifier(verifier: VerifierFn, tokens: jax.Array, lengths: jax.Array, active: jax.Array, step: jax.Array,
                  feedback_len: int, mesh: jax.sharding.Mesh | None = None):
    """`verifier` through `jax.pure_callback` with static result shapes. JAX may call a pure callback more than
    once with the same arguments (or drop an unused one), so a stateful verifier must answer a repeated
    (row, step) with its cached result: `launch.episodes.EpisodeVerifier` does.

    With a `mesh` the callback runs inside `jax.shard_map` on every device of it, each with the whole batch
    (gathered: the specs are replicated). Without that, XLA runs a callback on one device only, so in a run over
    several processes only one host's episode states would advance; this way every process judges every row and
    all hosts keep the same episode states (the multi-controller contract: each host then builds the same next
    prompts and buffers). The verifier is called once per device with the same arguments, possibly from
    several threads at once, so it must also be thread-safe (EpisodeVerifier takes a lock)."""
    batch = tokens.shape[0]
    shapes = (jax.ShapeDtypeStruct((batch,), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.bool_),
              jax.ShapeDtypeStruct((batch,), jnp.bool_), jax.ShapeDtypeStruct((batch, feedback_len), jnp.int32),
              jax.ShapeDtypeStruct((batch, feedback_len), jnp.int32))
    callback = lambda *args: jax.pure_callback(verifier, shapes, *args, vmap_method="sequential")  # noqa: E731
    if mesh is None:
        return callback(tokens, lengths, active, step)
    from jax.sharding import PartitionSpec
    replicated = PartitionSpec()
    return jax.shard_map(callback, mesh=mesh, in_specs=(replicated,) * 4, out_specs=(replicated,) * 5)(
        tokens, lengths, active, step)


def _place_cache(state, mesh):
    """A KVCache (or a SamplerState's cache) constrained to the sampler's placement on `mesh` (batch over data x
    fsdp, KV heads over tensor: `model.sampler.cache_shardings`, the same specs as
    `launch.mesh.cache_partition_specs`); unchanged without a mesh."""
    if mesh is None:
        return state
    if isinstance(state, SamplerState):
        return dataclasses.replace(state, cache=_place_cache(state.cache, mesh))
    return jax.lax.with_sharding_constraint(state, cache_shardings(mesh, state))


def cache_length(prompt_len: int, rollout_config: RolloutConfig, turns: int | None = None) -> int:
    """Cache slots a rollout needs: the prompt, K responses and K feedback turns (the first `turns` of them when
    given: a cache stage's)."""
    k = rollout_config.max_verify_steps if turns is None else turns
    return prompt_len + k * (rollout_config.sampling.max_new_tokens + rollout_config.feedback_len)


def turn_stages(rollout_config: RolloutConfig) -> list[np.ndarray]:
    """The turn indices of each cache stage: 0..K-1 cut into `cache_stages` consecutive runs of near-equal
    length (the earlier ones one turn longer when K does not divide)."""
    return np.array_split(np.arange(rollout_config.max_verify_steps), rollout_config.cache_stages)


def rollout(params: Params, config: ModelConfig, prompt_ids: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
            *, verifier: VerifierFn, rollout_config: RolloutConfig, cross_attention_states: jax.Array | None = None,
            cross_attention_mask: jax.Array | None = None, stop_tokens: jax.Array | None = None,
            active: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None) -> Trajectory:
    """One decision point of B episodes: prefill the left-padded prompts (B, P), then a `jax.lax.scan` over K
    verification steps (module docstring; one scan per cache stage). `cross_attention_states` (B, V, D): the images,
    encoded once (`model.forward.vision_states`), with the prompt's cross_attention_mask (B, P, I, T). `stop_tokens`
    (S,) int32 (-1 = unused) overrides sampling.stop_tokens. `active` (B,) bool: rows that play (default all); the
    others (e.g. V-IRL routes that already ended) sample nothing, are never passed to the verifier as active and
    have no valid transition. `mesh` (static): the KV cache is constrained to the sampler's placement on it (batch
    over data x fsdp, KV heads over tensor) after the prefill and after every step; place params with
    `model.sharding.shard_params` and the prompts with the batch sharding, and call it under `jax.set_mesh(mesh)`
    for the model's activation constraints (`launch.rl_common.RolloutRunner` does all three). Jit it with `config`,
    `verifier`, `rollout_config` and `mesh` static."""
    sampling = rollout_config.sampling
    batch, prompt_len = prompt_ids.shape
    num_images = 0
    if cross_attention_states is not None:
        num_images = cross_attention_states.shape[1] // (config.vision.max_num_tiles * config.vision.num_patches)
    stages = turn_stages(rollout_config)
    cache = _place_cache(init_cache(config, batch, cache_length(prompt_len, rollout_config, int(stages[0][-1]) + 1),
                                    num_images=num_images), mesh)
    state, hidden = start(params, config, prompt_ids, prompt_mask, cache, cross_attention_states=cross_attention_states,
                          cross_attention_mask=cross_attention_mask, return_hidden=True)
    state = _place_cache(state, mesh)
    value = _value(params, hidden)

    def verification_step(carry, step):
        state, value, finished, rng = carry
        rng, key = jax.random.split(rng)
        active = ~finished
        state, generation = sample_turn(params, config, state, key, sampling, active=active, stop_tokens=stop_tokens)
        rewards, done, success, feedback_ids, feedback_mask = call_verifier(
            verifier, generation.tokens, generation.lengths, active, step, rollout_config.feedback_len, mesh)
        done = active & done
        continues = active & ~done
        feedback_mask = jnp.where(continues[:, None], feedback_mask, 0)
        feedback_ids = jnp.where(feedback_mask != 0, feedback_ids, config.text.pad_token_id)
        state, hidden = append(params, config, state, feedback_ids, feedback_mask, return_hidden=True)
        state = _place_cache(state, mesh)
        new_value = _value(params, hidden)
        positions = jnp.arange(sampling.max_new_tokens)[None, :]
        response_mask = active[:, None] & (positions < generation.lengths[:, None])
        out = dict(response_ids=generation.tokens, response_logprobs=jnp.where(response_mask, generation.logprobs, 0.0),
                   response_mask=response_mask, feedback_ids=feedback_ids, feedback_mask=feedback_mask,
                   values=jnp.where(active, value, 0.0), rewards=jnp.where(active, rewards, 0.0), dones=done,
                   success=active & success, valid=active)
        value = jnp.where(continues, new_value, value)
        return (state, value, finished | done, rng), out

    finished = jnp.zeros((batch,), bool) if active is None else ~jnp.asarray(active, bool)
    carry = (state, value, finished, rng)
    parts = []
    for turns in stages:  # one scan per cache stage, on a cache grown to hold its last turn
        state = carry[0]
        cache = grow_cache(state.cache, cache_length(prompt_len, rollout_config, int(turns[-1]) + 1))
        carry = (_place_cache(SamplerState(cache, state.last_logits), mesh), *carry[1:])
        carry, part = jax.lax.scan(verification_step, carry, jnp.asarray(turns, jnp.int32))
        parts.append(part)
    _, last_value, finished, _ = carry
    steps = jax.tree.map(lambda *arrays: jnp.concatenate(arrays), *parts)
    per_row = {name: jnp.swapaxes(array, 0, 1) for name, array in steps.items()}  # (K, B, ...) -> (B, K, ...)
    return Trajectory(prompt_ids=prompt_ids, prompt_mask=prompt_mask, bootstrap_value=jnp.where(finished, 0.0,
                                                                                                 last_value),
                      **per_row)


def prompt_hidden(params: Params, config: ModelConfig, prompt_ids: jax.Array, prompt_mask: jax.Array, *,
                  cross_attention_states: jax.Array | None = None,
                  cross_attention_mask: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None) -> jax.Array:
    """The trunk's final hidden state (B, D) at each left-padded prompt's (B, P) last token: what the value head
    reads for the prompt's state (`prompt_value`; a probe of the critic's features). Images and `mesh` as in
    `rollout`."""
    num_images = 0
    if cross_attention_states is not None:
        num_images = cross_attention_states.shape[1] // (config.vision.max_num_tiles * config.vision.num_patches)
    cache = _place_cache(init_cache(config, prompt_ids.shape[0], prompt_ids.shape[1], num_images=num_images), mesh)
    _, hidden = start(params, config, prompt_ids, prompt_mask, cache, cross_attention_states=cross_attention_states,
                      cross_attention_mask=cross_attention_mask, return_hidden=True)
    return hidden


def prompt_value(params: Params, config: ModelConfig, prompt_ids: jax.Array, prompt_mask: jax.Array, *,
                 cross_attention_states: jax.Array | None = None,
                 cross_attention_mask: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None) -> jax.Array:
    """The value head (B,) at each left-padded prompt's (B, P) last token, as `rollout` computes it for its
    first transition: GAE's bootstrap value of an episode that goes on with this prompt (V-IRL's next decision
    point after the last rollout of an update). Images and `mesh` as in `rollout`."""
    return _value(params, prompt_hidden(params, config, prompt_ids, prompt_mask,
                                        cross_attention_states=cross_attention_states,
                                        cross_attention_mask=cross_attention_mask, mesh=mesh))


# --------------------------------------------------------------------------------------- training sequences
def transition_sequences(trajectory: Trajectory) -> dict[str, jax.Array]:
    """Per transition (B, K): its context (prompt + earlier responses and feedback turns) compacted to the left
    (padding first, so the last context token is at C - 1), and its response. Returns context_ids,
    context_mask (B, K, C), response_ids, response_mask (B, K, N) and `context_order` (B, K, C), the stream
    positions the context was gathered from (for per-token side inputs such as a cross-attention mask).
    Pure jnp: built from the rollout's ids, never from text."""
    t = trajectory
    batch, steps, n = t.response_ids.shape
    turns = jnp.concatenate([t.response_ids, t.feedback_ids], axis=-1)  # (B, K, N + F)
    turn_mask = jnp.concatenate([t.response_mask.astype(jnp.int32), t.feedback_mask.astype(jnp.int32)], axis=-1)
    per_turn = turns.shape[-1]
    stream = jnp.concatenate([t.prompt_ids, turns[:, :-1].reshape(batch, -1)], axis=1)  # (B, C)
    stream_mask = jnp.concatenate([t.prompt_mask.astype(jnp.int32), turn_mask[:, :-1].reshape(batch, -1)], axis=1)
    prompt_len = t.prompt_ids.shape[1]
    limit = prompt_len + jnp.arange(steps) * per_turn  # (K,) context of transition k ends before this
    context_mask = (stream_mask[:, None, :] != 0) & (jnp.arange(stream.shape[1])[None, None, :] < limit[None, :, None])
    order = jnp.argsort(context_mask.astype(jnp.int32), axis=-1, stable=True)  # padding first, then tokens in order
    context_ids = jnp.take_along_axis(jnp.broadcast_to(stream[:, None], context_mask.shape), order, axis=-1)
    context_mask = jnp.take_along_axis(context_mask, order, axis=-1).astype(jnp.int32)
    return dict(context_ids=context_ids, context_mask=context_mask, response_ids=t.response_ids,
                response_mask=t.response_mask.astype(jnp.int32), context_order=order)


def episode_sequences(trajectory: Trajectory) -> dict[str, jax.Array]:
    """Per row (B) its whole conversation as one training sequence, laid out as the rollout's cache holds it: the
    prompt, then per turn N response slots and F feedback slots (the last turn's feedback never scored, so L =
    P + K N + (K - 1) F), padding inside (masked). Returns stream_ids, stream_mask (B, L); response_ids,
    response_mask (B, K, N); response_starts (B, K), the stream index of each response's first slot; and
    context_ends (B, K), the index of the last real token before it (the value's position and the first
    response token's predictor; a feedback turn is right-padded, so this is not response_starts - 1). Under the
    causal mask each response sees exactly its transition's context, so one forward over the stream scores all K
    transitions (`transition_policy`). Pure jnp."""
    t = trajectory
    batch, steps, n = t.response_ids.shape
    per_turn = n + t.feedback_ids.shape[-1]
    prompt_len = t.prompt_ids.shape[1]
    length = prompt_len + steps * per_turn - (per_turn - n)
    turns = jnp.concatenate([t.response_ids, t.feedback_ids], axis=-1).reshape(batch, -1)
    turn_mask = jnp.concatenate([t.response_mask.astype(jnp.int32), t.feedback_mask.astype(jnp.int32)],
                                axis=-1).reshape(batch, -1)
    stream_ids = jnp.concatenate([t.prompt_ids, turns], axis=1)[:, :length]
    stream_mask = jnp.concatenate([t.prompt_mask.astype(jnp.int32), turn_mask], axis=1)[:, :length]
    starts = prompt_len + jnp.arange(steps, dtype=jnp.int32) * per_turn  # (K,)
    slots = jnp.arange(length, dtype=jnp.int32)
    before = (stream_mask[:, None, :] != 0) & (slots[None, None, :] < starts[None, :, None])  # (B, K, L)
    context_ends = jnp.max(jnp.where(before, slots, 0), axis=-1)
    return dict(stream_ids=stream_ids, stream_mask=stream_mask, response_ids=t.response_ids,
                response_mask=t.response_mask.astype(jnp.int32),
                response_starts=jnp.broadcast_to(starts, (batch, steps)), context_ends=context_ends)


# a training row's image inputs, as transition_policy reads them (rl.buffer.Images)
IMAGE_KEYS = ("cross_attention_states", "cross_attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")
# a conversation row's own arrays (the rest of a rows buffer is per transition, (B, K, ...))
CONVERSATION_KEYS = ("stream_ids", "stream_mask") + IMAGE_KEYS


def conversation_rows(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Arrays of R consecutive conversations per row (V-IRL's decision points: `rl.buffer.concatenate_transitions`
    stacks their CONVERSATION_KEYS (B, R, ...) and concatenates the per-transition arrays (B, R * K, ...)) as B * R
    conversation rows: (B * R, ...) and (B * R, K, ...). One conversation per row (stream_ids (B, L)): as given."""
    if arrays["stream_ids"].ndim == 2:
        return arrays
    batch, parts = arrays["stream_ids"].shape[:2]
    return {name: value.reshape(batch * parts, *value.shape[2:]) if name in CONVERSATION_KEYS
            else value.reshape(batch * parts, value.shape[1] // parts, *value.shape[2:])
            for name, value in arrays.items()}


def episode_cross_attention_mask(prompt_cross_mask: jax.Array, length: int) -> jax.Array:
    """The cross-attention mask (B, length, I, T) of a conversation stream (`episode_sequences`): the prompt's
    rows (B, P, I, T), then the prompt's last row for every later token (what the cache repeats for appended
    tokens)."""
    batch, prompt_len = prompt_cross_mask.shape[:2]
    last = prompt_cross_mask[:, -1:]
    return jnp.concatenate([prompt_cross_mask, jnp.broadcast_to(last, (batch, length - prompt_len,
                                                                      *last.shape[2:]))], axis=1)


def transition_cross_attention_mask(prompt_cross_mask: jax.Array, context_order: jax.Array,
                                    response_len: int) -> jax.Array:
    """The cross-attention mask (B, K, C + N, I, T) of the training sequences: the conversation stream's rows
    (`episode_cross_attention_mask`) gathered in the context's order, then the prompt's last row for the
    response."""
    batch = prompt_cross_mask.shape[0]
    steps, context_len = context_order.shape[1:]
    stream = episode_cross_attention_mask(prompt_cross_mask, context_len)
    gathered = jax.vmap(lambda s, o: s[o], in_axes=(None, 0))
    context = jax.vmap(gathered)(stream, context_order)  # (B, K, C, I, T)
    last = prompt_cross_mask[:, -1:]
    response = jnp.broadcast_to(last[:, None], (batch, steps, response_len, *last.shape[2:]))
    return jnp.concatenate([context, response], axis=2)


def token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Per-position entropy (...,) of softmax(logits (..., V) / temperature) in nats, float32 (temperature 0
    counts as 1, as `model.sampler.token_logprobs`)."""
    scale = 1.0 if temperature == 0.0 else temperature
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / jnp.float32(scale), axis=-1)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def transition_policy(params: Params, minibatch: dict[str, jax.Array], *, config: ModelConfig,
                      temperature: float, return_entropy: bool = False,
                      detach_value_input: bool = False) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`rl.ppo_update`'s policy_fn: for n transitions, the forward over context + response (n, C + N), the
    response tokens' log-probs (n, N) under log_softmax(logits / temperature) (`model.sampler.token_logprobs`, the
    sampler's definition), the value (n,) at the last context token, and with `return_entropy` the entropy (n, N)
    of that distribution at each response position (`token_entropy`; PPO's entropy bonus), else None.
    A minibatch of conversation rows (`episode_sequences`' keys: stream_ids, stream_mask (m, L), response_starts,
    context_ends (m, K)) is one forward over each stream, and every output gains the K axis: (m, K, N), (m, K).
    `detach_value_input`: the value head reads the trunk's hidden state through a stop-gradient, so the value loss
    trains the head only (PPOConfig.value_loss_trains_trunk=False); the values are the same. Optional minibatch
    keys: the images, "cross_attention_states" (n, V, D) (encoded: no gradient reaches the vision encoder) or
    "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask" (encoded here: `rl.buffer.Images`), with
    "cross_attention_mask" (n, C + N, I, T) (rows: (m, L, I, T))."""
    response = minibatch["response_ids"]
    rows = "stream_ids" in minibatch
    if rows:
        ids, mask = minibatch["stream_ids"], minibatch["stream_mask"]
        value_positions = minibatch["context_ends"]  # (m, K)
        offsets = jnp.arange(response.shape[-1], dtype=jnp.int32)
        # token j of a response is predicted at the slot before it, its first token at the context's last token
        predictors = jnp.where(offsets == 0, value_positions[..., None],
                               minibatch["response_starts"][..., None] + offsets - 1)  # (m, K, N)
        logits_positions = predictors.reshape(predictors.shape[0], -1)
    else:
        ids = jnp.concatenate([minibatch["context_ids"], response], axis=1)
        mask = jnp.concatenate([minibatch["context_mask"], minibatch["response_mask"]], axis=1)
        c = minibatch["context_ids"].shape[1]
        # logits only where a response token is predicted (positions C - 1 .. C + N - 2), as the peers do
        logits_positions = slice(c - 1, ids.shape[1] - 1)
    images = {key: minibatch[key] for key in IMAGE_KEYS if key in minibatch}
    hidden, response_logits = forward_hidden(params, config, ids, attention_mask=mask,
                                             logits_positions=logits_positions, **images)
    response_logits = response_logits.reshape(*response.shape, -1)
    value_input = (jnp.take_along_axis(hidden[:, None], value_positions[..., None, None], axis=2)[..., 0, :] if rows
                   else hidden[:, c - 1])
    if detach_value_input:
        value_input = jax.lax.stop_gradient(value_input)
    values = policy_values(params, value_input, "an RL policy")
    entropy = token_entropy(response_logits, temperature) if return_entropy else None
    return token_logprobs(response_logits, response, temperature), values, entropy


def reference_token_logprobs(reference_params: Params, transitions: dict[str, jax.Array], *, config: ModelConfig,
                             temperature: float, chunk_size: int) -> jax.Array:
    """The frozen reference policy's log-probs (B, T, N) of every transition's response tokens (`transition_policy`
    with `reference_params`, no gradient), for PPO's KL terms (k1 in the reward, k3 in the loss) and GRPO's k3.
    `transitions`: the (B, T, ...) arrays of `rl.buffer.transition_arrays`; the B * T sequences (or, for
    conversation rows, the streams: `conversation_rows`) go through the forward `chunk_size` at a time
    (`jax.lax.map`; their count must be a multiple of it, e.g. the minibatch size)."""
    batch, steps = transitions["response_ids"].shape[:2]
    rows = "stream_ids" in transitions
    keys = ("context_ids", "context_mask", "response_ids", "response_mask", "stream_ids", "stream_mask",
            "response_starts", "context_ends", SHARED_INDEX) + IMAGE_KEYS
    arrays = {k: transitions[k] for k in keys if k in transitions}
    if rows:
        arrays = conversation_rows(arrays)
    else:
        arrays = {k: v.reshape(batch * steps, *v.shape[2:]) for k, v in arrays.items()}
    total = arrays["response_ids"].shape[0]
    if total % chunk_size:
        what = "conversations" if rows else "B * T"
        raise ValueError(f"reference_token_logprobs needs {what} = {total} to be a multiple of "
                         f"chunk_size={chunk_size}.")
    chunks = {k: v.reshape(total // chunk_size, chunk_size, *v.shape[1:]) for k, v in arrays.items()}
    params = jax.lax.stop_gradient(reference_params)
    shared = transitions.get(SHARED)  # the episodes' images, taken per chunk (`rl.update.with_shared`)
    logprobs = jax.lax.map(lambda chunk: transition_policy(params, chunk if shared is None else
                                                           with_shared(chunk, shared), config=config,
                                                           temperature=temperature)[0], chunks)
    return logprobs.reshape(batch, steps, -1)
