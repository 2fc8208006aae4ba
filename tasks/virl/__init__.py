"""V-IRL street navigation (V-IRL-L text, V-IRL-VL rendered views): route data model and loader for the
reference files, synthetic cities, the oracle rail, prompts, the verifier, episodes, metrics and expert data.

Public API: `VirlConfig`, cities and routes (`generate_city`, `generate_routes`, `train_city`, `visual_ood_set`),
the direction contracts (`absolute_direction`, `relative_direction`), the oracle rail (`build_rail`), prompts,
`verify`, multi-turn episodes (`reset`, `step` over an immutable `EpisodeState`, with `oracle_response` and
`current_image`), metrics, released data (`load_dataset`, `write_dataset`) and expert data
(`optimal_conversations`, `suboptimal_conversations`, `write_jsonl`, `read_jsonl`). See docs/virl.md.
"""

from tasks.virl.city import City, generate_city, generate_routes, route_between, train_city, visual_ood_set
from tasks.virl.config import VirlConfig
from tasks.virl.directions import absolute_direction, relative_direction, spatial_relation
from tasks.virl.episode import (EpisodeState, current_image, feedback_message, ideal_response, oracle_response,
                                reset, step)
from tasks.virl.expert import (optimal_conversations, read_jsonl, suboptimal_conversations, write_jsonl,
                               wrong_response)
from tasks.virl.loader import load_dataset, write_dataset
from tasks.virl.metrics import per_step_accuracy, route_success, summarize
from tasks.virl.oracle import DecisionPoint, build_rail
from tasks.virl.prompts import build_prompt, format_instruction, instruction_lines
from tasks.virl.route import Landmark, Milestone, Place, Route, RouteFormatError, route_from_dict, route_to_dict
from tasks.virl.verify import parse_action, verify

__all__ = [
    "City", "DecisionPoint", "EpisodeState", "Landmark", "Milestone", "Place", "Route", "RouteFormatError",
    "VirlConfig", "absolute_direction", "build_prompt", "build_rail", "current_image", "feedback_message",
    "format_instruction", "generate_city", "generate_routes", "ideal_response", "instruction_lines",
    "load_dataset", "optimal_conversations", "oracle_response", "parse_action", "per_step_accuracy",
    "read_jsonl", "relative_direction", "reset", "route_between", "route_from_dict", "route_success",
    "route_to_dict", "spatial_relation", "step", "suboptimal_conversations", "summarize", "train_city", "verify",
    "visual_ood_set", "write_dataset", "write_jsonl", "wrong_response",
]
