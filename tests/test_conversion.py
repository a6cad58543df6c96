"""
Tests of `scripts/convert_clip_to_scclip.py`, of the completeness check `scripts/check_scclip_repo.py` and of the model
card: a tiny random CLIP converted offline, then loaded back by transformers alone.
"""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from tiny_models import PROJECTION_DIM, TINY_SCCLIP, TINY_VISION, save_tiny_clip, tiny_clip_config, tiny_tokenizer
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from modeling_scclip import SCCLIPConfig, SCCLIPForSemanticSegmentation
from modeling_scclip.configuration_scclip import SCCLIP_PRESETS, SCCLIP_SETTINGS
from modeling_scclip.image_processing_scclip import SCCLIPImageProcessor
from modeling_scclip.pipeline_scclip import SCCLIPZeroShotSegmentationPipeline
from modeling_scclip.processing_scclip import SCCLIPProcessor


REPO_ROOT = Path(__file__).resolve().parents[1]
# The conversion script imports the completeness check as a sibling module, as it does when run as a script.
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import check_scclip_repo  # noqa: E402
import convert_clip_to_scclip  # noqa: E402


BASE_MODEL = "tiny-org/tiny-clip"
SETTINGS = [f"{name}={value}" for name, value in TINY_SCCLIP.items()] + ["use_multi_level_fusion=false"]
OVERRIDES = {**TINY_SCCLIP, "use_multi_level_fusion": False}
LABELS = ["cat", "dog; puppy", "grass"]
SHORT_SIDE = 48
# The modules the auto_map and custom_pipelines entries name, and what they import relatively: not loading_scclip.py,
# which only this project's scripts use.
CODE_FILES = [
    "configuration_scclip.py",
    "image_processing_scclip.py",
    "modeling_scclip.py",
    "pipeline_scclip.py",
    "processing_scclip.py",
]
EXPECTED_FILES = sorted(
    CODE_FILES
    + ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json"]
    + ["tokenizer.json", "tokenizer_config.json"]
)
EXAMPLE_IMAGE_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"

