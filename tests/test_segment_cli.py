"""The `scclip-segment` command line, end to end on tiny checkpoints (SC-CLIP and plain CLIP), without network."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import (
    TINY_SHORT_SIDE,
    direct_segmentation,
    save_tiny_scclip_checkpoint,
    scene_image,
    tiny_scclip_and_processor,
)
from tiny_models import save_tiny_clip, tiny_clip_model, tiny_tokenizer

from modeling_scclip import SCCLIPForSemanticSegmentation
from modeling_scclip.image_processing_scclip import SCCLIPImageProcessor
from modeling_scclip.loading_scclip import load_scclip_model_and_processor
from modeling_scclip.processing_scclip import SCCLIPProcessor
from scripts import make_example_image, segment
from scripts.segment import main


EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "house_tree_sky.png"
LABELS_ARGUMENT = "sky,tree,grass;lawn,house"
CLASS_NAMES = ["sky", "tree", "grass", "house"]
SHARE_LINE = re.compile(r"^  (\S+)\s+(\d+\.\d)%$")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_scclip_checkpoint(tmp_path_factory.mktemp("tiny_scclip"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The same scene as RGB, grayscale, RGBA and 16-bit grayscale files."""
    folder = tmp_path_factory.mktemp("images")
    scene = scene_image()
    scene.save(folder / "rgb.png")
    scene.convert("L").save(folder / "grey.png")
    scene.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(np.array(scene.convert("L")).astype(np.uint16) * 257).save(folder / "grey16.png")
    return [folder / name for name in ("rgb.png", "grey.png", "rgba.png", "grey16.png")]


def run_cli(arguments: list[str]) -> int:
    """`main`'s exit code, whether it returns it or argparse exits."""
    try:
        return main([str(argument) for argument in arguments])
    except SystemExit as exit:
        return exit.code


def printed_shares(stdout: str) -> dict[str, dict[str, float]]:
    """The per-image share reports: {image path: {class name: percentage}}."""
    reports, current = {}, None
    for line in stdout.splitlines():
        match = SHARE_LINE.match(line)
        if match:
            reports[current][match.group(1)] = float(match.group(2))
        elif line.endswith(":"):
            current = line[:-1]
            reports[current] = {}
    return reports


