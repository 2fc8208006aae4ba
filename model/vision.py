"""The vision half of Llama 3.2 Vision ("mllama") as pure functions over a param pytree: the tiled ViT encoder
(local + gated global transformer) and the multi-modal projector, matching transformers' `MllamaVisionModel` +
`multi_modal_projector` + the reshape `MllamaModel.forward` applies before the text model.

Axes: B batch, I images per sample, T tiles per image (max_num_tiles), C channels, H/W pixel height/width,
P tokens per tile (patches + class token, 1601 for 560/14), Q = P padded to a multiple of 8 (1608), S = T*Q
(the flattened sequence of one image), D vision hidden, F MLP intermediate, N heads, K head dim,
L stacked layers, E text hidden, R aspect-ratio ids (0 = padding image).

Param layout (`params["vision_encoder"]`, linear kernels (in, out), layers stacked on axis 0):
  patch_embedding.kernel (C*p*p, D)  -- the stride-p conv as a matmul over row-major (C, kh, kw) patches
  class_embedding.embedding (D,)
  pre_tile_positional_embedding / post_tile_positional_embedding: {gate (1,), embedding (R, T, D)}
  gated_positional_embedding: {gate (1,), embedding (P, D), tile_embedding (R, T, P, D)}
  layernorm_pre / layernorm_post: {scale (D,), bias (D,)}
  transformer / global_transformer: {self_attn.{q,k,v,o}_proj.kernel (L, D, D), mlp.fc1.{kernel (L, D, F),
      bias (L, F)}, mlp.fc2.{kernel (L, F, D), bias (L, D)}, input_layernorm / post_attention_layernorm
      .{scale, bias} (L, D)}; global layers add gate_attn, gate_ffn (L, 1) (tanh gates).
`params["projector"]`: kernel (D * (1 + len(intermediate_layers_indices)), E), bias (E,).

HF import/export of these two groups lives in model/vision_hf.py and is re-exported here.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from model.config import ModelConfig, VisionConfig
from model.sharding import constrain_batch, constrain_lookup
from model.text import in_query_blocks, layer_params, linear

Params = dict[str, Any]

_REMAT_POLICIES = {
    "full": None,  # jax.checkpoint's default: save nothing inside the layer, recompute all of it
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def padded_tile_length(vision: VisionConfig) -> int:
    """Q: tokens per tile after HF pads each tile to a multiple of 8 (1601 -> 1608)."""
    return -(-vision.num_patches // 8) * 8


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def layer_norm(x: jax.Array, norm: Params, eps: float) -> jax.Array:
    """LayerNorm with bias over the last axis, computed in fp32 (as torch does for bf16 inputs), output in x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    y = y * norm["scale"].astype(jnp.float32) + norm["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def _attention(x: jax.Array, attn: Params, invalid: jax.Array, num_heads: int, query_block: int = 0) -> jax.Array:
    """Bidirectional multi-head self-attention over x (BI, S, D) with HF's vision mask.

    `invalid` (BI, S) bool marks pad tokens and tokens of unused tiles. HF's additive mask is
    (invalid_q * invalid_k) * finfo(dtype).min: a key is blocked only when BOTH query and key are invalid.

    Lowering (XLA CPU, jax 0.10; docs/benchmarks.md "Vision encoder", 2026-12-01): the mask is applied with a
    select (score -> finfo.min), not added: score + finfo.min rounds to finfo.min for any |score| < 1e31, so the
    values are the same, but the additive form let XLA's YNNPACK fusion pull the mask, the softmax and both
    attention dots into one library call that ran ~4x slower than the pieces. Q/K/V are projected heads-major
    (B, N, S, K), and in float32 the softmax normalisation is applied after the probs @ V dot (exp(s - max) @ V
    / sum exp: one (S, K) divide instead of an (S, S) multiply); other dtypes keep the normalised probs cast to the
    compute dtype before the dot, as transformers does. `query_block` > 0: that many queries at a time
    (`model.text.in_query_blocks`, ModelConfig.attention_block).
    """
    dtype = x.dtype
    batch, seq, hidden = x.shape
    head_dim = hidden // num_heads

    def project(name: str) -> jax.Array:
        y = linear(x, attn[name]["kernel"])
        return y.reshape(batch, seq, num_heads, head_dim).transpose(0, 2, 1, 3)  # (B, N, S, K)

    q, k, v = project("q_proj"), project("k_proj"), project("v_proj")

    def attend(q: jax.Array, invalid_q: jax.Array) -> jax.Array:  # q (B, N, Q, K), invalid_q (B, Q)
        scores = jnp.einsum("bnqk,bnsk->bnqs", q, k) * jnp.asarray(head_dim ** -0.5, dtype)
        blocked = invalid_q[:, None, :, None] & invalid[:, None, None, :]
        scores = jnp.where(blocked, jnp.asarray(jnp.finfo(dtype).min, dtype), scores).astype(jnp.float32)
        if dtype == jnp.float32:
            exp = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
            return jnp.einsum("bnqs,bnsk->bnqk", exp, v) / jnp.sum(exp, axis=-1, keepdims=True)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        return jnp.einsum("bnqs,bnsk->bnqk", probs, v)

    out = in_query_blocks(attend, query_block, ((q, 2), (invalid, 1)), 2)
    out = out.transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
    return linear(out, attn["o_proj"]["kernel"])


def _mlp(x: jax.Array, mlp: Params) -> jax.Array:
    dtype = x.dtype
    h = linear(x, mlp["fc1"]["kernel"]) + mlp["fc1"]["bias"].astype(dtype)
    h = jax.nn.gelu(h, approximate=False)  # exact erf gelu, HF's "gelu"
    return linear(h, mlp["fc2"]["kernel"]) + mlp["fc2"]["bias"].astype(dtype)


def encoder_layer(x: jax.Array, layer: Params, invalid: jax.Array, vision: VisionConfig,
                  query_block: int = 0) -> jax.Array:
    """One vision transformer layer (pre-LN); gated (tanh(gate_attn), tanh(gate_ffn)) when the layer has gates.
    `query_block`: attention over that many queries at a time (`_attention`)."""
    gated = "gate_attn" in layer
    h = _attention(layer_norm(x, layer["input_layernorm"], vision.norm_eps), layer["self_attn"], invalid,
                   vision.attention_heads, query_block)
    if gated:
        h = jnp.tanh(layer["gate_attn"].astype(x.dtype)) * h
    x = x + h
    h = _mlp(layer_norm(x, layer["post_attention_layernorm"], vision.norm_eps), layer["mlp"])
    if gated:
        h = jnp.tanh(layer["gate_ffn"].astype(x.dtype)) * h
    return x + h


def _maybe_remat(fn, remat: str):
    if remat == "none":
        return fn
    if remat not in _REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} is not a known policy; use 'none', 'full' or 'dots'")
    return jax.checkpoint(fn, policy=_REMAT_POLICIES[remat])