# Loads the converted folder with transformers alone: every path holding the project, and any editable-install
# finder, is dropped first, so only the folder's own code files (trust_remote_code) can define SC-CLIP.
LOAD_WITHOUT_PROJECT = textwrap.dedent(
    """
    import importlib.util, json, os, sys

    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.getcwd(), "modeling_scclip"))]
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_importer_cache.clear()
    importable = importlib.util.find_spec("modeling_scclip") is not None

    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

    folder, image_path, output = sys.argv[1:4]
    labels = json.loads(sys.argv[4])
    short_side = int(sys.argv[5])
    image = Image.open(image_path)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    segmenter = pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True)

    pixel_values = processor(images=image, short_side=short_side, return_tensors="pt")["pixel_values"]
    text_embeds = processor.encode_labels(model, labels).text_embeds
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, text_embeds=text_embeds).logits
    segmented = segmenter(image, candidate_labels=labels, short_side=short_side, return_label_map=True)
    save_file(
        {
            "pixel_values": pixel_values,
            "text_embeds": text_embeds,
            "logits": logits,
            "label_map": segmented["label_map"].contiguous(),
        },
        output,
    )
    classes = [config, model, processor, processor.image_processor, segmenter]
    report = {
        "project_importable": importable,
        "project_imported": any(name.split(".")[0] == "modeling_scclip" for name in sys.modules),
        "modules": [type(obj).__module__ for obj in classes],
        "settings": {name: getattr(config, name) for name in ("slide_stride", "use_multi_level_fusion")},
    }
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return Path(save_tiny_clip(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def converted(clip_folder, tmp_path_factory):
    """The tiny CLIP converted by the script's command line, with SC-CLIP settings changed by `--set`."""
    output = tmp_path_factory.mktemp("converted") / "scclip-tiny"
    argv = ["--clip", str(clip_folder), "--output", str(output), "--base-model", BASE_MODEL]
    for setting in SETTINGS:
        argv += ["--set", setting]
    assert convert_clip_to_scclip.main(argv) == 0
    return output


@pytest.fixture(scope="module")
def reference(clip_folder):
    """The same model and processor built in this process with the package's API, without the script."""
    clip = CLIPModel.from_pretrained(clip_folder)
    model = SCCLIPForSemanticSegmentation.from_clip(clip, **OVERRIDES)
    processor = SCCLIPProcessor(SCCLIPImageProcessor(), CLIPTokenizer.from_pretrained(clip_folder))
    return model, processor


@pytest.fixture
def image_path(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return path


def without_project_env(tmp_path: Path) -> dict:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}


def test_converted_folder_loads_with_transformers_alone(converted, reference, image_path, tmp_path):
    script = tmp_path / "load_without_project.py"
    script.write_text(LOAD_WITHOUT_PROJECT)
    output = tmp_path / "outputs.safetensors"
    command = [sys.executable, "-I", str(script), str(converted), str(image_path), str(output), json.dumps(LABELS)]
    completed = subprocess.run(
        [*command, str(SHORT_SIDE)], cwd=tmp_path, env=without_project_env(tmp_path), capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not report["project_importable"] and not report["project_imported"]
    assert all(module.startswith("transformers_modules.") for module in report["modules"]), report["modules"]
    assert report["settings"] == {"slide_stride": OVERRIDES["slide_stride"], "use_multi_level_fusion": False}

    model, processor = reference
    image = Image.open(image_path)
    pixel_values = processor(images=image, short_side=SHORT_SIDE, return_tensors="pt")["pixel_values"]
    text_embeds = processor.encode_labels(model, LABELS).text_embeds
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, text_embeds=text_embeds).logits
    segmenter = SCCLIPZeroShotSegmentationPipeline(model=model, processor=processor)
    label_map = segmenter(image, candidate_labels=LABELS, short_side=SHORT_SIDE, return_label_map=True)["label_map"]

    loaded = load_file(output)
    assert torch.equal(loaded["pixel_values"], pixel_values)
    assert torch.equal(loaded["text_embeds"], text_embeds)
    assert torch.equal(loaded["logits"], logits)
    assert torch.equal(loaded["label_map"], label_map)


def assert_clip_weights_carried_over(converted: Path, clip_folder: Path):
    """Every tensor of the saved CLIP is in the converted weights, unchanged; nothing else is."""
    clip_state = load_file(clip_folder / "model.safetensors")
    # SC-CLIP keeps the vision tower at the top level; its logits are cosine similarities, so no logit_scale.
    expected = {name.removeprefix("vision_model."): tensor for name, tensor in clip_state.items()}
    del expected["logit_scale"]
    saved = load_file(converted / "model.safetensors")
    assert sorted(saved) == sorted(expected)
    for name, tensor in expected.items():
        assert saved[name].dtype == tensor.dtype and torch.equal(saved[name], tensor), name
    assert any(name.startswith("text_model.") for name in saved) and "text_projection.weight" in saved
    assert "visual_projection.weight" in saved


def test_every_clip_weight_is_carried_over_exactly(converted, clip_folder):
    assert_clip_weights_carried_over(converted, clip_folder)


def test_config_carries_auto_map_and_custom_pipeline(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "scclip"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_scclip.SCCLIPConfig",
        "AutoModel": "modeling_scclip.SCCLIPForSemanticSegmentation",
        "AutoProcessor": "processing_scclip.SCCLIPProcessor",
        "AutoImageProcessor": "image_processing_scclip.SCCLIPImageProcessor",
    }
    assert config["custom_pipelines"] == {
        "zero-shot-image-segmentation": {
            "impl": "pipeline_scclip.SCCLIPZeroShotSegmentationPipeline",
            "pt": ["AutoModel"],
        }
    }
    processor_config = json.loads((converted / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_scclip.SCCLIPProcessor"
    for name in CODE_FILES:
        assert (converted / name).read_bytes() == (REPO_ROOT / "modeling_scclip" / name).read_bytes()


def test_dry_run_lists_the_files_and_uploads_nothing(converted, capsys, monkeypatch):
    def no_upload(*args, **kwargs):
        raise AssertionError("a dry run must not contact the Hub")

    monkeypatch.setattr(convert_clip_to_scclip, "HfApi", no_upload)
    argv = ["--output", str(converted), "--push-to-hub", "someone/scclip-tiny", "--dry-run"]
    assert convert_clip_to_scclip.main(argv) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "someone/scclip-tiny" in listing[0]
    listed = dict(reversed(line.split()) for line in listing[1:])
    assert sorted(listed) == EXPECTED_FILES
    for name, size in listed.items():
        assert int(size.replace(",", "")) == (converted / name).stat().st_size


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(converted, monkeypatch):
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], Path(kwargs["folder_path"])))

    monkeypatch.setattr(convert_clip_to_scclip, "HfApi", RecordingApi)
    argv = ["--output", str(converted), "--push-to-hub", "someone/scclip-tiny", "--private"]
    assert convert_clip_to_scclip.main(argv) == 0
    assert calls == [
        ("create_repo", "someone/scclip-tiny", {"private": True, "exist_ok": True}),
        ("upload_folder", "someone/scclip-tiny", converted),
    ]


