"""The KV-cached sampler: batched prefill of padded prompts, a `jax.lax.while_loop` decode over a fixed-size cache,
and the incremental API of the multi-turn revision loop (a feedback turn is appended to the cache of the
conversation so far: a new turn costs only its new tokens).

Axes: B batch, S prompt/chunk tokens, N max_new_tokens, V vocab_size (the lm_head rows), S_max cache slots.

Two levels:
- `generate(params, config, input_ids, *, max_new_tokens, temperature, top_p, top_k, ...) -> Generation`: one
  turn from a (left-padded) prompt, transformers' `generate` layout. The prompt is left-padded to a bucket and the
  cache sized to a bucket outside the jit, so a handful of compilations serve a whole run.
- `start(params, config, input_ids, attention_mask, cache, ...) -> SamplerState` (prefill),
  `sample_turn(params, config, state, rng, sampling, active=None) -> (SamplerState, Generation)` (decode one turn
  into the cache; the sampled tokens stay there), `append(params, config, state, tokens, mask) -> SamplerState`
  (prefill a feedback chunk). `start` and `append` with `return_hidden=True` also return the final hidden state
  (B, D) at each row's last valid token (`last_valid_hidden`): where a value head reads the state that generates
  the next turn (rl/rollout.py). All three are pure and traceable with static shapes (an RL rollout scans over them);
  `start_jit`, `sample_turn_jit`, `append_jit` are jitted versions that donate the cache/state.

Log-probs. `Generation.logprobs` holds the log-probability of each sampled token under the distribution the
sampler drew it from: log_softmax of (logits / temperature) after the top-k and top-p masks (`sampling_logits`).
Greedy decoding (temperature 0) draws the argmax; its `.logprobs` are the temperature-1 log-softmax at the argmax
(the point mass it "drew" from would give 0, which helps nobody). The trainer side is `token_logprobs(logits,
tokens, temperature)`: log_softmax(logits / temperature) WITHOUT the masks (temperature 0 counts as 1), which is
what the reference PPO recomputes; with top_k = 0 and top_p = 1 the two definitions coincide exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from model import text as T
from model.config import ModelConfig
from model.forward import KVCache, extend, init_cache, prefill, stack_cache, unstack_cache

Params = dict[str, Any]


# --------------------------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How one turn is sampled. Static under jit (hashable): each distinct value compiles once.

    temperature 0 = greedy (argmax); top_k 0 = no top-k mask; top_p 1 = no nucleus mask; a row stops after it
    samples any of `stop_tokens` (the stop token is kept, counted in the length and written to the cache) or after
    `max_new_tokens` tokens."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
    """One sampled turn. tokens (B, N) int32, the pad id after a row stops (and everywhere in an inactive row);
    logprobs (B, N) float32 under the sampling distribution (module docstring), 0 after a row stops; lengths (B,)
    int32, tokens sampled per row (including the stop token)."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplerState:
    """A conversation batch in flight: its KV cache and, per row, the float32 next-token logits (B, V) after the
    row's last VALID token (what the next turn samples from; a chunk's trailing padding does not move it)."""

    cache: KVCache
    last_logits: jax.Array


