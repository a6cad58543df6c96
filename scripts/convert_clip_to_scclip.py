#!/usr/bin/env python
# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
Convert a Hugging Face CLIP checkpoint into a self-contained SC-CLIP repository, and optionally upload it to the Hub.

    python scripts/convert_clip_to_scclip.py --clip openai/clip-vit-base-patch16 --output scclip-vit-base-patch16
    python scripts/convert_clip_to_scclip.py --clip openai/clip-vit-large-patch14 --output scclip-vit-large-patch14 \\
        --set slide_stride=224 --push-to-hub my-name/scclip-vit-large-patch14 --dry-run

The folder holds the weights (safetensors), the config with its `auto_map` and `custom_pipelines`, the processor
(tokenizer and image processing), the `modeling_scclip` code files those entries need and a filled model card, so that

    AutoModel.from_pretrained(folder, trust_remote_code=True)
    AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True)

work without this project installed. `--output` alone, without `--clip`, checks and uploads a folder converted before.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from check_scclip_repo import check_scclip_repository
from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.constants import HF_HUB_OFFLINE
from huggingface_hub.errors import EntryNotFoundError

from modeling_scclip.configuration_scclip import (
    SCCLIP_PRESETS,
    SCCLIP_SETTINGS,
    SCCLIPConfig,
    parse_scclip_settings,
    scclip_preset,
)
from modeling_scclip.image_processing_scclip import SCCLIPImageProcessor
from modeling_scclip.loading_scclip import add_scclip_settings_argument, checkpoint_model_type
from modeling_scclip.modeling_scclip import SCCLIPForSemanticSegmentation
from modeling_scclip.pipeline_scclip import SCCLIPZeroShotSegmentationPipeline
from modeling_scclip.processing_scclip import SCCLIPProcessor


logger = logging.getLogger("convert_clip_to_scclip")

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"
CARD_ARCHITECTURE_FIELDS = ("num_hidden_layers", "patch_size", "hidden_size", "image_size", "projection_dim")
CARD_TAGS = ["scclip", "clip", "zero-shot-image-segmentation", "open-vocabulary-segmentation", "training-free"]


class ConversionError(ValueError):
    """A failure the user can fix (a checkpoint that cannot be loaded, bad settings): reported without traceback."""


def build_scclip(clip_name_or_path: str, preset: str = "auto", overrides: dict | None = None):
    """Build the SC-CLIP model and its processor from a CLIP checkpoint name or folder."""
    try:
        model_type = checkpoint_model_type(clip_name_or_path)
        if model_type != "clip":
            raise ConversionError(
                f"{clip_name_or_path!r} holds a {model_type!r} model; --clip needs a CLIP checkpoint."
            )
        model = SCCLIPForSemanticSegmentation.from_clip(clip_name_or_path, preset=preset, **(overrides or {}))
        processor = SCCLIPProcessor.from_clip(clip_name_or_path)
    except OSError as error:
        offline = "set: only checkpoints already in the Hugging Face cache load" if HF_HUB_OFFLINE else "not set"
        raise ConversionError(f"{error}\nHF_HUB_OFFLINE is {offline}.") from error
    return model, processor


def _auto_map_reference(cls: type) -> str:
    """The `"module.Class"` string transformers writes in an `auto_map` for a class of this package."""
    return f"{cls.__module__.split('.')[-1]}.{cls.__name__}"


def save_scclip_repository(model, processor, output_dir: Path):
    """
    Write the model, the processor, the custom pipeline and their code files to `output_dir`.

    The pipeline is saved the way transformers records a registered custom pipeline: `Pipeline.save_pretrained` writes
    its task into `config.custom_pipelines`, so `pipeline(task, model=folder, trust_remote_code=True)` finds the class.
    The classes are registered for their auto classes, so each `save_pretrained` also copies the module defining the
    class and every module it imports relatively: exactly the code files the Hub loads (not, e.g., loading_scclip.py).
    """
    # The package registers its classes for the auto classes, and the pipeline for its task, when imported.
    # AutoProcessor falls back on the model config's auto_map when no processor file names the class.
    model.config.auto_map = {
        **getattr(model.config, "auto_map", {}),
        "AutoProcessor": _auto_map_reference(SCCLIPProcessor),
        "AutoImageProcessor": _auto_map_reference(SCCLIPImageProcessor),
    }
    segmenter = SCCLIPZeroShotSegmentationPipeline(model=model, processor=processor)
    segmenter.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    # transformers 5 reads the image processor from processor_config.json; tools that look for the classic
    # preprocessor_config.json find it too.
    processor.image_processor.save_pretrained(output_dir)


