# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
Evaluate SC-CLIP on the benchmarks of the paper's Table 1 (mIoU), on one process or many:

    accelerate launch eval/evaluate_benchmark.py --benchmark voc21 --model openai/clip-vit-base-patch16 \
        --data-dir data/ --output voc21.json
    accelerate launch eval/evaluate_benchmark.py --benchmark all --model openai/clip-vit-base-patch16 \
        --data-dir data/ --output table1.json

`--model` is an SC-CLIP checkpoint (folder or Hub id) or a plain CLIP one, converted on the fly. `--set name=value`
changes SC-CLIP settings (e.g. `--set use_attention_enhancement=false` for the ablations of Table 2). The split is
cut into one contiguous shard per process, each image is scored once, and the per-class pixel histograms of all
processes are summed before the metrics are computed, so any number of processes gives the same numbers. It also
runs as plain `python`.

`accelerate launch --mixed_precision bf16` (or fp16) runs the image forward passes under autocast: float32 weights,
half-precision matrix products. The text queries are embedded in float32 either way, once per benchmark.
"""

import argparse
import json
import math
import os
import time
from functools import partial
from pathlib import Path

import evaluate
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from benchmark_data import (
    LABEL_CONVERSIONS,
    BenchmarkData,
    decode_record,
    hub_benchmark_data,
    local_benchmark_data,
)
from datasets.distributed import split_dataset_by_node
from registry import PAPER_BACKBONES, Benchmark, load_registry, read_templates
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_scclip import SCCLIPForSemanticSegmentation
from modeling_scclip.configuration_scclip import SCCLIP_SETTINGS, parse_scclip_settings
from modeling_scclip.loading_scclip import add_scclip_settings_argument, load_scclip_model_and_processor
from modeling_scclip.processing_scclip import IMAGENET_TEMPLATES, SCCLIPProcessor


logger = get_logger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "streaming_mean_iou"
PAPER_ROW_TITLES = {"vit-b16": "SC-CLIP, paper (ViT-B/16)", "vit-l14": "SC-CLIP, paper (ViT-L/14)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    registry = load_registry()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=[*registry, "all"], help="Benchmark key, or all eight.")
    parser.add_argument("--model", required=True, help="SC-CLIP or CLIP checkpoint: a Hub id or a local folder.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="Folder holding the datasets in MMSegmentation's layout (or one root).")
    source.add_argument("--dataset-id", help="A Hub dataset (or one in the local datasets cache) for one benchmark.")
    parser.add_argument("--split", default="validation", help="Split of --dataset-id.")
    parser.add_argument("--image-column", default="image", help="Image column of --dataset-id.")
    parser.add_argument("--label-column", default="label", help="Label-map column of --dataset-id.")
    parser.add_argument(
        "--label-conversion",
        choices=list(LABEL_CONVERSIONS),
        help="How the labels of --dataset-id become class ids; defaults to the benchmark's (its protocol label files).",
    )
    parser.add_argument("--limit", type=int, help="Evaluate only the first N images of the split.")
    parser.add_argument("--batch-size", type=int, default=1, help="Images per forward pass and process.")
    parser.add_argument("--num-workers", type=int, default=4, help="Data-loading worker processes per process.")
    parser.add_argument("--short-side", type=int, help="Override the benchmark's resize short side (e.g. for tests).")
    parser.add_argument(
        "--templates", help="Prompt templates file, one a line with {} for the name (default: ImageNet's 80)."
    )
    add_scclip_settings_argument(parser)
    parser.add_argument("--skip-bad", action="store_true", help="Skip (and count) unreadable or mismatched records.")
    parser.add_argument("--output", help="Write the results as JSON to this file.")
    args = parser.parse_args(argv)
    if args.benchmark == "all" and args.dataset_id:
        parser.error("--benchmark all reads the eight datasets from --data-dir; a --dataset-id serves one benchmark.")
    for name in ("limit", "batch_size", "short_side"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1.")
    if args.num_workers < 0:
        parser.error("--num-workers must be at least 0.")
    return args


def load_benchmark_data(benchmark: Benchmark, args: argparse.Namespace) -> BenchmarkData:
    if args.data_dir:
        data = local_benchmark_data(benchmark, args.data_dir)
    else:
        data = hub_benchmark_data(
            benchmark, args.dataset_id, args.split, args.image_column, args.label_column, args.label_conversion
        )
    if args.limit is not None:
        data.dataset = data.dataset.select(range(min(args.limit, len(data.dataset))))
    return data


def encode_queries(
    processor: SCCLIPProcessor, model: SCCLIPForSemanticSegmentation, benchmark: Benchmark, templates: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The protocol's text queries: one per name of every class, in order, and the class of each. As in the authors'
    protocol a name may serve two classes (COCO-Object's background names include "bed"): every distinct name is
    embedded once, by one `encode_labels` call, and its embedding serves each of its queries.
    """
    names = [name for class_names in benchmark.labels for name in class_names]
    distinct_names = list(dict.fromkeys(names))
    embeddings = processor.encode_labels(model, [[name] for name in distinct_names], templates)
    rows = torch.tensor([distinct_names.index(name) for name in names], device=embeddings.text_embeds.device)
    query_to_class = torch.tensor([index for index, class_names in enumerate(benchmark.labels) for _ in class_names])
    return embeddings.text_embeds[rows], query_to_class


