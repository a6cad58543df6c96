# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""Mean Intersection-over-Union that streams: per-class pixel histograms, not predictions, are kept between batches."""

import warnings

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Mean Intersection-over-Union (mIoU) for semantic segmentation, with the inputs, options and outputs of the Hub's
`mean_iou` metric and the same formulas as MMSegmentation's `IoUMetric`: for every class, the intersection and the
union of the predicted and reference areas are summed over the whole split; IoU = intersection / union and
accuracy = intersection / reference area; the means are NaN-means, so a class whose union (or reference area) is
0 over the split is left out of them.

Unlike the Hub's `mean_iou`, `add` and `add_batch` do not store the maps: each pair is folded into a joint histogram
of (reference value, predicted value) pixel counts, so memory does not grow with the split. Because the options
(`num_labels`, `ignore_index`, `reduce_labels`, `label_map`) are only applied in `compute`, the histogram is kept over
the raw values (at most 65536 of each, as the Hub metric's uint16 inputs); its size is (largest reference value + 1)
x (largest predicted value + 1), e.g. 256 x 171 for COCO-Stuff. To evaluate on several processes, let each one add its
share, sum the `histogram`s across processes (e.g. with `accelerate`'s `reduce`) and give the sum to one module with
`add_histogram`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`):
        Predicted segmentation maps, each of shape (height, width) with integer class ids in [0, 65535].
    references (`List[ndarray]`):
        Reference segmentation maps, each of the shape of its prediction, integer values in [0, 65535].
    num_labels (`int`):
        Number of classes; predicted and reference ids outside [0, num_labels) are not counted as any class.
    ignore_index (`int`):
        Reference value whose pixels are not scored (after `label_map` and `reduce_labels`), e.g. 255.
    nan_to_num (`int`, *optional*):
        Replaces NaN (classes with an empty union or reference area) in every output when given.
    label_map (`dict`, *optional*):
        Old reference id -> new id, applied to the references one pair after the other, first.
    reduce_labels (`bool`, *optional*, defaults to `False`):
        Reference 0 (background) becomes 255 and every other reference id is lowered by 1 (255 stays 255).
Returns:
    `Dict[str, float | ndarray]`:
        mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy (arrays of
        num_labels values, NaN for a class that is never predicted nor referenced).
Examples:
    >>> metric = evaluate.load("eval/metrics/streaming_mean_iou")
    >>> metric.add_batch(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 255]])])
    >>> results = metric.compute(num_labels=2, ignore_index=255)
    >>> float(results["mean_iou"]), results["per_category_iou"].tolist()
    (0.5, [0.5, 0.5])
"""

_CITATION = """
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
    author = {{MMSegmentation Contributors}},
    license = {Apache-2.0},
    title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
    url = {https://github.com/open-mmlab/mmsegmentation},
    year = {2020}
}
"""

# The Hub metric's inputs are uint16 maps; bounding the values bounds the joint histogram.
MAX_VALUE = np.iinfo(np.uint16).max


def _as_label_map(values, role: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"Each {role} must be a (height, width) map of class ids, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{role.capitalize()} maps must hold integer class ids, got dtype {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() > MAX_VALUE):
        raise ValueError(
            f"{role.capitalize()} values must be in [0, {MAX_VALUE}], got values in [{array.min()}, {array.max()}]."
        )
    return array.astype(np.int64, copy=False)


def joint_histogram(prediction, reference) -> np.ndarray:
    """Pixel counts `histogram[reference value, predicted value]` of one pair of maps."""
    prediction = _as_label_map(prediction, "prediction")
    reference = _as_label_map(reference, "reference")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"A prediction of shape {prediction.shape} was given with a reference of shape {reference.shape}; resize "
            "predictions to their reference's size first."
        )
    if not reference.size:
        return np.zeros((0, 0), dtype=np.int64)
    rows, columns = int(reference.max()) + 1, int(prediction.max()) + 1
    counts = np.bincount((reference * columns + prediction).ravel(), minlength=rows * columns)
    return counts.reshape(rows, columns)


def _pad_to(histogram: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.pad(histogram, [(0, shape[0] - histogram.shape[0]), (0, shape[1] - histogram.shape[1])])


def _nanmean(values: np.ndarray) -> float:
    # An all-NaN mean (nothing scored) is NaN, without numpy's "mean of empty slice" warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values)


def reference_labels(num_values: int, label_map: dict | None, reduce_labels: bool) -> np.ndarray:
    """The label that each raw reference value 0..num_values-1 gets, by the Hub `mean_iou` metric's rules."""
    labels = np.arange(num_values, dtype=np.int64)
    for old_id, new_id in (label_map or {}).items():
        labels[labels == old_id] = new_id
    if reduce_labels:
        labels[labels == 0] = 255
        labels = labels - 1
        labels[labels == 254] = 255
    return labels


def class_areas(histogram: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int):
    """Per-class (intersection, predicted area, reference area) from a joint histogram and each row's label."""
    kept = labels != ignore_index
    scored, scored_labels = histogram[kept], labels[kept]
    in_range = (scored_labels >= 0) & (scored_labels < num_labels)
    # confusion[label, predicted value]: a class's reference area counts its pixels whatever was predicted there.
    confusion = np.zeros((num_labels, scored.shape[1]), dtype=np.int64)
    np.add.at(confusion, scored_labels[in_range], scored[in_range])
    # Only predicted values in [0, num_labels) are classes; every kept pixel, whatever its label, counts for them.
    classes = min(num_labels, scored.shape[1])
    intersection = np.zeros(num_labels, dtype=np.int64)
    intersection[:classes] = np.diag(confusion[:, :classes])
    area_predicted = np.zeros(num_labels, dtype=np.int64)
    area_predicted[:classes] = scored[:, :classes].sum(axis=0)
    return intersection, area_predicted, confusion.sum(axis=1)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StreamingMeanIou(evaluate.Metric):
    """The Hub's `mean_iou` with constant memory: see the module description."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.num_process != 1:
            raise ValueError(
                "streaming_mean_iou does not use evaluate's file-based multi-process mode: load it with one process, "
                "sum the `histogram`s of all processes and pass the sum to `add_histogram`."
            )
        self.reset()

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
            reference_urls=[
                "https://github.com/open-mmlab/mmsegmentation/blob/main/mmseg/evaluation/metrics/iou_metric.py"
            ],
        )

    def reset(self):
        """Forget every pair added so far."""
        self._histogram = np.zeros((0, 0), dtype=np.int64)
        self._num_pairs = 0

    def __len__(self):
        return self._num_pairs

    @property
    def histogram(self) -> np.ndarray:
        """Pixel counts `[reference value, predicted value]` of everything added so far (a copy)."""
        return self._histogram.copy()

    def add_histogram(self, histogram, num_pairs: int = 0):
        """Add a joint histogram (e.g. another process's `histogram`), and the number of pairs it counts."""
        histogram = np.asarray(histogram)
        if histogram.ndim != 2 or not np.issubdtype(histogram.dtype, np.integer):
            raise ValueError(
                f"A joint histogram is a 2-d integer array, got {histogram.dtype} of shape {histogram.shape}."
            )
        shape = tuple(np.maximum(self._histogram.shape, histogram.shape))
        self._histogram = _pad_to(self._histogram, shape) + _pad_to(histogram.astype(np.int64), shape)
        self._num_pairs += num_pairs

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one predicted map and its reference map."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predicted maps and their reference maps; only their pixel counts are kept."""
        if kwargs:
            raise ValueError(
                f"Unexpected inputs {sorted(kwargs)}: add_batch takes predictions and references; pass num_labels, "
                "ignore_index and the other options to compute."
            )
        if predictions is None or references is None or len(predictions) != len(references):
            raise ValueError("add_batch needs as many predictions as references.")
        for prediction, reference in zip(predictions, references):
            self.add_histogram(joint_histogram(prediction, reference), num_pairs=1)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Add the given pairs, if any, compute the metrics over everything added, then reset."""
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        results = self._compute(**kwargs)
        self.reset()
        return results

    def _compute(
        self,
        num_labels: int,
        ignore_index: int,
        nan_to_num: int | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ):
        labels = reference_labels(self._histogram.shape[0], label_map, reduce_labels)
        intersection, area_predicted, area_reference = class_areas(self._histogram, labels, num_labels, ignore_index)
        area_union = area_predicted + area_reference - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersection / area_union
            accuracy = intersection / area_reference
            overall_accuracy = intersection.sum() / area_reference.sum()
        metrics = {
            "mean_iou": _nanmean(iou),
            "mean_accuracy": _nanmean(accuracy),
            "overall_accuracy": overall_accuracy,
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
        if nan_to_num is not None:
            metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
        return metrics
