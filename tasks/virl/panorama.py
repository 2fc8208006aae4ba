"""Perspective views cut out of an equirectangular street-view panorama, for V-IRL-VL on real data.

Convention: the panorama spans 360 degrees of heading left to right and 180 degrees of elevation top to bottom;
`left_edge_heading_deg` is the compass heading of its left edge (0: the left edge looks north). Each view is a
pinhole image with a 90-degree horizontal field of view and pitch 0, sampled bilinearly (wrapping around in
heading). Arrays: panorama (H, W, 3) uint8; view (S, S, 3) uint8.
"""

from __future__ import annotations

import numpy as np


def perspective_view(panorama: np.ndarray, heading_deg: float, size: int, *, fov_deg: float = 90.0,
                     left_edge_heading_deg: float = 0.0) -> np.ndarray:
    """The (size, size, 3) view along compass `heading_deg` from an equirectangular panorama."""
    pano = np.asarray(panorama)
    if pano.ndim != 3 or pano.shape[2] < 3 or pano.shape[0] < 2 or pano.shape[1] < 2:
        raise ValueError(f"a panorama must be an (H, W, 3) image, got shape {pano.shape}.")
    pano = pano[:, :, :3].astype(np.float32)
    h, w = pano.shape[:2]
    focal = (size / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    coords = (np.arange(size, dtype=np.float64) + 0.5 - size / 2.0) / focal
    x, y = np.meshgrid(coords, -coords)  # x right, y up
    azimuth = heading_deg + np.degrees(np.arctan2(x, 1.0))
    elevation = np.degrees(np.arctan2(y, np.sqrt(1.0 + x * x)))
    col = ((azimuth - left_edge_heading_deg) % 360.0) / 360.0 * w - 0.5
    row = np.clip((90.0 - elevation) / 180.0 * h - 0.5, 0.0, h - 1.0)
    c0 = np.floor(col).astype(np.int64)
    r0 = np.floor(row).astype(np.int64)
    fc, fr = (col - c0)[..., None], (row - r0)[..., None]
    c0, c1 = c0 % w, (c0 + 1) % w
    r1 = np.minimum(r0 + 1, h - 1)
    top = pano[r0, c0] * (1 - fc) + pano[r0, c1] * fc
    bottom = pano[r1, c0] * (1 - fc) + pano[r1, c1] * fc
    return np.clip(np.rint(top * (1 - fr) + bottom * fr), 0, 255).astype(np.uint8)


def panorama_views(panorama: np.ndarray, heading_deg: float, size: int, *,
                   left_edge_heading_deg: float = 0.0) -> list[np.ndarray]:
    """The four views front, right, back, left around `heading_deg`."""
    return [perspective_view(panorama, heading_deg + offset, size, left_edge_heading_deg=left_edge_heading_deg)
            for offset in (0.0, 90.0, 180.0, 270.0)]
