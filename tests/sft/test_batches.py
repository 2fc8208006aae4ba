"""sft.batches: GeneralPoints expert conversations -> fixed-shape train-step batches whose loss mask covers exactly
the assistant's answer (content + <|eot_id|>), with vision inputs for GP-VL."""

from __future__ import annotations

import numpy as np
import pytest

from model.config import preset
from model.tokenizer import ensure_tokenizer, load_tokenizer
from launch.model_source import image_config_of
from sft.batches import (encoded_lengths, image_slots, mask_rows, model_inputs, padded_length, prompt_of,
                         sft_batch)
from tasks.general_points import GeneralPointsConfig, expert_conversations


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(ensure_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=320))


def test_the_loss_mask_covers_the_assistant_answer_only(tokenizer):
    conversations = expert_conversations(GeneralPointsConfig(), seed=0, size=3)
    lengths = encoded_lengths(tokenizer, conversations)
    length = padded_length(lengths, 64)
    assert length % 64 == 0 and length >= lengths.max() and length - lengths.max() < 64
    batch = sft_batch(tokenizer, conversations, image_config_of(preset("tiny")), length=length)
    assert set(batch) == {"input_ids", "attention_mask", "position_ids", "loss_mask"}
    for row, conversation in enumerate(conversations):
        assert batch["input_ids"].shape == (3, length)
        targets = batch["input_ids"][row][batch["loss_mask"][row] == 1]
        assert tokenizer.decode(targets) == conversation[-1].content + "<|eot_id|>"
        real = int(lengths[row])
        assert batch["attention_mask"][row].tolist() == [1] * real + [0] * (length - real)
        assert (batch["input_ids"][row, real:] == tokenizer.pad_id).all()
    assert prompt_of(conversations[0]) == conversations[0][:-1]


def test_an_example_longer_than_the_run_length_is_an_error_not_truncated(tokenizer):
    conversations = expert_conversations(GeneralPointsConfig(), seed=0, size=1)
    with pytest.raises(ValueError, match="more than max_length"):
        sft_batch(tokenizer, conversations, image_config_of(preset("tiny")), length=64)


def test_vision_batches_have_fixed_image_slots_and_masks(tokenizer):
    conversations = expert_conversations(GeneralPointsConfig(modality="vision"),
                                         seed=0, size=2)
    slots = image_slots(conversations)
    assert slots == 1
    image_config = image_config_of(preset("tiny"))
    length = padded_length(encoded_lengths(tokenizer, conversations))
    batch = sft_batch(tokenizer, conversations, image_config, length=length, num_image_slots=slots)
    tiles, tile = image_config.max_image_tiles, image_config.tile_size
    assert batch["pixel_values"].shape == (2, 1, tiles, 3, tile, tile)
    assert batch["cross_attention_mask"].shape == (2, length, 1, tiles)
    image_at = np.argmax(batch["input_ids"] == tokenizer.image_id, axis=1)
    for row in range(2):
        # Tokens from the image token on attend to the image's tiles; tokens before it do not.
        assert batch["cross_attention_mask"][row, :image_at[row]].sum() == 0
        assert batch["cross_attention_mask"][row, image_at[row]:, 0, 0].all()
    assert set(model_inputs(batch)) == set(batch) - {"loss_mask"}


def test_mask_rows_zeroes_filler_rows_only(tokenizer):
    conversations = expert_conversations(GeneralPointsConfig(), seed=1, size=2)
    length = padded_length(encoded_lengths(tokenizer, conversations))
    batch = sft_batch(tokenizer, conversations, image_config_of(preset("tiny")), length=length)
    masked = mask_rows(batch, np.array([True, False]))
    np.testing.assert_array_equal(masked["loss_mask"][0], batch["loss_mask"][0])
    assert masked["loss_mask"][1].sum() == 0 and batch["loss_mask"][1].sum() > 0
