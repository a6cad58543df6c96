"""The zero-shot segmentation pipeline, end to end on a tiny SC-CLIP checkpoint loaded with trust_remote_code."""

import functools
import json
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import DEVICES, full_float32, on_device, tiny_clip_model, tiny_tokenizer
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_scclip import SCCLIPForSemanticSegmentation
from modeling_scclip.image_processing_scclip import SCCLIPImageProcessor
from modeling_scclip.pipeline_scclip import (
    ZERO_SHOT_IMAGE_SEGMENTATION,
    SCCLIPZeroShotSegmentationPipeline,
    segments_from_label_map,
)
from modeling_scclip.processing_scclip import SCCLIPProcessor


# The tiny model's windows are 64 pixels: images are resized to a 64-pixel short side.
TINY_SHORT_SIDE = 64
LABELS = ["sky", "tree", "grass; lawn", ["house", "home"]]


def tiny_scclip_and_processor(seed: int = 0) -> tuple[SCCLIPForSemanticSegmentation, SCCLIPProcessor]:
    model = SCCLIPForSemanticSegmentation.from_clip(tiny_clip_model(seed))
    image_processor = SCCLIPImageProcessor(short_side=TINY_SHORT_SIDE)
    return model, SCCLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer())


def save_tiny_scclip_checkpoint(folder) -> str:
    """A tiny SC-CLIP checkpoint declaring the pipeline, saved the way transformers saves a custom pipeline."""
    model, processor = tiny_scclip_and_processor()
    SCCLIPZeroShotSegmentationPipeline(model=model, processor=processor, device="cpu").save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def scene_image(width: int = 96, height: int = 72) -> Image.Image:
    """A small RGB scene: blue sky, green ground, a red block and some noise, so the features vary."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2] = (80, 140, 220)
    pixels[height // 2 :] = (60, 150, 50)
    pixels[height // 3 : 2 * height // 3, width // 4 : width // 2] = (200, 40, 30)
    noise = rng.integers(-20, 21, pixels.shape)
    return Image.fromarray((pixels + noise).clip(0, 255).astype(np.uint8))


def direct_segmentation(model, processor, image, labels, **post_process_kwargs):
    """The pipeline's job done by hand: processor, model, post-processing."""
    inputs = processor(images=image)
    queries = processor.encode_labels(model, labels)
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], text_embeds=queries.text_embeds)
    label_maps, probabilities = processor.post_process_semantic_segmentation(
        outputs,
        target_sizes=inputs["original_sizes"],
        query_to_class=queries.query_to_class,
        return_probabilities=True,
        **post_process_kwargs,
    )
    return label_maps[0], probabilities[0], queries.class_names


def expected_segments(label_map, probabilities, class_names):
    """Per class id present: its name, its 0/255 mask and the mean of its probability over the mask, by loops."""
    segments = []
    for class_id, name in enumerate(class_names):
        inside = (label_map == class_id).numpy()
        if inside.any():
            score = probabilities[class_id].numpy()[inside].mean()
            segments.append((name, inside.astype(np.uint8) * 255, score))
    return segments


