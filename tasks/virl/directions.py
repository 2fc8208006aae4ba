"""Headings and direction words for V-IRL: the 8-way absolute compass, the 4-way relative turn, and the 8-way
spatial relation of a landmark to the agent. Headings are degrees, 0 = north, clockwise (90 = east).

The reference code computes the relative turn as `next - previous` without wrapping, so a turn from 350 to 10
degrees (+20, "slightly right") comes out as -340 ("left"). Here the difference is wrapped to (-180, 180].
"""

from __future__ import annotations

import math

ABSOLUTE_DIRECTIONS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
RELATIVE_DIRECTIONS = ("left", "slightly left", "slightly right", "right")
SPATIAL_RELATIONS = ("front", "right front", "right", "right back", "back", "left back", "left", "left front")
HEADING_OF = {name: 45.0 * i for i, name in enumerate(ABSOLUTE_DIRECTIONS)}


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of degrees, got {value!r}.")
    return value


def wrap_degrees(delta_deg: float) -> float:
    """`delta_deg` wrapped to (-180, 180]."""
    wrapped = _finite(delta_deg, "an angle") % 360.0
    return wrapped - 360.0 if wrapped > 180.0 else wrapped


def _sector8(angle_deg: float) -> int:
    """Index of the 45-degree sector centred on 0, 45, ..., 315 that holds `angle_deg` (boundaries go clockwise)."""
    return int(((angle_deg % 360.0) + 22.5) // 45.0) % 8


def absolute_direction(heading_deg: float) -> str:
    """The compass word of a heading: 45-degree sectors centred on the 8 headings (north = [-22.5, 22.5))."""
    return ABSOLUTE_DIRECTIONS[_sector8(_finite(heading_deg, "a heading"))]


def heading_difference(from_heading_deg: float, to_heading_deg: float) -> float:
    """The turn from one heading to another, wrapped to (-180, 180]; positive = clockwise (to the right)."""
    return wrap_degrees(_finite(to_heading_deg, "a heading") - _finite(from_heading_deg, "a heading"))


def relative_direction(from_heading_deg: float, to_heading_deg: float) -> str:
    """The relative turn word: difference < -45 left, [-45, 0) slightly left, [0, 45] slightly right, > 45 right."""
    delta = heading_difference(from_heading_deg, to_heading_deg)
    if delta < -45.0:
        return "left"
    if delta < 0.0:
        return "slightly left"
    if delta <= 45.0:
        return "slightly right"
    return "right"


def spatial_relation(agent_heading_deg: float, bearing_deg: float) -> str:
    """Where something at compass bearing `bearing_deg` is for an agent facing `agent_heading_deg`
    ("front", "right front", ..., "left front"; 45-degree sectors centred on the 8 relations)."""
    return SPATIAL_RELATIONS[_sector8(heading_difference(agent_heading_deg, bearing_deg))]
