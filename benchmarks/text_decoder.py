"""Benchmark of the text decoder: a full forward over a prompt, a KV-cache prefill, and cached decode steps
(jitted, the cache donated), on random params. Text only unless --images > 0 (then the cross-attention K/V are
computed at prefill from random vision states and reused by every step). The decode steps run as the sampler's
loop does (since 2026-12-01): `lax.scan` over `model.decode` with the per-layer weights (text.unstack_layers) and
K/V buffers (forward.unstack_cache) split once per call, outside the loop body.

Prints one JSON line: preset, dtype, shapes, compile seconds, median seconds per forward / prefill / decode step,
and tokens per second. Example: `PYTHONPATH=. python benchmarks/text_decoder.py --preset small --batch 4`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import model
from model.forward import stack_cache, unstack_cache
from model.text import unstack_layers


def _timed(fn, repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def measure(preset: str = "small", batch: int = 4, prompt: int = 128, steps: int = 32, images: int = 0,
            dtype: str = "float32", repeats: int = 3) -> dict:
    """The figures this script prints, as a dict."""
    args = argparse.Namespace(preset=preset, batch=batch, prompt=prompt, steps=steps, images=images, dtype=dtype,
                              repeats=repeats)
    config = model.preset(args.preset).replace(dtype=args.dtype, param_dtype=args.dtype)
    params = model.init_params(jax.random.key(0), config)
    rng = np.random.default_rng(0)
    b, s = args.batch, args.prompt
    ids = jnp.asarray(rng.integers(3, config.text.vocab_size, (b, s)), jnp.int32)
    mask = jnp.ones((b, s), jnp.int32)
    vision = {}
    if args.images:
        v = args.images * config.vision.max_num_tiles * config.vision.num_patches
        vision["cross_attention_states"] = jnp.asarray(rng.standard_normal((b, v, config.text.hidden_size)),
                                                       config.dtype)

    forward = jax.jit(lambda p, i, m, vis: model.forward(p, config, i, attention_mask=m, **vis))
    forward_compile, forward_s = _timed(lambda: forward(params, ids, mask, vision), args.repeats)

    prefill = jax.jit(lambda p, i, m, c, vis: model.prefill(p, config, i, m, c, **vis), donate_argnums=3)

    def new_cache():
        return model.init_cache(config, b, s + args.steps * (args.repeats + 2), num_images=args.images)

    prefill_compile, prefill_s = _timed(lambda: prefill(params, ids, mask, new_cache(), vision), args.repeats)

    @jax.jit
    def decode_steps(p, cache, tokens):
        # as the sampler's decode loop: per-layer weights and K/V buffers outside the loop body (XLA's CPU
        # backend copies slices of the stacked arrays on every step otherwise)
        p = unstack_layers(p, config)

        def step(carry, _):
            cache, tokens = carry
            logits, cache = model.decode(p, config, tokens, cache)
            return (cache, jnp.argmax(logits, -1).astype(jnp.int32)), None
        (cache, tokens), _ = jax.lax.scan(step, (unstack_cache(cache), tokens), None, length=args.steps)
        return stack_cache(cache), tokens

    _, state = prefill(params, ids, mask, new_cache(), vision)
    holder = {"cache": state, "tokens": ids[:, -1]}

    def run_decode():
        holder["cache"], holder["tokens"] = decode_steps(params, holder["cache"], holder["tokens"])
        return holder["tokens"]

    decode_compile, decode_s = _timed(run_decode, args.repeats)
    return {
        "preset": args.preset, "dtype": args.dtype, "batch": b, "prompt": s, "images": args.images,
        "device": str(jax.devices()[0]),
        "compile_s": {"forward": round(forward_compile, 2), "prefill": round(prefill_compile, 2),
                      "decode": round(decode_compile, 2)},
        "forward_s": round(forward_s, 4), "forward_tokens_per_s": round(b * s / forward_s, 1),
        "prefill_s": round(prefill_s, 4),
        "decode_step_s": round(decode_s / args.steps, 5),
        "decode_tokens_per_s": round(b * args.steps / decode_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32, help="decode steps per timed call")
    parser.add_argument("--images", type=int, default=0, help="images per sample (random vision states)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.preset, args.batch, args.prompt, args.steps, args.images, args.dtype,
                             args.repeats)))


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
