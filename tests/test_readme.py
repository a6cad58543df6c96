"""The README's commands and Python examples are true: CI runs its test command, its code runs on tiny checkpoints."""

import os
import re
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_clip


REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
HUB_CLIP = "openai/clip-vit-base-patch16"
CONVERTED_PLACEHOLDER = "path/or/hub-id-of-a-converted-checkpoint"

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import convert_clip_to_scclip  # noqa: E402


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny CLIP folder standing in for the Hub's CLIP, and its conversion standing in for a Hub SC-CLIP repo."""
    clip = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    converted = tmp_path_factory.mktemp("converted") / "scclip"
    assert convert_clip_to_scclip.main(["--clip", clip, "--output", str(converted)]) == 0
    return clip, str(converted)


def run_example(code: str, monkeypatch) -> dict:
    """Execute a README example from the repository root (its image paths are relative to it); return its names."""
    monkeypatch.chdir(REPO_ROOT)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_the_first_lines_give_the_main_command_and_the_test_command_ci_runs():
    main_command, test_command = code_blocks("bash")[:2]
    assert "scclip-segment examples/house_tree_sky.png" in main_command and (REPO_ROOT / "examples").is_dir()
    ci = (REPO_ROOT / ".ci" / "run").read_text().replace(" --quiet", "")
    for step in (
        "python3 -m venv .venv",
        "pip install torch==2.13.0",
        'pip install -e ".[test]"',
        "python -m pytest -q",
    ):
        assert step in test_command and step in ci
    assert README.index(main_command) < README.index(test_command) < README.index("## Install")


def test_python_usage_example_runs_and_segments(checkpoints, monkeypatch):
    clip, _ = checkpoints
    code = code_blocks("python")[0]
    assert code.count(HUB_CLIP) == 2
    namespace = run_example(code.replace(HUB_CLIP, clip), monkeypatch)
    label_map, image = namespace["label_map"], namespace["image"]
    assert label_map.shape == (image.height, image.width) and label_map.dtype == torch.long
    assert 0 <= label_map.min() and label_map.max() < len(namespace["labels"])


def test_pipeline_example_runs_and_its_comment_shows_the_output(checkpoints, monkeypatch):
    _, converted = checkpoints
    code = code_blocks("python")[1]
    assert CONVERTED_PLACEHOLDER in code
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = run_example(code.replace(CONVERTED_PLACEHOLDER, converted), monkeypatch)
    segments, results = namespace["segments"], namespace["results"]
    assert {segment["label"] for segment in segments} <= {"sky", "tree", "grass", "house", "road"}
    assert all(segment["mask"].mode == "L" and segment["mask"].size == (480, 360) for segment in segments)
    assert len(results) == 2 and results[0]["labels"] == ["sky", "tree", "house"]
    assert tuple(results[0]["label_map"].shape) == (360, 480)
    assert os.path.isfile(REPO_ROOT / "examples" / "house_tree_sky.png")


def test_half_precision_example_runs_after_the_usage_and_pipeline_examples(checkpoints, monkeypatch):
    """The three examples in one namespace, as a reader runs them: model, inputs, queries and segmenter carry over."""
    clip, converted = checkpoints
    usage, pipeline_example, half_precision = code_blocks("python")[:3]
    assert "torch.autocast(device, dtype=torch.bfloat16)" in half_precision
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO_ROOT)
    namespace = {}
    for code in (usage.replace(HUB_CLIP, clip), pipeline_example.replace(CONVERTED_PLACEHOLDER, converted)):
        exec(compile(code, "README.md", "exec"), namespace)
    exec(compile(half_precision, "README.md", "exec"), namespace)
    assert namespace["model"].dtype == torch.float16
    logits = namespace["outputs"].logits
    assert logits.dtype == torch.float32 and logits.shape[-2:] == namespace["inputs"]["pixel_values"].shape[-2:]
    assert {segment["label"] for segment in namespace["segments"]} <= {"sky", "tree", "house"}
