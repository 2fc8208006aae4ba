"""Streaming conversion between Hugging Face's on-disk mllama vision tensors (`vision_model.*`,
`multi_modal_projector.*`) and memgen's {"vision_encoder", "projector"} param groups (layout: model/vision.py).

HF Linear weights are (out, in) and become (in, out) kernels; the patch conv weight (D, C, p, p) becomes a
(C*p*p, D) kernel; flat aspect-ratio embedding tables (R, T*[P*]D) become (R, T, [P,] D); per-layer tensors are
stacked on a leading layer axis. Conversion reads one HF tensor at a time and hands each finished leaf to `place`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig

Path = tuple[str, ...]

# (param path inside one layer, HF name suffix inside `...layers.N.`, HF weight is an (out, in) Linear weight)
_LAYER_LEAVES: tuple[tuple[Path, str, bool], ...] = (
    *((("self_attn", proj, "kernel"), f"self_attn.{proj}.weight", True)
      for proj in ("q_proj", "k_proj", "v_proj", "o_proj")),
    (("mlp", "fc1", "kernel"), "mlp.fc1.weight", True),
    (("mlp", "fc1", "bias"), "mlp.fc1.bias", False),
    (("mlp", "fc2", "kernel"), "mlp.fc2.weight", True),
    (("mlp", "fc2", "bias"), "mlp.fc2.bias", False),
    (("input_layernorm", "scale"), "input_layernorm.weight", False),
    (("input_layernorm", "bias"), "input_layernorm.bias", False),
    (("post_attention_layernorm", "scale"), "post_attention_layernorm.weight", False),
    (("post_attention_layernorm", "bias"), "post_attention_layernorm.bias", False),
)
_GATE_LEAVES: tuple[tuple[Path, str, bool], ...] = (
    (("gate_attn",), "gate_attn", False),
    (("gate_ffn",), "gate_ffn", False),
)


def _single_leaves(config: ModelConfig) -> list[tuple[Path, str, tuple[int, ...], tuple[int, ...]]]:
    """(param path, HF name, memgen shape, HF shape) of every tensor that is not part of a layer stack."""
    v = config.vision
    r, t, p, d = v.max_aspect_ratio_id + 1, v.max_num_tiles, v.num_patches, v.hidden_size
    e, c, k = config.text.hidden_size, v.num_channels, v.patch_size
    enc = "vision_encoder"
    leaves = [
        ((enc, "patch_embedding", "kernel"), "vision_model.patch_embedding.weight", (c * k * k, d), (d, c, k, k)),
        ((enc, "class_embedding", "embedding"), "vision_model.class_embedding", (d,), (d,)),
        ((enc, "gated_positional_embedding", "gate"), "vision_model.gated_positional_embedding.gate", (1,), (1,)),
        ((enc, "gated_positional_embedding", "embedding"), "vision_model.gated_positional_embedding.embedding",
         (p, d), (p, d)),
        ((enc, "gated_positional_embedding", "tile_embedding"),
         "vision_model.gated_positional_embedding.tile_embedding.weight", (r, t, p, d), (r, t * p * d)),
    ]
    for which in ("pre", "post"):
        name = f"{which}_tile_positional_embedding"
        leaves += [((enc, name, "gate"), f"vision_model.{name}.gate", (1,), (1,)),
                   ((enc, name, "embedding"), f"vision_model.{name}.embedding.weight", (r, t, d), (r, t * d))]
    for which in ("pre", "post"):
        name = f"layernorm_{which}"
        leaves += [((enc, name, "scale"), f"vision_model.{name}.weight", (d,), (d,)),
                   ((enc, name, "bias"), f"vision_model.{name}.bias", (d,), (d,))]
    leaves += [(("projector", "kernel"), "multi_modal_projector.weight", (v.vision_output_dim, e),
                (e, v.vision_output_dim)),
               (("projector", "bias"), "multi_modal_projector.bias", (e,), (e,))]
    return leaves


def _check_shape(hf_name: str, array: np.ndarray, hf_shape: tuple[int, ...]) -> None:
    if tuple(array.shape) != tuple(hf_shape):
        raise ValueError(f"checkpoint tensor {hf_name} has shape {tuple(array.shape)} but the config implies "
                         f"{tuple(hf_shape)}; does config.json belong to these weights?")


def _from_hf_layout(hf_name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One HF tensor in memgen's layout: conv (D, C, p, p) -> (C*p*p, D) over row-major (C, kh, kw) patches,
    Linear (out, in) -> (in, out), flat aspect-ratio tables -> (R, T, [P,] D)."""
    if hf_name.endswith("patch_embedding.weight"):
        array = array.reshape(array.shape[0], -1).T
    elif hf_name == "multi_modal_projector.weight":
        array = array.T
    return array.reshape(shape)


