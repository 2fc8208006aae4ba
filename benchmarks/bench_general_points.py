"""Throughput of the GeneralPoints verifier and hand sampler on one core (goals: >= 50,000 verifications/s for
typical responses, >= 100,000 solvable hands/s after warm-up). Prints the figures; asserts nothing.

    python benchmarks/bench_general_points.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from tasks.general_points import GeneralPointsConfig, expert_response, sample_hands, verify, wrong_response


def _rate(function, seconds: float) -> tuple[float, float]:
    """Items per second of `function()` (which returns how many items it did), best of repeated rounds, per CPU
    second of this process (what one core does, even on a shared machine) and per wall-clock second."""
    best_cpu = best_wall = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        wall, cpu = time.perf_counter(), time.process_time()
        work = function()
        best_cpu = max(best_cpu, work / max(time.process_time() - cpu, 1e-9))
        best_wall = max(best_wall, work / (time.perf_counter() - wall))
    return best_cpu, best_wall


def bench_verify(config: GeneralPointsConfig, seconds: float, kind: str) -> tuple[float, float]:
    hands = sample_hands(config, 0, 500)
    rng = np.random.default_rng(0)
    if kind == "correct":
        cases = [(expert_response(hand, config), hand) for hand in hands]
    elif kind == "wrong":
        cases = [(wrong_response(hand, config, rng), hand) for hand in hands]
    else:  # typical: half correct, half a random kind of mistake
        cases = [((expert_response if i % 2 else wrong_response)(hand, config, *([] if i % 2 else [rng])), hand)
                 for i, hand in enumerate(hands)]

    def run() -> int:
        for response, hand in cases:
            verify(response, hand, config)
        return len(cases)

    return _rate(run, seconds)


def bench_hands(config: GeneralPointsConfig, seconds: float, hands_per_round: int = 100_000) -> tuple[float, float]:
    sample_hands(config, 0, hands_per_round // 2)  # warm-up: fills the solvability cache
    seeds = iter(range(1, 10**9))
    return _rate(lambda: len(sample_hands(config, next(seeds), hands_per_round)), seconds)


def measure(seconds: float = 2.0, hands_per_round: int = 100_000, kinds=("typical", "correct", "wrong"),
            splits=("in-distribution", "rule-OOD", "5 cards, target 36")) -> dict:
    """{"verify": {"GP-L typical": (per CPU-s, per wall-s), ...}, "sample": {split: (per CPU-s, per wall-s)}}."""
    text = GeneralPointsConfig()
    vision = GeneralPointsConfig(modality="vision")
    verify_rates = {f"{name} {kind}": bench_verify(config, seconds, kind)
                    for name, config in (("GP-L", text), ("GP-VL", vision)) for kind in kinds}
    split_configs = {"in-distribution": text,
                     "rule-OOD": GeneralPointsConfig(face_cards="distinct", require_face_card=True),
                     "5 cards, target 36": GeneralPointsConfig(num_cards=5, target=36)}
    sample_rates = {name: bench_hands(split_configs[name], seconds, hands_per_round) for name in splits}
    return {"verify": verify_rates, "sample": sample_rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing duration per figure")
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; best of repeated rounds, one Python thread")
    figures = measure(args.seconds)
    for name, (cpu, wall) in figures["verify"].items():
        print(f"verify {name:14s} responses: {cpu:10,.0f} verifications/CPU-s ({wall:,.0f}/wall-s)")
    for name, (cpu, wall) in figures["sample"].items():
        print(f"sample {name:20s}: {cpu:10,.0f} solvable hands/CPU-s ({wall:,.0f}/wall-s)")


if __name__ == "__main__":
    main()
