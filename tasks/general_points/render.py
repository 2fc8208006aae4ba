"""Drawing a GeneralPoints hand as an RGB image with PIL alone: white cards on a green table, the rank in two
corners (a built-in 5x7 pixel font, so no font file is needed), suit symbols drawn as polygons and circles,
red ink for hearts and diamonds and black ink for spades and clubs. Number cards show the usual pip layout, face
cards a framed letter.

Each card is drawn at SUPERSAMPLE times its size and reduced with a box filter (anti-aliasing without any font
rasteriser), then cached per (card, size), so the image depends only on (hand, width, height, seed) and the Pillow
drawing primitives, and a new hand costs a few pastes.
`seed=None` gives the canonical layout; an integer seed shifts and tilts each card slightly (a reproducible
visual variation). Output: (H, W, 3) uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from tasks.general_points.config import Card

TABLE_GREEN = (0x35, 0x65, 0x4D)
CARD_WHITE = (250, 250, 247)
CARD_EDGE = (120, 120, 120)
RED_INK = (200, 25, 30)
BLACK_INK = (20, 20, 20)
SUPERSAMPLE = 2
CARD_ASPECT = 2.5 / 3.5  # width / height of a poker card

# 5x7 glyphs, '#' = ink. '10' is drawn as '1' and '0' side by side.
_GLYPHS = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}

# Pip centres of number cards as fractions of the pip area (x, y); A is one large pip.
_PIPS = {
    2: ((0.5, 0.0), (0.5, 1.0)),
    3: ((0.5, 0.0), (0.5, 0.5), (0.5, 1.0)),
    4: ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)),
    5: ((0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (1.0, 1.0)),
    6: ((0.0, 0.0), (1.0, 0.0), (0.0, 0.5), (1.0, 0.5), (0.0, 1.0), (1.0, 1.0)),
    7: ((0.0, 0.0), (1.0, 0.0), (0.5, 0.25), (0.0, 0.5), (1.0, 0.5), (0.0, 1.0), (1.0, 1.0)),
    8: ((0.0, 0.0), (1.0, 0.0), (0.5, 0.25), (0.0, 0.5), (1.0, 0.5), (0.5, 0.75), (0.0, 1.0), (1.0, 1.0)),
    9: ((0.0, 0.0), (1.0, 0.0), (0.0, 1 / 3), (1.0, 1 / 3), (0.5, 0.5), (0.0, 2 / 3), (1.0, 2 / 3), (0.0, 1.0),
        (1.0, 1.0)),
    10: ((0.0, 0.0), (1.0, 0.0), (0.5, 1 / 6), (0.0, 1 / 3), (1.0, 1 / 3), (0.0, 2 / 3), (1.0, 2 / 3),
         (0.5, 5 / 6), (0.0, 1.0), (1.0, 1.0)),
}


def _draw_text(draw: ImageDraw.ImageDraw, text: str, x: float, y: float, pixel: float, ink) -> None:
    """Draw `text` with the pixel font, top-left at (x, y), each font pixel `pixel` wide."""
    for char in text:
        for row, line in enumerate(_GLYPHS[char]):
            for col, cell in enumerate(line):
                if cell == "#":
                    x0, y0 = x + col * pixel, y + row * pixel
                    # A font pixel narrower than one image pixel still covers one (tiny card sizes).
                    extent = max(pixel - 1, 0)
                    draw.rectangle((x0, y0, x0 + extent, y0 + extent), fill=ink)
        x += 6 * pixel


def _text_width(text: str, pixel: float) -> float:
    return (6 * len(text) - 1) * pixel


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, cx: float, cy: float, size: float, ink) -> None:
    """A suit symbol of height `size` centred on (cx, cy)."""
    s = size

    def circle(x: float, y: float, r: float) -> None:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)

    if suit == "D":
        draw.polygon([(cx, cy - s / 2), (cx + 0.38 * s, cy), (cx, cy + s / 2), (cx - 0.38 * s, cy)], fill=ink)
    elif suit == "H":
        circle(cx - 0.22 * s, cy - 0.2 * s, 0.25 * s)
        circle(cx + 0.22 * s, cy - 0.2 * s, 0.25 * s)
        draw.polygon([(cx - 0.46 * s, cy - 0.12 * s), (cx + 0.46 * s, cy - 0.12 * s), (cx, cy + 0.5 * s)],
                     fill=ink)
    elif suit == "S":
        circle(cx - 0.22 * s, cy + 0.08 * s, 0.24 * s)
        circle(cx + 0.22 * s, cy + 0.08 * s, 0.24 * s)
        draw.polygon([(cx - 0.45 * s, cy + 0.02 * s), (cx + 0.45 * s, cy + 0.02 * s), (cx, cy - 0.5 * s)],
                     fill=ink)
        draw.polygon([(cx, cy + 0.1 * s), (cx - 0.17 * s, cy + 0.5 * s), (cx + 0.17 * s, cy + 0.5 * s)], fill=ink)
    else:  # clubs
        circle(cx, cy - 0.24 * s, 0.2 * s)
        circle(cx - 0.23 * s, cy + 0.08 * s, 0.2 * s)
        circle(cx + 0.23 * s, cy + 0.08 * s, 0.2 * s)
        circle(cx, cy, 0.12 * s)
        draw.polygon([(cx, cy), (cx - 0.17 * s, cy + 0.5 * s), (cx + 0.17 * s, cy + 0.5 * s)], fill=ink)


def _draw_card(card: Card, width: int, height: int) -> Image.Image:
    """One card as an RGBA image (transparent outside the rounded rectangle)."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    radius = 0.06 * width
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=radius, fill=CARD_WHITE + (255,),
                           outline=CARD_EDGE + (255,), width=max(1, round(0.008 * width)))
    ink = RED_INK if card.is_red else BLACK_INK
    label = card.label

    # Corner index: the rank and a small suit below it, top-left and (rotated) bottom-right.
    pixel = 0.018 * width
    margin = 0.05 * width
    corner = Image.new("RGBA", (round(0.2 * width), round(0.3 * height)), (0, 0, 0, 0))
    corner_draw = ImageDraw.Draw(corner)
    text_w = _text_width(label, pixel)
    column_centre = corner.width / 2
    _draw_text(corner_draw, label, column_centre - text_w / 2, 0, pixel, ink)
    _draw_suit(corner_draw, card.suit, column_centre, 7 * pixel + 0.08 * width, 0.11 * width, ink)
    offset = (round(margin - 0.04 * width), round(margin))
    image.alpha_composite(corner, offset)
    rotated = corner.rotate(180)
    image.alpha_composite(rotated, (width - corner.width - offset[0], height - corner.height - offset[1]))

    # Centre: pips for 2..10, a large pip for the ace, a framed letter for J, Q, K.
    left, right = 0.335 * width, 0.665 * width
    top, bottom = 0.2 * height, 0.8 * height
    if card.rank == 1:
        _draw_suit(draw, card.suit, width / 2, height / 2, 0.45 * width, ink)
    elif card.rank <= 10:
        pip = 0.15 * width
        for fx, fy in _PIPS[card.rank]:
            _draw_suit(draw, card.suit, left + fx * (right - left), top + fy * (bottom - top), pip, ink)
    else:
        frame = (0.22 * width, 0.17 * height, 0.78 * width, 0.83 * height)
        draw.rectangle(frame, outline=ink, width=max(1, round(0.012 * width)))
        big = 0.07 * width
        _draw_text(draw, label, width / 2 - _text_width(label, big) / 2, height / 2 - 3.5 * big, big, ink)
        _draw_suit(draw, card.suit, 0.31 * width, 0.24 * height, 0.12 * width, ink)
        _draw_suit(draw, card.suit, 0.69 * width, 0.76 * height, 0.12 * width, ink)
    return image


