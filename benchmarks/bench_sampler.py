"""Benchmark of the KV-cached sampler (model.sampler); prints one JSON line per measurement.

Parts (`--part`):
- `cpu`: `generate` vs transformers' `generate` on the same random weights (saved with model.save_hf, loaded with
  `MllamaForConditionalGeneration.from_pretrained`), greedy, no stop tokens, one image per prompt: new tokens per
  second after compilation (compile seconds reported apart), median of `--repeats` timed calls.
- `episode`: a multi-turn revision episode with the low-level API: start (prefill prompt + image) + sample_turn,
  then (append feedback + sample_turn) x (turns - 1), each turn decoding the full max_new_tokens; the wall time of
  each turn next to the first, and the cacheless alternative (generate from the whole conversation each turn;
  `--no-recompute` skips it).
- `gpu`: decode throughput of an 11B-shaped model (random bf16 weights), batch 64: new tokens per second of
  sample_turn and the share of the HBM-bandwidth roofline (bytes that one decode step must read: the text
  weights, the whole self-attention KV buffer, the cross-attention K/V; divided by the device's peak bandwidth).

Examples: `PYTHONPATH=. python benchmarks/bench_sampler.py --part cpu`;
`PYTHONPATH=. python benchmarks/bench_sampler.py --part gpu --preset 11b --batch 64` (on an H100/H200).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import model
from model import sampler
from model.processor import random_image_inputs

# peak HBM bandwidth (bytes/s) by a substring of jax's device_kind; --hbm-tbps overrides
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "A100": 2.0e12}


def prompt_batch(config, batch: int, length: int, images: int, seed: int = 0) -> dict:
    """Random prompts of `length` tokens: bos, `images` image tokens, random text; full-tile random images."""
    rng = np.random.default_rng(seed)
    text = config.text
    ids = rng.integers(0, text.vocab_size - 16, (batch, length)).astype(np.int32)
    ids[:, 0] = text.bos_token_id
    inputs = dict(input_ids=ids, attention_mask=np.ones((batch, length), np.int32))
    if images:
        ids[:, 1:1 + images] = config.image_token_index
        inputs.update(random_image_inputs(ids, config.image_token_index, images, config.vision.max_num_tiles,
                                          config.vision.image_size, rng))
    return inputs


def timed(fn, repeats: int, times: list | None = None):
    """(seconds of the first call, median seconds of `repeats` later calls, last result); the later calls'
    seconds are appended to `times` if given."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = [] if times is None else times
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), result


def random_params(config, seed: int = 0):
    return jax.jit(model.init_params, static_argnums=1)(jax.random.key(seed), config)


def bench_cpu(args) -> dict:
    import torch
    import transformers

    config = model.preset(args.preset)
    params = random_params(config)
    inputs = prompt_batch(config, args.batch, args.prompt, args.images)
    n = args.new_tokens

    with tempfile.TemporaryDirectory() as directory:
        model.save_hf(directory, config, params)
        hf_model = transformers.MllamaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}

    def theirs():
        with torch.no_grad():
            return hf_model.generate(**tensors, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=config.text.pad_token_id)

    # transformers is timed before memgen runs (and once more after it, reported apart): on the 2-core CI-like
    # machine torch ran much slower once XLA's CPU runtime had run in the same process.
    hf_times, our_times = [], []
    hf_first_s, hf_s, hf_tokens = timed(theirs, args.repeats, hf_times)

    def ours():
        return sampler.generate(params, config, max_new_tokens=n, stop_tokens=(), **inputs).tokens

    compile_s, ours_s, our_tokens = timed(ours, args.repeats, our_times)
    _, hf_after_s, _ = timed(theirs, 1)
    hf_tokens = hf_tokens[:, args.prompt:].numpy()
    return dict(
        part="cpu", preset=args.preset, batch=args.batch, prompt=args.prompt, images=args.images, new_tokens=n,
        memgen_compile_s=round(compile_s - ours_s, 3), memgen_s=round(ours_s, 4),
        memgen_tokens_per_s=round(args.batch * n / ours_s, 1), transformers_first_s=round(hf_first_s, 3),
        transformers_s=round(hf_s, 4), transformers_tokens_per_s=round(args.batch * n / hf_s, 1),
        transformers_after_memgen_s=round(hf_after_s, 4),
        speedup=round(hf_s / ours_s, 2), memgen_min_s=round(min(our_times), 4),
        transformers_min_s=round(min(hf_times), 4), speedup_of_minima=round(min(hf_times) / min(our_times), 2),
        load_average=[round(x, 2) for x in os.getloadavg()], greedy_tokens_equal=float(np.mean(np.asarray(our_tokens) == hf_tokens)),
        transformers=transformers.__version__, torch_threads=torch.get_num_threads(), jax=jax.__version__,
        device=jax.devices()[0].device_kind)


