"""HF safetensors import/export: load_hf -> save_hf (sharded) -> transformers loads it -> same logits; the
in-memory key layout; bfloat16; the value head file; placement on a mesh while loading; clear errors for bad
directories."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import model
from model.hf_io import INDEX_FILE, ModelLoadError
from model.sharding import make_mesh
from tests.model.mllama_reference import hf_logits


@pytest.fixture(scope="module")
def sharded_copy(ref, tmp_path_factory):
    """save_hf of the loaded params, split into several shards, plus a value head."""
    _, _, config, params = ref
    params = {**params, "value_head": model.init_value_head(jax.random.key(1), config)}
    out = tmp_path_factory.mktemp("saved")
    model.save_hf(out, config, params, max_shard_size="100KB")
    return out, params


def test_saved_shards_load_in_transformers_with_the_same_logits(ref, sharded_copy):
    hf_model, _, config, _ = ref
    out, _ = sharded_copy
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2
    reloaded = transformers.MllamaForConditionalGeneration.from_pretrained(
        out, attn_implementation="eager", dtype=torch.float32).eval()
    original = dict(hf_model.state_dict())
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, original[name], rtol=0, atol=0, msg=name)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.text.vocab_size, (1, 6))
    np.testing.assert_array_equal(hf_logits(reloaded, input_ids=ids), hf_logits(hf_model, input_ids=ids))


def test_round_trip_is_exact_and_keeps_the_value_head(sharded_copy):
    out, params = sharded_copy
    config, loaded = model.load_hf(out)
    assert set(loaded) == {"vision_encoder", "projector", "language_model", "cross_attention", "value_head"}
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert config.param_dtype == "float32"


def test_in_memory_key_layout(ref, tmp_path):
    _, directory, config, params = ref
    tensors = load_file(directory / "model.safetensors")
    renamed = {}
    for name, array in tensors.items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name[len("language_model.model."):]
        elif name == "language_model.lm_head.weight":
            name = "lm_head.weight"
        else:
            name = "model." + name
        renamed[name] = array
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    _, loaded = model.load_hf(tmp_path)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_checkpoint(ref, tmp_path):
    _, _, config, params = ref
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    model.save_hf(tmp_path, config.replace(param_dtype="bfloat16", dtype="bfloat16"), bf16)
    config2, loaded = model.load_hf(tmp_path)
    assert config2.param_dtype == "bfloat16" and config2.dtype == "bfloat16"
    for a, b in zip(jax.tree.leaves(bf16), jax.tree.leaves(loaded)):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    reloaded = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    _, as_fp32 = model.load_hf(tmp_path, param_dtype="float32")
    assert jax.tree.leaves(as_fp32)[0].dtype == jnp.float32


def test_loading_onto_a_mesh_places_each_leaf(ref):
    _, directory, _, params = ref
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    _, loaded = model.load_hf(directory, mesh=mesh)
    q = loaded["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(q), np.asarray(params["language_model"]["layers"]["self_attn"]
                                                            ["q_proj"]["kernel"]))


def _copy(sharded_copy, tmp_path):
    out, _ = sharded_copy
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def test_missing_shard(sharded_copy, tmp_path):
    target = _copy(sharded_copy, tmp_path)
    (target / "model-00002-of-{:05d}.safetensors".format(len(list(target.glob("model-*.safetensors"))))).unlink()
    with pytest.raises(ModelLoadError, match=r"shard model-00002-of-\d+\.safetensors .* is missing"):
        model.load_hf(target)


def test_missing_tensor_and_wrong_shape(sharded_copy, tmp_path):
    target = _copy(sharded_copy, tmp_path)
    index = json.loads((target / INDEX_FILE).read_text())
    name = "language_model.model.layers.2.mlp.up_proj.weight"
    file = index["weight_map"][name]
    tensors = load_file(target / file)
    tensors[name] = tensors[name][:, :-1].copy()
    save_file(tensors, target / file, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"tensor language_model\.model\.layers\.2\.mlp\.up_proj\.weight in "
                                             r"model-\d+-of-\d+\.safetensors has shape \(96, 63\) but config.json "
                                             r"implies \(96, 64\)"):
        model.load_hf(target)
    del index["weight_map"][name]
    (target / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"tensor language_model\.model\.layers\.2\.mlp\.up_proj\.weight is "
                                             r"missing"):
        model.load_hf(target)


def test_wrong_vision_shape_is_a_model_load_error(sharded_copy, tmp_path):
    target = _copy(sharded_copy, tmp_path)
    index = json.loads((target / INDEX_FILE).read_text())
    name = "vision_model.transformer.layers.1.mlp.fc1.weight"
    tensors = load_file(target / index["weight_map"][name])
    tensors[name] = tensors[name][:-1].copy()
    save_file(tensors, target / index["weight_map"][name], metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="fc1"):
        model.load_hf(target)


def test_no_config_no_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        model.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(model.to_hf_dict(model.preset("tiny"))))
    with pytest.raises(ModelLoadError, match="no model.safetensors or model.safetensors.index.json"):
        model.load_hf(tmp_path)


def _shards(target):
    return sorted(target.glob("model-*-of-*.safetensors"))


@pytest.mark.parametrize("keep", ["half", "header"])
def test_truncated_shard_is_a_model_load_error(sharded_copy, tmp_path, keep):
    """An interrupted download: the shard exists but is cut short (mid-data, or inside the 8-byte header)."""
    target = _copy(sharded_copy, tmp_path)
    shard = _shards(target)[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if keep == "half" else data[:4])
    with pytest.raises(ModelLoadError, match=rf"{shard.name} is not a readable safetensors file .*truncated or "
                                             r"corrupt.*download it again"):
        model.load_hf(target)


def test_truncated_single_file_and_value_head(ref, tmp_path):
    _, directory, _, _ = ref
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    data = (directory / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a readable safetensors file"):
        model.load_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(data)
    (tmp_path / "value_head.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ModelLoadError, match=r"value_head\.safetensors is not a readable safetensors file"):
        model.load_hf(tmp_path)


def test_index_entry_pointing_at_the_wrong_shard(sharded_copy, tmp_path):
    target = _copy(sharded_copy, tmp_path)
    index = json.loads((target / INDEX_FILE).read_text())
    name = "language_model.model.layers.2.mlp.up_proj.weight"
    index["weight_map"][name] = next(f.name for f in _shards(target) if f.name != index["weight_map"][name])
    (target / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=rf"tensor {name} is listed in .* does not contain it"):
        model.load_hf(target)


@pytest.mark.parametrize("text, match", [
    ('{"model_type": "mllama", ', r"config\.json is not valid JSON .*re-download"),
    ("[1, 2]", r"config\.json holds a JSON list, not an object"),
    ('{"vision_config": {}, "text_config": 3}', r"text_config is a JSON int, not an object"),
    ('{"vision_config": {}, "text_config": {"hidden_size": "big"}}', r"config\.json has a malformed field"),
])
def test_bad_config_json_is_one_sentence(sharded_copy, tmp_path, text, match):
    target = _copy(sharded_copy, tmp_path)
    (target / "config.json").write_text(text)
    with pytest.raises(ModelLoadError, match=match):
        model.load_hf(target)


@pytest.mark.parametrize("text", ["{not json", '{"metadata": {}}', '{"weight_map": [1, 2]}'])
def test_bad_index_is_one_sentence(sharded_copy, tmp_path, text):
    target = _copy(sharded_copy, tmp_path)
    (target / INDEX_FILE).write_text(text)
    with pytest.raises(ModelLoadError, match=r"is not a valid safetensors index"):
        model.load_hf(target)