@lru_cache(maxsize=512)
def _card_image(card: Card, width: int, height: int) -> Image.Image:
    """One card at its final size: drawn SUPERSAMPLE times larger and box-filtered down (cached; read only)."""
    big = _draw_card(card, width * SUPERSAMPLE, height * SUPERSAMPLE)
    return big.resize((width, height), Image.Resampling.BOX)


def render_hand(hand: Sequence[Card], width: int = 1120, height: int = 560, seed: int | None = None) -> np.ndarray:
    """The hand as an (height, width, 3) uint8 image: the cards in a row, left to right in hand order, centred
    on a green table. `seed` (optional) adds a reproducible small shift and tilt per card."""
    if not hand:
        raise ValueError("render_hand needs at least one card.")
    table = Image.new("RGB", (width, height), TABLE_GREEN)
    n = len(hand)
    gap = 0.03 * width
    card_w = min((width - (n + 1) * gap) / n, 0.8 * height * CARD_ASPECT)
    card_h = card_w / CARD_ASPECT
    card_w_px, card_h_px = max(8, round(card_w)), max(8, round(card_h))
    x0 = (width - (n * card_w + (n - 1) * gap)) / 2
    y0 = (height - card_h) / 2
    rng = None if seed is None else np.random.default_rng(seed)
    for index, card in enumerate(hand):
        image = _card_image(card, card_w_px, card_h_px)
        x, y = x0 + index * (card_w + gap), y0
        if rng is not None:
            angle = float(rng.uniform(-4.0, 4.0))
            dx, dy = rng.uniform(-0.25, 0.25, size=2) * gap
            image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
            x += dx - (image.width - card_w_px) / 2
            y += dy - (image.height - card_h_px) / 2
        table.paste(image, (round(x), round(y)), mask=image)
    return np.asarray(table, dtype=np.uint8).copy()