def bench_episode(args) -> dict:
    config = model.preset(args.preset)
    params = random_params(config)
    inputs = prompt_batch(config, args.batch, args.prompt, args.images)
    vision = {k: inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")
              if k in inputs}
    n, chunk, turns, batch = args.new_tokens, args.feedback, args.turns, args.batch
    slots = args.prompt + turns * n + (turns - 1) * chunk
    sampling = sampler.SamplingConfig(n, temperature=1.0)
    everyone = np.ones(batch, bool)
    no_stops = np.full(sampler.MAX_STOP_TOKENS, -1, np.int32)
    rng = np.random.default_rng(1)
    feedback = rng.integers(0, config.text.vocab_size - 16, (turns, batch, chunk)).astype(np.int32)
    feedback_mask = np.ones((turns, batch, chunk), np.int32)

    def episode():
        """Wall seconds of each turn (turn 1 = prefill + decode; later = append + decode) and the tokens."""
        cache = model.init_cache(config, batch, slots, num_images=args.images)
        seconds, outputs = [], []
        start = time.perf_counter()
        state = sampler.start_jit(params, config, inputs["input_ids"], inputs["attention_mask"], cache, **vision)
        for turn in range(turns):
            if turn:
                start = time.perf_counter()
                state = sampler.append_jit(params, config, state, feedback[turn], feedback_mask[turn])
            state, generation = sampler.sample_turn_jit(params, config, state, jax.random.key(turn), sampling,
                                                        everyone, no_stops)
            jax.block_until_ready(generation.tokens)
            seconds.append(time.perf_counter() - start)
            outputs.append(np.asarray(generation.tokens))
        return seconds, outputs

    compile_start = time.perf_counter()
    episode()
    compile_s = time.perf_counter() - compile_start
    runs = [episode()[0] for _ in range(args.repeats)]
    per_turn = [statistics.median(r[t] for r in runs) for t in range(turns)]

    # the cacheless alternative: every turn re-prefills the whole conversation so far (a new compiled shape per
    # turn the first time; timed after a warm-up pass)
    def recompute():
        seconds = []
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for turn in range(turns):
            if turn:
                ids = np.concatenate([ids, outputs[turn - 1], feedback[turn]], 1)
                mask = np.ones(ids.shape, np.int32)
            cross = None
            if "cross_attention_mask" in vision:
                base = vision["cross_attention_mask"]
                cross = np.concatenate([base, np.repeat(base[:, -1:], ids.shape[1] - base.shape[1], 1)], 1)
            start = time.perf_counter()
            out = sampler.generate(params, config, ids, attention_mask=mask, max_new_tokens=n, temperature=1.0,
                                   stop_tokens=(), rng=jax.random.key(turn), cross_attention_mask=cross,
                                   **{k: v for k, v in vision.items() if k != "cross_attention_mask"})
            jax.block_until_ready(out.tokens)
            seconds.append(time.perf_counter() - start)
        return seconds

    recomputed = None
    if getattr(args, "recompute", True):
        _, outputs = episode()
        recompute()
        recomputed = [statistics.median(r[t] for r in [recompute() for _ in range(args.repeats)])
                      for t in range(turns)]
    return dict(
        part="episode", preset=args.preset, batch=batch, prompt=args.prompt, images=args.images, new_tokens=n,
        feedback=chunk, turns=turns, cache_slots=slots, compile_and_first_episode_s=round(compile_s, 2),
        turn_s=[round(s, 4) for s in per_turn], episode_s=round(sum(per_turn), 4),
        max_later_turn_over_first=round(max(per_turn[1:]) / per_turn[0], 3),
        episode_over_first_turn=round(sum(per_turn) / per_turn[0], 3),
        recompute_turn_s=recomputed and [round(s, 4) for s in recomputed],
        recompute_episode_s=recomputed and round(sum(recomputed), 4))


