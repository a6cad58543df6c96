"""SCCLIPImageProcessor and PAMR against the protocol's arithmetic, OpenCV and straightforward per-pixel loops."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_scclip.image_processing_scclip import (
    SCCLIPImageProcessor,
    get_resize_output_size,
    pixel_adaptive_mask_refinement,
    resize_bilinear,
)


CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# ----------------------------------------------------------------------------------------------------------------
# Straightforward references, in float64.
# ----------------------------------------------------------------------------------------------------------------


def bilinear_reference(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *size): bilinear on half-pixel centres (align_corners=False), edges clamped, no antialias."""

    def source_positions(out_length, in_length):
        position = np.maximum((np.arange(out_length) + 0.5) * in_length / out_length - 0.5, 0)
        low = np.minimum(np.floor(position).astype(int), in_length - 1)
        high = np.minimum(low + 1, in_length - 1)
        return low, high, position - low

    top, bottom, row_weight = source_positions(size[0], maps.shape[1])
    left, right, column_weight = source_positions(size[1], maps.shape[2])
    maps = maps.astype(np.float64)
    rows = maps[:, top] * (1 - row_weight[:, None]) + maps[:, bottom] * row_weight[:, None]
    return rows[:, :, left] * (1 - column_weight) + rows[:, :, right] * column_weight


def pamr_reference(image: np.ndarray, mask: np.ndarray, num_iterations: int, dilations) -> np.ndarray:
    """PAMR pixel by pixel: image (K, H, W), mask (C, H, W); neighbours beyond the border repeat the border."""
    _, height, width = image.shape
    steps = (-1, 0, 1)
    window = [(dy * d, dx * d) for d in dilations for dy in steps for dx in steps]  # centre once per dilation
    neighbours = [offset for offset in window if offset != (0, 0)]

    def at(array, y, x):
        return array[:, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    weights = np.zeros((height, width, len(neighbours)))
    for y in range(height):
        for x in range(width):
            spread = np.std([at(image, y + dy, x + dx) for dy, dx in window], axis=0, ddof=1)
            scores = [
                np.mean(-np.abs(image[:, y, x] - at(image, y + dy, x + dx)) / (1e-8 + 0.1 * spread))
                for dy, dx in neighbours
            ]
            scores = np.exp(np.array(scores) - max(scores))
            weights[y, x] = scores / scores.sum()
    for _ in range(num_iterations):
        refined = np.zeros_like(mask)
        for y in range(height):
            for x in range(width):
                for weight, (dy, dx) in zip(weights[y, x], neighbours):
                    refined[:, y, x] += weight * at(mask, y + dy, x + dx)
        mask = refined
    return mask


def to_uint8_rgb(pixel_values: torch.Tensor) -> np.ndarray:
    """Undo CLIP's normalisation: (3, H, W) pixel values -> (H, W, 3) uint8."""
    rgb = pixel_values.double().numpy().transpose(1, 2, 0) * CLIP_STD + CLIP_MEAN
    return np.round(rgb * 255).astype(np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def same_size_processor():
    """Leaves 9 x 12 images at their size, so that outputs show the colour conversion alone."""
    return SCCLIPImageProcessor(short_side=9)


def random_uint8(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Resize
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, short_side, max_long_side, expected",
    [
        ((375, 500), 336, 2048, (336, 448)),  # VOC-like landscape
        ((500, 375), 336, 2048, (448, 336)),
        ((227, 224), 336, 2048, (341, 336)),  # 340.5 rounds half up (Python's round would give 340)
        ((100, 4000), 336, 2048, (51, 2048)),  # the long-side cap wins: scale 0.512
        ((2048, 100), 336, 2048, (2048, 100)),  # cap at scale 1
        ((10, 7), 336, 2048, (480, 336)),  # tiny images are enlarged
        ((1, 1), 336, 2048, (336, 336)),
        ((1024, 2048), 336, 2048, (336, 672)),
        ((1024, 2048), 560, 2048, (560, 1120)),  # Cityscapes
    ],
)
def test_resize_output_size_follows_the_protocol(size, short_side, max_long_side, expected):
    assert get_resize_output_size(*size, short_side, max_long_side) == expected
    image = Image.fromarray(np.zeros(size, dtype=np.uint8))
    processor = SCCLIPImageProcessor(short_side=short_side, max_long_side=max_long_side)
    assert processor(image).pixel_values.shape == (1, 3, *expected)


@pytest.mark.parametrize(
    "size, new_size", [((375, 500), (336, 448)), ((7, 5), (470, 336)), ((64, 64), (32, 32)), ((65, 97), (336, 502))]
)
def test_resize_matches_opencv_inter_linear(rng, size, new_size):
    image = random_uint8(rng, (*size, 3))
    ours = resize_bilinear(torch.from_numpy(image).permute(2, 0, 1), new_size).permute(1, 2, 0).numpy()
    opencv = cv2.resize(image, new_size[::-1], interpolation=cv2.INTER_LINEAR)
    reference = bilinear_reference(image.transpose(2, 0, 1), new_size).transpose(1, 2, 0)

    assert ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - opencv)
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.8  # OpenCV's fixed-point rounding moves a minority of pixels by one level
    assert np.abs(ours - reference).max() <= 0.51  # the exact bilinear value, rounded (up to float32 arithmetic)


def test_float_images_are_resized_without_rounding(rng):
    image = rng.random((3, 11, 13))
    resized = resize_bilinear(torch.from_numpy(image), (20, 17))
    assert resized.dtype == torch.float32
    np.testing.assert_allclose(resized.numpy(), bilinear_reference(image, (20, 17)), atol=1e-6)


def test_pixel_values_are_the_clip_normalised_opencv_resize(rng):
    image = random_uint8(rng, (375, 500, 3))
    pixel_values = SCCLIPImageProcessor()(Image.fromarray(image)).pixel_values[0].double().numpy()
    expected = (cv2.resize(image, (448, 336), interpolation=cv2.INTER_LINEAR) / 255 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixel_values, expected.transpose(2, 0, 1), atol=1 / 255 / CLIP_STD.min() + 1e-6)


def test_short_side_and_cap_per_call_and_saved(tmp_path, rng):
    image = random_uint8(rng, (100, 4000, 3))
    processor = SCCLIPImageProcessor(short_side=560, max_long_side=1000)
    assert processor(image).pixel_values.shape[-2:] == (25, 1000)
    assert processor(image, short_side=50, max_long_side=4000).pixel_values.shape[-2:] == (50, 2000)

    processor.save_pretrained(tmp_path)
    reloaded = SCCLIPImageProcessor.from_pretrained(tmp_path)
    assert (reloaded.short_side, reloaded.max_long_side) == (560, 1000)
    assert reloaded.image_mean == processor.image_mean and reloaded.image_std == processor.image_std
    torch.testing.assert_close(reloaded(image).pixel_values, processor(image).pixel_values)


# ----------------------------------------------------------------------------------------------------------------
# Image types and modes
# ----------------------------------------------------------------------------------------------------------------


def test_grey_palette_and_cmyk_images_become_rgb(rng, same_size_processor):
    grey = random_uint8(rng, (9, 12))
    rgb = random_uint8(rng, (9, 12, 3))
    palette = Image.fromarray(rgb).quantize(colors=16)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    expected = {
        "L": (Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=-1)),
        "1": (Image.fromarray(grey > 127), np.repeat(np.where(grey > 127, 255, 0)[..., None], 3, axis=-1)),
        "P": (palette, np.array(palette.convert("RGB"))),
        "CMYK": (cmyk, np.array(cmyk.convert("RGB"))),
    }
    for mode, (image, rgb_expected) in expected.items():
        assert image.mode == mode
        pixel_values = same_size_processor(image).pixel_values[0]
        np.testing.assert_array_equal(to_uint8_rgb(pixel_values), rgb_expected, err_msg=mode)


