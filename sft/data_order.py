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


def packed_layout(seed: int, steps: int, rows: int, row_length: int, lengths: np.ndarray,
                  images: np.ndarray | None = None, num_image_slots: int = 0) -> list[list[list[int]]]:
    """The packed data order of a whole run: for each of ``steps`` batches, ``rows`` lists of example indices.
    The examples come in the order of ``epoch_order`` (epochs back to back) and fill the rows in turn (next fit:
    an example that does not fit the current row's remaining ``row_length`` tokens, or its image slots, starts
    the next row; when the batch's rows are full it starts the next batch), so the order is never changed and a
    step's examples are a pure function of (seed, step, lengths). A batch consumes a varying number of examples;
    a resumed run recomputes the layout from the start (host-side, cheap)."""
    lengths = np.asarray(lengths)
    num_examples = len(lengths)
    images = np.zeros(num_examples, np.int64) if images is None else np.asarray(images)
    if num_examples and int(lengths.max()) > row_length:
        raise ValueError(f"an example has {int(lengths.max())} tokens, more than the packed row length "
                         f"{row_length}; raise it")
    if num_examples and int(images.max()) > num_image_slots and int(images.max()) > 0:
        raise ValueError(f"an example has {int(images.max())} images, more than the row's {num_image_slots} slots")
    layout: list[list[list[int]]] = []
    epoch, order, index = 0, epoch_order(seed, 0, num_examples), 0
    pending: int | None = None
    for _ in range(steps):
        batch: list[list[int]] = [[]]
        tokens_left, slots_left = row_length, num_image_slots
        while True:
            if pending is None:
                if index == num_examples:
                    epoch, index = epoch + 1, 0
                    order = epoch_order(seed, epoch, num_examples)
                pending, index = int(order[index]), index + 1
            size, count = int(lengths[pending]), int(images[pending])
            if size > tokens_left or count > slots_left:
                if len(batch) == rows:
                    break  # the batch is full; `pending` opens the next one
                batch.append([])
                tokens_left, slots_left = row_length, num_image_slots
            batch[-1].append(pending)
            tokens_left, slots_left = tokens_left - size, slots_left - count
            pending = None
        layout.append(batch)
    return layout