def copy_of(converted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted, tmp_path / "copy"))


def edit_json(path: Path, edit):
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_completeness_check_accepts_the_converted_folder(converted):
    assert check_scclip_repo.find_repository_problems(converted) == []


def test_completeness_check_names_a_missing_code_file(converted, tmp_path):
    folder = copy_of(converted, tmp_path)
    (folder / "configuration_scclip.py").unlink()
    problems = check_scclip_repo.find_repository_problems(folder)
    assert "config.json auto_map['AutoConfig'] points to configuration_scclip.py, which is missing." in problems
    assert "configuration_scclip.py is missing (imported by modeling_scclip.py)." in problems


def test_completeness_check_names_a_wrong_auto_map(converted, tmp_path):
    folder = copy_of(converted, tmp_path)

    def wrong_auto_map(config):
        config["auto_map"]["AutoModel"] = "modeling_scclip.SCCLIPModel"
        config["custom_pipelines"]["zero-shot-image-segmentation"]["impl"] = "pipelines.SegmentationPipeline"

    edit_json(folder / "config.json", wrong_auto_map)
    edit_json(folder / "processor_config.json", lambda config: config["auto_map"].pop("AutoProcessor"))
    problems = check_scclip_repo.find_repository_problems(folder)
    assert problems == [
        "config.json auto_map['AutoModel'] points to SCCLIPModel, which modeling_scclip.py does not define.",
        "processor_config.json auto_map['AutoProcessor'] is missing.",
        "config.json custom_pipelines['zero-shot-image-segmentation']['impl'] points to pipelines.py, which is "
        "missing.",
    ]


def test_upload_of_an_incomplete_folder_is_refused(converted, tmp_path, monkeypatch, capsys):
    folder = copy_of(converted, tmp_path)
    (folder / "pipeline_scclip.py").unlink()
    monkeypatch.setattr(convert_clip_to_scclip, "HfApi", None)  # any use would fail
    assert convert_clip_to_scclip.main(["--output", str(folder), "--push-to-hub", "someone/scclip-tiny"]) == 2
    error = capsys.readouterr().err
    assert "is not a complete SC-CLIP repository" in error
    assert "points to pipeline_scclip.py, which is missing" in error
    assert check_scclip_repo.main([str(folder)]) == 1


def measured_section(card_text: str) -> str:
    return card_text.split("## Results measured with this port")[1].split("\n## ")[0]


def test_model_card_names_the_base_model_and_settings_and_measures_nothing(converted):
    card = ModelCard.load(converted / "README.md")
    assert card.data.base_model == BASE_MODEL
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    assert card.data.license == "mit" and "scclip" in card.data.tags
    # The tiny CLIP's folder has no card listing training data: no `datasets` metadata is made up.
    assert card.data.datasets is None and "datasets:" not in card.content.split("\n---")[0]
    for benchmark in ("PASCAL VOC 2012", "PASCAL Context", "COCO-Object", "COCO-Stuff", "Cityscapes", "ADE20K"):
        assert benchmark in card.text
    assert f"# SC-CLIP (Self-Calibrated CLIP) on {BASE_MODEL}" in card.text
    config = SCCLIPConfig.from_pretrained(converted)
    for name in SCCLIP_SETTINGS:
        assert f"| `{name}` | {json.dumps(getattr(config, name))} |" in card.text
    assert "Set at conversion: `slide_crop_size=64`, `slide_stride=32`, `lof_n_neighbors=8`, " in card.text
    assert "`use_multi_level_fusion=false`" in card.text
    assert "`auto` (the `vit-b16` values, chosen from the 12-layer depth)" in card.text
    assert 'model="scclip-tiny"' in card.text
    # The paper's numbers are there, attributed; nothing is claimed as measured.
    assert "| CLIP ViT-B/16 | 64.6 | 36.8 | 37.7 | 84.3 | 41.0 | 40.1 | 20.1 | 26.6 | 43.9 |" in card.text
    measured = measured_section(card.text)
    assert "None yet" in measured and not re.search(r"\d", measured)


def write_evaluation_output(path: Path, benchmarks: dict, mean_miou=None, limit=None):
    """A JSON file in the layout `eval/evaluate_benchmark.py --output` writes."""
    results = {
        key: {"benchmark": key, "mIoU": miou, "num_images": images, "settings": {"limit": limit}}
        for key, (miou, images) in benchmarks.items()
    }
    summary = {"model": "someone/scclip-tiny", "config_overrides": {"slide_stride": 224}, "benchmarks": results}
    path.write_text(json.dumps({**summary, "mean_miou": mean_miou}))
    return str(path)


