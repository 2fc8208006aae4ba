"""The optimisation loop shared by PPO and GRPO: epochs x shuffled minibatches over a rollout buffer, as nested
`jax.lax.scan`s, one optax step per minibatch.

A buffer is a pytree (usually a dict) whose every leaf has the same leading axis N (flattened transitions or
sampled responses); a minibatch is the same pytree with leading axis `minibatch_size`. Each epoch draws a fresh
permutation of N from its own key and cuts it into N // minibatch_size minibatches (N must be a multiple of
`minibatch_size`, so no transition is silently dropped and shapes stay static).

Padding skipped: a rollout buffer holds B episodes x K steps, and an episode that ends early leaves padded
transitions (`valid` False) that every loss masks out but a plain minibatch still computes. Given `valid`, each
epoch's permutation puts the valid items first (each part in the permutation's order) and the epoch runs only
ceil(n_valid / minibatch_size) minibatches (a `fori_loop` with a traced trip count: one compilation for any
n_valid); only the last minibatch holds padding. With every item valid this is the plain loop, step for step.
The number of optimizer steps then varies per update; a step-counted learning-rate schedule can be advanced by
the skipped steps (`rl.ppo.advance_schedule`) so that it stays where the plain loop would leave it.

Shared arrays: a dict buffer may keep arrays that several items read once, not once per item (an episode's
images, which its K transitions all attend to): `buffer[SHARED]` a dict of arrays with their own leading axis E,
`buffer[SHARED_INDEX]` (N,) the row of them each item reads. A minibatch (`take_items`) gets the rows its items
read under the arrays' own names, as if every item held them. The update takes them per microbatch, where the loss
reads them: on a mesh XLA gathers rows of a batch-sharded array by a masked gather on every device and an
all-reduce of the result, so each device holds a whole copy of what is taken, and a microbatch's images are
1 / microbatches of a minibatch's (11B, freeze_vision: 52 MB of encoded image per transition).

Conversation rows (`PPOConfig.episode_rows`): an item may be a row of K transitions, its per-transition arrays
(N, K, ...) beside the row's stream; the losses see the minibatch's (m, K) transitions flattened to m * K
(`as_transitions`), and a row counts as valid when any of its transitions is (`item_valid`).

Gradient accumulation: with `microbatches` m > 1 each minibatch's gradient is the sum of m microbatches' (rows
k, k + m, ... of the minibatch: `model.sharding.split_microbatches`), taken one after another, so a step holds one
microbatch's activations. The losses are means over the minibatch (over its valid transitions, its tokens, its
responses), so each microbatch's loss is computed as its share of the minibatch's mean: `totals_fn(minibatch)`
counts the minibatch once (`rl.masked.masked_share`) and `loss_fn(params, microbatch, totals)` divides by those
counts; the shares, and their gradients, add up to the whole minibatch's exactly.

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

from model.sharding import split_microbatches


class TrainState(NamedTuple):
    """What an RL update carries between calls: the differentiated params, the optimizer state and the number of
    optimizer steps taken so far."""

    params: Any
    opt_state: Any
    step: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


SHARED, SHARED_INDEX = "shared", "shared_index"


def item_arrays(buffer: Any) -> Any:
    """`buffer` without its shared arrays (`SHARED`): the leaves with the items' leading axis N."""
    if isinstance(buffer, dict) and SHARED in buffer:
        return {name: value for name, value in buffer.items() if name != SHARED}
    return buffer


def with_shared(items: dict[str, Any], shared: dict[str, jax.Array]) -> dict[str, Any]:
    """`items` (a dict with `SHARED_INDEX`, any leading axes) plus, under the shared arrays' own names, the rows of
    `shared` its index names (those leading axes, then each shared array's own); the index is dropped."""
    items = dict(items)
    rows = items.pop(SHARED_INDEX)
    return dict(items, **{name: value[rows] for name, value in shared.items()})


def reading_shared(buffer: Any, items: Any) -> Any:
    """`items` (rows of `buffer`'s item arrays, any leading axes) with the rows of `buffer`'s shared arrays they
    read (`with_shared`); `items` as they are when `buffer` has none."""
    if isinstance(buffer, dict) and SHARED in buffer:
        return with_shared(items, buffer[SHARED])
    return items


