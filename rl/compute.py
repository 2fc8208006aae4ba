"""Training-compute accounting as the paper counts it (Appendix C.3), from measured token counts:

    X_train     = 6 N D_train                            (SFT: forward + backward over the trained tokens)
    X_inference = 2 N D_inference                        (forward only)
    X_RL        = 6 N (D_init + D_RL) + 2 N D_buffer     (the SFT that made the init, the RL updates, the rollouts)

N is a parameter count that the caller passes (see `parameter_count`; docs/rl.md says which one we use and why).
Token counts are host-side Python integers (exact at any scale; int32 on a device would overflow), so this module
is plain Python: a launch loop adds the token counts it measured (e.g. `int(mask.sum())`) after each step.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from model.params import leaves_by_path


@dataclasses.dataclass(frozen=True)
class ComputeCounter:
    """Tokens processed so far. init_tokens: D_init, the SFT tokens behind the starting checkpoint (0 for RL
    from the base model). train_tokens: D_train / D_RL, tokens through forward + backward in updates (each epoch
    counts again). inference_tokens: D_inference / D_buffer, tokens through forward-only passes (rollouts:
    prompts, generated tokens, verifier messages; evaluation is not training compute and is kept apart)."""

    init_tokens: int = 0
    train_tokens: int = 0
    inference_tokens: int = 0


def add(counter: ComputeCounter, *, train_tokens: int = 0, inference_tokens: int = 0) -> ComputeCounter:
    """A new counter with the given token counts added (ints or 0-d arrays)."""
    train_tokens, inference_tokens = int(train_tokens), int(inference_tokens)
    if train_tokens < 0 or inference_tokens < 0:
        raise ValueError(f"token counts cannot be negative; got train_tokens={train_tokens}, "
                         f"inference_tokens={inference_tokens}.")
    return dataclasses.replace(counter, train_tokens=counter.train_tokens + train_tokens,
                               inference_tokens=counter.inference_tokens + inference_tokens)


def train_flops(num_params: int, tokens: int) -> int:
    """6 N D: forward (2 N D) plus backward (4 N D)."""
    return 6 * int(num_params) * int(tokens)


def inference_flops(num_params: int, tokens: int) -> int:
    """2 N D: one forward pass."""
    return 2 * int(num_params) * int(tokens)


def rl_flops(num_params: int, init_tokens: int, rl_tokens: int, buffer_tokens: int) -> int:
    """X_RL = 6 N (D_init + D_RL) + 2 N D_buffer."""
    return train_flops(num_params, int(init_tokens) + int(rl_tokens)) + inference_flops(num_params, buffer_tokens)


def total_flops(counter: ComputeCounter, num_params: int) -> int:
    """The counter's training compute: X_RL with D_RL = train_tokens, D_buffer = inference_tokens (with no
    inference tokens and init_tokens = 0 this is X_train of an SFT run)."""
    return rl_flops(num_params, counter.init_tokens, counter.train_tokens, counter.inference_tokens)


def gflops(flops: int) -> float:
    """FLOPs -> GFLOPs, the unit on the paper's x axes."""
    return flops / 1e9


def total_gflops(counter: ComputeCounter, num_params: int) -> float:
    return gflops(total_flops(counter, num_params))


def parameter_count(params: Any, *, exclude: str | None = None) -> int:
    """The number of scalars in a params pytree, leaving out leaves whose path (keys joined by '/') matches the
    regex `exclude`, e.g. r"embed_tokens|lm_head" for a non-embedding count."""
    pattern = re.compile(exclude) if exclude is not None else None
    return sum(int(getattr(leaf, "size", 1)) for name, leaf in leaves_by_path(params).items()
               if pattern is None or not pattern.search(name))
