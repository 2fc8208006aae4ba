"""Synthetic cities and routes: the street graph is connected and irregular with all eight headings, routes
follow the graph with headings and distances consistent with their geometry, the oracle rail reaches the
destination and stops only there, milestone landmarks are observed at their intersections, generation is
seeded, and routes survive the reference JSON layout."""

from collections import Counter

import numpy as np
import pytest

from tasks.virl.city import generate_city, generate_routes, train_city, visual_ood_set
from tasks.virl.config import VirlConfig
from tasks.virl.directions import ABSOLUTE_DIRECTIONS, absolute_direction, heading_difference
from tasks.virl.geo import bearing, decode_polyline, polyline_length, to_local
from tasks.virl.oracle import FORWARD, STOP, build_rail, leg_points
from tasks.virl.route import parse_milestone_info, route_from_dict, route_to_dict
from tasks.virl.styles import TRAIN_STYLE


@pytest.fixture(scope="module")
def city_and_routes():
    city = generate_city(3)
    return city, generate_routes(city, 8, seed=1)


def _components(n, edges):
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        parent[find(int(i))] = find(int(j))
    return len({find(i) for i in range(n)})


def _check_city(city):
    assert _components(len(city.nodes), city.edges) == 1, city.seed
    directed = list(city.edges) + [(j, i) for i, j in city.edges]
    words = Counter(absolute_direction(bearing(city.nodes[i], city.nodes[j])) for i, j in directed)
    assert set(words) == set(ABSOLUTE_DIRECTIONS), (city.seed, set(ABSOLUTE_DIRECTIONS) - set(words))
    full_grid_edges = 2 * 7 * 6
    grid_like = sum(1 for i, j in city.edges if abs(int(i) - int(j)) in (1, 7))
    assert grid_like < full_grid_edges  # some blocks merged
    lengths = np.linalg.norm(city.nodes[city.edges[:, 0]] - city.nodes[city.edges[:, 1]], axis=1)
    assert lengths.std() > 5.0  # jittered, not a perfect grid
    assert len({lm.name for lm in city.landmarks}) == len(city.landmarks)


def test_city_is_connected_irregular_and_has_all_headings():
    """Every city, not one lucky seed: seeds 0..19 (4 and 15 once lost a diagonal axis) and the visual-OOD set
    (whose city 10004 did)."""
    for seed in range(20):
        _check_city(generate_city(seed))
    for city, _ in visual_ood_set(seed=0):
        _check_city(city)
    for n in (3, 4, 5):  # small grids too: both diagonal axes (node steps ny + 1 and ny - 1) and all headings
        for seed in range(20):
            city = generate_city(seed, nx=n, ny=n)
            assert {n + 1, n - 1} <= {int(j) - int(i) for i, j in city.edges}, (n, seed)
            directed = list(city.edges) + [(j, i) for i, j in city.edges]
            assert {absolute_direction(bearing(city.nodes[i], city.nodes[j])) for i, j in directed} == set(
                ABSOLUTE_DIRECTIONS), (n, seed)


def test_generation_is_seeded_and_cities_differ():
    a, b, c = generate_city(5), generate_city(5), generate_city(6)
    assert a.name == b.name and np.array_equal(a.nodes, b.nodes) and a.landmarks == b.landmarks
    assert generate_routes(a, 3, 0) == generate_routes(b, 3, 0)
    assert a.name != c.name and not {lm.name for lm in a.landmarks} & {lm.name for lm in c.landmarks}


def test_routes_follow_the_geometry(city_and_routes):
    city, routes = city_and_routes
    for route in routes:
        origin = route.start.street_point
        assert len(route.milestones) == len(route.geocodes) == len(route.polylines) == len(route.distances_m)
        assert route.geocodes[-1] == route.dest.street_point
        assert route.milestones[0].heading_deg == route.init_heading_deg
        for k, (m, leg) in enumerate(zip(route.milestones, leg_points(route, origin))):
            assert m.intersection_idx == k + 1
            assert abs(heading_difference(bearing(leg[0], leg[-1]), m.next_heading_deg)) <= 0.51
            assert abs(polyline_length(leg) - m.distance_m) <= 2.0
            if k:
                assert m.heading_deg == route.milestones[k - 1].next_heading_deg
            # every polyline vertex is a street point: on a city edge
            pts = to_local(decode_polyline(route.polylines[k]), city.origin)
            for p in pts:
                a, b = city.nodes[city.edges[:, 0]], city.nodes[city.edges[:, 1]]
                t = np.clip(np.einsum("ij,ij->i", p - a, b - a) / np.einsum("ij,ij->i", b - a, b - a), 0, 1)
                assert np.min(np.linalg.norm(a + t[:, None] * (b - a) - p, axis=1)) < 2.0
        assert route.milestones[-1].landmark_phrase.startswith(f"The destination {route.dest.name} is on your ")


