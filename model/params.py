"""The param tree: one table of the text decoder's leaves (shape, logical axes, Hugging Face name) that the
initialiser, the sharding rules and the safetensors import/export all read; random init of the whole policy;
param groups and counts.

Tree (top-level keys are the param groups used for freezing):
  vision_encoder, projector            model.vision (the vision engineer's module)
  language_model: embed_tokens.embedding (vocab + 8, D); layers.* stacked (L_self, ...); norm.scale (D,);
                  lm_head.kernel (D, vocab)
  cross_attention: layers.* stacked (L_cross, ...)
  value_head (optional): model.value_head
Linear kernels are (in, out) (Hugging Face stores (out, in)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from model.config import ModelConfig, TextConfig
from model.value_head import init_value_head

Params = dict[str, Any]
GROUPS = ("vision_encoder", "projector", "language_model", "cross_attention", "value_head")


@dataclass(frozen=True)
class Leaf:
    """One text param: its path inside a layer (or the language_model group), its shape, logical axes, the
    Hugging Face tensor name suffix, whether HF stores it transposed, and its init kind."""

    path: tuple[str, ...]
    shape: Callable[[TextConfig], tuple[int, ...]]
    axes: tuple[str | None, ...]
    hf_name: str
    transpose: bool
    init: str  # "normal" (std 0.02, HF's initializer_range), "ones", "gate" (nonzero random, see init_params)


def _linear(path, hf, shape, axes):
    return Leaf((*path, "kernel"), shape, axes, f"{hf}.weight", True, "normal")


def _norm(path, hf, size):
    return Leaf((*path, "scale"), lambda t: (size(t),), (None,), f"{hf}.weight", False, "ones")


_D = lambda t: t.hidden_size  # noqa: E731
_Q = lambda t: t.num_attention_heads * t.head_dim  # noqa: E731
_KV = lambda t: t.num_key_value_heads * t.head_dim  # noqa: E731
_F = lambda t: t.intermediate_size  # noqa: E731

_MLP = [
    _linear(("mlp", "gate_proj"), "mlp.gate_proj", lambda t: (_D(t), _F(t)), ("embed", "mlp")),
    _linear(("mlp", "up_proj"), "mlp.up_proj", lambda t: (_D(t), _F(t)), ("embed", "mlp")),
    _linear(("mlp", "down_proj"), "mlp.down_proj", lambda t: (_F(t), _D(t)), ("mlp", "embed")),
    _norm(("input_layernorm",), "input_layernorm", _D),
    _norm(("post_attention_layernorm",), "post_attention_layernorm", _D),
]


def _attention(prefix: str) -> list[Leaf]:
    return [
        _linear((prefix, "q_proj"), f"{prefix}.q_proj", lambda t: (_D(t), _Q(t)), ("embed", "heads")),
        _linear((prefix, "k_proj"), f"{prefix}.k_proj", lambda t: (_D(t), _KV(t)), ("embed", "kv_heads")),
        _linear((prefix, "v_proj"), f"{prefix}.v_proj", lambda t: (_D(t), _KV(t)), ("embed", "kv_heads")),
        _linear((prefix, "o_proj"), f"{prefix}.o_proj", lambda t: (_Q(t), _D(t)), ("heads", "embed")),
    ]


SELF_LAYER_LEAVES: list[Leaf] = [*_attention("self_attn"), *_MLP]
CROSS_LAYER_LEAVES: list[Leaf] = [
    *_attention("cross_attn"),
    _norm(("cross_attn", "q_norm"), "cross_attn.q_norm", lambda t: t.head_dim),
    _norm(("cross_attn", "k_norm"), "cross_attn.k_norm", lambda t: t.head_dim),
    Leaf(("cross_attn_attn_gate",), lambda t: (1,), (None,), "cross_attn_attn_gate", False, "gate"),
    Leaf(("cross_attn_mlp_gate",), lambda t: (1,), (None,), "cross_attn_mlp_gate", False, "gate"),
    *_MLP,
]
# Leaves of the language_model group outside the stacked layers; hf_name is the full on-disk name.
TOP_LEAVES: list[Leaf] = [
    Leaf(("embed_tokens", "embedding"), lambda t: (t.vocab_size + 8, t.hidden_size), ("vocab", "embed"),
         "language_model.model.embed_tokens.weight", False, "normal"),
    Leaf(("norm", "scale"), lambda t: (t.hidden_size,), (None,), "language_model.model.norm.weight", False, "ones"),
    Leaf(("lm_head", "kernel"), lambda t: (t.hidden_size, t.vocab_size), ("embed", "vocab"),
         "language_model.lm_head.weight", True, "normal"),
]


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def leaves_by_path(tree: Any) -> dict[str, Any]:
    """``{'/'-joined key path: leaf}`` of any pytree (params, their abstract shapes, orbax's metadata tree): the
    names that freeze patterns and parameter counts match."""
    def name(key: Any) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)
    return {"/".join(name(key) for key in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def text_leaves(config: ModelConfig):
    """Every text leaf as (full path in the param tree, shape, logical axes, Leaf, layer indices or None).
    Stacked leaves get the "layers" axis first and the decoder layer indices they hold (in stacking order)."""
    text = config.text
    out = []
    for leaf in TOP_LEAVES:
        out.append((("language_model", *leaf.path), leaf.shape(text), leaf.axes, leaf, None))
    for group, sub, leaves, indices in (
            ("language_model", "layers", SELF_LAYER_LEAVES, text.self_attention_layers),
            ("cross_attention", "layers", CROSS_LAYER_LEAVES, text.cross_attention_layers)):
        for leaf in leaves:
            out.append(((group, sub, *leaf.path), (len(indices), *leaf.shape(text)), ("layers", *leaf.axes),
                        leaf, tuple(indices)))
    return out


def init_text_params(rng: jax.Array, config: ModelConfig) -> Params:
    """Random language_model and cross_attention groups. Gates are drawn normal(0, 0.5), NOT zero as in
    transformers' init, so that a random model exercises cross-attention."""
    dtype = jnp.dtype(config.param_dtype)
    params: Params = {}
    entries = text_leaves(config)
    for key, (path, shape, _, leaf, _) in zip(jax.random.split(rng, len(entries)), entries):
        if leaf.init == "ones":
            value = jnp.ones(shape, dtype)
        else:
            std = 0.5 if leaf.init == "gate" else 0.02
            value = (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)
        set_path(params, path, value)
    return params


def has_vision_module() -> bool:
    try:
        from model import vision  # noqa: F401
    except ImportError:
        return False
    return True


def init_params(rng: jax.Array, config: ModelConfig, *, value_head: bool = False) -> Params:
    """Random params for the whole policy (vision_encoder, projector, language_model, cross_attention, and
    value_head when asked), in config.param_dtype. Use under jax.eval_shape for shapes without allocation.
    Runs as one jitted computation (eager per-leaf draws would compile a kernel per shape)."""
    return _init_params_jit(rng, config, value_head)


@partial(jax.jit, static_argnums=(1, 2))
def _init_params_jit(rng: jax.Array, config: ModelConfig, value_head: bool) -> Params:
    text_key, vision_key, value_key = jax.random.split(rng, 3)
    params = init_text_params(text_key, config)
    if has_vision_module():
        from model import vision
        params.update(vision.init_vision_params(vision_key, config))
    if value_head:
        params["value_head"] = init_value_head(value_key, config)
    return params


def param_counts(params: Params) -> dict[str, int]:
    """Number of scalars per param group present, plus "total". Works on arrays or jax.ShapeDtypeStructs."""
    counts = {group: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params[group]))
              for group in GROUPS if group in params}
    counts["total"] = sum(counts.values())
    return counts


def param_shapes(config: ModelConfig, *, value_head: bool = False):
    """The param tree as jax.ShapeDtypeStructs, with no allocation (jax.eval_shape)."""
    return jax.eval_shape(lambda key: init_params(key, config, value_head=value_head), jax.random.key(0))