def decode_batch(examples: list[dict], label_conversion: str, skip_bad: bool):
    return [decode_record(example, label_conversion, skip_bad) for example in examples]


def _to_device(pixel_values, device):
    if isinstance(pixel_values, torch.Tensor):
        return pixel_values.to(device)
    return [values.to(device) for values in pixel_values]


def reduce_histogram(accelerator: Accelerator, metric: evaluate.EvaluationModule) -> None:
    """Replace every process's histogram by the sum over processes (histograms may differ in shape: pad first)."""
    local = torch.from_numpy(metric.histogram).to(accelerator.device)
    shape = accelerator.gather(torch.tensor([local.shape], device=accelerator.device)).amax(dim=0).tolist()
    padded = local.new_zeros(shape)
    padded[: local.shape[0], : local.shape[1]] = local
    total = accelerator.reduce(padded, reduction="sum")
    num_pairs = sum(gather_object([len(metric)]))
    metric.reset()
    metric.add_histogram(total.cpu().numpy(), num_pairs=num_pairs)


def _percent(value) -> float | None:
    return None if math.isnan(value) else round(float(value) * 100, 4)


def evaluate_benchmark(
    benchmark: Benchmark,
    data: BenchmarkData,
    model: SCCLIPForSemanticSegmentation,
    processor: SCCLIPProcessor,
    accelerator: Accelerator,
    templates: list[str],
    args: argparse.Namespace,
) -> dict:
    """Score one benchmark on this process's shard of the split; returns the metrics over all processes."""
    short_side = args.short_side or benchmark.short_side
    # Once per benchmark, before the loop: every batch reuses these query embeddings.
    text_embeds, query_to_class = encode_queries(processor, model, benchmark, templates)
    with accelerator.main_process_first():
        metric = evaluate.load(str(METRIC_PATH))
    shard = split_dataset_by_node(data.dataset, rank=accelerator.process_index, world_size=accelerator.num_processes)
    loader = DataLoader(
        shard,
        batch_size=args.batch_size,
        collate_fn=partial(decode_batch, label_conversion=data.label_conversion, skip_bad=args.skip_bad),
        num_workers=args.num_workers,
    )
    skipped = []
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    progress = tqdm(total=len(shard), desc=benchmark.key, disable=not accelerator.is_main_process)
    for records in loader:
        good = [record for record in records if record.error is None]
        for record in records:
            if record.error is not None:
                logger.warning(f"Skipping broken record {record.error}", main_process_only=False)
                skipped.append(record.error)
        if good:
            inputs = processor([record.image for record in good], short_side=short_side, return_tensors="pt")
            with torch.inference_mode(), accelerator.autocast():
                outputs = model(
                    pixel_values=_to_device(inputs["pixel_values"], accelerator.device), text_embeds=text_embeds
                )
            label_maps = processor.post_process_semantic_segmentation(
                outputs,
                target_sizes=inputs["original_sizes"],
                query_to_class=query_to_class,
                logit_scale=benchmark.logit_scale,
                prob_threshold=benchmark.prob_threshold,
                area_threshold=benchmark.area_threshold,
            )
            metric.add_batch(
                predictions=[label_map.cpu().numpy() for label_map in label_maps],
                references=[record.label for record in good],
            )
        progress.update(len(records))
    progress.close()

    reduce_histogram(accelerator, metric)
    skipped = sorted(gather_object(skipped))
    seconds = time.perf_counter() - start
    num_images = len(metric)
    scores = metric.compute(num_labels=benchmark.num_classes, ignore_index=benchmark.ignore_index)
    return {
        "benchmark": benchmark.key,
        "dataset": benchmark.dataset,
        "source": data.source,
        "mIoU": _percent(scores["mean_iou"]),
        "mAcc": _percent(scores["mean_accuracy"]),
        "aAcc": _percent(scores["overall_accuracy"]),
        "per_class_iou": {name: _percent(iou) for name, iou in zip(benchmark.class_names, scores["per_category_iou"])},
        "num_images": num_images,
        "num_skipped": len(skipped),
        "skipped_records": skipped,
        "seconds": round(seconds, 3),
        "images_per_second": round(num_images / seconds, 3) if seconds > 0 else None,
        "settings": {
            "num_classes": benchmark.num_classes,
            "num_queries": len(query_to_class),
            "num_templates": len(templates),
            "label_conversion": data.label_conversion,
            "ignore_index": benchmark.ignore_index,
            "short_side": short_side,
            "logit_scale": benchmark.logit_scale,
            "prob_threshold": benchmark.prob_threshold,
            "area_threshold": benchmark.area_threshold,
            "limit": args.limit,
        },
        "paper_miou": benchmark.paper_miou,
    }


