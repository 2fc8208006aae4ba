"""`memgen demo`: for now, a GeneralPoints sample episode (interim until the end-to-end demo exists).

Prints the prompt of a seeded vision episode, a wrong response with its verdict and the feedback turn that the
next prompt appends, then a correct response with its verdict, and writes the card image as DIR/cards.png.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image

from tasks.general_points import GeneralPointsConfig, expected_fields, expert_response, reset, step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="directory for the demo's files (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled hand (default: 0)")


def _show_verdict(verdict) -> None:
    print(f"verdict: reward {verdict.reward:+g}, category {verdict.category}, success {verdict.success}")
    print(f"verifier: {verdict.feedback}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = GeneralPointsConfig(modality="vision")
    state = reset(config, seed=args.seed)
    prompt = state.conversation[0]
    image_path = out / "cards.png"
    Image.fromarray(prompt.image).save(image_path)
    labels = " ".join(f"{card.label}{card.suit}" for card in state.hand)
    print(f"GeneralPoints sample episode (vision, target {config.target}, seed {args.seed}): hand {labels}")
    print(f"card image: {image_path}\n")
    print("--- prompt (user, with the image) ---")
    print(prompt.content)

    fields = expected_fields(state.hand, config)
    numbers = fields["number"]
    # A legal formula with the right numbers but a wrong value: the sum, else the product, else a difference
    # chain (a - b - c - d is below every card value, so one of the three misses the target).
    chains = [(" + ", sum(numbers)), (" * ", math.prod(numbers)), (" - ", numbers[0] - sum(numbers[1:]))]
    operator = next(op for op, value in chains if value != config.target)
    wrong = json.dumps({**fields, "formula": operator.join(map(str, numbers)) + f" = {config.target}"})
    print("\n--- response 1 (assistant) ---")
    print(wrong)
    state, transition = step(state, wrong)
    _show_verdict(transition.verdict)
    if transition.feedback is not None:
        print("\n--- feedback turn (user) ---")
        print(transition.feedback.content)
    correct = expert_response(state.hand, config)
    print("\n--- response 2 (assistant) ---")
    print(correct)
    state, transition = step(state, correct)
    _show_verdict(transition.verdict)
    print(f"\nepisode done: {transition.done}, solved: {state.solved}, responses verified: {state.steps_taken}")
    return 0
