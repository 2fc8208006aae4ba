"""model.chat: conversation encoding against the chat template, the assistant (loss) mask, appended turns, and
batches against transformers' MllamaProcessor end to end."""

import numpy as np
import pytest
from transformers import AutoTokenizer
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
from transformers.models.mllama.processing_mllama import MllamaProcessor

from model import chat
from model.processor import LLAMA_VISION_IMAGE_MEAN, LLAMA_VISION_IMAGE_STD, ImageProcessorConfig
from model.tokenizer import ensure_tokenizer, load_tokenizer
from tasks.common import Message

IMAGE_CONFIG = ImageProcessorConfig(tile_size=28)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return ensure_tokenizer(tmp_path_factory.mktemp("tok") / "bpe", vocab_size=512)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def image(seed, height=30, width=70):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def gp_conversation(seed=0):
    return (
        Message("system", "You are an expert 24 points card game player."),
        Message("user", "What are the cards? Answer in JSON.", image(seed)),
        Message("assistant", '{"cards": ["A", "J", "3", "7"], "number": [1, 10, 3, 7], "formula": "(10-7)*7+1"}'),
        Message("user", "You failed this trial because your formula does not equal 24."),
        Message("assistant", '{"formula": "(7-3)*(10-1+...)=24"} done'),
    )


def test_encoding_equals_the_rendered_chat_template(tokenizer, tokenizer_dir):
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    conversation = gp_conversation()
    for add_generation_prompt in (False, True):
        text = hf.apply_chat_template(chat.to_hf_messages(conversation), tokenize=False,
                                      add_generation_prompt=add_generation_prompt)
        expected = hf(text, add_special_tokens=False)["input_ids"]
        encoded = chat.encode_conversation(tokenizer, conversation, add_generation_prompt=add_generation_prompt)
        assert encoded.token_ids.dtype == np.int32
        assert encoded.token_ids.tolist() == expected
        assert len(encoded.images) == 1 and encoded.images[0] is conversation[1].image


def test_assistant_mask_covers_exactly_the_assistant_contents_and_their_eot(tokenizer):
    conversation = gp_conversation()
    encoded = chat.encode_conversation(tokenizer, conversation, add_generation_prompt=False)
    ids, mask = encoded.token_ids, encoded.assistant_mask
    assert mask.shape == ids.shape and set(np.unique(mask)) == {0, 1}
    # Each run of ones is one assistant turn's content followed by <|eot_id|>; everything else is zero.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    runs = [ids[start:end] for start, end in zip(edges[::2], edges[1::2])]
    contents = [m.content for m in conversation if m.role == "assistant"]
    assert len(runs) == len(contents)
    for run, content in zip(runs, contents):
        assert run[-1] == tokenizer.eot_id
        assert tokenizer.decode(run[:-1]) == content
        assert run.tolist() == chat.encode_response(tokenizer, content).tolist()
    assert mask.sum() == sum(len(r) for r in runs)


def test_prompt_plus_response_plus_appended_turn_equals_the_whole_conversation(tokenizer):
    conversation = gp_conversation()
    prompt = chat.encode_conversation(tokenizer, conversation[:2], add_generation_prompt=True).token_ids
    response = chat.encode_response(tokenizer, conversation[2].content)  # what the sampler emits, eot included
    feedback = chat.encode_turn(tokenizer, conversation[3], add_generation_prompt=True)
    whole = chat.encode_conversation(tokenizer, conversation[:4], add_generation_prompt=True).token_ids
    np.testing.assert_array_equal(np.concatenate([prompt, response, feedback]), whole)
    assert feedback[0] == tokenizer.start_header_id and tokenizer.bos_id not in feedback
    second = chat.encode_response(tokenizer, conversation[4].content)
    final = chat.encode_conversation(tokenizer, conversation, add_generation_prompt=False).token_ids
    np.testing.assert_array_equal(np.concatenate([whole, second]), final)