def decode_step_bytes(config, params, batch: int, cache_slots: int, images: int) -> int:
    """Bytes one decode step must read from memory at least: every text weight but the embedding table (one row
    per token), the whole self-attention K/V buffer (attention spans all slots) and the cross-attention K/V."""
    text = config.text
    weights = sum(leaf.size * leaf.dtype.itemsize for group in ("language_model", "cross_attention")
                  for leaf in jax.tree.leaves(params[group]))
    embed = params["language_model"]["embed_tokens"]["embedding"]
    weights -= embed.size * embed.dtype.itemsize
    item = jnp.dtype(config.dtype).itemsize
    kv = text.num_key_value_heads * text.head_dim
    self_kv = 2 * len(text.self_attention_layers) * batch * cache_slots * kv * item
    vision_tokens = images * config.vision.max_num_tiles * config.vision.num_patches
    cross_kv = 2 * len(text.cross_attention_layers) * batch * vision_tokens * kv * item
    return weights + self_kv + cross_kv


def bench_gpu(args) -> dict:
    config = model.preset(args.preset).replace(dtype="bfloat16", param_dtype="bfloat16")
    device = jax.devices()[0]
    params = random_params(config)
    inputs = prompt_batch(config, args.batch, args.prompt, args.images)
    vision = {k: inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")
              if k in inputs}
    n = args.new_tokens
    slots = args.prompt + n
    sampling = sampler.SamplingConfig(n, temperature=1.0)
    everyone = np.ones(args.batch, bool)
    no_stops = np.full(sampler.MAX_STOP_TOKENS, -1, np.int32)

    # The 11B vision encoder attends over 4 x 1608 tokens per image: encode a few images at a time (64 at once
    # would need ~85 GB of attention scores), then prefill the text with the encoded states.
    states = None
    if args.images:
        chunks = [sampler._encode_images(params, config, *(inputs[k][i:i + args.image_chunk] for k in
                                                           ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")))
                  for i in range(0, args.batch, args.image_chunk)]
        states = jax.block_until_ready(jnp.concatenate(chunks, 0))

    def prefill():
        cache = model.init_cache(config, args.batch, slots, num_images=args.images)
        return sampler.start_jit(params, config, inputs["input_ids"], inputs["attention_mask"], cache,
                                 cross_attention_states=states,
                                 cross_attention_mask=vision.get("cross_attention_mask"))

    prefill_first, prefill_s, _ = timed(prefill, args.repeats)

    def decode():
        state = jax.block_until_ready(prefill())
        start = time.perf_counter()
        _, generation = sampler.sample_turn_jit(params, config, state, jax.random.key(0), sampling, everyone,
                                                no_stops)
        jax.block_until_ready(generation.tokens)
        return time.perf_counter() - start

    decode_first = decode()
    decode_s = statistics.median(decode() for _ in range(args.repeats))
    step_s = decode_s / n
    step_bytes = decode_step_bytes(config, params, args.batch, slots, args.images)
    bandwidth = args.hbm_tbps * 1e12 if args.hbm_tbps else next(
        (bw for name, bw in PEAK_BANDWIDTH.items() if name in device.device_kind), float("nan"))
    roofline_s = step_bytes / bandwidth
    return dict(
        part="gpu", preset=args.preset, device=device.device_kind, platform=device.platform, batch=args.batch,
        prompt=args.prompt, images=args.images, new_tokens=n, dtype="bfloat16",
        text_prefill_compile_s=round(prefill_first - prefill_s, 2), text_prefill_s=round(prefill_s, 4),
        decode_compile_s=round(decode_first - decode_s, 2), decode_s=round(decode_s, 4),
        decode_step_ms=round(1e3 * step_s, 3), decode_tokens_per_s=round(args.batch * n / decode_s, 1),
        step_bytes_gb=round(step_bytes / 1e9, 3), peak_bandwidth_tbps=bandwidth / 1e12,
        roofline_step_ms=round(1e3 * roofline_s, 3),
        roofline_share=None if math.isnan(roofline_s) else round(roofline_s / step_s, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cpu", "episode", "gpu"], default="cpu")
    parser.add_argument("--preset", default=None, help="default: small (cpu, episode), 11b (gpu)")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 (cpu, episode), 64 (gpu)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--images", type=int, default=1, help="images per prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--feedback", type=int, default=32, help="tokens of each appended feedback turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-recompute", dest="recompute", action="store_false",
                        help="episode: skip the cacheless alternative")
    parser.add_argument("--image-chunk", type=int, default=4, help="gpu: images encoded per vision-encoder call")
    parser.add_argument("--hbm-tbps", type=float, default=None, help="peak HBM bandwidth, TB/s (default: by device)")
    args = parser.parse_args()
    gpu = args.part == "gpu"
    args.preset = args.preset or ("11b" if gpu else "small")
    args.batch = args.batch or (64 if gpu else 8)
    print(json.dumps({"cpu": bench_cpu, "episode": bench_episode, "gpu": bench_gpu}[args.part](args)))


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
