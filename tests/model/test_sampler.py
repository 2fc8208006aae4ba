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
from tests.model.mllama_reference import left_padded_batch
from tests.model.test_forward import image_batch

LOGPROB_TOLERANCE = 1e-4
VISION_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


# Every test uses these shapes (text: B = 3; images: B = 4, one image) and N = 8 new tokens, so the compiled
# functions are shared (prompts of <= 64 tokens share one bucket; stop tokens are traced).
N = 8
FULL_LENGTH = 32  # full forwards are right-padded to this length (one compilation; causal, so exact)


def text_prompts(config, seed):
    return left_padded_batch(np.random.default_rng(seed), [7, 4, 9], 9, config.text.vocab_size)


def image_prompts(config, seed):
    return image_batch(config, np.random.default_rng(seed), [[1], [2], [4], [1]], 10, [[3], [2], [0], [5]],
                       pad=[0, 2, 4, 1])


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
    """The full forward over prompt + generated tokens, and its logits (B, N, V) scoring the generated ones."""
    ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"])
    tokens, lengths = np.asarray(generation.tokens), np.asarray(generation.lengths)
    s, n = ids.shape[1], tokens.shape[1]
    new_mask = (np.arange(n)[None] < lengths[:, None]).astype(mask.dtype)
    right = np.zeros((ids.shape[0], FULL_LENGTH - s - n), mask.dtype)
    full = dict(input_ids=np.concatenate([ids, tokens, right], 1),
                attention_mask=np.concatenate([mask, new_mask, right], 1))
    if inputs.get("pixel_values") is not None:
        cross = inputs["cross_attention_mask"]
        full["cross_attention_mask"] = np.concatenate(
            [cross, continuation_cross_attention_mask(cross, FULL_LENGTH - s)], 1)
        full["cross_attention_states"] = sampler._encode_images(
            params, config, *(inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")))
    logits = np.asarray(jit_forward(params, config, **full))
    return logits[:, s - 1:s - 1 + n], new_mask == 1


# ------------------------------------------------------------------------------------------- parity with transformers
def test_greedy_equals_transformers_text_only(ref):
    hf_model, _, config, params = ref
    ids, mask = text_prompts(config, 0)
    generation = sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=N)
    theirs, margin = hf_greedy(hf_model, config, dict(input_ids=ids, attention_mask=mask), N)
    assert margin > 1e-3  # no near-ties: the comparison is exact and meaningful
    np.testing.assert_array_equal(np.asarray(generation.tokens),
                                  expected_tokens_from_hf(theirs, config.text.pad_token_id, N))
    assert generation.tokens.shape == (3, N) and generation.tokens.dtype == np.int32


def test_greedy_equals_transformers_with_an_image_and_stops(ref, jit_forward):
    """One image per row (1, 2 and 4 tiles), left padding, text before the image, a stop token that ends one row
    early. Also: the returned greedy log-probs are the temperature-1 log-softmax of a full forward."""
    hf_model, _, config, params = ref
    inputs = image_prompts(config, 3)
    free = sampler.generate(params, config, max_new_tokens=N, stop_tokens=(), **inputs)
    stop = int(np.asarray(free.tokens)[1, 3])  # row 1 stops at its 4th token (or earlier, if it repeats)
    generation = sampler.generate(params, config, max_new_tokens=N, stop_tokens=(stop,), **inputs)
    theirs, margin = hf_greedy(hf_model, config, inputs, N, stop_tokens=(stop,))
    assert margin > 1e-3
    ours = np.asarray(generation.tokens)
    np.testing.assert_array_equal(ours, expected_tokens_from_hf(theirs, config.text.pad_token_id, N))
    assert int(generation.lengths[1]) <= 4 and int(generation.lengths.max()) == N
    logits, valid = full_logits(jit_forward, params, config, inputs, generation)
    expected = np.asarray(sampler.token_logprobs(logits, ours, temperature=0.0))
    assert np.abs(np.asarray(generation.logprobs) - expected)[valid].max() <= LOGPROB_TOLERANCE
    assert (np.asarray(generation.logprobs)[~valid] == 0).all()


# ------------------------------------------------------------------------------------------- log-probs, stops, rng
def test_sampled_logprobs_equal_full_forward_and_reproduce_for_a_key(ref, jit_forward):
    _, _, config, params = ref
    inputs = image_prompts(config, 4)

    def draw(seed):
        return sampler.generate(params, config, max_new_tokens=N, temperature=0.7, stop_tokens=(),
                                rng=jax.random.key(seed), **inputs)

    plain = draw(1)
    logits, valid = full_logits(jit_forward, params, config, inputs, plain)
    tokens = np.asarray(plain.tokens)
    trainer = np.asarray(sampler.token_logprobs(logits, tokens, temperature=0.7))
    assert valid.all() and np.abs(np.asarray(plain.logprobs) - trainer).max() <= LOGPROB_TOLERANCE
    again, other = draw(1), draw(2)
    np.testing.assert_array_equal(np.asarray(again.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(again.logprobs), np.asarray(plain.logprobs))
    assert (np.asarray(other.tokens) != tokens).any()
    with pytest.raises(ValueError, match="rng"):
        sampler.generate(params, config, inputs["input_ids"], max_new_tokens=2, temperature=1.0)


def test_rows_stop_at_different_times(ref):
    _, _, config, params = ref
    ids, mask = text_prompts(config, 0)
    free = np.asarray(sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=N,
                                       stop_tokens=()).tokens)
    stops = (int(free[0, 1]), int(free[2, 4]))
    generation = sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=N, stop_tokens=stops)
    tokens, lengths = np.asarray(generation.tokens), np.asarray(generation.lengths)
    for row in range(3):
        hits = np.flatnonzero(np.isin(free[row], stops))
        length = int(hits[0]) + 1 if hits.size else N
        assert lengths[row] == length
        np.testing.assert_array_equal(tokens[row, :length], free[row, :length])
        assert (tokens[row, length:] == config.text.pad_token_id).all()
    assert lengths[0] <= 2 and lengths[2] <= 5


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 40, 0.5), (0.5, 0, 0.3),
                                                      (1.0, 1, 1.0), (2.0, 0, 0.999)])
