"""The route data model, mirroring the reference V-IRL route JSON, and its conversion to and from that JSON.

A route has a start and a destination place, one step (leg) per milestone: `geocodes[k]` is where step k ends
(an intersection, the last one the destination), `polylines[k]` its geometry (Google encoded polyline),
`distances_m[k]` its length; the landmarks named by the milestones; the agent's initial heading; and one
`Milestone` per step: the heading before the step (`heading_deg`, the reference's "human_heading"), the heading
to walk (`next_heading_deg`, "to_next_intersection_heading") and the phrase of what is seen where the step ends.
In the reference JSON `milestone_info` is one string of brace blocks with trailing commas; it is parsed leniently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from tasks.common import parse_json_object
from tasks.virl.directions import absolute_direction

Geocode = tuple[float, float]


class RouteFormatError(ValueError):
    """A route file or dict that does not have the reference layout."""


@dataclass(frozen=True)
class Place:
    name: str
    geocode: Geocode
    place_id: str = ""
    relocated_geocode: Geocode | None = None  # the point on the street where the agent stands

    @property
    def street_point(self) -> Geocode:
        return self.relocated_geocode if self.relocated_geocode is not None else self.geocode


@dataclass(frozen=True)
class Landmark:
    name: str
    geocode: Geocode
    spatial_relation: str  # as seen at its milestone, e.g. "left front"
    place_id: str = ""

    @property
    def expression(self) -> str:
        return f"{self.name} is on your {self.spatial_relation}"


@dataclass(frozen=True)
class Milestone:
    intersection_idx: int  # 1-based, as in the reference
    landmark_phrase: str  # e.g. "Aritzia is on your left front", "The destination X is on your left"
    distance_m: float
    heading_deg: float  # heading before this step's turn
    next_heading_deg: float  # heading of this step


@dataclass(frozen=True)
class Route:
    start: Place
    dest: Place
    geocodes: tuple[Geocode, ...]
    polylines: tuple[str, ...]
    instructions: tuple[str, ...]
    distances_m: tuple[float, ...]
    landmarks: tuple[Landmark, ...]
    init_heading_deg: float
    milestones: tuple[Milestone, ...]
    city: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict, compare=False)  # unmodelled reference fields

    def __post_init__(self) -> None:
        n = len(self.milestones)
        if n == 0:
            raise RouteFormatError(f"route {self.start.name!r} -> {self.dest.name!r} has no milestones.")
        if len(self.geocodes) != n:
            raise RouteFormatError(
                f"route {self.start.name!r} -> {self.dest.name!r} has {len(self.geocodes)} step end points for "
                f"{n} milestones; geocode_list needs one point per milestone.")

    @property
    def landmark_names(self) -> tuple[str, ...]:
        """Names an observation can mention: the route's landmarks, then the destination."""
        names = []
        for name in [lm.name for lm in self.landmarks] + [self.dest.name]:
            if name not in names:
                names.append(name)
        return tuple(names)


def _geocode(value: Any, where: str) -> Geocode:
    try:
        lat, lng = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RouteFormatError(f"{where} must be a [lat, lng] pair, got {value!r}.") from None
    return (lat, lng)


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise RouteFormatError(f"{where} is missing the key {key!r} of the reference route layout.")
    return d[key]


def _place_from_dict(d: Mapping[str, Any], where: str) -> Place:
    relocated = d.get("relocated_geocode")
    return Place(
        name=str(_require(d, "name", where)),
        geocode=_geocode(_require(d, "geocode", where), f"{where}.geocode"),
        place_id=str(d.get("place_id", "")),
        relocated_geocode=None if relocated is None else _geocode(relocated, f"{where}.relocated_geocode"),
    )


