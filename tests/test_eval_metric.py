"""The project's streaming mean-IoU `evaluate` module against hand-computed values and the Hub / MMSegmentation formulas."""

from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch


METRIC_PATH = str(Path(__file__).resolve().parents[1] / "eval" / "metrics" / "streaming_mean_iou")
OUTPUTS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


@pytest.fixture
def metric():
    return evaluate.load(METRIC_PATH)


def scores_from_areas(intersection, area_prediction, area_reference) -> dict:
    """The outputs of the Hub metric and IoUMetric from per-class areas summed over the split; NaN-means."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / (area_prediction + area_reference - intersection)
        accuracy = intersection / area_reference
    return {
        "mean_iou": np.nanmean(iou),
        "mean_accuracy": np.nanmean(accuracy),
        "overall_accuracy": intersection.sum() / area_reference.sum(),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


def hub_mean_iou(predictions, references, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """The Hub `mean_iou` metric's formulas, image by image with `np.histogram`, as an independent reference."""
    totals = np.zeros((3, num_labels))
    for prediction, reference in zip(predictions, references):
        reference = np.array(reference, dtype=np.int64)
        for old_id, new_id in (label_map or {}).items():
            reference[reference == old_id] = new_id
        if reduce_labels:
            reference[reference == 0] = 255
            reference = reference - 1
            reference[reference == 254] = 255
        mask = reference != ignore_index
        prediction, reference = np.asarray(prediction)[mask], reference[mask]
        intersection = prediction[prediction == reference]
        for row, values in enumerate((intersection, prediction, reference)):
            totals[row] += np.histogram(values, bins=num_labels, range=(0, num_labels - 1))[0]
    return scores_from_areas(*totals)


def mmseg_mean_iou(predictions, references, num_labels, ignore_index):
    """
    MMSegmentation IoUMetric's formulas (`torch.histc` over the kept pixels, then `total_area_to_metrics`: aAcc, IoU
    and Acc per class, NaN-means), unrounded, as a second reference.
    """
    totals = torch.zeros(3, num_labels, dtype=torch.float64)
    for prediction, reference in zip(predictions, references):
        prediction, reference = torch.as_tensor(prediction), torch.as_tensor(reference)
        mask = reference != ignore_index
        prediction, reference = prediction[mask].double(), reference[mask].double()
        intersection = prediction[prediction == reference]
        for row, values in enumerate((intersection, prediction, reference)):
            totals[row] += torch.histc(values, bins=num_labels, min=0, max=num_labels - 1)
    return scores_from_areas(*totals.numpy())


def assert_same_results(results, expected):
    for name in OUTPUTS:
        np.testing.assert_allclose(results[name], expected[name], rtol=1e-12, err_msg=name)


def random_maps(seed, count, num_labels, ignore_index=255):
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for _ in range(count):
        shape = tuple(rng.integers(3, 12, size=2))
        predictions.append(rng.integers(0, num_labels, shape))
        reference = rng.integers(0, num_labels, shape)
        reference[rng.random(shape) < 0.2] = ignore_index
        references.append(reference)
    return predictions, references


def test_hand_computed_values(metric):
    # Pixels (reference, prediction): (0,0) (1,0) (1,1) (2,2) (255,5) (3,1) (1,5) (3,3).
    # Class 4 is neither predicted nor referenced; class 5 is only predicted (the (255,5) pixel is ignored).
    prediction = np.array([[0, 0, 1, 2], [5, 1, 5, 3]])
    reference = np.array([[0, 1, 1, 2], [255, 3, 1, 3]])
    results = metric.compute(predictions=[prediction], references=[reference], num_labels=6, ignore_index=255)
    # class: intersection / predicted area / reference area / union
    # 0: 1 / 2 / 1 / 2      1: 1 / 2 / 3 / 4      2: 1 / 1 / 1 / 1
    # 3: 1 / 1 / 2 / 2      4: 0 / 0 / 0 / 0      5: 0 / 1 / 0 / 1
    expected_iou = [1 / 2, 1 / 4, 1.0, 1 / 2, np.nan, 0.0]
    expected_accuracy = [1.0, 1 / 3, 1.0, 1 / 2, np.nan, np.nan]
    np.testing.assert_allclose(results["per_category_iou"], expected_iou)
    np.testing.assert_allclose(results["per_category_accuracy"], expected_accuracy)
    assert results["mean_iou"] == pytest.approx((1 / 2 + 1 / 4 + 1 + 1 / 2 + 0) / 5)
    assert results["mean_accuracy"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 2) / 4)
    assert results["overall_accuracy"] == pytest.approx(4 / 7)


