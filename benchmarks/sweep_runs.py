"""Benchmark: `memgen sweep`'s learning-rate axis end to end (model and data loading, compilation, training steps,
held-out evaluations, checkpoints, final policies) with the K rates vmapped in one program
(launch.sft_run.run_sft_sweep) against K separate `run_sft` runs in one process (which share one compiled step,
since the peak rate lives in the optimizer state). Reports wall seconds of each way, cold (the first time in the
process, compilation included; the separate runs go first, so they also pay the tokenizer and data caches) and
warm (again, in fresh directories).

    python benchmarks/sweep_runs.py [--model tiny] [--rates 3] [--steps 10] [--batch 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def measure(model: str = "tiny", rates: int = 3, steps: int = 10, batch: int = 4) -> dict:
    """{"vmapped_s", "separate_s", "rates", "steps", ...}: wall seconds of the K-rate SFT grid both ways."""
    import numpy as np

    from launch.config import resolve
    from launch.sft_run import run_sft, run_sft_sweep, with_learning_rate

    overrides = [f"model={model}", f"steps={steps}", f"batch_size={batch}", f"eval_every={steps}",
                 "greedy_examples=0", "eval_examples=8", "train_examples=64", f"checkpoint.every_steps={steps}"]
    config = resolve("sft-tiny", overrides)
    learning_rates = [float(lr) for lr in np.geomspace(1e-4, 1e-2, rates)]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)

        def separate(tag: str) -> float:
            began = time.perf_counter()
            for k, lr in enumerate(learning_rates):
                run_sft(with_learning_rate(config, lr), root / f"{tag}-{k}", progress=False)
            return time.perf_counter() - began

        def vmapped(tag: str) -> float:
            began = time.perf_counter()
            run_sft_sweep(config, learning_rates, [root / f"{tag}-{k}" for k in range(rates)], progress=False)
            return time.perf_counter() - began

        separate_cold, separate_warm = separate("separate-cold"), separate("separate-warm")
        vmapped_cold, vmapped_warm = vmapped("vmapped-cold"), vmapped("vmapped-warm")
    return {"model": model, "rates": rates, "steps": steps, "batch": batch, "separate_cold_s": separate_cold,
            "separate_warm_s": separate_warm, "vmapped_cold_s": vmapped_cold, "vmapped_warm_s": vmapped_warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rates", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    result = measure(args.model, args.rates, args.steps, args.batch)
    print(f"{result['rates']} learning rates x {result['steps']} steps of batch {result['batch']} on the "
          f"{result['model']} model, wall seconds (cold: first in the process, with compilation; warm: again in "
          f"fresh directories): K separate runs {result['separate_cold_s']:.1f} cold, {result['separate_warm_s']:.1f} "
          f"warm; vmapped sweep {result['vmapped_cold_s']:.1f} cold, {result['vmapped_warm_s']:.1f} warm")


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
