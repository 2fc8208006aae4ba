"""Masked reductions shared by the RL losses: means, variances and normalisation over the entries a mask keeps.

Arrays and masks have any one shape (e.g. (N,) per transition or (N, S) per token); a mask is bool or 0/1.
An all-masked input gives 0 (never NaN), so padded minibatches stay finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0))


def masked_count(mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.asarray(mask, jnp.float32))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return masked_share(x, mask)


def masked_share(x: jax.Array, mask: jax.Array, total: jax.Array | None = None) -> jax.Array:
    """masked_sum(x, mask) / max(total, 1). total None: this batch's own count (`masked_mean`); the count of a
    larger batch that this one is part of: this part's share of that batch's mean, so the shares of its parts add
    up to it exactly (a minibatch's loss accumulated over microbatches)."""
    return masked_sum(x, mask) / jnp.maximum(masked_count(mask) if total is None else total, 1.0)


def masked_var(x: jax.Array, mask: jax.Array, *, ddof: int = 0) -> jax.Array:
    """Variance of the kept entries; ddof=1 is the Bessel-corrected (unbiased) estimate."""
    mean = masked_mean(x, mask)
    return masked_sum(jnp.square(x - mean), mask) / jnp.maximum(masked_count(mask) - ddof, 1.0)


def masked_normalize(x: jax.Array, mask: jax.Array, *, eps: float, ddof: int = 1) -> jax.Array:
    """(x - mean) / (std + eps) over the kept entries; masked entries become 0."""
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_var(x, mask, ddof=ddof))
    return jnp.where(mask, (x - mean) / (std + eps), 0.0)
