"""Freezing and the optimizer for SFT: which parameters train, how params split into a trainable and a frozen
partition, and the AdamW + warm-up/cosine schedule of the reference protocol built with optax.

Params are nested dicts whose top-level keys are the param groups (``vision_encoder``, ``projector``,
``language_model``, ``cross_attention``, ``value_head``); a param's path is its dict keys joined by '/', e.g.
``language_model/layers/mlp/gate_proj/kernel``. A partition is the same nested dict with the other partition's
leaves removed and empty sub-dicts dropped, so it is an ordinary pytree that jit, vmap, optax and orbax handle,
and a frozen param has no leaf in the trainable partition: no optimizer state and no gradient exist for it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from model.dtypes import keep_dtypes

PARAM_GROUPS = ("vision_encoder", "projector", "language_model", "cross_attention", "value_head")

Params = Mapping[str, Any]


def _check_nested_dict(tree: Any, path: str = "") -> None:
    if not isinstance(tree, Mapping):
        return
    for key, value in tree.items():
        if not isinstance(key, str) or "/" in key or not key:
            raise TypeError(f"param key {key!r} under '{path or '/'}' is not a non-empty string without '/'; "
                            "params must be nested dicts with such keys (paths are '/'-joined)")
        _check_nested_dict(value, f"{path}/{key}" if path else key)


def flatten_paths(tree: Params) -> dict[str, Any]:
    """``{'/'-joined path: leaf}`` for a nested dict of arrays (insertion order)."""
    _check_nested_dict(tree)
    flat: dict[str, Any] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, f"{prefix}/{key}" if prefix else key)
        else:
            flat[prefix] = node

    visit(tree, "")
    return flat


def unflatten_paths(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_paths`."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree


def trainable_mask(params: Params, freeze: Sequence[str]) -> dict[str, Any]:
    """A nested dict of bools shaped like ``params``: True where a param trains.

    Each ``freeze`` entry is either a param-group name (a top-level key of ``params``, e.g. ``vision_encoder``)
    or a regular expression that must match a whole '/'-joined param path (e.g. ``language_model/layers/.*``).
    An entry that matches no param is an error, so that a typo never silently trains what was meant to be frozen.
    """
    flat = flatten_paths(params)
    groups = sorted({path.split("/")[0] for path in flat})
    frozen_paths: set[str] = set()
    for entry in freeze:
        if entry in groups:
            matched = {path for path in flat if path.split("/")[0] == entry}
        else:
            try:
                pattern = re.compile(entry)
            except re.error as error:
                raise ValueError(f"freeze entry {entry!r} is neither a param group ({', '.join(groups)}) nor a "
                                 f"valid regular expression ({error}); fix the entry") from None
            matched = {path for path in flat if pattern.fullmatch(path)}
        if not matched:
            raise ValueError(f"freeze entry {entry!r} matches no parameter; use a param group "
                             f"({', '.join(groups)}) or a regex over whole paths such as "
                             f"'{next(iter(flat), 'group/.*')}'")
        frozen_paths |= matched
    return unflatten_paths({path: path not in frozen_paths for path in flat})


def partition(params: Params, mask: Params) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split params into ``(trainable, frozen)`` by a mask from :func:`trainable_mask` (True = trainable)."""
    flat_params, flat_mask = flatten_paths(params), flatten_paths(mask)
    if flat_params.keys() != flat_mask.keys():
        raise ValueError("the trainable mask does not have the params' structure; build it with "
                         "trainable_mask(params, freeze)")
    trainable = {path: leaf for path, leaf in flat_params.items() if flat_mask[path]}
    frozen = {path: leaf for path, leaf in flat_params.items() if not flat_mask[path]}
    return unflatten_paths(trainable), unflatten_paths(frozen)


