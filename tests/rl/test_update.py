"""The shared epochs x minibatches loop: shuffling covers every item once per epoch, the freezing recipe
(stop_gradient in the loss + set_to_zero in the optimizer) leaves frozen params and their optimizer state empty,
padding is skipped, and arrays shared by several items are read as if every item held them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl.update import (SHARED, SHARED_INDEX, buffer_size, init_train_state, minibatch_indices, minibatch_update,
                       take_items)


def test_each_epoch_is_a_permutation_and_epochs_differ():
    indices = np.asarray(minibatch_indices(jax.random.key(0), 12, epochs=3, minibatch_size=4))
    assert indices.shape == (3, 3, 4)
    for epoch in indices:
        np.testing.assert_array_equal(np.sort(epoch.reshape(-1)), np.arange(12))
    assert not np.array_equal(indices[0], indices[1])


def test_frozen_params_stay_put_and_hold_no_optimizer_state():
    rng = np.random.default_rng(0)
    params = {"trainable": jnp.asarray(rng.normal(size=3), jnp.float32),
              "frozen": jnp.asarray(rng.normal(size=3), jnp.float32)}
    buffer = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=8))}

    def loss_fn(p, mb):
        weights = p["trainable"] + jax.lax.stop_gradient(p["frozen"])
        loss = jnp.mean((mb["x"] @ weights - mb["y"]) ** 2)
        return loss, {"mse": loss}

    optimizer = optax.multi_transform({"train": optax.adam(0.1), "freeze": optax.set_to_zero()},
                                      {"trainable": "train", "frozen": "freeze"})
    state = init_train_state(params, optimizer)
    frozen_state_leaves = jax.tree_util.tree_leaves(state.opt_state.inner_states["freeze"])
    assert frozen_state_leaves == []
    new_state, metrics = jax.jit(lambda s, b, r: minibatch_update(
        s, b, r, loss_fn=loss_fn, optimizer=optimizer, epochs=2, minibatch_size=4))(state, buffer, jax.random.key(1))
    np.testing.assert_array_equal(new_state.params["frozen"], params["frozen"])
    assert not np.allclose(new_state.params["trainable"], params["trainable"])
    assert int(new_state.step) == 4
    assert set(metrics) == {"mse", "loss", "grad_norm"}


def _regression(seed: int, items: int, valid_items: int):
    """Params, a buffer of `items` rows of which `valid_items` (at random places) are valid, and a masked MSE loss
    that returns its valid count as a metric."""
    rng = np.random.default_rng(seed)
    valid = np.zeros(items, bool)
    valid[rng.permutation(items)[:valid_items]] = True
    buffer = {"x": jnp.asarray(rng.normal(size=(items, 3)), jnp.float32),
              "y": jnp.asarray(rng.normal(size=items), jnp.float32), "valid": jnp.asarray(valid)}

    def loss_fn(w, mb):
        errors = jnp.where(mb["valid"], (mb["x"] @ w - mb["y"]) ** 2, 0.0)
        count = jnp.sum(mb["valid"].astype(jnp.float32))
        loss = jnp.sum(errors) / jnp.maximum(count, 1.0)
        return loss, {"valid_rows": count}

    return jnp.asarray(rng.normal(size=3), jnp.float32), buffer, loss_fn


def test_skipping_padding_with_every_item_valid_is_the_plain_loop():
    params, buffer, loss_fn = _regression(0, 12, 12)
    optimizer = optax.adam(0.05)
    run = jax.jit(lambda s, b, r, skip: minibatch_update(s, b, r, loss_fn=loss_fn, optimizer=optimizer, epochs=3,
                                                         minibatch_size=4, valid=b["valid"] if skip else None),
                  static_argnums=3)
    state = init_train_state(params, optimizer)
    plain, plain_metrics = run(state, buffer, jax.random.key(3), False)
    skipping, skipping_metrics = run(state, buffer, jax.random.key(3), True)
    assert int(plain.step) == int(skipping.step) == 9
    np.testing.assert_allclose(skipping.params, plain.params, rtol=1e-6)
    for name in plain_metrics:
        np.testing.assert_allclose(skipping_metrics[name], plain_metrics[name], rtol=1e-5)


def test_skipping_padding_draws_minibatches_from_the_valid_items_only():
    """10 valid items of 24, minibatches of 4: ceil(10 / 4) = 3 steps per epoch (not 6), each epoch's valid items
    in the order of its permutation (the plain loop's), the last minibatch 2 valid + 2 padding; the same params as
    a Python loop of SGD steps over those minibatches, and the metrics are means over the 6 steps taken."""
    params, buffer, loss_fn = _regression(1, 24, 10)
    optimizer = optax.sgd(0.1)
    rng = jax.random.key(5)
    state, metrics = jax.jit(lambda s, b: minibatch_update(s, b, rng, loss_fn=loss_fn, optimizer=optimizer,
                                                           epochs=2, minibatch_size=4, valid=b["valid"]))(
        init_train_state(params, optimizer), buffer)
    assert int(state.step) == 6
    valid = np.asarray(buffer["valid"])
    expected, counts = params, []
    for permutation in np.asarray(minibatch_indices(rng, 24, epochs=2, minibatch_size=24)).reshape(2, 24):
        order = np.concatenate([permutation[valid[permutation]], permutation[~valid[permutation]]])
        for start in range(0, 12, 4):
            minibatch = jax.tree.map(lambda leaf: leaf[order[start:start + 4]], buffer)
            (_, step_metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(expected, minibatch)
            expected, counts = expected - 0.1 * grad, counts + [float(step_metrics["valid_rows"])]
    assert counts == [4, 4, 2] * 2
    np.testing.assert_allclose(state.params, expected, rtol=1e-5)
    assert float(metrics["valid_rows"]) == pytest.approx(np.mean(counts))
    # no valid item: no step, the params as they were
    none = dict(buffer, valid=jnp.zeros(24, bool))
    state, _ = minibatch_update(init_train_state(params, optimizer), none, rng, loss_fn=loss_fn, optimizer=optimizer,
                                epochs=2, minibatch_size=4, valid=none["valid"])
    assert int(state.step) == 0 and np.array_equal(state.params, params)


def test_shared_arrays_are_read_as_if_every_item_held_them():
    """A buffer keeping an array once per group of items (an episode's images, which its K transitions read) under
    SHARED, with each item's row in SHARED_INDEX: its minibatches, and so the update (with skip_padding too), are
    those of the buffer holding a copy per item. The buffer's size counts its items, not the shared rows."""
    params, per_item, loss_fn = _regression(2, 12, 7)
    rng = np.random.default_rng(3)
    episodes = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)  # 4 episodes x 3 transitions
    index = jnp.repeat(jnp.arange(4, dtype=jnp.int32), 3)[rng.permutation(12)]
    copied = dict(per_item, offset=episodes[index])
    shared = dict(per_item, **{SHARED: {"offset": episodes}, SHARED_INDEX: index})
    assert buffer_size(shared) == 12
    picked = jnp.asarray([5, 0, 11, 3])
    for name, value in jax.tree.map(lambda leaf: leaf[picked], copied).items():
        np.testing.assert_array_equal(take_items(shared, picked)[name], value, err_msg=name)
    assert SHARED_INDEX not in take_items(shared, picked)

    def offset_loss(w, mb):
        return loss_fn(w, dict(mb, x=mb["x"] + mb["offset"]))

    optimizer = optax.adam(0.05)
    for skip in (False, True):
        run = jax.jit(lambda s, b: minibatch_update(s, b, jax.random.key(4), loss_fn=offset_loss, optimizer=optimizer,
                                                    epochs=2, minibatch_size=4, valid=b["valid"] if skip else None))
        (a, metrics_a), (b, metrics_b) = run(init_train_state(params, optimizer), copied), run(
            init_train_state(params, optimizer), shared)
        np.testing.assert_array_equal(a.params, b.params)
        assert int(a.step) == int(b.step) == (4 if skip else 6)
        for name in metrics_a:
            np.testing.assert_array_equal(metrics_a[name], metrics_b[name])


def _gathers(jaxpr):
    """Every `gather` equation of a jaxpr and of the jaxprs inside it (scan / while bodies, pjit calls)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "gather":
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _gathers(inner)


def test_with_microbatches_each_microbatch_takes_the_shared_rows_it_reads():
    """Gradient accumulation over a buffer with shared arrays: the update is the one over per-item copies, and the
    shared rows are gathered per microbatch (2 rows at a time), never per minibatch (4): on a mesh XLA gathers
    from a batch-sharded array by a masked gather and an all-reduce of what it takes, a whole copy on every device,
    so a minibatch of images (11B, freeze_vision: 52 MB per transition) would be held at once."""
    params, per_item, _ = _regression(5, 12, 12)
    rng = np.random.default_rng(6)
    episodes = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    index = jnp.repeat(jnp.arange(4, dtype=jnp.int32), 3)[rng.permutation(12)]
    copied = dict(per_item, offset=episodes[index])
    shared = dict(per_item, **{SHARED: {"offset": episodes}, SHARED_INDEX: index})

    def loss_fn(w, mb, totals):  # each microbatch's share of the minibatch's mean
        loss = jnp.sum(((mb["x"] + mb["offset"]) @ w - mb["y"]) ** 2) / totals["items"]
        return loss, {"share": loss}

    optimizer = optax.adam(0.05)
    run = jax.jit(lambda s, b: minibatch_update(
        s, b, jax.random.key(7), loss_fn=loss_fn, optimizer=optimizer, epochs=2, minibatch_size=4, microbatches=2,
        totals_fn=lambda mb: {"items": jnp.asarray(mb["y"].shape[0], jnp.float32)}))
    state = init_train_state(params, optimizer)
    (a, metrics_a), (b, metrics_b) = run(state, copied), run(state, shared)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)
    assert not np.allclose(a.params, params)  # it trained
    taken = [eqn.outvars[0].aval.shape for eqn in _gathers(jax.make_jaxpr(run)(state, shared).jaxpr)
             if eqn.invars[0].aval.shape == episodes.shape]
    assert taken and all(shape[0] == 2 for shape in taken), taken