def test_cli_writes_overlays_label_maps_and_shares(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    exit_code = run_cli([*images, "--labels", LABELS_ARGUMENT, "--model", checkpoint, "--out", out, "--device", "cpu"])

    assert exit_code == 0
    printed = capsys.readouterr()
    assert re.search(rf"{len(images)}/{len(images)} \[.*image", printed.err)  # the progress bar's last state
    reports = printed_shares(printed.out)
    assert set(reports) == {str(path) for path in images}
    model, processor = tiny_scclip_and_processor()  # the checkpoint's weights and processor
    for path in images:
        label_png = Image.open(out / f"{path.stem}_labels.png")
        assert label_png.mode == "P" and label_png.size == (96, 72)
        assert json.loads(label_png.text["labels"]) == CLASS_NAMES
        expected_map, _, _ = direct_segmentation(model, processor, Image.open(path), LABELS_ARGUMENT.split(","))
        np.testing.assert_array_equal(np.array(label_png), expected_map.numpy())

        overlay = Image.open(out / f"{path.stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.width > 96 and overlay.height >= 72  # the legend sits on the right

        pixel_counts = np.bincount(np.array(label_png).ravel(), minlength=len(CLASS_NAMES))
        shares = reports[str(path)]
        assert list(shares) == CLASS_NAMES
        assert list(shares.values()) == pytest.approx(100 * pixel_counts / pixel_counts.sum(), abs=0.051)
        assert sum(shares.values()) == pytest.approx(100, abs=0.05 * len(CLASS_NAMES))

    # The overlay blends the image and the class colours half and half.
    label_png = Image.open(out / "rgb_labels.png")
    colors = np.array(label_png.getpalette()).reshape(-1, 3)[np.array(label_png)]
    scene = np.array(Image.open(images[0]), dtype=float)
    overlay = np.array(Image.open(out / "rgb_overlay.png"))[:72, :96]
    np.testing.assert_allclose(overlay, 0.5 * scene + 0.5 * colors, atol=0.51)


def test_cli_converts_a_plain_clip_folder_on_the_fly(images, tmp_path, capsys):
    clip_folder = save_tiny_clip(tmp_path / "tiny_clip")
    out = tmp_path / "out"
    classes = ["--labels", LABELS_ARGUMENT, "--background", "background; stuff", "--prob-threshold", 0.2]
    exit_code = run_cli([images[0], *classes, "--model", clip_folder, "--out", out, "--short-side", TINY_SHORT_SIDE])

    assert exit_code == 0
    model = SCCLIPForSemanticSegmentation.from_clip(clip_folder)
    processor = SCCLIPProcessor(SCCLIPImageProcessor(short_side=TINY_SHORT_SIDE), tiny_tokenizer())
    labels = [["background", "stuff"], "sky", "tree", "grass;lawn", "house"]
    expected_map, _, _ = direct_segmentation(model, processor, scene_image(), labels, prob_threshold=0.2)
    label_png = Image.open(out / "rgb_labels.png")
    np.testing.assert_array_equal(np.array(label_png), expected_map.numpy())
    assert json.loads(label_png.text["labels"]) == ["background", *CLASS_NAMES]
    assert list(printed_shares(capsys.readouterr().out)[str(images[0])]) == ["background", *CLASS_NAMES]


def test_cli_passes_sc_clip_settings_to_the_model(checkpoint, images, tmp_path, monkeypatch):
    loaded = []

    def load_and_record(*args, **kwargs):
        loaded.append(load_scclip_model_and_processor(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(segment, "load_scclip_model_and_processor", load_and_record)
    settings = ["--set", "use_attention_enhancement=false", "--set", "similarity_threshold=0.3"]
    exit_code = run_cli([images[0], "--labels", LABELS_ARGUMENT, "--model", checkpoint, "--out", tmp_path, *settings])

    assert exit_code == 0
    config = loaded[0][0].config
    assert (config.use_attention_enhancement, config.similarity_threshold) == (False, 0.3)
    _, processor = tiny_scclip_and_processor()
    model = SCCLIPForSemanticSegmentation.from_clip(
        tiny_clip_model(0), use_attention_enhancement=False, similarity_threshold=0.3
    )
    expected_map, _, _ = direct_segmentation(model, processor, scene_image(), LABELS_ARGUMENT.split(","))
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "rgb_labels.png")), expected_map.numpy())


def test_cli_pamr_refines_like_the_processor(checkpoint, images, tmp_path):
    exit_code = run_cli([images[0], "--labels", LABELS_ARGUMENT, "--model", checkpoint, "--out", tmp_path, "--pamr"])

    assert exit_code == 0
    model, processor = tiny_scclip_and_processor()
    pamr_images = processor(images=scene_image())["pixel_values"]
    expected_map, _, _ = direct_segmentation(
        model, processor, scene_image(), LABELS_ARGUMENT.split(","), pamr_images=pamr_images
    )
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "rgb_labels.png")), expected_map.numpy())


def record_forward_precision(monkeypatch) -> list:
    """Record, at every forward pass of the model, its weights' dtype and the CPU autocast state."""
    seen, forward = [], SCCLIPForSemanticSegmentation.forward

    def recording(self, *args, **kwargs):
        autocast_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen.append((self.dtype, autocast_dtype))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SCCLIPForSemanticSegmentation, "forward", recording)
    return seen


@pytest.mark.parametrize(
    "options, weights, autocast",
    [
        ([], torch.float32, None),
        (["--dtype", "bfloat16"], torch.bfloat16, None),
        (["--dtype", "bfloat16", "--autocast"], torch.float32, torch.bfloat16),
    ],
    ids=["float32", "bfloat16-weights", "bfloat16-autocast"],
)
def test_cli_runs_the_model_in_the_precision_asked_for(
    checkpoint, images, tmp_path, monkeypatch, options, weights, autocast
):
    arguments = [*images[:2], "--labels", LABELS_ARGUMENT, "--model", checkpoint, "--batch-size", "1"]
    assert run_cli([*arguments, "--out", tmp_path / "float32"]) == 0
    seen = record_forward_precision(monkeypatch)
    assert run_cli([*arguments, "--out", tmp_path / "run", *options]) == 0
    assert seen == [(weights, autocast)] * 2  # one forward pass per image, each in the precision asked for
    label_map, float32_map = (np.array(Image.open(tmp_path / run / "rgb_labels.png")) for run in ("run", "float32"))
    assert label_map.shape == (72, 96)
    assert (label_map == float32_map).mean() > 0.9  # half-precision products move only a few pixels


