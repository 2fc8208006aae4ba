"""Param groups and counts (11B / 90B via jax.eval_shape, checked against transformers' own counts), random init,
and the value head against a numpy MLP."""

import jax
import numpy as np

import model
from model.params import GROUPS

# Counted from transformers.MllamaForConditionalGeneration built on the meta device with these configs
# (Llama-3.2-11B-Vision: 10,670,220,835 parameters; 90B: 88,593,355,323).
HF_COUNTS = {
    "11b": {"vision_encoder": 863567379, "projector": 31461376, "cross_attention": 1744898064,
            "language_model": 8030294016, "total": 10670220835},
    "90b": {"vision_encoder": 863567379, "projector": 62922752, "cross_attention": 17113093160,
            "language_model": 70553772032, "total": 88593355323},
}


def test_counts_match_transformers_without_allocating():
    for name, expected in HF_COUNTS.items():
        assert model.param_counts(model.param_shapes(model.preset(name))) == expected


def test_init_params_groups_and_dtypes():
    config = model.preset("tiny").replace(param_dtype="bfloat16")
    params = model.init_params(jax.random.key(0), config, value_head=True)
    assert tuple(params) == GROUPS or set(params) == set(GROUPS)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype("bfloat16")}
    gates = params["cross_attention"]["layers"]["cross_attn_attn_gate"]
    assert gates.shape == (2, 1) and np.all(np.asarray(gates, np.float32) != 0)
    counts = model.param_counts(params)
    assert counts["value_head"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 + 1
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    forward = jax.jit(model.forward, static_argnums=1)
    logits = forward(params, config.replace(dtype="float32"), np.ones((1, 3), np.int32))
    assert np.isfinite(np.asarray(logits)).all()


def test_value_head_matches_numpy():
    config = model.preset("tiny")
    head = model.init_value_head(jax.random.key(3), config)
    rng = np.random.default_rng(4)
    head = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape).astype(np.float32), head)
    hidden = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    x = hidden
    for name in ("dense_0", "dense_1"):
        x = np.maximum(x @ np.asarray(head[name]["kernel"]) + np.asarray(head[name]["bias"]), 0)
    expected = (x @ np.asarray(head["output"]["kernel"]) + np.asarray(head["output"]["bias"]))[..., 0]
    np.testing.assert_allclose(np.asarray(model.value_head_apply(head, hidden)), expected, rtol=1e-5, atol=1e-5)


def test_11b_counts_equal_a_live_transformers_model_on_the_meta_device():
    """HF_COUNTS["11b"] is not just a constant: transformers' model built on the meta device (no allocation, ~3 s)
    has that many parameters, vision tower and projector included."""
    import torch
    import transformers

    with torch.device("meta"):
        hf = transformers.MllamaForConditionalGeneration(transformers.MllamaConfig(**model.to_hf_dict(
            model.preset("11b"))))
    named = dict(hf.named_parameters())
    assert sum(p.numel() for p in named.values()) == HF_COUNTS["11b"]["total"]
    assert sum(p.numel() for n, p in named.items() if ".vision_model." in f".{n}") == HF_COUNTS["11b"]["vision_encoder"]
    assert model.param_counts(model.param_shapes(model.preset("11b")))["total"] == HF_COUNTS["11b"]["total"]
