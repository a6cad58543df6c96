# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
A benchmark's split as a `datasets.Dataset` of undecoded (image, label) pairs, from a local MMSegmentation folder or a
Hub dataset, the per-benchmark label conversions, and the decoding of one record with clear errors for broken ones.
"""

import io
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from registry import Benchmark, DatasetLayout


# COCO-Stuff 164k's raw annotations use 0-indexed COCO category ids 0..181 (0..90 things, 91..181 stuff) and 255 for
# unlabeled pixels; these 11 thing ids have no annotation in COCO and never occur.
COCO_STUFF_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_LAST_THING_ID = 90
COCO_STUFF_NUM_IDS = 182
IGNORE_INDEX = 255


def reduce_zero_label_table() -> np.ndarray:
    """MMSegmentation's `reduce_zero_label`: 0 (background) -> 255 (ignored), every other id -> id - 1, 255 stays."""
    table = np.arange(256) - 1
    table[0] = IGNORE_INDEX
    table[IGNORE_INDEX] = IGNORE_INDEX
    return table.astype(np.uint8)


def _coco_stuff_used_ids() -> np.ndarray:
    return np.setdiff1d(np.arange(COCO_STUFF_NUM_IDS), COCO_STUFF_UNUSED_IDS)


def coco_stuff_to_train_ids_table() -> np.ndarray:
    """Raw COCO-Stuff ids -> the 171 consecutive `labelTrainIds` of MMSegmentation's converter; 255 stays ignored."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    used_ids = _coco_stuff_used_ids()
    table[used_ids] = np.arange(len(used_ids))
    return table


def coco_stuff_to_object_table() -> np.ndarray:
    """
    Raw COCO-Stuff ids -> COCO-Object's `instanceTrainIds`: the 80 things -> 1..80 in order, every stuff class and
    unlabeled (255) -> 0, the background (the authors' converter, from GroupViT, scores unlabeled pixels as background).
    """
    table = np.zeros(256, dtype=np.uint8)
    used_ids = _coco_stuff_used_ids()
    thing_ids = used_ids[used_ids <= COCO_STUFF_LAST_THING_ID]
    table[thing_ids] = np.arange(1, len(thing_ids) + 1)
    table[list(COCO_STUFF_UNUSED_IDS)] = IGNORE_INDEX
    return table


# Label conversions by name (the registry's `label_conversion`): a 256-entry lookup table, or None to keep the ids.
LABEL_CONVERSIONS = {
    "none": None,
    "reduce_zero_label": reduce_zero_label_table,
    "coco_stuff_to_train_ids": coco_stuff_to_train_ids_table,
    "coco_stuff_to_object": coco_stuff_to_object_table,
}


def convert_labels(mask: np.ndarray, conversion: str) -> np.ndarray:
    """Apply the named label conversion to a (height, width) array of label ids."""
    if conversion not in LABEL_CONVERSIONS:
        raise ValueError(f"Unknown label conversion {conversion!r}: choose one of {', '.join(LABEL_CONVERSIONS)}.")
    if LABEL_CONVERSIONS[conversion] is None:
        return mask
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f"label ids must be in 0..255 for the {conversion!r} conversion, got {mask.min()}..{mask.max()}"
        )
    return LABEL_CONVERSIONS[conversion]()[mask]


@dataclass
class BenchmarkData:
    """
    A split ready to decode: `dataset` has the columns `record` (a name for messages), `image` and `label` (undecoded
    `datasets.Image` values); `label_conversion` turns its label files into the benchmark's class ids.
    """

    dataset: datasets.Dataset
    label_conversion: str
    source: str


def _undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    for column in ("image", "label"):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _missing_data_error(what: str, layout: DatasetLayout) -> ValueError:
    return ValueError(
        f"{what}. Get the dataset: {layout.download}. Then pass --data-dir pointing at the folder that holds "
        f"{layout.root}/ in MMSegmentation's layout (see the README), or at {layout.root}/ itself."
    )


def find_layout_root(data_dir: str | Path, layout: DatasetLayout) -> Path:
    """The dataset root under `data_dir`: `data_dir` itself or `data_dir/<layout.root>`, whichever holds the images."""
    data_dir = Path(data_dir)
    candidates = [data_dir, data_dir / layout.root]
    for candidate in candidates:
        if (candidate / layout.images).is_dir():
            return candidate
    tried = " or ".join(str(candidate / layout.images) for candidate in candidates)
    raise _missing_data_error(f"No image folder found at {tried}", layout)


def list_record_ids(root: Path, layout: DatasetLayout) -> list[str]:
    """Record ids (image paths relative to the image folder, without the image suffix) of the split, in order."""
    if layout.split_file is not None:
        split_file = root / layout.split_file
        if not split_file.is_file():
            raise _missing_data_error(
                f"The split file {split_file}, which lists the images of the split, is missing", layout
            )
        return [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    image_dir = root / layout.images
    paths = sorted(image_dir.rglob(f"*{layout.image_suffix}"))
    return [path.relative_to(image_dir).as_posix()[: -len(layout.image_suffix)] for path in paths]


def _mask_files(root: Path, layout: DatasetLayout, label_conversion: str) -> tuple[str, str]:
    """The mask suffix and conversion to use: the protocol's label files, or the raw ones when only those exist."""
    mask_dir = root / layout.masks
    if next(mask_dir.rglob(f"*{layout.mask_suffix}"), None) is not None:
        return layout.mask_suffix, label_conversion
    raw = layout.raw_masks
    if raw is not None and next(mask_dir.rglob(f"*{raw.mask_suffix}"), None) is not None:
        return raw.mask_suffix, raw.label_conversion
    raise _missing_data_error(f"No label files *{layout.mask_suffix} found under {mask_dir}", layout)


def local_benchmark_data(benchmark: Benchmark, data_dir: str | Path) -> BenchmarkData:
    """A benchmark's split from a local folder in MMSegmentation's layout (image and mask paths, decoded later)."""
    layout = benchmark.layout
    root = find_layout_root(data_dir, layout)
    record_ids = list_record_ids(root, layout)
    if not record_ids:
        raise _missing_data_error(f"No images *{layout.image_suffix} found under {root / layout.images}", layout)
    mask_suffix, label_conversion = _mask_files(root, layout, benchmark.label_conversion)
    dataset = datasets.Dataset.from_dict(
        {
            "record": record_ids,
            "image": [str(root / layout.images / f"{record}{layout.image_suffix}") for record in record_ids],
            "label": [str(root / layout.masks / f"{record}{mask_suffix}") for record in record_ids],
        }
    )
    return BenchmarkData(_undecoded_images(dataset), label_conversion, source=str(root))


def _load_split(dataset_id: str, split: str) -> datasets.Dataset:
    """One split of a Hub dataset, a local dataset folder, or a folder written by `save_to_disk`."""
    folder = Path(dataset_id)
    if not ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        return datasets.load_dataset(dataset_id, split=split)
    saved = datasets.load_from_disk(dataset_id)
    if isinstance(saved, datasets.Dataset):
        return saved  # a saved `Dataset` is one split
    if split not in saved:
        raise ValueError(f"The dataset saved at {dataset_id} has no split {split!r}: choose one of {list(saved)}.")
    return saved[split]


def hub_benchmark_data(
    benchmark: Benchmark,
    dataset_id: str,
    split: str,
    image_column: str = "image",
    label_column: str = "label",
    label_conversion: str | None = None,
) -> BenchmarkData:
    """
    A benchmark's split from a Hub dataset (or one in the local `datasets` cache), a local dataset folder, or a folder
    written by `save_to_disk` (a `Dataset`, taken whatever `split`, or a `DatasetDict`), whose image and label columns
    are images or file paths. `label_conversion` defaults to the benchmark's, which expects the protocol's label files.
    """
    try:
        dataset = _load_split(dataset_id, split)
    except ConnectionError as error:
        raise ConnectionError(
            f"Could not load the dataset {dataset_id!r} (split {split!r}): the Hub cannot be reached and it is not in "
            f"the local cache ({error}). This machine looks offline (or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set): "
            "download the dataset where there is network access first, or pass --data-dir with a local copy."
        ) from error
    missing = [column for column in (image_column, label_column) if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset {dataset_id!r} has no column {missing}; its columns are {dataset.column_names}: choose them "
            "with --image-column and --label-column."
        )
    dataset = dataset.select_columns([image_column, label_column])
    dataset = dataset.rename_columns({image_column: "image", label_column: "label"})
    dataset = dataset.add_column("record", [f"{dataset_id}[{split}] row {index}" for index in range(len(dataset))])
    return BenchmarkData(
        _undecoded_images(dataset), label_conversion or benchmark.label_conversion, source=f"{dataset_id}[{split}]"
    )


class BrokenRecordError(ValueError):
    """A record whose image or label cannot be read, or whose image and label differ in size."""


@dataclass
class DecodedRecord:
    """One decoded record: an RGB image and its label ids, or, when it is broken and skipped, the reason."""

    record: str
    image: Image.Image | None = None
    label: np.ndarray | None = None
    error: str | None = None


def _open_image(value: dict) -> Image.Image:
    image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    image.load()  # read the pixels now, so a truncated file fails here
    return image


def _describe(example: dict) -> str:
    paths = [(example[column] or {}).get("path") for column in ("image", "label")]
    files = ", ".join(f"{column} {path}" for column, path in zip(("image", "label"), paths) if path)
    return f"{example['record']!r}" + (f" ({files})" if files else "")


def _decode_pair(example: dict, label_conversion: str) -> tuple[Image.Image, np.ndarray]:
    for column in ("image", "label"):
        if example[column] is None:
            raise ValueError(f"it has no {column}")
    try:
        image = _open_image(example["image"]).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"unreadable image: {error}") from error
    try:
        mask = np.array(_open_image(example["label"]))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"unreadable label: {error}") from error
    if mask.ndim != 2:
        raise ValueError(f"the label must be a single-channel map of class ids, got an array of shape {mask.shape}")
    if mask.shape != (image.height, image.width):
        raise ValueError(
            f"the image is {image.height}x{image.width} (HxW) but its label is {mask.shape[0]}x{mask.shape[1]}"
        )
    return image, convert_labels(mask, label_conversion)


def decode_record(example: dict, label_conversion: str, skip_bad: bool = False) -> DecodedRecord:
    """
    Decode one record of a `BenchmarkData.dataset`. A broken record raises a `BrokenRecordError` naming it, or with
    `skip_bad=True` comes back with its reason in `error`.
    """
    try:
        image, label = _decode_pair(example, label_conversion)
    except ValueError as error:
        if not skip_bad:
            raise BrokenRecordError(
                f"Broken record {_describe(example)}: {error}. Fix or remove it, or pass --skip-bad to skip (and count) "
                "broken records."
            ) from error
        return DecodedRecord(example["record"], error=f"{_describe(example)}: {error}")
    return DecodedRecord(example["record"], image, label)