def take_items(buffer: Any, indices: jax.Array) -> Any:
    """The items `indices` of `buffer` (a minibatch): every item array's rows, and the shared arrays' rows those
    items read."""
    return reading_shared(buffer, jax.tree_util.tree_map(lambda leaf: leaf[indices], item_arrays(buffer)))


def buffer_size(buffer: Any) -> int:
    """The common leading axis N of every item array of `buffer` (static); a clear error if they disagree."""
    sizes = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(item_arrays(buffer))}
    if len(sizes) != 1:
        raise ValueError(f"every array in the rollout buffer must share its leading axis N; got sizes {sorted(sizes)}.")
    return sizes.pop()


def holds_rows(buffer: Any) -> bool:
    """Whether `buffer`'s items are conversation rows of transitions: its response_mask is (N, K, S), not (N, S)."""
    return jnp.ndim(buffer["response_mask"]) == 3


def as_transitions(tree: Any, rows: bool) -> Any:
    """`tree`'s arrays with their leading (m, K) axes of conversation rows flattened to m * K transitions (as they
    are when not `rows`)."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree) if rows else tree


def item_valid(valid: jax.Array) -> jax.Array:
    """(N,) bool: the items with a valid transition (`valid` (N,), or (N, K) for conversation rows)."""
    valid = jnp.asarray(valid, bool)
    return valid if valid.ndim == 1 else jnp.any(valid, axis=1)


def minibatch_indices(rng: jax.Array, num_items: int, *, epochs: int, minibatch_size: int) -> jax.Array:
    """(epochs, num_items // minibatch_size, minibatch_size) int32: one fresh permutation of range(num_items) per
    epoch, cut into minibatches."""
    check_minibatch_size(num_items, minibatch_size)
    if epochs <= 0:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    keys = jax.random.split(rng, epochs)
    permutations = jax.vmap(lambda key: jax.random.permutation(key, num_items))(keys)
    return permutations.reshape(epochs, num_items // minibatch_size, minibatch_size).astype(jnp.int32)


def valid_first_orders(rng: jax.Array, valid: jax.Array, *, epochs: int) -> jax.Array:
    """(epochs, N) int32: per epoch the permutation `minibatch_indices` draws from the same key, reordered so the
    items with `valid` (N,) True come first (stable: each part keeps the permutation's order)."""
    num_items = valid.shape[0]
    permutations = minibatch_indices(rng, num_items, epochs=epochs, minibatch_size=num_items).reshape(epochs, -1)
    invalid = ~jnp.asarray(valid, bool)
    return jax.vmap(lambda order: order[jnp.argsort(invalid[order], stable=True)])(permutations)


def check_minibatch_size(num_items: int, minibatch_size: int) -> None:
    """A minibatch size that cuts a buffer of `num_items` items into whole minibatches (one clear sentence if not;
    the update and `memgen plan` both check with it)."""
    if minibatch_size <= 0 or num_items % minibatch_size:
        raise ValueError(f"the buffer holds {num_items} items, which is not a multiple of minibatch_size="
                         f"{minibatch_size}; choose a minibatch size that divides the rollout size.")


def check_microbatches(owner: str, minibatch_size: int, microbatches: int, *, field: str = "microbatches") -> None:
    """A config's microbatch count (its `field`): at least 1 and a divisor of its minibatch size (one clear sentence
    if not; the configs, the update and `memgen plan` all check with it)."""
    if microbatches < 1 or minibatch_size % microbatches:
        raise ValueError(f"{owner}.{field}={microbatches} must be at least 1 and divide minibatch_size="
                         f"{minibatch_size}.")


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def minibatch_update(state: TrainState, buffer: Any, rng: jax.Array, *, loss_fn: LossFn,
                     optimizer: optax.GradientTransformation, epochs: int, minibatch_size: int,
                     microbatches: int = 1, totals_fn: Callable[[Any], Any] | None = None,
                     valid: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """Run `epochs` passes of shuffled minibatch gradient steps of `loss_fn(params, minibatch) -> (loss, metrics)`,
    or, with `totals_fn`, of `loss_fn(params, batch, totals_fn(minibatch))`, where `batch` is the minibatch or,
    with `microbatches` > 1, each of its microbatches in turn, gradients and metrics summed (module docstring: the
    loss and its metrics must then be shares of the minibatch's means, so that they add up; `totals_fn` sees the
    item arrays only, the shared rows being taken per microbatch for `loss_fn`). `valid` (N,) bool
    (or (N, K) for conversation rows: `item_valid`): skip the padding, drawing each epoch's minibatches from the
    valid items only (module docstring); the loss must mask invalid items out, as the last minibatch may hold some.

    Returns the new state and the metrics averaged over all the steps taken (epochs x minibatches), plus `loss`
    and `grad_norm` (the global norm before the optimizer's clipping).
    """
    check_microbatches("minibatch_update", minibatch_size, microbatches)
    if microbatches > 1 and totals_fn is None:
        raise ValueError("microbatches > 1 needs totals_fn: each microbatch's loss must be its share of the "
                         "minibatch's mean for the accumulated gradient to be the minibatch's.")
    num_items = buffer_size(buffer)
    indices = minibatch_indices(rng, num_items, epochs=epochs, minibatch_size=minibatch_size)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def value_and_grad(params: Any, batch: Any, *totals: Any):  # the shared rows taken here, per (micro)batch
        return grad_fn(params, reading_shared(buffer, batch), *totals)

    def zeros_of(fn, *args):  # zeros shaped like fn(*args): the start of a running sum over its results
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(fn, *args))

    def loss_and_grads(params: Any, minibatch: Any):
        if totals_fn is None:
            return value_and_grad(params, minibatch)
        totals = totals_fn(minibatch)
        if microbatches == 1:
            return value_and_grad(params, minibatch, totals)

        def accumulate(carry, microbatch):
            return jax.tree.map(jnp.add, carry, value_and_grad(params, microbatch, totals)), None

        parts = split_microbatches(minibatch, microbatches)
        first = jax.tree.map(lambda leaf: leaf[0], parts)
        return jax.lax.scan(accumulate, zeros_of(value_and_grad, params, first, totals), parts)[0]

    def gradient_step(state: TrainState, minibatch_index: jax.Array):
        # the items' own rows; the shared rows they read are taken per microbatch (module docstring)
        minibatch = jax.tree.map(lambda leaf: leaf[minibatch_index], item_arrays(buffer))
        (loss, metrics), grads = loss_and_grads(state.params, minibatch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(params, opt_state, state.step + 1), metrics

    if valid is not None:
        if jnp.shape(valid)[:1] != (num_items,) or jnp.ndim(valid) > 2:
            raise ValueError(f"valid must have the buffer's shape ({num_items},) (or ({num_items}, K) for "
                             f"conversation rows), got {jnp.shape(valid)}.")
        valid = item_valid(valid)
        orders = valid_first_orders(rng, valid, epochs=epochs)
        per_epoch = (jnp.sum(valid.astype(jnp.int32)) + minibatch_size - 1) // minibatch_size
        steps = epochs * per_epoch

        def valid_step(i, carry):
            state, sums = carry
            order = orders[i // per_epoch]
            state, metrics = gradient_step(state, jax.lax.dynamic_slice(order, ((i % per_epoch) * minibatch_size,),
                                                                        (minibatch_size,)))
            return state, jax.tree.map(jnp.add, sums, metrics)

        zeros = zeros_of(lambda s, i: gradient_step(s, i)[1], state, indices[0, 0])  # indices: shapes only here
        state, sums = jax.lax.fori_loop(0, steps, valid_step, (state, zeros))
        return state, jax.tree.map(lambda total: total / jnp.maximum(steps, 1).astype(total.dtype), sums)

    def epoch(state: TrainState, epoch_indices: jax.Array):
        return jax.lax.scan(gradient_step, state, epoch_indices)

    state, metrics = jax.lax.scan(epoch, state, indices)
    return state, jax.tree_util.tree_map(jnp.mean, metrics)
