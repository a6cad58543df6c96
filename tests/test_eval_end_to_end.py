"""eval/evaluate_benchmark.py end to end with a tiny random model on synthetic benchmark folders (no network)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image


REPO = Path(__file__).resolve().parents[1]
# eval/ holds scripts rather than a package: import its modules the way its scripts do.
sys.path.insert(0, str(REPO / "eval"))

import evaluate_benchmark  # noqa: E402
from benchmark_data import BrokenRecordError  # noqa: E402
from evaluate_benchmark import encode_queries, main  # noqa: E402
from registry import load_registry  # noqa: E402
from test_eval_datasets import make_ade20k, make_cityscapes, make_coco_stuff, make_context, make_voc, make_voc2012  # noqa: E402
from test_eval_metric import hub_mean_iou  # noqa: E402
from tiny_models import save_tiny_clip, tiny_tokenizer  # noqa: E402

from modeling_scclip import SCCLIPForSemanticSegmentation  # noqa: E402
from modeling_scclip.configuration_scclip import parse_scclip_settings  # noqa: E402
from modeling_scclip.image_processing_scclip import SCCLIPImageProcessor  # noqa: E402
from modeling_scclip.loading_scclip import load_scclip_model_and_processor  # noqa: E402
from modeling_scclip.processing_scclip import IMAGENET_TEMPLATES, SCCLIPProcessor  # noqa: E402


SCRIPT = REPO / "eval" / "evaluate_benchmark.py"
REGISTRY = load_registry()
# The tiny model has 8-pixel patches: 64-pixel windows and images resized to a 64-pixel short side keep it fast.
TINY_WINDOWS = {"slide_crop_size": 64, "slide_stride": 32, "lof_n_neighbors": 8}
TINY_SETTINGS = [option for name, value in TINY_WINDOWS.items() for option in ("--set", f"{name}={value}")]
VOC_NAMES = [f"2007_{index:06d}" for index in range(5)]  # an odd number of images for two processes
TEMPLATES = ["a photo of a {}."]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    save_tiny_clip(folder / "clip")
    make_voc(folder / "data", "VOC2012", "SegmentationClass", "ImageSets/Segmentation/val.txt", VOC_NAMES, 21)
    (folder / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return folder


def cli_arguments(workspace: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--benchmark", "voc21", "--model", str(workspace / "clip"), "--data-dir", str(workspace / "data")),
        *("--short-side", "64", "--templates", str(workspace / "templates.txt"), "--output", str(output)),
        *TINY_SETTINGS,
        *extra,
    ]


def run_script(launcher: list[str], arguments: list[str]) -> tuple[dict, str]:
    """Run the script, check that it succeeds; its JSON output and its stderr (logs, progress bars)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [*launcher, str(SCRIPT), *arguments], env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(Path(arguments[arguments.index("--output") + 1]).read_text()), completed.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def one_and_two_processes(workspace):
    single, _ = run_script([sys.executable], cli_arguments(workspace, workspace / "one.json", "--num-workers", "1"))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    accelerate += ["--main_process_port", str(free_port())]
    double, double_stderr = run_script(
        accelerate, cli_arguments(workspace, workspace / "two.json", "--num-workers", "0", "--batch-size", "2")
    )
    return single, double, double_stderr


def test_one_and_two_processes_give_identical_metrics(one_and_two_processes):
    single, double, _ = one_and_two_processes
    assert (single["num_processes"], double["num_processes"]) == (1, 2)
    single, double = single["benchmarks"]["voc21"], double["benchmarks"]["voc21"]
    assert single["num_images"] == double["num_images"] == len(VOC_NAMES)
    for name in ("mIoU", "mAcc", "aAcc", "per_class_iou", "num_skipped"):
        assert single[name] == double[name], name
    assert list(single["per_class_iou"]) == REGISTRY["voc21"].class_names
    assert single["settings"]["short_side"] == 64 and single["settings"]["num_templates"] == 1
    assert single["images_per_second"] > 0


def test_progress_bar_only_on_the_main_process(one_and_two_processes):
    # Five images on two processes: contiguous shards of 3 and 2; only the main process (3 images) draws a bar.
    stderr = one_and_two_processes[2]
    assert "voc21: 100%" in stderr and "3/3" in stderr
    assert "2/2" not in stderr