def test_cli_autocast_needs_a_half_precision_dtype(checkpoint, images, tmp_path, capsys):
    arguments = [images[0], "--labels", LABELS_ARGUMENT, "--model", checkpoint, "--out", tmp_path, "--autocast"]
    assert run_cli(arguments) == 2
    assert (
        "--autocast runs the matrix products in --dtype: add --dtype bfloat16 or float16." in capsys.readouterr().err
    )


def test_example_image_is_made_by_its_script(tmp_path):
    out = tmp_path / "house_tree_sky.png"
    make_example_image.main(["--out", str(out)])
    committed = Image.open(EXAMPLE_IMAGE)
    assert committed.mode == "RGB" and committed.size == (480, 360)
    np.testing.assert_array_equal(np.array(Image.open(out)), np.array(committed))


def test_newcomer_command_segments_the_bundled_example(checkpoint, tmp_path, capsys):
    out = tmp_path / "outputs"
    exit_code = run_cli([EXAMPLE_IMAGE, "--labels", "sky,tree,grass,house,road", "--model", checkpoint, "--out", out])

    assert exit_code == 0
    printed = capsys.readouterr()
    assert "1/1" not in printed.err  # no progress bar for a single image
    assert list(printed_shares(printed.out)[str(EXAMPLE_IMAGE)]) == ["sky", "tree", "grass", "house", "road"]
    overlay = Image.open(out / "house_tree_sky_overlay.png")
    assert overlay.mode == "RGB" and overlay.width > 480 and overlay.height >= 360
    assert Image.open(out / "house_tree_sky_labels.png").size == (480, 360)


def test_cli_without_network_or_cached_model_says_how_to_use_a_local_checkpoint(images, tmp_path):
    # The installed console entry point, run outside the repository, offline with an empty Hugging Face cache.
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    command = Path(sys.executable).with_name("scclip-segment")
    completed = subprocess.run(
        [str(command), str(images[0]), "--labels", "cat,dog", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=offline,
    )

    assert completed.returncode == 2
    assert "openai/clip-vit-base-patch16" in completed.stderr
    assert "--model" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--labels", ""], "empty name"),
        (["--labels", "cat,,dog"], "empty name"),
        (["--labels", "cat;,dog"], "empty name"),
        (["--labels", "cat;kitten,dog,Cat"], "given twice"),
        (["--labels", "cat,dog", "--background", "dog"], "given twice"),
        (["--labels", "cat,dog", "--prob-threshold", "0.5"], "background"),
        (["--labels", "cat,dog", "--area-threshold", "0.1"], "background"),
        (["--labels", "cat,dog", "--set", "no_such_setting=1"], "not an SC-CLIP setting"),
        (["--labels", "cat,dog", "--set", "use_attention_enhancement"], "NAME=VALUE"),
        (["--labels", "cat,dog", "--batch-size", "0"], "must be a positive integer"),
    ],
)
def test_cli_bad_labels_exit_with_code_2(checkpoint, images, tmp_path, capsys, arguments, message):
    exit_code = run_cli([images[0], *arguments, "--model", checkpoint, "--out", tmp_path])
    assert exit_code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "make_file, message",
    [
        (lambda path: None, "Image not found"),
        (lambda path: path.write_text("not an image"), "Not a readable image"),
        (lambda path: path.write_bytes(b""), "empty (0 bytes)"),
    ],
    ids=["missing", "not-an-image", "zero-sized"],
)
def test_cli_bad_images_exit_with_code_2(checkpoint, tmp_path, capsys, make_file, message):
    path = tmp_path / "photo.png"
    make_file(path)
    exit_code = run_cli([path, "--labels", "cat,dog", "--model", checkpoint, "--out", tmp_path / "out"])
    assert exit_code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