def test_top_k_top_p_masks_equal_transformers_warpers(temperature, top_k, top_p):
    rng = np.random.default_rng(int(100 * temperature) + top_k)
    logits = (3 * rng.standard_normal((6, 320))).astype(np.float32)
    config = sampler.SamplingConfig(1, temperature, top_p, top_k)
    ours = np.asarray(sampler.sampling_logits(logits, config))
    scores = hf_warpers.TemperatureLogitsWarper(temperature)(None, torch.as_tensor(logits))
    if top_k:
        scores = hf_warpers.TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = hf_warpers.TopPLogitsWarper(top_p)(None, scores)
    theirs = scores.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-6)
    # draws stay inside the support and follow the distribution
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: sampler.sample_tokens(k, logits[:1], config)[0][0]))(keys))
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
    """prompt (with an image) -> turn 1 (sampled; rows stop at different times) -> feedback (right-padded, one
    row without feedback) -> greedy turn 2 equals generating turn 2 from the concatenation, row by row; an
    inactive row samples nothing; the jitted functions donate the state."""
    _, _, config, params = ref
    rng = np.random.default_rng(7)
    inputs = image_prompts(config, 7)
    vision = {k: inputs[k] for k in VISION_KEYS}
    batch, chunk = 4, 5
    everyone = np.ones(batch, bool)
    no_stops = np.full(sampler.MAX_STOP_TOKENS, -1, np.int32)
    room = 3  # slots left after turn 2 for a turn 3 that the full cache cuts short
    cache_slots = 10 + N + chunk + N + room
    cache = model.init_cache(config, batch, cache_slots, num_images=1)
    state = sampler.start_jit(params, config, inputs["input_ids"], inputs["attention_mask"], cache, **vision)
    turn_config = sampler.SamplingConfig(N, temperature=1.0, top_k=40, top_p=0.9)
    _, dry = sampler.sample_turn_jit(params, config, jax.tree.map(lambda a: a.copy(), state), jax.random.key(3),
                                     turn_config, everyone, no_stops)
    stops = no_stops.copy()
    stops[0] = int(np.asarray(dry.tokens)[0, 2])
    state, turn1 = sampler.sample_turn_jit(params, config, state, jax.random.key(3), turn_config, everyone, stops)
    lengths1 = np.asarray(turn1.lengths)
    assert lengths1[0] <= 3 and len(set(lengths1.tolist())) > 1
    feedback = rng.integers(3, config.text.vocab_size, (batch, chunk)).astype(np.int32)
    feedback_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], np.int32)
    state = sampler.append_jit(params, config, state, feedback, feedback_mask)
    greedy = sampler.SamplingConfig(N)
    eos = no_stops.copy()
    eos[:len(config.text.eos_token_id)] = config.text.eos_token_id
    saved = jax.tree.map(lambda a: a.copy(), state)
    state, turn2 = sampler.sample_turn_jit(params, config, state, jax.random.key(0), greedy, everyone, eos)
    _, masked_turn2 = sampler.sample_turn_jit(params, config, saved, jax.random.key(0), greedy,
                                              np.array([True, False, True, True]), eos)

    # from scratch: each row's valid tokens concatenated, left-padded; appended tokens continue the image mask
    rows, crosses = [], []
    for b in range(batch):
        valid = inputs["attention_mask"][b] == 1
        rows.append(np.concatenate([inputs["input_ids"][b][valid], np.asarray(turn1.tokens)[b, :lengths1[b]],
                                    feedback[b][feedback_mask[b] == 1]]))
        crosses.append(inputs["cross_attention_mask"][b][valid])
    total = max(len(r) for r in rows)
    ids = np.full((batch, total), config.text.pad_token_id, np.int32)
    mask = np.zeros((batch, total), np.int32)
    cross = np.zeros((batch, total, *inputs["cross_attention_mask"].shape[2:]), np.int32)
    for b, (row, prompt_cross) in enumerate(zip(rows, crosses)):
        start = total - len(row)
        ids[b, start:], mask[b, start:] = row, 1
        cross[b, start:start + len(prompt_cross)] = prompt_cross
        cross[b, start + len(prompt_cross):] = prompt_cross[-1]
    scratch = sampler.generate(params, config, ids, max_new_tokens=N, attention_mask=mask,
                               cross_attention_mask=cross, **{k: inputs[k] for k in VISION_KEYS[:3]})
    np.testing.assert_array_equal(np.asarray(turn2.tokens), np.asarray(scratch.tokens))
    np.testing.assert_array_equal(np.asarray(turn2.lengths), np.asarray(scratch.lengths))
    assert np.abs(np.asarray(turn2.logprobs) - np.asarray(scratch.logprobs)).max() <= LOGPROB_TOLERANCE
    # the turn-1 log-probs (drawn with top-k/top-p masks and stops) are the masked distribution's at the token
    logits, valid = full_logits(jit_forward, params, config, inputs, turn1)
    log_probs = np.asarray(sampler.sampling_log_probs(logits, turn_config))
    expected = np.take_along_axis(log_probs, np.asarray(turn1.tokens)[..., None], -1)[..., 0]
    assert np.isfinite(expected[valid]).all()  # every drawn token lies inside the top-k/top-p support
    assert np.abs(np.asarray(turn1.logprobs) - expected)[valid].max() <= LOGPROB_TOLERANCE
    unmasked = np.asarray(sampler.token_logprobs(logits, np.asarray(turn1.tokens), 1.0))
    assert (np.asarray(turn1.logprobs) >= unmasked - 1e-6)[valid].all()  # the masks renormalise
    # inactive rows sample nothing; the others are unaffected
    assert int(masked_turn2.lengths[1]) == 0 and (np.asarray(masked_turn2.tokens)[1] == config.text.pad_token_id).all()
    np.testing.assert_array_equal(np.asarray(masked_turn2.tokens)[[0, 2, 3]], np.asarray(turn2.tokens)[[0, 2, 3]])
    # the cache holds prompt + longest turn 1 + feedback chunk + longest turn 2 slots
    used = 10 + lengths1.max() + chunk + int(np.asarray(turn2.lengths).max())
    assert int(state.cache.index) == used
    # a turn 3 without stops runs until the cache is full, then every row is cut there
    left = cache_slots - used
    assert 0 < left < N
    state, turn3 = sampler.sample_turn_jit(params, config, state, jax.random.key(4), turn_config, everyone, no_stops)
    assert (np.asarray(turn3.lengths) == left).all() and int(state.cache.index) == cache_slots
    assert (np.asarray(turn3.tokens)[:, left:] == config.text.pad_token_id).all()


# ------------------------------------------------------------------------------------------- sharding
def test_sharded_generate_equals_unsharded(ref):
    from model.sharding import batch_sharding, make_mesh, shard_params

    _, _, config, params = ref
    inputs = image_prompts(config, 9)
    kwargs = dict(max_new_tokens=N, temperature=0.7, stop_tokens=config.text.eos_token_id, rng=jax.random.key(5))
    expected = sampler.generate(params, config, **inputs, **kwargs)  # compiled by the log-prob test already
    mesh = make_mesh({"data": 2, "tensor": 4})
    sharded_params = shard_params(params, config, mesh)
    placed = {k: jax.device_put(v, batch_sharding(mesh, v.shape)) for k, v in inputs.items()}
    got = sampler.generate(sharded_params, config, **placed, mesh=mesh, **kwargs)
    assert len(got.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(expected.lengths))
    assert np.abs(np.asarray(got.logprobs) - np.asarray(expected.logprobs)).max() <= 1e-5
