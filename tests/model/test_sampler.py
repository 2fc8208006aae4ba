"""The sampler against independent references: greedy tokens equal transformers' greedy `generate` (text and
image, left padding, per-row stops); returned log-probs equal a full forward's; the append path (prompt + turn 1 +
feedback + turn 2) equals generating turn 2 from the concatenated prompt; rows stopping at different times;
reproducible sampling; top-k/top-p masks equal transformers' warpers; sharded over 8 CPU devices equals unsharded."""

import jax
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf_warpers

import model
from model import sampler
from model.processor import continuation_cross_attention_mask
from tests.model.mllama_reference import left_padded_batch, reference
from tests.model.test_forward import image_batch

LOGPROB_TOLERANCE = 1e-4
VISION_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


@pytest.fixture(scope="module")
def ref():
    return reference("tiny")


@pytest.fixture(scope="module")
def jit_forward():
    return jax.jit(model.forward, static_argnums=1)


def hf_greedy(hf_model, config, inputs, max_new_tokens, stop_tokens=None):
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items() if v is not None}
    with torch.no_grad():
        out = hf_model.generate(**tensors, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=list(stop_tokens or config.text.eos_token_id), pad_token_id=config.text.pad_token_id,
                                return_dict_in_generate=True, output_scores=True)
    scores = torch.stack(out.scores, 1).float().numpy()  # (B, steps, V)
    top2 = np.sort(scores, -1)[..., -2:]
    return out.sequences[:, inputs["input_ids"].shape[1]:].numpy(), float((top2[..., 1] - top2[..., 0]).min())


def expected_tokens_from_hf(hf_tokens, pad, max_new_tokens):
    """transformers stops the whole batch once every row is done, so its output may be shorter than ours."""
    out = np.full((hf_tokens.shape[0], max_new_tokens), pad)
    out[:, :hf_tokens.shape[1]] = hf_tokens
    return out


def full_logits(jit_forward, params, config, inputs, generation):
    """The full forward over prompt + generated tokens (B, S + N), and the slice scoring the generated ones."""
    ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"])
    tokens, lengths = np.asarray(generation.tokens), np.asarray(generation.lengths)
    n = tokens.shape[1]
    new_mask = (np.arange(n)[None] < lengths[:, None]).astype(mask.dtype)
    full = dict(inputs, input_ids=np.concatenate([ids, tokens], 1), attention_mask=np.concatenate([mask, new_mask], 1))
    if inputs.get("cross_attention_mask") is not None:
        cross = inputs["cross_attention_mask"]
        full["cross_attention_mask"] = np.concatenate([cross, continuation_cross_attention_mask(cross, n)], 1)
    logits = np.asarray(jit_forward(params, config, **full))
    s = ids.shape[1]
    return logits[:, s - 1:s - 1 + n], new_mask == 1


# ------------------------------------------------------------------------------------------- parity with transformers
def test_greedy_equals_transformers_text_only(ref):
    hf_model, _, config, params = ref
    ids, mask = left_padded_batch(np.random.default_rng(0), [7, 4, 9], 9, config.text.vocab_size)
    inputs = dict(input_ids=ids, attention_mask=mask)
    generation = sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=12)
    theirs, margin = hf_greedy(hf_model, config, inputs, 12)
    assert margin > 1e-3  # no near-ties: the comparison is exact and meaningful
    np.testing.assert_array_equal(np.asarray(generation.tokens), expected_tokens_from_hf(theirs, config.text.pad_token_id, 12))
    assert generation.tokens.shape == (3, 12) and generation.tokens.dtype == np.int32


