# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""Processor for SC-CLIP: images, class-name queries and the protocol's post-processing into label maps."""

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin
from transformers.utils import ModelOutput, logging

from .image_processing_scclip import SCCLIPImageProcessor, pixel_adaptive_mask_refinement, resize_bilinear


logger = logging.get_logger(__name__)

# The 80 ImageNet prompt templates of CLIP's zero-shot classification, as SC-CLIP's protocol uses them; "{}" is
# replaced by the class name.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# CLIP's text tower has 77 positions: longer prompts are cut (keeping the end-of-text token).
CLIP_MAX_TEXT_LENGTH = 77
# Label sets remembered per model; the oldest is dropped beyond this.
MAX_CACHED_LABEL_SETS = 32


@dataclass
class SCCLIPLabelEmbeddings(ModelOutput):
    """
    The queries of a list of labels, as [`SCCLIPProcessor.encode_labels`] returns them.

    Args:
        text_embeds (`torch.FloatTensor` of shape `(num_queries, projection_dim)`):
            One L2-normalised embedding per class name (query): the normalised mean of the normalised embeddings of
            the name in every prompt template. Pass them as `text_embeds` to the model.
        query_to_class (`torch.LongTensor` of shape `(num_queries,)`):
            The class index of every query, for [`SCCLIPProcessor.post_process_semantic_segmentation`].
        class_names (`list[str]`):
            One name per class: its first name.
    """

    text_embeds: torch.FloatTensor | None = None
    query_to_class: torch.LongTensor | None = None
    class_names: list[str] | None = None


def _normalized_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def parse_labels(labels: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """
    The names of every class: a label is a string, split on ";" into synonyms ("person; man; woman"), or a
    list/tuple of names. Raises a `ValueError` for an empty list, an empty name or a name given twice (ignoring case
    and spacing).
    """
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"`labels` must be a list of labels, e.g. ['cat', 'dog; puppy'], got {labels!r}.")
    if not labels:
        raise ValueError("`labels` is empty: give at least one label to segment.")
    classes = []
    for label in labels:
        names = label.split(";") if isinstance(label, str) else label
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"A label must be a string or a list of strings, got {label!r}.")
        names = [name.strip() for name in names]
        if not names or not all(names):
            raise ValueError(f"The label {label!r} has an empty name: every name needs some text.")
        classes.append(names)

    seen = {}
    for name in (name for names in classes for name in names):
        key = _normalized_name(name)
        if key in seen:
            raise ValueError(
                f"The name {name!r} is given twice (as {seen[key]!r} too): each name may belong to one class only."
            )
        seen[key] = name
    return classes


def class_probabilities(
    logits: torch.Tensor, query_to_class: torch.Tensor, num_classes: int, logit_scale: float
) -> torch.Tensor:
    """Per-class probabilities (C, H, W) from query logits (Q, H, W): the softmax over queries of the scaled logits,
    then for every class the maximum over its queries."""
    probabilities = (logit_scale * logits).softmax(dim=0)
    index = query_to_class.view(-1, 1, 1).expand_as(probabilities)
    empty = probabilities.new_zeros((num_classes, *probabilities.shape[1:]))
    return empty.scatter_reduce(0, index, probabilities, reduce="amax", include_self=False)


def suppress_small_classes(probabilities: torch.Tensor, area_threshold: float) -> torch.Tensor:
    """
    The protocol's area filter (class 0 is background): every other class whose argmax area is at most
    `area_threshold` times the argmax area of all non-background classes gets probability 0 everywhere.
    """
    areas = torch.bincount(probabilities.argmax(dim=0).flatten(), minlength=probabilities.shape[0])[1:]
    keep = areas > area_threshold * areas.sum()
    probabilities = probabilities.clone()
    probabilities[1:] *= keep.to(probabilities.dtype).view(-1, 1, 1)
    return probabilities


