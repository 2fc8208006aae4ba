"""Sharding rules: every param dim has a logical axis name ("layers", "embed", "mlp", "heads", "kv_heads", "vocab"
or None = replicated); rules map logical names to mesh axes ("data", "fsdp", "tensor"). A mesh axis is skipped
for a dim it does not divide (or that is absent from the mesh, or already used by another dim of the same array),
so any mesh works with any config. Batch inputs are sharded over ("data", "fsdp") on their leading axis.

Default rules: embed -> fsdp (params gathered per layer, ZeRO-3 style), heads / kv_heads / mlp / vocab -> tensor
(Megatron-style tensor parallelism), layers -> replicated (each device holds its slice of every layer).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.config import ModelConfig
from model.params import set_path, text_leaves

DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "layers": None, "embed": "fsdp", "mlp": "tensor", "heads": "tensor", "kv_heads": "tensor", "vocab": "tensor",
}
BATCH_AXES = ("data", "fsdp")


def make_mesh(axes: Mapping[str, int], devices=None) -> Mesh:
    """A mesh with Auto axis types (JAX 0.10 defaults to Explicit), e.g. make_mesh({"fsdp": 2, "tensor": 4})."""
    names, shape = tuple(axes), tuple(axes.values())
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names), devices=devices)


def value_head_logical_axes(params_value_head: Mapping[str, Any]) -> dict:
    return {name: {"kernel": ("embed" if name == "dense_0" else None, None), "bias": (None,)}
            for name in params_value_head}


def logical_axes(config: ModelConfig, params: Mapping[str, Any]) -> dict:
    """A tree with the structure of `params` (any subset of the groups) whose leaves are tuples of logical axis
    names, one per dim."""
    axes: dict = {}
    for path, _, leaf_axes, _, _ in text_leaves(config):
        if path[0] in params:
            set_path(axes, path, tuple(leaf_axes))
    if "vision_encoder" in params or "projector" in params:
        from model import vision
        vision_axes = vision.vision_logical_axes(config)
        axes.update({k: v for k, v in vision_axes.items() if k in params})
    if "value_head" in params:
        axes["value_head"] = value_head_logical_axes(params["value_head"])
    return axes


def partition_spec(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: Mesh,
                   rules: Mapping[str, Any] = DEFAULT_RULES) -> PartitionSpec:
    """The PartitionSpec for one array: each dim gets the mesh axes its logical name maps to, minus those absent
    from the mesh, already used, or not dividing the dim."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match the array's shape {shape}")
    used: set[str] = set()
    spec = []
    for size, name in zip(shape, axes):
        targets = rules.get(name) if name is not None else None
        targets = (targets,) if isinstance(targets, str) else tuple(targets or ())
        chosen, product = [], 1
        for axis in targets:
            if axis in mesh.shape and axis not in used and size % (product * mesh.shape[axis]) == 0:
                chosen.append(axis)
                product *= mesh.shape[axis]
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def param_shardings(config: ModelConfig, mesh: Mesh, params, rules: Mapping[str, Any] = DEFAULT_RULES):
    """NamedShardings for `params` (arrays or ShapeDtypeStructs)."""
    axes = logical_axes(config, params)
    return jax.tree.map(lambda a, leaf_axes: NamedSharding(mesh, partition_spec(a.shape, leaf_axes, mesh, rules)),
                        params, axes, is_leaf=lambda x: isinstance(x, tuple))


def shard_params(params, config: ModelConfig, mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES):
    """`params` placed on the mesh by the rules."""
    return jax.device_put(params, param_shardings(config, mesh, params, rules))


def batch_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Leading (batch) axis over the mesh's data/fsdp axes that divide it; the other axes replicated."""
    spec = partition_spec(shape[:1], ("batch",), mesh, {"batch": BATCH_AXES})
    return NamedSharding(mesh, PartitionSpec(*spec, *([None] * (len(shape) - 1))))