def _settings_summary(summary: dict, result: dict) -> str:
    """What the evaluation changed from the checkpoint and the protocol: `--set` overrides and `--limit`."""
    changes = [f"{name}={json.dumps(value)}" for name, value in summary.get("config_overrides", {}).items()]
    if result.get("settings", {}).get("limit") is not None:
        changes.append(f"first {result['settings']['limit']} images only")
    return ", ".join(changes) or "as converted, full protocol"


def read_evaluation_results(paths: list[str]) -> list[dict]:
    """
    Read the JSON files `eval/evaluate_benchmark.py --output` writes into model card rows: one per benchmark, plus the
    mean when a file covers all eight.
    """
    rows = []
    for path in paths:
        try:
            summary = json.loads(Path(path).read_text(encoding="utf-8"))
            model, results = summary["model"], summary["benchmarks"].values()
            rows += [
                {
                    "benchmark": result["benchmark"],
                    "miou": f"{result['mIoU']:.1f}",
                    "images": result["num_images"],
                    "model": model,
                    "settings": _settings_summary(summary, result),
                }
                for result in results
            ]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ConversionError(
                f"{path} is not an output of eval/evaluate_benchmark.py --output (it needs 'model' and 'benchmarks' "
                f"with 'benchmark', 'mIoU' and 'num_images' per benchmark): {error!r}"
            ) from error
        if summary.get("mean_miou") is not None:
            mean = {"benchmark": "mean of the eight", "miou": f"{summary['mean_miou']:.1f}", "images": "all"}
            rows.append({**mean, "model": model, "settings": _settings_summary(summary, {})})
    return rows


def base_model_datasets(clip_name_or_path: str) -> list[str]:
    """
    The Hub dataset ids in the `datasets` metadata of the source checkpoint's model card: the data its CLIP weights
    were trained on, which SC-CLIP keeps as they are (it trains on nothing). Empty when there is no readable card or it
    lists none, as OpenAI's CLIP cards (their training set is not on the Hub).
    """
    source = clip_name_or_path
    if Path(clip_name_or_path).is_dir():
        source = Path(clip_name_or_path) / "README.md"
        if not source.is_file():
            return []
    try:
        datasets = ModelCard.load(source).data.datasets or []
    except (OSError, EntryNotFoundError, ValueError) as error:  # offline, no card, or a card with broken metadata
        logger.warning("No datasets metadata taken from the model card of %s: %s", clip_name_or_path, error)
        return []
    return [datasets] if isinstance(datasets, str) else list(datasets)


def describe_preset(num_hidden_layers: int, preset: str) -> str:
    """Say which layer values `preset` gave a vision tower of `num_hidden_layers` layers."""
    if preset != "auto":
        return f"`{preset}`"
    resolved = scclip_preset(num_hidden_layers)
    for name, values in SCCLIP_PRESETS.items():
        if values == resolved:
            return f"`auto` (the `{name}` values, chosen from the {num_hidden_layers}-layer depth)"
    return f"`auto` (the `vit-b16` layer indices scaled to {num_hidden_layers} layers, a heuristic of this port)"


def render_model_card(
    config: SCCLIPConfig,
    base_model_name: str,
    repo_id: str,
    base_model: str | None = None,
    preset: str = "auto",
    overrides: dict | None = None,
    evaluation_results: list[dict] | None = None,
    license: str = "mit",
    datasets: list[str] | None = None,
) -> ModelCard:
    """
    Fill `model_card.md` for a converted checkpoint: its base model (`base_model` is its Hub id, for the metadata and
    the link; `base_model_name` names it in the text), the usage code for `repo_id`, its SC-CLIP settings, and measured
    numbers only when `evaluation_results` (rows of [`read_evaluation_results`]) are given. `datasets` are Hub dataset
    ids for the metadata: the data the CLIP weights were trained on ([`base_model_datasets`]), left out when empty.
    """
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=CARD_TAGS,
        base_model=base_model,
        datasets=datasets or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        base_model_name=base_model_name,
        repo_id=repo_id,
        preset_description=describe_preset(config.num_hidden_layers, preset),
        overrides=[f"`{name}={json.dumps(value)}`" for name, value in (overrides or {}).items()],
        settings=[(name, json.dumps(getattr(config, name))) for name in SCCLIP_SETTINGS],
        measured_results=evaluation_results or [],
        **{name: getattr(config, name) for name in CARD_ARCHITECTURE_FIELDS},
    )