def label_map(probabilities: torch.Tensor, prob_threshold: float) -> torch.Tensor:
    """The most probable class of every pixel; pixels whose top probability is below `prob_threshold` get class 0."""
    top_probabilities, labels = probabilities.max(dim=0)
    labels[top_probabilities < prob_threshold] = 0
    return labels


def _as_list_of_maps(maps: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    """A (B, C, H, W) tensor or a list of (C, H, W) tensors as a list of (C, H, W) tensors."""
    if isinstance(maps, torch.Tensor) and maps.ndim == 4:
        return list(maps)
    if isinstance(maps, (list, tuple)) and maps and all(isinstance(m, torch.Tensor) and m.ndim == 3 for m in maps):
        return list(maps)
    raise ValueError(f"`{name}` must be a (batch_size, C, H, W) tensor or a non-empty list of (C, H, W) tensors.")


class SCCLIPProcessor(ProcessorMixin):
    r"""
    Wraps an [`SCCLIPImageProcessor`] and a CLIP tokenizer: prepares images, turns labels into query embeddings with
    the 80 ImageNet prompt templates, and post-processes the model's logits into label maps as SC-CLIP's benchmark
    protocol does.

    Args:
        image_processor ([`SCCLIPImageProcessor`]):
            The image processor.
        tokenizer ([`CLIPTokenizer`]):
            The CLIP tokenizer of the model's text tower.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
        # model -> {(names, templates, device, dtype): query embeddings}; weak keys let models be freed.
        self._query_embeddings_cache = weakref.WeakKeyDictionary()

    @classmethod
    def from_clip(cls, clip_name_or_path: str, **image_processor_kwargs) -> "SCCLIPProcessor":
        """
        The processor for SC-CLIP built from a CLIP checkpoint (Hub id or folder): its tokenizer, and the protocol's
        image processing with the checkpoint's normalisation constants (OpenCLIP models may use other ones than
        OpenAI's). `image_processor_kwargs` go to [`SCCLIPImageProcessor`], e.g. `short_side=560`.
        """
        tokenizer = AutoTokenizer.from_pretrained(clip_name_or_path)
        try:
            source = ImageProcessingMixin.get_image_processor_dict(clip_name_or_path)[0]
        except OSError:
            logger.warning(f"{clip_name_or_path} has no image processor config; using CLIP's default normalisation.")
            source = {}
        normalisation = {name: source[name] for name in ("image_mean", "image_std") if name in source}
        return cls(SCCLIPImageProcessor(**normalisation, **image_processor_kwargs), tokenizer)

    def __call__(self, images, **kwargs):
        """Prepare images: forwards everything to [`SCCLIPImageProcessor.preprocess`]."""
        return self.image_processor(images, **kwargs)

    def encode_labels(
        self,
        model: torch.nn.Module,
        labels: Sequence[str | Sequence[str]],
        templates: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> SCCLIPLabelEmbeddings:
        """
        Embed class labels as SC-CLIP's queries. Every name of every label is one query; its embedding is the
        L2-normalised mean of the L2-normalised text embeddings of the name in each template. The text tower runs
        once per (model, names, templates, device, dtype): later calls reuse the embeddings (do not modify them in
        place).

        Args:
            model (`SCCLIPForSemanticSegmentation`):
                A model with `get_text_features(input_ids, attention_mask)` (a `CLIPModel` works too).
            labels (`list[str | list[str]]`):
                One entry per class: a name, names separated by ";" ("person; man; woman"), or a list of names.
            templates (`list[str]`, *optional*):
                Prompt templates with "{}" where the name goes; defaults to the 80 ImageNet templates.
            batch_size (`int`, *optional*, defaults to 256):
                Prompts per text-tower forward pass.

        Returns:
            [`SCCLIPLabelEmbeddings`] with `text_embeds`, `query_to_class` and `class_names`.
        """
        classes = parse_labels(labels)
        templates = IMAGENET_TEMPLATES if templates is None else tuple(templates)
        if not templates or not all(isinstance(template, str) and "{}" in template for template in templates):
            raise ValueError('`templates` must be a non-empty list of strings, each with "{}" where the name goes.')
        names = tuple(name for class_names in classes for name in class_names)
        text_embeds = self._cached_query_embeddings(model, names, templates, batch_size)
        query_to_class = torch.tensor(
            [index for index, class_names in enumerate(classes) for _ in class_names], device=text_embeds.device
        )
        return SCCLIPLabelEmbeddings(
            text_embeds=text_embeds,
            query_to_class=query_to_class,
            class_names=[class_names[0] for class_names in classes],
        )

    def _cached_query_embeddings(
        self, model: torch.nn.Module, names: tuple[str, ...], templates: tuple[str, ...], batch_size: int
    ) -> torch.Tensor:
        parameter = next(model.parameters())
        key = (names, templates, parameter.device, parameter.dtype)
        model_cache = self._query_embeddings_cache.setdefault(model, {})
        if key not in model_cache:
            if len(model_cache) >= MAX_CACHED_LABEL_SETS:
                del model_cache[next(iter(model_cache))]
            model_cache[key] = self._query_embeddings(model, names, templates, batch_size, parameter.device)
        return model_cache[key]

    def _query_embeddings(
        self,
        model: torch.nn.Module,
        names: tuple[str, ...],
        templates: tuple[str, ...],
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor:
        prompts = [template.replace("{}", name) for name in names for template in templates]
        self._warn_about_truncated_names(names, prompts, len(templates))
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=CLIP_MAX_TEXT_LENGTH, return_tensors="pt"
        )
        features = []
        # Not under the caller's autocast: the cached embeddings must not depend on which call computed them first.
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for input_ids, attention_mask in zip(
                tokens["input_ids"].split(batch_size), tokens["attention_mask"].split(batch_size)
            ):
                batch_features = model.get_text_features(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
                )
                # `CLIPModel.get_text_features` returns an output whose `pooler_output` holds the projected features.
                features.append(getattr(batch_features, "pooler_output", batch_features))
        features = torch.cat(features)
        per_template = F.normalize(features.float(), dim=-1).view(len(names), len(templates), -1)
        return F.normalize(per_template.mean(dim=1), dim=-1).to(features.dtype)

    def _warn_about_truncated_names(self, names: tuple[str, ...], prompts: list[str], num_templates: int) -> None:
        lengths = [len(input_ids) for input_ids in self.tokenizer(prompts)["input_ids"]]
        for index, name in enumerate(names):
            longest = max(lengths[index * num_templates : (index + 1) * num_templates])
            if longest > CLIP_MAX_TEXT_LENGTH:
                logger.warning(
                    f"The prompts for the name {name!r} have up to {longest} tokens; CLIP reads "
                    f"{CLIP_MAX_TEXT_LENGTH}, so they are truncated. Use a shorter name."
                )

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        query_to_class: torch.Tensor | Sequence[int] | None = None,
        logit_scale: float = 40.0,
        prob_threshold: float = 0.0,
        area_threshold: float | None = None,
        return_probabilities: bool = False,
        pamr_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
        pamr_iterations: int = 10,
        pamr_dilations: Sequence[int] = (8, 16),
    ):
        """
        Turn the model's cosine-similarity logits into one label map per image, as SC-CLIP's protocol does: resize
        the logits (bilinear, `align_corners=False`) to the target size; optionally refine them with PAMR; take the
        softmax over queries of `logit_scale * logits`; a class's probability is the maximum over its queries; apply
        the area filter when `area_threshold` is set; label = the most probable class, and 0 (background) where that
        probability is below `prob_threshold`.

        PAMR follows the authors' released code: it refines the logits after their resize to the target size and
        before the softmax, guided by the model's input images bilinearly resized to the same size.

        Args:
            outputs (`SCCLIPSemanticSegmenterOutput`, `torch.Tensor` or `list[torch.Tensor]`):
                The model's output, or its `logits`: a `(batch_size, num_queries, H, W)` tensor or a list of
                `(num_queries, H_i, W_i)` tensors.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                `(height, width)` of every prediction, usually the processor's `original_sizes`. Defaults to the
                logits' size.
            query_to_class (`torch.LongTensor` of shape `(num_queries,)`, *optional*):
                The class of every query (from [`~SCCLIPProcessor.encode_labels`]). Defaults to one class per query.
            logit_scale (`float`, *optional*, defaults to 40.0):
                Multiplies the cosine logits before the softmax.
            prob_threshold (`float`, *optional*, defaults to 0.0):
                Pixels whose top class probability is below it become class 0.
            area_threshold (`float`, *optional*):
                When set, classes other than 0 whose predicted area is at most this share of the area of all
                classes other than 0 are removed.
            return_probabilities (`bool`, *optional*, defaults to `False`):
                Also return every image's class probabilities `(num_classes, H, W)` (after the area filter).
            pamr_images (`torch.Tensor` or `list[torch.Tensor]`, *optional*):
                The images the logits were computed from (the processor's `pixel_values`); when given, PAMR refines
                the logits.
            pamr_iterations (`int`, *optional*, defaults to 10):
                PAMR's propagation steps.
            pamr_dilations (`Sequence[int]`, *optional*, defaults to `(8, 16)`):
                PAMR's neighbour distances.

        Returns:
            `list[torch.LongTensor]`: one `(height, width)` label map per image; with `return_probabilities=True` a
            tuple `(label_maps, probability_maps)`.
        """
        logits = _as_list_of_maps(getattr(outputs, "logits", outputs), "logits")
        num_queries = logits[0].shape[0]
        query_to_class = self._check_query_to_class(query_to_class, num_queries)
        num_classes = int(query_to_class.max()) + 1
        if target_sizes is None:
            target_sizes = [map_.shape[-2:] for map_ in logits]
        if len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for {len(logits)} images: give one per image.")
        if pamr_images is not None:
            pamr_images = _as_list_of_maps(pamr_images, "pamr_images")
            if len(pamr_images) != len(logits):
                raise ValueError(f"Got {len(pamr_images)} PAMR images for {len(logits)} images: give one per image.")
        if area_threshold is not None and area_threshold < 0:
            raise ValueError(f"`area_threshold` must be None or at least 0, got {area_threshold}.")

        label_maps, probability_maps = [], []
        for index, image_logits in enumerate(logits):
            size = tuple(int(length) for length in target_sizes[index])
            image_logits = resize_bilinear(image_logits, size)
            if pamr_images is not None:
                guide = resize_bilinear(pamr_images[index].to(image_logits.device), size)
                image_logits = pixel_adaptive_mask_refinement(
                    guide[None], image_logits[None], pamr_iterations, pamr_dilations
                )[0]
            probabilities = class_probabilities(
                image_logits, query_to_class.to(image_logits.device), num_classes, logit_scale
            )
            if area_threshold is not None:
                probabilities = suppress_small_classes(probabilities, area_threshold)
            label_maps.append(label_map(probabilities, prob_threshold))
            probability_maps.append(probabilities)
        return (label_maps, probability_maps) if return_probabilities else label_maps

    @staticmethod
    def _check_query_to_class(query_to_class, num_queries: int) -> torch.Tensor:
        if query_to_class is None:
            return torch.arange(num_queries)
        query_to_class = torch.as_tensor(query_to_class)
        if query_to_class.shape != (num_queries,) or query_to_class.is_floating_point() or query_to_class.min() < 0:
            raise ValueError(
                f"`query_to_class` must hold one non-negative class index per query ({num_queries}), got "
                f"{query_to_class.tolist()}."
            )
        return query_to_class.long()


SCCLIPProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["IMAGENET_TEMPLATES", "SCCLIPLabelEmbeddings", "SCCLIPProcessor"]
