"""dtype discipline for optimizers shared by `sft` and `rl`: with bfloat16 params (what a 90B on one host needs) an
optax transformation whose hyperparameters are float32 (they must be: in bf16 Adam's beta2 0.999 rounds to 1.0)
would promote its updates and moments to float32, doubling the optimizer state and changing the state's types
between steps (a `lax.scan` over optimizer steps then refuses to trace)."""

from __future__ import annotations

import jax
import optax


def keep_dtypes(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` whose state keeps the dtypes it was initialised with (Adam's moments in the params' dtype) and whose
    updates have the gradients' dtypes; the arithmetic inside runs in whatever `inner` promotes to. With float32
    params it changes nothing (every cast is to the dtype a value already has)."""

    def update(updates, state, params=None):
        new_updates, new_state = inner.update(updates, state, params)
        return (jax.tree.map(lambda new, grad: new.astype(grad.dtype), new_updates, updates),
                jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state))

    return optax.GradientTransformation(inner.init, update)
