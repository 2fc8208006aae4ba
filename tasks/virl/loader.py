"""Loader for the released V-IRL route data (and a writer of the same layout, e.g. for synthetic routes).

Layout of a data folder (the reference release's names; each can be overridden):
    route_infos.json        a JSON list of routes (see route.py), or an object whose values are routes
    gps_pano_mapping.pkl    {(lat, lng): panorama id}; a JSON mapping (gps_pano_mapping.json) is accepted too
    street_views/           one equirectangular image per panorama id: <id>.jpg, .jpeg or .png

Pickles are read with an unpickler that refuses every class and function reference, so only plain containers,
strings and numbers load; anything else stops with a clear error instead of running code. Every missing or
malformed piece stops with one sentence naming it.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from tasks.virl.config import VirlConfig
from tasks.virl.geo import to_local
from tasks.virl.panorama import panorama_views
from tasks.virl.render import compose_grid
from tasks.virl.route import Route, RouteFormatError, route_from_dict, route_to_dict

ROUTES_FILE = "route_infos.json"
MAPPING_FILES = ("gps_pano_mapping.pkl", "gps_pano_mapping.json")
STREET_VIEWS_DIR = "street_views"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class _PlainUnpickler(pickle.Unpickler):
    """Loads only what needs no import: dicts, lists, tuples, sets, strings, bytes, numbers, booleans, None."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the pickle refers to {module}.{name}, and only plain containers, "
                                     "strings and numbers are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("the pickle uses persistent ids, which are not allowed")


def load_plain_pickle(path: str | Path) -> Any:
    """The content of a pickle of plain data; ValueError for any class or function reference in it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"cannot read the pickle {path} ({error.strerror}).") from None
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise ValueError(f"refused to load {path}: {error}; save the mapping as a plain dict of "
                         "(lat, lng) tuples to id strings, or as JSON.") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable pickle ({type(error).__name__}: {error}).") from None


def load_routes(path: str | Path) -> tuple[Route, ...]:
    """The routes of a reference route file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the route file {path} does not exist; point to the route_infos.json of the data.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RouteFormatError(f"the route file {path} is not valid JSON ({error}).") from None
    entries = list(data.values()) if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not entries:
        raise RouteFormatError(f"the route file {path} must hold a non-empty list of routes.")
    return tuple(route_from_dict(entry, f"{path.name} route {i}") for i, entry in enumerate(entries))


def _mapping_key(key: Any, path: Path) -> tuple[float, float]:
    if isinstance(key, str):
        key = key.strip("()[] ").split(",")
    try:
        lat, lng = (float(v) for v in key)
    except (TypeError, ValueError):
        raise ValueError(f"{path} has the key {key!r}, which is not a (lat, lng) pair.") from None
    return (lat, lng)


