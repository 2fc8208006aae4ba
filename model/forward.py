"""The policy's forward passes with transformers' input layout (`MllamaForConditionalGeneration.forward`), and the
KV-cache API the sampler builds on.

Inputs: input_ids (B, S) int; attention_mask (B, S) 1 = token, 0 = padding (left padding is the normal case);
pixel_values (B, I, T, C, H, W); aspect_ratio_ids (B, I); aspect_ratio_mask (B, I, T); cross_attention_mask
(B, S, I, T) 1 = the token may see that image tile; position_ids (B, S) (default: cumsum(attention_mask) - 1, as
transformers' generate builds them for left padding). Outputs: logits (B, S, vocab) in the compute dtype,
hidden (B, S, D) after the final norm, values (B, S) float32.

KV cache (`KVCache`): self-attention K/V buffers (L_self, B, S_max, KV, Dh) written at a shared slot index (the
batch is aligned: row b's token t sits in slot t of every layer), a per-slot validity mask (padding slots are
never attended), each row's next RoPE position, and the cross-attention K/V (L_cross, B, V, KV, Dh) computed once
from the vision states. `extend` appends n >= 1 tokens (n = 1 is a decode step, n > 1 appends e.g. a feedback
turn; its own padding is allowed anywhere); `prefill` is `extend` on an empty cache that also encodes the images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from model import text as T
from model.config import ModelConfig
from model.value_head import policy_values

Params = dict[str, Any]


def compute_dtype(config: ModelConfig):
    return jnp.dtype(config.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions (B, S): cumsum(mask) - 1 for tokens, 1 for padding (transformers' generate)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.where(mask == 1, jnp.cumsum(mask, axis=-1) - 1, 1)


def vision_states(params: Params, config: ModelConfig, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
                  cross_attention_states=None):
    """Projected vision states (B, V, D) from the vision encoder (model.vision.encode_images)."""
    if cross_attention_states is not None:
        raise ValueError("give pixel_values or cross_attention_states, not both")
    if aspect_ratio_ids is None:
        raise ValueError("aspect_ratio_ids must be given with pixel_values (from the image processor)")
    if aspect_ratio_mask is None:
        aspect_ratio_mask = jnp.ones(pixel_values.shape[:3], jnp.int32)
    from model import vision  # the vision encoder lives in its own module (its own engineer)
    return vision.encode_images(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)


def _cross_inputs(config: ModelConfig, cross_attention_mask, batch: int, seq: int, num_vision: int, dtype):
    if cross_attention_mask is None:  # no mask = every token sees every vision token, row mask 1
        return T.CrossAttentionInputs(jnp.zeros((batch, seq, num_vision), dtype), jnp.ones((batch, seq, 1), dtype))
    return T.cross_attention_inputs(cross_attention_mask, config.vision.num_patches, dtype)


def forward_hidden(params: Params, config: ModelConfig, input_ids: jax.Array, *, attention_mask=None,
                   pixel_values=None, aspect_ratio_ids=None, aspect_ratio_mask=None, cross_attention_mask=None,
                   position_ids=None, cross_attention_states=None,
                   logits_positions: slice | jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(hidden (B, S, D) after the final norm, logits (B, S, vocab)). `cross_attention_states` (B, V, D) may be
    given instead of pixel values (already-encoded images). Without either, cross-attention layers are skipped.
    `logits_positions` (a static slice of the S positions, or per-row positions (B, S') int32) computes the LM head
    only there: logits (B, S', vocab), e.g. an RL update's response positions (the head is the widest matmul of
    the model, vocab 128k, and its fp32 logits the largest activation)."""
    dtype = compute_dtype(config)
    b, s = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, s), jnp.int32)
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    if pixel_values is not None:
        cross_attention_states = vision_states(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
                                               cross_attention_states)
    slots = jnp.arange(s)
    cos, sin = T.rope_cos_sin(config.text, position_ids, dtype)
    allowed = T.self_attention_allowed(attention_mask != 0, slots, slots)
    self_inputs = T.SelfAttentionInputs(cos, sin, T.additive_mask(allowed, dtype))
    cross_kv = cross_inputs = None
    if cross_attention_states is not None:
        cross_attention_states = cross_attention_states.astype(dtype)
        cross_kv = T.stacked_cross_kv(params, cross_attention_states, config)
        cross_inputs = _cross_inputs(config, cross_attention_mask, b, s, cross_attention_states.shape[1], dtype)
    hidden, _ = T.decoder(params, config, T.embed(params, input_ids, dtype), self_inputs, cross_kv, cross_inputs)
    if logits_positions is None:
        head_input = hidden
    elif isinstance(logits_positions, slice):
        head_input = hidden[:, logits_positions]
    else:
        head_input = jnp.take_along_axis(hidden, jnp.asarray(logits_positions)[..., None], axis=1)
    return hidden, T.lm_head(params, head_input)


