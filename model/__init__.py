"""The Llama 3.2 Vision ("mllama") policy in JAX: config, params, forward, value head, KV cache, sampler,
processor, HF safetensors import/export and sharding rules.

Public API (see docs/model.md): forward, forward_hidden, init_params, param_counts, param_shapes, load_hf,
save_hf, ModelLoadError, KVCache, init_cache, prefill, extend, decode, generate, Generation (model.sampler, see
docs/sampler.md), value_head_apply, init_value_head, and the
config helpers ModelConfig, preset, load_hf_config, from_hf_dict, to_hf_dict.
"""

from model.config import (ConfigError, ModelConfig, TextConfig, VisionConfig, from_hf_dict, load_hf_config, preset,
                          to_hf_dict)
from model.forward import KVCache, decode, extend, forward, forward_hidden, init_cache, positions_from_mask, prefill
from model.hf_io import ModelLoadError, load_hf, save_hf
from model.params import GROUPS, init_params, param_counts, param_shapes
from model.value_head import init_value_head, value_head_apply
from model.sampler import Generation, SamplingConfig, generate
from model import sampler, sharding

__all__ = [
    "ConfigError", "ModelConfig", "TextConfig", "VisionConfig", "from_hf_dict", "load_hf_config", "preset",
    "to_hf_dict", "KVCache", "decode", "extend", "forward", "forward_hidden", "init_cache", "positions_from_mask",
    "prefill", "ModelLoadError", "load_hf", "save_hf", "GROUPS", "init_params", "param_counts", "param_shapes",
    "init_value_head", "value_head_apply", "sharding", "Generation", "SamplingConfig", "generate", "sampler",
]