def test_per_message_encodings_concatenate_exactly(tokenizer):
    # Every message boundary is a special token, so no BPE merge crosses it, even for text that would merge.
    conversation = (Message("user", "ab"), Message("assistant", "cd  "), Message("user", "\n\nef"),
                    Message("assistant", " gh"))
    whole = chat.encode_conversation(tokenizer, conversation).token_ids
    parts = [np.array([tokenizer.bos_id])] + [chat.encode_turn(tokenizer, m, add_generation_prompt=False)
                                              for m in conversation]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    boundaries = np.cumsum([len(p) for p in parts])[:-1]
    assert all(whole[b] == tokenizer.start_header_id for b in boundaries)
    assert all(whole[b - 1] in (tokenizer.bos_id, tokenizer.eot_id) for b in boundaries)


def test_bucket_length():
    assert [chat.bucket_length(n, 64) for n in (1, 64, 65, 130)] == [64, 64, 128, 192]
    assert [chat.bucket_length(n, "pow2") for n in (1, 2, 3, 64, 65)] == [1, 2, 4, 64, 128]
    with pytest.raises(ValueError, match="bucket"):
        chat.bucket_length(3, 0)


def hf_mllama_processor(tokenizer_dir, padding_side):
    image_processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, image_mean=list(
        LLAMA_VISION_IMAGE_MEAN), image_std=list(LLAMA_VISION_IMAGE_STD))
    hf_tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), padding_side=padding_side)
    return MllamaProcessor(image_processor=image_processor, tokenizer=hf_tokenizer), hf_tokenizer


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_equals_transformers_mllama_processor(tokenizer, tokenizer_dir, padding_side):
    conversations = [
        gp_conversation(0)[:2],
        (Message("user", "Two views.", image(1, 90, 20)), Message("assistant", "forward()"),
         Message("user", "And now?", image(2, 28, 28))),
        gp_conversation(3),
    ]
    batch = chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=True,
                                     padding_side=padding_side, bucket=32)
    size = batch.input_ids.shape[1]
    assert size % 32 == 0 and size >= batch.lengths.max()
    processor, hf_tokenizer = hf_mllama_processor(tokenizer_dir, padding_side)
    texts = [hf_tokenizer.apply_chat_template(chat.to_hf_messages(c), tokenize=False, add_generation_prompt=True)
             for c in conversations]
    images = [[m.image for m in c if m.image is not None] for c in conversations]
    reference = processor(text=texts, images=images, padding="max_length", max_length=size,
                          add_special_tokens=False, return_tensors="np")
    np.testing.assert_array_equal(batch.input_ids, reference["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, reference["attention_mask"])
    np.testing.assert_array_equal(batch.cross_attention_mask, reference["cross_attention_mask"])
    np.testing.assert_allclose(batch.pixel_values, reference["pixel_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batch.aspect_ratio_ids, reference["aspect_ratio_ids"])
    np.testing.assert_array_equal(batch.aspect_ratio_mask, reference["aspect_ratio_mask"])
    for name in ("input_ids", "attention_mask", "assistant_mask", "position_ids", "aspect_ratio_ids",
                 "aspect_ratio_mask", "num_tiles", "cross_attention_mask"):
        assert getattr(batch, name).dtype == np.int32, name
    assert batch.pixel_values.shape == (3, 2, 4, 3, 28, 28) and batch.pixel_values.dtype == np.float32
    assert batch.cross_attention_mask.shape == (3, size, 2, 4)


def test_batch_padding_masks_and_positions(tokenizer):
    conversations = [gp_conversation(0), gp_conversation(1)[:3]]
    for padding_side in ("right", "left"):
        batch = chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=False,
                                         padding_side=padding_side, bucket="pow2")
        size = batch.input_ids.shape[1]
        assert size == 1 << int(np.ceil(np.log2(batch.lengths.max())))
        for b, conversation in enumerate(conversations):
            encoded = chat.encode_conversation(tokenizer, conversation)
            length = len(encoded.token_ids)
            real = slice(size - length, size) if padding_side == "left" else slice(0, length)
            np.testing.assert_array_equal(batch.input_ids[b, real], encoded.token_ids)
            np.testing.assert_array_equal(batch.assistant_mask[b, real], encoded.assistant_mask)
            np.testing.assert_array_equal(batch.position_ids[b, real], np.arange(length))
            assert batch.attention_mask[b].sum() == length == batch.lengths[b]
            pads = batch.attention_mask[b] == 0
            assert (batch.input_ids[b, pads] == tokenizer.pad_id).all()
            assert not batch.assistant_mask[b, pads].any() and not batch.position_ids[b, pads].any()
        if padding_side == "left":  # pads precede the image token: no cross-attention there
            assert not batch.cross_attention_mask[1, : size - batch.lengths[1]].any()


def test_text_only_batches_have_no_vision_inputs_unless_slots_are_asked_for(tokenizer):
    conversations = [(Message("user", "Go north."),), (Message("user", "Stop."), Message("assistant", "stop()"))]
    batch = chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=True)
    assert batch.input_ids.shape == (2, 64)
    assert batch.pixel_values is None and batch.cross_attention_mask is None
    fixed = chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=True,
                                     num_image_slots=1)
    assert fixed.pixel_values.shape == (2, 1, 4, 3, 28, 28) and not fixed.pixel_values.any()
    assert fixed.cross_attention_mask.shape == (2, 64, 1, 4) and not fixed.cross_attention_mask.any()
    with pytest.raises(ValueError, match="max_length"):
        chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=True, max_length=5)
    with pytest.raises(ValueError, match="padding_side"):
        chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=True,
                                 padding_side="middle")


