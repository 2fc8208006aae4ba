"""model.config: HF config.json round trips for every preset, both rope layouts, clear errors."""

import json

import pytest
import transformers

from model.config import ConfigError, from_hf_dict, load_hf_config, preset, to_hf_dict


@pytest.mark.parametrize("name", ["tiny", "small", "11b", "90b"])
def test_round_trip_through_transformers(name):
    config = preset(name)
    hf = transformers.MllamaConfig(**to_hf_dict(config)).to_dict()
    assert from_hf_dict(hf) == config  # the value head widths ride along in memgen_value_head_hidden


def test_old_rope_layout():
    hf = to_hf_dict(preset("11b"))
    rope = hf["text_config"].pop("rope_parameters")
    hf["text_config"]["rope_theta"] = rope.pop("rope_theta")
    hf["text_config"]["rope_scaling"] = rope
    assert from_hf_dict(hf).text.rope == preset("11b").text.rope


def test_11b_and_90b_shapes():
    assert preset("11b").text.self_attention_layers[:4] == (0, 1, 2, 4)
    assert preset("11b").vision.num_patches == 1601
    big = preset("90b").text
    assert len(big.cross_attention_layers) == 20 and big.hidden_size == 8192


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="mllama"):
        load_hf_config(tmp_path)
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("7b")


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_use_the_offline_tokenizer_ids(name, tmp_path):
    from model.tokenizer import ensure_tokenizer, load_tokenizer

    config = preset(name)
    tok = load_tokenizer(ensure_tokenizer(tmp_path / "tok", vocab_size=config.text.vocab_size))
    assert config.image_token_index == tok.image_id == config.text.vocab_size
    assert config.text.bos_token_id == tok.bos_id and config.text.pad_token_id == tok.pad_id
    assert set(config.text.eos_token_id) == set(tok.stop_ids)


def test_intermediate_layers_convention_key():
    """memgen_intermediate_layers_convention in config.json selects the convention (absent: "output", what
    transformers does); it survives transformers' MllamaConfig and a bad value is a clear error."""
    import dataclasses

    config = preset("tiny")
    assert from_hf_dict({k: v for k, v in to_hf_dict(config).items()
                         if k != "memgen_intermediate_layers_convention"}).vision.intermediate_layers_convention == "output"
    meta = config.replace(vision=dataclasses.replace(config.vision, intermediate_layers_convention="input"))
    hf = to_hf_dict(meta)
    assert hf["memgen_intermediate_layers_convention"] == "input"
    assert from_hf_dict(transformers.MllamaConfig(**hf).to_dict()) == meta
    with pytest.raises(ConfigError, match="memgen_intermediate_layers_convention 'inputs'"):
        from_hf_dict({**hf, "memgen_intermediate_layers_convention": "inputs"})
