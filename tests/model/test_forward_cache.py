"""KV cache: prefill + cached steps equal the full forward (fp32), with left-padded batches, multi-token extends
(including padding inside the appended chunk), cached cross-attention K/V, and a jitted, donated extend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from tests.model.mllama_reference import left_padded_batch, reference

CACHE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ref():
    _, _, config, params = reference("tiny")
    return config, params


@pytest.fixture(scope="module")
def jitted():
    forward = jax.jit(model.forward, static_argnums=1)
    extend = jax.jit(model.extend, static_argnums=1, donate_argnums=3)
    return forward, extend, jax.jit(model.prefill, static_argnums=1), jax.jit(model.decode, static_argnums=1)


def close(ours, full):
    ours, full = np.asarray(ours), np.asarray(full)
    scale = max(1.0, float(np.abs(full).max()))
    assert np.abs(ours - full).max() <= CACHE_TOLERANCE * scale, np.abs(ours - full).max()


def vision_inputs(config, rng, batch, seq, num_images=1):
    """Random projected vision states (B, V, D) and a hand-built cross-attention mask (B, S, I, T)."""
    tiles = config.vision.max_num_tiles
    states = rng.standard_normal((batch, num_images * tiles * config.vision.num_patches, config.text.hidden_size))
    mask = np.zeros((batch, seq, num_images, tiles), np.int64)
    mask[:, 2:, 0, :2] = 1  # tokens from 2 on see the first two tiles of image 0; tokens 0, 1 see nothing
    return states.astype(np.float32), mask


def test_prefill_then_one_step_equals_forward(ref, jitted):
    config, params = ref
    forward, extend, prefill, decode = jitted
    ids, mask = left_padded_batch(np.random.default_rng(0), [7, 4], 8, config.text.vocab_size)
    prompt, prompt_mask = ids[:, :7], mask[:, :7]
    cache = model.init_cache(config, 2, 16)
    prefill_logits, cache = extend(params, config, prompt, cache, attention_mask=prompt_mask)
    step_logits, cache = extend(params, config, ids[:, 7:], cache)
    full = forward(params, config, ids, attention_mask=mask)
    valid = prompt_mask == 1
    close(np.asarray(prefill_logits)[valid], np.asarray(full)[:, :7][valid])
    close(step_logits[:, 0], full[:, 7])
    assert int(cache.index) == 8 and list(np.asarray(cache.next_position)) == [7, 4]


def test_prefill_then_extend_and_decode(ref, jitted):
    config, params = ref
    forward, extend, prefill, decode = jitted
    rng = np.random.default_rng(1)
    ids, mask = left_padded_batch(rng, [6, 3, 5], 6, config.text.vocab_size)
    turn = rng.integers(3, config.text.vocab_size, (3, 4))
    turn_mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 0, 0]])  # padding inside the appended chunk too
    step = rng.integers(3, config.text.vocab_size, (3, 1))
    cache = model.init_cache(config, 3, 12)
    _, cache = prefill(params, config, ids, mask, cache)
    turn_logits, cache = extend(params, config, turn, cache, attention_mask=turn_mask)
    step_logits, cache = decode(params, config, step[:, 0], cache)
    all_ids = np.concatenate([ids, turn, step], 1)
    all_mask = np.concatenate([mask, turn_mask, np.ones((3, 1), np.int64)], 1)
    full = np.asarray(forward(params, config, all_ids, attention_mask=all_mask))
    close(np.asarray(turn_logits)[turn_mask == 1], full[:, 6:10][turn_mask == 1])
    close(step_logits, full[:, 10])


@pytest.mark.parametrize("block", [0, 2])
def test_cached_cross_attention(ref, jitted, block):
    """Prefill with pixel values (encoded once into the cached cross-attention K/V), then two tokens with no
    cross-attention mask (the last row is repeated) equal the full forward. With attention_block=2 the prefill's
    self- and cross-attention over the cache run in blocks of 2 queries (a rollout's largest temporaries are a
    prefill's scores over the whole cache): the same logits, and the compiled prefill loops over its blocks."""
    from tests.model.test_forward import image_batch

    config, params = ref
    config = config.replace(attention_block=block)
    forward, extend, prefill, _ = jitted
    rng = np.random.default_rng(2)
    inputs = image_batch(config, rng, [[2], [4]], 8, [[2], [1]], pad=[0, 1])
    ids, mask, cross_mask = inputs["input_ids"], inputs["attention_mask"], inputs["cross_attention_mask"]
    vision = {k: inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
    cache = model.init_cache(config, 2, 10, num_images=1)
    _, cache = prefill(params, config, ids[:, :6], mask[:, :6], cache, cross_attention_mask=cross_mask[:, :6],
                       **vision)
    logits, cache = extend(params, config, ids[:, 6:], cache)
    full = forward(params, config, **inputs)
    close(logits, np.asarray(full)[:, 6:])


def test_cache_without_images_refuses_them(ref):
    config, params = ref
    states, _ = vision_inputs(config, np.random.default_rng(3), 1, 2)
    with pytest.raises(ValueError, match="num_images"):
        model.prefill(params, config, np.ones((1, 2), np.int32), None, model.init_cache(config, 1, 4),
                      cross_attention_states=states)
    with pytest.raises(ValueError, match="got none"):
        model.prefill(params, config, np.ones((1, 2), np.int32), None,
                      model.init_cache(config, 1, 4, num_images=1))


def test_cache_is_a_pytree_with_static_shapes(ref):
    config, _ = ref
    cache = model.init_cache(config, 2, 5, num_images=2)
    leaves = jax.tree.leaves(cache)
    assert len(leaves) == 8
    assert cache.self_k.shape == (2, 2, 5, 2, 16) and cache.cross_k.shape == (2, 2, 2 * 4 * 5, 2, 16)
    shapes = jax.eval_shape(lambda: model.init_cache(config, 2, 5))
    assert shapes.cross_k is None and shapes.slot_valid.dtype == jnp.bool_


def test_greedy_decoding_matches_transformers_generate(jitted):
    """prefill + decode steps pick the same greedy tokens as transformers' generate (its own KV cache, its
    position ids for left padding, its cross-attention-mask row repetition), with an image and left padding."""
    import torch

    from tests.model.test_forward import image_batch

    hf_model, _, config, params = reference("tiny")
    _, _, prefill, decode = jitted
    # the same shapes as test_cached_cross_attention's prefill (one compile)
    inputs = image_batch(config, np.random.default_rng(7), [[2], [1]], 6, [[1], [3]], pad=[0, 2])
    new_tokens = 4
    with torch.no_grad():
        generated = hf_model.generate(**{k: torch.as_tensor(v) for k, v in inputs.items()}, do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    expected = generated[:, 6:].numpy()
    cache = model.init_cache(config, 2, 10, num_images=1)
    vision = {k: inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")}
    logits, cache = prefill(params, config, inputs["input_ids"], inputs["attention_mask"], cache, **vision)
    tokens = [np.asarray(logits[:, -1].argmax(-1))]
    for _ in range(new_tokens - 1):
        step_logits, cache = decode(params, config, jnp.asarray(tokens[-1]), cache)
        tokens.append(np.asarray(step_logits.argmax(-1)))
    np.testing.assert_array_equal(np.stack(tokens, 1), expected)


def test_unstacked_layers_give_identical_outputs(ref):
    """text.unstack_layers (what the sampler's decode loop uses) changes only how weights are sliced: forward
    (scanned layers) and a cached extend with cross-attention K/V agree to float32 rounding (the op fusion may
    differ, so not bit for bit)."""
    from model import text as T
    config, params = ref
    unstacked = T.unstack_layers(params, config)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, config.text.vocab_size, (2, 6)).astype(np.int32)
    states, mask = vision_inputs(config, rng, 2, 6)
    kwargs = dict(cross_attention_states=states, cross_attention_mask=mask)
    close(model.forward(unstacked, config, ids, **kwargs), model.forward(params, config, ids, **kwargs))
    outputs = []
    for tree in (params, unstacked):
        cache = model.init_cache(config, 2, 8, num_images=1)
        _, cache = model.prefill(tree, config, ids, None, cache, **kwargs)
        outputs.append(model.decode(tree, config, ids[:, 0], cache)[0])
    close(outputs[1], outputs[0])


def test_a_blocked_prefill_loops_over_its_query_blocks(ref):
    """attention_block reaches a cached call with many queries (not only the cacheless forward): the compiled
    prefill of 8 queries in blocks of 2 has loops the unblocked one has not; a decode step stays unblocked."""
    config, params = ref
    ids = jnp.ones((2, 8), jnp.int32)

    def loops(fn, block, *args):
        blocked = config.replace(attention_block=block)
        return jax.jit(fn, static_argnums=1).lower(params, blocked, *args).compile().as_text().count(" while(")

    cache = model.init_cache(config, 2, 12)
    assert loops(model.prefill, 2, ids, ids, cache) > loops(model.prefill, 0, ids, ids, cache)
    assert loops(model.decode, 2, ids[:, 0], cache) == loops(model.decode, 0, ids[:, 0], cache)
