"""The SFT data order as a pure function of (seed, position): one seeded permutation of the examples per epoch,
and a map from a run's global example position to (epoch, index in epoch, example). A resumed run that knows
its step knows exactly which examples come next; nothing about the order is stored. numpy only.

Batches are consecutive positions (``step * batch_size + i``) and may straddle an epoch boundary, so every
batch is full and the number of steps need not divide the epoch.
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


def position_to_example(seed: int, position: int, num_examples: int) -> tuple[int, int, int]:
    """``(epoch, index_in_epoch, example_index)`` of the run's ``position``-th example (0-based)."""
    epoch, index = divmod(position, num_examples)
    return epoch, index, int(epoch_permutation(seed, epoch, num_examples)[index])


def batch_example_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """The example indices (batch_size,) of batch ``step`` (0-based)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, indices = np.divmod(positions, num_examples)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        out[chosen] = epoch_permutation(seed, int(epoch), num_examples)[indices[chosen]]
    return out