def test_continuation_rows_equal_the_mask_of_the_longer_sequence(tokenizer):
    from model.processor import continuation_cross_attention_mask, cross_attention_mask

    conversations = [gp_conversation(0)[:2], (Message("user", "No image here."),)]
    prompt = chat.batch_conversations(tokenizer, conversations, IMAGE_CONFIG, add_generation_prompt=True,
                                      padding_side="left", bucket=16)
    response = chat.encode_response(tokenizer, '{"cards": ["A"]}')
    appended = np.concatenate([response, chat.encode_turn(tokenizer, Message("user", "Wrong, try again."))])
    longer = np.concatenate([prompt.input_ids, np.tile(appended, (2, 1))], axis=1)
    expected = cross_attention_mask(longer, tokenizer.image_id, prompt.num_tiles, 4)
    rows = continuation_cross_attention_mask(prompt.cross_attention_mask, len(appended))
    np.testing.assert_array_equal(np.concatenate([prompt.cross_attention_mask, rows], axis=1), expected)
    assert rows[0].any() and not rows[1].any()


def test_a_directory_saved_by_transformers_mllama_processor_loads(tokenizer_dir, tmp_path):
    from model.processor import from_hf_preprocessor_config

    processor, _ = hf_mllama_processor(tokenizer_dir, "right")
    processor.save_pretrained(str(tmp_path))  # transformers 5: processor_config.json, tokenizer.json, ...
    assert from_hf_preprocessor_config(tmp_path) == IMAGE_CONFIG
    reloaded = load_tokenizer(tmp_path)
    original = load_tokenizer(tokenizer_dir)
    assert reloaded.image_id == original.image_id and reloaded.stop_ids == original.stop_ids
    text = gp_conversation()[2].content
    assert reloaded.encode_text(text) == original.encode_text(text)


def test_appended_turns_concatenate_for_arbitrary_text(tokenizer):
    assert_appended_turns_concatenate(tokenizer, examples=40)


def assert_appended_turns_concatenate(tokenizer, *, examples: int) -> None:
    """For arbitrary texts, prompt + response + feedback turn encoded piece by piece (the rollout's incremental
    append) equal the whole conversation's encoding, and the assistant mask covers exactly the response."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=examples, deadline=None, database=None)
    @given(st.lists(st.text(max_size=30), min_size=3, max_size=3))
    def check(texts):
        prompt_text, response_text, feedback_text = texts
        conversation = (Message("user", prompt_text), Message("assistant", response_text),
                        Message("user", feedback_text))
        prompt = chat.encode_conversation(tokenizer, conversation[:1], add_generation_prompt=True)
        pieces = [prompt.token_ids, chat.encode_response(tokenizer, response_text),
                  chat.encode_turn(tokenizer, conversation[2])]
        whole = chat.encode_conversation(tokenizer, conversation, add_generation_prompt=True)
        np.testing.assert_array_equal(np.concatenate(pieces), whole.token_ids)
        assert tokenizer.decode(whole.token_ids[whole.assistant_mask == 1][:-1]) == response_text

    check()
