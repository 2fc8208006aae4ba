"""Configuration of the Llama 3.2 Vision ("mllama") policy: frozen dataclasses mirroring Hugging Face's
`MllamaVisionConfig` / `MllamaTextConfig` / `MllamaConfig` field names, parsing of a checkpoint's config.json (both
the transformers-5 `rope_parameters` form and the older `rope_theta` + `rope_scaling` form), and presets.

Presets: `11b` and `90b` carry the real shapes; `tiny` is for tests (the shapes of shared/notes' tiny random
model); `small` (~10M parameters) is for CPU demos and benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_ASPECT_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))


@dataclass(frozen=True)
class RopeConfig:
    """llama3-scaled rotary embedding. rope_type "default" ignores the scaling fields."""

    rope_type: Literal["llama3", "default"] = "llama3"
    theta: float = 500000.0
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_global_layers: int = 8
    attention_heads: int = 16
    intermediate_size: int = 5120
    vision_output_dim: int = 7680
    image_size: int = 560
    patch_size: int = 14
    num_channels: int = 3
    max_num_tiles: int = 4
    norm_eps: float = 1e-5
    intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)
    supported_aspect_ratios: tuple[tuple[int, int], ...] = DEFAULT_ASPECT_RATIOS
    # Which hidden state index i of `intermediate_layers_indices` names: "output" = the output of local layer i
    # (transformers >= 4.56.2, the pinned version), "input" = its input (Meta's code, transformers <= 4.54.1).
    intermediate_layers_convention: Literal["output", "input"] = "output"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.attention_heads

    @property
    def num_patches(self) -> int:
        """Patches per tile plus the class token (1601 for 560 / 14)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def max_aspect_ratio_id(self) -> int:
        return len(self.supported_aspect_ratios)


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 128256
    hidden_size: int = 4096
    num_hidden_layers: int = 40
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    intermediate_size: int = 14336
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    cross_attention_layers: tuple[int, ...] = (3, 8, 13, 18, 23, 28, 33, 38)
    rope: RopeConfig = field(default_factory=RopeConfig)
    bos_token_id: int = 128000
    eos_token_id: tuple[int, ...] = (128001, 128008, 128009)
    pad_token_id: int = 128004
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if i not in set(self.cross_attention_layers))


SCAN_MIN_LAYERS = 16  # ModelConfig.scan_layers=None scans from this many self-attention layers on


@dataclass(frozen=True)
class ModelConfig:
    """The whole policy. `dtype` is the compute dtype; params may be stored in `param_dtype` (fp32 master)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_index: int = 128256
    value_head_hidden: tuple[int, ...] = (1024, 512)
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # jax.checkpoint policy name for training: "none", "full" (recompute everything in a layer) or "dots"
    # (save matmul outputs without a batch dimension: jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
    remat: Literal["none", "full", "dots"] = "none"
    # The cacheless forward's (training, scoring) runs of text self-attention layers, and the vision encoder's
    # local and global stacks: one `jax.lax.scan` each (compile time independent of depth) or unrolled (XLA fuses
    # across layers, slices no stacked weights and stacks no per-layer residuals for the backward pass: the small
    # preset's CPU PPO update ran 15% faster, its SFT step with an image ~10%). None: scan a model (text, vision)
    # with at least SCAN_MIN_LAYERS such layers (11B / 90B: text 32 / 80, vision 40), unroll below (the test and
    # CPU presets).
    scan_layers: bool | None = None
    # Queries per block of the attention (text self- and cross-attention, the vision encoder) of the cacheless
    # forward and of cached calls with many queries (a prefill, an appended turn; not a decode step): 0 = all at
    # once, the (B, H, S, K) probabilities of a layer materialised (transformers' eager attention); > 0 computes
    # them block by block, rematerialized in the backward pass (model.text.in_query_blocks), the same values in
    # (B, H, block, K) of memory: an 11B step's vision layer over 4 tiles is (rows, 16, 6432, 6432), a rollout's
    # prefill (rows, 32, prompt, cache slots).
    attention_block: int = 0

    def scans_layers(self) -> bool:
        """Whether the cacheless forward scans the text self-attention layers (`scan_layers`, resolved)."""
        return self._scans(len(self.text.self_attention_layers))

    def scans_vision_layers(self) -> bool:
        """Whether the vision encoder scans its local and global layers (`scan_layers`, resolved)."""
        return self._scans(self.vision.num_hidden_layers + self.vision.num_global_layers)

    def _scans(self, num_layers: int) -> bool:
        if self.scan_layers is not None:
            return self.scan_layers
        return num_layers >= SCAN_MIN_LAYERS

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


class ConfigError(ValueError):
    """A model config.json that memgen cannot use; the message is one sentence naming the problem."""


def _rope_from_hf(text: dict[str, Any]) -> RopeConfig:
    params = text.get("rope_parameters")
    if params is None:  # transformers < 5: rope_theta + rope_scaling
        scaling = text.get("rope_scaling") or {}
        params = {**scaling, "rope_theta": text.get("rope_theta", 500000.0)}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("llama3", "default"):
        raise ConfigError(f"rope type {rope_type!r} is not supported; memgen implements 'llama3' and 'default'")
    return RopeConfig(
        rope_type=rope_type,
        theta=float(params.get("rope_theta", 500000.0)),
        factor=float(params.get("factor", 8.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _as_int(value: Any) -> int:
    """HF allows image_size/patch_size as an int or a square pair."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"non-square size {value!r} is not supported")
        return int(value[0])
    return int(value)


