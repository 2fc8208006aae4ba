"""Full-model logit parity with transformers (fp32, eager, non-zero gates) on image inputs: one image with 1, 2
and 4 tiles, two images in a sample next to a sample with a padding image and left padding, text before the image
token (all-zero cross-attention-mask rows), no cross-attention mask; the value head output."""

import jax
import numpy as np
import pytest

import model
from tests.model.mllama_reference import assert_close, hf_logits, hf_positions

# aspect-ratio ids: index in supported_aspect_ratios + 1; (1, 1) -> 1, (1, 2) -> 2, (2, 2) -> 6
RATIO_ID = {1: 1, 2: 2, 4: 6}


def image_batch(config, rng, images_per_sample, seq, image_positions, pad=None):
    """Inputs in the processor's layout. images_per_sample[b] = list of tile counts; image_positions[b] = the
    positions of the <|image|> tokens; pad[b] = number of left padding tokens (before everything)."""
    b, i_max, t = len(images_per_sample), max(len(x) for x in images_per_sample), config.vision.max_num_tiles
    size = config.vision.image_size
    pixels = np.zeros((b, i_max, t, 3, size, size), np.float32)
    ratio_ids = np.zeros((b, i_max), np.int64)
    ratio_mask = np.zeros((b, i_max, t), np.int64)
    cross = np.zeros((b, seq, i_max, t), np.int64)
    ids = rng.integers(3, config.text.vocab_size, (b, seq))
    mask = np.ones((b, seq), np.int64)
    for row, tiles_list in enumerate(images_per_sample):
        starts = list(image_positions[row]) + [seq]
        for image, tiles in enumerate(tiles_list):
            pixels[row, image, :tiles] = rng.standard_normal((tiles, 3, size, size))
            ratio_ids[row, image] = RATIO_ID[tiles]
            ratio_mask[row, image, :tiles] = 1
            ids[row, starts[image]] = config.image_token_index
            cross[row, starts[image]:starts[image + 1], image, :tiles] = 1
        if pad and pad[row]:
            ids[row, :pad[row]] = config.text.pad_token_id
            mask[row, :pad[row]] = 0
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, aspect_ratio_ids=ratio_ids,
                aspect_ratio_mask=ratio_mask, cross_attention_mask=cross)


def check(ref, jit_forward, inputs):
    hf_model, _, config, params = ref
    ours = np.asarray(jit_forward(params, config, **inputs))
    mask = inputs["attention_mask"]
    theirs = hf_logits(hf_model, **inputs, position_ids=hf_positions(mask))
    assert np.isfinite(ours).all()
    assert_close(ours, theirs, where=mask == 1)
    return ours


def test_one_image_with_1_2_4_tiles_and_text_before_it(ref, jit_forward):
    config = ref[2]
    # image token at 3: tokens 0..2 have all-zero cross-attention rows (they attend to all vision tokens, with
    # their MLP output zeroed, as transformers does)
    inputs = image_batch(config, np.random.default_rng(0), [[1], [2], [4]], 9, [[3], [3], [0]])
    check(ref, jit_forward, inputs)


def test_two_images_beside_a_padding_image_and_left_padding(ref, jit_forward):
    config = ref[2]
    inputs = image_batch(config, np.random.default_rng(1), [[2, 1], [4]], 10, [[1, 5], [4]], pad=[0, 2])
    check(ref, jit_forward, inputs)


