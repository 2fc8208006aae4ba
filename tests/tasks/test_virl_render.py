"""The synthetic renderer: deterministic, the grid has the documented layout and separators, a landmark's sign
is drawn in the view that faces it and nowhere else, a crossing street shows at an intersection, and styles
differ."""

import numpy as np
import pytest

from tasks.virl.city import City, CityLandmark, generate_city, generate_routes
from tasks.virl.geo import to_local
from tasks.virl.render import CityViews, VIEW_NAMES, compose_grid, draw_map, render_views
from tasks.virl.styles import CITY_STYLES

SIZE = 96


def _street_city(landmarks=(), cross=False):
    """One north-south street through (0, 0) (and an east-west one with `cross`)."""
    nodes = np.array([[0.0, -150.0], [0.0, 150.0], [0.0, 0.0], [-150.0, 0.0], [150.0, 0.0]])
    edges = np.array([[0, 2], [2, 1]] + ([[3, 2], [2, 4]] if cross else []))
    streets = ("Main Street",) * 2 + (("Cross Street",) * 2 if cross else ())
    return City("Testville", 0, CITY_STYLES["brick"], (40.0, -73.0), nodes, edges, streets,
                tuple(landmarks), (), ())


def _quadrant(grid, view, size=SIZE, sep=5):
    r, c = divmod(view, 2)
    return grid[r * (size + sep): r * (size + sep) + size, c * (size + sep): c * (size + sep) + size]


@pytest.mark.parametrize("heading", [0.0, 90.0, 200.0])
@pytest.mark.parametrize("offset, expected_view", [((0.0, 10.0), "front"), ((10.0, 0.0), "right"),
                                                   ((0.0, -10.0), "back"), ((-10.0, 0.0), "left")])
def test_landmark_sign_appears_in_the_view_that_faces_it(heading, offset, expected_view):
    # rotate the offset with the agent's heading so that it keeps the same relation
    t = np.radians(heading)
    dx, dy = offset
    xy = (dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t))
    landmark = CityLandmark("Blue Heron Cafe", (float(xy[0]), float(xy[1])), 2)
    with_sign, signs = render_views(_street_city([landmark]), (0.0, 0.0), heading, SIZE, 20.0)
    without, no_signs = render_views(_street_city(), (0.0, 0.0), heading, SIZE, 20.0)
    assert no_signs == ()
    assert [s.view for s in signs] == [expected_view] and signs[0].name == "Blue Heron Cafe"
    left, top, right, bottom = signs[0].box
    assert 0 <= left < right <= SIZE and 0 <= top < bottom <= SIZE  # fully inside its view
    for name, a, b in zip(VIEW_NAMES, with_sign, without):
        changed = np.any(a != b, axis=-1)
        if name == expected_view:
            assert changed[top:bottom, left:right].mean() > 0.9
        else:
            assert not changed.any()
    # The sign carries the name: text pixels inside the board, and an anagram of the name (the same letters, so
    # the same board box) draws other pixels there; a board with no text, or with any text but the name, fails.
    view = VIEW_NAMES.index(expected_view)
    inside = (slice(top + 2, bottom - 2), slice(left + 2, right - 2))
    board = with_sign[view][inside]
    assert np.any(board != np.asarray(CITY_STYLES["brick"].sign_board), axis=-1).mean() > 0.05
    anagram = CityLandmark("Blue Heron Face", landmark.xy, 2)
    other_views, other_signs = render_views(_street_city([anagram]), (0.0, 0.0), heading, SIZE, 20.0)
    assert [(s.name, s.box) for s in other_signs] == [("Blue Heron Face", signs[0].box)]
    assert np.any(board != other_views[view][inside], axis=-1).mean() > 0.02
    outside = np.ones(changed.shape, bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(with_sign[view][outside], other_views[view][outside])  # only the text differs


def test_far_landmarks_get_no_sign():
    far = CityLandmark("Far Away Bakery", (0.0, 30.0), 1)
    _, signs = render_views(_street_city([far]), (0.0, 0.0), 0.0, SIZE, 20.0)
    assert signs == ()


def test_crossing_street_is_visible_at_an_intersection():
    plain, _ = render_views(_street_city(), (0.0, 0.0), 0.0, SIZE, 20.0)
    crossing, _ = render_views(_street_city(cross=True), (0.0, 0.0), 0.0, SIZE, 20.0)
    style = CITY_STYLES["brick"]

    def is_street(pixels):  # asphalt or its centre line
        return bool(np.all(np.all(pixels == style.road, axis=-1) | np.all(pixels == style.lane, axis=-1)))

    near_horizon = (slice(SIZE // 2 + 1, SIZE // 2 + 4), slice(SIZE // 2 - 2, SIZE // 2 + 3))
    for name, a, b in zip(VIEW_NAMES, plain, crossing):
        road_a, road_b = is_street(a[near_horizon]), is_street(b[near_horizon])
        if name in ("right", "left"):
            assert road_b and not road_a  # the crossing street runs away to the horizon at the sides
        else:
            assert road_a and road_b


def test_rendering_is_deterministic_and_grid_layout():
    city = generate_city(2, nx=4, ny=4)
    route = generate_routes(city, 1, 0)[0]
    views = CityViews(city, view_size=SIZE, separator_px=5)
    first = views.grid(route.geocodes[0], 45.0)
    again = CityViews(generate_city(2, nx=4, ny=4), view_size=SIZE, separator_px=5).grid(route.geocodes[0], 45.0)
    assert first.dtype == np.uint8 and first.shape == (2 * SIZE + 5, 2 * SIZE + 5, 3)
    assert np.array_equal(first, again)
    assert np.all(first[SIZE:SIZE + 5] == 0) and np.all(first[:, SIZE:SIZE + 5] == 0)
    xy = to_local([route.geocodes[0]], city.origin)[0]
    single, _ = render_views(city, xy, 45.0, SIZE, 20.0)
    for i in range(4):
        assert np.array_equal(_quadrant(first, i), single[i])
    turned, _ = render_views(city, xy, 135.0, SIZE, 20.0)
    assert np.array_equal(turned[0], single[1])  # facing right = the old right view


def test_compose_grid_refuses_wrong_inputs():
    with pytest.raises(ValueError, match="four views"):
        compose_grid([np.zeros((4, 4, 3), np.uint8)] * 3)


def test_styles_look_different_and_map_draws():
    a = generate_city(4, "brick", nx=4, ny=4)
    b = generate_city(4, "neon", nx=4, ny=4)
    va, _ = render_views(a, a.nodes[5], 0.0, SIZE, 20.0)
    vb, _ = render_views(b, b.nodes[5], 0.0, SIZE, 20.0)
    assert np.abs(va[0].astype(int).mean(axis=(0, 1)) - vb[0].astype(int).mean(axis=(0, 1))).max() > 20
    route = generate_routes(a, 1, 0)[0]
    image = draw_map(a, route, size=200)
    assert image.shape == (200, 200, 3) and (np.all(image == (220, 30, 30), axis=-1)).any()
