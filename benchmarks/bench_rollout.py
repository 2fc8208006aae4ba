"""Benchmark of the multi-turn revision rollout (rl.rollout via launch.rl_common.RolloutRunner): GeneralPoints-L
episodes with a verification budget of 5 on a random policy (the `small` preset by default, so every episode uses
all 5 steps: the worst case). Prints one JSON line: episodes per second after compilation (median of --repeats
rollouts, each on fresh hands) and where a rollout's wall time goes: episode creation + prompt encoding (host),
the verifier callback (host: decode, verify, encode the feedback turn), and the rest (device: prefill, sampling,
feedback appends). The share outside generation is (host prep + callback) / wall time; the goal is < 10%.

`--cache-stages S`: the rollout's cache grows in S stages (EpisodeConfig.cache_stages; 1 = one cache for all steps).

Example: `PYTHONPATH=. python benchmarks/bench_rollout.py --preset small --episodes 16 --max-new-tokens 64`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from launch.rl_common import RolloutRunner, load_policy, new_episodes, task_config
from launch.rl_config import EpisodeConfig


def measure(preset: str = "small", episodes: int = 16, verify_steps: int = 5, max_new_tokens: int = 64,
            feedback_len: int = 128, temperature: float = 1.0, repeats: int = 3, cache_stages: int = 1) -> dict:
    """Episodes per second after compilation (median of `repeats` rollouts on fresh hands) and the share of a
    rollout's wall time outside generation; one dict (the JSON line `main` prints)."""
    policy = load_policy(preset, seed=0)
    episode_config = EpisodeConfig(max_verify_steps=verify_steps, max_new_tokens=max_new_tokens,
                                   feedback_len=feedback_len, temperature=temperature, cache_stages=cache_stages)
    gp_config = task_config(episode_config)
    runner = RolloutRunner(policy, episode_config, verify_steps, episodes)

    def one(seed: int) -> dict:
        began = time.perf_counter()
        states = new_episodes(gp_config, (seed,), episodes)
        prompts = runner.prompts(states)  # timed here once more than the runner needs: a fair upper bound
        prep = time.perf_counter() - began
        trajectory, verifier, _ = runner(policy.params, states, jax.random.key(seed))
        wall = time.perf_counter() - began
        return dict(wall=wall, prep=2 * prep, callback=verifier.seconds, prompt_len=prompts.input_ids.shape[1],
                    steps=float(trajectory.valid.sum(axis=1).mean()),
                    response_tokens=int(trajectory.response_mask.sum()),
                    truncated_feedback=verifier.truncated_feedback)

    began = time.perf_counter()
    one(0)
    compile_seconds = time.perf_counter() - began
    runs = [one(seed) for seed in range(1, repeats + 1)]
    wall = statistics.median(r["wall"] for r in runs)
    outside = statistics.median((r["prep"] + r["callback"]) / r["wall"] for r in runs)
    return dict(
        benchmark="rollout", preset=preset, device=jax.devices()[0].device_kind, episodes=episodes,
        verify_steps=verify_steps, max_new_tokens=max_new_tokens, feedback_len=feedback_len, cache_stages=cache_stages,
        prompt_tokens=runs[0]["prompt_len"], mean_steps=runs[0]["steps"], first_call_seconds=round(compile_seconds, 2),
        rollout_seconds=round(wall, 3), episodes_per_second=round(episodes / wall, 3),
        response_tokens_per_second=round(statistics.median(r["response_tokens"] / r["wall"] for r in runs), 1),
        host_prep_seconds=round(statistics.median(r["prep"] for r in runs), 4),
        callback_seconds=round(statistics.median(r["callback"] for r in runs), 4),
        share_outside_generation=round(outside, 4),
        truncated_feedback=runs[0]["truncated_feedback"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--verify-steps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--feedback-len", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-stages", type=int, default=1, help="EpisodeConfig.cache_stages (1: one cache)")
    args = parser.parse_args()
    print(json.dumps(measure(args.preset, args.episodes, args.verify_steps, args.max_new_tokens, args.feedback_len,
                             args.temperature, args.repeats, args.cache_stages)))


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
