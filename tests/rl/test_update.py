"""The shared epochs x minibatches loop: shuffling covers every item once per epoch, and the freezing recipe
(stop_gradient in the loss + set_to_zero in the optimizer) leaves frozen params and their optimizer state empty."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl.update import init_train_state, minibatch_indices, minibatch_update


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
