"""The benchmark registry, the label conversions and the dataset loaders, on synthetic folders in MMSegmentation's layouts."""

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image


# eval/ holds scripts rather than a package: import its modules the way its scripts do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import benchmark_data  # noqa: E402
from benchmark_data import (  # noqa: E402
    BrokenRecordError,
    convert_labels,
    decode_record,
    hub_benchmark_data,
    local_benchmark_data,
)
from registry import load_registry, load_registry_templates  # noqa: E402


REGISTRY = load_registry()


def reduce_zero_label(mask):
    """MMSegmentation's reduce_zero_label written out: 0 -> 255, others - 1, 255 stays 255."""
    reduced = mask.astype(np.int64) - 1
    reduced[mask == 0] = 255
    reduced[mask == 255] = 255
    return reduced


def save_pair(image_path: Path, mask_path: Path, mask: np.ndarray, seed: int, palette: bool = False):
    """A random RGB image and its label mask (8-bit grey, or palette like VOC's) of the same size."""
    rng = np.random.default_rng(seed)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)).save(image_path)
    mask_image = Image.fromarray(mask.astype(np.uint8), mode="L")
    (mask_image.convert("P") if palette else mask_image).save(mask_path)


def random_mask(seed: int, num_values: int, shape=(6, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, num_values, shape)
    mask[0, :2] = 255
    return mask


def make_voc(data_dir: Path, year: str, mask_folder: str, split_file: str, names: list[str], num_values: int) -> dict:
    """VOCdevkit/<year>/{JPEGImages, <mask_folder>, <split_file>}; returns {record: mask}."""
    root = data_dir / "VOCdevkit" / year
    masks = {}
    for index, name in enumerate(names):
        masks[name] = random_mask(index, num_values, shape=(6 + index, 8))
        save_pair(root / "JPEGImages" / f"{name}.jpg", root / mask_folder / f"{name}.png", masks[name], index, True)
    # An image outside the split, which must not be read.
    save_pair(root / "JPEGImages" / "2099_000000.jpg", root / mask_folder / "2099_000000.png", masks[names[0]], 0)
    (root / split_file).parent.mkdir(parents=True, exist_ok=True)
    (root / split_file).write_text("".join(f"{name}\n" for name in names))
    return masks


def make_voc2012(data_dir: Path) -> dict:
    return make_voc(
        data_dir, "VOC2012", "SegmentationClass", "ImageSets/Segmentation/val.txt", ["2007_000033", "2007_000042"], 21
    )


def make_context(data_dir: Path) -> dict:
    return make_voc(
        data_dir,
        "VOC2010",
        "SegmentationClassContext",
        "ImageSets/SegmentationContext/val.txt",
        ["2008_000002", "2008_000005", "2008_000007"],
        60,
    )


def make_ade20k(data_dir: Path) -> dict:
    """ADEChallengeData2016/{images,annotations}/validation, no split file: every image, sorted."""
    root = data_dir / "ADEChallengeData2016"
    masks = {}
    for index, name in enumerate(["ADE_val_00000002", "ADE_val_00000001"]):
        masks[name] = random_mask(index, 151)
        save_pair(
            root / "images/validation" / f"{name}.jpg",
            root / "annotations/validation" / f"{name}.png",
            masks[name],
            index,
        )
    (root / "images/validation" / "notes.txt").write_text("not an image")
    return dict(sorted(masks.items()))


def make_cityscapes(data_dir: Path) -> dict:
    """cityscapes/{leftImg8bit,gtFine}/val/<city>/..., with the other gtFine files beside the labelTrainIds."""
    root = data_dir / "cityscapes"
    masks = {}
    for index, name in enumerate(["frankfurt/frankfurt_000000_000294", "lindau/lindau_000001_000019"]):
        masks[name] = random_mask(index, 19)
        save_pair(
            root / "leftImg8bit/val" / f"{name}_leftImg8bit.png",
            root / "gtFine/val" / f"{name}_gtFine_labelTrainIds.png",
            masks[name],
            index,
        )
        Image.fromarray(np.full((6, 8), 7, dtype=np.uint8)).save(root / "gtFine/val" / f"{name}_gtFine_labelIds.png")
    return masks


def make_coco_stuff(data_dir: Path, raw_only: bool = False) -> dict:
    """
    coco_stuff164k/{images,annotations}/val2017 with raw COCO-Stuff masks ("<id>.png"), and unless `raw_only` the
    converted "<id>_labelTrainIds.png" and "<id>_instanceTrainIds.png"; returns {record: raw mask}.
    """
    root = data_dir / "coco_stuff164k"
    masks = {}
    for index, name in enumerate(["000000000139", "000000000285"]):
        masks[name] = np.array([[0, 1, 12, 89, 91, 181, 255, 26], [30, 66, 69, 71, 83, 0, 12, 91]])
        save_pair(
            root / "images/val2017" / f"{name}.jpg", root / "annotations/val2017" / f"{name}.png", masks[name], index
        )
        if not raw_only:
            for suffix, value in (("_labelTrainIds", 3), ("_instanceTrainIds", 4)):
                mask = np.full(masks[name].shape, value + index, dtype=np.uint8)
                Image.fromarray(mask).save(root / "annotations/val2017" / f"{name}{suffix}.png")
    return masks


def decoded(data, skip_bad=False):
    return [decode_record(example, data.label_conversion, skip_bad) for example in data.dataset]


def test_registry_holds_the_protocol():
    assert list(REGISTRY) == [
        "voc21",
        "context60",
        "coco_object",
        "voc20",
        "cityscapes",
        "context59",
        "ade20k",
        "coco_stuff",
    ]
    assert [benchmark.num_classes for benchmark in REGISTRY.values()] == [21, 60, 81, 20, 19, 59, 150, 171]
    voc21 = REGISTRY["voc21"]
    assert voc21.class_names[:3] == ["background", "aeroplane", "bicycle"]
    assert voc21.labels[0][:3] == ["sky", "wall", "tree"] and len(voc21.labels[15]) == 7
    assert (voc21.logit_scale, voc21.prob_threshold, voc21.area_threshold) == (50, 0.15, 0.1)
    assert REGISTRY["cityscapes"].short_side == 560 and REGISTRY["coco_object"].logit_scale == 55
    assert [key for key, benchmark in REGISTRY.items() if benchmark.has_background] == [
        "voc21",
        "context60",
        "coco_object",
    ]
    assert [key for key, b in REGISTRY.items() if b.label_conversion == "reduce_zero_label"] == [
        "voc20",
        "context59",
        "ade20k",
    ]
    assert {benchmark.ignore_index for benchmark in REGISTRY.values()} == {255}
    for backbone, average in (("vit-b16", 43.9), ("vit-l14", 45.2)):
        assert round(np.mean([benchmark.paper_miou[backbone] for benchmark in REGISTRY.values()]), 1) == average
    templates = load_registry_templates()
    assert len(templates) == 80 and all("{}" in template for template in templates)


def test_label_conversions():
    values = np.arange(256).reshape(16, 16)
    np.testing.assert_array_equal(convert_labels(values, "reduce_zero_label"), reduce_zero_label(values))
    np.testing.assert_array_equal(convert_labels(values, "none"), values)

    # Raw COCO-Stuff ids (0-indexed COCO categories, 11 of the first 91 unused) and their ids in MMSegmentation's
    # converter: person, bicycle, stop sign (after unused 11), ..., toothbrush, banner (first stuff), wood (last).
    raw = np.array([[0, 1, 12, 26, 30, 66, 69, 71, 83, 89, 91, 181, 255]])
    train_ids = np.array([[0, 1, 11, 24, 26, 60, 61, 62, 73, 79, 80, 170, 255]])
    np.testing.assert_array_equal(convert_labels(raw, "coco_stuff_to_train_ids"), train_ids)
    # COCO-Object: things keep their order from 1, stuff and unlabeled become background 0.
    object_ids = np.where(train_ids < 80, train_ids + 1, 0)
    np.testing.assert_array_equal(convert_labels(raw, "coco_stuff_to_object"), object_ids)
    stuff_names, object_names = REGISTRY["coco_stuff"].class_names, REGISTRY["coco_object"].class_names
    assert [stuff_names[i] for i in (0, 11, 79, 80, 170)] == ["person", "stopsign", "toothbrush", "banner", "wood"]
    assert [object_names[i] for i in (1, 12, 80)] == ["person", "stop sign", "toothbrush"]

    with pytest.raises(ValueError, match="0..255"):
        convert_labels(np.array([[300]]), "reduce_zero_label")
    with pytest.raises(ValueError, match="Unknown label conversion"):
        convert_labels(values, "halve")


@pytest.mark.parametrize(
    "key, make, convert",
    [
        ("voc21", make_voc2012, lambda mask: mask),
        ("voc20", make_voc2012, reduce_zero_label),
        ("context60", make_context, lambda mask: mask),
        ("context59", make_context, reduce_zero_label),
        ("ade20k", make_ade20k, reduce_zero_label),
        ("cityscapes", make_cityscapes, lambda mask: mask),
    ],
)
def test_local_layouts(tmp_path, key, make, convert):
    masks = make(tmp_path)
    data = local_benchmark_data(REGISTRY[key], tmp_path)
    assert data.dataset["record"] == list(masks)
    records = decoded(data)
    for record, (name, mask) in zip(records, masks.items()):
        assert record.record == name and record.error is None
        assert (record.image.mode, record.image.size) == ("RGB", mask.shape[::-1])
        np.testing.assert_array_equal(record.label, convert(mask))
    # The data directory may also be the dataset root itself.
    root = tmp_path / REGISTRY[key].layout.root
    assert local_benchmark_data(REGISTRY[key], root).dataset["image"] == data.dataset["image"]


def test_coco_layouts_with_converted_and_raw_masks(tmp_path):
    raw_masks = make_coco_stuff(tmp_path)
    # With MMSegmentation's converted label files, those are read as they are.
    for key, value in (("coco_stuff", 3), ("coco_object", 4)):
        data = local_benchmark_data(REGISTRY[key], tmp_path)
        assert data.label_conversion == "none"
        for index, record in enumerate(decoded(data)):
            np.testing.assert_array_equal(record.label, np.full((2, 8), value + index))

    # With only the raw COCO-Stuff masks, both benchmarks convert them on the fly.
    make_coco_stuff(tmp_path / "raw", raw_only=True)
    for key, conversion in (("coco_stuff", "coco_stuff_to_train_ids"), ("coco_object", "coco_stuff_to_object")):
        data = local_benchmark_data(REGISTRY[key], tmp_path / "raw")
        assert data.label_conversion == conversion
        for record, mask in zip(decoded(data), raw_masks.values()):
            np.testing.assert_array_equal(record.label, convert_labels(mask, conversion))


def test_missing_dataset_folder_is_explained(tmp_path):
    with pytest.raises(ValueError, match="ADEChallengeData2016"):
        local_benchmark_data(REGISTRY["ade20k"], tmp_path)


def test_broken_records_are_named_or_skipped(tmp_path):
    make_voc2012(tmp_path)
    root = tmp_path / "VOCdevkit/VOC2012"
    names = ["2007_000033", "2007_000042", "2007_000061", "2007_000062", "2007_000063"]
    (root / "JPEGImages/2007_000061.jpg").write_bytes(b"not a jpeg")
    save_pair(root / "JPEGImages/2007_000062.jpg", root / "SegmentationClass/2007_000062.png", np.zeros((4, 4)), 5)
    Image.new("L", (5, 4)).save(root / "SegmentationClass/2007_000062.png")  # 4x5 label for a 4x4 image
    save_pair(root / "JPEGImages/2007_000063.jpg", root / "SegmentationClass/2007_000063.png", np.zeros((4, 4)), 6)
    Image.new("RGB", (4, 4)).save(root / "SegmentationClass/2007_000063.png")  # a colour mask, not class ids
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names))
    data = local_benchmark_data(REGISTRY["voc21"], tmp_path)

    reasons = {
        "2007_000061": "unreadable image",
        "2007_000062": "4x4 .* label is 4x5",
        "2007_000063": "single-channel",
    }
    for example in data.dataset.select(range(2, 5)):
        with pytest.raises(BrokenRecordError, match=f"'{example['record']}'.*{reasons[example['record']]}"):
            decode_record(example, data.label_conversion)
    records = decoded(data, skip_bad=True)
    assert [record.error is None for record in records] == [True, True, False, False, False]
    assert all(record.record in record.error for record in records[2:])


