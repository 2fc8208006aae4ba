"""The SFT objective: next-token cross-entropy over supervised (assistant-content) tokens.

Axes: B batch, S sequence, V vocabulary. The logits at position t predict ``input_ids[t + 1]``; ``loss_mask[b, t]``
is 1 when token t is a supervised TARGET (an assistant-content token), so the loss at position t is weighted by
``loss_mask[b, t + 1]`` and the first position is never a target. The log-softmax runs in float32 whatever the
logits' dtype, because bf16 log-probabilities of a 128k vocabulary lose most of their mantissa.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def sft_loss_sums(logits: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Un-normalised sums over one batch: ``nll_sum`` (summed negative log-likelihood of the supervised targets),
    ``tokens`` (number of supervised targets) and ``correct`` (targets that are the arg-max prediction), all
    float32 scalars. Sums, not means, so that microbatches and evaluation batches add up exactly.

    logits: (B, S, V); batch["input_ids"]: (B, S) int; batch["loss_mask"]: (B, S), 1 on target tokens.
    """
    input_ids = batch["input_ids"]
    loss_mask = batch["loss_mask"]
    if logits.shape[:2] != input_ids.shape or loss_mask.shape != input_ids.shape:
        raise ValueError(f"logits {logits.shape[:2]}, input_ids {input_ids.shape} and loss_mask {loss_mask.shape} "
                         "must agree on (batch, sequence); pad them to the same bucket")
    predicting = logits[:, :-1].astype(jnp.float32)          # (B, S-1, V): positions that have a next token
    targets = input_ids[:, 1:]                                # (B, S-1)
    weights = loss_mask[:, 1:].astype(jnp.float32)            # the mask is on the target token
    log_probs = jax.nn.log_softmax(predicting, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    # where(), not multiply: a masked position's log-prob may be -inf (e.g. a padded token id out of the
    # model's support), and 0 * -inf would poison the sum with NaN.
    nll_sum = -jnp.sum(jnp.where(weights > 0, target_log_probs * weights, 0.0))
    correct = jnp.sum(jnp.where(jnp.argmax(predicting, axis=-1) == targets, weights, 0.0))
    return {"nll_sum": nll_sum, "tokens": jnp.sum(weights), "correct": correct}


def metrics_from_sums(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Token-mean loss and accuracy from summed counts (several batches' sums may be added first). A batch with
    no supervised token has loss 0 and accuracy 0, not NaN."""
    denominator = jnp.maximum(sums["tokens"], 1.0)
    return {"loss": sums["nll_sum"] / denominator, "tokens": sums["tokens"],
            "accuracy": sums["correct"] / denominator}


def sft_loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean next-token cross-entropy over the supervised tokens of the batch.

    Returns ``(loss, metrics)`` with metrics ``loss``, ``tokens`` (supervised targets) and ``accuracy``
    (share of supervised targets predicted by arg-max). Shapes as in :func:`sft_loss_sums`.
    """
    metrics = metrics_from_sums(sft_loss_sums(logits, batch))
    return metrics["loss"], metrics
