"""The one device-mesh configuration used by SFT, RL and the sampler, multi-host initialisation, and per-host
data feeding.

Mesh axes are always ("data", "fsdp", "tensor"): params, optimizer state, batches and KV caches are placed by
the logical-axis rules of `model.sharding` (embed -> fsdp, heads/kv_heads/mlp/vocab -> tensor, batch ->
data x fsdp). `MeshConfig(data=1, fsdp=-1, tensor=1)`: -1 means "every device the other axes leave".

Multi-host: every host runs the same command; `initialize(DistributedConfig.from_env())` connects them through
`jax.distributed.initialize` (a no-op for one process). Each host then loads only its slice of the global
batch (`host_local_batch_slice`) and `make_global_batch` assembles the global, sharded `jax.Array` from the
host-local pieces. Axes: B global batch, b = B / process_count rows per host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.sharding import BATCH_AXES, DEFAULT_RULES, partition_spec

MESH_AXES = ("data", "fsdp", "tensor")


class MeshError(ValueError):
    """A mesh or distributed setting that cannot work; the message is one sentence naming it and the fix."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; exactly one may be -1 (= the device count divided by the others)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes_as_given()
        if any(size == 0 or size < -1 for size in sizes.values()):
            raise MeshError(f"mesh sizes must be positive or -1 (the rest), got {self.describe()}")
        if sum(size == -1 for size in sizes.values()) > 1:
            raise MeshError(f"at most one mesh axis may be -1 (the rest), got {self.describe()}")

    def sizes_as_given(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    def fixed_device_count(self, default: int) -> int:
        """The device count the sizes fix (their product), or ``default`` when an axis is -1 (the rest)."""
        sizes = self.sizes_as_given().values()
        return default if -1 in sizes else math.prod(sizes)

    def describe(self) -> str:
        return ",".join(f"{name}={size}" for name, size in self.sizes_as_given().items())

    def resolve(self, device_count: int) -> dict[str, int]:
        """The axis sizes for `device_count` devices, -1 filled in; a MeshError when they do not multiply to it."""
        sizes = self.sizes_as_given()
        known = math.prod(size for size in sizes.values() if size != -1)
        if -1 in sizes.values():
            if device_count % known:
                raise MeshError(f"mesh {self.describe()} cannot use {device_count} devices: the fixed axes "
                                f"multiply to {known}, which does not divide {device_count}; change the sizes")
            sizes = {name: device_count // known if size == -1 else size for name, size in sizes.items()}
        elif known != device_count:
            raise MeshError(f"mesh {self.describe()} has {known} devices but {device_count} are available; make "
                            f"data x fsdp x tensor = {device_count} (or set one axis to -1)")
        return sizes

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """'data=2,fsdp=-1,tensor=4' (axes left out keep their defaults)."""
        values: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in MESH_AXES:
                raise MeshError(f"mesh entry {part!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}")
            try:
                values[name.strip()] = int(value)
            except ValueError:
                raise MeshError(f"mesh size {value!r} of axis {name.strip()} is not an integer") from None
        return cls(**values)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default: every device of every process) with Auto
    axis types (JAX 0.10 defaults to Explicit, which the rules-based shardings do not use)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.resolve(len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def abstract_mesh(config: MeshConfig, device_count: int) -> jax.sharding.AbstractMesh:
    """The same mesh without devices (for planning a machine you are not on)."""
    sizes = config.resolve(device_count)
    return jax.sharding.AbstractMesh(tuple(sizes[name] for name in MESH_AXES), MESH_AXES,
                                     axis_types=(jax.sharding.AxisType.Auto,) * 3)


def cache_partition_specs(cache: Any, mesh: Mesh | jax.sharding.AbstractMesh,
                          rules: Mapping[str, Any] = DEFAULT_RULES) -> Any:
    """PartitionSpecs for a `model.KVCache` (arrays or shapes): K/V (L, B, S|V, KV, Dh) with batch over
    data x fsdp and KV heads by the rules; per-row arrays (B, ...) over the batch axes; the scalar index
    replicated. Same placement as the sampler's cache."""
    rules = {**rules, "batch": BATCH_AXES}
    axes = {5: ("layers", "batch", None, "kv_heads", None), 3: ("batch", None, None), 2: ("batch", None),
            1: ("batch",), 0: ()}
    return jax.tree.map(lambda leaf: partition_spec(leaf.shape, axes[len(leaf.shape)], mesh, rules), cache)


# --------------------------------------------------------------------------------------------- multi-host
ENV_COORDINATOR = "MEMGEN_COORDINATOR"
ENV_NUM_PROCESSES = "MEMGEN_NUM_PROCESSES"
ENV_PROCESS_ID = "MEMGEN_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "MEMGEN_LOCAL_DEVICE_IDS"
# JAX's own names (also read by jax.distributed.initialize itself when nothing is passed).
JAX_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
           "process_id": "JAX_PROCESS_ID"}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-host run. `coordinator_address` "host:port" of process 0;
    `num_processes` hosts in all; `process_id` this host's rank (0-based); `local_device_ids` the devices this
    process uses (None: all local ones). num_processes 1 (the default) means a single-host run.
    `cpu_collectives` ("gloo") enables cross-process collectives on CPU devices (tests, CPU clusters)."""

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None
    cpu_collectives: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "DistributedConfig":
        """From MEMGEN_COORDINATOR / MEMGEN_NUM_PROCESSES / MEMGEN_PROCESS_ID / MEMGEN_LOCAL_DEVICE_IDS (comma
        list), falling back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; `overrides` that are
        not None (e.g. from CLI flags) win."""
        env = os.environ if environ is None else environ

        def read(memgen_name: str, jax_name: str | None) -> str | None:
            value = env.get(memgen_name) or (env.get(jax_name) if jax_name else None)
            return value.strip() if value else None

        def as_int(name: str, value: str | None, default: int) -> int:
            if value is None:
                return default
            try:
                return int(value)
            except ValueError:
                raise MeshError(f"{name}={value!r} is not an integer; set it to a whole number") from None

        devices = read(ENV_LOCAL_DEVICE_IDS, None)
        values: dict[str, Any] = {
            "coordinator_address": read(ENV_COORDINATOR, JAX_ENV["coordinator_address"]),
            "num_processes": as_int(ENV_NUM_PROCESSES, read(ENV_NUM_PROCESSES, JAX_ENV["num_processes"]), 1),
            "process_id": as_int(ENV_PROCESS_ID, read(ENV_PROCESS_ID, JAX_ENV["process_id"]), 0),
            "local_device_ids": (tuple(as_int(ENV_LOCAL_DEVICE_IDS, d, 0) for d in devices.split(","))
                                 if devices else None),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def check(self) -> None:
        if self.num_processes < 1:
            raise MeshError(f"num_processes must be at least 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise MeshError(f"process_id {self.process_id} is outside 0..{self.num_processes - 1}; give each host "
                            f"a distinct id below {ENV_NUM_PROCESSES}")
        if self.num_processes > 1 and not self.coordinator_address:
            raise MeshError(f"a {self.num_processes}-process run needs a coordinator address: set "
                            f"{ENV_COORDINATOR}=HOST:PORT of process 0 on every host")


def initialize(config: DistributedConfig) -> bool:
    """Join the multi-host run `config` describes (`jax.distributed.initialize`); a no-op returning False for one
    process. Call it before anything touches a device. Returns True when a distributed runtime was started."""
    config.check()
    if config.num_processes == 1:
        return False
    if config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes, process_id=config.process_id,
                               local_device_ids=list(config.local_device_ids) if config.local_device_ids else None)
    return True


# --------------------------------------------------------------------------------------------- per-host data
def host_local_batch_slice(global_batch: int, process_index: int | None = None,
                           process_count: int | None = None) -> slice:
    """The rows of a global batch of `global_batch` rows that host `process_index` loads: contiguous, equal
    blocks, in process order (how `make_global_batch` lays them out for a batch sharded over data x fsdp)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch % process_count:
        raise MeshError(f"the global batch of {global_batch} rows does not split evenly over {process_count} "
                        f"hosts; make it a multiple of {process_count}")
    rows = global_batch // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


def check_host_rows(held: Sequence[slice], global_batch: int, process_index: int, process_count: int) -> None:
    """The rows this host's devices hold (`held`, one slice per local device) must be exactly the block
    `host_local_batch_slice` gives it; otherwise its local rows would land on the wrong devices."""
    expected = host_local_batch_slice(global_batch, process_index, process_count)
    start = min(s.start or 0 for s in held)
    stop = max(global_batch if s.stop is None else s.stop for s in held)
    if (start, stop) != (expected.start, expected.stop):
        raise MeshError(f"host {process_index}'s devices hold batch rows {start}:{stop}, not its block "
                        f"{expected.start}:{expected.stop}; shard the batch axis over mesh axes that split it "
                        f"into a multiple of {process_count} blocks (data x fsdp), or feed the full batch")


def batch_spec(mesh: Mesh, shape: Sequence[int]) -> PartitionSpec:
    """The batch placement of `model.sharding`: leading axis over data x fsdp where they divide it."""
    from model.sharding import batch_sharding
    return batch_sharding(mesh, tuple(shape)).spec


def make_global_batch(local_arrays: Any, mesh: Mesh, spec: PartitionSpec | None = None) -> Any:
    """A pytree of global `jax.Array`s from this host's rows (`local_arrays`, leading axis b = B /
    process_count, as `host_local_batch_slice` cut them), sharded by `spec` (default: the batch placement).

    Each host must hold exactly the rows its devices need: with the default placement the leading axis must be
    split by data x fsdp into at least as many blocks as there are hosts (mesh devices are in process order)."""
    def place(local):
        local = np.asarray(local)
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        sharding = NamedSharding(mesh, batch_spec(mesh, global_shape) if spec is None else spec)
        held = [index[0] for index in sharding.addressable_devices_indices_map(global_shape).values()]
        check_host_rows(held, global_shape[0], jax.process_index(), jax.process_count())
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    return jax.tree.map(place, local_arrays)


def place_tree(tree: Any, shardings: Any) -> Any:
    """Every array of `tree` placed on its sharding in `shardings` (a tree of the same structure, or one sharding
    for every leaf) without an XLA program per leaf. An array already there is returned as it is; one spread over
    several processes is moved with `jax.device_put`, as is one held on this process's accelerators in a
    single-process run (it stays on the device). Any other value (numpy, Python scalars, arrays in CPU memory)
    is cut on the host into the shards this process's devices hold (`jax.make_array_from_callback`; on a mesh
    over several processes every process must pass the same value): in CPU memory that is a copy, where an eager
    `jax.device_put` of a device array onto a multi-device layout compiles a slicing program for every shape and
    sharding (an identity program across processes), ~1,500 compilations in one multi-host test
    (docs/benchmarks.md)."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def place(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
        if isinstance(x, jax.Array):
            if x.sharding == sharding and x.committed:
                return x
            stays_on_device = jax.process_count() == 1 and x.is_fully_addressable and any(
                device.platform != "cpu" for device in x.devices())
            if not x.is_fully_addressable or stays_on_device or jax.dtypes.issubdtype(x.dtype,
                                                                                        jax.dtypes.prng_key):
                return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree, shardings)


def jit_onto(fn: Any, shardings: Any) -> Any:
    """``jax.jit(fn, out_shardings=shardings)``, memoised on ``fn`` (a stable object: a module-level or memoised
    function) and the shardings, so that code building the same state for several runs in one process (a
    notebook, a sweep, the tests) traces and compiles it once."""
    leaves, treedef = jax.tree.flatten(shardings)
    return _jit_onto(fn, treedef, tuple(leaves))


@functools.lru_cache(maxsize=32)
def _jit_onto(fn: Any, treedef: Any, leaves: tuple) -> Any:
    return jax.jit(fn, out_shardings=jax.tree.unflatten(treedef, list(leaves)))


def place_full_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Every array of `tree`, a whole batch that every host holds alike (prompts, images, the PPO / GRPO buffer, a
    held-out set), placed with its leading (batch) axis over data x fsdp where they divide it and the other axes
    replicated (`model.sharding.batch_sharding`), by `place_tree`. Host arrays become device arrays; unchanged
    placement without a mesh."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    from model.sharding import batch_sharding

    def sharding(x: Any) -> NamedSharding:
        shape = np.shape(x)
        return batch_sharding(mesh, shape) if shape else NamedSharding(mesh, PartitionSpec())

    return place_tree(tree, jax.tree.map(sharding, tree))


def host_arrays(tree: Any) -> Any:
    """Every array of `tree` as a host numpy array holding all of it, on every process: arrays spread over several
    processes are gathered (`process_allgather`, a collective: every process must call this with the same tree);
    single-process arrays are copied to the host as they are (`jax.device_get`: other leaves stay as they are)."""
    def fetch(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return jax.device_get(leaf)

    return jax.tree.map(fetch, tree)


def host_params(params: Any) -> Any:
    """The params as host numpy arrays on the primary process (gathered from every host's shards in a multi-host
    run, one array at a time so no host holds two copies; every process must call this), None on the others."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from launch.metrics import is_primary_process

    primary = is_primary_process()

    def gather(leaf: jax.Array) -> np.ndarray | None:
        array = host_arrays(leaf)
        return array if primary else None  # the other processes drop each array at once

    gathered = jax.tree.map(gather, params)
    return gathered if primary else None


def optimizer_state_specs(optimizer: Any, opt_state: Any, param_specs: Any) -> Any:
    """PartitionSpecs for an optax state (arrays or shapes) over params placed by `param_specs` (a tree with the
    params' structure): every per-param leaf (Adam's moments, ...) follows its param, everything else (step
    counts, injected hyperparameters) is replicated."""
    import optax
    return optax.tree_map_params(optimizer, lambda _, spec: spec, opt_state, param_specs,
                                 transform_non_params=lambda _: PartitionSpec(),
                                 is_leaf=lambda x: isinstance(x, PartitionSpec))