def assert_segments_equal(segments, expected):
    assert [segment["label"] for segment in segments] == [name for name, _, _ in expected]
    for segment, (_, mask, score) in zip(segments, expected):
        assert segment["mask"].mode == "L"
        np.testing.assert_array_equal(np.array(segment["mask"]), mask)
        assert segment["score"] == pytest.approx(score, rel=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_scclip_checkpoint(tmp_path_factory.mktemp("tiny_scclip"))


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return pipeline(ZERO_SHOT_IMAGE_SEGMENTATION, model=checkpoint, trust_remote_code=True, device="cpu")


@pytest.fixture(scope="module")
def reference():
    """The same weights and processor as the checkpoint, built in memory: the direct computation's parts."""
    return tiny_scclip_and_processor()


def test_checkpoint_declares_the_pipeline(checkpoint, segmenter):
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    assert config["custom_pipelines"] == {
        ZERO_SHOT_IMAGE_SEGMENTATION: {
            "impl": "pipeline_scclip.SCCLIPZeroShotSegmentationPipeline",
            "pt": ["AutoModel"],
        }
    }
    # trust_remote_code loaded the checkpoint's copy of the pipeline, not this package's.
    assert type(segmenter).__name__ == "SCCLIPZeroShotSegmentationPipeline"
    assert type(segmenter).__module__.startswith("transformers_modules.")
    assert type(segmenter.processor).__name__ == "SCCLIPProcessor"


def test_task_is_registered_without_colliding_with_a_builtin_task():
    _, task_info, _ = PIPELINE_REGISTRY.check_task(ZERO_SHOT_IMAGE_SEGMENTATION)
    assert task_info["impl"] is SCCLIPZeroShotSegmentationPipeline
    builtin_tasks = {"image-segmentation", "zero-shot-image-classification", "zero-shot-object-detection"}
    assert ZERO_SHOT_IMAGE_SEGMENTATION not in builtin_tasks


def test_pipeline_equals_direct_model_and_processor_computation(segmenter, reference):
    image = scene_image()
    model, processor = reference
    labels = ["background", *LABELS]
    post_process = {"logit_scale": 30.0, "area_threshold": 0.05}
    _, probabilities, _ = direct_segmentation(model, processor, image, labels, **post_process)
    # Threshold at the median top probability, so that the background and at least one class share the image.
    post_process["prob_threshold"] = probabilities.max(dim=0).values.median().item()
    label_map, probabilities, class_names = direct_segmentation(model, processor, image, labels, **post_process)

    result = segmenter(image, candidate_labels=LABELS, background="background", return_label_map=True, **post_process)

    assert result["labels"] == ["background", "sky", "tree", "grass", "house"] == class_names
    torch.testing.assert_close(result["label_map"], label_map, rtol=0, atol=0)
    expected = expected_segments(label_map, probabilities, class_names)
    assert len(expected) >= 2
    assert_segments_equal(result["segments"], expected)
    # Without return_label_map the output is the segment list, as transformers' image-segmentation pipeline gives.
    assert_segments_equal(segmenter(image, candidate_labels=LABELS, background="background", **post_process), expected)


def test_pamr_refines_like_the_processor(segmenter, reference):
    image = scene_image()
    model, processor = reference
    inputs = processor(images=image)
    label_map, probabilities, class_names = direct_segmentation(
        model, processor, image, LABELS, pamr_images=inputs["pixel_values"]
    )

    segments = segmenter(image, candidate_labels=LABELS, pamr=True)

    assert_segments_equal(segments, expected_segments(label_map, probabilities, class_names))


def test_images_of_different_sizes_share_one_model_call(segmenter, tmp_path):
    path = tmp_path / "wide.png"
    scene_image(160, 64).save(path)
    images = [scene_image(), str(path), scene_image(64, 100).convert("L")]
    calls = []
    hook = segmenter.model.register_forward_hook(lambda module, args, kwargs_or_output: calls.append(1))
    try:
        batched = segmenter(images, candidate_labels=LABELS, batch_size=3, return_label_map=True)
    finally:
        hook.remove()

    assert len(calls) == 1
    for image, result in zip(images, batched):
        alone = segmenter(image, candidate_labels=LABELS, return_label_map=True)
        assert result["label_map"].shape == alone["label_map"].shape
        torch.testing.assert_close(result["label_map"], alone["label_map"], rtol=0, atol=0)
        assert [segment["score"] for segment in result["segments"]] == pytest.approx(
            [segment["score"] for segment in alone["segments"]], rel=1e-5
        )


def test_labels_are_encoded_once_for_repeated_calls(segmenter):
    labels = ["river", "mountain; hill"]  # not encoded by any other test
    text_tower_calls = []
    hook = segmenter.model.text_model.register_forward_hook(lambda *args: text_tower_calls.append(1))
    try:
        segmenter(scene_image(), candidate_labels=labels)
        after_first_call = len(text_tower_calls)
        segmenter([scene_image(), scene_image(80, 80)], candidate_labels=labels)
    finally:
        hook.remove()

    assert after_first_call > 0
    assert len(text_tower_calls) == after_first_call


def test_grayscale_rgba_and_16_bit_images(segmenter, reference, tmp_path):
    _, processor = reference
    grey = np.array(scene_image().convert("L"))
    path_16_bit = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path_16_bit)
    rgba = scene_image().convert("RGBA")

    # A 16-bit file is read at full depth, not saturated by Pillow's RGB conversion.
    pixel_values = segmenter.preprocess(str(path_16_bit))["pixel_values"]
    torch.testing.assert_close(pixel_values, processor(images=Image.fromarray(grey))["pixel_values"])
    for image in (str(path_16_bit), Image.fromarray(grey), rgba):
        segments = segmenter(image, candidate_labels=LABELS)
        assert segments and all(segment["mask"].size == (96, 72) for segment in segments)


def test_a_loaded_model_builds_the_pipeline_by_task_name(reference):
    model, processor = reference
    segmenter = pipeline(ZERO_SHOT_IMAGE_SEGMENTATION, model=model, processor=processor, device="cpu")
    assert isinstance(segmenter, SCCLIPZeroShotSegmentationPipeline)
    label_map, probabilities, class_names = direct_segmentation(model, processor, scene_image(), LABELS)
    assert_segments_equal(
        segmenter(scene_image(), candidate_labels=LABELS), expected_segments(label_map, probabilities, class_names)
    )