def test_transparency_is_composited_onto_white(rng, same_size_processor):
    rgba = random_uint8(rng, (9, 12, 4))
    alpha = rgba[..., 3:] / 255
    expected_rgba = rgba[..., :3] * alpha + 255 * (1 - alpha)
    grey_alpha = rgba[..., [0, 3]]
    expected_la = np.repeat(grey_alpha[..., :1] * alpha + 255 * (1 - alpha), 3, axis=-1)
    cases = [
        (Image.fromarray(rgba, "RGBA"), expected_rgba),
        (rgba, expected_rgba),
        (Image.fromarray(grey_alpha, "LA"), expected_la),
        (grey_alpha, expected_la),
    ]
    for image, expected in cases:
        result = to_uint8_rgb(same_size_processor(image).pixel_values[0]).astype(int)
        assert np.abs(result - expected).max() <= 0.5 + 1e-6


def test_sixteen_bit_images_are_scaled_not_clipped(rng, same_size_processor):
    values = rng.integers(0, 65536, (9, 12), dtype=np.uint16)
    expected = np.repeat(np.round(values / 257)[..., None], 3, axis=-1)
    big_endian = Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes())
    for image in (Image.fromarray(values), big_endian, Image.fromarray(values.astype(np.int32), "I"), values):
        result = to_uint8_rgb(same_size_processor(image).pixel_values[0])
        np.testing.assert_array_equal(result, expected, err_msg=getattr(image, "mode", "array"))
    assert Image.fromarray(values).mode == "I;16" and big_endian.mode == "I;16B"


