# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""Image processor for SC-CLIP: the benchmark protocol's resize and CLIP normalisation, and PAMR refinement."""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import convert_to_rgb, to_channel_dimension_format
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    infer_channel_dimension_format,
    is_pil_image,
    is_valid_image,
    make_list_of_images,
    to_numpy_array,
    valid_images,
)
from transformers.utils import TensorType


# Grey, grey + alpha, RGB, RGBA.
SUPPORTED_NUM_CHANNELS = (1, 2, 3, 4)

# Pillow modes whose values do not fit 8 bits. Pillow's own `convert("RGB")` clips them at 255, so they are scaled
# here instead. "I" is how Pillow opens many 16-bit PNGs and TIFFs, so its values are read as 16-bit.
HIGH_BIT_DEPTH_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
UINT16_MAX = 65535

# PAMR's neighbourhood: the 8 neighbours (row, column offsets) of a pixel, scaled by each dilation.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def get_resize_output_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """
    Size `(height, width)` of the protocol's keep-ratio resize (MMSegmentation's `Resize(scale=(max_long_side,
    short_side), keep_ratio=True)`): scale = min(max_long_side / long side, short_side / short side), each side
    becomes floor(side * scale + 0.5). Small images are enlarged. A side never drops below one pixel.
    """
    scale = min(max_long_side / max(height, width), short_side / min(height, width))
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """
    Resize a `(C, H, W)` image to `size` with bilinear interpolation on half-pixel centres and without antialiasing,
    as OpenCV's `INTER_LINEAR` (which MMSegmentation uses) does. A `uint8` image comes back as `uint8`, rounded half
    up; OpenCV computes in fixed point, so results may differ from it by one grey level. Float images stay float.
    """
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    if image.dtype == torch.uint8:
        resized = resized.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return resized


def _check_not_empty(height: int, width: int) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"The image is empty ({height}x{width} pixels): every image needs at least one pixel.")


def _unsupported_channels(shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"Images need 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels, got an image of shape {shape}."
    )


def _to_channels_last(array: np.ndarray, input_data_format: ChannelDimension | str | None) -> np.ndarray:
    """An `(H, W)`, `(H, W, C)` or `(C, H, W)` array as `(H, W, C)`, with a clear error for other shapes."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise ValueError(
            f"An image array must have 2 dimensions (H, W) or 3 (H, W, C) or (C, H, W), got shape {array.shape}. "
            "Pass a batch as a list of images or as one 4-dimensional array."
        )
    if input_data_format is None:
        try:
            input_data_format = infer_channel_dimension_format(array, SUPPORTED_NUM_CHANNELS)
        except ValueError:
            raise _unsupported_channels(array.shape) from None
    array = to_channel_dimension_format(array, ChannelDimension.LAST, input_data_format)
    if array.shape[-1] not in SUPPORTED_NUM_CHANNELS:
        raise _unsupported_channels(array.shape)
    return array


def _to_uint8_or_unit_float(array: np.ndarray) -> np.ndarray:
    """8-bit arrays as they are, 16-bit ones scaled to 8 bits, float ones (which must lie in [0, 1]) as float32."""
    if not array.dtype.isnative:  # e.g. Pillow's big-endian "I;16B"
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.round(array / (UINT16_MAX / 255)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"Float images must hold values in [0, 1], got values in [{array.min()}, {array.max()}]. Divide "
                "images in [0, 255] by 255, or pass them as uint8."
            )
        return array.astype(np.float32)
    raise ValueError(
        f"Unsupported image dtype {array.dtype}: pass uint8 (0-255), uint16 (0-65535) or float (0-1) images."
    )


def _high_bit_depth_pil_to_array(image) -> np.ndarray:
    array = np.array(image)
    if image.mode == "I":
        if array.min() < 0 or array.max() > UINT16_MAX:
            raise ValueError(
                f"A Pillow 'I' image is read as 16-bit, but its values span [{array.min()}, {array.max()}], outside "
                f"[0, {UINT16_MAX}]. Rescale it first."
            )
        array = array.astype(np.uint16)
    return array


