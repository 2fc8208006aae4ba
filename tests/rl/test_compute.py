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