def test_greedy_equals_transformers_with_an_image_and_stops(ref, jit_forward):
    """One image per row (1, 2 and 4 tiles), left padding, text before the image, a stop token that ends one row
    early. Also: the returned greedy log-probs are the temperature-1 log-softmax of a full forward."""
    hf_model, _, config, params = ref
    inputs = image_batch(config, np.random.default_rng(3), [[1], [2], [4]], 10, [[3], [2], [0]], pad=[0, 2, 4])
    free = sampler.generate(params, config, inputs["input_ids"], max_new_tokens=8, stop_tokens=(),
                            **{k: inputs[k] for k in ("attention_mask", *VISION_KEYS)})
    stop = int(np.asarray(free.tokens)[1, 3])  # row 1 stops at its 4th token (or earlier, if it repeats)
    generation = sampler.generate(params, config, inputs["input_ids"], max_new_tokens=8, stop_tokens=(stop,),
                                  **{k: inputs[k] for k in ("attention_mask", *VISION_KEYS)})
    theirs, margin = hf_greedy(hf_model, config, inputs, 8, stop_tokens=(stop,))
    assert margin > 1e-3
    ours = np.asarray(generation.tokens)
    np.testing.assert_array_equal(ours, expected_tokens_from_hf(theirs, config.text.pad_token_id, 8))
    assert int(generation.lengths[1]) <= 4 and int(generation.lengths.max()) == 8
    logits, valid = full_logits(jit_forward, params, config, inputs, generation)
    expected = np.asarray(sampler.token_logprobs(logits, ours, temperature=0.0))
    assert np.abs(np.asarray(generation.logprobs) - expected)[valid].max() <= LOGPROB_TOLERANCE
    assert (np.asarray(generation.logprobs)[~valid] == 0).all()


# ------------------------------------------------------------------------------------------- log-probs, stops, rng
def test_sampled_logprobs_equal_full_forward(ref, jit_forward):
    _, _, config, params = ref
    inputs = image_batch(config, np.random.default_rng(4), [[2], [1]], 7, [[1], [3]], pad=[2, 0])
    kwargs = {k: inputs[k] for k in ("attention_mask", *VISION_KEYS)}
    plain = sampler.generate(params, config, inputs["input_ids"], max_new_tokens=10, temperature=0.7, stop_tokens=(),
                             rng=jax.random.key(1), **kwargs)
    logits, valid = full_logits(jit_forward, params, config, inputs, plain)
    tokens = np.asarray(plain.tokens)
    trainer = np.asarray(sampler.token_logprobs(logits, tokens, temperature=0.7))
    assert valid.all() and np.abs(np.asarray(plain.logprobs) - trainer).max() <= LOGPROB_TOLERANCE

    masked_config = sampler.SamplingConfig(10, temperature=0.7, top_p=0.8, top_k=20)
    masked = sampler.generate(params, config, inputs["input_ids"], max_new_tokens=10, temperature=0.7, top_p=0.8,
                              top_k=20, stop_tokens=(), rng=jax.random.key(1), **kwargs)
    logits, _ = full_logits(jit_forward, params, config, inputs, masked)
    tokens = np.asarray(masked.tokens)
    log_probs = np.asarray(sampler.sampling_log_probs(logits, masked_config))
    expected = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    assert np.isfinite(expected).all()  # every drawn token lies inside the top-k/top-p support
    assert np.abs(np.asarray(masked.logprobs) - expected).max() <= LOGPROB_TOLERANCE
    assert (np.asarray(masked.logprobs) >= trainer.min() - 10).all()


def test_rows_stop_at_different_times(ref):
    _, _, config, params = ref
    ids, mask = left_padded_batch(np.random.default_rng(5), [5, 8, 3, 6], 8, config.text.vocab_size)
    free = np.asarray(sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=8,
                                       stop_tokens=()).tokens)
    stops = (int(free[0, 1]), int(free[2, 4]))
    generation = sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=8, stop_tokens=stops)
    tokens, lengths = np.asarray(generation.tokens), np.asarray(generation.lengths)
    for row in range(4):
        hits = np.flatnonzero(np.isin(free[row], stops))
        length = int(hits[0]) + 1 if hits.size else 8
        assert lengths[row] == length
        np.testing.assert_array_equal(tokens[row, :length], free[row, :length])
        assert (tokens[row, length:] == config.text.pad_token_id).all()
    assert lengths[0] <= 2 and lengths[2] <= 5


def test_sampling_is_reproducible_for_a_key(ref):
    _, _, config, params = ref
    ids, mask = left_padded_batch(np.random.default_rng(6), [6, 4], 6, config.text.vocab_size)

    def draw(seed):
        return sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=10, temperature=1.5,
                                stop_tokens=(), rng=jax.random.key(seed))

    first, again, other = draw(0), draw(0), draw(1)
    np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
    np.testing.assert_array_equal(np.asarray(first.logprobs), np.asarray(again.logprobs))
    assert (np.asarray(first.tokens) != np.asarray(other.tokens)).any()
    with pytest.raises(ValueError, match="rng"):
        sampler.generate(params, config, ids, max_new_tokens=2, temperature=1.0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 40, 0.5), (0.5, 0, 0.3),
                                                      (1.0, 1, 1.0), (2.0, 0, 0.999)])
