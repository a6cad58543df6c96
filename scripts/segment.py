# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
Segment images into free-text classes with SC-CLIP and write, per image, a colour overlay with a legend and a
palette label map; print each class's share of the image.

    scclip-segment examples/house_tree_sky.png --labels "sky,tree,grass,house,road"
    scclip-segment photos/*.jpg --labels "person;man;woman,dog,grass" --background "sky;wall;floor" --pamr

Classes are separated by ",", synonyms of one class by ";" (each synonym is one text query; the first names the
class). With --background, its names form class 0 of the label map, and the thresholds assign pixels to it. The
label map `NAME_labels.png` holds class ids in label order (its palette is the overlay's colours, the class names are
in its "labels" text chunk); the overlay is `NAME_overlay.png`.

The default model, openai/clip-vit-base-patch16, is downloaded from the Hub (once, then cached) and converted to
SC-CLIP on the fly. --model also takes any CLIP repository or folder (model_type "clip"), or a converted SC-CLIP
checkpoint.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from modeling_scclip.configuration_scclip import parse_scclip_settings
from modeling_scclip.image_processing_scclip import to_rgb_array
from modeling_scclip.loading_scclip import (
    DEFAULT_CLIP_CHECKPOINT,
    add_scclip_settings_argument,
    load_scclip_model_and_processor,
)
from modeling_scclip.pipeline_scclip import (
    DEFAULT_BATCH_SIZE,
    SCCLIPZeroShotSegmentationPipeline,
    check_thresholds_have_background,
    load_image_any_mode,
)
from modeling_scclip.processing_scclip import parse_labels


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OVERLAY_OPACITY = 0.5
MAX_CLASSES = 256  # a palette PNG holds 256 colours


def parse_classes(labels: str, background: str | None) -> list[list[str]]:
    """
    The names of every class: `--labels` has "," between classes and ";" between synonyms; all the `--background`
    names ("," or ";" separated) form one class, class 0. Names must be non-empty and unique.
    """
    classes = labels.split(",")
    if background is not None:
        classes.insert(0, background.replace(",", ";"))
    classes = parse_labels(classes)
    if len(classes) > MAX_CLASSES:
        raise ValueError(f"{len(classes)} classes given, at most {MAX_CLASSES} fit in a label-map PNG.")
    return classes


def check_images(paths: list[str]) -> list[Path]:
    """Every path must be a non-empty file that Pillow recognises as an image (only its header is read here)."""
    checked = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"Image not found: {path}")
        if path.stat().st_size == 0:
            raise ValueError(f"Image file is empty (0 bytes): {path}")
        try:
            Image.open(path).close()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Not a readable image: {path} ({error})") from error
        checked.append(path)
    stems = [path.stem for path in checked]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"Several images are named {repeated}: their outputs would overwrite each other.")
    return checked


def label_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: PASCAL VOC's colour map without its first colour, black."""
    colors = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        index = class_id + 1
        for bit in range(8):
            for channel in range(3):
                colors[class_id, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors


def class_shares(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Percentage of the image's pixels in each class."""
    return 100 * np.bincount(label_map.ravel(), minlength=num_classes) / label_map.size


def label_map_png(label_map: np.ndarray, colors: np.ndarray, class_names: list[str]) -> tuple[Image.Image, PngInfo]:
    """The label map as a palette image (pixel value = class id) and a PNG text chunk naming the classes."""
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(colors.ravel().tolist())
    info = PngInfo()
    info.add_text("labels", json.dumps(class_names))
    return image, info


def overlay_with_legend(
    image: np.ndarray, label_map: np.ndarray, colors: np.ndarray, class_names: list[str], shares: np.ndarray
) -> Image.Image:
    """`image` (H, W, 3) blended with the class colours, and a legend of the classes present, largest first."""
    blended = (1 - OVERLAY_OPACITY) * image + OVERLAY_OPACITY * colors[label_map]
    scene = Image.fromarray(blended.round().astype(np.uint8))
    font_size = max(12, scene.height // 30)
    font = ImageFont.load_default(size=font_size)
    line_height = round(font_size * 1.5)
    present = [class_id for class_id in np.argsort(-shares, kind="stable") if shares[class_id] > 0]
    entries = [f"{class_names[class_id]}  {shares[class_id]:.1f}%" for class_id in present]
    text_width = max(font.getlength(entry) for entry in entries)
    margin = font_size // 2
    legend_width = round(3 * margin + font_size + text_width)
    canvas_height = max(scene.height, 2 * margin + line_height * len(entries))
    canvas = Image.new("RGB", (scene.width + legend_width, canvas_height), "white")
    canvas.paste(scene)
    pen = ImageDraw.Draw(canvas)
    for row, (class_id, entry) in enumerate(zip(present, entries)):
        left, top = scene.width + margin, margin + row * line_height
        swatch = [left, top, left + font_size, top + font_size]
        pen.rectangle(swatch, fill=tuple(colors[class_id].tolist()), outline="black")
        pen.text((left + font_size + margin, top), entry, fill="black", font=font)
    return canvas


def write_outputs(path: Path, out_dir: Path, result: dict) -> str:
    """Write NAME_overlay.png and NAME_labels.png for one segmented image; return its share report."""
    class_names = result["labels"]
    label_map = result["label_map"].numpy()
    colors = label_colors(len(class_names))
    shares = class_shares(label_map, len(class_names))
    image = to_rgb_array(load_image_any_mode(str(path)))
    overlay_with_legend(image, label_map, colors, class_names, shares).save(out_dir / f"{path.stem}_overlay.png")
    palette_image, info = label_map_png(label_map, colors, class_names)
    palette_image.save(out_dir / f"{path.stem}_labels.png", pnginfo=info)
    width = max(map(len, class_names))
    lines = [f"{name:<{width}}  {share:5.1f}%" for name, share in zip(class_names, shares)]
    return "\n".join([f"{path}:", *(f"  {line}" for line in lines)])


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scclip-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="Image files (any format Pillow reads; grey, RGBA and 16-bit work).")
    parser.add_argument("--labels", required=True, help='Classes: "cat,dog,grass"; synonyms: "person;man;woman,dog".')
    parser.add_argument("--background", help='Names of a background class 0, e.g. "background" or "sky;wall;floor".')
    parser.add_argument(
        "--model", default=DEFAULT_CLIP_CHECKPOINT, help="Hub id or folder of a CLIP or SC-CLIP checkpoint."
    )
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="Output folder (created if needed).")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="Defaults to cuda when available.")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="Model weights' dtype (with --autocast: of the products).",
    )
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="Keep float32 weights and run under torch.autocast to --dtype (closer to float32 than half weights).",
    )
    parser.add_argument("--pamr", action="store_true", help="Refine the masks along image edges (PAMR).")
    parser.add_argument("--logit-scale", type=float, default=40.0, help="Softmax temperature of the similarities.")
    parser.add_argument(
        "--prob-threshold", type=float, default=0.0, help="Pixels less sure than this become background."
    )
    parser.add_argument(
        "--area-threshold", type=float, help="Drop classes covering at most this share of the non-background area."
    )
    parser.add_argument(
        "--short-side", type=positive_int, help="Resize images to this short side (default: the model's)."
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="Images segmented together."
    )
    add_scclip_settings_argument(parser)
    return parser


def segment(args: argparse.Namespace) -> None:
    classes = parse_classes(args.labels, args.background)
    check_thresholds_have_background(args.background, args.prob_threshold, args.area_threshold)
    paths = check_images(args.images)
    settings = parse_scclip_settings(args.settings)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but PyTorch sees no CUDA GPU here: use --device cpu.")
    if args.autocast and args.dtype == "float32":
        raise ValueError("--autocast runs the matrix products in --dtype: add --dtype bfloat16 or float16.")
    try:
        model, processor = load_scclip_model_and_processor(args.model, **settings)
    except OSError as error:
        raise OSError(f"{error}\nThen run again with --model path/to/that-folder.") from error
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    segmenter = SCCLIPZeroShotSegmentationPipeline(
        model=model.to(torch.float32 if args.autocast else dtype),
        processor=processor,
        device=device,
        batch_size=args.batch_size,
    )
    background, candidate_labels = (classes[0], classes[1:]) if args.background is not None else (None, classes)
    results = segmenter(
        (str(path) for path in paths),
        candidate_labels=candidate_labels,
        background=background,
        logit_scale=args.logit_scale,
        prob_threshold=args.prob_threshold,
        area_threshold=args.area_threshold,
        pamr=args.pamr,
        short_side=args.short_side,
        return_label_map=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    # The pipeline segments lazily, as the loop asks for results: the loop runs under the autocast.
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=args.autocast):
        for path, result in tqdm(zip(paths, results), total=len(paths), unit="image", disable=len(paths) < 2):
            tqdm.write(write_outputs(path, args.out, result))
    tqdm.write(f"Wrote overlays and label maps to {args.out}/")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input or an unavailable model)."""
    args = build_parser().parse_args(argv)
    try:
        segment(args)
    except (ValueError, OSError) as error:  # bad labels, images or thresholds, an unreadable file, no model
        print(f"scclip-segment: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
