"""What tri-planar consensus and ensembles share: they stand where a :class:`Predictor` stands.

Both only produce per-slice class probabilities (``iter_probabilities``) from one or more
predictors; labels, streaming outputs and the 2D/3D handling are the same as the predictor's,
so :func:`~schism_napari.inference.files.predict_to_files`, the evaluation and the widgets can
take either without knowing which they got.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .predictor import PredictionResult, Predictor, Slices, collect_prediction

if TYPE_CHECKING:
    from ..plumbing.array_types import PlaneArray, PlaneOutput


class CombinedPredictor:
    """Base for predictors built on other predictors; subclasses implement ``iter_probabilities``."""

    def __init__(self, base: Predictor):
        self.base = base
        self.class_count = base.class_count
        self.in_channels = base.in_channels
        self.settings = base.settings
        self.tile_size = base.tile_size

    def iter_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover
        raise NotImplementedError

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        return self.base.labels_from_probabilities(probabilities)

    def predict(
        self,
        image: PlaneArray | Slices,
        *,
        rgb: bool = False,
        keep_probabilities: bool = True,
        probabilities_out: PlaneOutput | None = None,
        labels_out: PlaneOutput | None = None,
    ) -> PredictionResult:
        """Same contract as :meth:`Predictor.predict` (2D image or stack, optional streaming outputs)."""
        slices = image if isinstance(image, Slices) else Slices(image, rgb=rgb)
        return collect_prediction(self, slices, keep_probabilities, probabilities_out, labels_out)
