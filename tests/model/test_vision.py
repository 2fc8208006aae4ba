"""model.vision against transformers 5.23: the tiny random MllamaForConditionalGeneration (fp32, eager attention,
every vision weight re-randomised and every gate set to a non-zero value) saved with save_pretrained, its
on-disk tensors imported with vision_params_from_hf, and encode_images compared with the cross_attention_states
HF hands to its text model, captured by a forward pre-hook."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from model.config import preset, to_hf_dict
from model.vision import (encode_images, init_vision_params, padded_tile_length, run_local_layers,
                          vision_logical_axes, vision_params_from_hf, vision_params_to_hf)

# name -> (aspect_ratio_ids (B, I), aspect_ratio_mask (B, I, T)); ids index the supported ratios + 1:
# 1 (1,1), 2 (1,2), 3 (1,3), 4 (1,4), 5 (2,1), 6 (2,2), 7 (3,1), 8 (4,1); 0 = padding image.
CASES = {
    "one_tile": ([[1]], [[[1, 0, 0, 0]]]),
    "two_tiles": ([[2]], [[[1, 1, 0, 0]]]),
    "four_tiles": ([[6]], [[[1, 1, 1, 1]]]),
    "two_images_per_sample": ([[5, 3]], [[[1, 1, 0, 0], [1, 1, 1, 0]]]),
    # the processor marks tile 0 of a padding image as used; its pixels are zeros
    "batch_with_padding_image": ([[6, 2], [8, 0]], [[[1, 1, 1, 1], [1, 1, 0, 0]], [[1, 1, 1, 1], [1, 0, 0, 0]]]),
    # degenerate (the processor never makes it): every token invalid, so every score gets finfo.min and HF's
    # softmax is uniform; must be finite and equal, not NaN
    "no_tile_marked_used": ([[3]], [[[0, 0, 0, 0]]]),
}


@dataclasses.dataclass
class Reference:
    model: transformers.MllamaForConditionalGeneration
    tensors: dict[str, np.ndarray]  # the on-disk vision/projector tensors of save_pretrained
    params: dict
    config: object


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """O(1) activations everywhere and non-zero gates (HF initialises several gates to zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "vision_model" not in name and "multi_modal_projector" not in name:
                continue
            shape = param.shape
            noise = torch.randn(shape, generator=generator)
            if name.endswith(("gate", "gate_attn", "gate_ffn")):
                magnitude = 0.3 + 0.9 * torch.rand(shape, generator=generator)
                param.copy_(torch.where(noise > 0, magnitude, -magnitude))
            elif "layernorm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            elif "embedding" in name and "patch_embedding" not in name or name.endswith("class_embedding"):
                param.copy_(0.5 * noise)
            else:  # Linear (out, in) and conv (out, in, kh, kw) weights
                param.copy_(noise / float(np.prod(shape[1:])) ** 0.5)


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Reference:
    config = preset("tiny")
    hf_config = transformers.MllamaConfig(**to_hf_dict(config))
    model = transformers.MllamaForConditionalGeneration._from_config(
        hf_config, attn_implementation="eager", dtype=torch.float32).eval()
    _randomise(model, seed=0)
    folder = tmp_path_factory.mktemp("tiny_mllama")
    model.save_pretrained(folder)
    on_disk = {}
    for file in sorted(folder.glob("*.safetensors")):
        on_disk.update(load_file(str(file)))
    tensors = {k: v for k, v in on_disk.items() if k.startswith(("vision_model.", "multi_modal_projector."))}
    params = vision_params_from_hf(tensors.__getitem__, config, lambda path, array: jnp.asarray(array))
    return Reference(model, tensors, params, config)


def _inputs(case: str, seed: int = 0):
    ids, mask = (np.asarray(x) for x in CASES[case])
    v = preset("tiny").vision
    b, i = ids.shape
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((b, i, v.max_num_tiles, v.num_channels, v.image_size, v.image_size))
    pixels *= mask[..., None, None, None]
    pixels[ids == 0] = 0.0
    return pixels.astype(np.float32), ids.astype(np.int32), mask.astype(np.int32)


def _hf_run(model, pixels, ids, mask, layer_hooks: str | None = None):
    """HF's cross_attention_states (B, I*T*P, E) and, optionally, the local layers' inputs or outputs."""
    captured, layer_states, handles = {}, {}, []
    language_model = model.model.language_model
    handles.append(language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.__setitem__("states", kwargs["cross_attention_states"]),
        with_kwargs=True))
    handles.append(model.model.vision_model.register_forward_hook(
        lambda module, args, output: captured.__setitem__("vision", output.last_hidden_state)))
    for index, layer in enumerate(model.model.vision_model.transformer.layers):
        if layer_hooks == "input":
            handles.append(layer.register_forward_pre_hook(
                lambda module, args, kwargs, index=index: layer_states.__setitem__(index, kwargs["hidden_states"]),
                with_kwargs=True))
        elif layer_hooks == "output":
            handles.append(layer.register_forward_hook(
                lambda module, args, output, index=index: layer_states.__setitem__(index, output)))
    b, i = ids.shape
    image_token = model.config.image_token_id  # the text tokens after it are arbitrary regular ids
    input_ids = torch.tensor([[image_token] * i + [3, 4, 5]] * b)
    cross_mask = torch.tensor(np.broadcast_to(mask[:, None], (b, input_ids.shape[1]) + mask.shape[1:]).copy())
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                  pixel_values=torch.tensor(pixels), aspect_ratio_ids=torch.tensor(ids, dtype=torch.long),
                  aspect_ratio_mask=torch.tensor(mask, dtype=torch.long), cross_attention_mask=cross_mask)
    finally:
        for handle in handles:
            handle.remove()
    return captured["states"].reshape(b, -1, captured["states"].shape[-1]).numpy(), captured["vision"], layer_states


