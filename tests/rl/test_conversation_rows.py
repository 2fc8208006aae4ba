"""Conversation rows (`PPOConfig.episode_rows` / `GRPOConfig.episode_rows`): one forward over each row's whole
conversation scores its K transitions as the per-transition training sequences do (text and images, log-probs,
entropy, values, the reference's log-probs), and a PPO / GRPO update over rows equals the per-transition update
whose minibatches hold the same transitions (also with microbatches, skip_padding and several conversations per
row, V-IRL's layout)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

import model
from model.sampler import SamplingConfig
from rl.buffer import concatenate_transitions, grpo_buffer, ppo_buffer, ppo_buffer_from_transitions, transition_arrays
from rl.grpo import GRPOConfig, grpo_update
from rl.ppo import PPOConfig, ppo_optimizer, ppo_update
from rl.rollout import IMAGE_KEYS, episode_sequences, reference_token_logprobs, transition_policy
from rl.update import SHARED, SHARED_INDEX, init_train_state, with_shared
from tests.rl.test_rollout import B, K, N, P, VERIFIER, compiled_rollout, image_prompts, run_rollout

POLICY_KEYS = ("context_ids", "context_mask", "response_ids", "response_mask", "stream_ids", "stream_mask",
               "response_starts", "context_ends") + IMAGE_KEYS


@pytest.fixture(scope="module")
def tiny():
    config = model.preset("tiny")
    return config, model.init_params(jax.random.key(0), config, value_head=True)


def sampled(config, params, images):
    """A rollout at temperature 0.7 with rows solved at different steps (one never), and its images argument."""
    VERIFIER.script([None, 1, 0], [5, 2, 4])
    sampling = SamplingConfig(N, temperature=0.7)
    if not images:
        return run_rollout(config, params, VERIFIER, sampling, seed=3), None
    inputs, images = image_prompts(config, params)
    return jax.device_get(compiled_rollout(config, sampling)(params, rng=jax.random.key(4), **inputs)), images


@functools.cache
def compiled_policy(config):
    return jax.jit(functools.partial(transition_policy, config=config, temperature=0.7, return_entropy=True))


def test_episode_sequences_lay_out_the_conversation(tiny):
    """The stream is prompt, then per turn the N response slots and F feedback slots (the last feedback dropped);
    context_ends is the last real token before each response: the prompt's last, then the last feedback token."""
    config, params = tiny
    traj, _ = sampled(config, params, images=False)
    seqs = jax.device_get(episode_sequences(traj))
    per_turn = N + traj.feedback_ids.shape[-1]
    assert seqs["stream_ids"].shape == (B, P + K * N + (K - 1) * traj.feedback_ids.shape[-1])
    for b in range(B):
        for k in range(K):
            start = P + k * per_turn
            assert seqs["response_starts"][b, k] == start
            np.testing.assert_array_equal(seqs["stream_ids"][b, start:start + N], traj.response_ids[b, k])
            np.testing.assert_array_equal(seqs["stream_mask"][b, start:start + N], traj.response_mask[b, k])
            real = np.flatnonzero(seqs["stream_mask"][b, :start])
            assert seqs["context_ends"][b, k] == real[-1]
            if k:  # the previous turn's feedback is what the stream holds right before this response
                feedback = traj.feedback_mask[b, k - 1].sum()
                np.testing.assert_array_equal(seqs["stream_ids"][b, start - per_turn + N:][:feedback],
                                              traj.feedback_ids[b, k - 1, :feedback])


