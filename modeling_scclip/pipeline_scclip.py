# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""Zero-shot semantic segmentation pipeline for SC-CLIP: free-text class names in, one mask per class out."""

import collections.abc
import os
from io import BytesIO
from typing import Any
from urllib.request import urlopen

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import no_collate_fn
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator


ZERO_SHOT_IMAGE_SEGMENTATION = "zero-shot-image-segmentation"
# SC-CLIP packs the sliding windows of all the images of a batch into the encoder's window batches, so batching images
# keeps the encoder full at no extra memory cost (the model bounds it with `config.window_batch_size`).
DEFAULT_BATCH_SIZE = 4


def download_image(url: str, timeout: float | None = None) -> bytes:
    """The bytes at an http(s) URL, or a `ValueError` saying why they could not be fetched."""
    try:
        with urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError as error:  # HTTP errors, unreachable hosts and timeouts are all OSErrors
        raise ValueError(f"Could not download the image {url}: {error}") from error


def load_image_any_mode(image, timeout: float | None = None) -> Image.Image:
    """
    A PIL image, local path or http(s) URL as a PIL image in its own mode, turned upright by its EXIF orientation.
    Unlike `transformers.image_utils.load_image`, it does not convert to RGB with Pillow, which saturates 16-bit
    images: the SC-CLIP image processor converts every mode itself. Raises a `ValueError` for anything else, a missing
    file, a failed download or data that is not an image.
    """
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image)
    if not isinstance(image, str):
        raise ValueError(f"An image must be a PIL image, a file path or an http(s) URL, got {type(image).__name__}.")
    if image.startswith(("http://", "https://")):
        source = BytesIO(download_image(image, timeout))
    elif os.path.isfile(image):
        source = image
    else:
        raise ValueError(f"Image not found: {image!r} is neither an existing file nor an http(s) URL.")
    try:
        return ImageOps.exif_transpose(Image.open(source))
    except UnidentifiedImageError as error:
        raise ValueError(f"Not a readable image: {image} (empty, or not in an image format Pillow reads).") from error


def collate_images_of_any_size(items: list[dict]) -> dict:
    """Batch preprocessed images of different sizes: SC-CLIP takes a list of (3, H, W) pixel tensors."""
    return {
        "pixel_values": [item["pixel_values"][0] for item in items],
        "target_size": torch.cat([item["target_size"] for item in items]),
    }


def class_queries(candidate_labels, background=None) -> list:
    """
    The classes the model is asked for, in label-map order: the background (one class, id 0) if any, then the
    candidate labels. A class is a name, synonyms separated by ";", or a list of synonyms; one string is a
    comma-separated list of classes, as in transformers' zero-shot pipelines.
    """
    if candidate_labels is None:
        raise ValueError("candidate_labels is required: the classes to segment, e.g. ['cat', 'dog', 'grass'].")
    labels = candidate_labels.split(",") if isinstance(candidate_labels, str) else list(candidate_labels)
    if not labels:
        raise ValueError("candidate_labels is empty: pass at least one class name, e.g. ['cat', 'dog', 'grass'].")
    return labels if background is None else [background, *labels]


def check_thresholds_have_background(background, prob_threshold: float = 0.0, area_threshold: float | None = None):
    """The thresholds assign pixels to class 0, which must then be a background class rather than a candidate label."""
    if background is None and (prob_threshold > 0 or area_threshold is not None):
        raise ValueError(
            "prob_threshold and area_threshold assign pixels to the background class 0: give background names too "
            "(e.g. 'background', or the stuff around your objects: 'sky;wall;floor'), or leave the thresholds unset."
        )


