"""Hugging Face mllama checkpoints <-> memgen params, streaming.

`load_hf(path)` reads config.json and the safetensors files (one model.safetensors, or shards listed in
model.safetensors.index.json) one tensor at a time with `safetensors.safe_open(framework="numpy")` (memory-mapped;
bfloat16 comes back as ml_dtypes.bfloat16), stacks each layer leaf, and places every finished leaf straight onto
its device / sharding, so a checkpoint never sits in host memory twice. Both key layouts are accepted: the on-disk
one that save_pretrained writes (`language_model.model.*`, `language_model.lm_head.weight`, `vision_model.*`,
`multi_modal_projector.*`) and the in-memory one of transformers 5 (`model.language_model.*`, `lm_head.weight`,
`model.vision_model.*`, `model.multi_modal_projector.*`).

`save_hf(path, config, params)` writes sharded safetensors (+ index) in the on-disk layout and a config.json that
`transformers.MllamaForConditionalGeneration.from_pretrained` loads. The value head, not part of HF's format, goes
to value_head.safetensors. Problems with a directory raise `ModelLoadError` with one sentence naming the file or
tensor and what to do.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from model.config import ConfigError, ModelConfig, load_hf_config, to_hf_dict
from model.params import get_path, has_vision_module, param_shapes, set_path, text_leaves

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
VALUE_HEAD_FILE = "value_head.safetensors"
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float32"}  # fp16 checkpoints load as fp32


class ModelLoadError(ValueError):
    """A model directory memgen cannot load; the message names the file or tensor and what to do."""


def _unreadable(file: Path, error: Exception) -> ModelLoadError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ModelLoadError(f"{file} is not a readable safetensors file ({detail}): it is truncated or corrupt, "
                          "probably an interrupted download; delete it and download it again")


def _safe_open(file: Path):
    """safe_open(framework="numpy") with a ModelLoadError naming the file when its header cannot be read."""
    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(file, error) from None


def _get_tensor(handle, file: Path, key: str) -> np.ndarray:
    try:
        return handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(file, error) from None


def _aliases(name: str) -> list[str]:
    """The on-disk name and its transformers-5 in-memory equivalent."""
    if name.startswith("language_model.model."):
        return [name, "model.language_model." + name[len("language_model.model."):]]
    if name == "language_model.lm_head.weight":
        return [name, "lm_head.weight"]
    if name.startswith(("vision_model.", "multi_modal_projector.")):
        return [name, "model." + name]
    return [name]


class _Checkpoint:
    """The tensors of a model directory by name, read lazily one at a time."""

    def __init__(self, path: Path):
        self.path = path
        index, single = path / INDEX_FILE, path / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                    raise TypeError
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise ModelLoadError(f"{index} is not a valid safetensors index (no weight_map of tensor name -> "
                                     "file); re-download the checkpoint") from None
            self.source = INDEX_FILE
        elif single.is_file():
            with _safe_open(single) as f:
                weight_map = {key: SINGLE_FILE for key in f.keys()}
            self.source = SINGLE_FILE
        else:
            raise ModelLoadError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}; point memgen at a Hugging Face "
                                 "Llama 3.2 Vision directory with safetensors weights")
        for file in sorted(set(weight_map.values())):
            if not (path / file).is_file():
                raise ModelLoadError(f"shard {file} listed in {INDEX_FILE} is missing from {path}; download the "
                                     "complete checkpoint (every model-*.safetensors file)")
        self.weight_map = weight_map
        self._open: dict[str, Any] = {}

    def read(self, name: str) -> np.ndarray:
        for key in _aliases(name):
            if key in self.weight_map:
                file = self.weight_map[key]
                if file not in self._open:
                    handle = _safe_open(self.path / file)
                    self._open[file] = (handle, set(handle.keys()))
                handle, keys = self._open[file]
                if key not in keys:
                    raise ModelLoadError(f"tensor {key} is listed in {INDEX_FILE} under {file}, but {file} does not "
                                         "contain it; the index and the shards are from different downloads: "
                                         "re-download the checkpoint")
                return _get_tensor(handle, self.path / file, key)
        raise ModelLoadError(f"tensor {name} is missing from {self.path} (per {self.source}); the checkpoint is "
                             "incomplete or not an mllama model: re-download it")

    def file_of(self, name: str) -> str:
        return next((self.weight_map[k] for k in _aliases(name) if k in self.weight_map), "?")

    def close(self) -> None:
        self._open.clear()


def _checked(checkpoint: _Checkpoint, name: str, expected: tuple[int, ...], transpose: bool) -> np.ndarray:
    array = checkpoint.read(name)
    shape = tuple(array.shape[::-1] if transpose else array.shape)
    if shape != tuple(expected):
        want = tuple(expected[::-1]) if transpose else tuple(expected)
        raise ModelLoadError(f"tensor {name} in {checkpoint.file_of(name)} has shape {tuple(array.shape)} but "
                             f"config.json implies {want}; the weights do not match config.json")
    return array.T if transpose else array


def _stored_dtype(path: Path) -> str:
    raw = json.loads((path / "config.json").read_text())
    stored = raw.get("dtype") or raw.get("torch_dtype") or raw.get("text_config", {}).get("dtype") or "float32"
    return _DTYPES.get(str(stored), "float32")


def load_hf(path: str | os.PathLike, *, mesh=None, rules=None, param_dtype: str | None = None,
            dtype: str | None = None) -> tuple[ModelConfig, dict]:
    """(config, params) from a Hugging Face mllama directory, e.g. a local download of
    meta-llama/Llama-3.2-11B-Vision-Instruct. Params are stored in `param_dtype` (default: the checkpoint's dtype
    from config.json) and computed in `dtype` (default: param_dtype). With a mesh, each leaf is placed with
    model.sharding's rules (`rules`, default DEFAULT_RULES) as soon as it is read."""
    path = Path(path)
    try:
        config = load_hf_config(path)
    except ConfigError as error:
        raise ModelLoadError(str(error)) from None
    param_dtype = param_dtype or _stored_dtype(path)
    config = config.replace(param_dtype=param_dtype, dtype=dtype or param_dtype)
    checkpoint = _Checkpoint(path)
    expected = param_shapes(config)
    np_dtype = jnp.dtype(param_dtype)

    if mesh is not None:
        from model.sharding import DEFAULT_RULES, param_shardings
        shardings = param_shardings(config, mesh, expected, rules or DEFAULT_RULES)

    def place(tree_path: tuple[str, ...], array: np.ndarray) -> jax.Array:
        want = get_path(expected, tree_path).shape
        if tuple(array.shape) != tuple(want):
            raise ModelLoadError(f"param {'/'.join(tree_path)} read from {path} has shape {tuple(array.shape)} but "
                                 f"config.json implies {tuple(want)}; the weights do not match config.json")
        array = np.asarray(array, dtype=np_dtype)
        if mesh is None:
            return jax.device_put(array)
        # each process builds only its addressable shards (works on one host and on many)
        return jax.make_array_from_callback(array.shape, get_path(shardings, tree_path), lambda index: array[index])

    params: dict = {}
    try:
        for tree_path, shape, _, leaf, layers in text_leaves(config):
            if layers is None:
                set_path(params, tree_path, place(tree_path, _checked(checkpoint, leaf.hf_name, shape,
                                                                      leaf.transpose)))
                continue
            stacked = np.empty(shape, np_dtype)
            for j, layer in enumerate(layers):
                name = f"language_model.model.layers.{layer}.{leaf.hf_name}"
                stacked[j] = _checked(checkpoint, name, shape[1:], leaf.transpose)
            set_path(params, tree_path, place(tree_path, stacked))
            del stacked
        if has_vision_module():
            from model import vision
            try:
                params.update(vision.vision_params_from_hf(checkpoint.read, config, place))
            except ModelLoadError:
                raise
            except ValueError as error:  # the vision importer's shape checks
                raise ModelLoadError(f"{path}: {error}") from None
    finally:
        checkpoint.close()
    value_file = path / VALUE_HEAD_FILE
    if value_file.is_file():
        params["value_head"] = _load_value_head(value_file, mesh, config, rules)
    return config, params


