# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""Load SC-CLIP and its processor from an SC-CLIP checkpoint, or from a CLIP checkpoint converted on the fly."""

import argparse
import os

from transformers import PreTrainedConfig

from .configuration_scclip import SCCLIP_SETTINGS, SCCLIPConfig, scclip_preset
from .modeling_scclip import SCCLIPForSemanticSegmentation
from .processing_scclip import SCCLIPProcessor


DEFAULT_CLIP_CHECKPOINT = "openai/clip-vit-base-patch16"
LOCAL_CHECKPOINT_HINT = (
    "Without internet, pass a local folder instead: a CLIP checkpoint (on a machine online, "
    f"`hf download {DEFAULT_CLIP_CHECKPOINT} --local-dir clip-vit-base-patch16`, then copy the folder over) or an "
    "SC-CLIP folder written by scripts/convert_clip_to_scclip.py."
)


def checkpoint_model_type(name_or_path: str) -> str | None:
    """The `model_type` of a checkpoint's config; an `OSError` saying how to use a local folder if none is found."""
    try:
        return PreTrainedConfig.get_config_dict(name_or_path)[0].get("model_type")
    except OSError as error:
        where = "a folder without config.json" if os.path.isdir(name_or_path) else "no local folder"
        raise OSError(
            f"Could not load the model {name_or_path!r} ({where}, and not found on the Hub or in its cache): {error}\n"
            f"{LOCAL_CHECKPOINT_HINT}"
        ) from error


def load_scclip_model_and_processor(
    name_or_path: str, preset: str = "auto", **config_overrides
) -> tuple[SCCLIPForSemanticSegmentation, SCCLIPProcessor]:
    """
    SC-CLIP in eval mode and its processor, from an SC-CLIP checkpoint as saved, or from a CLIP checkpoint
    (`model_type` "clip") converted with [`SCCLIPForSemanticSegmentation.from_clip`].

    Args:
        name_or_path (`str`):
            Hub id or local folder of an SC-CLIP or a CLIP checkpoint.
        preset (`str`, *optional*, defaults to `"auto"`):
            SC-CLIP's layer preset ([`scclip_preset`]); `"auto"` keeps an SC-CLIP checkpoint's own values.
        config_overrides:
            [`SCCLIPConfig`] fields to change, checked like any SC-CLIP config (e.g. `use_attention_enhancement=False`).
    """
    model_type = checkpoint_model_type(name_or_path)
    if model_type == "clip":
        model = SCCLIPForSemanticSegmentation.from_clip(name_or_path, preset=preset, **config_overrides)
        processor = SCCLIPProcessor.from_clip(name_or_path)
    elif model_type == SCCLIPConfig.model_type:
        config = SCCLIPConfig.from_pretrained(name_or_path)
        if preset != "auto":
            config_overrides = {**scclip_preset(config.num_hidden_layers, preset), **config_overrides}
        # Rebuilt rather than updated, so that the changed values are checked like those of any new config.
        config = SCCLIPConfig.from_dict({**config.to_dict(), **config_overrides})
        model = SCCLIPForSemanticSegmentation.from_pretrained(name_or_path, config=config)
        processor = SCCLIPProcessor.from_pretrained(name_or_path)
    else:
        raise ValueError(
            f"{name_or_path!r} holds a {model_type!r} model: give a CLIP ('clip') or SC-CLIP ('scclip') checkpoint."
        )
    return model.eval(), processor


def add_scclip_settings_argument(parser: argparse.ArgumentParser) -> None:
    """The scripts' repeatable `--set NAME=VALUE` option, collected in `args.settings` for `parse_scclip_settings`."""
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"Change an SC-CLIP setting (repeatable), e.g. use_attention_enhancement=false; one of "
        f"{', '.join(SCCLIP_SETTINGS)}.",
    )


__all__ = ["add_scclip_settings_argument", "checkpoint_model_type", "load_scclip_model_and_processor"]
