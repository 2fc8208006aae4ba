"""Benchmark of model.vision.encode_images (vision encoder + projector) on random params and pixels.

Prints one JSON line: the preset, shapes, compile seconds and the median seconds per call after warm-up, and
images per second. Example: `python benchmarks/vision_encoder.py --preset small --batch 4 --images 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from model.config import preset
from model.vision import encode_images, init_vision_params


def measure(preset_name: str = "small", batch: int = 2, images: int = 1, dtype: str = "float32",
            repeats: int = 5) -> dict:
    """The figures this script prints, as a dict."""
    args = argparse.Namespace(preset=preset_name, batch=batch, images=images, dtype=dtype, repeats=repeats)
    config = preset(args.preset).replace(dtype=args.dtype, param_dtype=args.dtype)
    v = config.vision
    params = init_vision_params(jax.random.PRNGKey(0), config)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.images, v.max_num_tiles, v.num_channels, v.image_size, v.image_size)
    pixels = rng.standard_normal(shape).astype(np.float32)
    ids = np.full((args.batch, args.images), 6, np.int32)  # (2, 2): all four tiles used
    mask = np.ones((args.batch, args.images, v.max_num_tiles), np.int32)
    encode = jax.jit(encode_images, static_argnums=1)

    start = time.perf_counter()
    encode(params, config, pixels, ids, mask).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        encode(params, config, pixels, ids, mask).block_until_ready()
        times.append(time.perf_counter() - start)
    per_call = statistics.median(times)
    return {
        "preset": args.preset, "dtype": args.dtype, "batch": args.batch, "images": args.images,
        "tiles": v.max_num_tiles, "tokens_per_image": v.max_num_tiles * v.num_patches,
        "device": str(jax.devices()[0]), "compile_s": round(compile_s, 3), "seconds_per_call": round(per_call, 4),
        "images_per_s": round(args.batch * args.images / per_call, 2),
        "min_seconds_per_call": round(min(times), 4), "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=1, help="images per sample")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.preset, args.batch, args.images, args.dtype, args.repeats)))


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