def run_local_layers(x: jax.Array, layers: Params, invalid: jax.Array, config: ModelConfig
                     ) -> tuple[jax.Array, jax.Array]:
    """Run the local layers (a scan, or unrolled: `ModelConfig.scans_vision_layers`); also collect the hidden
    states named by `intermediate_layers_indices`.

    Returns (last hidden (BI, S, D), intermediates (M, BI, S, D)) with M = len(indices). Scanned, the
    intermediates are written into a carried buffer (slot M is a scratch slot for layers nobody asked for), so
    only M + 1 hidden states are alive, not one per layer. Convention "output": index i = output of layer i
    (transformers >= 4.56.2); "input": index i = input of layer i (Meta, transformers <= 4.54.1).
    """
    vision = config.vision
    indices = vision.intermediate_layers_indices
    num_layers = vision.num_hidden_layers
    for i in indices:
        if not -num_layers <= i < num_layers:
            raise ValueError(f"intermediate_layers_indices has {i}, but the vision encoder has {num_layers} layers")
    slot_of_layer = [len(indices)] * num_layers
    for slot, i in enumerate(indices):
        slot_of_layer[i % num_layers] = slot  # Python indexing semantics, as HF's tuple lookup
    # A layer named twice in `indices` keeps one slot; copy it to the others afterwards.
    first_slot = [slot_of_layer[i % num_layers] for i in indices]
    write_input = vision.intermediate_layers_convention == "input"

    layer_fn = _maybe_remat(lambda h, layer: encoder_layer(h, layer, invalid, vision, config.attention_block),
                            config.remat)
    if not config.scans_vision_layers():
        outputs = []  # outputs[i]: the input of layer i ("input") or its output ("output")
        for index in range(num_layers):
            if write_input:
                outputs.append(x)
            x = layer_fn(constrain_batch(x), layer_params(layers, index))
            if not write_input:
                outputs.append(x)
        return x, jnp.stack([outputs[i % num_layers] for i in indices])

    def body(carry, xs):
        h, buffer = carry
        layer, slot = xs
        if write_input:
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, h, slot, axis=0)
        h = layer_fn(constrain_batch(h), layer)
        if not write_input:
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, h, slot, axis=0)
        return (h, buffer), None

    buffer = jnp.zeros((len(indices) + 1,) + x.shape, x.dtype)
    (x, buffer), _ = jax.lax.scan(body, (x, buffer), (layers, jnp.asarray(slot_of_layer, jnp.int32)))
    return x, buffer[jnp.asarray(first_slot, jnp.int32)]