def _table_row(title: str, values: list[float | None]) -> str:
    cells = ["–" if value is None else f"{value:.1f}" for value in values]
    return "| " + " | ".join([title, *cells]) + " |"


def _average(values: list[float | None]) -> float | None:
    return None if any(value is None for value in values) else float(np.mean(values))


def markdown_table(results: dict[str, dict], model_name: str, registry: dict[str, Benchmark]) -> str:
    """A Table 1 style markdown table: the paper's SC-CLIP rows and this run's row (– where not evaluated)."""
    header = "| Method | " + " | ".join(benchmark.column for benchmark in registry.values()) + " | Avg |"
    lines = [header, "|" + " --- |" * (len(registry) + 2)]
    for backbone in PAPER_BACKBONES:
        values = [benchmark.paper_miou[backbone] for benchmark in registry.values()]
        lines.append(_table_row(PAPER_ROW_TITLES[backbone], [*values, _average(values)]))
    values = [results[key]["mIoU"] if key in results else None for key in registry]
    lines.append(_table_row(f"{model_name} (this run)", [*values, _average(values)]))
    return "\n".join(lines)


def make_accelerator() -> Accelerator:
    # `accelerate launch --multi_gpu` without any accelerator would fall back to independent single processes: run
    # the processes on CPU with the gloo backend instead.
    launched_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=launched_distributed and not torch.accelerator.is_available())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = parse_scclip_settings(args.settings)
    registry = load_registry()
    keys = list(registry) if args.benchmark == "all" else [args.benchmark]
    accelerator = make_accelerator()
    try:
        model, processor = load_scclip_model_and_processor(args.model, **overrides)
        model.to(accelerator.device)
        templates = read_templates(args.templates) if args.templates else list(IMAGENET_TEMPLATES)
        results = {}
        for key in keys:
            data = load_benchmark_data(registry[key], args)
            results[key] = evaluate_benchmark(registry[key], data, model, processor, accelerator, templates, args)
            logger.info(f"{key}: mIoU {results[key]['mIoU']} on {results[key]['num_images']} images")
        miou = [result["mIoU"] for result in results.values()]
        summary = {
            "model": args.model,
            "config_overrides": overrides,
            # Every SC-CLIP setting the run used, so that an ablation row says what it changed.
            "model_settings": {name: getattr(model.config, name) for name in SCCLIP_SETTINGS},
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "benchmarks": results,
            "mean_miou": _average(miou) if len(results) == len(registry) else None,
            "table": markdown_table(results, args.model, registry),
        }
        if accelerator.is_main_process:
            print(summary["table"])
            if args.output:
                Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        accelerator.end_training()


if __name__ == "__main__":
    main()