def to_rgb_array(image: ImageInput, input_data_format: ChannelDimension | str | None = None) -> np.ndarray:
    """
    One image (Pillow image of any mode, NumPy array or torch tensor) as an `(H, W, 3)` RGB array: `uint8`, or
    `float32` in [0, 1] for float input. Transparency is composited onto white (as transformers' `convert_to_rgb`
    does), 16-bit images are scaled to 8 bits, grey images are repeated over the three channels.
    """
    if is_pil_image(image):
        _check_not_empty(image.height, image.width)
        if image.mode not in HIGH_BIT_DEPTH_PIL_MODES:
            return convert_to_rgb(image, return_numpy=True)
        image = _high_bit_depth_pil_to_array(image)
    array = _to_channels_last(to_numpy_array(image), input_data_format)
    _check_not_empty(*array.shape[:2])
    array = _to_uint8_or_unit_float(array)
    if array.shape[-1] == 2:
        array = array[..., [0, 0, 0, 1]]  # grey + alpha as RGBA, for `convert_to_rgb`
    return convert_to_rgb(array, return_numpy=True, input_data_format=ChannelDimension.LAST)


def make_image_list(images: ImageInput) -> list:
    """One image, a list of images or a batched array/tensor as a list of single images, or a clear error."""
    if isinstance(images, (list, tuple)) and not images:
        raise ValueError("No images given: pass an image or a non-empty list of images.")
    if not valid_images(images):
        found = [type(image).__name__ for image in images] if isinstance(images, (list, tuple)) else type(images)
        raise ValueError(
            f"Images must be Pillow images, NumPy arrays or torch tensors (or a list of them), got {found}. Load "
            "files with `PIL.Image.open`."
        )
    if is_valid_image(images) and not is_pil_image(images) and images.ndim == 2:
        return [images]  # one grey image without a channel axis
    return make_list_of_images(images)


def _neighbour_views(maps: torch.Tensor, dilations: Sequence[int]):
    """For every dilation and neighbour offset, `maps` (B, C, H, W) shifted so that each pixel sees that neighbour;
    pixels beyond the border repeat the border (replicate padding), as in the reference PAMR."""
    height, width = maps.shape[-2:]
    for dilation in dilations:
        padded = F.pad(maps, (dilation,) * 4, mode="replicate")
        for row_offset, column_offset in NEIGHBOUR_OFFSETS:
            top, left = dilation * (1 + row_offset), dilation * (1 + column_offset)
            yield padded[..., top : top + height, left : left + width]