@pytest.mark.parametrize("action_space, points, drop", [("absolute", 5, 0.5), ("relative", 3, 0.0),
                                                        ("absolute", 0, 0.0), ("relative", 5, 1.0)])
def test_oracle_rail_reaches_destination_and_stops_only_there(city_and_routes, action_space, points, drop):
    _, routes = city_and_routes
    config = VirlConfig(action_space=action_space, forward_points=points, drop_probability=drop)
    for route in routes:
        rail = build_rail(route, config, np.random.default_rng(0))
        assert rail[-1].expected_action == STOP and rail[-1].geocode == route.dest.street_point
        assert [p.expected_action for p in rail].count(STOP) == 1
        turns = [p for p in rail if p.expected_action.startswith("turn_direction(")]
        assert len(turns) == len(route.milestones)
        assert rail[0] == turns[0] and rail[1].expected_action == FORWARD
        assert all(p.at_intersection for p in turns[1:]) and not rail[0].at_intersection
        forwards = sum(p.expected_action == FORWARD for p in rail)
        assert len(route.milestones) <= forwards <= len(route.milestones) * (points + 1)
        if drop == 0.0:
            assert forwards == len(route.milestones) * (points + 1)
        if drop == 1.0 or points == 0:  # no interpolated point: only the forward() right after each turn
            assert forwards == len(route.milestones)
        # the turn at each intersection is taken where the previous step ends, then walked
        for k, turn in enumerate(turns[1:]):
            assert turn.geocode == route.geocodes[k]
            following = rail[turn.index + 1]
            assert following.expected_action == FORWARD and following.geocode == turn.geocode
        # the milestone landmark is observed at its intersection with the milestone's relation
        for k, m in enumerate(route.milestones[:-1]):
            assert m.landmark_phrase in turns[k + 1].observation
        assert route.dest.name in rail[-1].visible_landmarks
        assert rail[-1].observation.startswith(route.milestones[-1].landmark_phrase.replace("The destination ", ""))


def test_oracle_drops_about_the_configured_share_of_points(city_and_routes):
    """At drop_probability 0.5, about half of the interpolated points are dropped (seeded: deterministic)."""
    _, routes = city_and_routes
    config = VirlConfig(forward_points=5, drop_probability=0.5)
    offered = kept = 0
    for seed in range(20):
        for k, route in enumerate(routes):  # independent draws per (seed, route)
            rail = build_rail(route, config, np.random.default_rng([seed, k]))
            offered += len(route.milestones) * config.forward_points
            kept += sum(p.expected_action == FORWARD for p in rail) - len(route.milestones)
    assert offered >= 2000
    assert abs((offered - kept) / offered - 0.5) < 0.04  # 4 standard errors (0.5 / sqrt(offered) <= 0.011)


def test_reference_json_round_trip(city_and_routes):
    _, routes = city_and_routes
    for route in routes:
        d = route_to_dict(route)
        assert set(d) >= {"start_place", "dest_place", "route_results", "init_heading", "milestone_info"}
        assert set(d["route_results"]) >= {"geocode_list", "polyline", "instructions", "distance_list",
                                           "landmark_list"}
        assert isinstance(d["milestone_info"], str)
        assert route_from_dict(d) == route


def test_reference_milestone_string_is_parsed():
    info = ('\n{\n"intersection_idx": "1",\n"landmarks": "Prince St is on your front",\n"distance": "16 meters",\n'
            '"human_heading": "0",\n"to_next_intersection_heading": "298 (northwest)",\n}\n\n{\n'
            '"intersection_idx": "2",\n"landmarks": "The destination MoMA Design Store is on your left",\n'
            '"distance": "159 meters",\n"human_heading": "298",\n"to_next_intersection_heading": "212 (southwest)",\n}\n')
    first, second = parse_milestone_info(info)
    assert (first.intersection_idx, first.landmark_phrase, first.distance_m, first.heading_deg,
            first.next_heading_deg) == (1, "Prince St is on your front", 16.0, 0.0, 298.0)
    assert second.next_heading_deg == 212.0 and second.landmark_phrase.startswith("The destination")


def test_missing_route_piece_is_named(city_and_routes):
    from tasks.virl.route import RouteFormatError

    d = route_to_dict(city_and_routes[1][0])
    del d["route_results"]["geocode_list"]
    with pytest.raises(RouteFormatError, match="geocode_list"):
        route_from_dict(d)


def test_visual_ood_set_is_shaped_like_vln_mini():
    cities = visual_ood_set(seed=0)
    assert len(cities) == 9 and all(len(routes) == 2 for _, routes in cities)
    styles = {city.style.name for city, _ in cities}
    assert len(styles) == 9 and TRAIN_STYLE not in styles and train_city(0).style.name == TRAIN_STYLE
    assert len({city.name for city, _ in cities}) == 9