def from_hf_dict(hf: dict[str, Any]) -> ModelConfig:
    """A `ModelConfig` from the dict of an HF mllama config.json (model_type "mllama")."""
    if not isinstance(hf, dict):
        raise ConfigError(f"config.json holds a JSON {type(hf).__name__}, not an object; is this a Hugging Face "
                          "model config?")
    if hf.get("model_type") not in (None, "mllama"):
        raise ConfigError(f"config.json has model_type {hf.get('model_type')!r}; memgen loads 'mllama' models")
    try:
        vision, text = hf["vision_config"], hf["text_config"]
    except KeyError as missing:
        raise ConfigError(f"config.json has no {missing.args[0]}; is this a Llama 3.2 Vision checkpoint?") from None
    for key, value in (("vision_config", vision), ("text_config", text)):
        if not isinstance(value, dict):
            raise ConfigError(f"config.json's {key} is a JSON {type(value).__name__}, not an object; re-download "
                              "the checkpoint's config.json")
    vdefault, tdefault = VisionConfig(), TextConfig()
    eos = text.get("eos_token_id", tdefault.eos_token_id)
    vcfg = VisionConfig(
        hidden_size=int(vision.get("hidden_size", vdefault.hidden_size)),
        num_hidden_layers=int(vision.get("num_hidden_layers", vdefault.num_hidden_layers)),
        num_global_layers=int(vision.get("num_global_layers", vdefault.num_global_layers)),
        attention_heads=int(vision.get("attention_heads", vdefault.attention_heads)),
        intermediate_size=int(vision.get("intermediate_size", vdefault.intermediate_size)),
        vision_output_dim=int(vision.get("vision_output_dim", vdefault.vision_output_dim)),
        # HF's class default is 448 but every released checkpoint says 560; a missing field means HF's default.
        image_size=_as_int(vision.get("image_size", 448)),
        patch_size=_as_int(vision.get("patch_size", vdefault.patch_size)),
        num_channels=int(vision.get("num_channels", 3)),
        max_num_tiles=int(vision.get("max_num_tiles", vdefault.max_num_tiles)),
        norm_eps=float(vision.get("norm_eps", vdefault.norm_eps)),
        intermediate_layers_indices=tuple(vision.get("intermediate_layers_indices") or vdefault.intermediate_layers_indices),
        supported_aspect_ratios=tuple(tuple(r) for r in (vision.get("supported_aspect_ratios") or DEFAULT_ASPECT_RATIOS)),
    )
    tcfg = TextConfig(
        vocab_size=int(text.get("vocab_size", tdefault.vocab_size)),
        hidden_size=int(text.get("hidden_size", tdefault.hidden_size)),
        num_hidden_layers=int(text.get("num_hidden_layers", tdefault.num_hidden_layers)),
        num_attention_heads=int(text.get("num_attention_heads", tdefault.num_attention_heads)),
        num_key_value_heads=int(text.get("num_key_value_heads", tdefault.num_key_value_heads)),
        intermediate_size=int(text.get("intermediate_size", tdefault.intermediate_size)),
        rms_norm_eps=float(text.get("rms_norm_eps", tdefault.rms_norm_eps)),
        max_position_embeddings=int(text.get("max_position_embeddings", tdefault.max_position_embeddings)),
        cross_attention_layers=tuple(text.get("cross_attention_layers") or tdefault.cross_attention_layers),
        rope=_rope_from_hf(text),
        bos_token_id=int(text.get("bos_token_id", tdefault.bos_token_id)),
        eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),),
        pad_token_id=int(text.get("pad_token_id") if text.get("pad_token_id") is not None else tdefault.pad_token_id),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
    )
    # memgen's own key: which hidden state an intermediate-layer index names (see VisionConfig). HF's config has no
    # such field: transformers >= 4.56.2 always uses "output", so a checkpoint without the key gets "output".
    convention = hf.get("memgen_intermediate_layers_convention", "output")
    if convention not in ("output", "input"):
        raise ConfigError(f"config.json has memgen_intermediate_layers_convention {convention!r}; use \"output\" "
                          "(transformers >= 4.56.2, the default) or \"input\" (Meta's code, transformers <= 4.54.1)")
    vcfg = dataclasses.replace(vcfg, intermediate_layers_convention=convention)
    if vcfg.vision_output_dim != vcfg.hidden_size * (1 + len(vcfg.intermediate_layers_indices)):
        raise ConfigError(
            f"vision_output_dim {vcfg.vision_output_dim} != hidden_size x (1 + number of intermediate layers) = "
            f"{vcfg.hidden_size * (1 + len(vcfg.intermediate_layers_indices))}")
    # memgen's own key (transformers keeps unknown keys as attributes): the value head's widths of a policy memgen
    # wrote; a released checkpoint has none and gets the paper's (1024, 512).
    value_head = hf.get("memgen_value_head_hidden")
    extra = {} if value_head is None else {"value_head_hidden": tuple(int(width) for width in value_head)}
    return ModelConfig(vision=vcfg, text=tcfg, image_token_index=int(hf.get("image_token_index", 128256)), **extra)


