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


def test_length_grouping_sorts_within_chunks_and_stays_a_permutation():
    from sft.data_order import bucket_for, epoch_order, length_buckets

    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, size=103)
    order = epoch_order(3, 1, 103, lengths, group=16)
    np.testing.assert_array_equal(np.sort(order), np.arange(103))  # every example once per epoch
    np.testing.assert_array_equal(order, epoch_order(3, 1, 103, lengths, group=16))  # a pure function
    plain = epoch_permutation(3, 1, 103)
    for start in range(0, 103, 16):  # the same examples per chunk as the plain order, sorted by length
        chunk = order[start:start + 16]
        assert set(chunk) == set(plain[start:start + 16])
        assert np.all(np.diff(lengths[chunk]) >= 0)
    stream = np.concatenate([batch_example_indices(3, step, 8, 103, lengths, 16) for step in range(30)])
    np.testing.assert_array_equal(stream[103:206], epoch_order(3, 1, 103, lengths, 16))
    np.testing.assert_array_equal(epoch_order(3, 1, 103), plain)  # no lengths: the plain permutation

    buckets = length_buckets(np.array([85] * 85 + [200] * 15), 2, 16)
    assert buckets == (96, 208)
    assert bucket_for(np.array([60, 96]), buckets) == 96 and bucket_for(np.array([97, 20]), buckets) == 208
    assert length_buckets(lengths, 1, 64)[-1] >= lengths.max()


def test_the_packed_layout_keeps_the_data_order_and_fills_rows_in_turn():
    from sft.data_order import epoch_order, packed_layout

    lengths = np.array([3, 5, 2, 4, 4, 1, 6, 2])
    layout = packed_layout(7, steps=6, rows=2, row_length=8, lengths=lengths)
    assert packed_layout(7, steps=3, rows=2, row_length=8, lengths=lengths) == layout[:3]  # a pure prefix
    stream = [i for batch in layout for row in batch for i in row]
    order = np.concatenate([epoch_order(7, e, len(lengths)) for e in range(4)])
    assert stream == order[:len(stream)].tolist()  # nothing skipped or reordered, epochs back to back
    for batch in layout:
        assert len(batch) == 2 and all(row and sum(lengths[row]) <= 8 for row in batch)
    for batch, following in zip(layout, layout[1:]):  # next fit: a row closes only when the next example won't fit
        for row, nxt in zip(batch, batch[1:] + [following[0]]):
            assert sum(lengths[row]) + lengths[nxt[0]] > 8
    images = np.array([1, 1, 0, 1, 1, 1, 1, 1])
    for batch in packed_layout(0, 4, 2, 100, lengths, images, num_image_slots=2):
        assert all(sum(images[row]) <= 2 for row in batch)
    with pytest.raises(ValueError, match="more than the packed row length 5"):
        packed_layout(0, 1, 2, 5, lengths)
