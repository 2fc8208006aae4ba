"""Text decoder parity with transformers (fp32, eager): RoPE tables, text-only logits, left-padded batches,
explicit position ids, NaN-free fully masked rows, the layer plan."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

import model
from model import text as T
from model.config import preset
from tests.model.mllama_reference import assert_close, hf_logits, hf_positions, left_padded_batch


def test_rope_inv_freq_matches_transformers():
    from transformers.models.mllama.modeling_mllama import MllamaRotaryEmbedding
    import transformers
    for name in ("tiny", "11b"):
        config = preset(name)
        hf_text = transformers.MllamaConfig(**model.to_hf_dict(config)).text_config
        theirs = MllamaRotaryEmbedding(hf_text).inv_freq.numpy()
        # Same float32 operation order as transformers, but numpy's and torch's float32 pow are different
        # vectorised kernels: equal with the numpy of earlier CI runs, 2 ulp apart at one frequency with numpy
        # 2.4.6 (neither is correctly rounded). The logit parity tests bound the effect on the model.
        np.testing.assert_array_max_ulp(T.rope_inv_freq(config.text), theirs, maxulp=2)


def test_layer_plan():
    assert T.layer_plan(preset("tiny").text) == [("self", 0, 1), ("cross", 0, 1), ("self", 1, 2), ("cross", 1, 2)]
    plan = T.layer_plan(preset("11b").text)
    assert plan[:4] == [("self", 0, 3), ("cross", 0, 1), ("self", 3, 7), ("cross", 1, 2)]
    assert sum(stop - start for kind, start, stop in plan if kind == "self") == 32


def test_text_only_logits(ref, jit_forward):
    hf_model, _, config, params = ref
    ids = np.random.default_rng(0).integers(3, config.text.vocab_size, (2, 9))
    ours = jit_forward(params, config, ids)
    assert ours.shape == (2, 9, config.text.vocab_size)
    assert_close(ours, hf_logits(hf_model, input_ids=ids))


def test_left_padded_batch(ref, jit_forward):
    hf_model, _, config, params = ref
    ids, mask = left_padded_batch(np.random.default_rng(1), [11, 6, 1], 11, config.text.vocab_size)
    ours = np.asarray(jit_forward(params, config, ids, attention_mask=mask))
    theirs = hf_logits(hf_model, input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))
    assert np.isfinite(ours).all()  # fully masked (padding) query rows must not produce NaN
    assert_close(ours, theirs, where=mask == 1)
    # a row alone (no padding) gives the same logits as inside the padded batch
    keep = mask[1] == 1
    alone = np.asarray(jit_forward(params, config, ids[1:2, keep]))
    assert_close(ours[1, keep], alone[0])


def test_explicit_position_ids(ref, jit_forward):
    hf_model, _, config, params = ref
    ids = np.random.default_rng(2).integers(3, config.text.vocab_size, (1, 7))
    positions = np.arange(7)[None] * 3 + 5
    ours = jit_forward(params, config, ids, position_ids=positions)
    assert_close(ours, hf_logits(hf_model, input_ids=ids, position_ids=positions))


def test_bfloat16_compute_is_close(ref, jit_forward):
    hf_model, _, config, params = ref
    ids = np.random.default_rng(3).integers(3, config.text.vocab_size, (1, 8))
    ours = jit_forward(params, config.replace(dtype="bfloat16"), ids)
    assert ours.dtype == np.dtype("bfloat16")
    theirs = hf_logits(hf_model, input_ids=ids)
    assert np.abs(np.asarray(ours, np.float32) - theirs).max() < 0.05 * max(1.0, np.abs(theirs).max())


def test_remat_gives_same_logits_and_grads(ref):
    _, _, config, params = ref
    ids = np.random.default_rng(4).integers(3, config.text.vocab_size, (1, 6))

    def loss(p, cfg):
        return model.forward(p, cfg, ids).astype(np.float32).sum()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    plain, remat = grad(params, config), grad(params, config.replace(remat="dots"))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_scanned_and_unrolled_layers_give_the_same_logits_and_grads(ref):
    """ModelConfig.scan_layers: the cacheless forward's layer runs as a lax.scan (the 11B / 90B default) or
    unrolled (the small models' default; the parity tests above run this one), same values."""
    _, _, config, params = ref
    assert not config.scans_layers() and model.preset("11b").scans_layers()
    ids = np.random.default_rng(5).integers(3, config.text.vocab_size, (2, 6))

    def loss(p, cfg):
        logits = model.forward(p, cfg, ids).astype(np.float32)
        return (logits * np.linspace(-1.0, 1.0, logits.shape[-1])).sum(), logits

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (unrolled, logits), (scanned, scanned_logits) = (grad(params, config.replace(scan_layers=flag))
                                                      for flag in (False, True))
    np.testing.assert_allclose(np.asarray(scanned_logits), np.asarray(logits), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(unrolled), jax.tree.leaves(scanned)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5 * float(np.abs(a).max()))


def test_torch_is_fp32(ref):
    assert next(ref[0].parameters()).dtype == torch.float32


def test_attention_in_query_blocks_is_exact_and_holds_one_block():
    """`attend` over blocks of 64 of 300 queries (the last padded), with an additive mask that blocks a whole row:
    the values and gradients of all queries at once, while the compiled gradient holds one block's (64, 300)
    probabilities at a time instead of all (300, 300)."""
    from model.text import additive_mask, attend

    rng = np.random.default_rng(0)
    b, s, h, kv, dh = 2, 300, 4, 2, 16
    q, k, v = (jnp.asarray(rng.standard_normal((b, s, heads, dh)), jnp.float32) for heads in (h, kv, kv))
    allowed = jnp.asarray(rng.random((b, s, s)) < 0.7).at[0, 5].set(False)  # a row with no key at all
    bias = additive_mask(allowed, jnp.float32)

    def loss(q, k, v, block):
        return jnp.sum(jnp.sin(attend(q, k, v, bias, block)))

    programs = {block: jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3).lower(
        q, k, v, block).compile() for block in (0, 64)}
    (whole, whole_grads), (parts, parts_grads) = (programs[block](q, k, v) for block in (0, 64))
    np.testing.assert_allclose(parts, whole, rtol=1e-5)
    for a, e in zip(parts_grads, whole_grads):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)
    temps = {block: program.memory_analysis().temp_size_in_bytes for block, program in programs.items()}
    probabilities = b * h * s * s * 4  # one fp32 (B, H, S, K) tensor: 2.9 MB
    # measured 11.7 MB and 3.1 MB (the rest: the mask (B, S, K) and its padded blocks, q, k, v and their gradients)
    assert temps[0] > 2 * probabilities and temps[64] < 0.4 * temps[0], temps
