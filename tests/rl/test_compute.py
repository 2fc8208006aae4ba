"""Compute accounting: the paper's FLOP formulas, the pure counter, and parameter counting."""

import jax.numpy as jnp
import pytest

from rl.compute import (ComputeCounter, add, gflops, inference_flops, parameter_count, rl_flops, total_flops,
                        total_gflops, train_flops)


def test_formulas():
    n = 10_600_000_000
    assert train_flops(n, 1000) == 6 * n * 1000
    assert inference_flops(n, 1000) == 2 * n * 1000
    assert rl_flops(n, 500, 300, 1800) == 6 * n * 800 + 2 * n * 1800
    assert gflops(3_000_000_000) == 3.0


def test_counter_is_pure_and_exact_beyond_int32():
    start = ComputeCounter(init_tokens=1_000_000)
    after = add(start, train_tokens=jnp.array(3_000, jnp.int32), inference_tokens=18_000)
    after = add(after, train_tokens=2**31, inference_tokens=0)
    assert start == ComputeCounter(init_tokens=1_000_000)  # unchanged
    assert after == ComputeCounter(init_tokens=1_000_000, train_tokens=3_000 + 2**31, inference_tokens=18_000)
    n = 7
    assert total_flops(after, n) == 6 * n * (1_000_000 + 3_000 + 2**31) + 2 * n * 18_000
    assert total_gflops(after, n) == pytest.approx(total_flops(after, n) / 1e9)
    with pytest.raises(ValueError, match="negative"):
        add(start, train_tokens=-1)


def test_parameter_count_all_and_without_embeddings():
    params = {"language_model": {"embed_tokens": {"embedding": jnp.zeros((10, 4))},
                                 "layers": [{"w": jnp.zeros((4, 4))}, {"w": jnp.zeros((4, 4))}],
                                 "lm_head": {"kernel": jnp.zeros((4, 10))}},
              "value_head": {"b": jnp.zeros(())}}
    assert parameter_count(params) == 40 + 32 + 40 + 1
    assert parameter_count(params, exclude=r"embed_tokens|lm_head") == 33


def test_the_token_counts_behind_d_rl_and_d_buffer():
    """What `memgen rl` adds to the counter per update, on a hand-made 2-row rollout with 2 verification steps
    (row 0 solved at its first answer, row 1 answered twice with a feedback turn between): D_buffer = prompt +
    sampled + feedback tokens (`rollout_statistics`); D_RL per epoch = context + response tokens of every valid
    transition (`train_token_count` over `transition_sequences`: the context of a later answer holds the prompt,
    the earlier answers and the feedback), padding and invalid slots never counted."""
    import numpy as np

    from rl.buffer import rollout_statistics, train_token_count
    from rl.rollout import Trajectory, transition_sequences

    B, K, P, N, F = 2, 2, 6, 4, 3
    prompt_mask = np.zeros((B, P), np.int32)
    prompt_mask[0, 3:] = 1  # 3 tokens, left-padded
    prompt_mask[1, 1:] = 1  # 5 tokens
    response_mask = np.zeros((B, K, N), np.int32)
    response_mask[0, 0, :3] = 1
    response_mask[1, 0, :4] = 1
    response_mask[1, 1, :2] = 1
    feedback_mask = np.zeros((B, K, F), np.int32)
    feedback_mask[1, 0, :2] = 1
    valid = np.array([[True, False], [True, True]])
    ids = lambda shape: np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape) % 50 + 1  # noqa: E731
    zeros = np.zeros((B, K), np.float32)
    trajectory = Trajectory(prompt_ids=ids((B, P)), prompt_mask=prompt_mask, response_ids=ids((B, K, N)),
                            response_logprobs=np.zeros((B, K, N), np.float32), response_mask=response_mask,
                            feedback_ids=ids((B, K, F)), feedback_mask=feedback_mask, values=zeros,
                            rewards=np.array([[5.0, 0.0], [-1.0, -1.0]], np.float32),
                            dones=np.array([[True, False], [False, True]]),
                            success=np.array([[True, False], [False, False]]), valid=valid,
                            bootstrap_value=np.zeros((B,), np.float32))
    assert int(rollout_statistics(trajectory)["inference_tokens"]) == (3 + 5) + (3 + 4 + 2) + 2
    sequences = transition_sequences(trajectory)
    flat = lambda x: np.asarray(x).reshape(B * K, *np.shape(x)[2:])  # noqa: E731
    buffer = {"context_mask": flat(sequences["context_mask"]), "response_mask": flat(sequences["response_mask"]),
              "valid": flat(valid)}
    # row 0: (3 + 3); row 1: (5 + 4) then (5 + 4 + 2 feedback + 2); row 0's second slot is not valid
    assert int(train_token_count(buffer)) == (3 + 3) + (5 + 4) + (5 + 4 + 2 + 2)
    assert total_flops(add(ComputeCounter(init_tokens=100), train_tokens=4 * 28, inference_tokens=19), 10) == \
        6 * 10 * (100 + 4 * 28) + 2 * 10 * 19