def _manual_reference(model, vision_out, layer_states, indices, shape):
    """Rebuild HF's post-encoder steps from hooked per-layer states: stack on the last axis (channel-major),
    strip the pads, concatenate after the global output, project, reshape."""
    b, i, t, p, _ = vision_out.shape
    d = model.config.vision_config.hidden_size
    stacked = torch.stack([layer_states[k] for k in indices], dim=-1).reshape(b * i, t, shape, -1)[:, :, :p]
    full = torch.cat([vision_out[..., :d], stacked.reshape(b, i, t, p, -1)], dim=-1)
    with torch.no_grad():
        projected = model.model.multi_modal_projector(full)
    return projected.reshape(b, i * t * p, -1).numpy()


def _assert_close(actual, expected, rtol=1e-4):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(actual - expected).max())
    assert diff <= rtol * scale, f"max abs diff {diff} > {rtol} x {scale}"


_encode = jax.jit(encode_images, static_argnums=1)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(ref, case):
    pixels, ids, mask = _inputs(case)
    expected, _, _ = _hf_run(ref.model, pixels, ids, mask)
    actual = _encode(ref.params, ref.config, pixels, ids, mask)
    v = ref.config.vision
    assert actual.shape == (ids.shape[0], ids.shape[1] * v.max_num_tiles * v.num_patches, ref.config.text.hidden_size)
    assert actual.dtype == jnp.float32
    _assert_close(actual, expected)


def test_input_convention_matches_layer_inputs(ref):
    """"output" = transformers 5.23; "input" = Meta / transformers <= 4.54 (layer inputs), built from HF's own
    layers by hooks. The hook-built "output" reference must reproduce HF exactly, proving the method."""
    pixels, ids, mask = _inputs("batch_with_padding_image", seed=1)
    indices = ref.config.vision.intermediate_layers_indices
    q = padded_tile_length(ref.config.vision)
    expected_out, vision_out, outputs = _hf_run(ref.model, pixels, ids, mask, layer_hooks="output")
    np.testing.assert_allclose(_manual_reference(ref.model, vision_out, outputs, indices, q), expected_out,
                               rtol=0, atol=1e-6)
    _, vision_out, inputs = _hf_run(ref.model, pixels, ids, mask, layer_hooks="input")
    expected_in = _manual_reference(ref.model, vision_out, inputs, indices, q)

    input_config = ref.config.replace(vision=dataclasses.replace(ref.config.vision,
                                                                 intermediate_layers_convention="input"))
    actual_in = _encode(ref.params, input_config, pixels, ids, mask)
    actual_out = _encode(ref.params, ref.config, pixels, ids, mask)
    _assert_close(actual_in, expected_in)
    _assert_close(actual_out, expected_out)
    assert float(np.abs(np.asarray(actual_in) - np.asarray(actual_out)).max()) > 1e-2


def test_hf_round_trip_is_bit_exact(ref):
    exported = dict(vision_params_to_hf(ref.params, ref.config))
    assert exported.keys() == ref.tensors.keys()
    for name, array in exported.items():
        assert array.shape == ref.tensors[name].shape, name
        np.testing.assert_array_equal(array, ref.tensors[name], err_msg=name)
    again = vision_params_from_hf(exported.__getitem__, ref.config, lambda path, array: jnp.asarray(array))
    flat_a, tree_a = jax.tree_util.tree_flatten(ref.params)
    flat_b, tree_b = jax.tree_util.tree_flatten(again)
    assert tree_a == tree_b
    for a, b in zip(flat_a, flat_b):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_import_streams_leaves_through_place(ref):
    reads, placed = [], []
    read = lambda name: (reads.append(name), ref.tensors[name])[1]  # noqa: E731
    place = lambda path, array: (placed.append(path), jnp.asarray(array))[1]  # noqa: E731
    params = vision_params_from_hf(read, ref.config, place)
    assert sorted(reads) == sorted(ref.tensors)  # every tensor read exactly once
    assert len(placed) == len(set(placed)) == len(jax.tree_util.tree_leaves(params))
    stacked = params["vision_encoder"]["transformer"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(stacked[2]), ref.tensors["vision_model.transformer.layers.2.self_attn.q_proj.weight"].T)


