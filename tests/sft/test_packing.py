"""sft.packing: several examples in one row with a block-diagonal causal mask, per-example positions, loss masks
and image slots give every example the NLL it has alone (tiny random model, float32)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from launch.model_source import image_config_of
from model.config import preset
from model.params import init_params
from model.tokenizer import ensure_tokenizer, load_tokenizer
from sft.batches import encoded_lengths, forward_from_batch, sft_batch
from sft.loss import sft_loss
from sft.packing import pack, pack_rows, packed_batch, packed_forward_from_batch
from tasks.general_points import GeneralPointsConfig, expert_conversations, suboptimal_trajectories


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(ensure_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=320))


@pytest.fixture(scope="module")
def model():
    config = preset("tiny")
    return config, init_params(jax.random.PRNGKey(0), config)


def per_segment_nll(logits, batch) -> dict[tuple[int, int], float]:
    """{(row, segment): summed NLL of its supervised targets}, float64 on the host."""
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["loss_mask"])
    segments = np.asarray(batch.get("segment_ids", batch["attention_mask"]))
    out: dict[tuple[int, int], float] = {}
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[b, t + 1]:
                key = (b, int(segments[b, t + 1]))
                out[key] = out.get(key, 0.0) - float(logp[b, t, ids[b, t + 1]])
    return out


def alone(tokenizer, conversations, image_config, model, slots=0):
    """Each example's NLL in its own right-padded row (model.forward)."""
    config, params = model
    length = int(max(encoded_lengths(tokenizer, conversations)))
    batch = sft_batch(tokenizer, conversations, image_config, length=length, num_image_slots=slots)
    logits = jax.jit(functools.partial(forward_from_batch, config=config))(params, batch)
    return [per_segment_nll(logits, batch)[(b, 1)] for b in range(len(conversations))], batch, logits


def test_the_first_fit_plan_respects_the_row_length_and_image_slots():
    assert pack_rows([5, 4, 3, 2, 6], 9) == [[0, 1], [2, 3], [4]]
    assert pack_rows([5, 3, 4, 1], 9) == [[0, 1, 3], [2]]
    assert pack_rows([2, 2, 2], 9, images=[1, 1, 1], num_image_slots=2) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="a packed row holds 9 tokens"):
        pack_rows([10], 9)


def test_a_packed_batch_gives_every_example_its_own_loss(tokenizer, model):
    config, params = model
    image_config = image_config_of(config)
    examples = (expert_conversations(GeneralPointsConfig(), 0, 3)
                + suboptimal_trajectories(GeneralPointsConfig(), 0, 2))
    lengths = encoded_lengths(tokenizer, examples)
    want, unpacked, unpacked_logits = alone(tokenizer, examples, image_config, model)
    # rows as long as the longest example (attention over the rows is the test's main cost): the two shortest
    # share one; one row more than the plan needs stays padding
    length = int(lengths.max())
    rows = pack_rows(lengths, length)
    assert any(len(row) > 1 for row in rows)
    batch = pack(tokenizer, examples, image_config, length=length, num_rows=len(rows) + 1)
    assert batch["input_ids"].shape == (len(rows) + 1, length) and not batch["attention_mask"][-1].any()
    for r, row in enumerate(rows):
        offset = 0
        for segment, index in enumerate(row, start=1):
            span = slice(offset, offset + int(lengths[index]))
            assert (batch["segment_ids"][r, span] == segment).all()
            assert batch["position_ids"][r, span].tolist() == list(range(int(lengths[index])))
            np.testing.assert_array_equal(batch["input_ids"][r, span], unpacked["input_ids"][index, :lengths[index]])
            np.testing.assert_array_equal(batch["loss_mask"][r, span], unpacked["loss_mask"][index, :lengths[index]])
            offset += int(lengths[index])
    logits = jax.jit(functools.partial(packed_forward_from_batch, config=config))(params, batch)
    got = per_segment_nll(logits, batch)
    for r, row in enumerate(rows):
        for segment, index in enumerate(row, start=1):
            assert got[(r, segment)] == pytest.approx(want[index], rel=2e-5), (r, segment)
    # the batch loss is the same token mean as unpacked
    packed_loss, packed_metrics = sft_loss(logits, batch)
    unpacked_loss, unpacked_metrics = sft_loss(unpacked_logits, unpacked)
    assert float(packed_metrics["tokens"]) == float(unpacked_metrics["tokens"])
    assert float(packed_loss) == pytest.approx(float(unpacked_loss), rel=2e-5)
    # without the segment mask the later examples of a row would see the earlier ones: their NLL changes
    unmasked = {k: v for k, v in batch.items() if k != "segment_ids"}
    leaky = per_segment_nll(jax.jit(functools.partial(forward_from_batch, config=config))(params, unmasked), batch)
    r, row = next((r, row) for r, row in enumerate(rows) if len(row) > 1)
    # (a random tiny model uses little context, so the leak is small, but far above the packed error)
    assert abs(leaky[(r, 2)] - want[row[1]]) > max(1e-4 * want[row[1]], 20 * abs(got[(r, 2)] - want[row[1]]))


def test_packed_vision_examples_cross_attend_to_their_own_image_only(tokenizer, model):
    config, params = model
    image_config = image_config_of(config)
    examples = expert_conversations(GeneralPointsConfig(modality="vision"), 0, 3)
    lengths = encoded_lengths(tokenizer, examples)
    want, _, _ = alone(tokenizer, examples, image_config, model, slots=1)
    rows = [[0, 1, 2]]
    batch = packed_batch(tokenizer, examples, image_config, length=int(lengths.sum()), rows=rows, num_image_slots=3)
    assert batch["pixel_values"].shape[:2] == (1, 3) and batch["cross_attention_mask"].shape[2] == 3
    segments, cross = batch["segment_ids"][0], batch["cross_attention_mask"][0]
    for segment in (1, 2, 3):  # a token's tiles are only in its own example's slot
        tokens = segments == segment
        assert not cross[tokens][:, [s for s in range(3) if s != segment - 1]].any() and cross[tokens].any()
    forward = jax.jit(functools.partial(packed_forward_from_batch, config=config))
    got = per_segment_nll(forward(params, batch), batch)
    for segment, index in enumerate(rows[0], start=1):
        assert got[(0, segment)] == pytest.approx(want[index], rel=2e-5)
    # another image for the first example changes its loss and nobody else's
    changed = dict(batch, pixel_values=batch["pixel_values"].copy())
    changed["pixel_values"][0, 0] = np.random.default_rng(0).normal(size=changed["pixel_values"][0, 0].shape)
    again = per_segment_nll(forward(params, changed), changed)
    assert abs(again[(0, 1)] - got[(0, 1)]) > 1e-4 * got[(0, 1)]
    for segment in (2, 3):
        assert again[(0, segment)] == pytest.approx(got[(0, segment)], rel=1e-6)