def _place_to_dict(place: Place) -> dict[str, Any]:
    d: dict[str, Any] = {"name": place.name, "geocode": list(place.geocode), "place_id": place.place_id}
    if place.relocated_geocode is not None:
        d["relocated_geocode"] = list(place.relocated_geocode)
    return d


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BLOCK = re.compile(r"\{[^{}]*\}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _NUMBER.search(str(value))
    if match is None:
        raise RouteFormatError(f"{where} must start with a number, got {value!r}.")
    return float(match.group(0))


def parse_milestone_info(info: Any, where: str = "milestone_info") -> tuple[Milestone, ...]:
    """The milestones of a reference `milestone_info`: its string of brace blocks, or a list of dicts."""
    blocks: list[Any]
    if isinstance(info, str):
        blocks = [parse_json_object(block) for block in _BLOCK.findall(info)]
    elif isinstance(info, (list, tuple)):
        blocks = list(info)
    else:
        raise RouteFormatError(f"{where} must be a string of {{...}} blocks or a list of objects.")
    milestones = []
    for i, block in enumerate(blocks):
        at = f"{where}[{i}]"
        if not isinstance(block, Mapping):
            raise RouteFormatError(f"{at} is not a readable object.")
        milestones.append(Milestone(
            intersection_idx=int(_number(_require(block, "intersection_idx", at), f"{at}.intersection_idx")),
            landmark_phrase=str(_require(block, "landmarks", at)).strip(),
            distance_m=_number(_require(block, "distance", at), f"{at}.distance"),
            heading_deg=_number(_require(block, "human_heading", at), f"{at}.human_heading"),
            next_heading_deg=_number(_require(block, "to_next_intersection_heading", at),
                                     f"{at}.to_next_intersection_heading"),
        ))
    if not milestones:
        raise RouteFormatError(f"{where} holds no milestone blocks.")
    return tuple(milestones)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_milestone_info(milestones: tuple[Milestone, ...]) -> str:
    """The reference string form of the milestones (brace blocks with trailing commas)."""
    parts = []
    for m in milestones:
        parts.append(
            "\n{\n"
            f'"intersection_idx": "{m.intersection_idx}",\n'
            f'"landmarks": {json.dumps(m.landmark_phrase)},\n'
            f'"distance": "{_format_number(m.distance_m)} meters",\n'
            f'"human_heading": "{_format_number(m.heading_deg)}",\n'
            f'"to_next_intersection_heading": "{_format_number(m.next_heading_deg)} '
            f'({absolute_direction(m.next_heading_deg)})",\n'
            "}\n")
    return "".join(parts)


def route_from_dict(d: Mapping[str, Any], where: str = "route") -> Route:
    """A `Route` from one entry of a reference route list; RouteFormatError naming the first missing piece."""
    if not isinstance(d, Mapping):
        raise RouteFormatError(f"{where} is not a JSON object.")
    results = _require(d, "route_results", where)
    rw = f"{where}.route_results"
    landmarks = []
    for i, lm in enumerate(results.get("landmark_list", []) or []):
        at = f"{rw}.landmark_list[{i}]"
        landmarks.append(Landmark(
            name=str(_require(lm, "name", at)),
            geocode=_geocode(_require(lm, "geocode", at), f"{at}.geocode"),
            spatial_relation=str(lm.get("spatial_relation", "")),
            place_id=str(lm.get("place_id", "")),
        ))
    known = {"start_place", "dest_place", "route_results", "init_heading", "milestone_info", "city"}
    return Route(
        start=_place_from_dict(_require(d, "start_place", where), f"{where}.start_place"),
        dest=_place_from_dict(_require(d, "dest_place", where), f"{where}.dest_place"),
        geocodes=tuple(_geocode(g, f"{rw}.geocode_list[{i}]")
                       for i, g in enumerate(_require(results, "geocode_list", rw))),
        polylines=tuple(str(p) for p in results.get("polyline", []) or []),
        instructions=tuple(str(s) for s in results.get("instructions", []) or []),
        distances_m=tuple(_number(x, f"{rw}.distance_list") for x in results.get("distance_list", []) or []),
        landmarks=tuple(landmarks),
        init_heading_deg=_number(_require(d, "init_heading", where), f"{where}.init_heading"),
        milestones=parse_milestone_info(_require(d, "milestone_info", where), f"{where}.milestone_info"),
        city=str(d.get("city", "")),
        extras={k: v for k, v in d.items() if k not in known},
    )


def route_to_dict(route: Route) -> dict[str, Any]:
    """The reference JSON object of a route (the inverse of `route_from_dict`)."""
    d: dict[str, Any] = dict(route.extras)
    d.update({
        "start_place": _place_to_dict(route.start),
        "dest_place": _place_to_dict(route.dest),
        "route_results": {
            "geocode_list": [list(g) for g in route.geocodes],
            "polyline": list(route.polylines),
            "instructions": list(route.instructions),
            "distance_list": [_int_if_whole(x) for x in route.distances_m],
            "distance": _int_if_whole(sum(route.distances_m)),
            "n_landmarks": len(route.landmarks),
            "landmark_list": [
                {"name": lm.name, "geocode": list(lm.geocode), "place_id": lm.place_id,
                 "spatial_relation": lm.spatial_relation, "expression": lm.expression}
                for lm in route.landmarks],
        },
        "init_heading": _int_if_whole(route.init_heading_deg),
        "milestone_info": format_milestone_info(route.milestones),
    })
    if route.city:
        d["city"] = route.city
    return d


def _int_if_whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
