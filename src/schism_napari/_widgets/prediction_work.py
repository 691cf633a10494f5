"""What the Prediction tab runs in its worker thread: the predictor, built through
:mod:`schism_napari.workflows`, and the prediction itself (in memory, or streamed into a store on
disk). torch is imported here, in the worker, never when the dock opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.uncertainty import margin_uncertainty
from .layer_turns import prepare_layer_code

BEST_LOSS = "loss"  # as schism_napari.runs.BEST_LOSS, without importing torch

if TYPE_CHECKING:
    from ..config import InferenceConfig
    from ..events import ProgressCallback, StopToken
    from ..inference import PredictionResult
    from ..runs import TrainedModel
    from ..workflows.predict import AnyPredictor


def build_predictor(
    model: TrainedModel,
    settings: InferenceConfig,
    runs: list[Path],
    *,
    callback: ProgressCallback,
    stop: StopToken,
    slab_depth: int | None = None,
) -> AnyPredictor:
    """In the worker: the model's predictor (or the mean of it and ``runs``; tri-planar for
    ``settings.planes = xyz``, in slabs of ``slab_depth``); torch is imported here, not at dock time."""
    from ..workflows import PredictRequest, build_predictors, planar

    request = PredictRequest(
        runs=runs,
        model=model,
        metric=BEST_LOSS,
        settings=settings,
        device=model.config.training.device,
        threads=model.config.training.threads,
        leave_for_gui=True,  # the GUI thread keeps priority (resources.yield_to_gui)
    )
    prepare_layer_code()  # here, not when the result layers are created in the GUI thread
    predictors = build_predictors(request, callback=callback, stop=stop)
    return planar(predictors.predictor, settings, slab_depth=slab_depth)


def predict_in_memory(
    model: TrainedModel,
    settings: InferenceConfig,
    data: Any,
    rgb: bool,
    runs: list[Path],
    *,
    callback: ProgressCallback,
    stop: StopToken,
) -> tuple[PredictionResult, np.ndarray]:
    """In the worker: tiled prediction and its uncertainty map, in memory."""
    predictor = build_predictor(model, settings, runs, callback=callback, stop=stop)
    result = predictor.predict(data, rgb=rgb)
    probabilities = np.asarray(result.probabilities)
    return result, margin_uncertainty(probabilities, class_axis=-3)


def predict_into_store(
    model: TrainedModel,
    settings: InferenceConfig,
    data: Any,
    runs: list[Path],
    store: Any,
    first: int,
    only_first: bool,
    *,
    callback: ProgressCallback,
    stop: StopToken,
) -> int:
    """In the worker: a stack into its store on disk, slice ``first`` before the others (see
    :mod:`schism_napari.inference.streaming`); tri-planar in slabs, as ``schism predict --zarr``."""
    from ..inference.planes import DEFAULT_SLAB_DEPTH
    from ..inference.streaming import StreamProgress, stream_prediction

    progress = StreamProgress(callback)
    predictor = build_predictor(model, settings, runs, callback=progress, stop=stop, slab_depth=DEFAULT_SLAB_DEPTH)
    return stream_prediction(predictor, data, store, first, only_first=only_first, progress=progress, stop=stop)