@pytest.mark.parametrize("name", ["multi_modal_projector.weight", "vision_model.transformer.layers.1.mlp.fc1.weight"])
def test_import_rejects_a_transposed_tensor(ref, name):
    bad = dict(ref.tensors, **{name: ref.tensors[name].T})
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        vision_params_from_hf(bad.__getitem__, ref.config, lambda path, array: array)


def test_bf16_is_finite_and_close_to_fp32(ref):
    pixels, ids, mask = _inputs("batch_with_padding_image", seed=2)
    fp32 = np.asarray(_encode(ref.params, ref.config, pixels, ids, mask))
    bf16 = _encode(ref.params, ref.config.replace(dtype="bfloat16"), pixels, ids, mask)
    assert bf16.dtype == jnp.bfloat16
    bf16 = np.asarray(bf16.astype(jnp.float32))
    assert np.isfinite(bf16).all()
    _assert_close(bf16, fp32, rtol=5e-2)


def test_init_matches_logical_axes_and_runs():
    config = preset("tiny").replace(param_dtype="bfloat16")
    params = init_vision_params(jax.random.PRNGKey(0), config)
    axes = vision_logical_axes(config)
    is_axes = lambda x: isinstance(x, tuple)  # noqa: E731
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(axes, is_leaf=is_axes)
    vocabulary = {"layers", "embed", "mlp", "heads", "kv_heads", "vocab", None}
    for leaf, names in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(axes, is_leaf=is_axes)):
        assert leaf.dtype == jnp.bfloat16 and leaf.ndim == len(names) and set(names) <= vocabulary
        assert len({n for n in names if n is not None}) == sum(n is not None for n in names)
    enc = params["vision_encoder"]
    gates = [enc[k]["gate"] for k in ("pre_tile_positional_embedding", "post_tile_positional_embedding",
                                      "gated_positional_embedding")]
    gates += [enc["global_transformer"]["gate_attn"], enc["global_transformer"]["gate_ffn"]]
    assert all(bool(jnp.all(jnp.abs(g.astype(jnp.float32)) >= 0.25)) for g in gates)
    pixels, ids, mask = _inputs("two_images_per_sample")
    out = _encode(params, config, pixels, ids, mask)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_remat_gives_the_same_gradients(ref):
    """jax.checkpoint around each layer changes what is saved, not the math. Checked on the local-layer scan
    (the same `_maybe_remat` wraps the global layers) to keep the compile time of the test small."""
    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.standard_normal((2, 16, ref.config.vision.hidden_size)), jnp.float32)
    invalid = jnp.asarray(rng.random((2, 16)) < 0.3)
    layers = ref.params["vision_encoder"]["transformer"]

    def loss(layers, hidden, config):
        last, intermediates = run_local_layers(hidden, layers, invalid, config)
        return jnp.mean(jnp.square(last)) + jnp.mean(jnp.sin(intermediates))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    plain = jax.tree_util.tree_leaves(grad(layers, hidden, ref.config))
    for remat in ("full", "dots"):
        checkpointed = jax.tree_util.tree_leaves(grad(layers, hidden, ref.config.replace(remat=remat)))
        for a, b in zip(plain, checkpointed):
            _assert_close(b, a, rtol=1e-5)
    for remat in ("full", "dots"):
        jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=2)(layers, hidden, ref.config.replace(remat=remat)))
        assert "remat" in jaxpr or "checkpoint" in jaxpr
    assert "remat" not in str(jax.make_jaxpr(jax.grad(loss), static_argnums=2)(layers, hidden, ref.config))


@pytest.mark.parametrize("convention", ["output", "input"])
def test_scanned_and_unrolled_layers_give_the_same_states_and_grads(ref, convention):
    """ModelConfig.scan_layers for the vision encoder: its local and global stacks as lax.scans (the 11B / 90B
    default; intermediates through the carried buffer) or unrolled (the small presets' default, which the
    parity tests above run), same values and same gradients."""
    config = ref.config.replace(vision=dataclasses.replace(ref.config.vision,
                                                           intermediate_layers_convention=convention))
    assert not config.scans_vision_layers() and preset("11b").scans_vision_layers()
    pixels, ids, mask = _inputs("batch_with_padding_image", seed=2)
    weights = np.random.default_rng(4).standard_normal(np.asarray(_encode(ref.params, config, pixels, ids, mask)).shape)

    def loss(params, cfg):
        states = encode_images(params, cfg, pixels, ids, mask)
        return jnp.sum(states * weights), states

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (unrolled, states), (scanned, scanned_states) = (grad(ref.params, config.replace(scan_layers=flag))
                                                      for flag in (False, True))
    _assert_close(scanned_states, states, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(unrolled), jax.tree.leaves(scanned)):
        _assert_close(b, a, rtol=1e-5)
