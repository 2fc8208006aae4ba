"""launch.mesh: the one mesh config, multi-host settings from the environment, per-host batches, and the
cache / optimizer-state placements (checked against real placed arrays on 8 CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import model
from launch.mesh import (DistributedConfig, MeshConfig, MeshError, cache_partition_specs, check_host_rows,
                         host_local_batch_slice, initialize, make_global_batch, make_mesh, optimizer_state_specs)


def test_mesh_config_resolves_the_rest_and_rejects_bad_products():
    assert MeshConfig().resolve(8) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert MeshConfig(data=-1, fsdp=2, tensor=1).resolve(8)["data"] == 4
    with pytest.raises(MeshError, match="has 6 devices but 8 are available"):
        MeshConfig(data=1, fsdp=3, tensor=2).resolve(8)
    with pytest.raises(MeshError, match="does not divide 8"):
        MeshConfig(fsdp=-1, tensor=3).resolve(8)
    with pytest.raises(MeshError, match="at most one"):
        MeshConfig(data=-1, fsdp=-1)
    assert MeshConfig.parse("data=2, tensor=4") == MeshConfig(data=2, fsdp=-1, tensor=4)
    assert MeshConfig(data=2, fsdp=1, tensor=4).fixed_device_count(default=8) == 8
    assert MeshConfig(data=1, fsdp=1, tensor=1).fixed_device_count(default=8) == 1
    assert MeshConfig(data=2, fsdp=-1).fixed_device_count(default=16) == 16
    with pytest.raises(MeshError, match="not AXIS=SIZE"):
        MeshConfig.parse("pipeline=2")


def test_make_mesh_has_the_three_auto_axes():
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(MeshError, match="has 4 devices but 8"):
        make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))


def test_distributed_config_from_environment_and_overrides():
    env = {"MEMGEN_COORDINATOR": "10.0.0.1:1234", "MEMGEN_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2",
           "MEMGEN_LOCAL_DEVICE_IDS": "0,1"}
    config = DistributedConfig.from_env(env)
    assert config == DistributedConfig("10.0.0.1:1234", 4, 2, (0, 1))
    assert DistributedConfig.from_env(env, process_id=3, coordinator_address=None).process_id == 3
    jax_only = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert DistributedConfig.from_env(jax_only) == DistributedConfig("h:1", 2, 1)
    assert DistributedConfig.from_env({}) == DistributedConfig()
    with pytest.raises(MeshError, match="MEMGEN_NUM_PROCESSES='two' is not an integer"):
        DistributedConfig.from_env({"MEMGEN_NUM_PROCESSES": "two"})
    with pytest.raises(MeshError, match="needs a coordinator address"):
        initialize(DistributedConfig(num_processes=2, process_id=0))
    with pytest.raises(MeshError, match="outside 0..1"):
        initialize(DistributedConfig("h:1", num_processes=2, process_id=2))
    assert initialize(DistributedConfig()) is False  # one process: nothing to join


def test_host_local_slices_tile_the_global_batch():
    slices = [host_local_batch_slice(12, i, 3) for i in range(3)]
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 12)]
    assert host_local_batch_slice(8) == slice(0, 8)  # this single process
    with pytest.raises(MeshError, match="multiple of 3"):
        host_local_batch_slice(10, 0, 3)
    check_host_rows([slice(4, 6), slice(6, 8)], 12, 1, 3)  # host 1 of 3 holds rows 4:8
    with pytest.raises(MeshError, match="hold batch rows 0:12, not its block 4:8"):
        check_host_rows([slice(None), slice(None)], 12, 1, 3)  # batch axis replicated: every host holds all


def test_make_global_batch_places_rows_by_the_batch_rule():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rows = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    batch = make_global_batch({"input_ids": rows[host_local_batch_slice(8)]}, mesh)
    ids = batch["input_ids"]
    assert ids.sharding.spec == PartitionSpec(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(ids), rows)
    assert ids.addressable_shards[0].data.shape == (2, 5)


def test_cache_and_optimizer_specs_follow_the_rules():
    config = model.preset("tiny")
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    cache = jax.eval_shape(lambda: model.init_cache(config, 4, 16, num_images=1))
    specs = cache_partition_specs(cache, mesh)
    assert specs.self_k == PartitionSpec(None, ("data", "fsdp"), None, "tensor", None)
    assert specs.cross_v == PartitionSpec(None, ("data", "fsdp"), None, "tensor", None)
    assert specs.index == PartitionSpec()
    params = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    optimizer = optax.adamw(1e-3)
    state = jax.eval_shape(optimizer.init, params)
    opt_specs = optimizer_state_specs(optimizer, state, {"w": PartitionSpec("fsdp", None)})
    assert opt_specs[0].mu["w"] == PartitionSpec("fsdp", None)
    assert opt_specs[0].nu["w"] == PartitionSpec("fsdp", None)
    assert opt_specs[0].count == PartitionSpec()
    # the specs are usable as real placements
    jax.device_put(jnp.zeros((8, 4)), NamedSharding(mesh, opt_specs[0].mu["w"]))


def test_the_cli_joins_the_hosts_its_flags_or_environment_name(monkeypatch, capsys):
    """`memgen [--coordinator A --num-processes N --process-id I] COMMAND` starts jax.distributed before the
    command (flags over MEMGEN_* variables); one process starts nothing; a bad rank stops with one sentence."""
    from launch.cli import main

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    for name in ("MEMGEN_COORDINATOR", "MEMGEN_NUM_PROCESSES", "MEMGEN_PROCESS_ID", "JAX_COORDINATOR_ADDRESS",
                 "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    plan = ["plan", "--model", "tiny", "--mesh", "fsdp=1", "--devices", "1"]
    assert main(plan) == 0 and calls == []
    monkeypatch.setenv("MEMGEN_COORDINATOR", "10.0.0.1:29500")
    monkeypatch.setenv("MEMGEN_NUM_PROCESSES", "2")
    monkeypatch.setenv("MEMGEN_PROCESS_ID", "1")
    assert main(plan) == 0
    assert calls == [dict(coordinator_address="10.0.0.1:29500", num_processes=2, process_id=1,
                          local_device_ids=None)]
    assert main(["--coordinator", "10.0.0.2:1234", "--process-id", "0", *plan]) == 0
    assert calls[-1]["coordinator_address"] == "10.0.0.2:1234" and calls[-1]["process_id"] == 0
    capsys.readouterr()
    assert main(["--process-id", "5", *plan]) == 2 and len(calls) == 2  # refused before initialising
    assert "process_id 5 is outside 0..1" in capsys.readouterr().err


def _backend_compiles(run):
    """(run()'s result, how many XLA programs were compiled while it ran)."""
    from jax._src import dispatch, monitoring

    compiled = []
    listener = lambda event, duration, **_: compiled.append(event) if event == dispatch.BACKEND_COMPILE_EVENT else None  # noqa: E731,E501
    monitoring.register_event_duration_secs_listener(listener)
    try:
        return run(), len(compiled)
    finally:
        monitoring.unregister_event_duration_listener(listener)


def test_place_tree_places_host_and_device_values_without_compiling():
    """Numpy arrays, CPU device arrays, scalars and a PRNG key onto an fsdp x tensor mesh: the values and the
    shardings asked for, with no XLA program (an eager device_put of the device arrays compiles one per shape)."""
    from launch.mesh import place_tree

    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    rng = np.random.default_rng(0)
    host = {"a": rng.normal(size=(16, 40)).astype(np.float32), "b": rng.integers(0, 9, (24, 6)).astype(np.int32),
            "s": np.float32(2.5)}
    device = {"a": jnp.asarray(rng.normal(size=(32, 56)), jnp.float32), "b": jnp.arange(48, dtype=jnp.int32)}
    specs = {"a": PartitionSpec("fsdp", "tensor"), "b": PartitionSpec("fsdp"), "s": PartitionSpec()}
    shardings = {"host": {k: NamedSharding(mesh, v) for k, v in specs.items()},
                 "device": {k: NamedSharding(mesh, specs[k]) for k in device}}
    placed, compiles = _backend_compiles(lambda: place_tree({"host": host, "device": device}, shardings))
    assert compiles == 0
    for group, values in (("host", host), ("device", device)):
        for name, value in values.items():
            assert placed[group][name].sharding == shardings[group][name] and placed[group][name].committed
            np.testing.assert_array_equal(np.asarray(placed[group][name]), np.asarray(value))
    again = place_tree(placed, shardings)  # already there: the same arrays
    assert all(x is y for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(placed)))
    key = place_tree(jax.random.key(3), NamedSharding(mesh, PartitionSpec()))
    assert jax.random.key_data(key).tolist() == jax.random.key_data(jax.random.key(3)).tolist()
    # the counter sees what place_tree avoids: device_put of device arrays onto a split layout compiles
    _, eager = _backend_compiles(lambda: jax.block_until_ready(jax.device_put(
        jnp.ones((8, 72)), NamedSharding(mesh, PartitionSpec("fsdp", "tensor")))))
    assert eager > 0


