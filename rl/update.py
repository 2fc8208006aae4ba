"""The optimisation loop shared by PPO and GRPO: epochs x shuffled minibatches over a rollout buffer, as nested
`jax.lax.scan`s, one optax step per minibatch.

A buffer is a pytree (usually a dict) whose every leaf has the same leading axis N (flattened transitions or
sampled responses); a minibatch is the same pytree with leading axis `minibatch_size`. Each epoch draws a fresh
permutation of N from its own key and cuts it into N // minibatch_size minibatches (N must be a multiple of
`minibatch_size`, so no transition is silently dropped and shapes stay static).

The update differentiates exactly the pytree `state.params` it is given and knows nothing about param groups. To
freeze part of a model, `jax.lax.stop_gradient` that part inside the loss (or policy_fn) and give it no optimizer
state (a freezing-aware optimizer, e.g. `optax.multi_transform` with `optax.set_to_zero()` for frozen groups);
XLA then drops its backward computation.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """What an RL update carries between calls: the differentiated params, the optimizer state and the number of
    optimizer steps taken so far."""

    params: Any
    opt_state: Any
    step: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


def buffer_size(buffer: Any) -> int:
    """The common leading axis N of every leaf of `buffer` (static); a clear error if they disagree."""
    sizes = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(buffer)}
    if len(sizes) != 1:
        raise ValueError(f"every array in the rollout buffer must share its leading axis N; got sizes {sorted(sizes)}.")
    return sizes.pop()


def minibatch_indices(rng: jax.Array, num_items: int, *, epochs: int, minibatch_size: int) -> jax.Array:
    """(epochs, num_items // minibatch_size, minibatch_size) int32: one fresh permutation of range(num_items) per
    epoch, cut into minibatches."""
    if minibatch_size <= 0 or num_items % minibatch_size:
        raise ValueError(f"the buffer holds {num_items} items, which is not a multiple of minibatch_size="
                         f"{minibatch_size}; choose a minibatch size that divides the rollout size.")
    if epochs <= 0:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    keys = jax.random.split(rng, epochs)
    permutations = jax.vmap(lambda key: jax.random.permutation(key, num_items))(keys)
    return permutations.reshape(epochs, num_items // minibatch_size, minibatch_size).astype(jnp.int32)


LossFn = Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]


def minibatch_update(state: TrainState, buffer: Any, rng: jax.Array, *, loss_fn: LossFn,
                     optimizer: optax.GradientTransformation, epochs: int,
                     minibatch_size: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """Run `epochs` passes of shuffled minibatch gradient steps of `loss_fn(params, minibatch) -> (loss, metrics)`.

    Returns the new state and the metrics averaged over all epochs x minibatches, plus `loss` and `grad_norm`
    (the global norm before the optimizer's clipping).
    """
    indices = minibatch_indices(rng, buffer_size(buffer), epochs=epochs, minibatch_size=minibatch_size)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def gradient_step(state: TrainState, minibatch_index: jax.Array):
        minibatch = jax.tree_util.tree_map(lambda leaf: leaf[minibatch_index], buffer)
        (loss, metrics), grads = value_and_grad(state.params, minibatch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(params, opt_state, state.step + 1), metrics

    def epoch(state: TrainState, epoch_indices: jax.Array):
        return jax.lax.scan(gradient_step, state, epoch_indices)

    state, metrics = jax.lax.scan(epoch, state, indices)
    return state, jax.tree_util.tree_map(jnp.mean, metrics)

