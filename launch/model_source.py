"""Where a run's policy comes from: a model preset name (random init from the run's seed, with memgen's offline
tokenizer at the preset's vocabulary size), a Hugging Face mllama directory (weights, tokenizer and image
preprocessor config read from it), or a memgen run directory (its final/ policy, and the training tokens behind
it: D_init of the next run's compute axis). Also writes a trained policy back as such a directory, so the next command
(RL, evaluation, transformers) loads it with the same code path. Host side; arrays stay as the model made them (or, given a mesh, are made on it).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import jax

from model.processor import ImageProcessorConfig, from_hf_preprocessor_config, to_hf_preprocessor_config
from model.tokenizer import ChatTokenizer, ensure_tokenizer, load_tokenizer


RUN_FINAL_DIR = "final"


class ModelSourceError(ValueError):
    """The model named by a config cannot be loaded; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelSource:
    """The model config, params (fp32 nested dicts), tokenizer, its directory, and the image preprocessing."""

    config: Any
    params: Any
    tokenizer: ChatTokenizer
    tokenizer_dir: Path
    image_config: ImageProcessorConfig


def image_config_of(model_config: Any) -> ImageProcessorConfig:
    """Image preprocessing that fits a model config (tiles of the vision tower's image size)."""
    return ImageProcessorConfig(tile_size=model_config.vision.image_size,
                                max_image_tiles=model_config.vision.max_num_tiles)


COMPUTE_FILE = "memgen_compute.json"


def init_tokens(spec: str) -> int:
    """D_init: the training tokens behind a starting policy (its own D_init plus what its run trained), read from
    the compute record a memgen run writes beside its final policy (0 for a preset or a plain Hugging Face
    directory)."""
    path = Path(spec)
    if (path / RUN_FINAL_DIR).is_dir():
        path = path / RUN_FINAL_DIR
    record = path / COMPUTE_FILE
    if not record.is_file():
        return 0
    counts = json.loads(record.read_text(encoding="utf-8"))
    return int(counts.get("init_tokens", 0)) + int(counts.get("train_tokens", 0))


def load_model(spec: str, *, seed: int, cache_dir: Optional[Path] = None,
               mesh: Optional[jax.sharding.Mesh] = None, param_dtype: str = "float32") -> ModelSource:
    """``spec``: a preset name (tiny, small, 11b, 90b), a path to a Hugging Face mllama directory, or a memgen run
    directory (its final/ policy). Params are ``param_dtype``: float32 master weights by default, bfloat16 where
    they would not fit (a 90B on one host; optax keeps Adam's moments in the params' dtype); a preset's tokenizer is
    built under
    ``cache_dir`` (default: memgen's cache). With ``mesh``, every param is made straight onto it by
    ``model.sharding``'s rules (a preset's random init is one program with that output placement; a directory's
    weights are placed leaf by leaf as they are read), so no device ever holds the whole model; the values are
    those of the load without a mesh."""
    from model.config import PRESETS, preset
    from model.hf_io import ModelLoadError, load_hf
    from model.params import init_params, param_shapes

    if param_dtype not in ("float32", "bfloat16"):
        raise ModelSourceError(f"param_dtype {param_dtype!r} is not float32 or bfloat16")
    if spec in PRESETS:
        config = preset(spec).replace(param_dtype=param_dtype, dtype=param_dtype)
        vocab = config.text.vocab_size
        tokenizer_dir = ensure_tokenizer(None if cache_dir is None else cache_dir / f"tokenizer-vocab{vocab}",
                                         vocab_size=vocab)
        if mesh is None:
            params = init_params(jax.random.PRNGKey(seed), config)
        else:
            from launch.mesh import jit_onto
            from model.sharding import param_shardings
            init = jit_onto(_preset_init(config), param_shardings(config, mesh, param_shapes(config)))
            with jax.set_mesh(mesh):  # the init's sharding hints (model.sharding.constrain_replicated) apply
                params = init(seed)
        return ModelSource(config, params, load_tokenizer(tokenizer_dir), tokenizer_dir, image_config_of(config))
    path = Path(spec)
    if (path / RUN_FINAL_DIR).is_dir():
        path = path / RUN_FINAL_DIR
    if not path.is_dir():
        raise ModelSourceError(f"the model directory {path} does not exist; pass model=PATH to a Hugging Face "
                               f"mllama download or a preset name ({', '.join(PRESETS)})")
    try:
        config, params = load_hf(path, mesh=mesh, param_dtype=param_dtype, dtype=param_dtype)
        tokenizer = load_tokenizer(path)
    except (ModelLoadError, FileNotFoundError, ValueError) as error:
        raise ModelSourceError(f"the model directory {path} cannot be loaded: {error}") from None
    try:
        image_config = from_hf_preprocessor_config(path)
    except FileNotFoundError:
        image_config = image_config_of(config)
    return ModelSource(config, params, tokenizer, path, image_config)


@functools.lru_cache(maxsize=8)
def _preset_init(config: Any) -> Callable[[int], Any]:
    """``seed -> model.init_params(PRNGKey(seed), config)``, one function per config (for ``jit_onto``). The key is
    made inside the program from the seed, a host scalar every process passes alike."""
    from model.params import init_params
    return lambda seed: init_params(jax.random.PRNGKey(seed), config)


def save_policy(directory: Path, source: ModelSource, params: Any, compute: Any = None) -> Path:
    """Write ``params`` as a Hugging Face mllama directory (config.json, safetensors, value head if any) with the
    tokenizer files and preprocessor_config.json, so ``load_model(str(directory))`` and transformers load it.
    ``compute``: the run's `rl.compute.ComputeCounter`, kept as memgen_compute.json (the next run's D_init)."""
    import dataclasses

    from model.hf_io import save_hf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if compute is not None:
        (directory / COMPUTE_FILE).write_text(json.dumps(dataclasses.asdict(compute)) + "\n", encoding="utf-8")
    save_hf(directory, source.config.replace(dtype="float32", param_dtype="float32"), params)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = Path(source.tokenizer_dir) / name
        if file.is_file():
            (directory / name).write_bytes(file.read_bytes())
    (directory / "preprocessor_config.json").write_text(
        json.dumps(to_hf_preprocessor_config(source.image_config), indent=2) + "\n")
    return directory


def tokenizer_fingerprint(source: ModelSource) -> str:
    """What a compiled rollout depends on besides the model config: the tokenizer's files (by content, so policies
    in different run directories with the same tokenizer share compiled programs) and the image preprocessing."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = Path(source.tokenizer_dir) / name
        digest.update(name.encode() + (file.read_bytes() if file.is_file() else b"-"))
    return f"{digest.hexdigest()}:{source.image_config!r}"