def test_hub_dataset_columns_and_offline_error(tmp_path, monkeypatch):
    masks = [random_mask(seed, 151) for seed in range(3)]
    rng = np.random.default_rng(0)
    table = datasets.Dataset.from_dict(
        {
            "picture": [Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)) for _ in masks],
            "segmentation": [Image.fromarray(mask.astype(np.uint8)) for mask in masks],
            "caption": ["a", "b", "c"],
        },
        features=datasets.Features(
            {"picture": datasets.Image(), "segmentation": datasets.Image(), "caption": datasets.Value("string")}
        ),
    )
    (tmp_path / "hub" / "data").mkdir(parents=True)
    table.to_parquet(tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet")

    data = hub_benchmark_data(REGISTRY["ade20k"], str(tmp_path / "hub"), "validation", "picture", "segmentation")
    assert data.dataset.column_names == ["image", "label", "record"] and data.label_conversion == "reduce_zero_label"
    records = decoded(data)
    assert [record.record for record in records] == [f"{tmp_path / 'hub'}[validation] row {row}" for row in range(3)]
    for record, mask in zip(records, masks):
        np.testing.assert_array_equal(record.label, reduce_zero_label(mask))
    kept = hub_benchmark_data(
        REGISTRY["ade20k"], str(tmp_path / "hub"), "validation", "picture", "segmentation", "none"
    )
    np.testing.assert_array_equal(decoded(kept)[0].label, masks[0])

    with pytest.raises(ValueError, match="--label-column"):
        hub_benchmark_data(REGISTRY["ade20k"], str(tmp_path / "hub"), "validation", "picture", "label")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/ade20k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(benchmark_data.datasets, "load_dataset", unreachable)
    with pytest.raises(ConnectionError, match="offline.*--data-dir"):
        hub_benchmark_data(REGISTRY["ade20k"], "org/ade20k", "validation")