def test_attention_in_query_blocks_keeps_the_logits_and_gradients(ref, jit_forward):
    """ModelConfig.attention_block: text self- and cross-attention and the vision encoder's attention over blocks of
    3 queries (dividing neither the 10 text tokens nor a tile's vision tokens: padded last blocks) give
    transformers' logits, and with remat the same gradients as all queries at once."""
    _, _, config, params = ref
    inputs = image_batch(config, np.random.default_rng(1), [[2, 1], [4]], 10, [[1, 5], [4]], pad=[0, 2])
    blocked = config.replace(attention_block=3)
    logits = check((*ref[:2], blocked, params), jit_forward, inputs)
    np.testing.assert_allclose(logits, np.asarray(jit_forward(params, config, **inputs)), rtol=1e-5, atol=1e-5)

    def loss(params, config):
        logits = model.forward(params, config, **inputs)
        return jax.numpy.mean(jax.nn.log_softmax(logits)[..., 7] * inputs["attention_mask"])

    programs = [jax.jit(jax.grad(loss), static_argnums=1).lower(params, c.replace(remat="full")).compile()
                for c in (config, blocked)]
    grads = [program(params) for program in programs]
    for whole, parts in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=1e-4, atol=1e-6)
    # every attention of the blocked program loops over its blocks (the memory it saves: tests/model/test_text.py)
    loops = [program.as_text().count(" while(") for program in programs]
    assert loops[1] > loops[0], loops


def test_without_cross_attention_mask(ref, jit_forward):
    config = ref[2]
    inputs = image_batch(config, np.random.default_rng(2), [[2]], 6, [[0]])
    inputs["cross_attention_mask"] = None
    hf_model, _, config, params = ref
    ours = jit_forward(params, config, **inputs)
    assert_close(ours, hf_logits(hf_model, **inputs))


def test_values_read_the_final_hidden_state(ref):
    _, _, config, params = ref
    params = {**params, "value_head": model.init_value_head(jax.random.key(0), config)}
    ids = np.random.default_rng(4).integers(3, config.text.vocab_size, (2, 5))
    @jax.jit
    def both(params, ids):
        return model.forward(params, config, ids, return_values=True), model.forward_hidden(params, config, ids)

    (logits, values), (hidden, logits2) = both(params, ids)
    assert values.shape == (2, 5) and values.dtype == np.float32
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(values), np.asarray(model.value_head_apply(params["value_head"], hidden)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="value_head"):
        jax.eval_shape(lambda p: model.forward(p, config, ids, return_values=True), ref[3])


def test_logits_positions_computes_the_head_only_there(ref):
    """forward(logits_positions=slice) equals the full logits sliced (values stay at every position), and the
    compiled program has no LM-head matmul over all positions."""
    _, _, config, params = ref
    params = {**params, "value_head": model.init_value_head(jax.random.key(0), config)}
    ids = np.random.default_rng(6).integers(3, config.text.vocab_size, (2, 7))
    full = jax.jit(lambda p: model.forward(p, config, ids, return_values=True))
    part = jax.jit(lambda p: model.forward(p, config, ids, return_values=True, logits_positions=slice(2, 6)))
    (logits, values), (some_logits, some_values) = full(params), part(params)
    assert some_logits.shape == (2, 4, config.text.vocab_size)
    np.testing.assert_allclose(np.asarray(some_logits), np.asarray(logits)[:, 2:6], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(some_values), np.asarray(values), rtol=1e-6, atol=1e-6)
    vocab = config.text.vocab_size
    assert f"14x{vocab}xf32" in full.lower(params).as_text()  # the head's (B * S, vocab) matmul
    hlo = part.lower(params).as_text()
    assert f"8x{vocab}xf32" in hlo and f"14x{vocab}xf32" not in hlo and f"2x7x{vocab}xf32" not in hlo


