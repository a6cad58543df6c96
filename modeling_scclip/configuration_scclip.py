# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""SC-CLIP model configuration."""

import types
import typing
from collections.abc import Sequence
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig
from transformers.utils.versions import require_version


# The oldest transformers with what SCCLIPConfig is built on (`sub_configs_defaults`, from 5.21). Older 5.x releases
# fail on this file with errors that do not name the cause, and Hub users (trust_remote_code) get no pip check.
TRANSFORMERS_REQUIREMENT = "transformers>=5.21,<6"
require_version(
    TRANSFORMERS_REQUIREMENT, f"SC-CLIP needs {TRANSFORMERS_REQUIREMENT}: pip install '{TRANSFORMERS_REQUIREMENT}'"
)

ANOMALY_DETECTORS = ("lof", "standard_lof", "l2_norm")

# SC-CLIP's depth-dependent hyper-parameters, layers 1-indexed as in the paper. The two reference presets are the
# authors' released values for ViT-B/16 (12 layers) and ViT-L/14 (24 layers).
SCCLIP_PRESETS = {
    "vit-b16": {
        "pre_adjust_layer": 9,
        "post_adjust_layer": 4,
        "fusion_start_layer": 4,
        "fusion_end_layer": 10,
        "cls_residual_weight": 0.3,
    },
    "vit-l14": {
        "pre_adjust_layer": 17,
        "post_adjust_layer": 7,
        "fusion_start_layer": 9,
        "fusion_end_layer": 19,
        "cls_residual_weight": 0.1,
    },
}
_PRESET_DEPTHS = {12: "vit-b16", 24: "vit-l14"}
_LAYER_FIELDS = ("pre_adjust_layer", "post_adjust_layer", "fusion_start_layer", "fusion_end_layer")


def scclip_preset(num_hidden_layers: int, preset: str = "auto") -> dict:
    """
    SC-CLIP's depth-dependent hyper-parameters for a vision tower of `num_hidden_layers` layers.

    `preset="auto"` picks "vit-b16" for 12 layers and "vit-l14" for 24. Any other depth gets the ViT-B/16 values with
    every layer index scaled by `num_hidden_layers / 12` (rounded, clamped to 1..L-1): a heuristic the paper does not
    cover, so check it on your model.
    """
    if preset != "auto":
        if preset not in SCCLIP_PRESETS:
            raise ValueError(f"Unknown SC-CLIP preset {preset!r}: choose 'auto' or one of {sorted(SCCLIP_PRESETS)}.")
        return dict(SCCLIP_PRESETS[preset])
    if num_hidden_layers in _PRESET_DEPTHS:
        return dict(SCCLIP_PRESETS[_PRESET_DEPTHS[num_hidden_layers]])
    values = dict(SCCLIP_PRESETS["vit-b16"])
    for name in _LAYER_FIELDS:
        scaled = round(values[name] * num_hidden_layers / 12)
        values[name] = min(max(scaled, 1), num_hidden_layers - 1)
    return values