def run_global_layers(x: jax.Array, layers: Params, invalid: jax.Array, config: ModelConfig) -> jax.Array:
    """Run the gated global layers over x (BI, S, D) with the same mask as the local layers (scanned or
    unrolled, as the local layers)."""
    layer_fn = _maybe_remat(lambda h, layer: encoder_layer(h, layer, invalid, config.vision,
                                                           config.attention_block), config.remat)
    if not config.scans_vision_layers():
        for index in range(config.vision.num_global_layers):
            x = layer_fn(constrain_batch(x), layer_params(layers, index))
        return x
    x, _ = jax.lax.scan(lambda h, layer: (layer_fn(constrain_batch(h), layer), None), x, layers)
    return x


def _tile_embedding(x: jax.Array, tile: Params, aspect_ratio_ids: jax.Array) -> jax.Array:
    """Gated per-aspect-ratio tile embedding: x (BI, T, *, D) + tanh(gate) * embedding[ar_id] (BI, T, 1, D)."""
    embedding = constrain_lookup(tile["embedding"][aspect_ratio_ids]).astype(x.dtype)[:, :, None, :]
    return x + jnp.tanh(tile["gate"].astype(x.dtype)) * embedding


def _patch_embed(pixels: jax.Array, kernel: jax.Array, patch: int) -> jax.Array:
    """The stride-p, bias-free patch conv as a matmul: (N, C, H, W) -> (N, (H/p)*(W/p), D), row-major patches."""
    n, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    patches = pixels.reshape(n, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(n, gh * gw, c * patch * patch)
    return linear(patches, kernel)


# ----------------------------------------------------------------------------------------------------------
# The encoder and the projector


def vision_encoder(params: Params, config: ModelConfig, pixel_values: jax.Array, aspect_ratio_ids: jax.Array,
                   aspect_ratio_mask: jax.Array) -> jax.Array:
    """MllamaVisionModel.forward: pixel_values (B, I, T, C, H, W), aspect_ratio_ids (B, I) (0 = padding image),
    aspect_ratio_mask (B, I, T) (1 = used tile) -> (B, I, T, P, D * (1 + M)) in the compute dtype: the global
    transformer's output followed by the M intermediate local states, channel-major (index = d * M + m)."""
    vision = config.vision
    enc = params["vision_encoder"]
    dtype = jnp.dtype(config.dtype)
    b, i, t, c, h, w = pixel_values.shape
    expected = (vision.max_num_tiles, vision.num_channels, vision.image_size, vision.image_size)
    if (t, c, h, w) != expected:
        raise ValueError(f"pixel_values has tiles x channels x height x width {(t, c, h, w)}, but the vision "
                         f"config expects {expected}; resize/tile images with the mllama processor")
    bi, p, q, d = b * i, vision.num_patches, padded_tile_length(vision), vision.hidden_size
    ar_ids = aspect_ratio_ids.reshape(bi)

    x = _patch_embed(pixel_values.reshape(bi * t, c, h, w).astype(dtype), enc["patch_embedding"]["kernel"],
                     vision.patch_size)
    x = _tile_embedding(x.reshape(bi, t, p - 1, d), enc["pre_tile_positional_embedding"], ar_ids)
    cls = jnp.broadcast_to(enc["class_embedding"]["embedding"].astype(dtype), (bi, t, 1, d))
    x = jnp.concatenate([cls, x], axis=2)  # (BI, T, P, D)

    pos = enc["gated_positional_embedding"]
    gate = jnp.tanh(pos["gate"].astype(dtype))
    x = x + (1 - gate) * pos["embedding"].astype(dtype)
    x = x + gate * constrain_lookup(pos["tile_embedding"][ar_ids]).astype(dtype)
    x = layer_norm(x, enc["layernorm_pre"], vision.norm_eps)

    x = jnp.pad(x, ((0, 0), (0, 0), (0, q - p), (0, 0))).reshape(bi, t * q, d)
    tile_valid = aspect_ratio_mask.reshape(bi, t, 1).astype(bool)
    token_real = (jnp.arange(q) < p)[None, None, :]
    invalid = ~(tile_valid & token_real).reshape(bi, t * q)

    x, intermediates = run_local_layers(x, enc["transformer"], invalid, config)
    x = layer_norm(x, enc["layernorm_post"], vision.norm_eps)
    x = _tile_embedding(x.reshape(bi, t, q, d), enc["post_tile_positional_embedding"], ar_ids)
    x = run_global_layers(x.reshape(bi, t * q, d), enc["global_transformer"], invalid, config)

    m = intermediates.shape[0]
    intermediates = jnp.moveaxis(intermediates, 0, -1).reshape(bi, t, q, d * m)  # channel-major: d * M + m
    out = jnp.concatenate([x.reshape(bi, t, q, d), intermediates], axis=-1)[:, :, :p]
    return out.reshape(b, i, t, p, d * (1 + m))


def project(params: Params, config: ModelConfig, vision_states: jax.Array) -> jax.Array:
    """multi_modal_projector + MllamaModel's reshape: (B, I, T, P, D') -> (B, I*T*P, E)."""
    dtype = jnp.dtype(config.dtype)
    proj = params["projector"]
    y = linear(vision_states.astype(dtype), proj["kernel"])
    y = y + proj["bias"].astype(dtype)
    b, i, t, p, e = y.shape
    return y.reshape(b, i * t * p, e)


def encode_images(params: Params, config: ModelConfig, pixel_values: jax.Array, aspect_ratio_ids: jax.Array,
                  aspect_ratio_mask: jax.Array) -> jax.Array:
    """The `cross_attention_states` HF passes to the text model: (B, I*T*P, E) in the compute dtype.

    pixel_values (B, I, T, C, H, W), aspect_ratio_ids (B, I), aspect_ratio_mask (B, I, T) as the mllama
    processor makes them. Reads params["vision_encoder"] and params["projector"]."""
    states = vision_encoder(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)
    return project(params, config, states)


# ----------------------------------------------------------------------------------------------------------
# Init and logical axes


def _layer_shapes(vision: VisionConfig, num_layers: int, gated: bool) -> dict[str, Any]:
    d, f, n = vision.hidden_size, vision.intermediate_size, num_layers
    layer = {
        "self_attn": {name: {"kernel": (n, d, d)} for name in ("q_proj", "k_proj", "v_proj", "o_proj")},
        "mlp": {"fc1": {"kernel": (n, d, f), "bias": (n, f)}, "fc2": {"kernel": (n, f, d), "bias": (n, d)}},
        "input_layernorm": {"scale": (n, d), "bias": (n, d)},
        "post_attention_layernorm": {"scale": (n, d), "bias": (n, d)},
    }
    if gated:
        layer["gate_attn"] = (n, 1)
        layer["gate_ffn"] = (n, 1)
    return layer


def vision_param_shapes(config: ModelConfig) -> Params:
    """The shapes of {"vision_encoder": ..., "projector": ...} as a pytree of tuples."""
    v = config.vision
    r, t, p, d = v.max_aspect_ratio_id + 1, v.max_num_tiles, v.num_patches, v.hidden_size
    return {
        "vision_encoder": {
            "patch_embedding": {"kernel": (v.num_channels * v.patch_size ** 2, d)},
            "class_embedding": {"embedding": (d,)},
            "pre_tile_positional_embedding": {"gate": (1,), "embedding": (r, t, d)},
            "post_tile_positional_embedding": {"gate": (1,), "embedding": (r, t, d)},
            "gated_positional_embedding": {"gate": (1,), "embedding": (p, d), "tile_embedding": (r, t, p, d)},
            "layernorm_pre": {"scale": (d,), "bias": (d,)},
            "layernorm_post": {"scale": (d,), "bias": (d,)},
            "transformer": _layer_shapes(v, v.num_hidden_layers, gated=False),
            "global_transformer": _layer_shapes(v, v.num_global_layers, gated=True),
        },
        "projector": {"kernel": (v.vision_output_dim, config.text.hidden_size), "bias": (config.text.hidden_size,)},
    }


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def init_vision_params(rng: jax.Array, config: ModelConfig) -> Params:
    """Random {"vision_encoder", "projector"} params in config.param_dtype. Linear kernels ~ N(0, 1/fan_in),
    embeddings ~ N(0, 1/hidden), norms scale 1 / bias 0, biases 0, and every gate = sign(z) * clip(|z|, 0.25, 1)
    (never zero, so the gated paths are exercised; HF initialises several gates to zero).

    All leaves are cut from ONE normal draw under jit: one threefry kernel compiles in seconds, one per leaf
    takes tens of seconds on a CPU."""
    shapes = vision_param_shapes(config)
    paths_and_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    names = tuple(path[-1].key for path, _ in paths_and_shapes)
    leaf_shapes = tuple(shape for _, shape in paths_and_shapes)
    leaves = _init_leaves(rng, names, leaf_shapes, config.vision.hidden_size, config.param_dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_leaves(rng, names, shapes, hidden, param_dtype):
    dtype = jnp.dtype(param_dtype)
    sizes = [math.prod(shape) for shape in shapes]
    from model.sharding import constrain_replicated

    z = constrain_replicated(jax.random.normal(rng, (sum(sizes),), jnp.float32))
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    leaves = []
    for name, shape, start in zip(names, shapes, offsets):
        x = z[start:start + math.prod(shape)].reshape(shape)
        if name.startswith("gate"):
            x = jnp.where(x >= 0, 1.0, -1.0) * jnp.clip(jnp.abs(x), 0.25, 1.0)
        elif name == "scale":
            x = jnp.ones(shape)
        elif name == "bias":
            x = jnp.zeros(shape)
        elif name == "kernel":
            x = x / math.sqrt(shape[-2])  # fan_in
        else:  # embeddings
            x = x / math.sqrt(hidden)
        leaves.append(x.astype(dtype))
    return leaves


def _layer_axes(gated: bool) -> dict[str, Any]:
    layer = {
        "self_attn": {
            "q_proj": {"kernel": ("layers", "embed", "heads")},
            "k_proj": {"kernel": ("layers", "embed", "kv_heads")},
            "v_proj": {"kernel": ("layers", "embed", "kv_heads")},
            "o_proj": {"kernel": ("layers", "heads", "embed")},
        },
        "mlp": {"fc1": {"kernel": ("layers", "embed", "mlp"), "bias": ("layers", "mlp")},
                "fc2": {"kernel": ("layers", "mlp", "embed"), "bias": ("layers", "embed")}},
        "input_layernorm": {"scale": ("layers", "embed"), "bias": ("layers", "embed")},
        "post_attention_layernorm": {"scale": ("layers", "embed"), "bias": ("layers", "embed")},
    }
    if gated:
        layer["gate_attn"] = ("layers", None)
        layer["gate_ffn"] = ("layers", None)
    return layer


def vision_logical_axes(config: ModelConfig) -> Params:
    """Logical axis names per dim of every vision_encoder / projector leaf (same structure as the params).

    The projector's input (vision_output_dim) is left replicated so that no leaf names "embed" twice."""
    del config  # the layout does not depend on sizes
    norm = {"scale": ("embed",), "bias": ("embed",)}
    tile = {"gate": (None,), "embedding": (None, None, "embed")}
    return {
        "vision_encoder": {
            "patch_embedding": {"kernel": (None, "embed")},
            "class_embedding": {"embedding": ("embed",)},
            "pre_tile_positional_embedding": dict(tile),
            "post_tile_positional_embedding": dict(tile),
            "gated_positional_embedding": {"gate": (None,), "embedding": (None, "embed"),
                                           "tile_embedding": (None, None, None, "embed")},
            "layernorm_pre": dict(norm),
            "layernorm_post": dict(norm),
            "transformer": _layer_axes(gated=False),
            "global_transformer": _layer_axes(gated=True),
        },
        "projector": {"kernel": (None, "embed"), "bias": ("embed",)},
    }


from model.vision_hf import vision_params_from_hf, vision_params_to_hf  # noqa: E402  (re-export)

__all__ = [
    "encode_images", "vision_encoder", "project", "init_vision_params", "vision_logical_axes",
    "vision_param_shapes", "vision_params_from_hf", "vision_params_to_hf", "padded_tile_length",
    "encoder_layer", "layer_norm", "run_local_layers", "run_global_layers",
]
