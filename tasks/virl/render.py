"""Deterministic PIL drawings of a synthetic city: four 90-degree pinhole views around the agent (front, right,
back, left) composed into a 2x2 grid with separators, and a top-down map.

Each view: sky and ground split at the horizon (pitch 0, eye 1.7 m), the streets as ground quads (a crossing
street shows where the agent stands at an intersection), dashed centre lines, building facades in the city's
style with windows, and a sign with the name of every landmark and place within the sign radius, drawn last so
it is never hidden. Grid layout (row-major): [front, right; back, left].

Arrays: a view is (S, S, 3) uint8; the grid is (2S + P, 2S + P, 3) uint8 with P the separator width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tasks.virl.city import City
from tasks.virl.geo import to_local

VIEW_NAMES = ("front", "right", "back", "left")
VIEW_OFFSETS_DEG = (0.0, 90.0, 180.0, 270.0)
EYE_HEIGHT_M = 1.7
NEAR_M = 0.5
FAR_M = 320.0
DETAIL_PX = 2.0  # windows and lane dashes are drawn only where they would be at least this many pixels tall
SIGN_HEIGHT_M = 3.2
SEPARATOR_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class SignPlacement:
    """Where a sign was drawn: the view, the name on it, and its box (left, top, right, bottom) in pixels."""

    view: str
    name: str
    box: tuple[int, int, int, int]


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8)
def _city_arrays(city: City) -> dict[str, np.ndarray]:
    b = city.buildings
    return {
        "a": np.asarray([x.a for x in b], dtype=np.float64).reshape(-1, 2),
        "b": np.asarray([x.b for x in b], dtype=np.float64).reshape(-1, 2),
        "h": np.asarray([x.height_m for x in b], dtype=np.float64),
        "ea": city.nodes[city.edges[:, 0]],
        "eb": city.nodes[city.edges[:, 1]],
        "signs_xy": np.asarray([s.xy for s in city.landmarks] + [p.xy for p in city.places],
                               dtype=np.float64).reshape(-1, 2),
    }


def _sign_names(city: City) -> list[str]:
    return [s.name for s in city.landmarks] + [p.name for p in city.places]


class _Camera:
    """Pinhole camera at `xy`, looking along compass `heading_deg`, 90-degree horizontal field of view."""

    def __init__(self, xy: np.ndarray, heading_deg: float, size: int):
        t = math.radians(heading_deg)
        self.xy = (float(xy[0]), float(xy[1]))
        self.forward = (math.sin(t), math.cos(t))
        self.right = (math.cos(t), -math.sin(t))
        self.size = size
        self.focal = size / 2.0  # tan(45 deg) = 1

    def lateral_depth(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = np.asarray(pts, dtype=np.float64) - np.asarray(self.xy)
        return rel @ np.asarray(self.right), rel @ np.asarray(self.forward)

    def visible_segment(self, l: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Mask of segments (endpoint arrays of shape (2, M)) that can intersect the view frustum."""
        behind = (d[0] < NEAR_M) & (d[1] < NEAR_M)
        right = (l[0] > d[0]) & (l[1] > d[1])
        left = (l[0] < -d[0]) & (l[1] < -d[1])
        far = (d[0] > FAR_M) & (d[1] > FAR_M)
        return ~(behind | right | left | far)

    def project(self, poly_world) -> list[tuple[float, float]] | None:
        """Clip a planar polygon [(x, y, z), ...] against the near plane and project it; None when nothing is
        left. Plain Python floats: the polygons are small and many, numpy's per-call overhead would dominate."""
        (fx, fy), (rx, ry), (cx, cy) = self.forward, self.right, self.xy
        cam = []
        for x, y, z in poly_world:
            dx, dy = x - cx, y - cy
            cam.append((dx * rx + dy * ry, dx * fx + dy * fy, z - EYE_HEIGHT_M))
        if min(c[1] for c in cam) < NEAR_M:
            clipped = []
            for i, cur in enumerate(cam):
                prev = cam[i - 1]
                cur_in, prev_in = cur[1] >= NEAR_M, prev[1] >= NEAR_M
                if cur_in != prev_in:
                    t = (NEAR_M - prev[1]) / (cur[1] - prev[1])
                    clipped.append(tuple(p + t * (c - p) for p, c in zip(prev, cur)))
                if cur_in:
                    clipped.append(cur)
            if len(clipped) < 3:
                return None
            cam = clipped
        half, f = self.size / 2.0, self.focal
        limit = 50.0 * self.size  # keep PIL's integer rasteriser in range; far-off vertices only
        return [(min(max(half + f * x / d, -limit), limit), min(max(half - f * h / d, -limit), limit))
                for x, d, h in cam]


def _shade(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in color)


