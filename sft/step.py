"""The SFT train step, its state, the held-out evaluation loss and the vmapped learning-rate sweep.

Everything here is a pure function over pytrees; the model enters as ``logits_fn(params, batch) -> logits``
(B, S, V), e.g. ``functools.partial(model.forward_from_batch, config=...)``, so this module never imports the
model. Batches are dicts of arrays with leading axis B (``input_ids`` and ``loss_mask`` (B, S) at least; any
other entries, such as ``pixel_values``, are passed through to ``logits_fn``).

Non-finite steps: when the loss or the gradient norm is not finite the update is skipped: the trainable params
and the optimizer state (including its schedule count) stay bit-identical, ``metrics["skipped"]`` is 1, and
``state.step`` still advances, because ``step`` counts consumed batches (the data position and checkpoint
numbering are functions of it) while the optimizer counts applied updates. A run loop stops after K
consecutive skips.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax
from flax import struct

from model.sharding import split_microbatches
from sft.loss import metrics_from_sums, sft_loss_sums
from sft.optim import (combine, learning_rate, partition, trainable_mask, with_peak_learning_rate)

Batch = Mapping[str, jax.Array]
LogitsFn = Callable[[Any, Batch], jax.Array]


@struct.dataclass
class TrainState:
    """Everything a resumed run needs. ``step``: consumed batches (int32 scalar); ``trainable`` / ``frozen``:
    the two param partitions (fp32 master weights); ``opt_state``: the optimizer's state over ``trainable``
    only; ``rng``: the run's base key (raw uint32 key data, so checkpoints hold plain arrays) from which every
    random key is derived with ``jax.random.fold_in(rng, step)``."""

    step: jax.Array
    trainable: Any
    frozen: Any
    opt_state: Any
    rng: jax.Array

    @property
    def params(self) -> dict[str, Any]:
        return combine(self.trainable, self.frozen)


def init_train_state(params: Any, optimizer: optax.GradientTransformation, freeze: Sequence[str],
                     rng: jax.Array) -> TrainState:
    """Partition ``params`` by ``freeze`` (group names or whole-path regexes, see ``sft.optim.trainable_mask``)
    and initialise the optimizer on the trainable partition only."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    # Strong dtypes: a weakly typed leaf (e.g. a param made from a Python float) would come out of the first
    # update strongly typed and make the second step recompile.
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), params)
    trainable, frozen = partition(params, trainable_mask(params, freeze))
    if not jax.tree.leaves(trainable):
        raise ValueError(f"freeze={list(freeze)} freezes every parameter; leave at least one group trainable")
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                      opt_state=optimizer.init(trainable), rng=jnp.asarray(rng, jnp.uint32))


