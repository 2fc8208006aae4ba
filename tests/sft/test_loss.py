"""sft_loss against a numpy implementation of next-token cross-entropy over masked target tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft import loss as loss_module

# Jitted: one compilation per shape is much cheaper than compiling every eager primitive.
sft_loss = jax.jit(loss_module.sft_loss)
sft_loss_sums = jax.jit(loss_module.sft_loss_sums)


def numpy_reference(logits, input_ids, loss_mask):
    logits = np.asarray(logits, np.float64)
    nll_total, tokens, correct = 0.0, 0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            if not loss_mask[b, t + 1]:
                continue
            row = logits[b, t]
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            nll_total += log_z - row[input_ids[b, t + 1]]
            tokens += 1
            correct += int(np.argmax(row) == input_ids[b, t + 1])
    return nll_total / max(tokens, 1), tokens, correct / max(tokens, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(3, 9, 17)).astype(np.float32)
    input_ids = rng.integers(0, 17, size=(3, 9))
    loss_mask = (rng.random((3, 9)) < 0.6).astype(np.int32)
    loss, metrics = sft_loss(jnp.asarray(logits), {"input_ids": jnp.asarray(input_ids),
                                                    "loss_mask": jnp.asarray(loss_mask)})
    expected_loss, expected_tokens, expected_accuracy = numpy_reference(logits, input_ids, loss_mask)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    assert float(metrics["tokens"]) == expected_tokens
    np.testing.assert_allclose(float(metrics["accuracy"]), expected_accuracy, rtol=1e-6)
    assert float(metrics["loss"]) == float(loss)


def test_mask_refers_to_target_and_first_position_is_never_a_target():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(1, 4, 5)), jnp.float32)
    input_ids = jnp.asarray([[1, 2, 3, 4]])
    only_first = {"input_ids": input_ids, "loss_mask": jnp.asarray([[1, 0, 0, 0]])}
    assert float(sft_loss_sums(logits, only_first)["tokens"]) == 0.0
    only_last = {"input_ids": input_ids, "loss_mask": jnp.asarray([[0, 0, 0, 1]])}
    expected = -np.log(np.exp(np.asarray(logits[0, 2])) / np.exp(np.asarray(logits[0, 2])).sum())[4]
    np.testing.assert_allclose(float(sft_loss(logits, only_last)[0]), expected, rtol=1e-5)


def test_bf16_logits_are_scored_in_fp32_and_empty_mask_is_zero_not_nan():
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=4.0, size=(2, 6, 33)).astype(np.float32)
    input_ids = rng.integers(0, 33, size=(2, 6))
    mask = np.ones((2, 6), np.int32)
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    loss, _ = sft_loss(bf16, {"input_ids": jnp.asarray(input_ids), "loss_mask": jnp.asarray(mask)})
    assert loss.dtype == jnp.float32
    expected, _, _ = numpy_reference(np.asarray(bf16.astype(jnp.float32)), input_ids, mask)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    loss, metrics = sft_loss(jnp.asarray(logits), {"input_ids": jnp.asarray(input_ids),
                                                    "loss_mask": jnp.zeros((2, 6), jnp.int32)})
    assert float(loss) == 0.0 and float(metrics["tokens"]) == 0.0


def test_masked_minus_inf_logit_does_not_poison_the_loss():
    logits = jnp.zeros((1, 3, 4)).at[0, 0, 2].set(-jnp.inf)
    batch = {"input_ids": jnp.asarray([[0, 2, 1]]), "loss_mask": jnp.asarray([[0, 0, 1]])}
    loss, _ = sft_loss(logits, batch)
    np.testing.assert_allclose(float(loss), np.log(4.0), rtol=1e-6)


def test_mismatched_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match="must agree"):
        loss_module.sft_loss(jnp.zeros((1, 3, 4)), {"input_ids": jnp.zeros((1, 4), jnp.int32),
                                        "loss_mask": jnp.zeros((1, 4))})