def to_hf_dict(config: ModelConfig) -> dict[str, Any]:
    """The config.json dict (transformers-5 layout) that `transformers.MllamaConfig` loads."""
    v, t = config.vision, config.text
    rope = {"rope_type": t.rope.rope_type, "rope_theta": t.rope.theta}
    if t.rope.rope_type == "llama3":
        rope.update(factor=t.rope.factor, low_freq_factor=t.rope.low_freq_factor,
                    high_freq_factor=t.rope.high_freq_factor,
                    original_max_position_embeddings=t.rope.original_max_position_embeddings)
    return {
        "model_type": "mllama",
        "architectures": ["MllamaForConditionalGeneration"],
        "image_token_index": config.image_token_index,
        "memgen_value_head_hidden": list(config.value_head_hidden),
        "memgen_intermediate_layers_convention": v.intermediate_layers_convention,
        "vision_config": {
            "model_type": "mllama_vision_model",
            "hidden_size": v.hidden_size, "hidden_act": "gelu", "num_hidden_layers": v.num_hidden_layers,
            "num_global_layers": v.num_global_layers, "attention_heads": v.attention_heads,
            "num_channels": v.num_channels, "intermediate_size": v.intermediate_size,
            "vision_output_dim": v.vision_output_dim, "image_size": v.image_size, "patch_size": v.patch_size,
            "norm_eps": v.norm_eps, "max_num_tiles": v.max_num_tiles,
            "intermediate_layers_indices": list(v.intermediate_layers_indices),
            "supported_aspect_ratios": [list(r) for r in v.supported_aspect_ratios],
        },
        "text_config": {
            "model_type": "mllama_text_model",
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "hidden_act": "silu",
            "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads, "intermediate_size": t.intermediate_size,
            "rope_parameters": rope, "rms_norm_eps": t.rms_norm_eps,
            "max_position_embeddings": t.max_position_embeddings, "tie_word_embeddings": t.tie_word_embeddings,
            "cross_attention_layers": list(t.cross_attention_layers), "bos_token_id": t.bos_token_id,
            "eos_token_id": list(t.eos_token_id) if len(t.eos_token_id) > 1 else t.eos_token_id[0],
            "pad_token_id": t.pad_token_id,
        },
    }


