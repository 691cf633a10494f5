"""Classical pixel classifiers: the yardstick a network must beat, and an instant preview.

``forest`` is what ilastik does: multiscale filter features (Gaussian intensity, edges and
texture at sigmas 1..16, :func:`skimage.feature.multiscale_basic_features`) and a random
forest trained on the labelled pixels. ``lda`` is the sem seed's comparison: linear
discriminant analysis on the pixel values alone. Both train in seconds on the pixels a user
painted and predict any 2D slice; they take the same masks as the networks (classes 0..C-1,
:data:`~schism_napari.data.io.IGNORE` for unlabeled pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .data.io import IGNORE, unit_range
from .errors import DataError

KINDS = ("forest", "lda")
MAX_PIXELS_PER_CLASS = 20_000  # enough for a forest to settle, few enough to fit in seconds


class PixelClassifier:
    """A per-pixel classifier on hand-made features, trained from sparse or dense masks.

    Images are ``(Y, X, C)`` in their stored dtype (as :class:`~schism_napari.data.Sample`
    holds them); masks ``(Y, X)`` with classes and IGNORE. Labelled pixels are subsampled to
    at most :data:`MAX_PIXELS_PER_CLASS` per class, so dense masks fit as fast as scribbles.
    """

    def __init__(
        self,
        kind: str = "forest",
        *,
        class_count: int,
        sigma_min: float = 1.0,
        sigma_max: float = 16.0,
        trees: int = 100,
        seed: int | None = 0,
        threads: int = -1,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown classifier {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind, self.class_count = kind, class_count
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.trees, self.seed, self.threads = trees, seed, threads
        self.model: Any = None

    # ---- features ----------------------------------------------------------------------------

    def features(self, image: np.ndarray) -> np.ndarray:
        """(Y, X, C) stored dtype -> (Y, X, F) float32 features."""
        low, high = unit_range(image.dtype)
        scaled = (np.asarray(image, dtype=np.float32) - low) / np.float32(high - low)
        if self.kind == "lda":
            return scaled
        from skimage.feature import multiscale_basic_features

        return multiscale_basic_features(
            scaled,
            intensity=True,
            edges=True,
            texture=True,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            channel_axis=-1,
        ).astype(np.float32, copy=False)

    # ---- training and prediction -------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> PixelClassifier:
        """Train on the labelled pixels of ``images``; slices without labels are skipped."""
        rng = np.random.default_rng(self.seed)
        chosen: list[tuple[int, np.ndarray]] = []  # (image number, flat pixel indices)
        per_class: dict[int, list[tuple[int, np.ndarray]]] = {}
        for number, mask in enumerate(masks):
            flat = np.asarray(mask).ravel()
            for k in np.unique(flat):
                if k != IGNORE:
                    per_class.setdefault(int(k), []).append((number, np.flatnonzero(flat == k)))
        if not per_class:
            raise DataError("no labelled pixels to train the pixel classifier on")
        for _k, groups in per_class.items():
            total = sum(indices.size for _, indices in groups)
            share = min(1.0, MAX_PIXELS_PER_CLASS / total)
            for number, indices in groups:
                take = max(1, round(indices.size * share))
                chosen.append((number, rng.choice(indices, take, replace=False) if take < indices.size else indices))
        rows, targets = [], []
        by_image: dict[int, list[np.ndarray]] = {}
        for number, indices in chosen:
            by_image.setdefault(number, []).append(indices)
        for number, parts in by_image.items():
            indices = np.concatenate(parts)
            features = self.features(images[number])
            rows.append(features.reshape(-1, features.shape[-1])[indices])
            targets.append(np.asarray(masks[number]).ravel()[indices])
        x, y = np.concatenate(rows), np.concatenate(targets).astype(np.int64)
        self.model = self._estimator()
        self.model.fit(x, y)
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """(Y, X, C) -> class probabilities (class_count, Y, X) float32; unseen classes get 0."""
        if self.model is None:
            raise RuntimeError("fit the classifier first")
        features = self.features(image)
        height, width = features.shape[:2]
        known = self.model.predict_proba(features.reshape(-1, features.shape[-1]))
        probabilities = np.zeros((self.class_count, height * width), dtype=np.float32)
        probabilities[np.asarray(self.model.classes_, dtype=np.int64)] = known.T
        return probabilities.reshape(self.class_count, height, width)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(Y, X, C) -> classes (Y, X) uint8."""
        return self.predict_proba(image).argmax(axis=0).astype(np.uint8)

    def _estimator(self) -> Any:
        if self.kind == "lda":
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

            return LinearDiscriminantAnalysis()
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.trees, n_jobs=self.threads, random_state=self.seed)


def fit_pixel_classifier(data: Any, positions: Sequence[int], kind: str = "forest", **options: Any) -> PixelClassifier:
    """Train on the samples of a :class:`~schism_napari.data.SegmentationData` at ``positions``."""
    samples = [data.samples[p] for p in positions if data.samples[p].mask is not None]
    classifier = PixelClassifier(kind, class_count=data.class_count, **options)
    return classifier.fit([s.image for s in samples], [s.mask for s in samples])


def score_pixel_classifier(
    classifier: PixelClassifier, data: Any, positions: Sequence[int], *, ignore_background: bool = False
) -> Any:
    """A :class:`~schism_napari.training.metrics.ConfusionMatrix` of the classifier on the masks at ``positions``."""
    from .training.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(data.class_count, excluded=(0,) if ignore_background else ())
    for position in positions:
        sample = data.samples[position]
        if sample.mask is None:
            continue
        target = sample.mask
        if ignore_background:
            target = np.where(target == 0, IGNORE, target).astype(np.uint8)
        matrix.update(target, classifier.predict(sample.image))
    return matrix


def compare_with_baselines(
    network: Any,
    data: Any,
    train_positions: Sequence[int],
    positions: Sequence[int],
    class_names: Sequence[str],
    *,
    kinds: Sequence[str] = ("lda", "forest"),
    ignore_background: bool = False,
) -> str:
    """IoU per class of the network (an :class:`~schism_napari.evaluation.Evaluation`) beside LDA and
    the forest, trained on the labels at ``train_positions`` and scored on ``positions``, as a table."""
    columns = {"network": network.matrix}
    for kind in kinds:
        classifier = fit_pixel_classifier(data, train_positions, kind)
        columns[kind] = score_pixel_classifier(classifier, data, positions, ignore_background=ignore_background)
    scores = {name: matrix.per_class()["Jaccard"] for name, matrix in columns.items()}
    means = {name: matrix.mean("Jaccard") for name, matrix in columns.items()}
    lines = [f"{'IoU':<14}" + "".join(f"{name:>11}" for name in columns)]
    for k, name in enumerate(class_names):
        lines.append(f"{name!s:<14}" + "".join(_cell(float(scores[c][k])) for c in columns))
    lines.append(f"{'mean':<14}" + "".join(_cell(float(means[c])) for c in columns))
    return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{value:>11.4f}" if np.isfinite(value) else f"{'-':>11}"
