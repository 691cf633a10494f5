"""One path from a request to a result: training and prediction as the CLI, the napari dock and the demo run them.

Each front end turns its own inputs (arguments, layers and the form) into a typed request and
calls the workflow; the engines (:mod:`schism_napari.training`, :mod:`schism_napari.inference`)
stay unaware of front ends. Nothing here imports Qt, and torch only when a request runs.
"""

from .predict import AnyPredictor, InferenceOverrides, Predictors, PredictRequest, build_predictors, planar
from .train import (
    DatasetFolder,
    DataSource,
    PreparedTraining,
    TrainOutcome,
    TrainRequest,
    dataset_options,
    prepare_training,
    run_training,
    train,
    trained_model,
)

__all__ = [
    "AnyPredictor",
    "DataSource",
    "DatasetFolder",
    "InferenceOverrides",
    "PredictRequest",
    "Predictors",
    "PreparedTraining",
    "TrainOutcome",
    "TrainRequest",
    "build_predictors",
    "dataset_options",
    "planar",
    "prepare_training",
    "run_training",
    "train",
    "trained_model",
]