@strict
class SCCLIPConfig(CLIPVisionConfig):
    r"""
    Configuration of [`SCCLIPForSemanticSegmentation`]: a CLIP vision tower (every [`CLIPVisionConfig`] field), the
    CLIP text tower that encodes the class names (`text_config`), the shared `projection_dim`, and SC-CLIP's
    hyper-parameters. Layers are 1-indexed as in the paper: layer `l` is the output of the `l`-th encoder layer.

    The depth-dependent fields (`pre_adjust_layer`, `post_adjust_layer`, `fusion_start_layer`, `fusion_end_layer`,
    `cls_residual_weight`) default to `None`, which resolves them from the vision depth with [`scclip_preset`]:
    ViT-B/16 values for 12 layers, ViT-L/14 values for 24 layers, scaled B/16 layer indices otherwise.

    Args:
        text_config (`dict` or `CLIPTextConfig`, *optional*):
            The CLIP text tower's configuration.
        projection_dim (`int`, *optional*, defaults to 512):
            Width of the joint image-text embedding space.
        anomaly_detector (`str`, *optional*, defaults to `"lof"`):
            How anomaly tokens are found: `"lof"` (the authors' released LOF variant), `"standard_lof"` (textbook LOF,
            as scikit-learn's `LocalOutlierFactor`) or `"l2_norm"` (the tokens of largest L2 norm, the released
            code's first version).
        lof_n_neighbors (`int`, *optional*, defaults to 30):
            Neighbours `k` of the LOF. Windows with fewer than `k + 1` patches use `k = patches - 1`.
        lof_contamination (`float`, *optional*, defaults to 0.05):
            Expected share of anomaly tokens, in (0, 0.5].
        pre_adjust_layer (`int`, *optional*):
            Layer whose (resolved) patch similarities aggregate the features before the final attention.
        post_adjust_layer (`int`, *optional*):
            Layer whose patch similarities aggregate the features after the final attention.
        fusion_start_layer (`int`, *optional*):
            First layer (inclusive) summed for the multi-level fusion.
        fusion_end_layer (`int`, *optional*):
            Last layer (inclusive) summed for the multi-level fusion.
        similarity_threshold (`float`, *optional*, defaults to 0.4):
            Similarities below this value are zeroed by the aggregation operator (β in the paper).
        attention_temperature (`float`, *optional*, defaults to 3.0):
            Scale of the mean-centred pre-adjust similarities that form the enhanced attention.
        cls_residual_weight (`float`, *optional*):
            Weight of the CLS token added to every patch after the self-calibrated attention.
        slide_crop_size (`int`, *optional*, defaults to 224):
            Side of the sliding windows of whole-image inference, in pixels.
        slide_stride (`int`, *optional*, defaults to 112):
            Stride of the sliding windows, in pixels.
        window_batch_size (`int`, *optional*, defaults to 64):
            How many windows go through the encoder together; bounds memory on large images. On a GPU, fewer and
            larger passes launch fewer kernels (a 560x1120 image's 36 windows in one pass instead of three).
        use_anomaly_resolution (`bool`, *optional*, defaults to `True`):
            Ablation switch (Table 2): find and resolve anomaly tokens.
        use_attention_enhancement (`bool`, *optional*, defaults to `True`):
            Ablation switch: add the similarity-based attention to the K-K attention.
        use_feature_aggregation (`bool`, *optional*, defaults to `True`):
            Ablation switch: the pre- and post-adjust aggregations.
        use_multi_level_fusion (`bool`, *optional*, defaults to `True`):
            Ablation switch: the fused intermediate layers.

    Example:

    ```python
    >>> from modeling_scclip import SCCLIPConfig, SCCLIPForSemanticSegmentation

    >>> config = SCCLIPConfig(patch_size=16)  # ViT-B/16 shape, SC-CLIP's ViT-B/16 preset
    >>> config.pre_adjust_layer, config.fusion_start_layer, config.fusion_end_layer
    (9, 4, 10)
    >>> model = SCCLIPForSemanticSegmentation(config)
    ```"""

    model_type = "scclip"
    sub_configs_defaults = {"text_config": CLIPTextConfig}

    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int = 512
    anomaly_detector: Literal["lof", "standard_lof", "l2_norm"] = "lof"
    lof_n_neighbors: int = 30
    lof_contamination: float | int = 0.05
    pre_adjust_layer: int | None = None
    post_adjust_layer: int | None = None
    fusion_start_layer: int | None = None
    fusion_end_layer: int | None = None
    similarity_threshold: float | int = 0.4
    attention_temperature: float | int = 3.0
    cls_residual_weight: float | int | None = None
    slide_crop_size: int = 224
    slide_stride: int = 112
    window_batch_size: int = 64
    use_anomaly_resolution: bool = True
    use_attention_enhancement: bool = True
    use_feature_aggregation: bool = True
    use_multi_level_fusion: bool = True

    def __post_init__(self, **kwargs):
        for name, value in scclip_preset(self.num_hidden_layers).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__(**kwargs)
        self.check_scclip_values()

    @property
    def num_patches_per_window(self) -> int:
        """Patch tokens of one full sliding window."""
        return (self.slide_crop_size // self.patch_size) ** 2

    def check_scclip_values(self):
        """Raise a `ValueError` naming the first SC-CLIP field whose value cannot work with this vision tower."""
        last_inner_layer = self.num_hidden_layers - 1
        if last_inner_layer < 1:
            raise ValueError(f"num_hidden_layers must be at least 2 for SC-CLIP, got {self.num_hidden_layers}.")
        for name in _LAYER_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= last_inner_layer:
                raise ValueError(
                    f"{name} must be a layer index in 1..{last_inner_layer} (layers are 1-indexed and the last layer "
                    f"is replaced by SC-CLIP), got {value!r}."
                )
        if self.fusion_start_layer > self.fusion_end_layer:
            raise ValueError(
                f"fusion_start_layer ({self.fusion_start_layer}) must not exceed fusion_end_layer "
                f"({self.fusion_end_layer})."
            )
        if not 0 < self.lof_contamination <= 0.5:
            raise ValueError(f"lof_contamination must be in (0, 0.5], got {self.lof_contamination}.")
        if self.slide_crop_size < self.patch_size:
            raise ValueError(
                f"slide_crop_size ({self.slide_crop_size}) must be at least the patch size ({self.patch_size})."
            )
        if not 1 <= self.lof_n_neighbors < self.num_patches_per_window:
            raise ValueError(
                f"lof_n_neighbors must be in 1..{self.num_patches_per_window - 1} (fewer than the "
                f"{self.num_patches_per_window} patches of a {self.slide_crop_size}-pixel window), "
                f"got {self.lof_n_neighbors}."
            )
        if not 1 <= self.slide_stride <= self.slide_crop_size:
            raise ValueError(
                f"slide_stride must be in 1..slide_crop_size ({self.slide_crop_size}), got {self.slide_stride}."
            )
        if self.window_batch_size < 1:
            raise ValueError(f"window_batch_size must be at least 1, got {self.window_batch_size}.")
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold must be in [-1, 1] (it thresholds cosine similarities), "
                f"got {self.similarity_threshold}."
            )
        if self.attention_temperature <= 0:
            raise ValueError(f"attention_temperature must be positive, got {self.attention_temperature}.")


