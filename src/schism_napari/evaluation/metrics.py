"""Segmentation metrics from one confusion matrix accumulated over the whole validation set.

Averaging per batch (as SCHISM's torchmetrics did per step) biases scores towards small
batches; one matrix over all pixels gives the exact dataset-level Dice, IoU, precision,
recall and accuracy, per class and as the mean over classes.

Training, evaluation, the pixel-classifier baseline and the held-out choice between forest and
network all score with this module, so it sits below them (inference reaches it through
evaluation without reaching training). It imports torch only when a matrix is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..config import canonical_metric
from ..data.io import IGNORE

if TYPE_CHECKING:
    import torch

    from ..data.dataset import SegmentationData

AP_BINS = 1000


class ConfusionMatrix:
    """Rows: true class; columns: predicted class. Unlabeled pixels (IGNORE) are skipped."""

    def __init__(self, class_count: int, *, average_precision: bool = False, excluded: tuple[int, ...] = ()):
        import torch

        self.class_count = class_count
        self.excluded = excluded  # classes left out of the means (ignore_background)
        self.matrix = torch.zeros(class_count, class_count, dtype=torch.int64)
        self._histograms = torch.zeros(2, class_count, AP_BINS, dtype=torch.float64) if average_precision else None

    def update(
        self,
        target: torch.Tensor | np.ndarray,
        predicted: torch.Tensor | np.ndarray,
        probabilities: torch.Tensor | None = None,
    ) -> None:
        """``target`` and ``predicted`` (..., H, W) classes, target with IGNORE for unlabeled pixels;
        ``probabilities`` (B, C, H, W) only when average precision is wanted."""
        import torch

        target, predicted = _as_tensor(target), _as_tensor(predicted)
        valid = target != IGNORE
        truth, guess = target[valid].long(), predicted[valid].long()
        counts = torch.bincount(truth * self.class_count + guess, minlength=self.class_count**2)
        self.matrix += counts.reshape(self.class_count, self.class_count).cpu()
        if self._histograms is not None and probabilities is not None:
            scores = probabilities.permute(0, 2, 3, 1)[valid]  # (P, C)
            bins = (scores.float() * (AP_BINS - 1)).round().long().clamp(0, AP_BINS - 1)
            classes = torch.arange(self.class_count, device=bins.device)
            positive = (truth[:, None] == classes).long()
            flat = (positive * self.class_count + classes) * AP_BINS + bins
            histogram = torch.bincount(flat.ravel(), minlength=2 * self.class_count * AP_BINS)
            self._histograms += histogram.reshape(2, self.class_count, AP_BINS).cpu().double()

    def per_class(self) -> dict[str, np.ndarray]:
        m = self.matrix.double().numpy()
        tp = np.diag(m)
        fp = m.sum(axis=0) - tp
        fn = m.sum(axis=1) - tp
        total = m.sum()
        tn = total - tp - fp - fn
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = {
                "Jaccard": tp / (tp + fp + fn),
                "Dice": 2 * tp / (2 * tp + fp + fn),
                "Precision": tp / (tp + fp),
                "Recall": tp / (tp + fn),
                "Accuracy": (tp + tn) / total,  # one class against the rest
            }
        if self._histograms is not None:
            scores["AveragePrecision"] = self._average_precision()
        for name in scores:
            scores[name] = np.where(np.isfinite(scores[name]), scores[name], np.nan)
        return scores

    def _average_precision(self) -> np.ndarray:
        assert self._histograms is not None  # only called when average precision was asked for
        negatives, positives = self._histograms.numpy()
        results = np.full(self.class_count, np.nan)
        for c in range(self.class_count):
            # thresholds from high to low score
            tp = np.cumsum(positives[c][::-1])
            fp = np.cumsum(negatives[c][::-1])
            if tp[-1] == 0:
                continue
            precision = tp / np.maximum(tp + fp, 1)
            recall_steps = np.diff(np.concatenate([[0.0], tp / tp[-1]]))
            results[c] = float(np.sum(precision * recall_steps))
        return results

    def mean(self, name: str) -> float:
        """Mean over the classes that occur (NaN classes and excluded classes left out)."""
        canonical = canonical_metric(name)
        if canonical == "Accuracy":
            m = self.matrix.double()
            keep = [c for c in range(self.class_count) if c not in self.excluded]
            total = m[keep].sum()
            return float(m.diag()[keep].sum() / total) if total > 0 else float("nan")
        if canonical == "GeneralizedDice":
            return self._generalized_dice()
        values = self.per_class()[canonical or name]
        keep = [c for c in range(self.class_count) if c not in self.excluded and np.isfinite(values[c])]
        return float(np.mean(values[keep])) if keep else float("nan")

    def _generalized_dice(self) -> float:
        m = self.matrix.double().numpy()
        keep = [c for c in range(self.class_count) if c not in self.excluded]
        tp = np.diag(m)[keep]
        support = m.sum(axis=1)[keep]
        predicted = m.sum(axis=0)[keep]
        weights = np.where(support > 0, 1.0 / np.maximum(support, 1) ** 2, 0.0)
        denominator = np.sum(weights * (support + predicted))
        return float(2 * np.sum(weights * tp) / denominator) if denominator > 0 else float("nan")

    def class_scores(self, name: str) -> list[float]:
        canonical = canonical_metric(name)
        if canonical == "GeneralizedDice":
            return [self._generalized_dice()] * self.class_count
        return [float(v) for v in self.per_class()[canonical or name]]


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    import torch

    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))


def score_samples(
    predict: Callable[[np.ndarray], np.ndarray],
    data: SegmentationData,
    positions: Sequence[int],
    *,
    ignore_background: bool = False,
) -> ConfusionMatrix:
    """One confusion matrix of ``predict(image) -> labels`` against the masks of the samples of
    ``data`` (a :class:`~schism_napari.data.SegmentationData`) at ``positions``; samples without a
    mask are skipped. With ``ignore_background`` mask class 0 is unlabelled (IGNORE) and class 0
    is left out of the means, as in training."""
    matrix = ConfusionMatrix(data.class_count, excluded=(0,) if ignore_background else ())
    for position in positions:
        sample = data.samples[position]
        if sample.mask is None:
            continue
        target = sample.mask
        if ignore_background:
            target = np.where(target == 0, IGNORE, target).astype(np.uint8)
        matrix.update(target, predict(sample.image))
    return matrix


def jaccard(matrix: np.ndarray) -> list[float]:
    """IoU per class of a confusion matrix (rows: true class), NaN for a class never seen nor predicted."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    return [float(t / u) if u else math.nan for t, u in zip(tp, union, strict=True)]
