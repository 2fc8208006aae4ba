"""The PPO value head: an MLP over the decoder's final hidden state (after the final norm),
D -> value_head_hidden[0] -> ReLU -> ... -> 1, computed in float32. hidden (B, S, D) -> values (B, S).

Params: {"dense_0": {"kernel": (D, h0), "bias": (h0,)}, "dense_1": ..., "output": {"kernel": (h_last, 1),
"bias": (1,)}}. It is not part of Hugging Face's format; model.hf_io saves it as value_head.safetensors.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from model.config import ModelConfig


def init_value_head(rng: jax.Array, config: ModelConfig) -> dict[str, Any]:
    """Random value head: kernels normal(0, 1/sqrt(fan_in)), zero biases, output layer scaled down 100x so
    initial values are near zero."""
    dims = [config.text.hidden_size, *config.value_head_hidden, 1]
    keys = jax.random.split(rng, len(dims) - 1)
    dtype = jnp.dtype(config.param_dtype)
    params = {}
    for i, (key, fan_in, fan_out) in enumerate(zip(keys, dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        scale = (0.01 if last else 1.0) / fan_in ** 0.5
        params["output" if last else f"dense_{i}"] = {
            "kernel": (jax.random.normal(key, (fan_in, fan_out), jnp.float32) * scale).astype(dtype),
            "bias": jnp.zeros((fan_out,), dtype),
        }
    return params


def policy_values(policy_params: dict[str, Any], hidden: jax.Array, what: str) -> jax.Array:
    """`value_head_apply` of a whole policy's params (the "value_head" entry) at hidden (..., D) -> (...);
    without that entry, one sentence naming ``what`` needed it."""
    if "value_head" not in policy_params:
        raise ValueError(f"{what} needs params['value_head']; create it with "
                         "model.init_params(rng, config, value_head=True) or model.init_value_head")
    return value_head_apply(policy_params["value_head"], hidden)


def value_head_apply(params: dict[str, Any], hidden: jax.Array) -> jax.Array:
    """values (B, S) float32 from hidden (B, S, D)."""
    x = hidden.astype(jnp.float32)
    hidden_layers = sorted((k for k in params if k.startswith("dense_")), key=lambda k: int(k.split("_")[1]))
    for name in hidden_layers:
        x = jax.nn.relu(x @ params[name]["kernel"].astype(jnp.float32) + params[name]["bias"].astype(jnp.float32))
    out = params["output"]
    return (x @ out["kernel"].astype(jnp.float32) + out["bias"].astype(jnp.float32))[..., 0]