def forward(params: Params, config: ModelConfig, input_ids: jax.Array, *, attention_mask=None, pixel_values=None,
            aspect_ratio_ids=None, aspect_ratio_mask=None, cross_attention_mask=None, position_ids=None,
            cross_attention_states=None, return_values: bool = False, logits_positions: slice | None = None):
    """Logits (B, S, vocab_size), or (logits, values (B, S)) with `return_values=True` (needs params["value_head"];
    the caller picks the position it wants, e.g. the last prompt token). `logits_positions`: logits only at
    those positions (`forward_hidden`); values stay at every position."""
    hidden, logits = forward_hidden(
        params, config, input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
        aspect_ratio_ids=aspect_ratio_ids, aspect_ratio_mask=aspect_ratio_mask,
        cross_attention_mask=cross_attention_mask, position_ids=position_ids,
        cross_attention_states=cross_attention_states, logits_positions=logits_positions)
    if not return_values:
        return logits
    return logits, policy_values(params, hidden, "return_values=True")


# ------------------------------------------------------------------------------------------------- KV cache
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Decoding state. Arrays: self_k, self_v (L_self, B, S_max, KV, Dh); slot_valid (B, S_max) bool (a slot
    holds a real token); index () int32, the next slot to write (shared by the batch); next_position (B,) int32,
    each row's next RoPE position; cross_k, cross_v (L_cross, B, V, KV, Dh) or None (no images: the
    cross-attention layers are skipped); cross_mask_last (B, I, T) int32 or None, the cross-attention mask row of
    the last token, repeated for new tokens when no mask is given (transformers' generate does the same)."""

    self_k: jax.Array
    self_v: jax.Array
    slot_valid: jax.Array
    index: jax.Array
    next_position: jax.Array
    cross_k: jax.Array | None = None
    cross_v: jax.Array | None = None
    cross_mask_last: jax.Array | None = None

    @property
    def max_length(self) -> int:
        return self.slot_valid.shape[1]


def grow_cache(cache: KVCache, max_length: int) -> KVCache:
    """The same cache with `max_length` slots: empty slots added after the existing ones (a copy of the K/V
    buffers, once; every slot already written keeps its place, so decoding goes on as if the cache had always been
    that long). Decode attention spans every slot of the cache, so a conversation that grows turn by turn can keep
    a cache sized for what it holds so far (`rl.rollout`'s cache stages). Stacked form; a shorter max_length is
    refused."""
    extra = max_length - cache.max_length
    if extra < 0:
        raise ValueError(f"grow_cache cannot shrink a cache of {cache.max_length} slots to {max_length}.")
    if extra == 0:
        return cache
    cache = stack_cache(cache)
    slots = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
    return dataclasses.replace(cache, self_k=jnp.pad(cache.self_k, slots), self_v=jnp.pad(cache.self_v, slots),
                               slot_valid=jnp.pad(cache.slot_valid, ((0, 0), (0, extra))))


def unstack_cache(cache: KVCache) -> KVCache:
    """The decode-loop form of a cache (same values): self_k / self_v / cross_k / cross_v as tuples of per-layer
    arrays, self_k[l] as (B, S_max * KV, Dh) and self_v[l] as (B, S_max, KV * Dh) (free reshapes of
    (B, S_max, KV, Dh)), cross_k[l] / cross_v[l] (B, V, KV, Dh). `extend`, `decode` and `model.text.decoder`
    accept both forms. The sampler's decode loop carries this one: on XLA's CPU backend, slicing a layer out of
    the stacked buffers copies it on every step. `stack_cache` is the inverse."""
    if isinstance(cache.self_k, tuple):
        return cache

    def split(a):
        return None if a is None else tuple(a[i] for i in range(a.shape[0]))

    layers, b, s, kv, dh = cache.self_k.shape
    return dataclasses.replace(
        cache, self_k=tuple(k.reshape(b, s * kv, dh) for k in split(cache.self_k)),
        self_v=tuple(v.reshape(b, s, kv * dh) for v in split(cache.self_v)),
        cross_k=split(cache.cross_k), cross_v=split(cache.cross_v))


def stack_cache(cache: KVCache) -> KVCache:
    """The inverse of `unstack_cache`: K/V back to the stacked (L, ...) arrays of the KVCache layout."""
    if not isinstance(cache.self_k, tuple):
        return cache
    b, s = cache.slot_valid.shape
    dh = cache.self_k[0].shape[-1]
    kv = cache.self_k[0].shape[1] // s

    def join(a):
        return None if a is None else jnp.stack(a)

    return dataclasses.replace(
        cache, self_k=jnp.stack([k.reshape(b, s, kv, dh) for k in cache.self_k]),
        self_v=jnp.stack([v.reshape(b, s, kv, dh) for v in cache.self_v]),
        cross_k=join(cache.cross_k), cross_v=join(cache.cross_v))


def init_cache(config: ModelConfig, batch_size: int, max_length: int, *, num_images: int = 0,
               dtype=None) -> KVCache:
    """An empty cache for `max_length` tokens. num_images > 0 allocates the cross-attention K/V for that many
    images per sample (I * max_num_tiles * num_patches vision tokens); the prefill must then be given images."""
    text, dtype = config.text, jnp.dtype(dtype or config.dtype)
    kv_shape = (len(text.self_attention_layers), batch_size, max_length, text.num_key_value_heads, text.head_dim)
    cache = KVCache(jnp.zeros(kv_shape, dtype), jnp.zeros(kv_shape, dtype),
                    jnp.zeros((batch_size, max_length), bool), jnp.zeros((), jnp.int32),
                    jnp.zeros((batch_size,), jnp.int32))
    if num_images:
        v = num_images * config.vision.max_num_tiles * config.vision.num_patches
        cross_shape = (len(text.cross_attention_layers), batch_size, v, text.num_key_value_heads, text.head_dim)
        cache = dataclasses.replace(
            cache, cross_k=jnp.zeros(cross_shape, dtype), cross_v=jnp.zeros(cross_shape, dtype),
            cross_mask_last=jnp.ones((batch_size, num_images, config.vision.max_num_tiles), jnp.int32))
    return cache


def extend(params: Params, config: ModelConfig, input_ids: jax.Array, cache: KVCache, *, attention_mask=None,
           cross_attention_mask=None, position_ids=None, pixel_values=None, aspect_ratio_ids=None,
           aspect_ratio_mask=None, cross_attention_states=None, return_hidden: bool = False):
    """Append n >= 1 tokens input_ids (B, n) to the cache; returns (logits (B, n, vocab), cache), or
    (logits, hidden, cache) with return_hidden. attention_mask (B, n) marks this chunk's padding (default: all
    tokens). cross_attention_mask (B, n, I, T) for these tokens (default: the cache's last row, repeated).
    Passing images (pixel_values or cross_attention_states) (re)computes the cached cross-attention K/V; the cache
    must have been made with num_images matching them. Overflowing S_max is the caller's error (not checked)."""
    dtype = compute_dtype(config)
    b, n = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, n), jnp.int32)
    valid = attention_mask != 0
    if position_ids is None:
        position_ids = jnp.where(valid, cache.next_position[:, None] + jnp.cumsum(valid, axis=-1) - 1, 1)
    if pixel_values is not None:
        cross_attention_states = vision_states(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
                                               cross_attention_states)
    cross_k, cross_v = cache.cross_k, cache.cross_v
    if cross_attention_states is not None:
        if cross_k is None or cross_k.shape[2] != cross_attention_states.shape[1]:
            raise ValueError(f"the cache holds no room for {cross_attention_states.shape[1]} vision tokens; "
                             "make it with init_cache(..., num_images=<images per sample>)")
        new_k, new_v = T.stacked_cross_kv(params, cross_attention_states.astype(dtype), config)
        cross_k, cross_v = new_k.astype(cross_k.dtype), new_v.astype(cross_v.dtype)

    slot_valid = jax.lax.dynamic_update_slice(cache.slot_valid, valid, (0, cache.index))
    query_slots = cache.index + jnp.arange(n)
    allowed = T.self_attention_allowed(slot_valid, jnp.arange(cache.max_length), query_slots)
    cos, sin = T.rope_cos_sin(config.text, position_ids, dtype)
    self_inputs = T.SelfAttentionInputs(cos, sin, T.additive_mask(allowed, dtype))

    cross_kv = cross_inputs = None
    cross_mask_last = cache.cross_mask_last
    if cross_k is not None:
        if cross_attention_mask is None:
            cross_attention_mask = jnp.broadcast_to(cross_mask_last[:, None], (b, n, *cross_mask_last.shape[1:]))
        cross_mask_last = cross_attention_mask[:, -1].astype(jnp.int32)
        cross_kv = (cross_k, cross_v)
        cross_inputs = T.cross_attention_inputs(cross_attention_mask, config.vision.num_patches, dtype)

    hidden, (self_k, self_v) = T.decoder(params, config, T.embed(params, input_ids, dtype), self_inputs,
                                         cross_kv, cross_inputs, (cache.self_k, cache.self_v), cache.index)
    new_cache = KVCache(self_k, self_v, slot_valid, cache.index + n,
                        cache.next_position + valid.sum(axis=-1).astype(jnp.int32),
                        cross_k, cross_v, cross_mask_last)
    logits = T.lm_head(params, hidden)
    return (logits, hidden, new_cache) if return_hidden else (logits, new_cache)