def _to_hf_layout(hf_name: str, array: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
    if hf_name.endswith("patch_embedding.weight") or hf_name == "multi_modal_projector.weight":
        array = array.T
    return np.ascontiguousarray(array.reshape(hf_shape))


def _stacks(config: ModelConfig) -> list[tuple[str, int, tuple[tuple[Path, str, bool], ...]]]:
    v = config.vision
    return [("transformer", v.num_hidden_layers, _LAYER_LEAVES),
            ("global_transformer", v.num_global_layers, _LAYER_LEAVES + _GATE_LEAVES)]


def _set(tree: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def vision_params_from_hf(read: Callable[[str], np.ndarray], config: ModelConfig,
                          place: Callable[[Path, np.ndarray], Any]) -> dict[str, Any]:
    """{"vision_encoder": ..., "projector": ...} from HF tensors read one at a time by their on-disk names.

    `read(hf_name) -> np.ndarray`; `place(path, array) -> jax.Array` receives each finished leaf (stacked layer
    arrays included) in config.param_dtype and puts it on its device/sharding."""
    from model.vision import vision_param_shapes  # the layout's single source of truth

    dtype = np.dtype(jnp.dtype(config.param_dtype))  # bfloat16 is ml_dtypes' numpy dtype
    shapes = vision_param_shapes(config)
    params: dict[str, Any] = {}
    for path, hf_name, shape, hf_shape in _single_leaves(config):
        array = np.asarray(read(hf_name))
        _check_shape(hf_name, array, hf_shape)
        array = _from_hf_layout(hf_name, array, shape).astype(dtype)
        _set(params, path, place(path, array))
    for stack, num_layers, leaves in _stacks(config):
        for sub_path, hf_suffix, is_linear in leaves:
            path = ("vision_encoder", stack, *sub_path)
            shape = _lookup(shapes, path)
            stacked = np.empty(shape, dtype)
            for layer in range(num_layers):
                hf_name = f"vision_model.{stack}.layers.{layer}.{hf_suffix}"
                array = np.asarray(read(hf_name))
                _check_shape(hf_name, array, shape[:0:-1] if is_linear else shape[1:])
                stacked[layer] = array.T if is_linear else array
            _set(params, path, place(path, stacked))
    return params


def vision_params_to_hf(params: dict[str, Any], config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (on-disk HF name, HF-layout array) for every vision/projector tensor, one at a time, in the
    params' dtype."""
    for path, hf_name, _, hf_shape in _single_leaves(config):
        yield hf_name, _to_hf_layout(hf_name, np.asarray(_lookup(params, path)), hf_shape)
    for stack, num_layers, leaves in _stacks(config):
        for sub_path, hf_suffix, is_linear in leaves:
            stacked = _lookup(params, ("vision_encoder", stack, *sub_path))
            for layer in range(num_layers):
                array = np.asarray(stacked[layer])
                yield (f"vision_model.{stack}.layers.{layer}.{hf_suffix}",
                       np.ascontiguousarray(array.T if is_linear else array))


def _lookup(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree

