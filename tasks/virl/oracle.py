"""The oracle rail: every decision point of a route with its expected action and observation.

Along step k of a route the agent turns to the step's heading (at the start, and at every intersection), then
moves forward() through the interpolated points of the step's polyline (`forward_points` evenly spaced by arc
length, each dropped with `drop_probability`) to the step's end; at the last end (the destination) the action is
stop(). Observations are computed at each point from the route's landmarks and destination within
`landmark_radius_m`, relative to the agent's heading; only step ends before the destination are intersections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.virl.config import VirlConfig
from tasks.virl.directions import absolute_direction, relative_direction
from tasks.virl.geo import decode_polyline, point_along, polyline_length, to_geocodes, to_local
from tasks.virl.observe import observation_text, seen_landmarks
from tasks.virl.route import Route

FORWARD = "forward()"
STOP = "stop()"


def turn_action(direction: str) -> str:
    return f"turn_direction({direction})"


@dataclass(frozen=True)
class DecisionPoint:
    """One decision of a route: where the agent is, what it observes and which action is right.

    index:               position on the rail (0-based).
    geocode:             (lat, lng) of the agent.
    heading_deg:         the agent's heading while deciding.
    expected_action:     canonical action, e.g. "turn_direction(northwest)", "forward()", "stop()".
    observation:         the text observation (see observe.py).
    visible_landmarks:   names in the observation.
    at_intersection:     the observation reports an intersection.
    landmark_candidates: every name an observation of this route can contain (landmarks and destination).
    instruction_line:    0-based index of the instruction line being executed.
    action_space:        "absolute" or "relative" (which words a turn uses).
    """

    index: int
    geocode: tuple[float, float]
    heading_deg: float
    expected_action: str
    observation: str
    visible_landmarks: tuple[str, ...]
    at_intersection: bool
    landmark_candidates: tuple[str, ...]
    instruction_line: int
    action_space: str

    @property
    def is_stop(self) -> bool:
        return self.expected_action == STOP


def leg_points(route: Route, origin) -> list[np.ndarray]:
    """(n_k, 2) local points of each step, from the step's start to its end point in `route.geocodes`."""
    legs = []
    start = route.start.street_point
    for k, end in enumerate(route.geocodes):
        try:
            coords = decode_polyline(route.polylines[k]) if k < len(route.polylines) else []
        except ValueError:
            coords = []
        pts = [start] + coords[1:-1] + [end] if len(coords) >= 2 else [start, end]
        legs.append(to_local(pts, origin))
        start = end
    return legs


def build_rail(route: Route, config: VirlConfig, rng: np.random.Generator) -> tuple[DecisionPoint, ...]:
    """The decision points of `route` under `config`; `rng` draws which interpolated points are dropped."""
    origin = route.start.street_point
    named = [(lm.name, lm.geocode) for lm in route.landmarks] + [(route.dest.name, route.dest.geocode)]
    candidates = route.landmark_names
    points: list[DecisionPoint] = []

    def add(geocode, heading: float, action: str, at_intersection: bool, line: int) -> None:
        seen = seen_landmarks(origin, geocode, heading, named, config.landmark_radius_m)
        points.append(DecisionPoint(
            index=len(points), geocode=(float(geocode[0]), float(geocode[1])), heading_deg=float(heading),
            expected_action=action, observation=observation_text(seen, at_intersection),
            visible_landmarks=tuple(s.name for s in seen), at_intersection=at_intersection,
            landmark_candidates=candidates, instruction_line=line, action_space=config.action_space))

    def turn(from_heading: float, to_heading: float) -> str:
        if config.action_space == "absolute":
            return turn_action(absolute_direction(to_heading))
        return turn_action(relative_direction(from_heading, to_heading))

    heading = route.init_heading_deg
    here = route.start.street_point
    at_intersection = False
    for k, (milestone, pts) in enumerate(zip(route.milestones, leg_points(route, origin))):
        turn_line, move_line = 2 * k, 2 * k + 1
        add(here, heading, turn(heading, milestone.next_heading_deg), at_intersection, turn_line)
        heading = milestone.next_heading_deg
        add(here, heading, FORWARD, at_intersection, move_line)
        length = polyline_length(pts)
        n = config.forward_points
        for i in range(1, n + 1):
            if rng.random() < config.drop_probability:
                continue
            p = point_along(pts, length * i / (n + 1))
            add(tuple(to_geocodes(p, origin)[0]), heading, FORWARD, False, move_line)
        here = route.geocodes[k]
        at_intersection = k < len(route.milestones) - 1
    add(here, heading, STOP, False, 2 * len(route.milestones))
    return tuple(points)
