"""`memgen demo --out DIR [--preset miniature-demo] [key=value ...]`: the README's main command.

Runs the CPU miniature of the paper end to end (launch/miniature.py, docs/miniature.md): builds the offline
tokenizer, generates GeneralPoints data, trains the `small` model from scratch into a rule-following base, then
spends equal compute on more SFT and on RL (PPO with multi-turn verification), evaluates in-distribution and
rule-OOD at several compute points, and writes DIR/report.md, DIR/metrics.jsonl, DIR/summary.json and PNG plots.
`--preset miniature` is the full experiment (seeds 0, 1, 2; the demo is its seed 0: tens of minutes on a CPU).
Re-running the same command resumes. It starts by printing one episode of the task, so you see what the model is asked.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from launch.config import ConfigError, preset_names, resolve
from launch.miniature import MiniatureConfig, MiniatureError, run_miniature, task_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="directory for the demo's files (default: demo_out)")
    parser.add_argument("--preset", default="miniature-demo",
                        help=f"one of: {', '.join(preset_names(MiniatureConfig))} (default: miniature-demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. seeds=[0,1] rl.updates=8 base.steps=200")


def show_sample_episode(config: MiniatureConfig) -> None:
    """One episode of the miniature's task: the prompt, a wrong answer, the verifier's message, the right one."""
    import numpy as np

    from tasks.general_points import expert_response, reset, step, wrong_response

    gp = task_config(config, hand_pool="all")
    state = reset(gp, seed=0)
    print("--- the task (in-distribution: J/Q/K = 10), one episode ---")
    print(f"user:      {state.conversation[0].content}")
    wrong = wrong_response(state.hand, gp, np.random.default_rng(0))
    state, transition = step(state, wrong)
    print(f"assistant: {wrong}")
    print(f"verifier:  reward {transition.verdict.reward:+g} ({transition.verdict.category})")
    if transition.feedback is not None:
        print(f"user:      {transition.feedback.content}")
    right = expert_response(state.hand, gp)
    state, transition = step(state, right)
    print(f"assistant: {right}")
    print(f"verifier:  reward {transition.verdict.reward:+g} ({transition.verdict.category})\n")


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve(args.preset, args.overrides, kind=MiniatureConfig)
        show_sample_episode(config)
        started = time.monotonic()
        summary = run_miniature(config, Path(args.out))
    except (ConfigError, MiniatureError) as error:
        print(f"memgen demo: {error}", file=sys.stderr)
        return 2
    print(f"memgen demo: finished in {time.monotonic() - started:.0f} s; report: {Path(args.out) / 'report.md'}")
    for sentence in summary["verdict"]:
        print(f"  {sentence}")
    return 0