# SC-CLIP's own hyper-parameters: what `--set name=value` of the scripts may change. The CLIP fields, the text config
# and the projection width describe the checkpoint's weights.
SCCLIP_SETTINGS = tuple(
    name
    for name in SCCLIPConfig.__dataclass_fields__
    if name not in CLIPVisionConfig.__dataclass_fields__ and name not in ("text_config", "projection_dim")
)
_BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse_setting(name: str, text: str):
    """The value of `--set name=text`, converted to the type `SCCLIPConfig.<name>` declares."""
    annotation = SCCLIPConfig.__dataclass_fields__[name].type
    if typing.get_origin(annotation) is Literal:
        if text not in typing.get_args(annotation):
            raise ValueError(f"--set {name}={text}: choose one of {', '.join(typing.get_args(annotation))}.")
        return text
    field_types = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if bool in field_types:
        if text.lower() not in _BOOLEAN_WORDS:
            raise ValueError(f"--set {name}={text}: expected true or false.")
        return _BOOLEAN_WORDS[text.lower()]
    number_type = float if float in field_types else int
    try:
        return number_type(text)
    except ValueError:
        raise ValueError(f"--set {name}={text}: expected a number ({number_type.__name__}).") from None


def parse_scclip_settings(assignments: Sequence[str]) -> dict:
    """
    Parse command-line assignments `["name=value", ...]` into [`SCCLIPConfig`] overrides, each value converted to its
    field's type (booleans as true/false, yes/no or 1/0). Unknown names raise a `ValueError` listing the valid ones.
    """
    overrides = {}
    for assignment in assignments:
        name, separator, text = (part.strip() for part in assignment.partition("="))
        if not separator or not name:
            raise ValueError(f"--set takes NAME=VALUE, got {assignment!r}.")
        if name not in SCCLIP_SETTINGS:
            raise ValueError(f"--set {name}: not an SC-CLIP setting; choose one of {', '.join(SCCLIP_SETTINGS)}.")
        overrides[name] = _parse_setting(name, text)
    return overrides


__all__ = ["SCCLIPConfig", "SCCLIP_PRESETS", "SCCLIP_SETTINGS", "parse_scclip_settings", "scclip_preset"]