def test_reduce_labels_and_label_map(metric):
    # With reduce_labels, reference 0 is ignored and the others shift down: references become [[255, 0], [1, 255]].
    prediction = np.array([[1, 0], [0, 1]])
    reference = np.array([[0, 1], [2, 255]])
    results = metric.compute(
        predictions=[prediction], references=[reference], num_labels=2, ignore_index=255, reduce_labels=True
    )
    # class 0: intersection 1, predicted 2 (one of them on reference 1), reference 1 -> IoU 1/2, accuracy 1
    # class 1: intersection 0, predicted 0, reference 1 -> IoU 0, accuracy 0
    np.testing.assert_allclose(results["per_category_iou"], [1 / 2, 0.0])
    np.testing.assert_allclose(results["per_category_accuracy"], [1.0, 0.0])

    predictions, references = random_maps(seed=1, count=4, num_labels=6)
    label_map = {1: 3, 3: 5, 5: 0}
    for options in (
        {"reduce_labels": True},
        {"label_map": label_map},
        {"label_map": label_map, "reduce_labels": True},
    ):
        results = metric.compute(
            predictions=predictions, references=references, num_labels=6, ignore_index=255, **options
        )
        assert_same_results(results, hub_mean_iou(predictions, references, 6, 255, **options))


def test_matches_hub_and_mmsegmentation_formulas(metric):
    predictions, references = random_maps(seed=0, count=7, num_labels=9)
    # A predicted id beyond num_labels and a reference id beyond it (not the ignore index) are no class; class 9 is
    # neither predicted nor referenced (NaN, left out of the means), class 10 only predicted.
    predictions[0][0, 0], references[1][0, 0], predictions[2][1, 1] = 12, 11, 10
    results = metric.compute(predictions=predictions, references=references, num_labels=11, ignore_index=255)
    assert np.isnan(results["per_category_iou"][9]) and results["per_category_iou"][10] == 0
    assert_same_results(results, hub_mean_iou(predictions, references, 11, 255))
    assert_same_results(results, mmseg_mean_iou(predictions, references, 11, 255))


def test_streaming_equals_one_shot_and_keeps_only_a_histogram(metric):
    predictions, references = random_maps(seed=2, count=10, num_labels=5)
    one_shot = evaluate.load(METRIC_PATH).compute(
        predictions=predictions, references=references, num_labels=5, ignore_index=255
    )
    for start in range(0, 10, 3):
        metric.add_batch(predictions=predictions[start : start + 3], references=references[start : start + 3])
    metric.add(prediction=predictions[0], reference=references[0])
    assert len(metric) == 11
    # Memory is one joint histogram over (reference value, predicted value), whatever the number of maps.
    assert metric.histogram.shape == (256, 5)
    assert metric.histogram.sum() == sum(reference.size for reference in references) + references[0].size

    streamed = evaluate.load(METRIC_PATH)
    streamed.add_batch(predictions=predictions, references=references)
    assert_same_results(streamed.compute(num_labels=5, ignore_index=255), one_shot)
    assert len(streamed) == 0, "compute resets the module"


def test_histograms_of_several_processes_add_up(metric):
    predictions, references = random_maps(seed=3, count=6, num_labels=4)
    shards = [evaluate.load(METRIC_PATH) for _ in range(2)]
    shards[0].add_batch(predictions=predictions[:4], references=references[:4])
    # The second shard has no ignored pixel: its histogram is smaller than the first's and is padded when summed.
    shards[1].add_batch(predictions=predictions[4:], references=[np.minimum(r, 3) for r in references[4:]])
    assert shards[0].histogram.shape != shards[1].histogram.shape
    for shard in shards:
        metric.add_histogram(shard.histogram, num_pairs=len(shard))
    assert len(metric) == 6
    expected = hub_mean_iou(predictions, references[:4] + [np.minimum(r, 3) for r in references[4:]], 4, 255)
    assert_same_results(metric.compute(num_labels=4, ignore_index=255), expected)


def test_nan_to_num_and_invalid_inputs(metric):
    results = metric.compute(
        predictions=[np.array([[0, 0]])],
        references=[np.array([[0, 255]])],
        num_labels=3,
        ignore_index=255,
        nan_to_num=-1,
    )
    np.testing.assert_array_equal(results["per_category_iou"], [1.0, -1, -1])
    with pytest.raises(ValueError, match="shape"):
        metric.add(prediction=np.zeros((2, 3), dtype=int), reference=np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        metric.add(prediction=np.full((2, 2), -1), reference=np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="compute"):
        metric.add_batch(
            predictions=[np.zeros((1, 1), dtype=int)], references=[np.zeros((1, 1), dtype=int)], num_labels=2
        )
