#!/usr/bin/env python
# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
Compare this port with the authors' released SC-CLIP code (GitHub SuleBai/SC-CLIP) on the same random weights and the
same images: how closely the logits and the label maps agree, and how fast each segments an image.

    git clone https://github.com/SuleBai/SC-CLIP ../SC-CLIP
    python scripts/compare_with_authors.py --authors-repo ../SC-CLIP --models vit-b16 --sizes 336x448 336x500

Nothing of the authors' code is part of this project: it is imported from the folder given. Their model is their
`clip/model.py` (plain torch); their slide inference is `SCCLIPForSegmentation.forward_slide` of their
`scclip_segmentor.py`, which subclasses MMSegmentation's `BaseSegmentor`. Only those two methods run, so the names
their modules import from mmseg, mmengine, the OpenAI `clip` package loaders, their prompt and PAMR modules (and
torchvision, imported but unused by their model) are provided by stand-ins: no MMSegmentation install is needed.

Both sides get the same normalised pixels and the same normalised text queries; their logits are cosine
similarities like this port's. The port's run is SC-CLIP with windows batched, case (b) of scripts/benchmark.py; the
authors' is their own loop, one window at a time. The two take turns within each repeat; times are medians over the
repeats, and the speed ratio is the median of the repeats' own ratios, which cancels a shared machine's slow drifts.
"""

import argparse
import dataclasses
import functools
import importlib.util
import json
import statistics
import sys
import types
from pathlib import Path

import torch
from benchmark import DTYPES, MODEL_SHAPES, character_tokenizer, parse_size, random_scclip_model, time_cases

from modeling_scclip import SCCLIPForSemanticSegmentation


# Modules the authors' files import at their top level, and the names used from them, none on the measured path.
STAND_IN_MODULES = {
    "mmseg": {},
    "mmseg.models": {},
    "mmseg.models.segmentors": {"BaseSegmentor": torch.nn.Module},
    "mmseg.models.data_preprocessor": {"SegDataPreProcessor": object},
    "mmseg.registry": {"MODELS": types.SimpleNamespace(register_module=lambda *a, **k: lambda cls: cls)},
    "mmengine": {},
    "mmengine.structures": {"PixelData": object},
    "clip": {},
    "prompts": {},
    "prompts.imagenet_template": {"openai_imagenet_template": []},
    "pamr": {"PAMR": object},
    "torchvision": {},
    "torchvision.transforms": {},
    "torchvision.transforms.functional": {},
}
# Settings the authors' code fixes in its source; the port's models are built with the same values.
AUTHORS_FIXED_SETTINGS = {
    "lof_n_neighbors": 30,
    "lof_contamination": 0.05,
    "similarity_threshold": 0.4,
    "attention_temperature": 3.0,
}


def import_file(name: str, path: Path) -> types.ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --authors-repo must be a clone of github.com/SuleBai/SC-CLIP.")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def import_authors_code(repo: Path) -> tuple[types.ModuleType, type]:
    """Their `clip/model.py` module and their segmentor class, imported with stand-ins for what they do not use here."""
    has_torchvision = importlib.util.find_spec("torchvision") is not None
    for name, attributes in STAND_IN_MODULES.items():
        if name.startswith("torchvision") and has_torchvision:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
    model_module = import_file("authors_clip_model", repo / "clip" / "model.py")
    segmentor_module = import_file("authors_scclip_segmentor", repo / "scclip_segmentor.py")
    return model_module, segmentor_module.SCCLIPForSegmentation


def openai_visual_state_dict(model: SCCLIPForSemanticSegmentation) -> dict[str, torch.Tensor]:
    """The port's vision tower in the OpenAI `VisionTransformer` layout of the authors' code."""
    weights = model.state_dict()
    state = {
        "conv1.weight": weights["embeddings.patch_embedding.weight"],
        "class_embedding": weights["embeddings.class_embedding"],
        "positional_embedding": weights["embeddings.position_embedding.weight"],
        "proj": weights["visual_projection.weight"].T,
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            state[f"{theirs}.{kind}"] = weights[f"{ours}.{kind}"]
    renamed = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
    renamed |= {"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for index in range(model.config.num_hidden_layers):
        ours, theirs = f"encoder.layers.{index}", f"transformer.resblocks.{index}"
        for kind in ("weight", "bias"):
            projections = [weights[f"{ours}.self_attn.{name}_proj.{kind}"] for name in ("q", "k", "v")]
            state[f"{theirs}.attn.in_proj_{kind}"] = torch.cat(projections)
            for our_name, their_name in renamed.items():
                state[f"{theirs}.{their_name}.{kind}"] = weights[f"{ours}.{our_name}.{kind}"]
    return state


def authors_segmentor(model: SCCLIPForSemanticSegmentation, text_embeds: torch.Tensor, repo: Path):
    """The authors' segmentor holding the port's weights, SC-CLIP settings and (normalised) text queries."""
    model_module, segmentor_class = import_authors_code(repo)
    config = model.config
    visual = model_module.VisionTransformer(
        input_resolution=config.image_size,
        patch_size=config.patch_size,
        width=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        output_dim=config.projection_dim,
    )
    visual.load_state_dict(openai_visual_state_dict(model))
    # Their indices count layers from 0 and their fusion range excludes its end; the port's are 1-indexed, inclusive.
    visual.pre_adjust_idx = config.pre_adjust_layer - 1
    visual.post_adjust_idx = config.post_adjust_layer - 1
    visual.multi_start_idx = config.fusion_start_layer - 1
    visual.multi_end_idx = config.fusion_end_layer
    visual.res_cls = config.cls_residual_weight
    segmentor = segmentor_class.__new__(segmentor_class)
    torch.nn.Module.__init__(segmentor)
    segmentor.net = types.SimpleNamespace(visual=visual.eval(), encode_image=visual.forward)
    segmentor.query_features = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    segmentor.num_queries = len(text_embeds)
    segmentor.pamr = None
    return segmentor


def authors_logits(segmentor, config, pixel_values: torch.Tensor) -> torch.Tensor:
    """Their slide inference, image by image (their code takes one image at a time)."""
    logits = [
        segmentor.forward_slide(
            image[None],
            [{"ori_shape": tuple(image.shape[-2:])}],
            stride=config.slide_stride,
            crop_size=config.slide_crop_size,
        )
        for image in pixel_values
    ]
    return torch.cat(logits)


def compare(name: str, size: tuple[int, int], args) -> dict:
    shape = MODEL_SHAPES[name]
    shape = dataclasses.replace(shape, scclip_overrides={**shape.scclip_overrides, **AUTHORS_FIXED_SETTINGS})
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = random_scclip_model(shape, character_tokenizer(), args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(1, 3, *size, generator=generator).to(device=device, dtype=dtype)
    text_embeds = torch.randn(args.num_queries, model.config.projection_dim, generator=generator)
    text_embeds = text_embeds.to(device=device, dtype=dtype)
    segmentor = authors_segmentor(model, text_embeds, args.authors_repo)
    segmentor.net.visual.to(device)
    if dtype == torch.float16:
        # What OpenAI's clip.load does on CUDA, so what the authors' code runs: half weights, float32 LayerNorms.
        import_authors_code(args.authors_repo)[0].convert_weights(segmentor.net.visual)
    model.to(device=device, dtype=dtype)
    cases = {
        "port_batched": lambda: model(pixel_values, text_embeds=text_embeds).logits,
        "authors": lambda: authors_logits(segmentor, model.config, pixel_values),
    }
    with torch.inference_mode():
        ours, theirs = cases["port_batched"](), cases["authors"]().float()
        times = time_cases(cases, device, args.warmup, args.repeats)
    ms = {case: statistics.median(values) for case, values in times.items()}
    # The two sides take turns within each repeat: the ratio of each repeat cancels the machine's slower drifts.
    ratios = [authors / port for authors, port in zip(times["authors"], times["port_batched"])]
    return {
        "model": name,
        "size": f"{size[0]}x{size[1]}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "tf32_convolutions": torch.backends.cudnn.allow_tf32 and device.type == "cuda",
        "max_abs_logit_difference": (ours - theirs).abs().max().item(),
        "label_agreement_percent": 100 * (ours.argmax(1) == theirs.argmax(1)).float().mean().item(),
        "ms_per_image": ms,
        "authors_over_port_time": statistics.median(ratios),
        "authors_over_port_time_per_repeat": ratios,
    }


def markdown(results: list[dict], command: str) -> str:
    lines = [
        f"`{command}` (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)",
        "",
        "| model | size | device | dtype | port (b) ms/img | authors ms/img | authors / port (median of repeats) "
        "| range over repeats | max abs logit diff | labels agree |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        ms = result["ms_per_image"]
        lines.append(
            f"| {result['model']} | {result['size']} | {result['device']} | "
            f"{result['dtype']}{' (TF32 convolutions)' if result['tf32_convolutions'] else ''} | "
            f"{ms['port_batched']:.1f} | {ms['authors']:.1f} | "
            f"{result['authors_over_port_time']:.2f} | {min(result['authors_over_port_time_per_repeat']):.2f}–"
            f"{max(result['authors_over_port_time_per_repeat']):.2f} | {result['max_abs_logit_difference']:.2e} | "
            f"{result['label_agreement_percent']:.3f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-repo", type=Path, required=True, help="A clone of github.com/SuleBai/SC-CLIP.")
    parser.add_argument("--models", nargs="+", choices=sorted(MODEL_SHAPES), default=["vit-b16"])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(336, 448)], help="HEIGHTxWIDTH")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="Both sides' weights and inputs. The authors' code runs float16 on CUDA (OpenAI's clip.load casts the "
        "weights), and has no bfloat16 path.",
    )
    parser.add_argument(
        "--no-tf32",
        action="store_true",
        help="Turn off cuDNN's TF32 convolutions (PyTorch's default on CUDA), which round the patch embedding of "
        "both sides to about 1e-3 and differently for different window batch sizes.",
    )
    parser.add_argument("--num-queries", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="Write the results as JSON to this file.")
    args = parser.parse_args(argv)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    results = [compare(name, size, args) for name in args.models for size in args.sizes]
    command = " ".join(["python scripts/compare_with_authors.py", *(sys.argv[1:] if argv is None else argv)])
    print(markdown(results, command))
    if args.output:
        args.output.write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