def _load_value_head(file: Path, mesh, config: ModelConfig, rules) -> dict:
    tree: dict = {}
    with _safe_open(file) as f:
        for key in f.keys():
            set_path(tree, tuple(key.split(".")), np.asarray(_get_tensor(f, file, key), jnp.dtype(config.param_dtype)))
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    from model.sharding import DEFAULT_RULES, param_shardings
    shardings = param_shardings(config, mesh, {"value_head": tree}, rules or DEFAULT_RULES)["value_head"]
    # like the model's leaves: each process builds its addressable shards from the host copy
    return jax.tree.map(lambda array, sharding: jax.make_array_from_callback(array.shape, sharding,
                                                                             lambda index: array[index]),
                        tree, shardings)


# --------------------------------------------------------------------------------------------------- export
def text_params_to_hf(params: dict, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(on-disk name, HF-layout array) for every language_model / cross_attention tensor, one at a time."""
    for tree_path, _, _, leaf, layers in text_leaves(config):
        array = np.asarray(get_path(params, tree_path))
        if layers is None:
            yield leaf.hf_name, np.ascontiguousarray(array.T if leaf.transpose else array)
            continue
        for j, layer in enumerate(layers):
            yield (f"language_model.model.layers.{layer}.{leaf.hf_name}",
                   np.ascontiguousarray(array[j].T if leaf.transpose else array[j]))


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9}
    for unit, factor in units.items():
        if size.upper().endswith(unit):
            return int(float(size[:-2]) * factor)
    return int(size)


def save_hf(path: str | os.PathLike, config: ModelConfig, params: dict, *,
            max_shard_size: int | str = "5GB") -> None:
    """Write `params` as a Hugging Face mllama directory: config.json, model.safetensors (or
    model-0000i-of-0000n.safetensors + model.safetensors.index.json when larger than max_shard_size), and
    value_head.safetensors when params has a value head. Tensors are gathered to the host one at a time."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    tensors: Iterator[tuple[str, np.ndarray]] = text_params_to_hf(params, config)
    if "vision_encoder" in params:
        from model import vision
        tensors = itertools.chain(tensors, vision.vision_params_to_hf(params, config))

    shard_files: list[tuple[str, list[str]]] = []
    current: dict[str, np.ndarray] = {}
    current_bytes = 0
    total_bytes = 0

    def flush():
        nonlocal current, current_bytes
        if current:
            name = f"tmp-{len(shard_files):05d}.safetensors"
            save_file(current, path / name, metadata={"format": "pt"})
            shard_files.append((name, list(current)))
            current, current_bytes = {}, 0

    for name, array in tensors:
        if current and current_bytes + array.nbytes > limit:
            flush()
        current[name] = array
        current_bytes += array.nbytes
        total_bytes += array.nbytes
    flush()

    for stale in [*path.glob("model-*-of-*.safetensors"), path / SINGLE_FILE, path / INDEX_FILE]:
        if stale.exists():
            stale.unlink()
    if len(shard_files) == 1:
        os.replace(path / shard_files[0][0], path / SINGLE_FILE)
    else:
        weight_map = {}
        for i, (tmp, names) in enumerate(shard_files):
            final = f"model-{i + 1:05d}-of-{len(shard_files):05d}.safetensors"
            os.replace(path / tmp, path / final)
            weight_map.update({n: final for n in names})
        (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total_bytes},
                                                   "weight_map": weight_map}, indent=2))
    hf_config = to_hf_dict(config)
    # the dtype the tensors were written in (the params may differ from config.param_dtype)
    stored = str(np.dtype(get_path(params, ("language_model", "lm_head", "kernel")).dtype))
    hf_config["dtype"] = hf_config["text_config"]["dtype"] = hf_config["vision_config"]["dtype"] = stored
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    if "value_head" in params:
        flat = {".".join(p): np.asarray(get_path(params["value_head"], p)) for p in _paths(params["value_head"])}
        save_file(flat, path / VALUE_HEAD_FILE, metadata={"format": "memgen-value-head"})


def _paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in tree.items():
        out.extend(_paths(value, (*prefix, key)) if isinstance(value, dict) else [(*prefix, key)])
    return out