# --------------------------------------------------------------------------------------------- distributions
def sampling_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """The distribution the sampler draws from, as float32 logits (..., V): logits / temperature, then the top-k
    mask, then the top-p mask (transformers' warper order), masked entries -inf. Greedy returns the raw logits
    (temperature 1, no masks). Ties at a threshold are kept."""
    scores = logits.astype(jnp.float32)
    if sampling.greedy:
        return scores
    scores = scores / jnp.float32(sampling.temperature)
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = jax.lax.top_k(scores, sampling.top_k)[0][..., -1:]
        scores = jnp.where(scores < kth, -jnp.inf, scores)
    if sampling.top_p < 1.0:
        # transformers' TopPLogitsWarper: in ascending order drop the prefix whose cumulative probability is
        # <= 1 - top_p, always keeping the most likely token.
        ascending = jnp.sort(scores, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
        dropped = jnp.sum(cumulative <= 1.0 - sampling.top_p, axis=-1, keepdims=True)
        dropped = jnp.minimum(dropped, scores.shape[-1] - 1)
        threshold = jnp.take_along_axis(ascending, dropped, axis=-1)
        scores = jnp.where(scores < threshold, -jnp.inf, scores)
    return scores


def sampling_log_probs(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """log_softmax of `sampling_logits` (..., V): what `Generation.logprobs` reads at the sampled token."""
    return jax.nn.log_softmax(sampling_logits(logits, sampling), axis=-1)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """The trainer-side log-probs (...,) of `tokens` (...) under log_softmax(logits (..., V) / temperature), no
    top-k/top-p masks, float32; temperature 0 (greedy) counts as 1. Apply it to a forward's logits shifted by one
    (logits at position t score the token at t + 1)."""
    scale = 1.0 if temperature == 0.0 else temperature
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / jnp.float32(scale), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sample_tokens(rng: jax.Array, logits: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row from logits (B, V): (tokens (B,) int32, their log-probs (B,) under the sampling
    distribution). Greedy ignores `rng`."""
    scores = sampling_logits(logits, sampling)
    if sampling.greedy:
        tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    else:
        tokens = jax.random.categorical(rng, scores, axis=-1).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


# --------------------------------------------------------------------------------------------- low-level API
def last_valid_hidden(hidden: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """hidden (B, S, D) at each row's last valid position (mask (B, S), 1 = token) -> (B, D), and whether the row
    has any valid token (B,). What `start` / `append` read the next-token logits from (and, with
    return_hidden=True, return: e.g. for a value head at the position that generates the next turn)."""
    valid = mask != 0
    last = valid.shape[1] - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0], valid.any(axis=1)


def _advance(params: Params, state_logits: jax.Array | None, hidden: jax.Array, mask: jax.Array,
             cache: KVCache) -> tuple[SamplerState, jax.Array]:
    last_hidden, has_tokens = last_valid_hidden(hidden, mask)
    logits = T.lm_head(params, last_hidden).astype(jnp.float32)  # only (B, V): never the whole chunk's logits
    if state_logits is not None:
        logits = jnp.where(has_tokens[:, None], logits, state_logits)
    return SamplerState(cache, logits), last_hidden


def start(params: Params, config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array, cache: KVCache,
          *, pixel_values=None, aspect_ratio_ids=None, aspect_ratio_mask=None, cross_attention_mask=None,
          cross_attention_states=None, return_hidden: bool = False):
    """Prefill padded prompts input_ids (B, S) into an empty `cache` (model.init_cache; num_images > 0 when images
    are given: their cross-attention K/V are computed here, once). Padding may be anywhere (left is usual); a row
    without any token (a batch filler) gets meaningless next-token logits: pass it as inactive to sample_turn.
    Returns the SamplerState, or (SamplerState, hidden (B, D)) with return_hidden: the final hidden state (after
    the last norm) at each row's last valid token, the one the next-token logits come from."""
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    _, hidden, cache = prefill(params, config, input_ids, attention_mask, cache, pixel_values=pixel_values,
                               aspect_ratio_ids=aspect_ratio_ids, aspect_ratio_mask=aspect_ratio_mask,
                               cross_attention_mask=cross_attention_mask,
                               cross_attention_states=cross_attention_states, return_hidden=True)
    state, last_hidden = _advance(params, None, hidden, attention_mask, cache)
    return (state, last_hidden) if return_hidden else state


def append(params: Params, config: ModelConfig, state: SamplerState, tokens: jax.Array,
           mask: jax.Array | None = None, *, return_hidden: bool = False):
    """Prefill a chunk tokens (B, n) (e.g. a verifier's feedback turn, usually right-padded; mask (B, n) 1 = token,
    padding allowed anywhere) after what the cache holds. Rows with no valid token keep their next-token logits.
    Appended tokens see the images as the cache's last position did (processor's continuation mask).
    Returns the SamplerState, or (SamplerState, hidden (B, D)) with return_hidden (as `start`; meaningless for a
    row with no valid token in the chunk)."""
    _, hidden, cache = extend(params, config, tokens, state.cache, attention_mask=mask, return_hidden=True)
    if mask is None:
        mask = jnp.ones(tokens.shape, jnp.int32)
    new_state, last_hidden = _advance(params, state.last_logits, hidden, mask, cache)
    return (new_state, last_hidden) if return_hidden else new_state


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Loop:
    state: SamplerState
    tokens: jax.Array
    logprobs: jax.Array
    done: jax.Array
    lengths: jax.Array
    step: jax.Array


def sample_turn(params: Params, config: ModelConfig, state: SamplerState, rng: jax.Array,
                sampling: SamplingConfig, active: jax.Array | None = None,
                stop_tokens: jax.Array | None = None) -> tuple[SamplerState, Generation]:
    """Decode one turn into the cache: each step samples every live row from its last logits and appends the
    token (finished rows append padding slots, never attended). The sampled tokens, the stop token included, stay
    in the cache, so `append` can continue the conversation. `active` (B,) bool masks rows out (a finished
    episode): they sample nothing and write only padding. The `jax.lax.while_loop` exits once every row has
    stopped, after max_new_tokens steps, or when the cache is full (rows still running are then cut there).
    The turn uses one cache slot per step for the whole batch (= the longest row's length). `stop_tokens` (K,)
    int32, if given, replaces sampling.stop_tokens as a traced array (-1 = unused entry): one compilation then
    serves any stop set of at most K tokens."""
    cache = state.cache
    batch, n = cache.slot_valid.shape[0], sampling.max_new_tokens
    pad = jnp.int32(config.text.pad_token_id)
    stops = jnp.asarray((sampling.stop_tokens or (-1,)) if stop_tokens is None else stop_tokens, jnp.int32)
    done = jnp.zeros((batch,), bool) if active is None else ~jnp.asarray(active, bool)
    params = T.unstack_layers(params, config)  # per-layer weights sliced once, not on every step (T.unstack_layers)
    # per-layer K/V buffers inside the loop: no per-step slice copies out of the stacked cache (unstack_cache)
    state = SamplerState(unstack_cache(state.cache), state.last_logits)
    loop = _Loop(state, jnp.full((batch, n), pad, jnp.int32), jnp.zeros((batch, n), jnp.float32), done,
                 jnp.zeros((batch,), jnp.int32), jnp.zeros((), jnp.int32))

    def running(loop: _Loop):
        return (loop.step < n) & ~jnp.all(loop.done) & (loop.state.cache.index < loop.state.cache.max_length)

    def step(loop: _Loop) -> _Loop:
        live = ~loop.done
        token, logprob = sample_tokens(jax.random.fold_in(rng, loop.step), loop.state.last_logits, sampling)
        token = jnp.where(live, token, pad)
        logprob = jnp.where(live, logprob, 0.0)
        logits, cache = extend(params, config, token[:, None], loop.state.cache,
                               attention_mask=live[:, None].astype(jnp.int32))
        last_logits = jnp.where(live[:, None], logits[:, 0].astype(jnp.float32), loop.state.last_logits)
        stopped = live & jnp.any(token[:, None] == stops[None, :], axis=-1)
        return _Loop(SamplerState(cache, last_logits),
                     jax.lax.dynamic_update_slice(loop.tokens, token[:, None], (0, loop.step)),
                     jax.lax.dynamic_update_slice(loop.logprobs, logprob[:, None], (0, loop.step)),
                     loop.done | stopped | (loop.step + 1 >= n),
                     loop.lengths + live.astype(jnp.int32), loop.step + 1)

    loop = jax.lax.while_loop(running, step, loop)
    state = SamplerState(stack_cache(loop.state.cache), loop.state.last_logits)
    return state, Generation(loop.tokens, loop.logprobs, loop.lengths)


start_jit = jax.jit(start, static_argnums=1, static_argnames="return_hidden", donate_argnames="cache")
sample_turn_jit = jax.jit(sample_turn, static_argnums=(1, 4), donate_argnums=2)
append_jit = jax.jit(append, static_argnums=1, static_argnames="return_hidden", donate_argnums=2)


# --------------------------------------------------------------------------------------------- sharding
def cache_shardings(mesh: jax.sharding.Mesh, cache: KVCache) -> KVCache:
    """NamedShardings for a cache on `mesh`: batch over ("data", "fsdp"), key/value heads over "tensor" (each where
    it divides the dim), everything else replicated; the sampler constrains its cache to these."""
    from model.sharding import BATCH_AXES, DEFAULT_RULES, partition_spec

    rules = {**DEFAULT_RULES, "batch": BATCH_AXES}
    axes = {5: ("layers", "batch", None, "kv_heads", None), 3: ("batch", None, None), 2: ("batch", None),
            1: ("batch",), 0: ()}

    def place(leaf):
        return jax.sharding.NamedSharding(mesh, partition_spec(leaf.shape, axes[leaf.ndim], mesh, rules))

    return jax.tree.map(place, cache)


def _constrain(tree, mesh):
    if mesh is None:
        return tree
    if isinstance(tree, KVCache):
        return jax.lax.with_sharding_constraint(tree, cache_shardings(mesh, tree))
    from model.sharding import batch_sharding
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, batch_sharding(mesh, a.shape)), tree)


# --------------------------------------------------------------------------------------------- generate
def round_up(length: int, bucket: int) -> int:
    """The next multiple of `bucket` (>= bucket)."""
    return max(bucket, -(-length // bucket) * bucket)


MAX_STOP_TOKENS = 8  # generate passes stop tokens as a traced (8,) array: no recompilation per stop set


@functools.partial(jax.jit, static_argnums=1)
def _encode_images(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
    """Projected vision states (B, V, D), compiled apart from the decoder so every sampling config reuses it."""
    from model.forward import vision_states
    return vision_states(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "cache_length", "mesh"))
def _generate(params, input_ids, attention_mask, cross_attention_states, cross_attention_mask, stop_tokens, rng, *,
              config, sampling, cache_length, mesh):
    batch = input_ids.shape[0]
    num_images = 0
    if cross_attention_states is not None:
        num_images = cross_attention_states.shape[1] // (config.vision.max_num_tiles * config.vision.num_patches)
    cache = _constrain(init_cache(config, batch, cache_length, num_images=num_images), mesh)
    state = start(params, config, input_ids, attention_mask, cache, cross_attention_states=cross_attention_states,
                  cross_attention_mask=cross_attention_mask)
    state = SamplerState(_constrain(state.cache, mesh), state.last_logits)
    _, generation = sample_turn(params, config, state, rng, sampling, stop_tokens=stop_tokens)
    return _constrain(generation, mesh)


def generate(params: Params, config: ModelConfig, input_ids: jax.Array, *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, attention_mask=None,
             pixel_values=None, aspect_ratio_ids=None, aspect_ratio_mask=None, cross_attention_mask=None,
             stop_tokens=None, rng: jax.Array | None = None, prompt_bucket: int = 64, cache_bucket: int = 64,
             mesh: jax.sharding.Mesh | None = None) -> Generation:
    """Sample up to `max_new_tokens` after each (left-padded) prompt input_ids (B, S), inputs as transformers'
    `generate`. stop_tokens default to config.text.eos_token_id (pass () for none); rng (a jax.random key) is
    needed when temperature > 0. The prompt is left-padded to a multiple of `prompt_bucket` and the cache holds
    that plus max_new_tokens rounded up to `cache_bucket`: one compilation per (B, bucketed S, images, sampling
    config). With `mesh`, the cache and outputs are sharded (batch over data/fsdp, KV heads over tensor); place
    params with model.sharding.shard_params."""
    stop_tokens = tuple(config.text.eos_token_id if stop_tokens is None else stop_tokens)
    if len(stop_tokens) > MAX_STOP_TOKENS:
        raise ValueError(f"generate takes at most {MAX_STOP_TOKENS} stop tokens, got {len(stop_tokens)}")
    sampling = SamplingConfig(int(max_new_tokens), float(temperature), float(top_p), int(top_k))
    stop_array = jnp.asarray(stop_tokens + (-1,) * (MAX_STOP_TOKENS - len(stop_tokens)), jnp.int32)
    if rng is None:
        if not sampling.greedy:
            raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(seed)")
        rng = jax.random.key(0)
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((batch, length), jnp.int32)
    extra = round_up(length, prompt_bucket) - length
    if extra:
        input_ids = jnp.pad(jnp.asarray(input_ids), ((0, 0), (extra, 0)), constant_values=config.text.pad_token_id)
        attention_mask = jnp.pad(jnp.asarray(attention_mask), ((0, 0), (extra, 0)))
        if cross_attention_mask is not None:
            cross_attention_mask = jnp.pad(jnp.asarray(cross_attention_mask), ((0, 0), (extra, 0), (0, 0), (0, 0)))
    states = None
    # per-layer text weights sliced here, outside the jit: sliced inside it, XLA's CPU backend copies them into
    # fresh temporaries on every call (docs/benchmarks.md, Sampler, 2026-12-01)
    params = T.unstack_layers(params, config)
    if pixel_values is not None:
        if aspect_ratio_ids is None:
            raise ValueError("aspect_ratio_ids must be given with pixel_values (from the image processor)")
        if aspect_ratio_mask is None:
            aspect_ratio_mask = jnp.ones(pixel_values.shape[:3], jnp.int32)
        states = _encode_images(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)
    cache_length = length + extra + round_up(sampling.max_new_tokens, cache_bucket)
    return _generate(params, input_ids, attention_mask, states, cross_attention_mask, stop_array, rng,
                     config=config, sampling=sampling, cache_length=cache_length, mesh=mesh)