def test_top_k_top_p_masks_equal_transformers_warpers(temperature, top_k, top_p):
    rng = np.random.default_rng(int(100 * temperature) + top_k)
    logits = (3 * rng.standard_normal((6, 320))).astype(np.float32)
    ours = np.asarray(sampler.sampling_logits(logits, sampler.SamplingConfig(1, temperature, top_p, top_k)))
    scores = torch.as_tensor(logits)
    scores = hf_warpers.TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = hf_warpers.TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = hf_warpers.TopPLogitsWarper(top_p)(None, scores)
    theirs = scores.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-6)
    # draws stay inside the support and follow the distribution
    config = sampler.SamplingConfig(1, temperature, top_p, top_k)
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sampler.sample_tokens(k, logits[:1], config)[0][0])(keys))
    assert np.isfinite(ours[0, draws]).all()
    probs = np.exp(np.asarray(sampler.sampling_log_probs(logits[:1], config))[0])
    frequency = np.bincount(draws, minlength=320) / len(draws)
    assert np.abs(frequency - probs).max() < 0.03


def test_sampling_config_rejects_bad_values():
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)):
        with pytest.raises(ValueError):
            sampler.SamplingConfig(**{"max_new_tokens": 4, **bad})


# ------------------------------------------------------------------------------------------- the multi-turn append path
def test_append_turn_equals_generating_from_the_concatenated_prompt(ref, jit_forward):
    """prompt (with an image) -> turn 1 (rows stop at different times) -> feedback (right-padded, one row without
    feedback) -> turn 2 equals generating turn 2 greedily from the concatenation, row by row; an inactive row
    samples nothing."""
    _, _, config, params = ref
    rng = np.random.default_rng(7)
    inputs = image_batch(config, rng, [[2], [1], [4]], 8, [[1], [0], [2]], pad=[0, 3, 1])
    vision = {k: inputs[k] for k in VISION_KEYS}
    n = 6
    cache = model.init_cache(config, 3, 8 + n + 5 + n, num_images=1)
    state = sampler.start_jit(params, config, inputs["input_ids"], inputs["attention_mask"], cache, **vision)
    free = sampler.SamplingConfig(n, temperature=1.0)
    state_copy = jax.tree.map(lambda a: a.copy(), state)
    _, dry = sampler.sample_turn_jit(params, config, state_copy, jax.random.key(3), free)
    stop = int(np.asarray(dry.tokens)[0, 2])
    turn1_config = sampler.SamplingConfig(n, temperature=1.0, stop_tokens=(stop,))
    state, turn1 = sampler.sample_turn_jit(params, config, state, jax.random.key(3), turn1_config)
    lengths1 = np.asarray(turn1.lengths)
    assert lengths1[0] <= 3 and len(set(lengths1.tolist())) > 1
    feedback = rng.integers(3, config.text.vocab_size, (3, 5)).astype(np.int32)
    feedback_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int32)
    state = sampler.append_jit(params, config, state, feedback, feedback_mask)
    greedy = sampler.SamplingConfig(n, stop_tokens=config.text.eos_token_id)
    active_state = jax.tree.map(lambda a: a.copy(), state)
    state, turn2 = sampler.sample_turn_jit(params, config, state, jax.random.key(0), greedy)
    _, masked_turn2 = sampler.sample_turn_jit(params, config, active_state, jax.random.key(0), greedy,
                                              np.array([True, False, True]))

    # from scratch: each row's valid tokens concatenated, left-padded
    rows = []
    for b in range(3):
        prompt = inputs["input_ids"][b][inputs["attention_mask"][b] == 1]
        turn = np.asarray(turn1.tokens)[b, :lengths1[b]]
        rows.append(np.concatenate([prompt, turn, feedback[b][feedback_mask[b] == 1]]))
    total = max(len(r) for r in rows)
    ids = np.full((3, total), config.text.pad_token_id, np.int32)
    mask = np.zeros((3, total), np.int32)
    cross = np.zeros((3, total, *inputs["cross_attention_mask"].shape[2:]), np.int32)
    for b, row in enumerate(rows):
        ids[b, total - len(row):] = row
        mask[b, total - len(row):] = 1
        prompt_cross = inputs["cross_attention_mask"][b][inputs["attention_mask"][b] == 1]
        cross[b, total - len(row):total - len(row) + len(prompt_cross)] = prompt_cross
        cross[b, total - len(row) + len(prompt_cross):] = prompt_cross[-1]
    scratch_inputs = dict(input_ids=ids, attention_mask=mask, cross_attention_mask=cross,
                          **{k: inputs[k] for k in VISION_KEYS[:3]})
    scratch = sampler.generate(params, config, ids, max_new_tokens=n, attention_mask=mask,
                               cross_attention_mask=cross, **{k: inputs[k] for k in VISION_KEYS[:3]})
    np.testing.assert_array_equal(np.asarray(turn2.tokens), np.asarray(scratch.tokens))
    np.testing.assert_array_equal(np.asarray(turn2.lengths), np.asarray(scratch.lengths))
    assert np.abs(np.asarray(turn2.logprobs) - np.asarray(scratch.logprobs)).max() <= LOGPROB_TOLERANCE
    # the turn-1 log-probs (temperature 1, drawn with stops) equal a full forward's
    logits, valid = full_logits(jit_forward, params, config, inputs, turn1)
    expected = np.asarray(sampler.token_logprobs(logits, np.asarray(turn1.tokens), 1.0))
    assert np.abs(np.asarray(turn1.logprobs) - expected)[valid].max() <= LOGPROB_TOLERANCE
    # inactive rows sample nothing; the others are unaffected
    assert int(masked_turn2.lengths[1]) == 0 and (np.asarray(masked_turn2.tokens)[1] == config.text.pad_token_id).all()
    np.testing.assert_array_equal(np.asarray(masked_turn2.tokens)[[0, 2]], np.asarray(turn2.tokens)[[0, 2]])
    # the cache holds prompt + longest turn 1 + feedback chunk + longest turn 2 slots
    assert int(state.cache.index) == 8 + lengths1.max() + 5 + int(np.asarray(turn2.lengths).max())


