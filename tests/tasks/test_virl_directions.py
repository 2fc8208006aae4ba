"""Direction tables of V-IRL: 8-way absolute headings, 4-way relative turns with the wrap-around fix, and the
8-way spatial relation, checked against independent formulations (atan2 of sin/cos, explicit tables)."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from tasks.virl.directions import (
    ABSOLUTE_DIRECTIONS, absolute_direction, heading_difference, relative_direction, spatial_relation, wrap_degrees)


@pytest.mark.parametrize("heading, word", [
    (0, "north"), (360, "north"), (-10, "north"), (22.4, "north"), (22.5, "northeast"), (45, "northeast"),
    (67.49, "northeast"), (67.5, "east"), (90, "east"), (135, "southeast"), (180, "south"), (225, "southwest"),
    (270, "west"), (298, "northwest"), (315, "northwest"), (337.4, "northwest"), (337.5, "north"), (719, "north"),
])
def test_absolute_direction_table(heading, word):
    assert absolute_direction(heading) == word


@pytest.mark.parametrize("src, dst, word", [
    (350, 10, "slightly right"),  # wraps: +20, the reference's unwrapped -340 would say "left"
    (10, 350, "slightly left"),
    (0, 0, "slightly right"), (0, 45, "slightly right"), (0, 45.01, "right"), (0, -45, "slightly left"),
    (0, -45.01, "left"), (0, 180, "right"), (180, 0, "right"), (298, 212, "left"), (212, 120, "left"),
    (225, 174, "left"), (92, 143, "right"), (143, 178, "slightly right"), (300, 20, "right"), (20, 300, "left"),
])
def test_relative_direction_table(src, dst, word):
    assert relative_direction(src, dst) == word


@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4))
@settings(max_examples=300, deadline=None)
def test_relative_direction_matches_atan2_reference(src, dst):
    delta = math.degrees(math.atan2(math.sin(math.radians(dst - src)), math.cos(math.radians(dst - src))))
    ours = heading_difference(src, dst)
    assert -180.0 < ours <= 180.0
    assert math.isclose(abs(wrap_degrees(ours - delta)), 0.0, abs_tol=1e-6) or abs(abs(ours) - 180) < 1e-6
    if min(abs(abs(delta) - 45.0), abs(delta)) > 1e-6 and abs(abs(delta) - 180) > 1e-6:
        expected = ("left" if delta < -45 else "slightly left" if delta < 0 else
                    "slightly right" if delta <= 45 else "right")
        assert relative_direction(src, dst) == expected


@given(st.floats(-1e4, 1e4))
@settings(max_examples=200, deadline=None)
def test_absolute_direction_is_nearest_centre(heading):
    word = absolute_direction(heading)
    distances = [abs(wrap_degrees(heading - 45 * i)) for i in range(8)]
    best = min(distances)
    assert distances[ABSOLUTE_DIRECTIONS.index(word)] <= best + 1e-9 or math.isclose(best, 22.5, abs_tol=1e-9)


@pytest.mark.parametrize("agent, target, relation", [
    (0, 0, "front"), (0, 90, "right"), (0, 180, "back"), (0, 270, "left"), (0, 45, "right front"),
    (0, 315, "left front"), (0, 135, "right back"), (0, 225, "left back"), (298, 285.7, "front"),
    (350, 80, "right"), (10, 280, "left"),
])
def test_spatial_relation_table(agent, target, relation):
    assert spatial_relation(agent, target) == relation


def test_non_finite_heading_is_refused():
    with pytest.raises(ValueError, match="finite"):
        absolute_direction(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        relative_direction(0, float("inf"))
