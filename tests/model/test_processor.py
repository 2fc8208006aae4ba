"""model.processor against transformers' PIL-backend mllama image processor and its cross-attention mask helpers."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers.models.mllama import image_processing_pil_mllama as hf_image
from transformers.models.mllama import processing_mllama as hf_processing
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

from model.processor import (
    LLAMA_VISION_IMAGE_MEAN,
    LLAMA_VISION_IMAGE_STD,
    ImageProcessorConfig,
    cross_attention_mask,
    from_hf_preprocessor_config,
    image_token_spans,
    optimal_canvas,
    image_input_shapes,
    preprocess_images,
    random_image_inputs,
    resized_size,
    supported_aspect_ratios,
    to_hf_preprocessor_config,
)


def hf_processor(tile_size: int, **kwargs) -> MllamaImageProcessorPil:
    return MllamaImageProcessorPil(
        size={"height": tile_size, "width": tile_size},
        image_mean=list(LLAMA_VISION_IMAGE_MEAN),
        image_std=list(LLAMA_VISION_IMAGE_STD),
        **kwargs,
    )


def random_images(rng, shapes):
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def assert_same_as_hf(ours, reference):
    assert ours.pixel_values.dtype == np.float32
    assert ours.pixel_values.shape == reference["pixel_values"].shape
    np.testing.assert_allclose(ours.pixel_values, reference["pixel_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours.aspect_ratio_ids, reference["aspect_ratio_ids"])
    np.testing.assert_array_equal(ours.aspect_ratio_mask, reference["aspect_ratio_mask"])
    hf_tiles = [row + [0] * (ours.num_tiles.shape[1] - len(row)) for row in reference["num_tiles"]]
    np.testing.assert_array_equal(ours.num_tiles, hf_tiles)


# Tall, wide, tiny, exact, ratios 1:2 .. 4:1 and in between, at the tiny test tile size. (Heights 1, 3 and 4
# are in the PIL test: transformers reads an (H, W, 3) array with H in {1, 3, 4} as channels-first.)
TINY_SHAPES = [(28, 28), (10, 50), (60, 20), (100, 100), (5, 3), (29, 57), (200, 31), (2, 90), (56, 28),
               (112, 27), (27, 112), (84, 30), (57, 57), (6, 200), (40, 41)]


def test_pixels_ids_and_masks_equal_transformers_pil_backend_tiny_tiles():
    rng = np.random.default_rng(0)
    images = random_images(rng, TINY_SHAPES)
    batch = [images[:4], [images[4]], images[5:9], images[9:]]
    ours = preprocess_images(batch, ImageProcessorConfig(tile_size=28))
    assert_same_as_hf(ours, hf_processor(28)(batch, return_tensors="np"))
    # Unused tile slots and missing images are exact zeros; a used tile's padding is -mean/std, not zero.
    for b, sample in enumerate(batch):
        for i in range(ours.num_tiles.shape[1]):
            assert not ours.pixel_values[b, i, ours.num_tiles[b, i]:].any()
    assert ours.num_tiles[1, 1] == 0 and ours.aspect_ratio_ids[1, 1] == 0


def test_pixels_equal_transformers_at_560_for_a_non_square_image():
    rng = np.random.default_rng(1)
    batch = [random_images(rng, [(300, 700)]), random_images(rng, [(1200, 1200)])]
    ours = preprocess_images(batch, ImageProcessorConfig())
    assert ours.pixel_values.shape == (2, 1, 4, 3, 560, 560)
    assert_same_as_hf(ours, hf_processor(560)(batch, return_tensors="np"))
    assert ours.num_tiles.tolist() == [[2], [4]]


def test_pil_images_and_other_resampling_match_transformers():
    rng = np.random.default_rng(2)
    arrays = random_images(rng, [(45, 20), (20, 70), (1, 90), (3, 200), (4, 1)])
    pil = [Image.fromarray(a).convert("RGBA") for a in arrays]  # converted to RGB, as do_convert_rgb does
    config = ImageProcessorConfig(tile_size=14, max_image_tiles=6, resample=int(Image.Resampling.BICUBIC))
    ours = preprocess_images([pil], config)
    reference = hf_processor(14, max_image_tiles=6, resample=Image.Resampling.BICUBIC)([pil], return_tensors="np")
    assert_same_as_hf(ours, reference)


def test_canvas_choice_and_resize_equal_transformers_exhaustively():
    for tiles in (1, 2, 4, 6):
        assert list(supported_aspect_ratios(tiles)) == hf_image.get_all_supported_aspect_ratios(tiles)
    for height in range(1, 130, 3):
        for width in range(1, 130, 5):
            for tiles in (2, 4):
                canvas = optimal_canvas(height, width, tiles, 28)
                expected = hf_image.get_optimal_tiled_canvas(height, width, tiles, 28)
                assert (canvas[0] * 28, canvas[1] * 28) == tuple(int(x) for x in expected)
                new = resized_size(height, width, expected[0], expected[1], 28)
                assert new == tuple(int(x) for x in hf_image.get_image_size_fit_to_canvas(
                    height, width, expected[0], expected[1], 28))


def test_num_image_slots_pads_with_zeros_and_rejects_too_few():
    rng = np.random.default_rng(3)
    batch = [random_images(rng, [(30, 60)]), []]
    ours = preprocess_images(batch, ImageProcessorConfig(tile_size=28), num_image_slots=3)
    assert ours.pixel_values.shape == (2, 3, 4, 3, 28, 28)
    assert ours.aspect_ratio_ids.tolist() == [[2, 0, 0], [0, 0, 0]]
    assert ours.aspect_ratio_mask[:, :, 0].all() and ours.aspect_ratio_mask[:, :, 2:].sum() == 0
    assert not ours.pixel_values[0, 1:].any() and not ours.pixel_values[1].any()
    with pytest.raises(ValueError, match="num_image_slots"):
        preprocess_images(batch, ImageProcessorConfig(tile_size=28), num_image_slots=0)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images([[np.zeros((4, 4, 3), np.float32)]], ImageProcessorConfig(tile_size=28))


def test_from_hf_preprocessor_config_reads_a_checkpoint_file(tmp_path):
    raw = {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
           "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "max_image_tiles": 2, "resample": 3,
           "rescale_factor": 0.00392156862745098, "size": {"height": 14, "width": 14},
           "image_processor_type": "MllamaImageProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    config = from_hf_preprocessor_config(tmp_path)
    assert config == ImageProcessorConfig(14, 2, 3, 0.00392156862745098, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = [random_images(np.random.default_rng(4), [(20, 33)])]
    reference = MllamaImageProcessorPil(**{k: v for k, v in raw.items() if k != "image_processor_type"})
    assert_same_as_hf(preprocess_images(images, config), reference(images, return_tensors="np"))
    assert from_hf_preprocessor_config({}) == ImageProcessorConfig()
    assert from_hf_preprocessor_config(to_hf_preprocessor_config(config)) == config
    assert to_hf_preprocessor_config(config) == raw
    with pytest.raises(ValueError, match="square"):
        from_hf_preprocessor_config({"size": {"height": 14, "width": 28}})
    with pytest.raises(FileNotFoundError, match="preprocessor"):
        from_hf_preprocessor_config(tmp_path / "missing")


IMAGE = 99
LAYOUTS = [
    [5, IMAGE, 1, 2, 3],  # one image after a leading token: that token gets a zero row
    [IMAGE, 1, 2, IMAGE, 3, 4],  # two images, each to the next image token / the end
    [IMAGE, IMAGE, 1, 2, 3],  # consecutive images both attend to the rest
    [1, IMAGE, 2, IMAGE, IMAGE, 3, IMAGE],  # a consecutive pair in the middle, an image as the last token
    [1, 2, 3, 4],  # no image
    [IMAGE, 7, IMAGE, 8, IMAGE, 9, 9],  # three separated images
]


@pytest.mark.parametrize("padded_length", [None, 9])
def test_cross_attention_mask_equals_transformers(padded_length):
    rng = np.random.default_rng(5)
    length = padded_length or max(len(ids) for ids in LAYOUTS)
    token_ids = np.zeros((len(LAYOUTS), length), dtype=np.int64)
    for b, ids in enumerate(LAYOUTS):
        token_ids[b, : len(ids)] = ids
    counts = [int(np.sum(np.asarray(ids) == IMAGE)) for ids in LAYOUTS]
    num_tiles = np.zeros((len(LAYOUTS), max(counts)), dtype=np.int32)
    tiles_lists = []
    for b, count in enumerate(counts):
        num_tiles[b, :count] = rng.integers(1, 5, count)
        tiles_lists.append(num_tiles[b, :count].tolist())
    sparse = [hf_processing.get_cross_attention_token_mask(row.tolist(), IMAGE) for row in token_ids]
    expected = hf_processing.convert_sparse_cross_attention_mask_to_dense(sparse, tiles_lists, 4, length)
    ours = cross_attention_mask(token_ids, IMAGE, num_tiles, 4)
    assert ours.dtype == np.int32 and ours.shape == expected.shape == (len(LAYOUTS), length, 4, 4)
    np.testing.assert_array_equal(ours, expected)
    assert [list(span) for span in image_token_spans(token_ids[2], IMAGE)] == sparse[2]


def test_cross_attention_mask_rejects_more_image_tokens_than_slots():
    with pytest.raises(ValueError, match="image slots"):
        cross_attention_mask(np.array([[IMAGE, IMAGE]]), IMAGE, np.array([[1]]), 4)


@pytest.mark.parametrize("max_tiles", [1, 4])
def test_random_image_inputs_have_the_planned_shapes_and_a_square_photos_full_tiling(max_tiles):
    """The benchmarks' random images: the shapes the memory plan compiles against, and the tiling and mask the
    processor gives a large square photo (every tile used)."""
    tile, rng = 14, np.random.default_rng(0)
    ids = np.array([[1, 9, 9, 5, 6, 7], [1, 9, 9, 5, 6, 7]])  # consecutive image tokens, as in the benchmarks
    inputs = random_image_inputs(ids, 9, 2, max_tiles, tile, rng)
    for name, (shape, dtype) in image_input_shapes(2, 6, 2, max_tiles, tile).items():
        assert inputs[name].shape == shape and inputs[name].dtype == dtype, name
    photo = preprocess_images([[np.full((8 * tile, 8 * tile, 3), 128, np.uint8)] * 2] * 2,
                              ImageProcessorConfig(tile_size=tile, max_image_tiles=max_tiles))
    np.testing.assert_array_equal(inputs["aspect_ratio_ids"], photo.aspect_ratio_ids)
    np.testing.assert_array_equal(inputs["aspect_ratio_mask"], photo.aspect_ratio_mask)
    np.testing.assert_array_equal(inputs["cross_attention_mask"],
                                  cross_attention_mask(ids, 9, photo.num_tiles, max_tiles))
    mask = inputs["cross_attention_mask"]  # image i's span runs from its token to the end
    assert mask[:, 1:, 0].all() and mask[:, 2:, 1].all() and mask[:, :1].sum() + mask[:, 1, 1].sum() == 0