def test_model_card_reports_measured_numbers_only_from_evaluation_outputs(converted, tmp_path):
    voc = write_evaluation_output(tmp_path / "voc.json", {"voc21": (61.2345, 1449), "voc20": (83.98, 1449)})
    ade = write_evaluation_output(tmp_path / "ade.json", {"ade20k": (19.04, 12)}, limit=12)
    rows = convert_clip_to_scclip.read_evaluation_results([voc, ade])
    config = SCCLIPConfig.from_pretrained(converted)
    card = convert_clip_to_scclip.render_model_card(config, "tiny", "someone/scclip-tiny", evaluation_results=rows)
    measured = measured_section(card.text)
    assert "| voc21 | 61.2 | 1449 | someone/scclip-tiny | slide_stride=224 |" in measured
    assert "| voc20 | 84.0 | 1449 | someone/scclip-tiny | slide_stride=224 |" in measured
    assert "| ade20k | 19.0 | 12 | someone/scclip-tiny | slide_stride=224, first 12 images only |" in measured
    assert "None yet" not in measured and card.data.base_model is None

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"model": "m", "benchmarks": {"voc21": {"benchmark": "voc21"}}}))
    with pytest.raises(ValueError, match="broken.json is not an output of eval/evaluate_benchmark.py"):
        convert_clip_to_scclip.read_evaluation_results([str(broken)])


def test_unreachable_checkpoint_offline_gives_a_clear_message(tmp_path):
    script = REPO_ROOT / "scripts" / "convert_clip_to_scclip.py"
    env = {**without_project_env(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, str(script), "--clip", "someone/not-in-the-cache", "--output", str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 2
    assert "Could not load the model 'someone/not-in-the-cache'" in completed.stderr
    assert "HF_HUB_OFFLINE is set" in completed.stderr and "pass a local folder instead" in completed.stderr
    assert "Traceback" not in completed.stderr


def save_clip_family(folder: Path, vision: dict, image_mean=None, image_std=None, card_datasets=None) -> Path:
    """A tiny random CLIP checkpoint with a family's patch size, image size and depth, saved as on the Hub."""
    text_config = tiny_clip_config().text_config.to_dict()
    config = CLIPConfig(
        text_config=text_config, vision_config={**TINY_VISION, **vision}, projection_dim=PROJECTION_DIM
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    side = vision["image_size"]
    normalisation = {"image_mean": image_mean, "image_std": image_std} if image_mean else {}
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=side, **normalisation)
    image_processor.save_pretrained(folder)
    if card_datasets:
        (folder / "README.md").write_text(f"---\nlicense: mit\ndatasets: {json.dumps(card_datasets)}\n---\n# CLIP\n")
    return folder


# The shapes of the CLIP families the script converts, at a tiny width: patch size, pretraining image size and depth
# decide the SC-CLIP preset and the sliding windows.
CLIP_FAMILIES = {
    "openai-vit-b32": dict(vision=dict(patch_size=32, image_size=224, num_hidden_layers=12), preset="vit-b16"),
    "openai-vit-b16": dict(vision=dict(patch_size=16, image_size=224, num_hidden_layers=12), preset="vit-b16"),
    "openai-vit-l14": dict(vision=dict(patch_size=14, image_size=224, num_hidden_layers=24), preset="vit-l14"),
    # Pretrained on 336 pixels: its position embeddings are interpolated for the 224-pixel windows.
    "openai-vit-l14-336": dict(vision=dict(patch_size=14, image_size=336, num_hidden_layers=24), preset="vit-l14"),
    # OpenCLIP checkpoints may normalise with their own mean and std, and list their training data in their card.
    "laion-vit-b32": dict(
        vision=dict(patch_size=32, image_size=224, num_hidden_layers=12),
        preset="vit-b16",
        source=dict(
            image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], card_datasets=["someone/image-text-pairs"]
        ),
    ),
    # 32 layers: no preset of the paper; the ViT-B/16 layers scaled by 32/12 (9 -> 24, 4 -> 10.7 -> 11, 10 -> 26.7 -> 27).
    "openclip-vit-h14": dict(
        vision=dict(patch_size=14, image_size=224, num_hidden_layers=32),
        preset={
            "pre_adjust_layer": 24,
            "post_adjust_layer": 11,
            "fusion_start_layer": 11,
            "fusion_end_layer": 27,
            "cls_residual_weight": 0.3,
        },
    ),
}


@pytest.mark.parametrize("family", list(CLIP_FAMILIES))
def test_conversion_of_each_clip_family(family, tmp_path, caplog):
    spec = CLIP_FAMILIES[family]
    source = spec.get("source", {})
    clip_folder = save_clip_family(tmp_path / "clip", spec["vision"], **source)
    output = tmp_path / "converted"
    caplog.set_level("INFO", logger="convert_clip_to_scclip")
    argv = ["--clip", str(clip_folder), "--output", str(output), "--dataset", "someone/extra-pairs"]
    assert convert_clip_to_scclip.main(argv) == 0
    # Progress is logged while loading and writing.
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith(f"Loading the CLIP checkpoint {clip_folder}") for message in messages)
    assert any(message.startswith("Writing SC-CLIP") for message in messages)

    config = json.loads((output / "config.json").read_text())
    preset = spec["preset"]
    expected_preset = SCCLIP_PRESETS[preset] if isinstance(preset, str) else preset
    assert {name: config[name] for name in expected_preset} == expected_preset
    for name, value in spec["vision"].items():
        assert config[name] == value
    # The defaults fit every family: a 224-pixel window has at least 7 x 7 = 49 > 30 patches (B/32).
    assert (config["slide_crop_size"], config["lof_n_neighbors"]) == (224, 30)
    assert_clip_weights_carried_over(output, clip_folder)
    assert check_scclip_repo.find_repository_problems(output) == []

    card = ModelCard.load(output / "README.md")
    assert card.data.datasets == source.get("card_datasets", []) + ["someone/extra-pairs"]
    if isinstance(preset, str):
        assert f"(the `{preset}` values, chosen from the {config['num_hidden_layers']}-layer depth)" in card.text
    else:
        assert "the `vit-b16` layer indices scaled to 32 layers, a heuristic of this port" in card.text

    processor = SCCLIPProcessor.from_pretrained(output)
    if "image_mean" in source:
        assert processor.image_processor.image_mean == source["image_mean"]
        assert processor.image_processor.image_std == source["image_std"]
    # The folder loads and segments exactly as SC-CLIP built in memory from the source CLIP does.
    loaded = SCCLIPForSemanticSegmentation.from_pretrained(output).eval()
    in_memory = SCCLIPForSemanticSegmentation.from_clip(str(clip_folder))
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, 224, 224, generator=generator)
    text_embeds = torch.randn(3, PROJECTION_DIM, generator=generator)
    with torch.no_grad():
        logits = loaded(pixel_values=pixel_values, text_embeds=text_embeds).logits
        expected = in_memory(pixel_values=pixel_values, text_embeds=text_embeds).logits
    assert logits.shape == (1, 3, 224, 224) and torch.isfinite(logits).all()
    assert torch.equal(logits, expected)