def combine(trainable: Params, frozen: Params) -> dict[str, Any]:
    """Merge the two partitions back into one params dict (the inverse of :func:`partition`)."""
    flat_trainable, flat_frozen = flatten_paths(trainable), flatten_paths(frozen)
    overlap = flat_trainable.keys() & flat_frozen.keys()
    if overlap:
        raise ValueError(f"params {sorted(overlap)[:3]} are in both partitions; partitions must be disjoint")
    return unflatten_paths({**flat_trainable, **flat_frozen})


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine (or constant) decay, and global-norm gradient clipping.

    Defaults are the reference SFT run's (AdamW, beta2 0.98, eps 1e-7, cosine, 3% warm-up, lr 1e-6, Hugging Face
    Trainer's weight decay 0 and max grad norm 1). ``end_lr_factor`` is the final learning rate as a fraction of
    the peak (0: decay to zero, as the reference's cosine schedule). ``max_grad_norm`` None disables clipping.
    Weight decay applies to matrices only (ndim >= 2), not to biases and norm scales.
    """

    name: Literal["adamw"] = "adamw"
    lr: float = 1e-6
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-7
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_fraction: float = 0.03
    end_lr_factor: float = 0.0
    max_grad_norm: Optional[float] = 1.0


def lr_multiplier_schedule(config: OptimizerConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """The schedule's shape, peak 1: step -> multiplier of the peak learning rate (linear warm-up from 0 over
    ``ceil(warmup_fraction * total_steps)`` steps, then cosine to ``end_lr_factor`` at ``total_steps``)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 <= config.warmup_fraction < 1.0:
        raise ValueError(f"optimizer.warmup_fraction must be in [0, 1), got {config.warmup_fraction}")
    warmup_steps = int(-(-config.warmup_fraction * total_steps // 1))
    if config.schedule == "constant":
        decay = optax.constant_schedule(1.0)
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(1.0, max(total_steps - warmup_steps, 1), alpha=config.end_lr_factor)
    else:
        raise ValueError(f"optimizer.schedule must be 'cosine' or 'constant', got {config.schedule!r}")
    if warmup_steps == 0:
        return decay
    # Warm-up from 1/(warmup+1), not 0: the reference (Hugging Face) warm-up's first step has lr 0, which wastes
    # a step; starting at step/warmup with step counted from 1 keeps every step useful.
    warmup = lambda count: (count + 1.0) / (warmup_steps + 1.0)  # noqa: E731
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _decay_mask(params: Params) -> Any:
    return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params)


def _adamw_chain(peak_learning_rate, lr_multiplier, beta1, beta2, eps, weight_decay, *, max_grad_norm):
    clip = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm is not None else []
    return optax.chain(
        *clip,
        optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask=_decay_mask),
        optax.scale(-peak_learning_rate * lr_multiplier),
    )


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The optimizer for ``total_steps`` updates. Its state holds the hyperparameters as arrays
    (``opt_state.hyperparams``): ``peak_learning_rate`` (a sweep sets it per member), ``lr_multiplier`` (the
    schedule's value used by the latest update) and the Adam constants; see :func:`learning_rate`."""
    if config.name != "adamw":
        raise ValueError(f"optimizer.name must be 'adamw', got {config.name!r}")
    factory = lambda peak_learning_rate, lr_multiplier, beta1, beta2, eps, weight_decay: _adamw_chain(  # noqa: E731
        peak_learning_rate, lr_multiplier, beta1, beta2, eps, weight_decay, max_grad_norm=config.max_grad_norm)
    # float32 hyperparameters whatever the params' dtype: inject_hyperparams would otherwise cast them to it, and in
    # bfloat16 the learning rate, eps and betas round (beta2 0.999 to 1.0: Adam's bias correction divides by 0);
    # keep_dtypes keeps bf16 params' moments and updates in bf16 all the same
    return keep_dtypes(optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
        peak_learning_rate=config.lr,
        lr_multiplier=lr_multiplier_schedule(config, total_steps),
        beta1=config.beta1, beta2=config.beta2, eps=config.eps, weight_decay=config.weight_decay))


def learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of the latest update (before any update: of the first one), from the state of
    :func:`make_optimizer`."""
    return opt_state.hyperparams["peak_learning_rate"] * opt_state.hyperparams["lr_multiplier"]


def with_peak_learning_rate(opt_state: Any, peak_learning_rate: jax.Array) -> Any:
    """The same optimizer state with another peak learning rate (a scalar, or (K,) for a stacked sweep state)."""
    hyperparams = dict(opt_state.hyperparams)
    current = hyperparams["peak_learning_rate"]
    hyperparams["peak_learning_rate"] = jnp.asarray(peak_learning_rate, current.dtype)
    return opt_state._replace(hyperparams=hyperparams)


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array leaves of a pytree, concrete or abstract (``jax.eval_shape(optimizer.init,
    trainable)`` measures a 90B model's optimizer state without allocating it)."""
    return sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
               if hasattr(leaf, "dtype") and hasattr(leaf, "shape"))
