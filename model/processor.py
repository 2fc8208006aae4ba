"""The image side of the Llama 3.2 Vision ("mllama") input pipeline, in numpy + PIL (no torch, no transformers).

An image becomes up to `max_image_tiles` square tiles of `tile_size` pixels:
  1. choose a canvas of (h_tiles, w_tiles) tiles among the supported arrangements (h * w <= max_image_tiles);
  2. resize with PIL (bilinear by default), aspect ratio kept by flooring, never upscaling beyond
     max(side, tile_size);
  3. zero-pad bottom/right to the canvas (uint8, BEFORE rescaling, so padded pixels become -mean/std);
  4. rescale (x / 255) and normalise ((x - mean) / std) in float32;
  5. split row-major into h_tiles * w_tiles tiles.
Batching packs several samples, each with 0..I images, into

  pixel_values       (B, I, T, 3, tile_size, tile_size) float32; unused tiles and missing images are exact zeros
  aspect_ratio_ids   (B, I) int32: index of (h_tiles, w_tiles) in the supported list + 1; 0 = no image
  aspect_ratio_mask  (B, I, T) int32: 1 on the first h_tiles * w_tiles tiles; tile 0 is 1 even for a missing
                     image (transformers does this: its reference pads aspect ratios with (1, 1))
  num_tiles          (B, I) int32: tiles per image, 0 for a missing image

and the text side's cross-attention mask (B, S, I, T) int32 says which tiles each token may attend to.
Axes: B batch, I images per sample, T tiles (= max_image_tiles), S sequence.

Everything here equals transformers' PIL-backend `MllamaImageProcessorPil` and `MllamaProcessor`'s mask helpers
(tests/model/test_processor.py checks it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

# CLIP statistics, what Llama 3.2 Vision's preprocessor_config.json ships (transformers' class defaults differ).
LLAMA_VISION_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
LLAMA_VISION_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageProcessorConfig:
    """How images become tiles. `resample` is a PIL resampling code (2 = bilinear, as in preprocessor configs)."""

    tile_size: int = 560
    max_image_tiles: int = 4
    resample: int = int(Image.Resampling.BILINEAR)
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = LLAMA_VISION_IMAGE_MEAN
    image_std: tuple[float, float, float] = LLAMA_VISION_IMAGE_STD

    def __post_init__(self) -> None:
        if self.tile_size <= 0 or self.max_image_tiles <= 0:
            raise ValueError(
                f"ImageProcessorConfig needs a positive tile_size and max_image_tiles, got {self.tile_size} and "
                f"{self.max_image_tiles}."
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("ImageProcessorConfig.image_mean and image_std must each have 3 (RGB) values.")


def from_hf_preprocessor_config(source: str | Path | dict[str, Any]) -> ImageProcessorConfig:
    """An `ImageProcessorConfig` from a checkpoint's preprocessor_config.json (a dict, the file, or its directory).

    A directory may instead hold transformers 5's processor_config.json (the same keys under "image_processor").
    Keys missing from the file take transformers' class defaults for mllama where those are what a checkpoint
    without the key means (max_image_tiles 4, bilinear, 1/255); the tile size must be square.
    """
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if path.is_dir():
            candidates = [path / "preprocessor_config.json", path / "processor_config.json"]
            path = next((c for c in candidates if c.is_file()), candidates[0])
        if not path.is_file():
            raise FileNotFoundError(f"No preprocessor config at {path}: pass a checkpoint directory that has one.")
        raw = json.loads(path.read_text())
    raw = raw.get("image_processor", raw)
    for flag in ("do_resize", "do_pad"):
        if raw.get(flag, True) is False:
            raise ValueError(f"preprocessor config sets {flag}=false, which mllama does not support; remove it.")
    size = raw.get("size", {"height": 560, "width": 560})
    height, width = (size, size) if isinstance(size, int) else (size.get("height"), size.get("width"))
    if height is None or height != width:
        raise ValueError(f"preprocessor config size must be a square {{'height': n, 'width': n}}, got {size}.")
    mean = raw.get("image_mean", LLAMA_VISION_IMAGE_MEAN) if raw.get("do_normalize", True) else (0.0, 0.0, 0.0)
    std = raw.get("image_std", LLAMA_VISION_IMAGE_STD) if raw.get("do_normalize", True) else (1.0, 1.0, 1.0)
    rescale = float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0
    return ImageProcessorConfig(
        tile_size=int(height),
        max_image_tiles=int(raw.get("max_image_tiles", 4)),
        resample=int(raw.get("resample", int(Image.Resampling.BILINEAR))),
        rescale_factor=rescale,
        image_mean=tuple(float(m) for m in mean),
        image_std=tuple(float(s) for s in std),
    )


def to_hf_preprocessor_config(config: ImageProcessorConfig) -> dict[str, Any]:
    """The preprocessor_config.json content for `config` (what a saved checkpoint ships; the reverse of
    `from_hf_preprocessor_config`)."""
    return {
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(config.image_mean), "image_std": list(config.image_std),
        "image_processor_type": "MllamaImageProcessor", "max_image_tiles": config.max_image_tiles,
        "resample": config.resample, "rescale_factor": config.rescale_factor,
        "size": {"height": config.tile_size, "width": config.tile_size},
    }


@lru_cache(maxsize=16)
def supported_aspect_ratios(max_image_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (h_tiles, w_tiles) with h * w <= max_image_tiles, in transformers' order (h outer, w inner);
    aspect_ratio_id = position in this tuple + 1. For 4: (1,1) (1,2) (1,3) (1,4) (2,1) (2,2) (3,1) (4,1)."""
    return tuple(
        (h, w) for h in range(1, max_image_tiles + 1) for w in range(1, max_image_tiles + 1) if h * w <= max_image_tiles
    )