@pytest.mark.parametrize("images", [False, True])
def test_one_forward_per_conversation_scores_every_transition(tiny, images):
    """Log-probs, entropy and values of the rows' forward equal the per-transition sequences' (and so the
    rollout's); the reference's log-probs too. With images, the rows encode them again from their pixels
    (`Images` with pixels: the update's gradient reaches the vision encoder) to the same outputs."""
    config, params = tiny
    traj, image_args = sampled(config, params, images)
    states_only = None if image_args is None else image_args.without_pixels()
    transitions, rows = transition_arrays(traj, states_only), transition_arrays(traj, image_args, rows=True)
    flat = {k: np.asarray(v).reshape(B * K, *v.shape[2:]) for k, v in transitions.items()
            if k in POLICY_KEYS + (SHARED_INDEX,)}
    if images:  # an episode's transitions share its images: each reads them by its episode's index
        assert transitions[SHARED]["cross_attention_states"].shape[0] == B
        flat = with_shared(flat, transitions[SHARED])
    want = [np.asarray(x).reshape(B, K, *x.shape[1:]) for x in compiled_policy(config)(params, flat)]
    got = [np.asarray(x) for x in compiled_policy(config)(params, {k: v for k, v in rows.items() if k in POLICY_KEYS})]
    assert ("pixel_values" in rows) == images and "cross_attention_states" not in rows
    on = (traj.response_mask != 0) & traj.valid[..., None]
    for name, g, w in zip(("log-probs", "values", "entropy"), got, want):
        assert g.shape == w.shape, name
        scored = on if g.ndim == 3 else traj.valid
        np.testing.assert_allclose(g[scored], w[scored], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got[0][on], traj.response_logprobs[on], atol=1e-4)
    np.testing.assert_allclose(got[1][traj.valid], traj.values[traj.valid], atol=1e-4)

    # another policy's log-probs (a KL reference): with pixels, it encodes the images with its own vision encoder
    reference = model.init_params(jax.random.key(1), config, value_head=True)
    ref = functools.partial(reference_token_logprobs, config=config, temperature=0.7)
    np.testing.assert_allclose(np.asarray(ref(reference, rows, chunk_size=1))[on],
                               np.asarray(ref(reference, transition_arrays(traj, image_args), chunk_size=3))[on],
                               atol=1e-5)


def test_concatenated_rollouts_keep_their_own_images_once_per_episode(tiny):
    """V-IRL's per-transition layout with images: each rollout's images are kept once per row (the buffer's
    shared arrays, (2 B, ...) for two rollouts) and every transition reads its own rollout's, as a copy per
    transition would give it."""
    from rl.buffer import Images
    from rl.update import take_items

    config, params = tiny
    traj, first = sampled(config, params, images=True)
    second = Images(first.states + 1.0, first.cross_attention_mask, first.pixel_values + 1.0, first.aspect_ratio_ids,
                    first.aspect_ratio_mask)
    terminal = np.ones(B, bool)
    joined = concatenate_transitions([transition_arrays(traj, images, terminal) for images in (first, second)])
    buffer = ppo_buffer_from_transitions(joined, traj.bootstrap_value, PPOConfig())
    assert buffer[SHARED]["pixel_values"].shape[0] == 2 * B and buffer["valid"].shape == (B * 2 * K,)
    items = take_items(buffer, np.arange(B * 2 * K))
    for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
        per_part = [np.asarray(getattr(images, name)) for images in (first, second)]
        copies = np.stack([np.stack([per_part[k // K][b] for k in range(2 * K)]) for b in range(B)])
        np.testing.assert_array_equal(np.asarray(items[name]), copies.reshape(B * 2 * K, *copies.shape[2:]),
                                      err_msg=name)


def assert_same_update(state_a, metrics_a, state_b, metrics_b, names):
    """The same params and metrics to float rounding. The two programs sum the same terms in another order, and
    Adam turns a last-bit difference of a near-zero gradient into a visible one (its step is ~lr whatever the
    gradient's size): every param within 5e-5 (lr 1e-3, two steps), under 0.5% of them beyond 2e-6."""
    got, want = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.params)]) for s in (state_a, state_b))
    difference = np.abs(got - want)
    assert difference.max() < 5e-5 and np.mean(difference > 2e-6) < 5e-3, (difference.max(), np.mean(difference > 2e-6))
    for name in names:
        np.testing.assert_allclose(float(metrics_a[name]), float(metrics_b[name]), rtol=1e-4, atol=1e-6, err_msg=name)
    assert int(state_a.step) == int(state_b.step)


@pytest.mark.parametrize("variant", ["microbatches", "skip_padding with images"])
def test_ppo_update_over_rows_equals_the_update_over_their_transitions(tiny, variant):
    """With one minibatch per epoch (all B rows / all B * K transitions) both updates see the same transitions,
    so two epochs of either give the same params and metrics: microbatches of one row each against one
    microbatch of transitions; skip_padding (every row has a valid transition) with images."""
    config, params = tiny
    traj, image_args = sampled(config, params, images=variant != "microbatches")
    cfg = PPOConfig(epochs=2, minibatch_size=B * K, learning_rate=1e-3, final_learning_rate=1e-4, max_grad_norm=1.0,
                    entropy_coef=0.01, answer_key_weight=0.5, skip_padding=variant != "microbatches")
    row_cfg = dataclasses.replace(cfg, episode_rows=True, minibatch_size=B,
                                  microbatches=B if variant == "microbatches" else 1)
    policy = functools.partial(transition_policy, config=config, temperature=0.7, return_entropy=True)
    answer_start = np.random.default_rng(0).integers(0, N + 1, (B, K))  # the reference's 0.5 before the answer key
    results = []
    for c in (cfg, row_cfg):
        buffer = ppo_buffer(traj, c, image_args, answer_start=answer_start)
        optimizer = ppo_optimizer(c, 4)
        update = jax.jit(functools.partial(ppo_update, policy_fn=policy, optimizer=optimizer, config=c))
        results.extend(update(init_train_state(params, optimizer), buffer, jax.random.key(7)))
    # explained_variance over microbatches is their own ones', weighted (rl.ppo.ppo_loss), not the minibatch's
    names = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm")
    assert_same_update(*results, names + (() if variant == "microbatches" else ("explained_variance",)))
    if image_args is not None:
        # the update encoded the pixels, so the vision encoder and projector trained; reading the rollout's encoded
        # states instead (RLConfig.freeze_vision), they get no gradient and Adam leaves them as they were
        frozen = update(init_train_state(params, optimizer), ppo_buffer(traj, row_cfg, image_args.without_pixels(),
                                                                        answer_start=answer_start), jax.random.key(7))
        for name in ("vision_encoder", "projector", "language_model"):
            moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                     zip(jax.tree.leaves(results[2].params[name]), jax.tree.leaves(params[name]))]
            still = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                     zip(jax.tree.leaves(frozen[0].params[name]), jax.tree.leaves(params[name]))]
            assert max(moved) > 1e-4, name
            assert (max(still) == 0.0) == (name != "language_model"), name


