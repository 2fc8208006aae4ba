"""The SFT data order as a pure function of (seed, position): one seeded permutation of the examples per epoch,
and a map from a run's global example position to (epoch, index in epoch, example). A resumed run that knows
its step knows exactly which examples come next; nothing about the order is stored. numpy only.

Batches are consecutive positions (``step * batch_size + i``) and may straddle an epoch boundary, so every
batch is full and the number of steps need not divide the epoch.

Length grouping (optional, like Hugging Face's ``group_by_length``): given the examples' token lengths, each
epoch's permutation is cut into chunks of ``group`` positions and each chunk is sorted by length (stable), so
the batches inside a chunk hold examples of similar length and can be padded to a shorter bucket
(``length_buckets`` / ``bucket_for``). The order stays a pure function of (seed, epoch).
"""

from __future__ import annotations

import numpy as np


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of ``epoch``: a permutation of ``range(num_examples)`` drawn from
    ``numpy.random.Generator`` seeded with (seed, epoch), independent of every other epoch."""
    if num_examples < 1:
        raise ValueError(f"the SFT dataset is empty (num_examples={num_examples}); generate expert data first")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_order(seed: int, epoch: int, num_examples: int, lengths: np.ndarray | None = None,
                group: int = 0) -> np.ndarray:
    """The examples of ``epoch`` in training order: ``epoch_permutation``, or with ``lengths`` (num_examples,) and
    ``group`` > 0 that permutation sorted by length within consecutive chunks of ``group`` positions."""
    order = epoch_permutation(seed, epoch, num_examples)
    if lengths is None or group <= 0:
        return order
    lengths = np.asarray(lengths)
    if lengths.shape != (num_examples,):
        raise ValueError(f"lengths must have one entry per example ({num_examples}), got shape {lengths.shape}")
    for start in range(0, num_examples, group):
        chunk = order[start:start + group]
        order[start:start + group] = chunk[np.argsort(lengths[chunk], kind="stable")]
    return order


def position_to_example(seed: int, position: int, num_examples: int) -> tuple[int, int, int]:
    """``(epoch, index_in_epoch, example_index)`` of the run's ``position``-th example (0-based)."""
    epoch, index = divmod(position, num_examples)
    return epoch, index, int(epoch_permutation(seed, epoch, num_examples)[index])


def batch_example_indices(seed: int, step: int, batch_size: int, num_examples: int,
                          lengths: np.ndarray | None = None, group: int = 0) -> np.ndarray:
    """The example indices (batch_size,) of batch ``step`` (0-based); ``lengths``/``group`` as `epoch_order`."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, indices = np.divmod(positions, num_examples)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        out[chosen] = epoch_order(seed, int(epoch), num_examples, lengths, group)[indices[chosen]]
    return out


def length_buckets(lengths: np.ndarray, count: int, multiple: int) -> tuple[int, ...]:
    """``count`` padded lengths for a dataset (ascending, each a multiple of ``multiple``): the length quantiles
    at 1/count, 2/count, ..., 1 rounded up, so the longest example always fits the last bucket."""
    lengths = np.asarray(lengths)
    quantiles = np.quantile(lengths, np.arange(1, count + 1) / count, method="higher")
    return tuple(sorted({int(-(-int(q) // multiple) * multiple) for q in quantiles}))


def bucket_for(batch_lengths: np.ndarray, buckets: tuple[int, ...]) -> int:
    """The shortest bucket that holds every example of a batch."""
    longest = int(np.max(batch_lengths))
    return next(bucket for bucket in buckets if bucket >= longest)
