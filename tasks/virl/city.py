"""Synthetic cities and their routes, emitted in the reference route data model.

A city is a street graph: a jittered, slightly rotated grid with some edges removed (irregular blocks) and a few
diagonal boulevards (so all eight compass headings occur), named streets, named landmarks at intersections, named
places along streets, and building facades, all from one seed. `generate_route` picks two places and follows the
shortest path (Dijkstra) between their street points; consecutive edges of the same street that go on roughly
straight merge into one step, as in turn-by-turn directions, and every step ends at a milestone.

Arrays: `City.nodes` (N, 2) metres (x east, y north); `City.edges` (E, 2) node indices.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from tasks.virl.directions import absolute_direction, heading_difference, relative_direction
from tasks.virl.geo import bearing, encode_polyline, to_geocodes
from tasks.virl.names import DIAGONAL_KINDS, NameMaker
from tasks.virl.observe import relation_to
from tasks.virl.route import Landmark, Milestone, Place, Route
from tasks.virl.styles import CITY_STYLES, TRAIN_STYLE, CityStyle

LANDMARK_MAX_OFFSET_M = 16.0  # landmarks stand this close to their intersection (see VirlConfig.landmark_radius_m)
_MERGE_ANGLE_DEG = 35.0


@dataclass(frozen=True)
class CityLandmark:
    name: str
    xy: tuple[float, float]
    node: int


@dataclass(frozen=True)
class CityPlace:
    name: str
    xy: tuple[float, float]  # the building's door
    street_xy: tuple[float, float]  # where the agent stands on the street
    edge: int
    place_id: str


@dataclass(frozen=True)
class Building:
    """One facade: a vertical rectangle from `a` to `b` (ground points) up to `height_m`."""

    a: tuple[float, float]
    b: tuple[float, float]
    height_m: float
    color: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class City:
    name: str
    seed: int
    style: CityStyle
    origin: tuple[float, float]  # (lat, lng) of local (0, 0)
    nodes: np.ndarray
    edges: np.ndarray
    edge_streets: tuple[str, ...]
    landmarks: tuple[CityLandmark, ...]
    places: tuple[CityPlace, ...]
    buildings: tuple[Building, ...]

    def geocode(self, xy) -> tuple[float, float]:
        lat, lng = to_geocodes(np.asarray(xy, dtype=np.float64), self.origin)[0]
        return (float(lat), float(lng))

    def adjacency(self) -> list[list[tuple[int, int]]]:
        """For each node, its (neighbour, edge index) pairs."""
        adj: list[list[tuple[int, int]]] = [[] for _ in range(len(self.nodes))]
        for e, (i, j) in enumerate(self.edges):
            adj[int(i)].append((int(j), e))
            adj[int(j)].append((int(i), e))
        return adj


def _connected(n_nodes: int, edges: list[tuple[int, int]]) -> bool:
    adj: list[list[int]] = [[] for _ in range(n_nodes)]
    for i, j in edges:
        adj[i].append(j)
        adj[j].append(i)
    seen, stack = {0}, [0]
    while stack:
        for k in adj[stack.pop()]:
            if k not in seen:
                seen.add(k)
                stack.append(k)
    return len(seen) == n_nodes


def _diagonal_start(rng: np.random.Generator, nx: int, ny: int, step_j: int,
                    used_cells: set[tuple[int, int]], tries: int = 32) -> tuple[int, int] | None:
    """The grid node (i, j) where a diagonal boulevard going (+1, step_j) starts, drawn again while its first
    block already carries a diagonal (a boulevard stops at the first taken block, so a taken first block would
    leave the city without that diagonal axis); None when no start has a free first block."""
    def draw() -> tuple[int, int]:
        i = int(rng.integers(0, max(1, nx // 3)))
        j = int(rng.integers(0, ny // 2)) if step_j == 1 else int(rng.integers(ny - 1 - ny // 2, ny))
        return i, j

    def free(i: int, j: int) -> bool:
        return (i, min(j, j + step_j)) not in used_cells

    for _ in range(tries):
        i, j = draw()
        if free(i, j):
            return i, j
    js = range(0, ny // 2) if step_j == 1 else range(ny - 1 - ny // 2, ny)
    return next(((i, j) for i in range(max(1, nx // 3)) for j in js if free(i, j)), None)


def generate_city(seed: int, style: str | None = None, *, nx: int = 7, ny: int = 7, n_diagonals: int = 2,
                  removal_fraction: float = 0.12, n_places: int = 24) -> City:
    """A seeded synthetic city. `style` names one of `styles.CITY_STYLES` (None: picked by the seed)."""
    if nx < 3 or ny < 3:
        raise ValueError(f"a city needs at least 3 x 3 grid nodes, got nx={nx}, ny={ny}.")
    if style is not None and style not in CITY_STYLES:
        raise ValueError(f"unknown city style {style!r}; choose one of {tuple(CITY_STYLES)}.")
    rng = np.random.default_rng([seed, 7321])
    city_style = CITY_STYLES[style if style is not None else tuple(CITY_STYLES)[seed % len(CITY_STYLES)]]
    names = NameMaker(rng)
    city_name = names.word((2, 3))

    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(70.0, 110.0, nx - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(70.0, 110.0, ny - 1))])
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    grid = grid + rng.uniform(-8.0, 8.0, grid.shape) - grid.mean(axis=0)
    angle = math.radians(float(rng.uniform(-10.0, 10.0)))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    nodes = grid @ rot.T

    def node(i: int, j: int) -> int:
        return i * ny + j

    row_names = [names.street() for _ in range(ny)]
    col_names = [names.street() for _ in range(nx)]
    grid_edges: list[tuple[int, int]] = []
    streets: list[str] = []
    for i in range(nx):
        for j in range(ny):
            if i + 1 < nx:
                grid_edges.append((node(i, j), node(i + 1, j)))
                streets.append(row_names[j])
            if j + 1 < ny:
                grid_edges.append((node(i, j), node(i, j + 1)))
                streets.append(col_names[i])

    # Irregular blocks: drop grid edges while the graph stays connected.
    edges = list(grid_edges)
    order = rng.permutation(len(edges))
    to_remove = int(removal_fraction * len(edges))
    removed: set[int] = set()
    for k in order:
        if len(removed) >= to_remove:
            break
        trial = [e for idx, e in enumerate(edges) if idx not in removed and idx != k]
        if _connected(len(nodes), trial):
            removed.add(int(k))
    edges = [e for idx, e in enumerate(edges) if idx not in removed]
    streets = [s for idx, s in enumerate(streets) if idx not in removed]

    # Diagonal boulevards through block interiors; at most one diagonal per block (a boulevard ends where it meets
    # a block that already has one). Each boulevard starts in a free block, so both diagonal axes always occur.
    used_cells: set[tuple[int, int]] = set()
    for d in range(n_diagonals):
        step_j = 1 if d % 2 == 0 else -1  # alternate so that both diagonal axes (all 8 headings) occur
        start = _diagonal_start(rng, nx, ny, step_j, used_cells)
        if start is None:
            continue  # every possible first block is taken (only with n_diagonals > 2): the axis already occurs
        i, j = start
        name = names.street(DIAGONAL_KINDS)
        chain = []
        while 0 <= i + 1 < nx and 0 <= j + step_j < ny:
            cell = (i, min(j, j + step_j))
            if cell in used_cells:
                break
            used_cells.add(cell)
            chain.append((node(i, j), node(i + 1, j + step_j)))
            i, j = i + 1, j + step_j
        for e in chain:
            edges.append(e)
            streets.append(name)
    edge_arr = np.asarray(edges, dtype=np.int64)

    half_road = city_style.road_width_m / 2.0
    # Landmarks: one or two per intersection, on the sidewalk just past the crossing.
    adj: list[list[int]] = [[] for _ in range(len(nodes))]
    for i, j in edges:
        adj[i].append(j)
        adj[j].append(i)
    landmarks: list[CityLandmark] = []
    for n in range(len(nodes)):
        count = 2 + int(rng.random() < 0.3)
        for _ in range(count):
            for _attempt in range(20):
                nbr = adj[n][int(rng.integers(len(adj[n])))]
                u = nodes[nbr] - nodes[n]
                u = u / np.linalg.norm(u)
                side = 1.0 if rng.random() < 0.5 else -1.0
                normal = np.array([u[1], -u[0]]) * side
                xy = nodes[n] + u * rng.uniform(half_road + 3.0, half_road + 7.0) + normal * (half_road + 2.5)
                far_enough = all(np.hypot(*(xy - np.asarray(lm.xy))) > 6.0 for lm in landmarks)
                if far_enough and np.hypot(*(xy - nodes[n])) <= LANDMARK_MAX_OFFSET_M:
                    landmarks.append(CityLandmark(names.business(), (float(xy[0]), float(xy[1])), n))
                    break

    # Places along streets, away from intersections.
    lengths = np.linalg.norm(nodes[edge_arr[:, 1]] - nodes[edge_arr[:, 0]], axis=1)
    slug = city_name.lower()
    places: list[CityPlace] = []
    candidates = np.flatnonzero(lengths >= 50.0)
    for k in range(n_places):
        e = int(rng.choice(candidates))
        a, b = nodes[edge_arr[e, 0]], nodes[edge_arr[e, 1]]
        u = (b - a) / lengths[e]
        street_xy = a + u * lengths[e] * rng.uniform(0.3, 0.7)
        normal = np.array([u[1], -u[0]]) * (1.0 if rng.random() < 0.5 else -1.0)
        xy = street_xy + normal * (half_road + 4.0)
        places.append(CityPlace(names.business(), (float(xy[0]), float(xy[1])),
                                (float(street_xy[0]), float(street_xy[1])), e, f"{slug}-place-{k}"))

    buildings = _buildings(nodes, edge_arr, city_style, rng)
    origin = (float(rng.uniform(-50.0, 60.0)), float(rng.uniform(-170.0, 170.0)))
    return City(city_name, seed, city_style, origin, nodes, edge_arr, tuple(streets), tuple(landmarks),
                tuple(places), buildings)


def _buildings(nodes: np.ndarray, edges: np.ndarray, style: CityStyle,
               rng: np.random.Generator) -> tuple[Building, ...]:
    setback = style.road_width_m / 2.0 + 5.0
    gap = 18.0  # keep corners open so that crossing (and diagonal) streets stay visible
    out = []
    for i, j in edges:
        a, b = nodes[i], nodes[j]
        length = float(np.linalg.norm(b - a))
        u = (b - a) / length
        for side in (1.0, -1.0):
            normal = np.array([u[1], -u[0]]) * side * setback
            t0, t1 = gap, length - gap
            if t1 - t0 < 8.0:
                continue
            pieces = max(1, int(round((t1 - t0) / 22.0)))
            cuts = np.linspace(t0, t1, pieces + 1)
            for s, e in zip(cuts[:-1], cuts[1:]):
                p, q = a + u * s + normal, a + u * (e - 1.5) + normal
                color = style.facades[int(rng.integers(len(style.facades)))]
                out.append(Building((float(p[0]), float(p[1])), (float(q[0]), float(q[1])),
                                    float(rng.uniform(*style.height_range)), color))
    return tuple(out)


def _shortest_path(city: City, start: CityPlace, dest: CityPlace) -> list[int] | None:
    """Node path between the street points of two places on different edges (Dijkstra), or None."""
    adj = city.adjacency()
    sa, sb = (int(v) for v in city.edges[start.edge])
    da, db = (int(v) for v in city.edges[dest.edge])
    s_xy, d_xy = np.asarray(start.street_xy), np.asarray(dest.street_xy)
    dist = {sa: float(np.linalg.norm(city.nodes[sa] - s_xy)), sb: float(np.linalg.norm(city.nodes[sb] - s_xy))}
    prev: dict[int, int] = {}
    heap = [(d, n) for n, d in dist.items()]
    heapq.heapify(heap)
    done: set[int] = set()
    while heap:
        d, n = heapq.heappop(heap)
        if n in done:
            continue
        done.add(n)
        for m, e in adj[n]:
            nd = d + float(np.linalg.norm(city.nodes[m] - city.nodes[n]))
            if nd < dist.get(m, math.inf):
                dist[m], prev[m] = nd, n
                heapq.heappush(heap, (nd, m))
    ends = [(dist[n] + float(np.linalg.norm(city.nodes[n] - d_xy)), n) for n in (da, db) if n in dist]
    if not ends:
        return None
    n = min(ends)[1]
    path = [n]
    while path[-1] in prev:
        path.append(prev[path[-1]])
    return path[::-1]


def _edge_street(city: City, i: int, j: int) -> str:
    for m, e in city.adjacency()[i]:
        if m == j:
            return city.edge_streets[e]
    raise KeyError((i, j))


def route_between(city: City, start: CityPlace, dest: CityPlace, init_heading_deg: float) -> Route | None:
    """The shortest-path route between two places in the reference data model (None if they share a street
    segment or are not connected)."""
    if start.edge == dest.edge:
        return None
    path = _shortest_path(city, start, dest)
    if path is None:
        return None
    points = [np.asarray(start.street_xy)] + [city.nodes[n] for n in path] + [np.asarray(dest.street_xy)]
    seg_streets = ([city.edge_streets[start.edge]]
                   + [_edge_street(city, a, b) for a, b in zip(path[:-1], path[1:])]
                   + [city.edge_streets[dest.edge]])
    # Legs: runs of segments on one street that go on roughly straight. leg = (point indices, street)
    legs: list[tuple[list[int], str]] = [([0, 1], seg_streets[0])]
    for s in range(1, len(points) - 1):
        idx, street = legs[-1]
        turn = heading_difference(bearing(points[s - 1], points[s]), bearing(points[s], points[s + 1]))
        if seg_streets[s] == street and abs(turn) < _MERGE_ANGLE_DEG:
            idx.append(s + 1)
        else:
            legs.append(([s, s + 1], seg_streets[s]))
    origin = city.geocode(start.street_xy)
    geocode_of = [city.geocode(p) for p in points]
    landmarks: list[Landmark] = []
    milestones: list[Milestone] = []
    polylines, instructions, distances, ends = [], [], [], []
    heading = float(init_heading_deg)
    for k, (idx, street) in enumerate(legs):
        leg_pts = [points[i] for i in idx]
        length = float(sum(np.linalg.norm(b - a) for a, b in zip(leg_pts[:-1], leg_pts[1:])))
        if length < 12.0:
            return None
        next_heading = float(round(bearing(leg_pts[0], leg_pts[-1])) % 360)
        end = geocode_of[idx[-1]]
        if k == len(legs) - 1:
            rel = relation_to(origin, end, next_heading, city.geocode(dest.xy))
            phrase = f"The destination {dest.name} is on your {rel}"
        else:
            node_id = path[idx[-1] - 1]
            here = [lm for lm in city.landmarks if lm.node == node_id]
            if not here:
                return None
            # Prefer a landmark ahead or beside (what a direction-giver would name), then the nearest.
            def preference(m: CityLandmark) -> tuple[bool, float, str]:
                rel_m = relation_to(origin, end, next_heading, city.geocode(m.xy))
                return ("back" in rel_m, float(np.hypot(*(np.asarray(m.xy) - city.nodes[node_id]))), m.name)

            lm = min(here, key=preference)
            lm_geocode = city.geocode(lm.xy)
            rel = relation_to(origin, end, next_heading, lm_geocode)
            phrase = f"{lm.name} is on your {rel}"
            if lm.name not in [x.name for x in landmarks]:
                landmarks.append(Landmark(lm.name, lm_geocode, rel, f"{city.name.lower()}-landmark-{lm.node}"))
        instructions.append(f"Head <b>{absolute_direction(next_heading)}</b> on <b>{street}</b>" if k == 0 else
                            f"Turn <b>{relative_direction(heading, next_heading)}</b> onto <b>{street}</b>")
        milestones.append(Milestone(k + 1, phrase, float(round(length)), heading, next_heading))
        polylines.append(encode_polyline([geocode_of[i] for i in idx]))
        distances.append(float(round(length)))
        ends.append(end)
        heading = next_heading
    return Route(
        start=Place(start.name, city.geocode(start.xy), start.place_id, origin),
        dest=Place(dest.name, city.geocode(dest.xy), dest.place_id, geocode_of[-1]),
        geocodes=tuple(ends), polylines=tuple(polylines), instructions=tuple(instructions),
        distances_m=tuple(distances), landmarks=tuple(landmarks), init_heading_deg=float(init_heading_deg),
        milestones=tuple(milestones), city=city.name)


def generate_routes(city: City, n: int, seed: int, *, min_steps: int = 2, max_steps: int = 6,
                    max_tries: int = 2000) -> tuple[Route, ...]:
    """`n` distinct seeded routes between the city's places with `min_steps`..`max_steps` milestones."""
    rng = np.random.default_rng([seed, city.seed, 991])
    routes: list[Route] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(max_tries):
        if len(routes) == n:
            return tuple(routes)
        a, b = (int(v) for v in rng.choice(len(city.places), size=2, replace=False))
        init = float(45 * int(rng.integers(8)))
        if (a, b) in seen:
            continue
        route = route_between(city, city.places[a], city.places[b], init)
        if route is not None and min_steps <= len(route.milestones) <= max_steps:
            seen.add((a, b))
            routes.append(route)
    raise RuntimeError(f"found only {len(routes)} of {n} routes with {min_steps}..{max_steps} steps in city "
                       f"{city.name!r}; lower n or widen the step range.")


def train_city(seed: int = 0) -> City:
    """The in-distribution city (the training style)."""
    return generate_city(seed, TRAIN_STYLE)


def visual_ood_set(seed: int = 0, n_cities: int = 9, routes_per_city: int = 2) -> tuple[tuple[City, tuple[Route, ...]], ...]:
    """A set shaped like VLN mini: `n_cities` cities in the styles other than the training style, with
    `routes_per_city` routes each (9 x 2 = 18 routes by default)."""
    styles = [s for s in CITY_STYLES if s != TRAIN_STYLE]
    if n_cities > len(styles):
        raise ValueError(f"at most {len(styles)} visual-OOD cities have distinct styles, asked for {n_cities}.")
    out = []
    for k in range(n_cities):
        city = generate_city(10_000 + 97 * seed + k, styles[k])
        out.append((city, generate_routes(city, routes_per_city, seed)))
    return tuple(out)
