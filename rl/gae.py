"""Generalised advantage estimation (GAE) over the transitions of multi-turn episodes.

A transition is one whole model response (one verification step, one V-IRL decision) with a scalar reward from
the verifier. Arrays are per transition, shape (B, T): B rows (one process's rollout stream each, or one
episode each), T transition slots per row, padded and marked by `valid`. A row may hold several episodes one
after the other: `dones` marks the last transition of each (its successor is not bootstrapped). Padded slots
(valid = False) are skipped entirely: they neither receive an advantage nor break the chain between the valid
transitions around them. The value after the last valid transition of a row is `bootstrap_value` (B,), used
only when that transition is not terminal (a truncated episode).

    delta_t = r_t + gamma * V_next * (1 - done_t) - V_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_next
    R_t     = A_t + V_t         (the value target)

computed as a reverse `jax.lax.scan` over T.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GAEConfig:
    """Discount `gamma` and GAE `lam`; defaults are the paper's (gamma 0.9, lambda 0.95)."""

    gamma: float = 0.9
    lam: float = 0.95

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"GAEConfig.gamma must lie in [0, 1], got {self.gamma}; set it to e.g. 0.9.")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"GAEConfig.lam must lie in [0, 1], got {self.lam}; set it to e.g. 0.95.")


def gae(rewards: jax.Array, values: jax.Array, dones: jax.Array, valid: jax.Array | None = None,
        bootstrap_value: jax.Array | None = None, config: GAEConfig = GAEConfig()) -> tuple[jax.Array, jax.Array]:
    """Advantages and returns (value targets), both (B, T) float32 and zero on padded slots.

    rewards, values: (B, T) float; dones: (B, T) bool (terminal: no bootstrap from the next state);
    valid: (B, T) bool, None = all valid; bootstrap_value: (B,) value of the state after each row's last valid
    transition, None = 0 (only used where that transition is not terminal). Values are treated as constants.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jax.lax.stop_gradient(jnp.asarray(values, jnp.float32))
    if rewards.ndim != 2 or values.shape != rewards.shape or jnp.shape(dones) != rewards.shape:
        raise ValueError("gae expects rewards, values and dones of one shape (B, T); got "
                         f"{rewards.shape}, {values.shape}, {jnp.shape(dones)}.")
    valid = jnp.ones(rewards.shape, bool) if valid is None else jnp.asarray(valid, bool)
    batch = rewards.shape[0]
    bootstrap_value = (jnp.zeros((batch,), jnp.float32) if bootstrap_value is None
                       else jax.lax.stop_gradient(jnp.asarray(bootstrap_value, jnp.float32)))
    continues = 1.0 - jnp.asarray(dones, jnp.float32)

    def step(carry, xs):
        next_value, next_advantage = carry
        reward, value, cont, is_valid = xs
        delta = reward + config.gamma * next_value * cont - value
        advantage = delta + config.gamma * config.lam * cont * next_advantage
        # A padded slot passes its successor's value and advantage through unchanged.
        carry = (jnp.where(is_valid, value, next_value), jnp.where(is_valid, advantage, next_advantage))
        return carry, jnp.where(is_valid, advantage, 0.0)

    time_major = (rewards.T, values.T, continues.T, valid.T)
    init = (bootstrap_value, jnp.zeros((batch,), jnp.float32))
    _, advantages = jax.lax.scan(step, init, time_major, reverse=True)
    advantages = advantages.T
    returns = jnp.where(valid, advantages + values, 0.0)
    return advantages, returns
