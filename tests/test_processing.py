"""SCCLIPProcessor: label queries, their cache, and post-processing against a per-pixel reading of the spec."""

import gc
import weakref

import numpy as np
import pytest
import torch
from test_image_processing import bilinear_reference, pamr_reference
from tiny_models import TINY_SCCLIP, tiny_clip_model, tiny_tokenizer
from transformers import AutoProcessor

from modeling_scclip import SCCLIPForSemanticSegmentation
from modeling_scclip.image_processing_scclip import SCCLIPImageProcessor
from modeling_scclip.processing_scclip import IMAGENET_TEMPLATES, SCCLIPProcessor


TEMPLATES = ("a photo of a {}.", "a sculpture of the {}.", "itap of a {}.")


def make_model(seed=0):
    return SCCLIPForSemanticSegmentation.from_clip(tiny_clip_model(seed), **TINY_SCCLIP)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture
def processor():
    return SCCLIPProcessor(image_processor=SCCLIPImageProcessor(short_side=64), tokenizer=tiny_tokenizer())


class TextTowerCalls:
    """Counts the forward passes of a model's text tower."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.text_model.register_forward_hook(self._count)

    def _count(self, *args):
        self.count += 1


@pytest.fixture
def text_tower_calls(model):
    calls = TextTowerCalls(model)
    yield calls
    calls.handle.remove()


# ----------------------------------------------------------------------------------------------------------------
# Straightforward references, in float64.
# ----------------------------------------------------------------------------------------------------------------


def query_embedding_reference(model, tokenizer, name, templates):
    """One prompt at a time: the normalised mean of the normalised template embeddings."""
    embeddings = []
    for template in templates:
        tokens = tokenizer([template.format(name)], return_tensors="pt")
        with torch.no_grad():
            embedding = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])[0].double()
        embeddings.append(embedding / embedding.norm())
    mean = torch.stack(embeddings).mean(0)
    return mean / mean.norm()


def post_process_reference(logits, query_to_class, size, logit_scale, prob_threshold, area_threshold):
    """The spec's post-processing of one image's (Q, H, W) logits, pixel by pixel."""
    logits = bilinear_reference(logits, size)
    num_classes = max(query_to_class) + 1
    probabilities = np.zeros((num_classes, *size))
    for y in range(size[0]):
        for x in range(size[1]):
            scaled = logit_scale * logits[:, y, x]
            query_probabilities = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
            for query, class_index in enumerate(query_to_class):
                probabilities[class_index, y, x] = max(probabilities[class_index, y, x], query_probabilities[query])
    if area_threshold is not None:
        winners = probabilities.argmax(0)
        foreground_area = (winners > 0).sum()
        for class_index in range(1, num_classes):
            if (winners == class_index).sum() <= area_threshold * foreground_area:
                probabilities[class_index] = 0
    labels = probabilities.argmax(0)
    labels[probabilities.max(0) < prob_threshold] = 0
    return labels, probabilities


# ----------------------------------------------------------------------------------------------------------------
# Label queries
# ----------------------------------------------------------------------------------------------------------------


def test_encode_labels_equals_per_prompt_reference(model, processor):
    labels = ["sky", "cat; kitten", ["grass", "lawn", "turf"]]
    queries = processor.encode_labels(model, labels, templates=TEMPLATES)

    assert queries.class_names == ["sky", "cat", "grass"]
    assert queries.query_to_class.tolist() == [0, 1, 1, 2, 2, 2]
    names = ["sky", "cat", "kitten", "grass", "lawn", "turf"]
    expected = torch.stack([query_embedding_reference(model, processor.tokenizer, name, TEMPLATES) for name in names])
    torch.testing.assert_close(queries.text_embeds.double(), expected, atol=1e-5, rtol=1e-5)


def test_a_clip_model_encodes_the_same_queries(model, processor):
    from_scclip = processor.encode_labels(model, ["cat", "dog"], templates=TEMPLATES)
    from_clip = processor.encode_labels(tiny_clip_model(0), ["cat", "dog"], templates=TEMPLATES)
    torch.testing.assert_close(from_clip.text_embeds, from_scclip.text_embeds, atol=1e-5, rtol=1e-5)


def test_the_text_tower_runs_once_for_repeated_labels(model, processor, text_tower_calls):
    first = processor.encode_labels(model, ["cat; kitten", "dog"], batch_size=100)
    assert text_tower_calls.count == 3  # 3 names x 80 templates in batches of 100
    again = processor.encode_labels(model, ["cat; kitten", "dog"], templates=IMAGENET_TEMPLATES)
    regrouped = processor.encode_labels(model, ["cat", "kitten", "dog"])
    assert text_tower_calls.count == 3
    assert again.text_embeds is first.text_embeds
    torch.testing.assert_close(regrouped.text_embeds, first.text_embeds)
    assert regrouped.query_to_class.tolist() == [0, 1, 2]

    processor.encode_labels(model, ["cat; kitten", "dog"], templates=TEMPLATES)
    assert text_tower_calls.count == 4  # other templates: encoded again


def test_the_cache_follows_the_model_dtype_and_lets_models_go(processor):
    model = make_model()
    calls = TextTowerCalls(model)
    float32 = processor.encode_labels(model, ["cat"], templates=TEMPLATES)
    model.to(torch.float64)
    float64 = processor.encode_labels(model, ["cat"], templates=TEMPLATES)
    assert calls.count == 2
    assert (float32.text_embeds.dtype, float64.text_embeds.dtype) == (torch.float32, torch.float64)
    torch.testing.assert_close(float64.text_embeds.float(), float32.text_embeds, atol=1e-5, rtol=1e-5)

    model_ref = weakref.ref(model)
    del model, calls
    gc.collect()
    assert model_ref() is None


def test_embeddings_do_not_depend_on_the_autocast_of_the_first_call(processor):
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = processor.encode_labels(model, ["cat", "dog"], templates=TEMPLATES).text_embeds
    processor_without_cache = SCCLIPProcessor(processor.image_processor, processor.tokenizer)
    plain = processor_without_cache.encode_labels(model, ["cat", "dog"], templates=TEMPLATES).text_embeds
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, atol=0, rtol=0)


def test_long_names_are_truncated_with_a_warning(model, processor, caplog):
    long_name = " ".join(["zebra"] * 20)  # 100 tokens with the tiny tokenizer
    with caplog.at_level("WARNING"):
        queries = processor.encode_labels(model, ["cat", long_name], templates=TEMPLATES)
    assert long_name in caplog.text and "truncated" in caplog.text
    assert "'cat'" not in caplog.text
    assert torch.isfinite(queries.text_embeds).all()
    torch.testing.assert_close(queries.text_embeds.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "empty"),
        ("cat, dog", "list of labels"),
        (["cat", "Cat "], "twice"),
        (["big  dog", "cat; Big dog"], "twice"),
        (["cat; kitten", ["dog", "kitten"]], "twice"),
        (["cat", ""], "empty name"),
        (["cat;", "dog"], "empty name"),
        ([["dog", "  "]], "empty name"),
        ([[]], "empty name"),
        ([3], "string or a list of strings"),
    ],
)
def test_bad_labels_raise_clear_errors(model, processor, labels, message):
    with pytest.raises(ValueError, match=message):
        processor.encode_labels(model, labels)


def test_templates_need_a_placeholder(model, processor):
    with pytest.raises(ValueError, match="templates"):
        processor.encode_labels(model, ["cat"], templates=["a photo"])


# ----------------------------------------------------------------------------------------------------------------
# Post-processing
# ----------------------------------------------------------------------------------------------------------------

# Queries 1 and 2 are synonyms of class 1; class 0 is the background.
QUERY_TO_CLASS = [0, 1, 1, 2, 3]


def hand_made_logits(seed):
    """(5, 6, 8) cosine logits: background on the left, class 1 (through both synonyms) in the middle, class 2 on the
    right, class 3 on one pixel only (for the area filter), and a flat row where no query stands out (for the
    background threshold)."""
    generator = torch.Generator().manual_seed(seed)
    logits = 0.2 + 0.02 * torch.randn(5, 6, 8, generator=generator)
    logits[0, :, :2] += 0.1
    logits[1, :3, 2:5] += 0.1
    logits[2, 3:, 2:5] += 0.1
    logits[3, :, 5:] += 0.1
    logits[4, 1, 6] += 0.3
    logits[:, 5] = 0.2 + 0.0005 * torch.randn(5, 8, generator=generator)
    return logits


@pytest.mark.parametrize("logit_scale, prob_threshold, area_threshold", [(40.0, 0.0, None), (50.0, 0.5, 0.1)])
def test_post_processing_equals_per_pixel_reference(processor, logit_scale, prob_threshold, area_threshold):
    logits = torch.stack([hand_made_logits(0), hand_made_logits(1)])
    target_sizes = [(6, 8), (9, 13)]
    label_maps, probability_maps = processor.post_process_semantic_segmentation(
        logits,
        target_sizes=target_sizes,
        query_to_class=torch.tensor(QUERY_TO_CLASS),
        logit_scale=logit_scale,
        prob_threshold=prob_threshold,
        area_threshold=area_threshold,
        return_probabilities=True,
    )
    for image_logits, size, labels, probabilities in zip(logits, target_sizes, label_maps, probability_maps):
        expected_labels, expected_probabilities = post_process_reference(
            image_logits.double().numpy(), QUERY_TO_CLASS, size, logit_scale, prob_threshold, area_threshold
        )
        assert labels.shape == size and labels.dtype == torch.long
        np.testing.assert_array_equal(labels.numpy(), expected_labels)
        np.testing.assert_allclose(probabilities.numpy(), expected_probabilities, atol=1e-5)


def test_the_hand_made_logits_exercise_every_rule(processor):
    logits = [hand_made_logits(0)]
    query_to_class = torch.tensor(QUERY_TO_CLASS)
    plain = processor.post_process_semantic_segmentation(logits, query_to_class=query_to_class)[0]
    filtered = processor.post_process_semantic_segmentation(logits, query_to_class=query_to_class, area_threshold=0.1)[
        0
    ]
    thresholded = processor.post_process_semantic_segmentation(
        logits, query_to_class=query_to_class, prob_threshold=0.5
    )[0]
    assert set(plain.unique().tolist()) == {0, 1, 2, 3}
    assert (plain[:3, 2:5] == 1).all() and (plain[3:5, 2:5] == 1).all()  # either synonym makes class 1
    assert plain[1, 6] == 3 and filtered[1, 6] != 3 and 3 not in filtered
    assert (plain[5] != 0).any() and (thresholded[5] == 0).all()


def test_thresholds_are_strict_as_the_spec_says(processor):
    # 4 x 5 pixels, no background: class 1 wins 10 pixels, class 2 wins 2, class 3 wins 8.
    logits = torch.full((4, 4, 5), -10.0)
    logits[1, :2] = 1
    logits[2, 2, :2] = 1
    logits[3, 2, 2:] = 1
    logits[3, 3] = 1
    removed = processor.post_process_semantic_segmentation([logits], area_threshold=0.1)[0]  # 2 <= 0.1 * 20
    kept = processor.post_process_semantic_segmentation([logits], area_threshold=0.09)[0]  # 2 > 0.09 * 20
    assert (removed[2, :2] == 0).all() and (kept[2, :2] == 2).all()

    # Classes 1 and 2 tie at probability 0.5 exactly: the first wins, and a threshold of 0.5 keeps it.
    tie = torch.tensor([-10.0, 1.0, 1.0]).view(3, 1, 1)
    at_threshold = processor.post_process_semantic_segmentation([tie], prob_threshold=0.5)[0]
    above_threshold = processor.post_process_semantic_segmentation([tie], prob_threshold=0.5001)[0]
    assert (at_threshold.item(), above_threshold.item()) == (1, 0)


def test_without_query_to_class_every_query_is_a_class(processor):
    logits = hand_made_logits(0)
    label_map = processor.post_process_semantic_segmentation(logits[None])[0]
    torch.testing.assert_close(label_map, logits.argmax(0))


def test_pamr_refines_the_resized_logits_before_the_softmax(processor):
    generator = torch.Generator().manual_seed(0)
    logits = torch.rand(1, 3, 5, 6, generator=generator)
    pixel_values = torch.randn(1, 3, 10, 12, generator=generator)
    size = (7, 8)
    label_maps, probability_maps = processor.post_process_semantic_segmentation(
        logits,
        target_sizes=[size],
        return_probabilities=True,
        pamr_images=pixel_values,
        pamr_iterations=2,
        pamr_dilations=(1, 2),
    )
    guide = bilinear_reference(pixel_values[0].double().numpy(), size)
    refined = pamr_reference(guide, bilinear_reference(logits[0].double().numpy(), size), 2, (1, 2))
    expected_labels, expected_probabilities = post_process_reference(refined, [0, 1, 2], size, 40.0, 0.0, None)
    np.testing.assert_array_equal(label_maps[0].numpy(), expected_labels)
    np.testing.assert_allclose(probability_maps[0].numpy(), expected_probabilities, atol=1e-4)


def test_bad_post_processing_inputs_raise_clear_errors(processor):
    logits = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one non-negative class index per query"):
        processor.post_process_semantic_segmentation(logits, query_to_class=[0, 1])
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(logits, target_sizes=[(4, 4)])
    with pytest.raises(ValueError, match="logits"):
        processor.post_process_semantic_segmentation(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="PAMR images"):
        processor.post_process_semantic_segmentation(logits, pamr_images=torch.rand(1, 3, 4, 4))


# ----------------------------------------------------------------------------------------------------------------
# End to end and saving
# ----------------------------------------------------------------------------------------------------------------


def test_images_to_label_maps_with_the_tiny_model(model, processor):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 50, 70, generator=generator), torch.rand(3, 80, 40, generator=generator)]
    inputs = processor(images=images, short_side=32)
    assert [tuple(values.shape[-2:]) for values in inputs.pixel_values] == [(32, 45), (64, 32)]
    queries = processor.encode_labels(model, ["background", "cat; kitten", "dog"], templates=TEMPLATES)
    outputs = model(pixel_values=inputs.pixel_values, text_embeds=queries.text_embeds)
    label_maps = processor.post_process_semantic_segmentation(
        outputs,
        target_sizes=inputs.original_sizes,
        query_to_class=queries.query_to_class,
        pamr_images=inputs.pixel_values,
    )
    assert [tuple(label_map.shape) for label_map in label_maps] == [(50, 70), (80, 40)]
    assert all(label_map.min() >= 0 and label_map.max() <= 2 for label_map in label_maps)


def test_save_and_load_round_trip(model, processor, tmp_path):
    processor.image_processor.short_side = 48
    processor.save_pretrained(tmp_path)
    for reloaded in (
        SCCLIPProcessor.from_pretrained(tmp_path, trust_remote_code=True),
        AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert type(reloaded).__name__ == "SCCLIPProcessor"
        assert reloaded.image_processor.short_side == 48
        image = torch.rand(3, 30, 60)
        torch.testing.assert_close(reloaded(image).pixel_values, processor(image).pixel_values)
        torch.testing.assert_close(
            reloaded.encode_labels(model, ["cat", "dog"], templates=TEMPLATES).text_embeds,
            processor.encode_labels(model, ["cat", "dog"], templates=TEMPLATES).text_embeds,
        )