def list_upload(folder: Path) -> list[tuple[str, int]]:
    """Every file `upload_folder` would send from `folder`, with its size in bytes."""
    return [
        (path.relative_to(folder).as_posix(), path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".cache" not in path.relative_to(folder).parts
    ]


def print_upload_listing(folder: Path, repo_id: str | None):
    """Print what `push_to_hub` would upload from `folder`: one line per file with its size, after a summary line."""
    files = list_upload(folder)
    total = sum(size for _, size in files)
    print(f"Dry run: would upload {len(files)} files ({total:,} bytes) to {repo_id or 'the Hub'}:")
    for name, size in files:
        print(f"{size:>14,}  {name}")


def push_to_hub(folder: Path, repo_id: str, private: bool):
    """Create (or reuse) the Hub model repository `repo_id` and upload `folder` to it in one commit."""
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload SC-CLIP converted from CLIP")
    except OSError as error:
        raise ConversionError(
            f"Could not upload {folder} to {repo_id}: {error}\nLog in with `hf auth login` (or set HF_TOKEN) and "
            "check the network; HF_HUB_OFFLINE must not be set for an upload."
        ) from error
    logger.info("Uploaded to %s", url)


def convert(args) -> None:
    """Convert `args.clip` into the SC-CLIP repository folder `args.output`, model card included."""
    if args.output.is_dir() and any(args.output.iterdir()):
        raise ConversionError(
            f"{args.output} is not empty: give a new or empty --output folder, so that no stale file is uploaded."
        )
    overrides = parse_scclip_settings(args.settings)
    evaluation_results = read_evaluation_results(args.eval_results)
    base_model = args.base_model or (None if Path(args.clip).is_dir() else args.clip)
    logger.info("Loading the CLIP checkpoint %s", args.clip)
    model, processor = build_scclip(args.clip, args.preset, overrides)
    logger.info(
        "Writing SC-CLIP, layer preset %s, to %s",
        describe_preset(model.config.num_hidden_layers, args.preset),
        args.output,
    )
    save_scclip_repository(model, processor, args.output)
    card = render_model_card(
        model.config,
        base_model_name=base_model or Path(args.clip).name,
        base_model=base_model,
        repo_id=args.push_to_hub or args.output.name,
        preset=args.preset,
        overrides=overrides,
        evaluation_results=evaluation_results,
        license=args.license,
        datasets=list(dict.fromkeys(base_model_datasets(args.clip) + args.dataset)),
    )
    card.save(args.output / "README.md")
    logger.info("Wrote the model card %s", args.output / "README.md")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", help="Hub id or local folder of a CLIPModel checkpoint in transformers format.")
    parser.add_argument("--output", required=True, type=Path, help="Folder to write the SC-CLIP repository to.")
    parser.add_argument("--preset", default="auto", choices=["auto", *SCCLIP_PRESETS], help="SC-CLIP layer preset.")
    add_scclip_settings_argument(parser)
    parser.add_argument(
        "--base-model", help="Hub id of the source checkpoint for the model card, when --clip is a local folder."
    )
    parser.add_argument(
        "--eval-results",
        nargs="+",
        default=[],
        metavar="FILE",
        help="JSON outputs of eval/evaluate_benchmark.py to report in the model card as measured numbers.",
    )
    parser.add_argument("--license", default="mit", help="License of the model card (that of the base weights).")
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="HUB_ID",
        help="Hub id of a dataset the CLIP weights were trained on, for the card's `datasets` metadata (repeatable); "
        "added to those the source checkpoint's card lists.",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Upload the folder to this Hub model repository.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    parser.add_argument("--dry-run", action="store_true", help="List the files that would be uploaded; upload none.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        if args.clip is not None:
            convert(args)
        check_scclip_repository(args.output)
        if args.dry_run:
            print_upload_listing(args.output, args.push_to_hub)
        elif args.push_to_hub:
            push_to_hub(args.output, args.push_to_hub, args.private)
    except ValueError as error:  # ConversionError, IncompleteRepositoryError and bad settings
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