def render_view(city: City, xy, heading_deg: float, size: int, sign_radius_m: float,
                view_name: str = "front") -> tuple[np.ndarray, tuple[SignPlacement, ...]]:
    """One (size, size, 3) view from local point `xy` along `heading_deg`, and the signs drawn in it."""
    style, arrays = city.style, _city_arrays(city)
    cam = _Camera(xy, heading_deg, size)
    horizon = size // 2
    sky = np.linspace(np.asarray(style.sky_top, float), np.asarray(style.sky_bottom, float), horizon)
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[:horizon] = sky[:, None, :].astype(np.uint8)
    pixels[horizon:] = np.asarray(style.ground, dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)

    # Streets, extended by half a width at both ends so that crossings join up.
    half = style.road_width_m / 2.0
    ea, eb = arrays["ea"], arrays["eb"]
    u = eb - ea
    length = np.linalg.norm(u, axis=1)
    u = u / length[:, None]
    n = np.stack([u[:, 1], -u[:, 0]], axis=1)
    a_ext, b_ext = ea - u * half, eb + u * half
    la, da = cam.lateral_depth(a_ext)
    lb, db = cam.lateral_depth(b_ext)
    keep = cam.visible_segment(np.stack([la, lb]), np.stack([da, db])) | (
        np.minimum(np.hypot(la, da), np.hypot(lb, db)) < style.road_width_m)
    for k in np.flatnonzero(keep):
        quad = [(*(a_ext[k] + n[k] * half).tolist(), 0.0), (*(b_ext[k] + n[k] * half).tolist(), 0.0),
                (*(b_ext[k] - n[k] * half).tolist(), 0.0), (*(a_ext[k] - n[k] * half).tolist(), 0.0)]
        poly = cam.project(quad)
        if poly:
            draw.polygon(poly, fill=style.road)
    for k in np.flatnonzero(keep):
        mid_a, mid_b = cam.lateral_depth(np.stack([ea[k], eb[k]]))[1]
        if min(mid_a, mid_b) > cam.focal * EYE_HEIGHT_M / DETAIL_PX:
            continue
        for s in np.arange(half + 1.0, length[k] - half - 1.0, 8.0):
            p, q = ea[k] + u[k] * s, ea[k] + u[k] * min(s + 3.0, length[k])
            w = n[k] * 0.15
            poly = cam.project([(*(p + w).tolist(), 0.01), (*(q + w).tolist(), 0.01), (*(q - w).tolist(), 0.01),
                                (*(p - w).tolist(), 0.01)])
            if poly:
                draw.polygon(poly, fill=style.lane)

    # Facades, far to near.
    ba, bb, bh = arrays["a"], arrays["b"], arrays["h"]
    la, da = cam.lateral_depth(ba)
    lb, db = cam.lateral_depth(bb)
    keep = np.flatnonzero(cam.visible_segment(np.stack([la, lb]), np.stack([da, db])))
    mid_dist = np.hypot((la + lb) / 2.0, (da + db) / 2.0)
    for k in keep[np.argsort(-mid_dist[keep], kind="stable")]:
        building = city.buildings[k]
        a, b, h = ba[k], bb[k], float(bh[k])
        (ax, ay), (bx, by) = building.a, building.b
        poly = cam.project([(ax, ay, 0.0), (bx, by, 0.0), (bx, by, h), (ax, ay, h)])
        if not poly:
            continue
        draw.polygon(poly, fill=building.color, outline=_shade(building.color, 0.6))
        if min(da[k], db[k]) > cam.focal * 1.6 / DETAIL_PX:  # a window is 1.6 m tall
            continue
        width = float(np.linalg.norm(b - a))
        along = (b - a) / width
        for z in np.arange(2.5, h - 1.5, 10.0 / style.window_rows_per_10m).tolist():
            for s in np.arange(1.0, width - 1.5, 3.0).tolist():
                (px_, py_), (qx, qy) = (a + along * s).tolist(), (a + along * (s + 1.4)).tolist()
                win = cam.project([(px_, py_, z), (qx, qy, z), (qx, qy, z + 1.6), (px_, py_, z + 1.6)])
                if win:
                    draw.polygon(win, fill=style.window)

    # Signs of landmarks and places within the radius, far to near, on top of everything.
    placements = []
    sxy = arrays["signs_xy"]
    ls, ds = cam.lateral_depth(sxy)
    dist = np.hypot(ls, ds)
    names = _sign_names(city)
    candidates = np.flatnonzero((dist <= sign_radius_m) & (ds > NEAR_M))
    for k in candidates[np.argsort(-dist[candidates], kind="stable")]:
        ux = size / 2.0 + cam.focal * ls[k] / ds[k]
        vy = size / 2.0 - cam.focal * (SIGN_HEIGHT_M - EYE_HEIGHT_M) / ds[k]
        ground_v = size / 2.0 + cam.focal * EYE_HEIGHT_M / ds[k]
        font_size = int(np.clip(round(cam.focal * 1.1 / ds[k]), 9, max(9, size // 10)))
        font = _font(font_size)
        words = names[k].split()
        lines = [" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2:])] \
            if len(names[k]) > 12 and len(words) > 1 else [names[k]]
        text = "\n".join(lines)
        left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=1, align="center")
        w, h = right - left + 6, bottom - top + 6
        box = (int(round(ux - w / 2)), int(round(vy - h / 2)), int(round(ux + w / 2)), int(round(vy + h / 2)))
        if box[2] < 0 or box[0] >= size or box[3] < 0 or box[1] >= size:
            continue
        draw.line([(ux, box[3]), (ux, min(ground_v, size * 4.0))], fill=_shade(style.sign_board, 0.5), width=2)
        draw.rectangle(box, fill=style.sign_board, outline=style.sign_text)
        draw.multiline_text((box[0] + 3 - left, box[1] + 3 - top), text, fill=style.sign_text, font=font,
                            spacing=1, align="center")
        placements.append(SignPlacement(view_name, names[k], box))
    return np.asarray(image, dtype=np.uint8), tuple(placements)


def compose_grid(views: list[np.ndarray] | tuple[np.ndarray, ...], separator_px: int = 5,
                 separator_color: tuple[int, int, int] = SEPARATOR_COLOR) -> np.ndarray:
    """Four equal (S, S, 3) views in [front, right; back, left] order -> (2S + P, 2S + P, 3)."""
    if len(views) != 4 or any(v.shape != views[0].shape for v in views):
        raise ValueError("compose_grid needs four views of one shape, in the order front, right, back, left.")
    s = views[0].shape[0]
    grid = np.empty((2 * s + separator_px, 2 * s + separator_px, 3), dtype=np.uint8)
    grid[:] = np.asarray(separator_color, dtype=np.uint8)
    for i, view in enumerate(views):
        r, c = divmod(i, 2)
        grid[r * (s + separator_px): r * (s + separator_px) + s, c * (s + separator_px): c * (s + separator_px) + s] = view
    return grid


def render_views(city: City, xy, heading_deg: float, size: int, sign_radius_m: float
                 ) -> tuple[list[np.ndarray], tuple[SignPlacement, ...]]:
    """The four views (front, right, back, left) and all the signs drawn in them."""
    views, signs = [], []
    for name, offset in zip(VIEW_NAMES, VIEW_OFFSETS_DEG):
        view, placed = render_view(city, xy, (heading_deg + offset) % 360.0, size, sign_radius_m, name)
        views.append(view)
        signs.extend(placed)
    return views, tuple(signs)


class CityViews:
    """The view grid of V-IRL-VL for a synthetic city: `grid(geocode, heading) -> (2S + P, 2S + P, 3)`."""

    def __init__(self, city: City, view_size: int = 192, separator_px: int = 5, sign_radius_m: float = 20.0):
        self.city, self.view_size, self.separator_px, self.sign_radius_m = city, view_size, separator_px, sign_radius_m

    def grid(self, geocode, heading_deg: float) -> np.ndarray:
        xy = to_local([geocode], self.city.origin)[0]
        views, _ = render_views(self.city, xy, heading_deg, self.view_size, self.sign_radius_m)
        return compose_grid(views, self.separator_px)


def draw_map(city: City, route=None, size: int = 640, rail=None) -> np.ndarray:
    """A top-down map (size, size, 3): streets, landmarks (dots), places (squares); with a route, its path
    (red), start (green), destination (blue), milestone landmarks named; with a rail, its decision points."""
    pts = city.nodes
    lo, hi = pts.min(axis=0) - 40.0, pts.max(axis=0) + 40.0
    scale = (size - 1) / float(max(hi - lo))

    def px(xy) -> tuple[float, float]:
        x, y = (np.asarray(xy, dtype=np.float64) - lo) * scale
        return (float(x), float(size - 1 - y))

    image = Image.new("RGB", (size, size), _shade(city.style.ground, 1.2))
    draw = ImageDraw.Draw(image)
    road_px = max(2, int(city.style.road_width_m * scale))
    for (i, j) in city.edges:
        draw.line([px(pts[i]), px(pts[j])], fill=city.style.road, width=road_px)
    for lm in city.landmarks:
        x, y = px(lm.xy)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(200, 120, 0))
    for p in city.places:
        x, y = px(p.xy)
        draw.rectangle([x - 2, y - 2, x + 2, y + 2], fill=(120, 0, 160))
    font = _font(10)
    if route is not None:
        from tasks.virl.oracle import leg_points  # local: avoid a cycle at import time

        origin = route.start.street_point
        for leg in leg_points(route, origin):
            geo_leg = [city_xy for city_xy in to_local(_geocodes_of(leg, origin), city.origin)]
            draw.line([px(p) for p in geo_leg], fill=(220, 30, 30), width=3)
        for place, color in ((route.start, (0, 170, 0)), (route.dest, (30, 60, 230))):
            x, y = px(to_local([place.street_point], city.origin)[0])
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
        for lm in route.landmarks:
            x, y = px(to_local([lm.geocode], city.origin)[0])
            draw.text((x + 4, y - 6), lm.name, fill=(0, 0, 0), font=font)
    if rail is not None:
        for point in rail:
            x, y = px(to_local([point.geocode], city.origin)[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 0, 0))
    return np.asarray(image, dtype=np.uint8)


def _geocodes_of(local_points: np.ndarray, origin) -> np.ndarray:
    from tasks.virl.geo import to_geocodes

    return to_geocodes(local_points, origin)