class SCCLIPZeroShotSegmentationPipeline(Pipeline):
    """
    Zero-shot (open-vocabulary) semantic segmentation with SC-CLIP: every pixel gets one of the `candidate_labels`.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> segmenter = pipeline("zero-shot-image-segmentation", model="path/to/scclip-checkpoint", trust_remote_code=True)
    >>> segments = segmenter("examples/house_tree_sky.png", candidate_labels=["sky", "tree", "grass", "house", "road"])
    >>> segment = segments[0]  # one per class present, in label order: label, score (mean probability), mask
    >>> segment["mask"].mode, segment["mask"].size  # 255 inside the segment, 0 outside, at the image's size
    ('L', (480, 360))

    >>> result = segmenter(
    ...     "examples/house_tree_sky.png", candidate_labels=["tree", "house"], background="sky; grass; road",
    ...     prob_threshold=0.2, return_label_map=True,
    ... )
    >>> result["labels"], result["label_map"].shape  # class ids: 0 the background, then the candidate labels
    (['sky', 'tree', 'house'], torch.Size([360, 480]))
    ```

    This pipeline is declared in SC-CLIP checkpoints (`custom_pipelines` of their config), so it loads from
    [`pipeline`] with the task identifier `"zero-shot-image-segmentation"` and `trust_remote_code=True`. It needs an
    `SCCLIPProcessor` (loaded with the checkpoint) for the images, the text queries and the post-processing.

    Images of one batch may have different sizes: all their sliding windows go through the model in one call. The
    default `batch_size` is 4 (transformers pipelines default to 1); pass `batch_size=` to `pipeline()` or to the call.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.processor, "encode_labels"):
            raise ValueError(
                f"{self.__class__.__name__} needs an SCCLIPProcessor (it encodes the labels and post-processes the "
                f"logits), got {type(self.processor).__name__}: pass processor=SCCLIPProcessor.from_pretrained(...)."
            )
        if self._batch_size is None:
            self._batch_size = DEFAULT_BATCH_SIZE

    def __call__(self, images, candidate_labels=None, **kwargs: Any):
        """
        Segment the image(s) into the given classes.

        Args:
            images (`str`, `PIL.Image.Image` or a list of them):
                An image as a local path, an http(s) URL or a PIL image (any mode: grayscale, RGBA and 16-bit images
                are converted by the image processor), or a list of images (the result is then a list).
            candidate_labels (`list` or `str`):
                The classes, one per entry: a name (`"cat"`), synonyms of one class separated by ";"
                (`"person; man; woman"`), or a list of synonyms. Each name is one text query; a class scores the best
                of its queries. The first name names the class in the output. One string is a comma-separated list
                of classes (`"cat, dog, grass; lawn"`).
            background (`str` or `list[str]`, *optional*):
                Names of a background class, prepended as class 0 (like PASCAL VOC's background). The thresholds below
                assign pixels to it, so they need it.
            logit_scale (`float`, *optional*, defaults to 40.0):
                Softmax temperature applied to the cosine similarities.
            prob_threshold (`float`, *optional*, defaults to 0.0):
                Pixels whose best class probability is below this become background (needs `background`).
            area_threshold (`float`, *optional*):
                Drop a class whose area is at most this share of the area of all non-background classes (needs
                `background`).
            pamr (`bool`, *optional*, defaults to `False`):
                Refine the class probabilities with PAMR (pixel-adaptive mask refinement) before the argmax.
            short_side (`int`, *optional*), max_long_side (`int`, *optional*):
                Override the image processor's resize (the image is resized to this short side, the long side
                capped), e.g. `short_side=560` for Cityscapes-like street scenes.
            return_label_map (`bool`, *optional*, defaults to `False`):
                Return, per image, a dict with the segments and the label map instead of the list of segments.
            timeout (`float`, *optional*):
                Seconds to wait for an image URL.

        Return:
            Per image, like transformers' image-segmentation pipeline, a list with one dict per class present in the
            prediction, in class order:

            - **label** (`str`) -- the class name (its first name).
            - **score** (`float`) -- the class's mean probability over its mask (transformers' image-segmentation
              pipeline gives the segment's class confidence for panoptic models and `None` for semantic ones).
            - **mask** (`PIL.Image.Image`) -- mode "L" mask at the image's size, 255 inside the segment, 0 outside.

            With `return_label_map=True`, per image a dict with **segments** (that list), **label_map** (`(H, W)`
            `torch.LongTensor` of class ids; with `background`, id 0 is the background and the candidate labels
            follow) and **labels** (the names of all class ids, present or not).
        """
        return super().__call__(images, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        background=None,
        logit_scale=None,
        prob_threshold=None,
        area_threshold=None,
        pamr=None,
        short_side=None,
        max_long_side=None,
        return_label_map=None,
        timeout=None,
    ):
        preprocess_params = {"timeout": timeout, "short_side": short_side, "max_long_side": max_long_side}
        forward_params = {"candidate_labels": candidate_labels, "background": background}
        postprocess_params = {
            **forward_params,
            "logit_scale": logit_scale,
            "prob_threshold": prob_threshold,
            "area_threshold": area_threshold,
            "pamr": pamr,
            "return_label_map": return_label_map,
        }
        # Only what was given: call parameters are merged over the ones given to the constructor.
        return tuple(
            {name: value for name, value in params.items() if value is not None}
            for params in (preprocess_params, forward_params, postprocess_params)
        )

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # Pipeline.get_iterator's collate concatenates pixel values, which needs images of one size.
        if isinstance(inputs, collections.abc.Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        collate_fn = no_collate_fn if batch_size == 1 else collate_images_of_any_size
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def preprocess(self, image, timeout=None, **image_kwargs):
        image = load_image_any_mode(image, timeout=timeout)
        inputs = self.processor(images=image, return_tensors="pt", **image_kwargs)
        return {"pixel_values": inputs["pixel_values"], "target_size": torch.tensor(inputs["original_sizes"])}

    def _forward(self, model_inputs, candidate_labels=None, background=None):
        queries = self.processor.encode_labels(self.model, class_queries(candidate_labels, background))
        pixel_values = model_inputs["pixel_values"]
        logits = self.model(pixel_values=pixel_values, text_embeds=queries.text_embeds).logits
        # `logits` first: the batch iterator reads the batch size from the first entry.
        return {"logits": logits, "target_size": model_inputs["target_size"], "pixel_values": pixel_values}

    def postprocess(
        self,
        model_outputs,
        candidate_labels=None,
        background=None,
        logit_scale=40.0,
        prob_threshold=0.0,
        area_threshold=None,
        pamr=False,
        return_label_map=False,
    ):
        check_thresholds_have_background(background, prob_threshold, area_threshold)
        # The labels were encoded for the forward pass: this is a cache hit.
        queries = self.processor.encode_labels(self.model, class_queries(candidate_labels, background))
        target_size = tuple(model_outputs["target_size"][0].tolist())
        label_maps, probabilities = self.processor.post_process_semantic_segmentation(
            model_outputs["logits"],
            target_sizes=[target_size],
            query_to_class=queries.query_to_class,
            logit_scale=logit_scale,
            prob_threshold=prob_threshold,
            area_threshold=area_threshold,
            return_probabilities=True,
            pamr_images=model_outputs["pixel_values"] if pamr else None,
        )
        segments = segments_from_label_map(label_maps[0], probabilities[0], queries.class_names)
        if return_label_map:
            return {"segments": segments, "label_map": label_maps[0], "labels": list(queries.class_names)}
        return segments


def segments_from_label_map(label_map: torch.Tensor, probabilities: torch.Tensor, class_names) -> list[dict]:
    """One `{"label", "score", "mask"}` per class in `label_map`; the score is its mean probability over its mask."""
    segments = []
    for class_id in torch.unique(label_map).tolist():
        inside = label_map == class_id
        mask = Image.fromarray(inside.numpy().astype(np.uint8) * 255)
        score = probabilities[class_id][inside].mean().item()
        segments.append({"label": class_names[class_id], "score": score, "mask": mask})
    return segments


# Registered so that `pipeline(ZERO_SHOT_IMAGE_SEGMENTATION, model=<loaded model>, processor=...)` finds this class and
# `Pipeline.save_pretrained` writes it into the config's `custom_pipelines`. Only the first import registers: the Hub
# copy of this file (loaded with trust_remote_code) must not replace the installed one or warn about it.
if ZERO_SHOT_IMAGE_SEGMENTATION not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        ZERO_SHOT_IMAGE_SEGMENTATION, pipeline_class=SCCLIPZeroShotSegmentationPipeline, pt_model=AutoModel
    )