def split_microbatches(batch: Any, count: int) -> Any:
    """Every leaf (B, ...) -> (count, B / count, ...), microbatch k = rows k, k + n, k + 2n, ... (n = count).
    Strided, not contiguous: with B sharded over data-parallel devices in contiguous blocks, every microbatch
    then has rows on every device, so no device idles and nothing is moved (gradient accumulation: the SFT step's
    and the RL updates' losses are sums over rows, so which rows share a microbatch does not change the result)."""
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % count:
            raise ValueError(f"a batch of {x.shape[0]} rows is not divisible into {count} microbatches; make the "
                             "batch a multiple of the microbatch count")
        return jax.numpy.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def constrain_batch(x: jax.Array) -> jax.Array:
    """x (B, ...) constrained to batch over the context mesh's ("data", "fsdp") axes (those that divide B), other
    axes replicated: the activation constraint the model applies to its layer inputs. A no-op unless a mesh is set
    for tracing (`jax.set_mesh(mesh)` around the jit call or inside the jitted function) with Auto axes: without
    one, or on one device, or inside shard_map (Manual axes), nothing changes. Under pure FSDP (weights' embed dim
    over "fsdp") XLA's propagation otherwise drops the batch sharding of activations (docs/plan.md)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or x.ndim == 0:
        return x
    batch = _batch_axes(mesh, x.shape[0])
    if batch is None:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(batch, *([None] * (x.ndim - 1))))


def _auto_axes(mesh) -> set[str]:
    return {name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == jax.sharding.AxisType.Auto}


def _batch_axes(mesh, rows: int, taken: set[str] = frozenset()):
    """The batch dim's PartitionSpec entry for `rows` rows: the mesh's Auto ("data", "fsdp") axes, less `taken`
    (used by another dim of the array), that divide it (None: none does)."""
    auto = _auto_axes(mesh)
    return partition_spec((rows,), ("batch",), mesh, {"batch": tuple(a for a in BATCH_AXES
                                                                     if a in auto and a not in taken)})[0]


def constrain_lookup(rows: jax.Array) -> jax.Array:
    """Rows (B, ..., D) just looked up from a table whose last dim D has the "embed" logical axis (the token
    embedding, the vision tower's tile embeddings), constrained to D sharded as the default rules shard the table's
    (over "fsdp") and B over the batch axes D does not use. The lookup is then local (each device reads its slice
    of D), and in the backward pass the rows' cotangent reaches the table's layout by an all-to-all: left to
    itself XLA replicates the whole batch-sharded cotangent (B, S, D) on every device before it partitions it like
    the table ("involuntary full rematerialization", docs/rl.md). A no-op as `constrain_batch` is (no context mesh,
    Manual axes)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or rows.ndim < 2:
        return rows
    auto, embed = _auto_axes(mesh), DEFAULT_RULES["embed"]
    embed = (embed,) if isinstance(embed, str) else tuple(embed or ())
    hidden = partition_spec(rows.shape[-1:], ("embed",), mesh, {"embed": tuple(a for a in embed if a in auto)})[0]
    batch = _batch_axes(mesh, rows.shape[0], {hidden} if isinstance(hidden, str) else set(hidden or ()))
    if hidden is None and batch is None:
        return rows
    return jax.lax.with_sharding_constraint(rows, PartitionSpec(batch, *([None] * (rows.ndim - 2)), hidden))


def constrain_replicated(x: jax.Array) -> jax.Array:
    """x constrained to be whole on every device of the context mesh; a no-op without one (as `constrain_batch`).
    For an intermediate that XLA cannot partition on its way to sharded outputs (a flat random draw sliced and
    reshaped into several params), so that it replicates it by design rather than with a warning."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or jax.sharding.AxisType.Auto not in mesh.axis_types:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*([None] * x.ndim)))


def sharded_forward(config: ModelConfig, mesh: Mesh, params, rules: Mapping[str, Any] = DEFAULT_RULES):
    """A jitted `forward(params, **batch) -> logits` with params sharded by the rules, batch inputs (input_ids,
    attention_mask, pixel_values, ...) and logits sharded on the batch axis. `params` (arrays or shapes) fixes
    the param shardings; call the result with params placed by `shard_params`."""
    from model.forward import forward

    p_shardings = param_shardings(config, mesh, params, rules)
    compiled: dict = {}

    def run(params, **batch):
        batch = {k: v for k, v in batch.items() if v is not None}
        key = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if key not in compiled:
            b_shardings = {k: batch_sharding(mesh, v.shape) for k, v in batch.items()}
            seq = batch["input_ids"].shape
            out = batch_sharding(mesh, (*seq, config.text.vocab_size))
            compiled[key] = jax.jit(lambda p, b: forward(p, config, **b),
                                    in_shardings=(p_shardings, b_shardings), out_shardings=out)
        with jax.set_mesh(mesh):  # the model's activation constraints (constrain_batch) apply on this mesh
            return compiled[key](params, batch)

    return run

