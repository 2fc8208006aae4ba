"""V-IRL metrics over verdicts: per-step accuracy (share of judged answers that were the correct action) and
route success (the episode ended with the correct stop() at the destination)."""

from __future__ import annotations

import math
from typing import Sequence

from tasks.common import Verdict


def per_step_accuracy(verdicts: Sequence[Verdict]) -> float:
    """Share of answers judged "correct" (every answer counts, a retried decision too); 0.0 when empty."""
    return sum(v.category == "correct" for v in verdicts) / len(verdicts) if verdicts else 0.0


def route_success(verdicts: Sequence[Verdict]) -> bool:
    """True when some answer solved the route (the correct stop())."""
    return any(v.success for v in verdicts)


def summarize(episodes: Sequence[Sequence[Verdict]]) -> dict[str, float]:
    """Per-step accuracy over all answers of all episodes, route success rate and its standard error
    sqrt(p (1 - p) / N)."""
    answers = [v for episode in episodes for v in episode]
    n = len(episodes)
    rate = sum(route_success(e) for e in episodes) / n if n else 0.0
    return {"per_step_accuracy": per_step_accuracy(answers), "route_success_rate": rate,
            "route_success_stderr": math.sqrt(rate * (1.0 - rate) / n) if n else 0.0,
            "routes": float(n), "answers": float(len(answers))}