def test_float_and_tensor_inputs_match_uint8(rng, same_size_processor):
    image = random_uint8(rng, (9, 12, 3))
    expected = same_size_processor(image).pixel_values
    channels_first = torch.from_numpy(image).permute(2, 0, 1)
    for equivalent in (image / 255, channels_first, channels_first / 255):
        torch.testing.assert_close(same_size_processor(equivalent).pixel_values, expected)
    grey_float = (image[..., 0] / 255).astype(np.float32)
    torch.testing.assert_close(
        same_size_processor(Image.fromarray(grey_float, "F")).pixel_values,
        same_size_processor(image[..., 0]).pixel_values,
    )


def test_batches_of_mixed_sizes_give_a_list(rng):
    processor = SCCLIPImageProcessor(short_side=32)
    images = [Image.fromarray(random_uint8(rng, (40, 60, 3))), random_uint8(rng, (30, 30)), torch.rand(3, 20, 50)]
    inputs = processor(images)
    assert isinstance(inputs.pixel_values, list)
    assert [tuple(values.shape) for values in inputs.pixel_values] == [(3, 32, 48), (3, 32, 32), (3, 32, 80)]
    assert inputs.original_sizes == [(40, 60), (30, 30), (20, 50)]

    same_size = processor([random_uint8(rng, (40, 60, 3)), Image.fromarray(random_uint8(rng, (40, 60, 3)))])
    assert same_size.pixel_values.shape == (2, 3, 32, 48)
    batch = random_uint8(rng, (3, 40, 60, 3))
    torch.testing.assert_close(processor(batch).pixel_values, processor(list(batch)).pixel_values)
    tensor_batch = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B, C, H, W)
    torch.testing.assert_close(processor(tensor_batch).pixel_values, processor(batch).pixel_values)


def test_bad_images_raise_clear_errors(same_size_processor):
    cases = [
        ([], "No images"),
        ("photo.jpg", "Pillow images, NumPy arrays or torch tensors"),
        ([np.zeros((9, 12, 3), np.uint8), "photo.jpg"], "Pillow images, NumPy arrays or torch tensors"),
        (np.zeros((0, 12, 3), np.uint8), "empty"),
        (Image.new("RGB", (0, 5)), "empty"),
        (torch.zeros(3, 9, 0), "empty"),
        (np.zeros((9, 12, 5), np.uint8), "channels"),
        (torch.zeros(6, 9, 12), "channels"),
        (np.full((9, 12, 3), 2.0), r"\[0, 1\]"),
        (np.zeros((9, 12, 3), np.int64), "dtype"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            same_size_processor(images)
    with pytest.raises(ValueError, match="short_side"):
        SCCLIPImageProcessor(short_side=0)
    with pytest.raises(ValueError, match="max_long_side"):
        same_size_processor(np.zeros((9, 12, 3), np.uint8), max_long_side=-1)


# ----------------------------------------------------------------------------------------------------------------
# PAMR
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dilations", [(1, 2), (8, 16)])
def test_pamr_equals_per_pixel_loop(rng, dilations):
    images = rng.random((2, 3, 6, 7))
    masks = rng.random((2, 4, 6, 7))
    refined = pixel_adaptive_mask_refinement(torch.from_numpy(images), torch.from_numpy(masks), 3, dilations)
    for image, mask, result in zip(images, masks, refined):
        np.testing.assert_allclose(result.numpy(), pamr_reference(image, mask, 3, dilations), rtol=1e-4, atol=1e-5)


def test_pamr_snaps_a_blurred_map_to_the_image_edge(rng):
    height, width, edge = 16, 16, 8
    columns = np.arange(width)
    image = np.where(columns < edge, 0.2, 0.8) + 0.01 * rng.standard_normal((3, height, width))
    foreground = 1 / (1 + np.exp(-(columns - (edge - 0.5)) / 2.0))  # a soft ramp across the edge
    blurred = np.broadcast_to(np.stack([1 - foreground, foreground])[:, None, :], (2, height, width))
    ideal = np.broadcast_to(np.stack([columns < edge, columns >= edge])[:, None, :], (2, height, width))

    refined = pixel_adaptive_mask_refinement(
        torch.from_numpy(image)[None], torch.from_numpy(blurred.copy())[None], dilations=(1, 2)
    )[0].numpy()

    def step_at_edge(maps):
        return maps[1, :, edge] - maps[1, :, edge - 1]

    def error_beside_edge(maps):
        return np.abs(maps - ideal)[:, :, edge - 2 : edge + 2].mean()

    assert (step_at_edge(refined) > 4 * step_at_edge(blurred)).all()
    assert error_beside_edge(refined) < 0.5 * error_beside_edge(blurred)
    np.testing.assert_array_equal(refined.argmax(0), ideal.argmax(0))


def test_pamr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same batch size"):
        pixel_adaptive_mask_refinement(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 9))