def load_hf_config(path: str | Path) -> ModelConfig:
    """Parse `path/config.json` (or a config.json path) with one clear error when it is missing or malformed."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no config.json in {path}; point memgen at a Hugging Face Llama 3.2 Vision model directory")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file} is not valid JSON ({error.msg} at line {error.lineno}); fix it or re-download "
                          "the checkpoint's config.json") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not a text (UTF-8 JSON) file; re-download the checkpoint's config.json") from None
    try:
        return from_hf_dict(raw)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError) as error:  # e.g. "hidden_size": "big", "rope_parameters": 3
        raise ConfigError(f"{file} has a malformed field ({type(error).__name__}: {error}); fix it or re-download "
                          "the checkpoint's config.json") from None


def _preset_11b() -> ModelConfig:
    return ModelConfig()


def _preset_90b() -> ModelConfig:
    return ModelConfig(text=TextConfig(
        hidden_size=8192, num_hidden_layers=100, num_attention_heads=64, num_key_value_heads=8,
        intermediate_size=28672, cross_attention_layers=tuple(range(3, 100, 5))))


_TINY_ROPE = RopeConfig()


def _offline_token_ids(vocab_size: int) -> dict[str, Any]:
    """bos/eos/pad ids of memgen's offline tokenizer (model/tokenizer.py) at this vocab size: the 16 Llama 3
    special tokens follow the regular ones in Llama 3's order and `<|image|>` = vocab_size."""
    first_special = vocab_size - 16
    return {"bos_token_id": first_special, "pad_token_id": first_special + 4,
            "eos_token_id": (first_special + 1, first_special + 8, first_special + 9)}


def _preset_tiny() -> ModelConfig:
    """The shapes of the tiny random model of shared/notes/mllama-architecture.md (parity tests), with the vocab
    of the smallest offline tokenizer that fits it (320), so tests run the real tokenizer code path."""
    return ModelConfig(
        vision=VisionConfig(hidden_size=32, num_hidden_layers=4, num_global_layers=2, attention_heads=4,
                            intermediate_size=64, vision_output_dim=96, image_size=28, patch_size=14,
                            intermediate_layers_indices=(1, 3)),
        text=TextConfig(vocab_size=320, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=96, cross_attention_layers=(1, 3),
                        rope=_TINY_ROPE, **_offline_token_ids(320)),
        image_token_index=320, value_head_hidden=(32, 16))


def _preset_small() -> ModelConfig:
    """~10M parameters: CPU demos and benchmarks. vocab_size matches the offline tokenizer's default."""
    return ModelConfig(
        vision=VisionConfig(hidden_size=64, num_hidden_layers=4, num_global_layers=2, attention_heads=4,
                            intermediate_size=128, vision_output_dim=192, image_size=112, patch_size=14,
                            intermediate_layers_indices=(1, 3)),
        text=TextConfig(vocab_size=1024, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                        num_key_value_heads=2, intermediate_size=1024, cross_attention_layers=(2, 5),
                        **_offline_token_ids(1024)),
        image_token_index=1024, value_head_hidden=(256, 128))


PRESETS = {"tiny": _preset_tiny, "small": _preset_small, "11b": _preset_11b, "90b": _preset_90b}


def preset(name: str) -> ModelConfig:
    """A named model config: tiny, small, 11b or 90b."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None
