"""The offline Llama-3-style tokenizer: layout of ids, determinism, caching, loading through transformers offline,
round trips, and the chat template."""

import os

import numpy as np
import pytest

from model import tokenizer as tk

TEXTS = [
    "You are an expert 24 points card game player. Cards: ['A', '10', 'J', 'K']",
    '{"cards": ["Q", "3", "7", "9"], "number": [10, 3, 7, 9], "formula": "(10-7)*(9-3+2)=24"}',
    '{"current observation": "Starbucks is on your left", "action": "turn_direction(slightly right)"}',
    "O_1: No landmarks nearby\nA_1: forward()\n\nCafé – naïve 東京 🚶 tabs\tand  spaces  ",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return tk.ensure_tokenizer(tmp_path_factory.mktemp("tok") / "bpe", vocab_size=1024)


@pytest.mark.parametrize("vocab_size", [tk.MIN_VOCAB_SIZE, 320, 1024])
def test_special_token_ids_follow_the_llama3_layout(vocab_size):
    tokenizer = tk.train_tokenizer(vocab_size)
    regular = vocab_size - 16
    assert tokenizer.get_vocab_size(with_added_tokens=False) == regular
    assert tokenizer.get_vocab_size(with_added_tokens=True) == vocab_size + 1
    expected = {tk.BEGIN_OF_TEXT: 0, tk.END_OF_TEXT: 1, tk.PAD: 4, tk.START_HEADER: 6, tk.END_HEADER: 7,
                tk.EOM: 8, tk.EOT: 9, tk.PYTHON_TAG: 10, "<|reserved_special_token_7|>": 15}
    for token, offset in expected.items():
        assert tokenizer.token_to_id(token) == regular + offset, token
    assert tokenizer.token_to_id(tk.IMAGE) == vocab_size
    assert tokenizer.encode("hi").ids[0] == regular  # the post-processor adds <|begin_of_text|>


def test_vocab_size_bounds_are_clear_errors():
    with pytest.raises(ValueError, match="at least 272"):
        tk.train_tokenizer(271)
    with pytest.raises(ValueError, match="choose vocab_size <="):
        tk.train_tokenizer(4096)


def test_building_is_deterministic_and_cached(tmp_path):
    first = tk.ensure_tokenizer(tmp_path / "a", vocab_size=320, seed=3)
    second = tk.ensure_tokenizer(tmp_path / "b", vocab_size=320, seed=3)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    stamp = os.stat(first / "tokenizer.json").st_mtime_ns
    assert tk.ensure_tokenizer(first, vocab_size=320, seed=3) == first
    assert os.stat(first / "tokenizer.json").st_mtime_ns == stamp  # reused, not rebuilt
    tk.ensure_tokenizer(first, vocab_size=400, seed=3)  # other arguments: rebuilt in place
    assert tk.load_tokenizer(first).vocab_size == 400
    other_seed = tk.ensure_tokenizer(tmp_path / "c", vocab_size=320, seed=4)
    assert (other_seed / "tokenizer.json").read_bytes() != (second / "tokenizer.json").read_bytes()


def test_auto_tokenizer_loads_offline_and_agrees(tokenizer_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ours = tk.load_tokenizer(tokenizer_dir)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (ours.bos_id, ours.eot_id, ours.pad_id)
    assert hf.convert_tokens_to_ids(tk.IMAGE) == ours.image_id == ours.vocab_size == 1024
    assert ours.stop_ids == (1009, 1016, 1017)
    for text in TEXTS:
        ids = ours.encode_text(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert hf(text)["input_ids"] == [ours.bos_id] + ids
        assert ours.decode(ids) == text == hf.decode(ids)
        assert max(ids) < 1008  # plain text never becomes special tokens
    # The merges learnt the tasks' words: prose compresses well, JSON keys are single tokens.
    assert len(ours.encode_text(TEXTS[0])) < len(TEXTS[0]) / 2
    for key in ("cards", "number", "formula", " points"):
        assert len(ours.encode_text(key)) == 1, key


def test_special_token_strings_in_text_stay_text(tokenizer_dir):
    ours = tk.load_tokenizer(tokenizer_dir)
    ids = ours.encode_text("say <|eot_id|> and <|image|>")
    assert ours.eot_id not in ids and ours.image_id not in ids
    assert ours.decode(ids) == "say <|eot_id|> and <|image|>"


def test_chat_template_renders_the_llama_32_vision_format(tokenizer_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What are the cards?"}]},
        {"role": "assistant", "content": '{"cards": ["A", "2"]}'},
        {"role": "user", "content": "You failed this trial because the formula is wrong."},
    ]
    expected = (
        "<|begin_of_text|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<|image|>What are the cards?<|eot_id|>"
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"cards": ["A", "2"]}<|eot_id|>'
        "<|start_header_id|>user<|end_header_id|>\n\nYou failed this trial because the formula is wrong.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    without_prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without_prompt == expected.removesuffix("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_missing_or_foreign_tokenizer_directories_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tk.load_tokenizer(tmp_path)
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="not a Llama 3.2 Vision tokenizer"):
        tk.load_tokenizer(tmp_path)


def test_corpus_is_deterministic_and_covers_the_tasks_vocabulary():
    corpus = tk.training_corpus(0)
    assert corpus == tk.training_corpus(0) and corpus != tk.training_corpus(1)
    text = "\n".join(corpus)
    for word in ("cards", "number", "formula", "forward()", "stop()", "slightly right", "southeast",
                 "current observation", "current instruction", "action", "J", "Q", "K", "10", "*", "/"):
        assert word in text, word
    assert np.mean([len(line) for line in corpus]) > 50


def test_any_text_round_trips(tokenizer_dir):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    ours = tk.load_tokenizer(tokenizer_dir)

    @settings(max_examples=60, deadline=None, database=None)
    @given(st.text(max_size=60))
    def round_trip(text):
        assert ours.decode(ours.encode_text(text)) == text

    round_trip()
