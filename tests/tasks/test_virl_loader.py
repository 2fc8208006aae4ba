"""The released-data loader: routes, GPS-to-panorama mapping and street views written in the reference layout
load back unchanged; each missing piece stops with its own error; pickles with class or function references
are refused; panorama lookup respects the radius; views cut from a panorama face the asked heading."""

import collections
import json
import os
import pickle

import numpy as np
import pytest

from tasks.virl.city import generate_city, generate_routes
from tasks.virl.config import VirlConfig
from tasks.virl.episode import oracle_response, reset, step
from tasks.virl.loader import (PanoramaIndex, PanoramaViews, load_dataset, load_gps_to_pano, load_plain_pickle,
                               load_routes, write_dataset)
from tasks.virl.panorama import perspective_view
from tasks.virl.route import RouteFormatError


@pytest.fixture(scope="module")
def routes():
    return generate_routes(generate_city(11, nx=5, ny=5), 3, seed=0)


def _heading_panorama(width=360, height=180):
    """Red channel = column // 2 (column = heading in degrees when the left edge looks north), green = row."""
    cols = np.arange(width)[None, :].repeat(height, 0)
    rows = np.arange(height)[:, None].repeat(width, 1)
    return np.stack([cols // 2, rows, np.full_like(cols, 50)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["pkl", "json"])
def test_round_trip_in_reference_layout(tmp_path, routes, fmt):
    mapping = {g: f"pano{i}" for i, g in enumerate(g for r in routes for g in r.geocodes)}
    panos = {pid: _heading_panorama(72, 36) for pid in mapping.values()}
    write_dataset(tmp_path, routes, mapping, panos, mapping_format=fmt)
    assert (tmp_path / "route_infos.json").is_file() and (tmp_path / "street_views").is_dir()
    data = load_dataset(tmp_path)
    assert data.routes == routes
    assert load_routes(tmp_path / "route_infos.json") == routes
    pano_id, dist = data.panoramas.nearest(routes[0].geocodes[0])
    assert pano_id == mapping[routes[0].geocodes[0]] and dist < 1e-6
    assert data.panoramas.image(pano_id).shape == (36, 72, 3)


def test_missing_pieces_have_their_own_errors(tmp_path, routes):
    with pytest.raises(FileNotFoundError, match="data folder"):
        load_dataset(tmp_path / "nowhere")
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="route file"):
        load_dataset(tmp_path)
    write_dataset(tmp_path, routes)  # no mapping
    with pytest.raises(FileNotFoundError, match="GPS-to-panorama mapping"):
        load_dataset(tmp_path)
    write_dataset(tmp_path, routes, {routes[0].geocodes[0]: "p"})
    os.rmdir(tmp_path / "street_views")
    with pytest.raises(FileNotFoundError, match="street_views"):
        load_dataset(tmp_path)
    (tmp_path / "street_views").mkdir()
    data = load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="panorama image p"):
        data.panoramas.image("p")
    (tmp_path / "route_infos.json").write_text("[{\"start_place\": {}}]")
    with pytest.raises(RouteFormatError, match="route 0 is missing the key 'route_results'"):
        load_dataset(tmp_path)
    (tmp_path / "route_infos.json").write_text("not json")
    with pytest.raises(RouteFormatError, match="not valid JSON"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("payload", [
    {(40.7, -73.9): os.system},  # a function reference
    collections.OrderedDict({(40.7, -73.9): "p"}),  # a class reference
    {(40.7, -73.9): np.float64(1.0)},  # numpy scalars need an import too
])
def test_pickles_with_references_are_refused(tmp_path, payload):
    path = tmp_path / "gps_pano_mapping.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="refused to load .*only plain containers"):
        load_gps_to_pano(path)


def test_refusal_happens_before_any_code_runs(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="posix.makedirs|os.makedirs|nt.makedirs"):
        load_plain_pickle(path)
    assert not (tmp_path / "pwned").exists()


def test_plain_mapping_forms(tmp_path):
    plain = tmp_path / "m.pkl"
    plain.write_bytes(pickle.dumps({(1.0, 2.0): "a", "3.0,4.0": "b"}))
    assert load_gps_to_pano(plain) == {(1.0, 2.0): "a", (3.0, 4.0): "b"}
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps([{"geocode": [1, 2], "pano_id": "a"}, [[3, 4], "b"]]))
    assert load_gps_to_pano(as_json) == {(1.0, 2.0): "a", (3.0, 4.0): "b"}
    as_json.write_text(json.dumps({"1.0,2.0": "a"}))
    assert load_gps_to_pano(as_json) == {(1.0, 2.0): "a"}
    as_json.write_text(json.dumps([[1, 2, 3]]))
    with pytest.raises(ValueError, match="neither"):
        load_gps_to_pano(as_json)


