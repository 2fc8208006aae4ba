"""A tiny random transformers `MllamaForConditionalGeneration` (fp32, eager attention) with every gate and norm
weight randomised to non-zero values, saved once per test process with save_pretrained and loaded with
model.load_hf: the independent reference for the parity tests (and a test of the loader)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

from model.config import preset, to_hf_dict

TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def reference(name: str = "tiny", seed: int = 0):
    """(torch model, directory it was saved to, our (config, params) loaded from there)."""
    from model import load_hf

    torch.manual_seed(seed)
    hf_config = transformers.MllamaConfig(**to_hf_dict(preset(name)))
    hf_model = transformers.MllamaForConditionalGeneration._from_config(
        hf_config, attn_implementation="eager", dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param_name, param in hf_model.named_parameters():
            if "gate" in param_name and param.numel() <= 8:  # tanh gates (HF inits them to zero)
                sign = torch.where(torch.rand(param.shape, generator=generator) < 0.5, -1.0, 1.0)
                param.copy_(sign * (0.3 + 0.7 * torch.rand(param.shape, generator=generator)))
            elif param_name.endswith("norm.weight") or "layernorm" in param_name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
            elif param.dim() >= 2 and "embed" not in param_name:
                param.normal_(0.0, 0.08, generator=generator)  # livelier than HF's 0.02 so errors show
    directory = Path(tempfile.mkdtemp(prefix=f"memgen-mllama-{name}-"))
    hf_model.save_pretrained(directory)
    config, params = load_hf(directory)
    return hf_model, directory, config, params


def hf_logits(hf_model, **inputs) -> np.ndarray:
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items() if v is not None}
    with torch.no_grad():
        return hf_model(**tensors).logits.float().numpy()


def assert_close(ours, theirs, where=None):
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    if where is not None:
        ours, theirs = ours[where], theirs[where]
    scale = max(1.0, float(np.abs(theirs).max()))
    diff = float(np.abs(ours - theirs).max())
    assert diff <= TOLERANCE * scale, f"max abs diff {diff:.3g} > {TOLERANCE} x {scale:.3g}"


def left_padded_batch(rng: np.random.Generator, lengths, total: int, vocab: int, pad: int = 0):
    """input_ids, attention_mask (B, total) with each row's tokens right-aligned (left padding)."""
    ids = np.full((len(lengths), total), pad, np.int64)
    mask = np.zeros((len(lengths), total), np.int64)
    for row, length in enumerate(lengths):
        ids[row, total - length:] = rng.integers(3, vocab, length)
        mask[row, total - length:] = 1
    return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
    """transformers' generate: cumsum(mask) - 1, padding filled with 1."""
    return np.where(mask == 1, np.cumsum(mask, -1) - 1, 1)