@pytest.mark.parametrize("source", ["preset", "directory"])
def test_load_model_onto_a_mesh_matches_the_plain_load(source, tmp_path):
    """`load_model(..., mesh=)` on a 2 x 2 x 2 mesh, from the tiny preset (its jitted init with sharded outputs) and
    from a Hugging Face directory with a value head (each leaf placed as read): the values of the plain load,
    bit for bit, every leaf on the mesh by model.sharding's rules."""
    from launch.model_source import load_model, save_policy
    from launch.rl_common import load_policy
    from model.sharding import param_shardings

    spec = "tiny"
    if source == "directory":
        policy = load_policy("tiny", seed=5)
        save_policy(tmp_path / "policy", policy, jax.device_get(policy.params))
        spec = str(tmp_path / "policy")
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    plain, placed = load_model(spec, seed=5), load_model(spec, seed=5, mesh=mesh)
    assert ("value_head" in placed.params) == (source == "directory")
    want = param_shardings(placed.config, mesh, placed.params)
    for (path, got), expected, sharding in zip(jax.tree_util.tree_leaves_with_path(placed.params),
                                               jax.tree.leaves(plain.params), jax.tree.leaves(want)):
        assert got.sharding == sharding, path
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=str(path))
    assert any(leaf.sharding.spec != PartitionSpec(*[None] * leaf.ndim) for leaf in jax.tree.leaves(placed.params))
