"""The scan rollout against a plain Python loop that regenerates every turn from the concatenated ids with
`model.generate` (no cache reuse), scripted verifiers (always right / always wrong / mixed) for rewards, dones,
masks and episode lengths, and the first PPO ratio == 1 from the training sequences (text, and images with the
rebuilt cross-attention mask)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model.sampler import SamplingConfig
from rl.rollout import RolloutConfig, rollout, transition_policy, transition_sequences

B, K, N, F = 3, 3, 6, 5
PROMPT_LENGTHS = (7, 4, 9)
P = 9


@pytest.fixture(scope="module")
def tiny():
    config = model.preset("tiny")
    params = model.init_params(jax.random.key(0), config, value_head=True)
    return config, params


def prompts(config, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((B, P), config.text.pad_token_id, np.int32)
    mask = np.zeros((B, P), np.int32)
    for b, length in enumerate(PROMPT_LENGTHS):
        ids[b, P - length:] = rng.integers(0, config.text.vocab_size - 16, length)
        mask[b, P - length:] = 1
    return ids, mask


def image_prompts(config, params):
    """GP-VL-shaped prompts: rows with 1, 2 and 4 tiles of one image, left-padded to P. Returns the rollout's
    keyword inputs (prompt ids / mask, the encoded images and the prompts' cross-attention mask) and the images
    as the buffers take them (`rl.buffer.Images`, with the pixels)."""
    from model.forward import vision_states
    from rl.buffer import Images
    from tests.model.test_forward import image_batch

    batch = image_batch(config, np.random.default_rng(5), [[1], [2], [4]], P, [[3], [2], [1]], pad=[2, 1, 0])
    pixels = [jnp.asarray(batch[k]) for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")]
    images = Images(vision_states(params, config, *pixels), jnp.asarray(batch["cross_attention_mask"], jnp.int32),
                    *pixels)
    inputs = dict(prompt_ids=jnp.asarray(batch["input_ids"], jnp.int32),
                  prompt_mask=jnp.asarray(batch["attention_mask"], jnp.int32),
                  cross_attention_states=images.states, cross_attention_mask=images.cross_attention_mask)
    return inputs, images


class ScriptedVerifier:
    """Row b is solved at step solve_at[b] (never if None); until then reward -1 and a feedback turn of
    feedback_lengths[b] distinct token ids; the budget K ends every episode (done at step K - 1)."""

    def script(self, solve_at, feedback_lengths, seen=None):
        self.solve_at, self.feedback_lengths, self.seen = solve_at, feedback_lengths, seen
        return self

    def feedback(self, row, step):
        return (np.arange(self.feedback_lengths[row]) * 7 + 11 * row + 3 * step + 1) % 250

    def __call__(self, tokens, lengths, active, step):
        step = int(step)
        rewards = np.zeros((B,), np.float32)
        done, success = np.zeros((B,), bool), np.zeros((B,), bool)
        ids, mask = np.zeros((B, F), np.int32), np.zeros((B, F), np.int32)
        for b in range(B):
            if not active[b]:
                continue
            if self.seen is not None:
                self.seen.append((b, step, np.asarray(tokens[b, :lengths[b]]).tolist()))
            solved = self.solve_at[b] is not None and step == self.solve_at[b]
            rewards[b], success[b], done[b] = (5.0 if solved else -1.0), solved, solved or step == K - 1
            fb = self.feedback(b, step)
            ids[b, :len(fb)], mask[b, :len(fb)] = fb, 1
        return rewards, done, success, ids, mask


VERIFIER = ScriptedVerifier()  # one static object for every test: the rollout compiles once per sampling config


def compiled_rollout(config, sampling, cache_stages=1):
    return _compiled_rollout(config, sampling, cache_stages)  # one cache key however it is called


@functools.cache
def _compiled_rollout(config, sampling, cache_stages):
    return jax.jit(functools.partial(rollout, config=config, verifier=VERIFIER,
                                     rollout_config=RolloutConfig(sampling, K, F, cache_stages=cache_stages)))


@functools.cache
def compiled_policy(config, temperature):
    """transition_policy with the entropy (one compilation per input shape for every test)."""
    policy = jax.jit(functools.partial(transition_policy, config=config, temperature=temperature, return_entropy=True))
    keys = ("context_ids", "context_mask", "response_ids", "response_mask")
    return lambda params, minibatch: policy(params, {k: minibatch[k] for k in keys})


def run_rollout(config, params, verifier, sampling, seed=0):
    assert verifier is VERIFIER
    ids, mask = prompts(config)
    fn = compiled_rollout(config, sampling)
    return jax.device_get(fn(params, prompt_ids=ids, prompt_mask=mask, rng=jax.random.key(seed)))


def test_scan_equals_python_loop(tiny):
    """Greedy: every response, log-prob and value equals regenerating from the concatenated ids."""
    config, params = tiny
    verifier = VERIFIER.script([0, 1, None], [5, 2, 4])
    traj = run_rollout(config, params, verifier, SamplingConfig(N))
    ids, mask = prompts(config)
    contexts = [list(ids[b][mask[b] == 1]) for b in range(B)]
    forward = jax.jit(functools.partial(model.forward, config=config, return_values=True))
    length = 64  # every turn's batch is all B rows left-padded to 64 tokens: one compilation of generate and forward
    for k in range(K):
        rows = [b for b in range(B) if verifier.solve_at[b] is None or k <= verifier.solve_at[b]]
        np.testing.assert_array_equal(traj.valid[:, k], [b in rows for b in range(B)])
        batch = np.full((B, length), config.text.pad_token_id, np.int32)
        batch_mask = np.zeros_like(batch)
        for b in range(B):  # finished rows ride along unchanged; only the playing rows are compared
            batch[b, length - len(contexts[b]):], batch_mask[b, length - len(contexts[b]):] = contexts[b], 1
        generation = model.generate(params, config, jnp.asarray(batch), attention_mask=jnp.asarray(batch_mask),
                                    max_new_tokens=N)
        logits, values = forward(params, input_ids=jnp.asarray(batch), attention_mask=jnp.asarray(batch_mask))
        for b in rows:
            n = int(generation.lengths[b])
            assert int(traj.response_mask[b, k].sum()) == n
            np.testing.assert_array_equal(traj.response_ids[b, k, :n], np.asarray(generation.tokens[b, :n]))
            np.testing.assert_allclose(traj.response_logprobs[b, k, :n], np.asarray(generation.logprobs[b, :n]),
                                       atol=1e-4)
            np.testing.assert_allclose(traj.values[b, k], float(values[b, -1]), atol=1e-4)
            contexts[b] += list(np.asarray(generation.tokens[b, :n]))
            if not traj.dones[b, k]:
                contexts[b] += list(verifier.feedback(b, k))
    np.testing.assert_array_equal(traj.dones.sum(axis=1), [1, 1, 1])


@pytest.mark.parametrize("solve_at, steps, reward_sum", [([0, 0, 0], [1, 1, 1], [5, 5, 5]),
                                                          ([None] * 3, [3, 3, 3], [-3, -3, -3]),
                                                          ([2, None, 1], [3, 3, 2], [3, -3, 4])])
def test_scripted_verifier(tiny, solve_at, steps, reward_sum):
    config, params = tiny
    seen = []
    traj = run_rollout(config, params, VERIFIER.script(solve_at, [5, 2, 4], seen), SamplingConfig(N))
    np.testing.assert_array_equal(traj.valid.sum(axis=1), steps)  # episode lengths
    np.testing.assert_array_equal(traj.rewards.sum(axis=1), reward_sum)
    np.testing.assert_array_equal(traj.dones.sum(axis=1), [1, 1, 1])  # exactly one terminal transition per row
    last = np.asarray(steps) - 1
    assert traj.dones[np.arange(B), last].all()
    np.testing.assert_array_equal(traj.success.any(axis=1), [s is not None for s in solve_at])
    assert not traj.response_mask[~traj.valid].any() and not traj.feedback_mask[traj.dones].any()
    assert (traj.rewards[~traj.valid] == 0).all() and (traj.bootstrap_value == 0).all()
    # the verifier saw every valid response exactly once per (row, step), with its ids
    assert sorted((b, k) for b, k, _ in set((b, k, tuple(t)) for b, k, t in seen)) == \
        sorted((b, k) for b in range(B) for k in range(steps[b]))


def test_first_ppo_ratio_is_one(tiny):
    """Sampling at temperature 0.7: the training sequences' recomputed log-probs and values equal the rollout's."""
    config, params = tiny
    traj = run_rollout(config, params, VERIFIER.script([None, 1, 0], [5, 2, 4]), SamplingConfig(N, temperature=0.7),
                       seed=3)
    seqs = transition_sequences(traj)
    flat = {name: np.asarray(value).reshape(B * K, *value.shape[2:]) for name, value in seqs.items()}
    token_logprobs, values, _ = compiled_policy(config, 0.7)(params, minibatch=flat)
    valid = traj.valid.reshape(-1)
    mask = flat["response_mask"] != 0
    new = np.where(mask, np.asarray(token_logprobs), 0.0).sum(-1)
    old = traj.response_logprobs.reshape(B * K, N).sum(-1)
    ratio = np.exp(new - old)[valid]
    np.testing.assert_allclose(ratio, 1.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(values)[valid], traj.values.reshape(-1)[valid], atol=1e-4)

    # The reference's 0.5 weight before the answer key: the buffer's old_logprob and its token_weights (which
    # ppo_loss applies to the new log-probs) are the same weights, so the first ratio stays 1.
    from rl.buffer import ppo_buffer
    from rl.ppo import PPOConfig, sequence_logprob

    answer_start = np.random.default_rng(0).integers(0, N + 1, (B, K))
    buffer = jax.device_get(ppo_buffer(traj, PPOConfig(answer_key_weight=0.5), answer_start=answer_start))
    weights = buffer["token_weights"]
    positions = np.arange(N)[None, :]
    np.testing.assert_array_equal(weights, np.where(mask, np.where(positions < answer_start.reshape(-1, 1), 0.5, 1.0),
                                                    0.0))
    new_weighted = np.asarray(sequence_logprob(token_logprobs, mask, weights))
    np.testing.assert_allclose(np.exp(new_weighted - buffer["old_logprob"])[valid], 1.0, atol=1e-4)
    np.testing.assert_allclose(buffer["old_logprob"], (traj.response_logprobs.reshape(B * K, N) * weights).sum(-1),
                               atol=1e-5)


def test_first_ppo_ratio_is_one_with_images(tiny):
    """GP-VL layout: images encoded once, cross-attention K/V in the cache; the training sequences rebuild the
    cross-attention mask (prompt rows, then the prompt's last row repeated) and give the same log-probs and values."""
    from rl.rollout import transition_cross_attention_mask

    config, params = tiny
    inputs, images = image_prompts(config, params)
    states, cross = images.states, images.cross_attention_mask
    sampling = SamplingConfig(N, temperature=0.7)
    VERIFIER.script([None, 1, 0], [5, 2, 4])
    traj = jax.device_get(compiled_rollout(config, sampling)(params, rng=jax.random.key(4), **inputs))
    seqs = transition_sequences(traj)
    cross_seq = transition_cross_attention_mask(cross, seqs.pop("context_order"), N)
    flat = {name: np.asarray(value).reshape(B * K, *value.shape[2:]) for name, value in seqs.items()}
    flat["cross_attention_mask"] = np.asarray(cross_seq).reshape(B * K, *cross_seq.shape[2:])
    flat["cross_attention_states"] = np.repeat(np.asarray(states), K, axis=0)
    token_logprobs, values, _ = jax.jit(functools.partial(transition_policy, config=config, temperature=0.7))(
        params, minibatch=flat)
    valid = traj.valid.reshape(-1)
    new = np.where(flat["response_mask"] != 0, np.asarray(token_logprobs), 0.0).sum(-1)
    ratio = np.exp(new - traj.response_logprobs.reshape(B * K, N).sum(-1))[valid]
    np.testing.assert_allclose(ratio, 1.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(values)[valid], traj.values.reshape(-1)[valid], atol=1e-4)


def _numpy_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_entropy_reference_logprobs_and_k1_shaping(tiny):
    """transition_policy's entropy and reference_token_logprobs (another, frozen set of params) against numpy over
    model.forward's logits; the PPO buffer's k1 shaping r - kl_coef * (log pi_old - log pi_ref) and its k3 key."""
    from rl.buffer import ppo_buffer_from_transitions, transition_arrays
    from rl.gae import gae
    from rl.ppo import PPOConfig
    from rl.rollout import reference_token_logprobs

    config, params = tiny
    temperature = 0.7
    traj = run_rollout(config, params, VERIFIER.script([None, 1, 0], [5, 2, 4]),
                       SamplingConfig(N, temperature=temperature), seed=3)
    reference_params = model.init_params(jax.random.key(1), config, value_head=True)
    transitions = transition_arrays(traj)
    ref = np.asarray(jax.jit(functools.partial(reference_token_logprobs, config=config, temperature=temperature,
                                               chunk_size=3))(reference_params, transitions))
    flat = {k: np.asarray(v).reshape(B * K, *v.shape[2:]) for k, v in transitions.items()}
    _, _, entropy = compiled_policy(config, temperature)(params, minibatch=flat)
    for policy_params, check in ((reference_params, "reference"), (params, "entropy")):
        ids = np.concatenate([flat["context_ids"], flat["response_ids"]], 1)
        mask = np.concatenate([flat["context_mask"], flat["response_mask"]], 1)
        logits = np.asarray(model.forward(policy_params, config, jnp.asarray(ids), attention_mask=jnp.asarray(mask)),
                            np.float64)[:, -N - 1:-1] / temperature
        log_probs = _numpy_log_softmax(logits)
        on = flat["response_mask"] != 0
        if check == "reference":
            expected = np.take_along_axis(log_probs, flat["response_ids"][..., None], -1)[..., 0]
            np.testing.assert_allclose(ref.reshape(B * K, N)[on], expected[on], atol=1e-4)
        else:
            expected = -(np.exp(log_probs) * log_probs).sum(-1)
            np.testing.assert_allclose(np.asarray(entropy)[on], expected[on], atol=1e-4)

    coef = 0.3
    buffer = ppo_buffer_from_transitions(transitions, traj.bootstrap_value,
                                         PPOConfig(kl_mode="k1_reward", kl_coef=coef), ref_token_logprobs=ref)
    mask = traj.response_mask
    old = np.where(mask, traj.response_logprobs, 0).sum(-1)
    ref_seq = np.where(mask, ref, 0).sum(-1)
    shaped = np.where(traj.valid, traj.rewards - coef * (old - ref_seq), 0.0)
    np.testing.assert_allclose(np.asarray(buffer["rewards"]).reshape(B, K), shaped, atol=1e-4)
    advantages, _ = gae(jnp.asarray(shaped), traj.values, traj.dones, traj.valid, traj.bootstrap_value,
                        PPOConfig().gae)
    np.testing.assert_allclose(np.asarray(buffer["advantages"]).reshape(B, K), advantages, atol=1e-4)
    k3 = ppo_buffer_from_transitions(transitions, traj.bootstrap_value, PPOConfig(kl_mode="k3_loss", kl_coef=coef),
                                     ref_token_logprobs=ref)
    np.testing.assert_array_equal(np.asarray(k3["ref_token_logprobs"]), ref.reshape(B * K, N))
    np.testing.assert_allclose(np.asarray(k3["rewards"]).reshape(B, K), traj.rewards, atol=0)


def test_a_detached_value_input_keeps_the_values_and_trains_only_the_value_head(tiny):
    """PPOConfig.value_loss_trains_trunk=False: the value loss's gradient stops at the value head's input, so it
    reaches the head alone, while the values and the log-probs' gradients are those of the attached critic."""
    config, params = tiny
    ids, mask = prompts(config, seed=3)
    rng = np.random.default_rng(4)
    minibatch = {"context_ids": jnp.asarray(ids), "context_mask": jnp.asarray(mask),
                 "response_ids": jnp.asarray(rng.integers(0, config.text.vocab_size - 16, (B, N)), jnp.int32),
                 "response_mask": jnp.ones((B, N), jnp.int32)}

    def grads(detach, which):
        def loss(p):
            logprobs, values, _ = transition_policy(p, minibatch, config=config, temperature=0.7,
                                                    detach_value_input=detach)
            return jnp.sum(values ** 2) if which == "value" else jnp.sum(logprobs)
        return jax.jit(jax.value_and_grad(loss))(params)

    (attached, attached_grads), (detached, detached_grads) = grads(False, "value"), grads(True, "value")
    assert float(attached) == pytest.approx(float(detached), rel=1e-5)  # two programs: rounding only
    trunk = lambda tree: {k: v for k, v in tree.items() if k != "value_head"}  # noqa: E731
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(trunk(detached_grads))) == 0.0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(trunk(attached_grads))) > 0.0
    for got, want in zip(jax.tree.leaves(detached_grads["value_head"]), jax.tree.leaves(attached_grads["value_head"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-9)
    for got, want in zip(jax.tree.leaves(grads(True, "policy")[1]), jax.tree.leaves(grads(False, "policy")[1])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("images", [False, True])
def test_cache_stages_play_the_same_episodes(tiny, images):
    """cache_stages 2 and 3 (K = 3: turns [0, 1] + [2], and one per turn) grow the cache between scans; the
    trajectory is the one-cache rollout's: the same tokens, masks, rewards and dones, log-probs and values to float
    rounding (attention over fewer empty slots sums the same terms). Sampled at temperature 0.7, rows solved at
    different steps, with and without images (cross-attention K/V kept across the growth)."""
    from rl.rollout import turn_stages

    config, params = tiny
    if images:
        inputs = image_prompts(config, params)[0]
    else:
        ids, mask = prompts(config)
        inputs = dict(prompt_ids=ids, prompt_mask=mask)
    sampling = SamplingConfig(N, temperature=0.7)
    VERIFIER.script([None, 1, 0], [5, 2, 4])
    # with images one cache against one per step (the one-cache program is test_first_ppo_ratio_is_one_with_images')
    one, *staged = [jax.device_get(compiled_rollout(config, sampling, stages)(params, rng=jax.random.key(2), **inputs))
                    for stages in ((1, 3) if images else (1, 2, 3))]
    assert [list(map(list, turn_stages(RolloutConfig(sampling, K, F, cache_stages=n)))) for n in (2, 3)] == [
        [[0, 1], [2]], [[0], [1], [2]]]
    for traj in staged:
        for name in ("response_ids", "response_mask", "feedback_ids", "feedback_mask", "rewards", "dones", "valid"):
            np.testing.assert_array_equal(getattr(traj, name), getattr(one, name), err_msg=name)
        for name in ("response_logprobs", "values", "bootstrap_value"):
            np.testing.assert_allclose(getattr(traj, name), getattr(one, name), atol=1e-5, err_msg=name)
    assert one.valid.sum() == 6  # rows end at different steps
    with pytest.raises(ValueError, match="cache_stages=4 must be between 1 and max_verify_steps=3"):
        RolloutConfig(sampling, K, F, cache_stages=4)
