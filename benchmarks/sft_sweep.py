"""Benchmark: the vmapped learning-rate sweep (K members in one compiled program) against K separate runs of
the same train step, on a small attention-free language model (embeddings -> K residual MLP blocks -> lm_head)
with the real param-group layout. Reports milliseconds per optimizer step of all K members and tokens/s.

    python benchmarks/sft_sweep.py [--members 4] [--hidden 256] [--vocab 4096] [--seq 128] [--batch 4]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from sft.optim import OptimizerConfig, make_optimizer, with_peak_learning_rate
from sft.step import init_train_state, stack_for_sweep, sweep_train_step, train_step


def init_params(key, vocab: int, hidden: int, layers: int) -> dict:
    keys = jax.random.split(key, 2 + 2 * layers)
    scale = hidden ** -0.5
    return {
        "vision_encoder": {"kernel": jax.random.normal(keys[0], (hidden, hidden)) * scale},
        "language_model": {
            "embed_tokens": {"embedding": jax.random.normal(keys[1], (vocab, hidden)) * scale},
            "layers": {f"{i}": {"up": jax.random.normal(keys[2 + 2 * i], (hidden, 4 * hidden)) * scale,
                                "down": jax.random.normal(keys[3 + 2 * i], (4 * hidden, hidden)) * scale / 2}
                       for i in range(layers)},
            "lm_head": {"kernel": jax.random.normal(keys[-1], (hidden, vocab)) * scale},
        },
    }


def logits_fn(params: dict, batch: dict) -> jax.Array:
    lm = params["language_model"]
    hidden = lm["embed_tokens"]["embedding"][batch["input_ids"]]
    hidden = jnp.cumsum(hidden, axis=1) / jnp.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
    for layer in lm["layers"].values():
        hidden = hidden + jax.nn.gelu(hidden @ layer["up"]) @ layer["down"]
    return hidden @ lm["lm_head"]["kernel"]


def time_steps(step, state, batch, repeats: int) -> tuple[float, object]:
    state, metrics = step(state, batch)           # compile + warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(repeats):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / repeats, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.seq)), jnp.int32),
             "loss_mask": jnp.ones((args.batch, args.seq), jnp.int32)}
    optimizer = make_optimizer(OptimizerConfig(lr=1e-4), total_steps=1000)
    learning_rates = np.geomspace(1e-5, 1e-3, args.members)
    state = init_train_state(init_params(jax.random.PRNGKey(0), args.vocab, args.hidden, args.layers),
                             optimizer, ["vision_encoder"], jax.random.PRNGKey(0))

    single = jax.jit(functools.partial(train_step, logits_fn=logits_fn, optimizer=optimizer), donate_argnums=0)
    sweep = jax.jit(functools.partial(sweep_train_step, logits_fn=logits_fn, optimizer=optimizer),
                    donate_argnums=0)
    separate_seconds = 0.0
    for lr in learning_rates:
        member = jax.tree.map(jnp.copy, state)
        member = member.replace(opt_state=with_peak_learning_rate(member.opt_state, lr))
        seconds, _ = time_steps(single, member, batch, args.repeats)
        separate_seconds += seconds
    sweep_seconds, _ = time_steps(sweep, stack_for_sweep(state, learning_rates), batch, args.repeats)

    tokens = args.members * args.batch * args.seq
    print(f"devices: {jax.devices()}")
    print(f"model: vocab {args.vocab}, hidden {args.hidden}, {args.layers} MLP blocks; batch {args.batch} x "
          f"{args.seq} tokens; K = {args.members} learning rates")
    print(f"K separate runs: {1e3 * separate_seconds:8.1f} ms per step of all K  ({tokens / separate_seconds:,.0f} tok/s)")
    print(f"vmapped sweep:   {1e3 * sweep_seconds:8.1f} ms per step of all K  ({tokens / sweep_seconds:,.0f} tok/s)")


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
