"""Benchmark of the SFT train step (sft.step.train_step over model.forward, the step `memgen sft` runs).

CPU mode (default): the `small` preset, a batch of B x S tokens with one image per example (random pixels, the
<|image|> token at position 1, loss on every later token), float32. It times memgen's jitted step and, on the same
weights (written with model.save_hf, loaded with from_pretrained) and the same batch, transformers'
MllamaForConditionalGeneration + torch.optim.AdamW (loss.backward(), clip, step), and prints train tokens/s of
both and their ratio.

GPU mode (--gpu): an 11B-shaped model (Llama 3.2 11B Vision's widths; --layers decoder layers, every 5th a
cross-attention layer as in the 11B, so per-layer shapes are the real ones and the run fits one GPU) in bf16
compute with fp32 master weights and remat ("full"), one image per example, and reports MFU = 6 N D / (time x
peak bf16 FLOP/s) with N every parameter, plus the device name. Peak FLOP/s come from a small table of dense bf16
figures (--peak-tflops overrides). It plans the step's memory first (launch.plan), stops in one sentence when the
plan exceeds what the device gives JAX, and reports the plan next to the device's measured peak.

One JSON line per mode. Examples:
  PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/sft_train.py
  PYTHONPATH=. python benchmarks/sft_train.py --gpu            # 5 layers, 2 x 2048 tokens (GPU_SHAPE)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import tempfile
import time

import jax
import numpy as np

import model
from model.processor import random_image_inputs
from launch.hugepages import huge_pages_on
from rl.compute import parameter_count
from sft.batches import forward_from_batch
from sft.optim import OptimizerConfig, make_optimizer
from sft.step import init_train_state, train_step

# Dense bf16 peak TFLOP/s by jax device_kind substring (vendor data sheets, SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "B200": 2250.0}


def make_batch(config, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """B x S random tokens, one image per example (token 1), loss on the tokens after the image."""
    rng = np.random.default_rng(seed)
    vocab, image_id = config.text.vocab_size, config.image_token_index
    ids = rng.integers(0, vocab - 16, (batch, seq)).astype(np.int32)
    ids[:, 0] = config.text.bos_token_id
    ids[:, 1] = image_id
    loss_mask = np.zeros((batch, seq), np.int32)
    loss_mask[:, 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int32),
            "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "loss_mask": loss_mask,
            **random_image_inputs(ids, image_id, 1, config.vision.max_num_tiles, config.vision.image_size, rng)}


def _median_seconds(step, repeats: int) -> tuple[float, float, float]:
    """(first call's seconds, median seconds of the next ``repeats`` calls, the first call's loss)."""
    start = time.perf_counter()
    first_loss = step()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return warmup, statistics.median(times), first_loss


def memgen_step(config, params, batch, *, compute_dtype, freeze=()):
    """A closure running one donated, jitted train step (state kept inside), blocking until done."""
    optimizer = make_optimizer(OptimizerConfig(lr=1e-5, warmup_fraction=0.0), 1000)
    step = jax.jit(functools.partial(train_step, logits_fn=functools.partial(forward_from_batch, config=config),
                                     optimizer=optimizer, compute_dtype=compute_dtype), donate_argnums=0)
    holder = {"state": init_train_state(params, optimizer, freeze, jax.random.PRNGKey(0))}
    device_batch = jax.device_put(batch)

    def run():
        holder["state"], metrics = step(holder["state"], device_batch)
        return float(metrics["loss"])
    return run


def torch_step(directory, batch):
    """The same step in transformers + torch AdamW (fp32, sdpa attention, clip 1.0)."""
    import torch
    import transformers

    hf = transformers.MllamaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-7, weight_decay=0.0)
    labels = np.where(batch["loss_mask"] == 1, batch["input_ids"], -100)
    inputs = {key: torch.from_numpy(np.ascontiguousarray(batch[key])) for key in
              ("input_ids", "attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask",
               "cross_attention_mask")}
    inputs["labels"] = torch.from_numpy(labels.astype(np.int64))

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = hf(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())
    return run


def cpu_benchmark(args) -> dict:
    import torch

    config = model.preset(args.preset)
    params = model.init_params(jax.random.key(0), config)
    batch = make_batch(config, args.batch, args.seq)
    tokens = args.batch * args.seq
    result = {"mode": "cpu", "preset": args.preset, "batch": args.batch, "seq": args.seq, "images_per_example": 1,
              "num_params": parameter_count(params), "torch_threads": torch.get_num_threads(),
              "huge_pages": huge_pages_on()}
    with tempfile.TemporaryDirectory() as directory:
        model.save_hf(directory, config, params)  # before the donating step consumes the params' buffers
        warmup, seconds, torch_loss = _median_seconds(torch_step(directory, batch), args.repeats)
    result.update(transformers_first_loss=round(torch_loss, 5), transformers_step_s=round(seconds, 4), transformers_tokens_per_s=round(tokens / seconds, 1))
    warmup, seconds, loss = _median_seconds(memgen_step(config, params, batch, compute_dtype="float32"),
                                            args.repeats)
    result.update(memgen_first_loss=round(loss, 5), memgen_compile_s=round(warmup, 2), memgen_step_s=round(seconds, 4),
                  memgen_tokens_per_s=round(tokens / seconds, 1))
    result["speedup"] = round(result["memgen_tokens_per_s"] / result["transformers_tokens_per_s"], 3)
    return result


# The GPU mode's shape: 11B widths with 5 decoder layers (one of them cross-attention), 2 x 2048 tokens. Planned
# (launch.plan) at ~65 GiB with fp32 master weights and Adam state, which leaves one 80 GB H100 some room for XLA's
# scratch; 10 layers x 8 rows would plan at ~140 GiB and not fit.
GPU_SHAPE = {"layers": 5, "batch": 2, "seq": 2048}


def gpu_config(shape_preset: str, layers: int, remat: str, attention_block: int = 0):
    """`shape_preset`'s widths with `layers` decoder layers (every 5th from 3 a cross-attention layer, as in the
    11B), bf16 compute, fp32 params, attention over blocks of `attention_block` queries (0: all at once)."""
    base = model.preset(shape_preset)
    cross = tuple(i for i in range(layers) if i % 5 == 3)
    return base.replace(text=dataclasses.replace(base.text, num_hidden_layers=layers, cross_attention_layers=cross),
                        dtype="bfloat16", remat=remat, attention_block=attention_block)


def gpu_benchmark(args) -> dict:
    from launch.mesh import MeshConfig
    from launch.plan import PlanConfig, plan

    device = jax.devices()[0]
    config = gpu_config(args.shape_preset, args.layers, args.remat, args.attention_block)
    freeze = ("vision_encoder",) if args.freeze_vision else ()
    planned = plan(PlanConfig(model=config, mesh=MeshConfig.parse("data=1,fsdp=1,tensor=1"), devices=1,
                              freeze=freeze, batch_size=args.batch, seq_len=args.seq, remat=args.remat))["train_total"]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit and planned > limit:  # fail in a second, not after minutes of init and compilation
        raise SystemExit(f"sft_train: the step plans at {planned / 2**30:.1f} GiB but {device.device_kind} gives "
                         f"JAX {limit / 2**30:.1f} GiB; use fewer --layers or a smaller --batch or --seq")
    params = model.init_params(jax.random.key(0), config)
    num_params = parameter_count(params)
    batch = make_batch(config, args.batch, args.seq)
    warmup, seconds, _ = _median_seconds(
        memgen_step(config, params, batch, compute_dtype="bfloat16", freeze=freeze), args.repeats)
    tokens = args.batch * args.seq
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), None)
    achieved = 6 * num_params * tokens / seconds
    used = (device.memory_stats() or {}).get("peak_bytes_in_use")
    return {"mode": "gpu", "shape_preset": args.shape_preset, "device": device.device_kind, "layers": args.layers,
            "cross_attention_layers": config.text.cross_attention_layers, "batch": args.batch, "seq": args.seq,
            "remat": args.remat, "attention_block": args.attention_block, "freeze": list(freeze), "num_params": num_params, "compile_s": round(warmup, 1),
            "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
            "achieved_tflops": round(achieved / 1e12, 1),
            "mfu": None if peak is None else round(achieved / (peak * 1e12), 4), "peak_tflops": peak,
            "planned_gib": round(planned / 2**30, 2), "peak_gib": None if used is None else round(used / 2**30, 2),
            "memory_limit_gib": None if limit is None else round(limit / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the 11B-shaped bf16 MFU measurement")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=None, help=f"default: 8, GPU mode {GPU_SHAPE['batch']}")
    parser.add_argument("--seq", type=int, default=None, help=f"default: 128, GPU mode {GPU_SHAPE['seq']}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=GPU_SHAPE["layers"],
                        help="GPU mode: decoder layers of the 11B-shaped model")
    parser.add_argument("--shape-preset", default="11b",
                        help="GPU mode: the model whose widths are used (tiny: a CPU smoke test of this path)")
    parser.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    parser.add_argument("--attention-block", type=int, default=0,
                        help="GPU mode: queries per attention block (ModelConfig.attention_block; 0: all at once)")
    parser.add_argument("--freeze-vision", action="store_true", help="GPU mode: freeze the vision encoder")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    args.batch = args.batch or (GPU_SHAPE["batch"] if args.gpu else 8)
    args.seq = args.seq or (GPU_SHAPE["seq"] if args.gpu else 128)
    print(json.dumps(gpu_benchmark(args) if args.gpu else cpu_benchmark(args)))


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