def direct_evaluation(workspace: Path, precision=contextlib.nullcontext, **overrides) -> dict:
    """
    Score every image with the model (SC-CLIP settings `overrides`, under `precision()`) and processor directly, and
    the Hub metric's formulas.
    """
    benchmark = REGISTRY["voc21"]
    model = SCCLIPForSemanticSegmentation.from_clip(str(workspace / "clip"), **TINY_WINDOWS, **overrides)
    processor = SCCLIPProcessor(SCCLIPImageProcessor(), tiny_tokenizer())
    queries = processor.encode_labels(model, benchmark.labels, TEMPLATES)
    root = workspace / "data" / "VOCdevkit" / "VOC2012"
    predictions, references = [], []
    for name in VOC_NAMES:
        image = Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB")
        inputs = processor(images=image, short_side=64)
        with torch.no_grad(), precision():
            outputs = model(pixel_values=inputs["pixel_values"], text_embeds=queries.text_embeds)
        prediction = processor.post_process_semantic_segmentation(
            outputs,
            target_sizes=inputs["original_sizes"],
            query_to_class=queries.query_to_class,
            logit_scale=50,
            prob_threshold=0.15,
            area_threshold=0.1,
        )[0]
        predictions.append(prediction.numpy())
        references.append(np.array(Image.open(root / "SegmentationClass" / f"{name}.png")))
    return hub_mean_iou(predictions, references, num_labels=21, ignore_index=255)


@contextlib.contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def assert_metrics_equal(result: dict, expected: dict):
    assert result["mIoU"] == pytest.approx(100 * expected["mean_iou"], abs=1e-4)
    assert result["aAcc"] == pytest.approx(100 * expected["overall_accuracy"], abs=1e-4)
    per_class = [np.nan if iou is None else iou for iou in result["per_class_iou"].values()]
    np.testing.assert_allclose(per_class, 100 * expected["per_category_iou"], atol=1e-4)


def test_metrics_equal_a_direct_evaluation(workspace, one_and_two_processes):
    single = one_and_two_processes[0]
    assert single["model"] == str(workspace / "clip") and single["mixed_precision"] == "no"
    assert_metrics_equal(single["benchmarks"]["voc21"], direct_evaluation(workspace))