def load_gps_to_pano(path: str | Path) -> dict[tuple[float, float], str]:
    """{(lat, lng): panorama id} from a plain pickle (dict) or JSON (object "lat,lng" -> id, or a list of
    [[lat, lng], id] pairs / {"geocode": [lat, lng], "pano_id": id} objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the GPS-to-panorama mapping {path} does not exist.")
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"the mapping {path} is not valid JSON ({error}).") from None
    else:
        raw = load_plain_pickle(path)
    if isinstance(raw, list):
        pairs = []
        for item in raw:
            if isinstance(item, Mapping) and "geocode" in item and "pano_id" in item:
                pairs.append((item["geocode"], item["pano_id"]))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise ValueError(f"the mapping {path} has an entry {item!r:.80} that is neither [[lat, lng], id] "
                                 'nor {"geocode": ..., "pano_id": ...}.')
    elif isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        raise ValueError(f"the mapping {path} must be a dict of (lat, lng) -> panorama id.")
    mapping = {_mapping_key(k, path): str(v) for k, v in pairs}
    if not mapping:
        raise ValueError(f"the mapping {path} is empty.")
    return mapping


class PanoramaIndex:
    """Nearest panorama (within `radius_m`) of a geocode, and its image file under `street_view_dir`.
    `load_dataset` passes `VirlConfig.mapping_radius_m` as the radius (the default is that field's default)."""

    def __init__(self, mapping: Mapping[tuple[float, float], str], street_view_dir: str | Path,
                 radius_m: float = VirlConfig.mapping_radius_m):
        self.street_view_dir = Path(street_view_dir)
        if not self.street_view_dir.is_dir():
            raise FileNotFoundError(f"the street-view folder {self.street_view_dir} does not exist.")
        self.geocodes = np.asarray(list(mapping.keys()), dtype=np.float64).reshape(-1, 2)
        self.ids = list(mapping.values())
        self.radius_m = float(radius_m)

    def nearest(self, geocode) -> tuple[str, float]:
        """(panorama id, distance in metres) of the nearest panorama; LookupError beyond the radius."""
        d = np.linalg.norm(to_local(self.geocodes, geocode), axis=1)
        i = int(np.argmin(d))
        if d[i] > self.radius_m:
            raise LookupError(f"no panorama lies within {self.radius_m:g} m of ({geocode[0]:.6f}, "
                              f"{geocode[1]:.6f}) (nearest {d[i]:.1f} m); the mapping does not cover this route, "
                              "or raise VirlConfig.mapping_radius_m (the config given to "
                              "load_dataset).")
        return self.ids[i], float(d[i])

    def image_path(self, pano_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.street_view_dir / f"{pano_id}{suffix}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"the panorama image {pano_id} ({'/'.join(IMAGE_SUFFIXES)}) is missing from "
                                f"{self.street_view_dir}.")

    def image(self, pano_id: str) -> np.ndarray:
        return _read_image(str(self.image_path(pano_id)))


@lru_cache(maxsize=64)
def _read_image(path: str) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    array.setflags(write=False)
    return array


class PanoramaViews:
    """The view grid of V-IRL-VL from real panoramas: `grid(geocode, heading) -> (2S + P, 2S + P, 3)`."""

    def __init__(self, index: PanoramaIndex, view_size: int = 192, separator_px: int = 5,
                 left_edge_heading_deg: float = 0.0):
        self.index, self.view_size, self.separator_px = index, view_size, separator_px
        self.left_edge_heading_deg = left_edge_heading_deg

    def grid(self, geocode, heading_deg: float) -> np.ndarray:
        pano_id, _ = self.index.nearest(geocode)
        views = panorama_views(self.index.image(pano_id), heading_deg, self.view_size,
                               left_edge_heading_deg=self.left_edge_heading_deg)
        return compose_grid(views, self.separator_px)


@dataclass(frozen=True)
class RealDataset:
    routes: tuple[Route, ...]
    panoramas: PanoramaIndex


def load_dataset(root: str | Path, config: VirlConfig | None = None, *, routes_file: str = ROUTES_FILE,
                 mapping_file: str | None = None, street_views: str = STREET_VIEWS_DIR) -> RealDataset:
    """Routes and panoramas of a data folder in the reference layout. The panorama search radius is
    `config.mapping_radius_m` (default `VirlConfig()`): the config is its one source."""
    radius_m = (config if config is not None else VirlConfig()).mapping_radius_m
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"the V-IRL data folder {root} does not exist.")
    routes = load_routes(root / routes_file)
    if mapping_file is None:
        found = [root / name for name in MAPPING_FILES if (root / name).is_file()]
        if not found:
            raise FileNotFoundError(f"the V-IRL data folder {root} has no GPS-to-panorama mapping "
                                    f"({' or '.join(MAPPING_FILES)}).")
        mapping_path = found[0]
    else:
        mapping_path = root / mapping_file
    mapping = load_gps_to_pano(mapping_path)
    views_dir = root / street_views
    if not views_dir.is_dir():
        raise FileNotFoundError(f"the V-IRL data folder {root} has no {street_views}/ folder of panoramas.")
    return RealDataset(routes, PanoramaIndex(mapping, views_dir, radius_m))


def write_dataset(root: str | Path, routes, mapping: Mapping[tuple[float, float], str] | None = None,
                  panoramas: Mapping[str, np.ndarray] | None = None, *, mapping_format: str = "pkl") -> Path:
    """Write routes (and optionally a mapping and panorama images) in the reference layout; returns `root`."""
    root = Path(root)
    (root / STREET_VIEWS_DIR).mkdir(parents=True, exist_ok=True)
    (root / ROUTES_FILE).write_text(json.dumps([route_to_dict(r) for r in routes], indent=2), encoding="utf-8")
    if mapping is not None:
        plain = {(float(k[0]), float(k[1])): str(v) for k, v in mapping.items()}
        if mapping_format == "pkl":
            (root / MAPPING_FILES[0]).write_bytes(pickle.dumps(plain, protocol=4))
        elif mapping_format == "json":
            (root / MAPPING_FILES[1]).write_text(json.dumps([[list(k), v] for k, v in plain.items()]))
        else:
            raise ValueError(f"mapping_format must be 'pkl' or 'json', got {mapping_format!r}.")
    for pano_id, image in (panoramas or {}).items():
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(root / STREET_VIEWS_DIR / f"{pano_id}.png")
    return root
