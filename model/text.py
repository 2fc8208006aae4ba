"""The mllama text decoder as pure functions: llama3 RoPE, RMSNorm, SwiGLU, grouped-query self-attention layers
(stacked on axis 0 and run with `jax.lax.scan` over each contiguous run between cross-attention layers),
tanh-gated cross-attention layers, and the masks, all matching transformers' `MllamaTextModel` (eager attention).

Axes: B batch, S query tokens (the tokens processed in this call), K key slots (S without a cache, the cache's
S_max with one), V vision tokens (images x tiles x patches per tile), H query heads, KV key/value heads,
G = H // KV query heads per key/value head, Dh head dim, D model hidden size, L stacked layers.

Numerics follow transformers: RMSNorm in float32, cast back to the compute dtype, then times the weight; attention
scores q.k * Dh^-0.5 in the compute dtype plus an additive mask (0 or the dtype's most negative finite value),
softmax in float32 and cast back. A row whose keys are all masked therefore gets a uniform softmax (finite, no NaN)
exactly as in transformers. Params may be stored in another dtype than the compute dtype: they are cast at use.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig, TextConfig
from model.sharding import constrain_batch, constrain_lookup

Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(text: TextConfig) -> np.ndarray:
    """(Dh/2,) float32 inverse frequencies, computed with transformers' float32 operation order (llama3 scaling)."""
    rope, dim = text.rope, text.head_dim
    inv_freq = (np.float32(1.0) / (np.float32(rope.theta) ** (np.arange(0, dim, 2).astype(np.float32)
                                                              / np.float32(dim)))).astype(np.float32)
    if rope.rope_type == "default":
        return inv_freq
    factor = np.float32(rope.factor)
    low, high = rope.low_freq_factor, rope.high_freq_factor
    old_context = rope.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = ((np.float32(old_context) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = ((np.float32(1) - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(text: TextConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (B, S, Dh) for integer positions (B, S); computed in float32, returned in `dtype`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(text))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (B, S, heads, Dh) rotated with cos/sin (B, S, Dh); rotate_half = cat(-x2, x1) as in transformers."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


# ----------------------------------------------------------------------------------------------------- blocks
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis: float32 statistics, cast back to x's dtype, then times the weight."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (..., in) @ kernel (in, out), kernel cast to x's (compute) dtype.

    As one 2-D matmul over the flattened leading axes (free reshapes): the gradient of a (B, S, in) x (in, out)
    dot_general contracts two axes, and XLA's CPU backend then fused the activation's backward into a transposing
    copy that took 4x a plain one, ~25% of a small model's training step (docs/benchmarks.md, "PPO update")."""
    lead = x.shape[:-1]
    return jnp.matmul(x.reshape(-1, x.shape[-1]), kernel.astype(x.dtype)).reshape(*lead, kernel.shape[-1])


def swiglu_mlp(p: Params, x: jax.Array) -> jax.Array:
    """down(silu(gate(x)) * up(x))."""
    return linear(jax.nn.silu(linear(x, p["gate_proj"]["kernel"])) * linear(x, p["up_proj"]["kernel"]),
                  p["down_proj"]["kernel"])


DECODE_QUERIES = 4  # attend() uses the cache-layout formulation (_attend_few) for at most this many queries


def in_query_blocks(fn, block: int, queries: tuple[tuple[jax.Array, int], ...], out_axis: int) -> jax.Array:
    """`fn(*arrays)` of per-query `queries` ((array, its query axis) pairs; keys and values are closed over by
    `fn`) computed `block` queries at a time, the last block padded, each block rematerialized in the backward pass
    (`jax.checkpoint` inside `jax.lax.map`): the attention probabilities, (..., S, K) at once, exist only as
    (..., block, K) in the forward pass and in the backward pass, and nothing of a block but its inputs is saved.
    The same values as `fn` on all queries (each query's softmax spans all keys either way). block <= 0 or
    >= S: `fn` itself. The output's query axis is `out_axis`."""
    first, axis = queries[0]
    n = first.shape[axis]
    if block <= 0 or block >= n:
        return fn(*(array for array, _ in queries))
    blocks = -(-n // block)

    def split(array: jax.Array, axis: int) -> jax.Array:
        array = jnp.moveaxis(array, axis, 0)
        array = jnp.pad(array, [(0, blocks * block - n)] + [(0, 0)] * (array.ndim - 1))
        return array.reshape(blocks, block, *array.shape[1:])

    def one_block(parts):
        return jnp.moveaxis(fn(*(jnp.moveaxis(part, 0, axis) for part, (_, axis) in zip(parts, queries))),
                            out_axis, 0)

    out = jax.lax.map(jax.checkpoint(one_block), tuple(split(array, axis) for array, axis in queries))
    return jnp.moveaxis(out.reshape(blocks * block, *out.shape[2:])[:n], 0, out_axis)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, query_block: int = 0) -> jax.Array:
    """Grouped-query attention. q (B, S, H, Dh); k, v (B, K, KV, Dh); bias (B, S, K) additive or None.
    Query head h uses key/value head h // G (transformers' repeat_kv). Returns (B, S, H * Dh). `query_block` > 0:
    that many queries at a time (`in_query_blocks`; ModelConfig.attention_block)."""
    b, s, h, dh = q.shape
    kv = k.shape[2]
    if s <= DECODE_QUERIES and kv > 1:
        return _attend_few(q, k.reshape(b, -1, dh), v.reshape(b, k.shape[1], kv * dh), bias, kv)
    if 0 < query_block < s:
        if bias is None:
            return in_query_blocks(lambda q: attend(q, k, v, None), query_block, ((q, 1),), 1)
        return in_query_blocks(lambda q, bias: attend(q, k, v, bias), query_block, ((q, 1), (bias, 1)), 1)
    q = q.reshape(b, s, kv, h // kv, dh)
    scores = jnp.einsum("bskgd,btkd->bkgst", q, k) * jnp.asarray(dh ** -0.5, q.dtype)
    if bias is not None:
        scores = scores + bias[:, None, None, :, :]
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(b, s, h * dh)


def _attend_few(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, kv: int) -> jax.Array:
    """`attend` for a few queries (decode steps), reading the keys/values in the cache's own layout, given as the
    free reshapes k (B, K * KV, Dh) and v (B, K, KV * Dh) of (B, K, KV, Dh).

    The grouped einsums of `attend` make (B, KV) the dots' batch dims, so XLA's CPU backend copies every K/V
    buffer to (B, KV, Dh, K) / (B, KV, K, Dh) on each decode step (docs/benchmarks.md "Decode-loop profile").
    Here the dots batch over B only: k viewed as (B, K * KV, Dh) (a free reshape) is scored against all H query
    heads, and the KV x H score matrix keeps only the pairs where the key head is the query's own (h // G); the
    same for probs @ v viewed as (B, K, KV * Dh). Each kept entry is the same dot product over the same terms as
    in `attend` (results agree to float rounding of the accumulation order); the dots do KV x the arithmetic,
    which is negligible next to reading the buffers for one query."""
    b, s, h, dh = q.shape
    t = v.shape[1]
    g = h // kv
    full = jnp.einsum("bnd,bqd->bnq", k, q.reshape(b, s * h, dh))  # (B, K*KV', S*H)
    scores = jnp.diagonal(full.reshape(b, t, kv, s, kv, g), axis1=2, axis2=4)  # (B, K, S, G, KV)
    scores = jnp.transpose(scores, (0, 2, 4, 3, 1)) * jnp.asarray(dh ** -0.5, q.dtype)  # (B, S, KV, G, K)
    if bias is not None:
        scores = scores + bias[:, :, None, None, :]
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
    full = jnp.einsum("bqt,btn->bqn", probs.reshape(b, s * h, t), v)  # (B, S*H, KV'*Dh)
    out = jnp.diagonal(full.reshape(b, s, kv, g, kv, dh), axis1=2, axis2=4)  # (B, S, G, Dh, KV)
    return jnp.transpose(out, (0, 1, 4, 2, 3)).reshape(b, s, h * dh)


def additive_mask(allowed: jax.Array, dtype) -> jax.Array:
    """0 where allowed, the dtype's most negative finite value elsewhere (transformers' eager mask)."""
    return jnp.where(allowed, jnp.zeros((), dtype), jnp.asarray(jnp.finfo(dtype).min, dtype))


class SelfAttentionInputs(NamedTuple):
    """Per-call inputs shared by every self-attention layer: RoPE tables (B, S, Dh) and the mask bias (B, S, K)."""

    cos: jax.Array
    sin: jax.Array
    bias: jax.Array


def self_attention_layer(p: Params, x: jax.Array, inputs: SelfAttentionInputs, text: TextConfig,
                         kv_buffers: tuple[jax.Array, jax.Array] | None = None,
                         write_index: jax.Array | None = None, layer: int = 0, query_block: int = 0):
    """One Llama decoder layer. x (B, S, D). Without a cache the keys are this call's tokens; with `kv_buffers`
    (k, v: the stacked buffers (L, B, S_max, KV, Dh) of all self-attention layers, or this layer's own buffers
    k (B, S_max * KV, Dh), v (B, S_max, KV * Dh) from `model.forward.unstack_cache`) this layer's new keys/values are written at [layer, :, write_index] (only the new slots:
    no whole-buffer copies in a decode loop) and attention runs over all S_max slots (the bias masks the empty
    ones). `query_block`: attention over that many queries at a time (`attend`). Returns (x, updated kv_buffers
    or None)."""
    b, s, _ = x.shape
    h, kv, dh = text.num_attention_heads, text.num_key_value_heads, text.head_dim
    attn = p["self_attn"]
    normed = rms_norm(x, p["input_layernorm"]["scale"], text.rms_norm_eps)
    q = linear(normed, attn["q_proj"]["kernel"]).reshape(b, s, h, dh)
    k = linear(normed, attn["k_proj"]["kernel"]).reshape(b, s, kv, dh)
    v = linear(normed, attn["v_proj"]["kernel"]).reshape(b, s, kv, dh)
    q, k = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
    if kv_buffers is not None and kv_buffers[0].ndim == 3:
        # this layer's own buffers in the decode layout (`model.forward.unstack_cache`): k (B, S_max * KV, Dh),
        # v (B, S_max, KV * Dh), read by the attention as they are (a reshape there would be fused with the
        # in-place update, duplicating it: XLA then copies the whole buffer several times per step)
        k_all, v_all = kv_buffers
        k_all = jax.lax.dynamic_update_slice(k_all, k.reshape(b, s * kv, dh).astype(k_all.dtype),
                                             (0, write_index * kv, 0))
        v_all = jax.lax.dynamic_update_slice(v_all, v.reshape(b, s, kv * dh).astype(v_all.dtype),
                                             (0, write_index, 0))
        kv_buffers = (k_all, v_all)
        k, v = k_all.astype(x.dtype), v_all.astype(x.dtype)
        if s <= DECODE_QUERIES:
            out = _attend_few(q, k, v, inputs.bias, kv)
        else:
            out = attend(q, k.reshape(b, -1, kv, dh), v.reshape(b, -1, kv, dh), inputs.bias, query_block)
        x = x + linear(out, attn["o_proj"]["kernel"])
        x = x + swiglu_mlp(p["mlp"], rms_norm(x, p["post_attention_layernorm"]["scale"], text.rms_norm_eps))
        return x, kv_buffers
    if kv_buffers is not None:
        k_all, v_all = kv_buffers
        start = (layer, 0, write_index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
        v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
        kv_buffers = (k_all, v_all)
        k, v = k_all[layer].astype(x.dtype), v_all[layer].astype(x.dtype)
    x = x + linear(attend(q, k, v, inputs.bias, query_block), attn["o_proj"]["kernel"])
    x = x + swiglu_mlp(p["mlp"], rms_norm(x, p["post_attention_layernorm"]["scale"], text.rms_norm_eps))
    return x, kv_buffers


def cross_attention_kv(p: Params, vision_states: jax.Array, text: TextConfig) -> tuple[jax.Array, jax.Array]:
    """Keys (after k_norm) and values (B, V, KV, Dh) of one cross-attention layer from the projected vision
    states (B, V, D): computed once per image set and reused by every later token."""
    b, n, _ = vision_states.shape
    kv, dh = text.num_key_value_heads, text.head_dim
    attn = p["cross_attn"]
    k = linear(vision_states, attn["k_proj"]["kernel"]).reshape(b, n, kv, dh)
    v = linear(vision_states, attn["v_proj"]["kernel"]).reshape(b, n, kv, dh)
    return rms_norm(k, attn["k_norm"]["scale"], text.rms_norm_eps), v


class CrossAttentionInputs(NamedTuple):
    """Cross-attention mask inputs for this call's tokens: bias (B, S, V) additive, row_mask (B, S, 1) = 1 where
    a token may see at least one vision token (transformers' full_text_row_masked_out_mask)."""

    bias: jax.Array
    row_mask: jax.Array


def cross_attention_layer(p: Params, x: jax.Array, k: jax.Array, v: jax.Array, inputs: CrossAttentionInputs,
                          text: TextConfig, query_block: int = 0) -> jax.Array:
    """One tanh-gated cross-attention decoder layer; k, v (B, V, KV, Dh) from `cross_attention_kv`.
    The full-text-row mask multiplies the MLP output only, as in transformers. `query_block`: as `attend`'s."""
    b, s, _ = x.shape
    attn = p["cross_attn"]
    normed = rms_norm(x, p["input_layernorm"]["scale"], text.rms_norm_eps)
    q = linear(normed, attn["q_proj"]["kernel"]).reshape(b, s, text.num_attention_heads, text.head_dim)
    q = rms_norm(q, attn["q_norm"]["scale"], text.rms_norm_eps)
    out = linear(attend(q, k.astype(x.dtype), v.astype(x.dtype), inputs.bias, query_block),
                 attn["o_proj"]["kernel"])
    x = x + jnp.tanh(p["cross_attn_attn_gate"].astype(x.dtype)) * out
    mlp = swiglu_mlp(p["mlp"], rms_norm(x, p["post_attention_layernorm"]["scale"], text.rms_norm_eps))
    return x + jnp.tanh(p["cross_attn_mlp_gate"].astype(x.dtype)) * (inputs.row_mask * mlp)


# ----------------------------------------------------------------------------------------------------- masks
def self_attention_allowed(key_valid: jax.Array, key_slots: jax.Array, query_slots: jax.Array) -> jax.Array:
    """(B, S, K) bool: key slot j is visible from query slot i when it holds a real token and j <= i.
    key_valid (B, K) bool, key_slots (K,) int, query_slots (S,) int (slot indices in the padded sequence)."""
    causal = key_slots[None, :] <= query_slots[:, None]
    return causal[None, :, :] & key_valid[:, None, :]


def cross_attention_inputs(cross_attention_mask: jax.Array, num_patches: int, dtype) -> CrossAttentionInputs:
    """transformers' `_prepare_cross_attention_mask`: mask (B, S, I, T) of 0/1 per image tile -> bias (B, S, V)
    with V = I * T * num_patches, and the row mask. Rows with no allowed tile are then unmasked entirely (they
    attend to ALL vision tokens; their MLP output is zeroed by the row mask), exactly as transformers does."""
    b, s = cross_attention_mask.shape[:2]
    allowed_tiles = cross_attention_mask.reshape(b, s, -1) != 0
    row_mask = jnp.any(allowed_tiles, axis=-1, keepdims=True)
    allowed = jnp.repeat(allowed_tiles, num_patches, axis=-1) | ~row_mask
    return CrossAttentionInputs(additive_mask(allowed, dtype), row_mask.astype(dtype))


# ----------------------------------------------------------------------------------------------------- decoder
def layer_plan(text: TextConfig) -> list[tuple[str, int, int]]:
    """The decoder in order as ("self", start, stop) runs of the stacked self-attention layers and
    ("cross", c, c + 1) for the c-th cross-attention layer. 11B: self 0:3, cross 0, self 3:7, cross 1, ..."""
    plan: list[tuple[str, int, int]] = []
    cross = set(text.cross_attention_layers)
    self_index = cross_index = 0
    for layer in range(text.num_hidden_layers):
        if layer in cross:
            plan.append(("cross", cross_index, cross_index + 1))
            cross_index += 1
        elif plan and plan[-1][0] == "self":
            plan[-1] = ("self", plan[-1][1], self_index + 1)
            self_index += 1
        else:
            plan.append(("self", self_index, self_index + 1))
            self_index += 1
    return plan


def _remat(fn, config: ModelConfig):
    if config.remat == "none":
        return fn
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if config.remat == "dots" else None
    return jax.checkpoint(fn, policy=policy)


def _slice_layers(tree: Params | tuple, start: int, stop: int, total: int) -> Params:
    if isinstance(tree, tuple):  # unstacked (`unstack_layers`): restack this run for the scan
        return jax.tree.map(lambda *a: jnp.stack(a), *tree[start:stop])
    if start == 0 and stop == total:
        return tree
    return jax.tree.map(lambda a: a[start:stop], tree)


def layer_params(tree: Params | tuple, index: int) -> Params:
    """One layer's weights from stacked (L, ...) leaves or an `unstack_layers` tuple."""
    return tree[index] if isinstance(tree, tuple) else jax.tree.map(lambda a: a[index], tree)


@partial(jax.jit, static_argnums=1)
def _split_layers(tree: Params, count: int) -> tuple[Params, ...]:
    # One compiled call: called eagerly (generate, outside its jit), per-leaf slicing dispatched ~60 small
    # computations, ~27 ms per generate call on the small preset (inside a jit it is inlined).
    return tuple(layer_params(tree, i) for i in range(count))


def unstack_layers(params: Params, config: ModelConfig) -> Params:
    """params with the stacked self- and cross-attention layers split into tuples of per-layer trees (same
    arrays, same values; `decoder` accepts both). The sampler does this once before its decode loop: XLA's CPU
    backend otherwise materialises every layer's weight slice inside the `while_loop` body, i.e. copies all the
    text weights on every decode step (small preset, batch 8: ~9 ms of a ~20-30 ms step)."""
    text = config.text

    def split(tree, count):
        return _split_layers(tree, count) if not isinstance(tree, tuple) else tree

    out = dict(params)
    out["language_model"] = {**params["language_model"],
                             "layers": split(params["language_model"]["layers"], len(text.self_attention_layers))}
    if "cross_attention" in params:
        out["cross_attention"] = {**params["cross_attention"], "layers": split(
            params["cross_attention"]["layers"], len(text.cross_attention_layers))}
    return out


def decoder(params: Params, config: ModelConfig, x: jax.Array, self_inputs: SelfAttentionInputs,
            cross_kv: tuple[jax.Array, jax.Array] | None, cross_inputs: CrossAttentionInputs | None,
            self_cache: tuple[jax.Array, jax.Array] | None = None, write_index: jax.Array | None = None):
    """All decoder layers and the final norm. x (B, S, D) embeddings in the compute dtype.

    cross_kv: stacked cross-attention keys/values (L_cross, B, V, KV, Dh), or None to skip the cross-attention
    layers (no vision states and nothing cached: transformers' text-only path). self_cache: stacked K/V buffers
    (L_self, B, S_max, KV, Dh) updated in place at `write_index`, or None. Returns (hidden (B, S, D), self_cache).
    Both caches may instead be tuples of per-layer arrays (`unstack_cache`; what the sampler's decode loop
    carries): a layer then reads its buffer without slicing it out of the stack, a copy on XLA's CPU backend.
    """
    text = config.text
    self_params = params["language_model"]["layers"]
    num_self = len(text.self_attention_layers)

    # blocked attention (ModelConfig.attention_block) in the cacheless forward (training, scoring) and in cached
    # calls with many queries (a prefill or an appended turn: their (B, H, S, S_max) scores over the whole cache
    # are a rollout's largest temporaries); a decode step's few queries never reach a block
    block = config.attention_block

    def self_layer(p, x, kv_buffers):
        return self_attention_layer(p, x, self_inputs, text, kv_buffers, write_index, query_block=block)

    self_layer = _remat(self_layer, config)
    cross_layer = _remat(lambda p, x, k, v: cross_attention_layer(p, x, k, v, cross_inputs, text, block), config)
    x = constrain_batch(x)

    for kind, start, stop in layer_plan(text):
        if kind == "cross":
            if cross_kv is None:
                continue
            p = layer_params(params["cross_attention"]["layers"], start)
            x = cross_layer(p, constrain_batch(x), cross_kv[0][start], cross_kv[1][start])
            continue
        if self_cache is None and config.scans_layers():
            def body(x, p):
                return self_layer(p, constrain_batch(x), None)[0], None
            x, _ = jax.lax.scan(body, x, _slice_layers(self_params, start, stop, num_self))
        elif self_cache is None:  # unrolled (ModelConfig.scan_layers)
            for layer in range(start, stop):
                x = self_layer(layer_params(self_params, layer), constrain_batch(x), None)[0]
        else:
            # With a cache (inference: prefill, extend, decode; no remat) the layers are unrolled with static
            # indices: a scan dynamic-slices every layer's weights and cache buffers on each step, which made the
            # sampler's CPU decode step ~5x slower (small preset, batch 8: 41 ms -> 8 ms).
            k_all, v_all = self_cache
            for layer in range(start, stop):
                p = layer_params(self_params, layer)
                if isinstance(k_all, tuple):  # per-layer buffers
                    x, (k_layer, v_layer) = self_attention_layer(p, constrain_batch(x), self_inputs, text,
                                                                 (k_all[layer], v_all[layer]), write_index,
                                                                 query_block=block)
                    k_all = k_all[:layer] + (k_layer,) + k_all[layer + 1:]
                    v_all = v_all[:layer] + (v_layer,) + v_all[layer + 1:]
                else:
                    x, (k_all, v_all) = self_attention_layer(p, constrain_batch(x), self_inputs, text,
                                                             (k_all, v_all), write_index, layer, block)
            self_cache = (k_all, v_all)
    x = rms_norm(x, params["language_model"]["norm"]["scale"], text.rms_norm_eps)
    return x, self_cache


def embed(params: Params, input_ids: jax.Array, dtype) -> jax.Array:
    """Token embeddings (B, S, D) in the compute dtype (the table has vocab_size + 8 rows), batch-constrained on a
    context mesh (model.sharding.constrain_batch)."""
    table = params["language_model"]["embed_tokens"]["embedding"]
    return constrain_batch(constrain_lookup(jnp.take(table, input_ids, axis=0)).astype(dtype))


def lm_head(params: Params, hidden: jax.Array) -> jax.Array:
    """Logits (B, S, vocab_size) in the compute dtype (transformers 5 returns logits in the model dtype)."""
    return linear(hidden, params["language_model"]["lm_head"]["kernel"])


def stacked_cross_kv(params: Params, vision_states: jax.Array, config: ModelConfig):
    """Keys/values of every cross-attention layer, stacked: (L_cross, B, V, KV, Dh) each."""
    layers = params["cross_attention"]["layers"]
    if isinstance(layers, tuple):
        kv = [cross_attention_kv(p, vision_states, config.text) for p in layers]
        return jnp.stack([k for k, _ in kv]), jnp.stack([v for _, v in kv])
    return jax.lax.map(lambda p: cross_attention_kv(p, vision_states, config.text), layers)