def test_accelerate_mixed_precision_runs_the_images_under_autocast(workspace, tmp_path, one_and_two_processes):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    launcher += ["--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    # Without the CLS residual: with it, this random model's label maps are uniform and bfloat16 changes no label.
    arguments = cli_arguments(
        workspace, tmp_path / "bf16.json", "--num-workers", "0", "--set", "cls_residual_weight=0"
    )
    summary, _ = run_script(launcher, arguments)
    assert summary["mixed_precision"] == "bf16"
    result = summary["benchmarks"]["voc21"]
    # bfloat16 rounds partial sums, so its labels depend on how the products are split over threads: one thread here
    # as in the script's process (OMP_NUM_THREADS=1).
    with torch_threads(1):
        bfloat16 = direct_evaluation(
            workspace, partial(torch.autocast, "cpu", dtype=torch.bfloat16), cls_residual_weight=0
        )
    assert_metrics_equal(result, bfloat16)
    # And not the float32 numbers: the run did not stay in float32.
    assert result["mIoU"] != pytest.approx(100 * direct_evaluation(workspace, cls_residual_weight=0)["mean_iou"])


def test_dataset_id_gives_the_metrics_of_the_data_dir(workspace, tmp_path, one_and_two_processes):
    """The same VOC images as a `datasets.Dataset` saved with `save_to_disk`, with its own column names."""
    root = workspace / "data" / "VOCdevkit" / "VOC2012"
    saved = datasets.Dataset.from_dict(
        {
            "photo": [str(root / "JPEGImages" / f"{name}.jpg") for name in VOC_NAMES],
            "mask": [str(root / "SegmentationClass" / f"{name}.png") for name in VOC_NAMES],
        },
        features=datasets.Features({"photo": datasets.Image(), "mask": datasets.Image()}),
    )
    datasets.DatasetDict(val=saved).save_to_disk(tmp_path / "voc")
    arguments = cli_arguments(workspace, tmp_path / "out.json", "--num-workers", "0")
    at = arguments.index("--data-dir")
    arguments[at : at + 2] = ["--dataset-id", str(tmp_path / "voc"), "--split", "val"]
    result = main([*arguments, "--image-column", "photo", "--label-column", "mask"])["benchmarks"]["voc21"]

    expected = one_and_two_processes[0]["benchmarks"]["voc21"]
    assert result["num_images"] == len(VOC_NAMES) and result["source"] == f"{tmp_path / 'voc'}[val]"
    for name in ("mIoU", "mAcc", "aAcc", "per_class_iou"):
        assert result[name] == expected[name], name


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap `owner.name` so that each call's arguments are recorded in the returned list."""
    calls, original = [], getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def test_broken_record_is_named_then_skipped(workspace, tmp_path, monkeypatch):
    shutil.copytree(workspace / "data", tmp_path / "data")
    (tmp_path / "data/VOCdevkit/VOC2012/JPEGImages/2007_000003.jpg").write_bytes(b"truncated")
    arguments = cli_arguments(workspace, tmp_path / "out.json", "--num-workers", "0")
    arguments[arguments.index("--data-dir") + 1] = str(tmp_path / "data")
    ended = count_calls(monkeypatch, evaluate_benchmark.Accelerator, "end_training")
    # Decoded in a data-loading worker too, the error names the record.
    for workers in ("0", "1"):
        with pytest.raises(BrokenRecordError, match="'2007_000003'.*unreadable image.*--skip-bad"):
            main([*arguments, "--num-workers", workers])
    assert len(ended) == 2, "the process group is ended even when the run stops on an error"

    result = main([*arguments, "--skip-bad"])["benchmarks"]["voc21"]
    assert (result["num_images"], result["num_skipped"]) == (len(VOC_NAMES) - 1, 1)
    assert "'2007_000003'" in result["skipped_records"][0]
    assert json.loads((tmp_path / "out.json").read_text())["benchmarks"]["voc21"]["num_skipped"] == 1
    assert len(ended) == 3


def test_text_embeddings_computed_once_per_benchmark(workspace, monkeypatch):
    """Three images, one per batch: the text tower embeds each name in each of the 80 ImageNet templates once."""
    encode_calls = count_calls(monkeypatch, SCCLIPProcessor, "encode_labels")
    text_calls = count_calls(monkeypatch, SCCLIPForSemanticSegmentation, "get_text_features")
    image_calls = count_calls(monkeypatch, SCCLIPForSemanticSegmentation, "forward")
    arguments = [
        *("--benchmark", "voc20", "--model", str(workspace / "clip"), "--data-dir", str(workspace / "data")),
        *("--limit", "3", "--short-side", "64", "--num-workers", "0", *TINY_SETTINGS),
    ]
    result = main(arguments)["benchmarks"]["voc20"]

    assert result["num_images"] == 3 and len(image_calls) == 3
    assert len(encode_calls) == 1
    assert list(encode_calls[0][0][3]) == list(IMAGENET_TEMPLATES), "the package's templates by default"
    num_names = sum(len(names) for names in REGISTRY["voc20"].labels)
    embedded_prompts = sum(kwargs["input_ids"].shape[0] for _, kwargs in text_calls)
    assert embedded_prompts == num_names * len(IMAGENET_TEMPLATES) and result["settings"]["num_templates"] == 80


def test_all_benchmarks_with_an_scclip_checkpoint(workspace, tmp_path):
    for make in (make_voc2012, make_context, make_ade20k, make_cityscapes, make_coco_stuff):
        make(tmp_path / "data")
    checkpoint = tmp_path / "scclip"
    SCCLIPForSemanticSegmentation.from_clip(str(workspace / "clip"), **TINY_WINDOWS).save_pretrained(checkpoint)
    SCCLIPProcessor(SCCLIPImageProcessor(), tiny_tokenizer()).save_pretrained(checkpoint)
    arguments = [
        *("--benchmark", "all", "--model", str(checkpoint), "--data-dir", str(tmp_path / "data"), "--limit", "1"),
        *("--short-side", "64", "--templates", str(workspace / "templates.txt"), "--num-workers", "0"),
        *("--set", "use_attention_enhancement=false", "--output", str(tmp_path / "table.json")),
    ]
    summary = main(arguments)

    assert list(summary["benchmarks"]) == list(REGISTRY)
    assert all(result["num_images"] == 1 for result in summary["benchmarks"].values())
    miou = [result["mIoU"] for result in summary["benchmarks"].values()]
    assert summary["mean_miou"] == pytest.approx(np.mean(miou))
    assert summary["config_overrides"] == {"use_attention_enhancement": False}
    assert summary["model_settings"]["use_attention_enhancement"] is False
    assert summary["model_settings"]["slide_crop_size"] == TINY_WINDOWS["slide_crop_size"]
    this_run = summary["table"].splitlines()[-1]
    assert (
        this_run
        == "| "
        + " | ".join([f"{checkpoint} (this run)", *(f"{value:.1f}" for value in miou), f"{np.mean(miou):.1f}"])
        + " |"
    )
    assert summary["benchmarks"]["coco_object"]["settings"]["label_conversion"] == "none"
    assert json.loads((tmp_path / "table.json").read_text())["table"] == summary["table"]


def test_coco_object_queries_share_a_name_between_two_classes(workspace):
    model, processor = load_scclip_model_and_processor(str(workspace / "clip"))
    benchmark = REGISTRY["coco_object"]
    text_embeds, query_to_class = encode_queries(processor, model, benchmark, TEMPLATES)
    names = [name for class_names in benchmark.labels for name in class_names]
    assert len(names) == len(text_embeds) == len(query_to_class)
    bed_queries = [index for index, name in enumerate(names) if name == "bed"]
    assert query_to_class[bed_queries].tolist() == [0, benchmark.class_names.index("bed")]
    bed = processor.encode_labels(model, ["bed"], TEMPLATES).text_embeds[0]
    for index in bed_queries:
        torch.testing.assert_close(text_embeds[index], bed)


def test_set_overrides_reach_the_model(workspace):
    overrides = parse_scclip_settings(["use_feature_aggregation=false", "slide_stride=16", "anomaly_detector=l2_norm"])
    model, _ = load_scclip_model_and_processor(str(workspace / "clip"), **overrides)
    assert (model.config.use_feature_aggregation, model.config.slide_stride, model.config.anomaly_detector) == (
        False,
        16,
        "l2_norm",
    )
