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
from registry import load_registry  # noqa: E402


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


def make_listed_split(root: Path, layout: dict, names: list[str]) -> dict:
    """A split without a split file: images/<name><image suffix> beside masks/<name><mask suffix>; {record: mask}."""
    masks = {}
    for index, name in enumerate(names):
        masks[name] = random_mask(index, layout["num_values"])
        image_path = root / layout["images"] / f"{name}{layout['image_suffix']}"
        save_pair(image_path, root / layout["masks"] / f"{name}{layout['mask_suffix']}", masks[name], index)
    return dict(sorted(masks.items()))


def make_ade20k(data_dir: Path) -> dict:
    """ADEChallengeData2016/{images,annotations}/validation, no split file: every image, sorted."""
    root = data_dir / "ADEChallengeData2016"
    layout = dict(num_values=151, images="images/validation", image_suffix=".jpg")
    layout.update(masks="annotations/validation", mask_suffix=".png")
    masks = make_listed_split(root, layout, ["ADE_val_00000002", "ADE_val_00000001"])
    (root / "images/validation" / "notes.txt").write_text("not an image")
    return masks


def make_cityscapes(data_dir: Path) -> dict:
    """cityscapes/{leftImg8bit,gtFine}/val/<city>/..., with the other gtFine files beside the labelTrainIds."""
    root = data_dir / "cityscapes"
    layout = dict(num_values=19, images="leftImg8bit/val", image_suffix="_leftImg8bit.png")
    layout.update(masks="gtFine/val", mask_suffix="_gtFine_labelTrainIds.png")
    names = ["lindau/lindau_000001_000019", "frankfurt/frankfurt_000000_000294"]
    masks = make_listed_split(root, layout, names)
    for name in names:
        Image.fromarray(np.full((6, 8), 7, dtype=np.uint8)).save(root / "gtFine/val" / f"{name}_gtFine_labelIds.png")
    return masks


# Raw COCO-Stuff ids (0-indexed COCO categories, 11 of the first 91 unused) and their ids in MMSegmentation's
# converter: person, bicycle, stop sign (after unused 11), ..., toothbrush, banner (first stuff), wood (last).
COCO_RAW_IDS = np.array([[0, 1, 12, 26, 30, 66, 69, 71, 83, 89, 91, 181, 255]])
COCO_STUFF_TRAIN_IDS = np.array([[0, 1, 11, 24, 26, 60, 61, 62, 73, 79, 80, 170, 255]])
# COCO-Object (the authors' converter): things keep their order from 1, stuff and unlabeled become background 0.
COCO_OBJECT_IDS = np.array([[1, 2, 12, 25, 27, 61, 62, 63, 74, 80, 0, 0, 0]])


def make_coco_stuff(data_dir: Path, raw_only: bool = False) -> dict:
    """
    coco_stuff164k/{images,annotations}/val2017 with raw COCO-Stuff masks ("<id>.png"), and unless `raw_only` the
    converted "<id>_labelTrainIds.png" and "<id>_instanceTrainIds.png"; returns {record: raw mask}.
    """
    root = data_dir / "coco_stuff164k"
    masks = {}
    for index, name in enumerate(["000000000139", "000000000285"]):
        masks[name] = np.roll(COCO_RAW_IDS, index, axis=1)
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


# The protocol of the shared benchmarks README, row by row: images, classes, label handling, short side, logit
# scale, probability and area thresholds, the paper's mIoU (ViT-B/16, ViT-L/14).
PROTOCOL_TABLE = {
    "voc21": (1449, 21, "none", 336, 50, 0.15, 0.1, 64.6, 65.0),
    "context60": (5105, 60, "none", 336, 40, 0.15, None, 36.8, 36.9),
    "coco_object": (5000, 81, "none", 336, 55, 0.35, None, 37.7, 40.5),
    "voc20": (1449, 20, "reduce_zero_label", 336, 40, 0.0, None, 84.3, 88.3),
    "cityscapes": (500, 19, "none", 560, 40, 0.0, None, 41.0, 41.3),
    "context59": (5105, 59, "reduce_zero_label", 336, 40, 0.0, None, 40.1, 40.6),
    "ade20k": (2000, 150, "reduce_zero_label", 336, 40, 0.0, None, 20.1, 21.7),
    "coco_stuff": (5000, 171, "none", 336, 40, 0.0, None, 26.6, 26.9),
}
# The shared vocabulary files: the number of names (queries) of each, and which classes have several.
NUM_QUERIES = {
    "voc21": 56,
    "context60": 60,
    "coco_object": 113,
    "voc20": 30,
    "cityscapes": 19,
    "context59": 59,
    "ade20k": 150,
    "coco_stuff": 171,
}