def test_a_full_cache_cuts_the_turn(ref):
    _, _, config, params = ref
    ids, mask = left_padded_batch(np.random.default_rng(8), [4, 3], 4, config.text.vocab_size)
    state = sampler.start(params, config, ids, mask, model.init_cache(config, 2, 7))
    state, generation = sampler.sample_turn(params, config, state, jax.random.key(0),
                                            sampler.SamplingConfig(6, stop_tokens=()))
    assert list(np.asarray(generation.lengths)) == [3, 3] and int(state.cache.index) == 7
    assert (np.asarray(generation.tokens)[:, 3:] == config.text.pad_token_id).all()


# ------------------------------------------------------------------------------------------- sharding
def test_sharded_generate_equals_unsharded(ref):
    from model.sharding import batch_sharding, make_mesh, shard_params

    _, _, config, params = ref
    inputs = image_batch(config, np.random.default_rng(9), [[2], [1], [4], [1]], 8, [[1], [0], [2], [5]],
                         pad=[0, 3, 1, 0])
    kwargs = dict(max_new_tokens=6, temperature=0.9, top_k=30, stop_tokens=config.text.eos_token_id,
                  rng=jax.random.key(5))
    expected = sampler.generate(params, config, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                **{k: inputs[k] for k in VISION_KEYS}, **kwargs)
    mesh = make_mesh({"data": 2, "tensor": 4})
    sharded_params = shard_params(params, config, mesh)
    placed = {k: jax.device_put(v, batch_sharding(mesh, v.shape)) for k, v in inputs.items()}
    got = sampler.generate(sharded_params, config, placed["input_ids"], attention_mask=placed["attention_mask"],
                           **{k: placed[k] for k in VISION_KEYS}, mesh=mesh, **kwargs)
    assert len(got.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(expected.lengths))
    assert np.abs(np.asarray(got.logprobs) - np.asarray(expected.logprobs)).max() <= 1e-5
