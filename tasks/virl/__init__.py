"""V-IRL street navigation (V-IRL-L text, V-IRL-VL rendered views): route data model and loader for the
reference files, synthetic cities, the oracle rail, prompts, the verifier, episodes, metrics and expert data."""

from tasks.virl.city import City, generate_city, generate_routes, route_between, train_city, visual_ood_set
from tasks.virl.config import VirlConfig
from tasks.virl.directions import absolute_direction, relative_direction, spatial_relation
from tasks.virl.episode import VirlEpisode, feedback_message, ideal_response
from tasks.virl.metrics import per_step_accuracy, route_success, summarize
from tasks.virl.oracle import DecisionPoint, build_rail
from tasks.virl.prompts import build_prompt, format_instruction, instruction_lines
from tasks.virl.route import Landmark, Milestone, Place, Route, RouteFormatError, route_from_dict, route_to_dict
from tasks.virl.verify import parse_action, verify

__all__ = [
    "City", "DecisionPoint", "Landmark", "Milestone", "Place", "Route", "RouteFormatError", "VirlConfig",
    "VirlEpisode", "absolute_direction", "build_prompt", "build_rail", "feedback_message", "format_instruction",
    "generate_city", "generate_routes", "ideal_response", "instruction_lines", "parse_action", "per_step_accuracy",
    "relative_direction", "route_between", "route_from_dict", "route_success", "route_to_dict",
    "spatial_relation", "summarize", "train_city", "verify", "visual_ood_set",
]