def prefill(params: Params, config: ModelConfig, input_ids: jax.Array, attention_mask, cache: KVCache, *,
            pixel_values=None, aspect_ratio_ids=None, aspect_ratio_mask=None, cross_attention_mask=None,
            cross_attention_states=None, position_ids=None, return_hidden: bool = False):
    """Process a (left-padded) prompt into an empty cache: `extend` that also encodes the images.
    Returns (logits (B, S, vocab), cache)."""
    if cache.cross_k is not None and pixel_values is None and cross_attention_states is None:
        raise ValueError("this cache was made for images (num_images > 0) but the prefill got none")
    return extend(params, config, input_ids, cache, attention_mask=attention_mask,
                  cross_attention_mask=cross_attention_mask, position_ids=position_ids, pixel_values=pixel_values,
                  aspect_ratio_ids=aspect_ratio_ids, aspect_ratio_mask=aspect_ratio_mask,
                  cross_attention_states=cross_attention_states, return_hidden=return_hidden)


def decode(params: Params, config: ModelConfig, tokens: jax.Array, cache: KVCache):
    """One decoding step: tokens (B,) or (B, 1) -> (logits (B, vocab), cache)."""
    tokens = tokens.reshape(tokens.shape[0], 1)
    logits, cache = extend(params, config, tokens, cache)
    return logits[:, 0], cache
