"""Loading SC-CLIP from CLIP or SC-CLIP checkpoints, and the `--set name=value` settings the scripts share."""

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_SCCLIP, save_tiny_clip
from transformers import CLIPModel

from modeling_scclip import SCCLIPConfig, SCCLIPForSemanticSegmentation
from modeling_scclip.configuration_scclip import SCCLIP_SETTINGS, TRANSFORMERS_REQUIREMENT, parse_scclip_settings
from modeling_scclip.loading_scclip import load_scclip_model_and_processor
from modeling_scclip.processing_scclip import SCCLIPProcessor


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    save_tiny_clip(folder)
    # An OpenCLIP-like checkpoint whose normalisation differs from OpenAI's.
    config_file = folder / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    config_file.write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def scclip_folder(clip_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scclip")
    model, processor = load_scclip_model_and_processor(clip_folder, **TINY_SCCLIP)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_settings_take_the_config_field_types():
    settings = parse_scclip_settings(
        [
            "use_attention_enhancement=false",
            " lof_n_neighbors = 12",
            "similarity_threshold=1",
            "anomaly_detector=l2_norm",
        ]
    )
    assert settings == {
        "use_attention_enhancement": False,
        "lof_n_neighbors": 12,
        "similarity_threshold": 1.0,
        "anomaly_detector": "l2_norm",
    }
    assert [type(value) for value in settings.values()] == [bool, int, float, str]
    assert "projection_dim" not in SCCLIP_SETTINGS and "hidden_size" not in SCCLIP_SETTINGS
    assert {"slide_stride", "cls_residual_weight", "use_multi_level_fusion"} <= set(SCCLIP_SETTINGS)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("slide_strides=16", "slide_strides: not an SC-CLIP setting; choose one of anomaly_detector, lof_n_neighbors"),
        ("hidden_size=64", "hidden_size: not an SC-CLIP setting"),
        ("use_multi_level_fusion=maybe", "use_multi_level_fusion=maybe: expected true or false"),
        ("lof_n_neighbors=2.5", r"lof_n_neighbors=2.5: expected a number \(int\)"),
        ("anomaly_detector=iforest", "anomaly_detector=iforest: choose one of lof, standard_lof, l2_norm"),
        ("slide_stride", "--set takes NAME=VALUE, got 'slide_stride'"),
    ],
)
def test_bad_settings_are_named(assignment, message):
    with pytest.raises(ValueError, match=message):
        parse_scclip_settings([assignment])


def test_a_clip_checkpoint_is_converted_with_its_normalisation(clip_folder):
    model, processor = load_scclip_model_and_processor(clip_folder, **TINY_SCCLIP, use_attention_enhancement=False)
    reference = SCCLIPForSemanticSegmentation.from_clip(CLIPModel.from_pretrained(clip_folder), **TINY_SCCLIP)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    assert not model.training and model.config.use_attention_enhancement is False
    assert processor.image_processor.image_mean == [0.5, 0.5, 0.5]
    assert processor.image_processor.image_std == [0.25, 0.25, 0.25]
    assert processor.tokenizer("a photo").input_ids[0] == processor.tokenizer.bos_token_id


def test_an_scclip_checkpoint_loads_with_checked_overrides_and_presets(scclip_folder):
    model, processor = load_scclip_model_and_processor(scclip_folder)
    assert model.config.slide_stride == TINY_SCCLIP["slide_stride"] and model.config.pre_adjust_layer == 9
    assert isinstance(processor, SCCLIPProcessor) and processor.image_processor.image_std == [0.25, 0.25, 0.25]

    model, _ = load_scclip_model_and_processor(scclip_folder, preset="vit-b16", fusion_end_layer=11, slide_stride=16)
    assert (model.config.fusion_start_layer, model.config.fusion_end_layer, model.config.slide_stride) == (4, 11, 16)
    # Overrides are checked like a new config: the ViT-L/14 layers do not exist in a 12-layer tower.
    with pytest.raises(ValueError, match=r"pre_adjust_layer must be a layer index in 1..11"):
        load_scclip_model_and_processor(scclip_folder, preset="vit-l14")
    with pytest.raises(ValueError, match="slide_stride must be in 1..slide_crop_size"):
        load_scclip_model_and_processor(scclip_folder, slide_stride=0)


def test_unknown_model_types_and_missing_checkpoints_are_explained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SCCLIPConfig().to_dict() | {"model_type": "vit"}))
    with pytest.raises(ValueError, match="holds a 'vit' model: give a CLIP"):
        load_scclip_model_and_processor(str(tmp_path))
    with pytest.raises(OSError, match="(?s)Could not load the model .*no local folder.*pass a local folder instead"):
        load_scclip_model_and_processor(str(tmp_path / "missing"))


def test_the_package_requires_the_transformers_it_checks_at_import():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[1] / "setup.cfg")
    assert TRANSFORMERS_REQUIREMENT in setup["options"]["install_requires"].split()


def test_an_older_transformers_is_named_at_import():
    # The installed transformers reports itself as 5.20.2, the release before the oldest that works.
    script = (
        "import importlib.metadata as metadata\n"
        "version = metadata.version\n"
        "metadata.version = lambda name: '5.20.2' if name == 'transformers' else version(name)\n"
        "import modeling_scclip\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 1
    assert f"SC-CLIP needs {TRANSFORMERS_REQUIREMENT}" in completed.stderr
    assert "found transformers==5.20.2" in completed.stderr