def test_importing_the_package_registers_the_task():
    # In a fresh interpreter: this module's own import of pipeline_scclip must not be what registers it.
    script = (
        "import modeling_scclip; from transformers.pipelines import PIPELINE_REGISTRY; "
        "print(PIPELINE_REGISTRY.check_task('zero-shot-image-segmentation')[1]['impl'].__name__)"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[-1] == "SCCLIPZeroShotSegmentationPipeline"


def test_a_comma_separated_string_is_a_list_of_classes(segmenter):
    as_list = segmenter(scene_image(), candidate_labels=["sky", "tree", "grass; lawn"], return_label_map=True)
    as_string = segmenter(scene_image(), candidate_labels="sky, tree,grass; lawn", return_label_map=True)
    assert as_string["labels"] == as_list["labels"] == ["sky", "tree", "grass"]
    assert torch.equal(as_string["label_map"], as_list["label_map"])


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_on_every_device_equals_the_cpu_computation(reference, device):
    """Model, label cache, post-processing and PAMR on the pipeline's device give the CPU's segments."""
    model, processor = reference
    label_map, probabilities, class_names = direct_segmentation(
        model, processor, scene_image(), LABELS, pamr_images=processor(images=scene_image())["pixel_values"]
    )
    segmenter = pipeline(
        ZERO_SHOT_IMAGE_SEGMENTATION, model=on_device(model, device), processor=processor, device=device
    )
    assert segmenter.model.device.type == device
    with full_float32(device):
        segments = segmenter(scene_image(), candidate_labels=LABELS, pamr=True)
    assert_segments_equal(segments, expected_segments(label_map, probabilities, class_names))


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (scene_image(), {"candidate_labels": []}, "empty"),
        (scene_image(), {}, "candidate_labels is required"),
        (scene_image(), {"candidate_labels": ["cat", "dog", "Cat"]}, "given twice"),
        (scene_image(), {"candidate_labels": ["cat", "dog"], "prob_threshold": 0.5}, "background"),
        (scene_image(), {"candidate_labels": ["cat", "dog"], "area_threshold": 0.1}, "background"),
        (Image.new("RGB", (0, 10)), {"candidate_labels": ["cat"]}, "empty"),
        ("no/such/image.png", {"candidate_labels": ["cat"]}, "Image not found: 'no/such/image.png'"),
        (np.zeros((8, 8, 3), np.uint8), {"candidate_labels": ["cat"]}, "PIL image, a file path or an http"),
    ],
)
def test_bad_input_raises_a_clear_value_error(segmenter, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmenter(image, **kwargs)


@pytest.mark.parametrize("content", [b"not an image", b""], ids=["text", "zero-byte"])
def test_a_file_that_is_not_an_image_is_refused(segmenter, tmp_path, content):
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="Not a readable image: .*notes.png"):
        segmenter(str(path), candidate_labels=["cat"])


@pytest.fixture
def image_server(tmp_path):
    """An HTTP server on 127.0.0.1, in a thread, serving `tmp_path`: yields its base URL and the folder."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
        server.shutdown()
        thread.join()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_images_from_urls_equal_the_local_files(segmenter, image_server):
    base_url, folder = image_server
    scene_image().save(folder / "scene.png")
    grey = np.array(scene_image(80, 64).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")  # kept at 16 bits, not saturated
    paths = [str(folder / "scene.png"), str(folder / "grey16.png")]
    urls = [f"{base_url}/scene.png", f"{base_url}/grey16.png"]

    from_urls = segmenter(urls, candidate_labels=LABELS, return_label_map=True, timeout=10)
    from_files = segmenter(paths, candidate_labels=LABELS, return_label_map=True)

    for url_result, file_result in zip(from_urls, from_files):
        torch.testing.assert_close(url_result["label_map"], file_result["label_map"], rtol=0, atol=0)
    torch.testing.assert_close(
        segmenter.preprocess(urls[1])["pixel_values"], segmenter.preprocess(Image.fromarray(grey))["pixel_values"]
    )


def test_bad_urls_raise_clear_value_errors(segmenter, image_server):
    base_url, folder = image_server
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="Could not download the image .*/missing.png.*404"):
        segmenter(f"{base_url}/missing.png", candidate_labels=["cat"])
    with pytest.raises(ValueError, match="Not a readable image: .*/notes.txt"):
        segmenter(f"{base_url}/notes.txt", candidate_labels=["cat"])


def test_segments_from_label_map_on_hand_made_maps():
    label_map = torch.tensor([[0, 0, 2], [2, 2, 0]])
    probabilities = torch.rand(3, 2, 3, generator=torch.Generator().manual_seed(0))
    segments = segments_from_label_map(label_map, probabilities, ["a", "b", "c"])
    assert [segment["label"] for segment in segments] == ["a", "c"]  # "b" is absent
    np.testing.assert_array_equal(np.array(segments[1]["mask"]), [[0, 0, 255], [255, 255, 0]])
    expected_score = (probabilities[2, 0, 2] + probabilities[2, 1, 0] + probabilities[2, 1, 1]) / 3
    assert segments[1]["score"] == pytest.approx(expected_score.item())