def test_registry_holds_the_protocol():
    assert list(REGISTRY) == list(PROTOCOL_TABLE), "the order of the paper's Table 1"
    for key, benchmark in REGISTRY.items():
        values = (
            benchmark.num_images,
            benchmark.num_classes,
            benchmark.label_conversion,
            benchmark.short_side,
            benchmark.logit_scale,
            benchmark.prob_threshold,
            benchmark.area_threshold,
            benchmark.paper_miou["vit-b16"],
            benchmark.paper_miou["vit-l14"],
        )
        assert values == PROTOCOL_TABLE[key], key
        assert benchmark.ignore_index == 255
        assert benchmark.has_background == (key in ("voc21", "context60", "coco_object")), key
        assert sum(len(names) for names in benchmark.labels) == NUM_QUERIES[key], key
        assert benchmark.class_names[0] == ("background" if benchmark.has_background else benchmark.labels[0][0])
    for backbone, average in (("vit-b16", 43.9), ("vit-l14", 45.2)):
        assert round(np.mean([benchmark.paper_miou[backbone] for benchmark in REGISTRY.values()]), 1) == average

    # Synonyms: each name of a line is one query; voc21's background is queried with 26 stuff names.
    voc21 = REGISTRY["voc21"]
    assert voc21.class_names[:3] == ["background", "aeroplane", "bicycle"]
    assert voc21.labels[0][:3] == ["sky", "wall", "tree"] and len(voc21.labels[0]) == 26
    assert voc21.labels[15] == ["person", "person in shirt", "person in jeans", "person in dress"] + [
        "person in sweater",
        "person in skirt",
        "person in jacket",
    ]
    assert REGISTRY["coco_object"].labels[0] == voc21.labels[0]
    assert REGISTRY["context60"].labels[1:] == REGISTRY["context59"].labels
    assert REGISTRY["voc20"].labels == voc21.labels[1:]
    # Layouts: VOC 2012 serves voc21 and voc20, VOC 2010 the two Contexts, COCO-Stuff 164k both COCO benchmarks.
    roots = {key: benchmark.layout.root for key, benchmark in REGISTRY.items()}
    assert roots["voc21"] == roots["voc20"] == "VOCdevkit/VOC2012"
    assert roots["context60"] == roots["context59"] == "VOCdevkit/VOC2010"
    assert roots["coco_object"] == roots["coco_stuff"] == "coco_stuff164k"
    assert REGISTRY["coco_object"].layout.mask_suffix == "_instanceTrainIds.png"
    assert REGISTRY["cityscapes"].layout.mask_suffix == "_gtFine_labelTrainIds.png"


def test_label_conversions():
    values = np.arange(256).reshape(16, 16)
    np.testing.assert_array_equal(convert_labels(values, "reduce_zero_label"), reduce_zero_label(values))
    np.testing.assert_array_equal(convert_labels(values, "none"), values)

    np.testing.assert_array_equal(convert_labels(COCO_RAW_IDS, "coco_stuff_to_train_ids"), COCO_STUFF_TRAIN_IDS)
    np.testing.assert_array_equal(convert_labels(COCO_RAW_IDS, "coco_stuff_to_object"), COCO_OBJECT_IDS)
    # Every used raw id gets its own train id, in order: 80 things and 91 stuff classes, 171 in all.
    all_ids = convert_labels(np.arange(182), "coco_stuff_to_train_ids")
    assert sorted(set(all_ids.tolist()) - {255}) == list(range(171)) and (np.diff(all_ids[all_ids != 255]) == 1).all()
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
            np.testing.assert_array_equal(record.label, np.full(COCO_RAW_IDS.shape, value + index))

    # With only the raw COCO-Stuff masks, both benchmarks convert them on the fly.
    make_coco_stuff(tmp_path / "raw", raw_only=True)
    for key, conversion, expected in (
        ("coco_stuff", "coco_stuff_to_train_ids", COCO_STUFF_TRAIN_IDS),
        ("coco_object", "coco_stuff_to_object", COCO_OBJECT_IDS),
    ):
        data = local_benchmark_data(REGISTRY[key], tmp_path / "raw")
        assert data.label_conversion == conversion
        for index, record in enumerate(decoded(data)):
            assert record.label.dtype == np.uint8 and record.label.shape == raw_masks[record.record].shape
            np.testing.assert_array_equal(record.label, np.roll(expected, index, axis=1))


def test_missing_dataset_folders_are_explained(tmp_path):
    # The error names the folder it looked for and where to get the dataset.
    ade_images = tmp_path / "ADEChallengeData2016" / "images" / "validation"
    with pytest.raises(ValueError, match=f"{ade_images}.*Get the dataset: ADEChallengeData2016.zip from http"):
        local_benchmark_data(REGISTRY["ade20k"], tmp_path)

    make_cityscapes(tmp_path)
    for path in (tmp_path / "cityscapes/gtFine/val").rglob("*_labelTrainIds.png"):
        path.unlink()  # only the labelIds are left: they still need converting
    with pytest.raises(ValueError, match=r"\*_gtFine_labelTrainIds.png .*gtFine.val.*createTrainIdLabelImgs"):
        local_benchmark_data(REGISTRY["cityscapes"], tmp_path)

    make_context(tmp_path)
    (tmp_path / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt").unlink()
    with pytest.raises(ValueError, match="SegmentationContext.val.txt.*is missing.*pascal_context.py"):
        local_benchmark_data(REGISTRY["context59"], tmp_path)


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

    # A dataset written by `save_to_disk`: a `Dataset` (one split) or a `DatasetDict` (split chosen by --split).
    renamed = table.rename_columns({"picture": "image", "segmentation": "label"})
    renamed.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict(validation=renamed.select([2]), test=renamed).save_to_disk(tmp_path / "saved_dict")
    saved = hub_benchmark_data(REGISTRY["ade20k"], str(tmp_path / "saved"), "validation")
    np.testing.assert_array_equal([record.label for record in decoded(saved)], [reduce_zero_label(m) for m in masks])
    saved = hub_benchmark_data(REGISTRY["ade20k"], str(tmp_path / "saved_dict"), "validation")
    np.testing.assert_array_equal(decoded(saved)[0].label, reduce_zero_label(masks[2]))
    with pytest.raises(ValueError, match=r"no split 'val'.*\['validation', 'test'\]"):
        hub_benchmark_data(REGISTRY["ade20k"], str(tmp_path / "saved_dict"), "val")

    monkeypatch.setattr(benchmark_data.datasets, "load_dataset", unreachable)
    with pytest.raises(ConnectionError, match="offline.*--data-dir"):
        hub_benchmark_data(REGISTRY["ade20k"], "org/ade20k", "validation")
