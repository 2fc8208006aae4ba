"""GeneralPoints, the 24-points card game (GP-L: card labels in the prompt; GP-VL: an image of the cards).

Public API: `GeneralPointsConfig`, `Card`, `solve`, `verify`, hand sampling (`sample_hands`), rendering
(`render_hand`), prompts, multi-turn episodes (`reset`, `step`), recognition (`recognition_correct`) and expert
data (`expert_conversations`, `suboptimal_trajectories`, `write_jsonl`, `read_jsonl`). See docs/general_points.md.
"""

from tasks.general_points.config import Card, GeneralPointsConfig, card_value, evaluation_splits, rank_label
from tasks.general_points.episode import EpisodeState, first_prompt, reset, step
from tasks.general_points.expert import (expert_conversations, expert_response, read_jsonl,
                                         suboptimal_trajectories, write_jsonl, wrong_response)
from tasks.general_points.hands import (hand_values, in_heldout_pool, sample_hand, sample_hand_arrays,
                                       sample_hands)
from tasks.general_points.prompts import feedback_text, prompt_text
from tasks.general_points.render import render_hand
from tasks.general_points.solver import is_solvable, reachable, solve
from tasks.general_points.verifier import REWARDS, expected_fields, recognition_correct, rule_followed, verify

__all__ = [
    "REWARDS", "Card", "EpisodeState", "GeneralPointsConfig", "card_value", "evaluation_splits", "expected_fields",
    "expert_conversations", "expert_response", "feedback_text", "first_prompt", "hand_values", "in_heldout_pool",
    "is_solvable",
    "prompt_text", "rank_label", "reachable", "read_jsonl", "recognition_correct", "render_hand", "reset",
    "rule_followed",
    "sample_hand", "sample_hand_arrays", "sample_hands", "solve", "step", "suboptimal_trajectories", "verify",
    "write_jsonl", "wrong_response",
]
