"""A tiny but genuine vision-language model for the SFT tests, with the real param-group layout (top-level keys
vision_encoder, projector, language_model, cross_attention): embeddings -> causal cumulative-mean token mixing ->
gated cross-attention-like injection of projected image features -> MLP -> RMS norm -> lm_head.
Axes: B batch, S sequence, P patches, F patch features, D hidden, V vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

VOCAB, HIDDEN, PATCHES, PATCH_FEATURES = 11, 8, 3, 5


def init_params(seed: int = 0) -> dict:
    """Fresh arrays on every call (tests donate them), from one compiled program rather than many eager ops."""
    return _init_params(jnp.asarray(seed, jnp.uint32))


@jax.jit
def _init_params(seed: jax.Array) -> dict:
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    normal = lambda shape, scale=0.5: scale * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    return {
        "vision_encoder": {"patch_embedding": {"kernel": normal((PATCH_FEATURES, HIDDEN))}},
        "projector": {"kernel": normal((HIDDEN, HIDDEN)), "bias": normal((HIDDEN,), 0.1)},
        "language_model": {
            "embed_tokens": {"embedding": normal((VOCAB, HIDDEN))},
            "layers": {"mlp": {"up_proj": {"kernel": normal((HIDDEN, 2 * HIDDEN))},
                               "down_proj": {"kernel": normal((2 * HIDDEN, HIDDEN))}}},
            "norm": {"scale": jnp.ones((HIDDEN,))},
            "lm_head": {"kernel": normal((HIDDEN, VOCAB))},
        },
        "cross_attention": {"kernel": normal((HIDDEN, HIDDEN)), "gate": jnp.asarray(0.7)},
    }


def logits_fn(params: dict, batch: dict) -> jax.Array:
    """(B, S, V) logits; position t sees tokens <= t and the image."""
    lm = params["language_model"]
    hidden = lm["embed_tokens"]["embedding"][batch["input_ids"]]                       # (B, S, D)
    positions = jnp.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
    hidden = hidden + jnp.cumsum(hidden, axis=1) / positions                            # causal mixing
    image = jnp.tanh(batch["pixel_values"] @ params["vision_encoder"]["patch_embedding"]["kernel"])  # (B, P, D)
    image = image @ params["projector"]["kernel"] + params["projector"]["bias"]
    cross = params["cross_attention"]
    hidden = hidden + jnp.tanh(cross["gate"]) * jnp.tanh(image.mean(axis=1) @ cross["kernel"])[:, None, :]
    mlp = lm["layers"]["mlp"]
    hidden = hidden + jax.nn.gelu(hidden @ mlp["up_proj"]["kernel"]) @ mlp["down_proj"]["kernel"]
    hidden = hidden * jax.lax.rsqrt(jnp.mean(hidden ** 2, axis=-1, keepdims=True) + 1e-6) * lm["norm"]["scale"]
    return hidden @ lm["lm_head"]["kernel"]


def make_batch(seed: int, batch_size: int = 4, seq_len: int = 7) -> dict:
    """Token ids, a loss mask on a random suffix (the 'assistant turn') of each row, and pixel values."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, VOCAB, size=(batch_size, seq_len))
    prompt_lengths = rng.integers(1, seq_len, size=batch_size)
    loss_mask = (np.arange(seq_len)[None, :] >= prompt_lengths[:, None]).astype(np.int32)
    pixel_values = rng.normal(size=(batch_size, PATCHES, PATCH_FEATURES)).astype(np.float32)
    return {"input_ids": jnp.asarray(input_ids, jnp.int32), "loss_mask": jnp.asarray(loss_mask),
            "pixel_values": jnp.asarray(pixel_values)}