def test_conversion_refuses_a_folder_that_is_not_empty(converted, clip_folder, capsys):
    assert convert_clip_to_scclip.main(["--clip", str(clip_folder), "--output", str(converted)]) == 2
    assert "is not empty: give a new or empty --output folder" in capsys.readouterr().err


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def example_image_url(tmp_path, monkeypatch):
    """
    The card's example image URL, served over HTTP from this machine with a random 40 x 40 image as its content (square:
    the processor's 336-pixel short side then makes only 10 x 10 windows of the tiny model's 64 pixels).
    """
    served = tmp_path / "served"
    served.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(served / EXAMPLE_IMAGE_URL.rsplit("/", 1)[1], format="PNG")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield f"http://127.0.0.1:{server.server_port}/{EXAMPLE_IMAGE_URL.rsplit('/', 1)[1]}"
    server.shutdown()
    thread.join()


def test_model_card_usage_code_runs_on_the_converted_folder(converted, example_image_url):
    # The card's two snippets as written, but for the repository id (the folder) and the host of the example image.
    snippets = re.findall(r"```python\n(.*?)```", (converted / "README.md").read_text(), flags=re.DOTALL)
    assert len(snippets) == 2
    namespaces = []
    for snippet in snippets:
        assert '"scclip-tiny"' in snippet and EXAMPLE_IMAGE_URL in snippet
        namespace = {}
        local = snippet.replace('"scclip-tiny"', repr(str(converted))).replace(EXAMPLE_IMAGE_URL, example_image_url)
        exec(local, namespace)
        namespaces.append(namespace)

    pipeline_run, model_run = namespaces
    assert {segment["label"] for segment in pipeline_run["results"]} <= {"cat", "remote control", "sofa"}
    assert all(segment["mask"].size == (40, 40) for segment in pipeline_run["results"])
    assert model_run["label_map"].shape == (40, 40)
    assert set(model_run["label_map"].unique().tolist()) <= {0, 1, 2}
    assert model_run["labels"].class_names == ["cat", "remote control", "sofa"]
