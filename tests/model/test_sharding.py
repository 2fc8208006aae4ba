"""Sharding rules and the sharded forward: every leaf has logical axes of its rank, the rules skip mesh axes that
do not divide a dim, and the forward sharded over 8 CPU devices equals the unsharded one (text and images)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import model
from model.sharding import logical_axes, make_mesh, param_shardings, partition_spec, shard_params, sharded_forward
from tests.model.mllama_reference import reference
from tests.model.test_forward import image_batch


@pytest.fixture(scope="module")
def ref():
    _, _, config, params = reference("tiny")
    return config, {**params, "value_head": model.init_value_head(jax.random.key(0), config)}


def test_every_leaf_has_axes_of_its_rank():
    config = model.preset("11b")
    shapes = model.param_shapes(config, value_head=True)
    axes = logical_axes(config, shapes)
    vocabulary = {"layers", "embed", "mlp", "heads", "kv_heads", "vocab", None}
    flat_shapes = jax.tree.leaves(shapes)
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat_shapes) == len(flat_axes)
    for shape, names in zip(flat_shapes, flat_axes):
        assert len(shape.shape) == len(names) and set(names) <= vocabulary
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    shardings = param_shardings(config, mesh, shapes)
    q = shardings["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.spec == P(None, "fsdp", "tensor")
    assert shardings["language_model"]["lm_head"]["kernel"].spec == P("fsdp", "tensor")


def test_partition_spec_skips_axes_that_do_not_fit():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    assert partition_spec((6, 8), ("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert partition_spec((5, 6), ("embed", "mlp"), mesh) == P(None, None)  # 5 % 2, 6 % 4
    assert partition_spec((4,), ("layers",), mesh) == P(None)
    # one mesh axis is never used twice in one array
    assert partition_spec((8, 8), ("embed", "embed"), mesh) == P("fsdp", None)
    # several mesh axes for one dim, and axes missing from the mesh are skipped
    rules = {"embed": ("data", "fsdp", "tensor")}
    assert partition_spec((16,), ("embed",), mesh, rules) == P(("fsdp", "tensor"))


@pytest.fixture(scope="module")
def unsharded(ref):
    config, params = ref
    inputs = image_batch(config, np.random.default_rng(0), [[2], [1]], 8, [[2], [0]], pad=[0, 3])
    return inputs, np.asarray(jax.jit(model.forward, static_argnums=1)(params, config, **inputs))


@pytest.mark.parametrize("axes", [{"fsdp": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2}],
                         ids=["fsdp2-tensor4", "data2-fsdp2-tensor2"])
def test_sharded_forward_equals_unsharded(ref, unsharded, axes):
    """Over the 8 CPU devices: fsdp 2 x tensor 4 (the batch over fsdp, heads / mlp / vocab 4-way) and
    data 2 x fsdp 2 x tensor 2 (every mesh axis name in use)."""
    config, params = ref
    inputs, expected = unsharded
    mesh = make_mesh(axes)
    sharded = shard_params(params, config, mesh)
    q = sharded["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P(None, "fsdp", "tensor") and q.sharding.mesh.shape["tensor"] == axes["tensor"]
    assert len(sharded["language_model"]["lm_head"]["kernel"].sharding.device_set) == 8
    run = sharded_forward(config, mesh, sharded)
    logits = run(sharded, **inputs)
    assert logits.sharding.spec[0] == ("data" if "data" in axes else "fsdp")
    valid = inputs["attention_mask"] == 1
    np.testing.assert_allclose(np.asarray(logits)[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_activation_constraints_only_under_a_context_mesh(ref):
    """constrain_batch puts the layer inputs' batch axis on ("data", "fsdp") when traced under jax.set_mesh and
    is a no-op without one (the lowered forward then has no sharding constraint at all)."""
    from model.sharding import constrain_batch
    config, params = ref
    ids = np.zeros((4, 8), np.int32)
    lower = lambda: jax.jit(model.forward, static_argnums=1).lower(params, config, ids).as_text()  # noqa: E731
    assert "sharding_constraint" not in lower()
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        text = lower()
        spec = jax.jit(lambda x: constrain_batch(x)).lower(np.zeros((4, 3, 5), np.float32)).as_text()
        odd = jax.jit(lambda x: constrain_batch(x)).lower(np.zeros((3, 5), np.float32)).as_text()
    # embedding output + 4 text layer inputs (tiny: 2 self, 2 cross; the scan body holds one constraint)
    assert text.count("sdy.sharding_constraint") >= 3
    assert '<@mesh, [{"data", "fsdp"}, {}, {}]>' in spec  # batch over data x fsdp, the rest replicated
    assert "sharding_constraint" not in odd  # 3 rows: neither data nor fsdp divides it, nothing to constrain


def test_embedding_lookups_keep_their_gradients_sharded(ref, unsharded, capfd):
    """The token and tile embedding lookups are constrained to their tables' hidden sharding (constrain_lookup), so
    the backward pass takes the rows' cotangents to the tables' layout without XLA's "involuntary full
    rematerialization" (replicating the whole cotangent on every device first), which the tiny model's gradient
    over 8 rows with images on data 2 x fsdp 2 x tensor 2 hit before (the small model's SFT step 12 times, a GP-VL
    PPO update 7)."""
    from model.sharding import constrain_lookup
    config, params = ref
    inputs = {name: np.concatenate([x] * 4) for name, x in unsharded[0].items()}  # 8 rows: over data x fsdp
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = shard_params(params, config, mesh)

    def loss(params, inputs):
        return jax.numpy.mean(model.forward(params, config, **inputs) ** 2)

    with jax.set_mesh(mesh):
        jax.jit(jax.grad(loss)).lower(sharded, inputs).compile()
        spec = jax.jit(constrain_lookup).lower(np.zeros((4, 3, 8), np.float32)).as_text()
        odd = jax.jit(constrain_lookup).lower(np.zeros((4, 3, 5), np.float32)).as_text()
    assert "Involuntary full rematerialization" not in capfd.readouterr().err
    assert '<@mesh, [{"data"}, {}, {"fsdp"}]>' in spec  # the rows over data, their hidden dim as the table's
    assert '<@mesh, [{"data", "fsdp"}, {}, {}]>' in odd  # fsdp does not divide 5: the rows over data x fsdp