def _pamr_affinity(images: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Per-pixel weights (B, 8 * len(dilations), H, W) of the neighbours, summing to 1 over the neighbours."""
    neighbours = torch.stack(list(_neighbour_views(images, dilations)), dim=2)
    centres = images.unsqueeze(2)
    # The local spread is the (unbiased) standard deviation over every dilation's 3x3 window, centre included.
    windows = torch.cat([neighbours, centres.expand(-1, -1, len(dilations), -1, -1)], dim=2)
    spread = windows.std(dim=2, keepdim=True)
    affinity = -(neighbours - centres).abs() / (1e-8 + 0.1 * spread)
    return affinity.mean(dim=1).softmax(dim=1)


def pixel_adaptive_mask_refinement(
    images: torch.Tensor,
    masks: torch.Tensor,
    num_iterations: int = 10,
    dilations: Sequence[int] = (8, 16),
) -> torch.Tensor:
    """
    PAMR (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020): refine score maps by
    repeatedly replacing each pixel's scores with a weighted mean of its 8 neighbours' at each dilation, the weights
    being a softmax over the neighbours of -|image difference| / (0.1 * local standard deviation), averaged over the
    image channels. The weights depend on the image only, so edges in the image become edges in the masks.

    Args:
        images (`torch.Tensor` of shape `(batch_size, channels, height, width)`):
            The images that guide the refinement (any per-channel affine scaling, e.g. CLIP-normalised pixel
            values, gives the same weights).
        masks (`torch.Tensor` of shape `(batch_size, num_maps, height, width)`):
            The score maps to refine (logits or probabilities), at the images' size.
        num_iterations (`int`, *optional*, defaults to 10):
            How many propagation steps to run.
        dilations (`Sequence[int]`, *optional*, defaults to `(8, 16)`):
            Neighbour distances in pixels; SC-CLIP's released code uses (8, 16).

    Returns:
        `torch.Tensor` of shape `(batch_size, num_maps, height, width)`: the refined masks, in float32.
    """
    if images.ndim != 4 or masks.ndim != 4 or images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
        raise ValueError(
            "PAMR needs images (B, C, H, W) and masks (B, K, H, W) of the same batch size and height/width, got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}."
        )
    affinity = _pamr_affinity(images.float(), dilations)
    masks = masks.float()
    for _ in range(num_iterations):
        # Accumulate neighbour by neighbour: stacking every shifted copy of the masks would cost 8 * len(dilations)
        # times their memory.
        shifted_masks = _neighbour_views(masks, dilations)
        masks = sum(weight.unsqueeze(1) * shifted for weight, shifted in zip(affinity.unbind(1), shifted_masks))
    return masks


def _check_sizes(short_side: int, max_long_side: int) -> None:
    for name, value in (("short_side", short_side), ("max_long_side", max_long_side)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer number of pixels, got {value!r}.")


class SCCLIPImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for [`SCCLIPForSemanticSegmentation`] as the SC-CLIP benchmark protocol does (MMSegmentation's
    test pipeline): a keep-ratio resize so that the short side becomes `short_side` unless the long side would exceed
    `max_long_side` (each side rounded as floor(side * scale + 0.5)), bilinear without antialiasing like OpenCV's
    `INTER_LINEAR` on the 8-bit image, then CLIP's normalisation of the [0, 1] RGB values.

    Images may be Pillow images of any mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...), NumPy arrays (`(H, W)`,
    `(H, W, C)` or `(C, H, W)`; uint8, uint16, or float in [0, 1]) or torch tensors (same layouts), alone or in a
    list (or as one 4-dimensional batch). Transparency is composited onto white; 16-bit images are scaled to 8 bits;
    float images (Pillow "F" included) must hold values in [0, 1].

    Args:
        short_side (`int`, *optional*, defaults to 336):
            Target length of the short side (the protocol uses 560 for Cityscapes).
        max_long_side (`int`, *optional*, defaults to 2048):
            Cap on the long side; it wins over `short_side` for very elongated images.
        image_mean (`list[float]`, *optional*, defaults to CLIP's mean):
            Per-channel mean subtracted from the [0, 1] RGB values.
        image_std (`list[float]`, *optional*, defaults to CLIP's standard deviation):
            Per-channel standard deviation the values are divided by.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        short_side: int = 336,
        max_long_side: int = 2048,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_sizes(short_side, max_long_side)
        self.short_side = short_side
        self.max_long_side = max_long_side
        self.image_mean = list(OPENAI_CLIP_MEAN if image_mean is None else image_mean)
        self.image_std = list(OPENAI_CLIP_STD if image_std is None else image_std)

    def normalize_image(self, image: torch.Tensor) -> torch.Tensor:
        """A `(3, H, W)` uint8 (0-255) or float (0-1) RGB image, normalised with `image_mean` and `image_std`."""
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        mean = torch.tensor(self.image_mean).view(-1, 1, 1)
        std = torch.tensor(self.image_std).view(-1, 1, 1)
        return (image - mean) / std

    def preprocess(
        self,
        images: ImageInput,
        short_side: int | None = None,
        max_long_side: int | None = None,
        input_data_format: ChannelDimension | str | None = None,
        return_tensors: str | TensorType | None = "pt",
    ) -> BatchFeature:
        """
        Resize and normalise an image or a batch of images.

        Args:
            images (`ImageInput`):
                One image or a list of images (see the class docstring for the accepted types).
            short_side (`int`, *optional*):
                Overrides the processor's `short_side` for this call.
            max_long_side (`int`, *optional*):
                Overrides the processor's `max_long_side` for this call.
            input_data_format (`ChannelDimension` or `str`, *optional*):
                `"channels_first"` or `"channels_last"` for array/tensor images; inferred when not given.
            return_tensors (`str` or `TensorType`, *optional*, defaults to `"pt"`):
                Only PyTorch tensors are supported.

        Returns:
            [`BatchFeature`] with `pixel_values`, a `(batch_size, 3, H, W)` tensor when all resized images share a
            size and otherwise a list of `(3, H_i, W_i)` tensors, and `original_sizes`, the `(height, width)` of
            every input image (to resize predictions back with).
        """
        if return_tensors not in ("pt", TensorType.PYTORCH):
            raise ValueError(f"SCCLIPImageProcessor returns PyTorch tensors only ('pt'), got {return_tensors!r}.")
        short_side = self.short_side if short_side is None else short_side
        max_long_side = self.max_long_side if max_long_side is None else max_long_side
        _check_sizes(short_side, max_long_side)

        pixel_values, original_sizes = [], []
        for index, image in enumerate(make_image_list(images)):
            try:
                rgb = torch.from_numpy(to_rgb_array(image, input_data_format)).permute(2, 0, 1)
            except ValueError as error:
                raise ValueError(f"Image {index}: {error}") from error
            height, width = rgb.shape[1:]
            resized = resize_bilinear(rgb, get_resize_output_size(height, width, short_side, max_long_side))
            pixel_values.append(self.normalize_image(resized))
            original_sizes.append((height, width))

        if len({values.shape for values in pixel_values}) == 1:
            pixel_values = torch.stack(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values, "original_sizes": original_sizes})


SCCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["SCCLIPImageProcessor", "get_resize_output_size", "pixel_adaptive_mask_refinement", "resize_bilinear"]
