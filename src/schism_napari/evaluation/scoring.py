"""Scoring a trained model on whole images (tiled prediction at full resolution) against masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.dataset import SegmentationData
from ..inference import Predictor
from .metrics import ConfusionMatrix, score_samples

if TYPE_CHECKING:
    from ..inference.combined import CombinedPredictor

REPORTED = ("Jaccard", "Dice", "Precision", "Recall", "Accuracy")


@dataclass
class Evaluation:
    matrix: ConfusionMatrix
    class_names: list[str]
    images: int

    def table(self) -> list[dict[str, Any]]:
        """One row per class plus a 'mean' row, for printing or CSV."""
        per_class = self.matrix.per_class()
        rows: list[dict[str, Any]] = []
        for k, name in enumerate(self.class_names):
            support = int(self.matrix.matrix[k].sum())
            rows.append({"class": name, "pixels": support, **{m: float(per_class[m][k]) for m in REPORTED}})
        rows.append(
            {"class": "mean", "pixels": int(self.matrix.matrix.sum()), **{m: self.matrix.mean(m) for m in REPORTED}}
        )
        return rows

    def format(self) -> str:
        header = f"{'class':<14}{'pixels':>12}" + "".join(f"{m:>11}" for m in REPORTED)
        lines = [header]
        for row in self.table():
            values = "".join(f"{row[m]:>11.4f}" if np.isfinite(row[m]) else f"{'-':>11}" for m in REPORTED)
            lines.append(f"{row['class']!s:<14}{row['pixels']:>12}{values}")
        return "\n".join(lines)


def evaluate(
    predictor: Predictor | CombinedPredictor,
    data: SegmentationData,
    positions: Sequence[int],
    class_names: list[str],
    *,
    ignore_background: bool = False,
) -> Evaluation:
    """Predict each image whole (tiles, blending) and accumulate one confusion matrix."""

    def labels(image: np.ndarray) -> np.ndarray:
        return predictor.predict(image, rgb=True, keep_probabilities=False).labels

    matrix = score_samples(labels, data, positions, ignore_background=ignore_background)
    return Evaluation(matrix, class_names, len(positions))
