"""The SFT data order is a pure function of (seed, position)."""

import numpy as np
import pytest

from sft.data_order import batch_example_indices, epoch_permutation, position_to_example


def test_each_epoch_is_a_permutation_and_epochs_differ():
    first, second = epoch_permutation(7, 0, 50), epoch_permutation(7, 1, 50)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch_permutation(7, 0, 50))
    assert not np.array_equal(first, epoch_permutation(8, 0, 50))


def test_batches_tile_the_position_stream_across_epoch_boundaries():
    seed, n, batch = 3, 10, 4
    stream = np.concatenate([batch_example_indices(seed, step, batch, n) for step in range(7)])
    expected = np.concatenate([epoch_permutation(seed, e, n) for e in range(3)])[:28]
    np.testing.assert_array_equal(stream, expected)
    for position in (0, 9, 10, 27):
        epoch, index, example = position_to_example(seed, position, n)
        assert (epoch, index) == divmod(position, n) and example == stream[position]


def test_empty_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        epoch_permutation(0, 0, 0)
