"""Classical pixel classifiers: the yardstick a network must beat, and an instant preview.

``forest`` is what ilastik does: multiscale filter features (Gaussian intensity, edges and
texture at sigmas 1..16, :func:`skimage.feature.multiscale_basic_features`) and a random
forest trained on the labelled pixels. ``lda`` is the sem seed's comparison: linear
discriminant analysis on the pixel values alone. Both train in seconds on the pixels a user
painted and predict any 2D slice; they take the same masks as the networks (classes 0..C-1,
:data:`~schism_napari.data.io.IGNORE` for unlabeled pixels).

A fitted classifier is saved as the pixels it was fitted on (features and classes, ``.npz``) and
fitted again when loaded (:meth:`PixelClassifier.save`, :meth:`PixelClassifier.load`): the file holds
numbers only, so loading it runs no code (pickle and joblib would), and it does not depend on
scikit-learn's private tree layout, which changes between versions. With the same seed and
scikit-learn the trees are the same; the refit takes a second or two and happens on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from ..data.io import IGNORE, unit_range
from ..errors import DataError, SchismError
from ..evaluation.metrics import ConfusionMatrix, score_samples

if TYPE_CHECKING:
    from ..data.dataset import SegmentationData


class Scored(Protocol):
    """A network's scores as :func:`compare_with_baselines` reads them (an
    :class:`~schism_napari.evaluation.scoring.Evaluation`, which this layer does not import)."""

    @property
    def matrix(self) -> ConfusionMatrix: ...


KINDS = ("forest", "lda")
MAX_PIXELS_PER_CLASS = 20_000  # enough for a forest to settle, few enough to fit in seconds
BAND_PIXELS = 2048 * 2048  # larger slices are predicted in bands: the features take 80 bytes a pixel
FILE_FORMAT = 1  # of the saved classifier (.npz)
_FIT_LOCK = threading.Lock()


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
        self.samples: tuple[np.ndarray, np.ndarray] | None = None  # the (features, classes) fitted on

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
        self.samples = (x, y)
        self.model = self._estimator()
        self.model.fit(x, y)
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """(Y, X, C) -> class probabilities (class_count, Y, X) float32; unseen classes get 0.

        Slices over :data:`BAND_PIXELS` are predicted in bands of rows, each with a margin of
        four ``sigma_max`` (the Gaussian filters' reach), so memory stays bounded and the bands
        agree with one pass over the whole slice."""
        if self.model is None:
            self._fit_saved()
        height, width = image.shape[:2]
        if height * width <= BAND_PIXELS or self.kind == "lda":
            return self._predict_block(image)
        rows = max(64, BAND_PIXELS // width)
        margin = int(np.ceil(4 * self.sigma_max))
        probabilities = np.empty((self.class_count, height, width), dtype=np.float32)
        for top in range(0, height, rows):
            start, stop = max(0, top - margin), min(height, top + rows + margin)
            block = self._predict_block(image[start:stop])
            probabilities[:, top : top + rows] = block[:, top - start : top - start + rows]
        return probabilities

    def _fit_saved(self) -> None:
        """A classifier read from a file: fit it on its saved pixels (once, whichever thread asks first)."""
        if self.samples is None:
            raise RuntimeError("fit the classifier first")
        with _FIT_LOCK:
            if self.model is None:
                model = self._estimator()
                model.fit(*self.samples)
                self.model = model

    def _predict_block(self, image: np.ndarray) -> np.ndarray:
        features = self.features(image)
        height, width = features.shape[:2]
        known = self.model.predict_proba(features.reshape(-1, features.shape[-1]))
        probabilities = np.zeros((self.class_count, height * width), dtype=np.float32)
        probabilities[np.asarray(self.model.classes_, dtype=np.int64)] = known.T
        return probabilities.reshape(self.class_count, height, width)

    # ---- a file of numbers: saved as its training pixels, fitted again when loaded ---------------

    def save(self, path: str | Path) -> Path:
        """Write the pixels the classifier was fitted on and its settings to ``path`` (``.npz``),
        atomically (a run folder's file: replaced if there)."""
        import json

        from ..plumbing.atomic import atomic_path

        if self.samples is None:
            raise RuntimeError("fit the classifier first")
        settings = {
            "format": FILE_FORMAT,
            "kind": self.kind,
            "class_count": self.class_count,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "trees": self.trees,
            "seed": self.seed,
        }
        path = Path(path)
        with atomic_path(path, overwrite=True) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(
                handle, features=self.samples[0], classes=self.samples[1], settings=np.array(json.dumps(settings))
            )
        return path

    @classmethod
    def load(cls, path: str | Path, *, threads: int = -1) -> PixelClassifier:
        """Read a file written by :meth:`save` (``allow_pickle=False``: numbers and text only); the
        forest is fitted again from its pixels on first use, with the same seed."""
        import json

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as saved:
                features, classes = saved["features"], saved["classes"]
                settings = json.loads(str(saved["settings"]))
        except FileNotFoundError:
            raise SchismError(f"{path}: pixel classifier file not found") from None
        except (OSError, ValueError, KeyError) as error:
            raise SchismError(f"{path}: not a saved pixel classifier ({type(error).__name__}: {error})") from None
        if settings.get("format") != FILE_FORMAT or settings.get("kind") not in KINDS:
            raise SchismError(f"{path}: a pixel classifier of an unknown format ({settings.get('format')!r})")
        if features.ndim != 2 or classes.shape != features.shape[:1] or not len(classes):
            raise SchismError(f"{path}: features {features.shape} and classes {classes.shape} do not match")
        classifier = cls(
            settings["kind"],
            class_count=int(settings["class_count"]),
            sigma_min=float(settings["sigma_min"]),
            sigma_max=float(settings["sigma_max"]),
            trees=int(settings["trees"]),
            seed=settings["seed"],
            threads=threads,
        )
        if classes.min() < 0 or classes.max() >= classifier.class_count:
            raise SchismError(f"{path}: classes beyond the {classifier.class_count} it names")
        classifier.samples = (features.astype(np.float32, copy=False), classes.astype(np.int64, copy=False))
        return classifier

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(Y, X, C) -> classes (Y, X) uint8."""
        return self.predict_proba(image).argmax(axis=0).astype(np.uint8)

    def _estimator(self) -> Any:
        if self.kind == "lda":
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

            return LinearDiscriminantAnalysis()
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.trees, n_jobs=self.threads, random_state=self.seed)


def fit_pixel_classifier(
    data: SegmentationData, positions: Sequence[int], kind: str = "forest", **options: Any
) -> PixelClassifier:
    """Train on the samples of a :class:`~schism_napari.data.SegmentationData` at ``positions``."""
    samples = [data.samples[p] for p in positions if data.samples[p].mask is not None]
    classifier = PixelClassifier(kind, class_count=data.class_count, **options)
    masks = cast("list[np.ndarray]", [s.mask for s in samples])  # samples without one are left out above
    return classifier.fit([s.image for s in samples], masks)


def score_pixel_classifier(
    classifier: PixelClassifier, data: SegmentationData, positions: Sequence[int], *, ignore_background: bool = False
) -> ConfusionMatrix:
    """A :class:`~schism_napari.evaluation.metrics.ConfusionMatrix` of the classifier on the masks at ``positions``
    (scored as :func:`~schism_napari.evaluation.scoring.evaluate` scores a network)."""
    return score_samples(classifier.predict, data, positions, ignore_background=ignore_background)


def compare_with_baselines(
    network: Scored,
    data: SegmentationData,
    train_positions: Sequence[int],
    positions: Sequence[int],
    class_names: Sequence[str],
    *,
    kinds: Sequence[str] = ("lda", "forest"),
    ignore_background: bool = False,
) -> str:
    """IoU per class of the network (an :class:`~schism_napari.evaluation.scoring.Evaluation`) beside LDA and
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