def optimal_canvas(height: int, width: int, max_image_tiles: int, tile_size: int) -> tuple[int, int]:
    """The canvas (h_tiles, w_tiles) for an image: the smallest upscale >= 1 if any, else the largest downscale,
    where an arrangement's scale is min(canvas_h / h, canvas_w / w); ties go to the smallest canvas area."""
    arrangements = np.array(supported_aspect_ratios(max_image_tiles))
    canvas = arrangements * tile_size
    # Same float64 arithmetic as transformers so that ties are decided identically.
    scales = np.minimum(canvas[:, 0] / height, canvas[:, 1] / width)
    upscales = scales[scales >= 1]
    chosen = upscales.min() if upscales.size else scales[scales < 1].max()
    candidates = np.flatnonzero(scales == chosen)
    areas = canvas[candidates, 0] * canvas[candidates, 1]
    h_tiles, w_tiles = arrangements[candidates[np.argmin(areas)]]
    return int(h_tiles), int(w_tiles)


def resized_size(height: int, width: int, canvas_height: int, canvas_width: int, tile_size: int) -> tuple[int, int]:
    """(new_h, new_w) of an image fitted into the canvas: each side's target is clip(side, tile_size, canvas side);
    the side with the smaller scale gets its target, the other is floored (at least 1) so the aspect is kept."""
    target_w = min(max(width, tile_size), canvas_width)
    target_h = min(max(height, tile_size), canvas_height)
    scale_h = target_h / height
    scale_w = target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def _as_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image (any mode) or an (H, W, 3) / (H, W) uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (H, W, 3) arrays or PIL images, got dtype {array.dtype}.")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"images must be (H, W, 3) with H, W >= 1, got shape {array.shape}.")
    return array