def test_11b_shapes_trace_without_allocation():
    """forward (with images and values), prefill and decode trace at the real 11B shapes (jax.eval_shape)."""
    import jax.numpy as jnp

    config = model.preset("11b").replace(dtype="bfloat16", param_dtype="bfloat16")
    shapes = model.param_shapes(config, value_head=True)
    spec = jax.ShapeDtypeStruct
    b, s = 2, 32
    ids, mask = spec((b, s), jnp.int32), spec((b, s), jnp.int32)
    vision = dict(pixel_values=spec((b, 1, 4, 3, 560, 560), jnp.float32), aspect_ratio_ids=spec((b, 1), jnp.int32),
                  aspect_ratio_mask=spec((b, 1, 4), jnp.int32), cross_attention_mask=spec((b, s, 1, 4), jnp.int32))
    logits, values = jax.eval_shape(
        lambda p, i, m, v: model.forward(p, config, i, attention_mask=m, return_values=True, **v),
        shapes, ids, mask, vision)
    assert logits.shape == (b, s, 128256) and logits.dtype == jnp.bfloat16 and values.shape == (b, s)
    cache = jax.eval_shape(lambda: model.init_cache(config, b, 64, num_images=1))
    assert cache.cross_k.shape == (8, b, 4 * 1601, 8, 128) and cache.self_k.shape == (32, b, 64, 8, 128)
    _, cache = jax.eval_shape(lambda p, i, m, c, v: model.prefill(p, config, i, m, c, **v),
                              shapes, ids, mask, cache, vision)
    step, _ = jax.eval_shape(lambda p, t, c: model.decode(p, config, t, c), shapes, spec((b,), jnp.int32), cache)
    assert step.shape == (b, 128256)


def test_pixels_and_states_together_are_refused(ref):
    _, _, config, params = ref
    inputs = image_batch(config, np.random.default_rng(5), [[1]], 4, [[0]])
    states = np.zeros((1, 4 * config.vision.num_patches, config.text.hidden_size), np.float32)
    with pytest.raises(ValueError, match="not both"):
        jax.eval_shape(lambda p: model.forward(p, config, **inputs, cross_attention_states=states), params)


def test_intermediate_layer_conventions_on_full_model_logits(ref, jit_forward, tmp_path):
    """Full-model logits: the default ("output") equals transformers; the "input" convention (Meta's code,
    transformers <= 4.54.1), selected by memgen_intermediate_layers_convention in config.json, differs from it and
    equals transformers' text model fed the cross-attention states rebuilt from its vision layers' INPUTS (the
    same rebuild from layer outputs reproduces transformers' own states)."""
    import json
    import shutil

    import torch

    from model.vision import padded_tile_length
    from tests.model.test_vision import _hf_run, _manual_reference

    hf_model, directory, config, params = ref
    inputs = image_batch(config, np.random.default_rng(6), [[2, 1], [4]], 9, [[1, 5], [2]], pad=[0, 2])
    positions = hf_positions(inputs["attention_mask"])
    theirs = hf_logits(hf_model, **inputs, position_ids=positions)
    valid = inputs["attention_mask"] == 1
    ours = np.asarray(jit_forward(params, config, **inputs))
    assert_close(ours, theirs, where=valid)

    meta_dir = tmp_path / "meta"
    shutil.copytree(directory, meta_dir)
    raw = json.loads((meta_dir / "config.json").read_text())
    raw["memgen_intermediate_layers_convention"] = "input"
    (meta_dir / "config.json").write_text(json.dumps(raw))
    meta_config, meta_params = model.load_hf(meta_dir)
    assert meta_config.vision.intermediate_layers_convention == "input"
    ours_meta = np.asarray(jit_forward(meta_params, meta_config, **inputs))

    vision = (inputs["pixel_values"], inputs["aspect_ratio_ids"], inputs["aspect_ratio_mask"])
    indices, q = config.vision.intermediate_layers_indices, padded_tile_length(config.vision)
    states, vision_out, outputs = _hf_run(hf_model, *vision, layer_hooks="output")
    np.testing.assert_allclose(_manual_reference(hf_model, vision_out, outputs, indices, q), states, atol=1e-6)
    _, vision_out, layer_inputs = _hf_run(hf_model, *vision, layer_hooks="input")
    meta_states = _manual_reference(hf_model, vision_out, layer_inputs, indices, q)
    text_inputs = {k: v for k, v in inputs.items() if k not in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
    expected_meta = hf_logits(hf_model, **text_inputs, position_ids=positions,
                              cross_attention_states=torch.as_tensor(meta_states))
    assert_close(ours_meta, expected_meta, where=valid)
    scale = max(1.0, float(np.abs(theirs[valid]).max()))
    assert float(np.abs(ours_meta - ours)[valid].max()) > 1e-2 * scale  # the conventions really differ
