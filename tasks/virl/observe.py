"""Text observations: which of a route's landmarks (and its destination) are within the observation radius of
the agent, where they are relative to its heading, and whether it stands at an intersection.

The observation string is "<landmarks or 'No landmarks nearby'>; <'You observe an intersection' or ''>", e.g.
"Vasto Bakery is on your left front; You observe an intersection" or "No landmarks nearby;".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.virl.directions import spatial_relation
from tasks.virl.geo import bearing, to_local

NO_LANDMARKS = "No landmarks nearby"
INTERSECTION = "You observe an intersection"


@dataclass(frozen=True)
class SeenLandmark:
    name: str
    relation: str
    distance_m: float


def relation_to(origin, agent_geocode, heading_deg: float, target_geocode) -> str:
    """Spatial relation of a target to an agent at `agent_geocode` facing `heading_deg` (local frame at origin)."""
    a, t = to_local([agent_geocode, target_geocode], origin)
    return spatial_relation(heading_deg, bearing(a, t))


def seen_landmarks(origin, agent_geocode, heading_deg: float, named_geocodes, radius_m: float
                   ) -> tuple[SeenLandmark, ...]:
    """The named points (name, geocode) within `radius_m` of the agent, nearest first (ties by name)."""
    if not named_geocodes:
        return ()
    agent = to_local([agent_geocode], origin)[0]
    pts = to_local([g for _, g in named_geocodes], origin)
    dists = np.linalg.norm(pts - agent, axis=1)
    seen = [SeenLandmark(name, spatial_relation(heading_deg, bearing(agent, p)), float(d))
            for (name, _), p, d in zip(named_geocodes, pts, dists) if d <= radius_m]
    return tuple(sorted(seen, key=lambda s: (round(s.distance_m, 6), s.name)))


def observation_text(seen: tuple[SeenLandmark, ...], at_intersection: bool) -> str:
    landmarks = ", ".join(f"{s.name} is on your {s.relation}" for s in seen) or NO_LANDMARKS
    return f"{landmarks}; {INTERSECTION if at_intersection else ''}".rstrip()