def _cast_floats(tree: Any, dtype: Optional[Union[jnp.dtype, str]]) -> Any:
    if dtype is None:
        return tree
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _tree_where(condition: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def train_step(state: TrainState, batch: Batch, *, logits_fn: LogitsFn, optimizer: optax.GradientTransformation,
               grad_accum_steps: int = 1, compute_dtype: Optional[Union[jnp.dtype, str]] = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on ``batch`` (leading axis B = grad_accum_steps x microbatch).

    The loss is the token mean over all supervised tokens of the whole batch (each microbatch's summed NLL
    divided by the whole batch's token count), so accumulation equals one big batch. Gradients are taken w.r.t.
    the trainable partition only. With ``compute_dtype`` (a dtype or its name, e.g. ``jnp.bfloat16`` or the
    config's ``"bfloat16"``) the params are cast inside the loss; the fp32 master weights and the optimizer
    state stay fp32. Jit it with ``donate_argnums=0`` and the keyword arguments bound, e.g.
    ``jax.jit(functools.partial(train_step, logits_fn=f, optimizer=o), donate_argnums=0)``.

    Metrics (fp32 scalars): ``loss``, ``accuracy``, ``tokens``, ``lr`` (of this update), ``grad_norm`` (global
    norm before clipping), ``skipped`` (1 when the update was skipped as non-finite).
    """
    try:
        microbatches = split_microbatches(dict(batch), grad_accum_steps)
    except ValueError as error:
        raise ValueError(f"{error} (grad_accum_steps={grad_accum_steps})") from None
    frozen = _cast_floats(state.frozen, compute_dtype)

    def summed_nll(trainable: Any, microbatch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        params = combine(_cast_floats(trainable, compute_dtype), frozen)
        sums = sft_loss_sums(logits_fn(params, microbatch), microbatch)
        return sums["nll_sum"], sums

    grad_fn = jax.grad(summed_nll, has_aux=True)

    def accumulate(carry: tuple[Any, dict[str, jax.Array]], microbatch: Batch):
        grad_sum, sums = carry
        grads, micro_sums = grad_fn(state.trainable, microbatch)
        return (jax.tree.map(jnp.add, grad_sum, grads), jax.tree.map(jnp.add, sums, micro_sums)), None

    zero_sums = {key: jnp.zeros((), jnp.float32) for key in ("nll_sum", "tokens", "correct")}
    (grad_sum, sums), _ = jax.lax.scan(accumulate, (jax.tree.map(jnp.zeros_like, state.trainable), zero_sums),
                                       microbatches)
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["tokens"], 1.0), grad_sum)
    metrics = metrics_from_sums(sums)
    grad_norm = optax.tree.norm(grads)

    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    new_trainable = optax.apply_updates(state.trainable, updates)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    new_state = state.replace(
        step=state.step + 1,
        trainable=_tree_where(finite, new_trainable, state.trainable),
        opt_state=_tree_where(finite, new_opt_state, state.opt_state),
    )
    metrics.update(lr=learning_rate(new_opt_state).astype(jnp.float32), grad_norm=grad_norm.astype(jnp.float32),
                   skipped=(~finite).astype(jnp.float32))
    return new_state, metrics


def eval_loss(params: Any, batch: Batch, *, logits_fn: LogitsFn) -> dict[str, jax.Array]:
    """Held-out SFT loss of one batch (the "Quagmires" generalisation-loss predictor): ``loss``, ``accuracy``,
    ``tokens`` and the sums ``nll_sum`` / ``correct``; over a whole split, add the sums of every batch and
    take ``sft.loss.metrics_from_sums`` so the loss is a token mean over the split, not a mean of batch means."""
    sums = sft_loss_sums(logits_fn(params, batch), batch)
    return {**sums, **metrics_from_sums(sums)}


# --- the functional learning-rate ablation -------------------------------------------------------------------

def _sweep_axes() -> TrainState:
    # Every field but the frozen partition gets a leading K axis; frozen params are shared, not copied K times.
    return TrainState(step=0, trainable=0, frozen=None, opt_state=0, rng=0)


def stack_for_sweep(state: TrainState, learning_rates: Sequence[float] | jax.Array) -> TrainState:
    """K copies of ``state`` (trainable params, optimizer state, step and rng get a leading K axis; the frozen
    partition stays shared), member k with peak learning rate ``learning_rates[k]``."""
    learning_rates = jnp.asarray(learning_rates)
    if learning_rates.ndim != 1 or learning_rates.shape[0] < 1:
        raise ValueError(f"learning_rates must be a non-empty 1-D list, got shape {learning_rates.shape}")
    count = learning_rates.shape[0]
    stack = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (count, *jnp.shape(x))), tree)  # noqa: E731
    return state.replace(step=stack(state.step), trainable=stack(state.trainable),
                         opt_state=with_peak_learning_rate(stack(state.opt_state), learning_rates),
                         rng=stack(state.rng))


def unstack_sweep(states: TrainState, index: int) -> TrainState:
    """Member ``index`` of a stacked sweep state, as an ordinary :class:`TrainState`."""
    take = lambda tree: jax.tree.map(lambda x: x[index], tree)  # noqa: E731
    return states.replace(step=take(states.step), trainable=take(states.trainable),
                          opt_state=take(states.opt_state), rng=take(states.rng))


def stack_sweep(members: Sequence[TrainState]) -> TrainState:
    """The stacked sweep state of K member states (e.g. restored from K checkpoints): the inverse of
    :func:`unstack_sweep`. The members must share their frozen partition; the first one's is kept."""
    if not members:
        raise ValueError("stack_sweep needs at least one member state")
    stack = lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    return members[0].replace(step=stack(*(m.step for m in members)), trainable=stack(*(m.trainable for m in members)),
                              opt_state=stack(*(m.opt_state for m in members)), rng=stack(*(m.rng for m in members)))


def sweep_train_step(states: TrainState, batch: Batch, *, logits_fn: LogitsFn,
                     optimizer: optax.GradientTransformation, grad_accum_steps: int = 1,
                     compute_dtype: Optional[jnp.dtype] = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_step` vmapped over the K members of a :func:`stack_for_sweep` state, all on the same batch:
    one compiled program trains K copies of the trainable params, each with its own optimizer state and peak
    learning rate (held in the state, so changing the rates never recompiles). Metrics have a leading K axis."""
    step = functools.partial(train_step, logits_fn=logits_fn, optimizer=optimizer,
                             grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype)
    return jax.vmap(step, in_axes=(_sweep_axes(), None), out_axes=(_sweep_axes(), 0))(states, batch)