def preprocess_image(
    image: np.ndarray | Image.Image, config: ImageProcessorConfig
) -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (tiles (h_tiles * w_tiles, 3, tile, tile) float32, (h_tiles, w_tiles))."""
    rgb = _as_rgb_uint8(image)
    height, width = rgb.shape[:2]
    tile = config.tile_size
    h_tiles, w_tiles = optimal_canvas(height, width, config.max_image_tiles, tile)
    new_h, new_w = resized_size(height, width, h_tiles * tile, w_tiles * tile, tile)
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample=config.resample))
    canvas = np.zeros((h_tiles * tile, w_tiles * tile, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    # transformers rescales in float64 then casts, and normalises in float32: the same steps give the same bits.
    pixels = (canvas.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    pixels = (pixels - mean) / std
    tiles = pixels.reshape(h_tiles, tile, w_tiles, tile, 3).transpose(0, 2, 4, 1, 3)
    return np.ascontiguousarray(tiles.reshape(h_tiles * w_tiles, 3, tile, tile)), (h_tiles, w_tiles)


@dataclass(frozen=True)
class VisionInputs:
    """The vision arrays of a batch (see the module docstring for shapes and meaning)."""

    pixel_values: np.ndarray  # (B, I, T, 3, tile, tile) float32
    aspect_ratio_ids: np.ndarray  # (B, I) int32
    aspect_ratio_mask: np.ndarray  # (B, I, T) int32
    num_tiles: np.ndarray  # (B, I) int32


def preprocess_images(
    images: Sequence[Sequence[np.ndarray | Image.Image]],
    config: ImageProcessorConfig,
    num_image_slots: int | None = None,
) -> VisionInputs:
    """Batch B samples, each a sequence of 0..I images. I = the most images in a sample, or `num_image_slots`
    when given (a static shape for jit; must be >= that maximum). I may be 0 (arrays with an empty axis)."""
    most = max((len(sample) for sample in images), default=0)
    slots = most if num_image_slots is None else num_image_slots
    if slots < most:
        raise ValueError(f"num_image_slots={num_image_slots} is smaller than the {most} images of one sample.")
    batch, tiles, size = len(images), config.max_image_tiles, config.tile_size
    pixel_values = np.zeros((batch, slots, tiles, 3, size, size), dtype=np.float32)
    aspect_ratio_ids = np.zeros((batch, slots), dtype=np.int32)
    aspect_ratio_mask = np.zeros((batch, slots, tiles), dtype=np.int32)
    aspect_ratio_mask[:, :, 0] = 1
    num_tiles = np.zeros((batch, slots), dtype=np.int32)
    arrangements = supported_aspect_ratios(tiles)
    for b, sample in enumerate(images):
        for i, image in enumerate(sample):
            image_tiles, arrangement = preprocess_image(image, config)
            count = len(image_tiles)
            pixel_values[b, i, :count] = image_tiles
            aspect_ratio_ids[b, i] = arrangements.index(arrangement) + 1
            aspect_ratio_mask[b, i, :count] = 1
            num_tiles[b, i] = count
    return VisionInputs(pixel_values, aspect_ratio_ids, aspect_ratio_mask, num_tiles)


def image_token_spans(token_ids: Sequence[int] | np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """[start, end) of the tokens that attend to each image, one span per `<|image|>` token in order: from the
    image's token to the next image token (the last image: to the end). A run of consecutive image tokens all
    extend to where the run's last image ends, as transformers' `get_cross_attention_token_mask` does."""
    ids = np.asarray(token_ids)
    positions = np.flatnonzero(ids == image_token_id).tolist()
    ends = positions[1:] + [len(ids)]
    spans = [[start, end] for start, end in zip(positions, ends)]
    later_end = len(ids)
    for span in reversed(spans):
        if span[0] == span[1] - 1:
            span[1] = later_end
        later_end = span[1]
    return [(start, end) for start, end in spans]


def cross_attention_mask(
    token_ids: np.ndarray, image_token_id: int, num_tiles: np.ndarray, max_image_tiles: int
) -> np.ndarray:
    """(B, S, I, T) int32 from token_ids (B, S) and num_tiles (B, I): token s of sample b may attend to the first
    num_tiles[b, i] tiles of image i when s lies in image i's span (see `image_token_spans`); tokens before the
    first image token get zero rows. Image i of a sample is its i-th `<|image|>` token; a sample may not have more
    image tokens than I."""
    token_ids = np.asarray(token_ids)
    num_tiles = np.asarray(num_tiles)
    batch, length = token_ids.shape
    slots = num_tiles.shape[1] if num_tiles.ndim == 2 else 0
    mask = np.zeros((batch, length, slots, max_image_tiles), dtype=np.int32)
    for b in range(batch):
        spans = image_token_spans(token_ids[b], image_token_id)
        if len(spans) > slots:
            raise ValueError(f"sample {b} has {len(spans)} image tokens but only {slots} image slots.")
        for i, (start, end) in enumerate(spans):
            mask[b, start:end, i, : num_tiles[b, i]] = 1
    return mask


def continuation_cross_attention_mask(mask: np.ndarray, num_new_tokens: int) -> np.ndarray:
    """(B, num_new_tokens, I, T): the rows for tokens appended after a sequence whose mask is `mask` (B, S, I, T),
    when the appended tokens hold no `<|image|>` (sampled responses, feedback turns). The last image's span runs
    to the end of the sequence, so every appended token attends as the sequence's last position does; this is
    what `cross_attention_mask` of the longer sequence gives for those positions."""
    return np.repeat(mask[:, -1:], num_new_tokens, axis=1)


def image_input_shapes(rows: int, seq: int, images: int, max_image_tiles: int,
                       tile_size: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """(shape, dtype) of each image array of a batch of `rows` sequences of `seq` tokens with `images` image slots
    (the layout of the module docstring): what a memory plan compiles against and a benchmark fills with random
    data (`random_image_inputs`)."""
    tiles = max_image_tiles
    return {"pixel_values": ((rows, images, tiles, 3, tile_size, tile_size), np.float32),
            "aspect_ratio_ids": ((rows, images), np.int32), "aspect_ratio_mask": ((rows, images, tiles), np.int32),
            "cross_attention_mask": ((rows, seq, images, tiles), np.int32)}


def random_image_inputs(token_ids: np.ndarray, image_token_id: int, images: int, max_image_tiles: int,
                        tile_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Image arrays for `token_ids` (B, S), whose `<|image|>` tokens are already placed: `images` standard-normal
    images per row, each using every tile in the squarest arrangement that uses them all ((2, 2) of 4 tiles, a
    large square photo's), and the cross-attention mask `cross_attention_mask` gives: the worst case for compute
    and memory, for benchmarks."""
    token_ids = np.asarray(token_ids)
    rows, seq = token_ids.shape
    shapes = image_input_shapes(rows, seq, images, max_image_tiles, tile_size)
    ratios = supported_aspect_ratios(max_image_tiles)
    full = max((ratio for ratio in ratios if ratio[0] * ratio[1] == max_image_tiles), key=min)
    num_tiles = np.full((rows, images), max_image_tiles, np.int32)
    return {"pixel_values": rng.standard_normal(shapes["pixel_values"][0]).astype(np.float32),
            "aspect_ratio_ids": np.full(shapes["aspect_ratio_ids"][0], ratios.index(full) + 1, np.int32),
            "aspect_ratio_mask": np.ones(shapes["aspect_ratio_mask"][0], np.int32),
            "cross_attention_mask": cross_attention_mask(token_ids, image_token_id, num_tiles, max_image_tiles)}
