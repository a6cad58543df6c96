# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
The eight benchmarks of the paper's Table 1 and their evaluation protocol, read from `benchmarks/benchmarks.json`
(settings, MMSegmentation folder layouts, the paper's mIoU) and the vocabulary files beside it. The prompt templates
are the package's `IMAGENET_TEMPLATES`.
"""

import json
from dataclasses import dataclass
from pathlib import Path


BENCHMARKS_DIR = Path(__file__).resolve().parent / "benchmarks"
REGISTRY_FILE = BENCHMARKS_DIR / "benchmarks.json"
# Paper backbones whose Table 1 mIoU the registry holds.
PAPER_BACKBONES = ("vit-b16", "vit-l14")


@dataclass(frozen=True)
class RawMasks:
    """Original annotation files a benchmark's label files can be derived from on the fly."""

    mask_suffix: str
    label_conversion: str


@dataclass(frozen=True)
class DatasetLayout:
    """Where a benchmark's split lies in MMSegmentation's folder layout, relative to `root`, and how to get it."""

    root: str
    images: str
    image_suffix: str
    masks: str
    mask_suffix: str
    download: str
    split_file: str | None = None
    raw_masks: RawMasks | None = None


@dataclass(frozen=True)
class Benchmark:
    """
    One benchmark's evaluation protocol.

    Attributes:
        key (`str`): registry key, e.g. `"voc21"`.
        column (`str`): its column title in the paper's Table 1.
        dataset (`str`): the dataset and split.
        num_images (`int`): images in the full split.
        labels (`list[list[str]]`): per class, its names (synonyms); each name is one text query.
        has_background (`bool`): whether class 0 is a background class (queried with the names of its line).
        label_conversion (`str`): how the protocol's label files become class ids (see `benchmark_data`).
        ignore_index (`int`): label value left out of the scores.
        short_side (`int`): images are resized so that their short side has this length (long side at most 2048).
        logit_scale, prob_threshold, area_threshold: post-processing settings (area_threshold `None`: no filter).
        paper_miou (`dict[str, float]`): the paper's mIoU per backbone (`"vit-b16"`, `"vit-l14"`).
        layout (`DatasetLayout`): the MMSegmentation folder layout of the split.
    """

    key: str
    column: str
    dataset: str
    num_images: int
    labels: list[list[str]]
    has_background: bool
    label_conversion: str
    ignore_index: int
    short_side: int
    logit_scale: float
    prob_threshold: float
    area_threshold: float | None
    paper_miou: dict[str, float]
    layout: DatasetLayout

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """One display name per class: its first name, and "background" for a background class 0."""
        names = [names[0] for names in self.labels]
        if self.has_background:
            names[0] = "background"
        return names


def read_vocabulary(path: str | Path) -> list[list[str]]:
    """Read a vocabulary file: one class a line, the class's names (each one query) separated by commas."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    vocabulary = [[name.strip() for name in line.split(",") if name.strip()] for line in lines if line.strip()]
    if not vocabulary:
        raise ValueError(f"The vocabulary file {path} lists no class.")
    return vocabulary


def read_templates(path: str | Path) -> list[str]:
    """Read prompt templates, one a line, `{}` standing for the class name."""
    templates = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [template for template in templates if "{}" not in template]
    if missing or not templates:
        raise ValueError(f"Every template of {path} must contain '{{}}' for the class name; check {missing[:3]}.")
    return templates


def _benchmark_from_entry(key: str, entry: dict, folder: Path) -> Benchmark:
    layout = dict(entry["layout"])
    if layout.get("raw_masks") is not None:
        layout["raw_masks"] = RawMasks(**layout["raw_masks"])
    values = {name: value for name, value in entry.items() if name not in ("vocabulary", "layout")}
    return Benchmark(
        key=key, labels=read_vocabulary(folder / entry["vocabulary"]), layout=DatasetLayout(**layout), **values
    )


def load_registry(path: str | Path = REGISTRY_FILE) -> dict[str, Benchmark]:
    """All benchmarks of a registry file, in the order of the paper's Table 1."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    return {key: _benchmark_from_entry(key, entry, path.parent) for key, entry in data["benchmarks"].items()}
