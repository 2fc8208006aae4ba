"""Geometry helpers: a local east/north metre frame around an origin (equirectangular; exact enough for the
few-kilometre extent of a route), compass bearings, arc-length interpolation along polylines, and the Google
encoded-polyline format that the reference route files use for each step's geometry.

Arrays: `points` are (N, 2) float64, columns (x east, y north) in metres; geocodes are (lat, lng) degrees.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

EARTH_RADIUS_M = 6_371_000.0


def to_local(geocodes: Sequence[Sequence[float]] | np.ndarray, origin: Sequence[float]) -> np.ndarray:
    """(N, 2) geocodes (lat, lng) -> (N, 2) metres (x east, y north) relative to `origin` (lat, lng)."""
    g = np.asarray(geocodes, dtype=np.float64).reshape(-1, 2)
    lat0, lng0 = float(origin[0]), float(origin[1])
    x = np.radians(g[:, 1] - lng0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    y = np.radians(g[:, 0] - lat0) * EARTH_RADIUS_M
    return np.stack([x, y], axis=1)


def to_geocodes(points: np.ndarray, origin: Sequence[float]) -> np.ndarray:
    """(N, 2) local metres -> (N, 2) geocodes (lat, lng); the inverse of `to_local`."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lat0, lng0 = float(origin[0]), float(origin[1])
    lat = lat0 + np.degrees(p[:, 1] / EARTH_RADIUS_M)
    lng = lng0 + np.degrees(p[:, 0] / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return np.stack([lat, lng], axis=1)


def bearing(from_xy: Sequence[float], to_xy: Sequence[float]) -> float:
    """Compass bearing in degrees [0, 360) from one local point to another (0 = north, clockwise)."""
    dx, dy = float(to_xy[0]) - float(from_xy[0]), float(to_xy[1]) - float(from_xy[1])
    return math.degrees(math.atan2(dx, dy)) % 360.0


def polyline_length(points: np.ndarray) -> float:
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0


def point_along(points: np.ndarray, distance_m: float) -> np.ndarray:
    """The point at arc length `distance_m` along a polyline (clamped to its ends)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 1:
        return p[0].copy()
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    d = min(max(float(distance_m), 0.0), float(cum[-1]))
    i = int(np.clip(np.searchsorted(cum, d, side="right") - 1, 0, len(seg) - 1))
    t = 0.0 if seg[i] == 0 else (d - cum[i]) / seg[i]
    return p[i] + t * (p[i + 1] - p[i])


def encode_polyline(geocodes: Sequence[Sequence[float]]) -> str:
    """Google's encoded polyline (precision 1e-5 degrees) of a list of (lat, lng)."""
    out, prev = [], (0, 0)
    for lat, lng in geocodes:
        cur = (int(round(float(lat) * 1e5)), int(round(float(lng) * 1e5)))
        for delta in (cur[0] - prev[0], cur[1] - prev[1]):
            value = ~(delta << 1) if delta < 0 else delta << 1
            while value >= 0x20:
                out.append(chr((0x20 | (value & 0x1F)) + 63))
                value >>= 5
            out.append(chr(value + 63))
        prev = cur
    return "".join(out)


def decode_polyline(text: str) -> list[tuple[float, float]]:
    """The (lat, lng) list of a Google encoded polyline; ValueError on a malformed string."""
    coords, index, lat, lng = [], 0, 0, 0
    while index < len(text):
        deltas = []
        for _ in range(2):
            shift, result = 0, 0
            while True:
                if index >= len(text):
                    raise ValueError(f"the encoded polyline {text[:40]!r} is truncated.")
                byte = ord(text[index]) - 63
                index += 1
                if byte < 0 or byte > 0x3F + 0x20:
                    raise ValueError(f"the encoded polyline {text[:40]!r} has an invalid character.")
                result |= (byte & 0x1F) << shift
                shift += 5
                if byte < 0x20:
                    break
            deltas.append(~(result >> 1) if result & 1 else result >> 1)
        lat += deltas[0]
        lng += deltas[1]
        coords.append((lat / 1e5, lng / 1e5))
    return coords