def test_grpo_update_over_rows_equals_the_update_over_their_transitions(tiny):
    config, params = tiny
    traj, _ = sampled(config, params, images=False)
    traj = dataclasses.replace(traj, **{f.name: np.concatenate([getattr(traj, f.name)] * 2)
                                        for f in dataclasses.fields(traj)})  # 2 groups of 3 rollouts
    cfg = GRPOConfig(group_size=B, epochs=2, minibatch_size=2 * B * K, aggregation="sequence_mean")
    row_cfg = dataclasses.replace(cfg, episode_rows=True, minibatch_size=2 * B, microbatches=2)
    logprobs = lambda p, mb: transition_policy(p, mb, config=config, temperature=0.7)[0]  # noqa: E731
    results = []
    for c in (cfg, row_cfg):
        optimizer = ppo_optimizer(PPOConfig(learning_rate=1e-3, final_learning_rate=1e-4, max_grad_norm=1.0), 4)
        update = jax.jit(functools.partial(grpo_update, logprob_fn=logprobs, optimizer=optimizer, config=c))
        results.extend(update(init_train_state(params, optimizer), grpo_buffer(traj, c), jax.random.key(7)))
    assert_same_update(*results, ("loss", "policy_loss", "approx_kl", "grad_norm"))


def test_several_conversations_per_row_become_rows_of_their_own(tiny):
    """V-IRL's layout: two rollouts of the same rows concatenated along K, GAE along the whole row; as
    conversation rows each rollout is a row (B x 2 rows of K transitions) with the same advantages and returns,
    and one update over all of them equals the per-transition update."""
    config, params = tiny
    first, _ = sampled(config, params, images=False)
    second = run_rollout(config, params, VERIFIER.script([0, None, 2], [3, 5, 1]), SamplingConfig(N, temperature=0.7),
                         seed=9)
    cfg = PPOConfig(epochs=1, minibatch_size=2 * B * K, learning_rate=1e-3, final_learning_rate=1e-4,
                    max_grad_norm=1.0)
    row_cfg = dataclasses.replace(cfg, episode_rows=True, minibatch_size=2 * B)
    buffers = []
    for c in (cfg, row_cfg):
        parts = [transition_arrays(t, None, np.array([False, True, True]), rows=c.episode_rows)
                 for t in (first, second)]
        buffers.append(ppo_buffer_from_transitions(concatenate_transitions(parts), second.bootstrap_value, c))
    flat, rows = buffers
    assert rows["stream_ids"].shape[0] == 2 * B and rows["valid"].shape == (2 * B, K)
    for name in ("advantages", "returns", "old_logprob", "valid"):
        np.testing.assert_array_equal(np.asarray(rows[name]).reshape(-1), np.asarray(flat[name]), err_msg=name)
    policy = functools.partial(transition_policy, config=config, temperature=0.7)
    results = []
    for c, buffer in zip((cfg, row_cfg), buffers):
        optimizer = ppo_optimizer(c, 4)
        update = jax.jit(functools.partial(ppo_update, policy_fn=policy, optimizer=optimizer, config=c))
        results.extend(update(init_train_state(params, optimizer), buffer, jax.random.key(7)))
    assert_same_update(*results, ("loss", "policy_loss", "value_loss"))
