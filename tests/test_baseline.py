"""The classical pixel classifiers: trained on scribbles, they recover the synthetic phases."""

from __future__ import annotations

import numpy as np
import pytest

from schism_napari.data.io import IGNORE
from schism_napari.forest.classifier import PixelClassifier
from schism_napari.sample import make_rock, scribbles


def _iou(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    scores = []
    for k in range(classes):
        union = np.count_nonzero((truth == k) | (predicted == k))
        if union:
            scores.append(np.count_nonzero((truth == k) & (predicted == k)) / union)
    return float(np.mean(scores))


@pytest.mark.parametrize("kind", ["forest", "lda"])
def test_pixel_classifier_learns_from_scribbles(kind: str) -> None:
    volume, truth = make_rock((3, 96, 96), seed=1)
    painted = scribbles(truth, slices=(0,)).astype(np.int64) - 1  # napari labels -> classes
    mask = np.where(painted < 0, IGNORE, painted).astype(np.uint8)
    assert 0 < np.count_nonzero(mask[0] != IGNORE) < mask[0].size // 4
    classifier = PixelClassifier(kind, class_count=3, trees=20).fit([volume[0][..., None]], [mask[0]])
    probabilities = classifier.predict_proba(volume[2][..., None])
    assert probabilities.shape == (3, 96, 96)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    chance = _iou(truth[2], np.zeros_like(truth[2]), 3)
    assert _iou(truth[2], classifier.predict(volume[2][..., None]), 3) > max(0.5, chance + 0.2)


def test_pixel_classifier_reports_unseen_classes_as_zero() -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 1), dtype=np.uint8)
    mask = np.full((32, 32), IGNORE, np.uint8)
    mask[:4], mask[-4:] = 0, 2  # class 1 never painted
    probabilities = PixelClassifier("forest", class_count=3, trees=5).fit([image], [mask]).predict_proba(image)
    assert probabilities.shape == (3, 32, 32)
    assert not probabilities[1].any()