def test_nearest_panorama_respects_radius(tmp_path):
    (tmp_path / "sv").mkdir()
    index = PanoramaIndex({(40.0, -73.0): "a", (40.001, -73.0): "b"}, tmp_path / "sv", radius_m=20.0)
    assert index.nearest((40.0001, -73.0))[0] == "a"  # 11 m from a
    assert index.nearest((40.0009, -73.0))[0] == "b"
    with pytest.raises(LookupError, match="within 20 m"):
        index.nearest((40.0005, -73.0))  # 55 m from both


def test_mapping_radius_comes_from_the_config(tmp_path, routes):
    """VirlConfig.mapping_radius_m (what the LookupError tells users to raise) is the radius load_dataset uses."""
    point = routes[0].geocodes[0]
    offset = (point[0] + 0.0003, point[1])  # a panorama about 33 m north of the point
    write_dataset(tmp_path, routes, {offset: "far"}, {"far": _heading_panorama(72, 36)})
    assert load_dataset(tmp_path).panoramas.radius_m == VirlConfig().mapping_radius_m == 20.0
    with pytest.raises(LookupError, match="within 20 m .*VirlConfig.mapping_radius_m"):
        load_dataset(tmp_path, VirlConfig()).panoramas.nearest(point)
    wide = load_dataset(tmp_path, VirlConfig(mapping_radius_m=40.0)).panoramas
    assert wide.radius_m == 40.0
    pano_id, dist = wide.nearest(point)
    assert pano_id == "far" and 30.0 < dist < 40.0
    with pytest.raises(LookupError, match="within 30 m"):
        load_dataset(tmp_path, VirlConfig(mapping_radius_m=30.0)).panoramas.nearest(point)


@pytest.mark.parametrize("heading, left_edge, expected_column", [(90, 0, 90), (200, 0, 200), (135, 90, 45),
                                                                  (10, 300, 70)])
def test_perspective_view_faces_the_heading(heading, left_edge, expected_column):
    view = perspective_view(_heading_panorama(), heading, 33, left_edge_heading_deg=left_edge)
    centre = view[16, 16].astype(int)
    assert abs(centre[0] - expected_column / 2) <= 1.0
    assert abs(centre[1] - 90) <= 1.0  # pitch 0: the horizon row
    assert view[16, 0, 0] < centre[0] < view[16, 32, 0]  # heading grows to the right


def test_episode_runs_on_loaded_panoramas(tmp_path, routes):
    route = routes[0]
    config = VirlConfig(modality="vision", view_size=32, forward_points=1, drop_probability=0.0)
    probe = reset(route, VirlConfig(forward_points=1, drop_probability=0.0))
    mapping = {p.geocode: f"p{p.index}" for p in probe.rail}
    write_dataset(tmp_path, [route], mapping, {v: _heading_panorama(64, 32) for v in mapping.values()})
    data = load_dataset(tmp_path, config)
    state = reset(data.routes[0], config, views=PanoramaViews(data.panoramas, 32, 5))
    assert state.conversation[0].image.shape == (69, 69, 3)
    while not state.done:
        state, _ = step(state, oracle_response(state))
    assert state.verdicts[-1].success
