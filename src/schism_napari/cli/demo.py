"""``schism demo``: sample -> short training -> prediction -> metrics, in about a minute on CPU.

The command line builds its parser from this module: torch and the core load when the demo runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..events import ProgressCallback, ignore_events

if TYPE_CHECKING:
    from ..evaluation.scoring import Evaluation
    from ..sample import SampleFiles
    from .common import Commands

DEMO_EPOCHS = 12


def add_parser(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="sample -> short training -> prediction -> metrics (about a minute on CPU)")
    demo.add_argument("--out", required=True, type=Path)
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's number of epochs")
    demo.set_defaults(handler=handle)


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    epochs: int | None

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> DemoOptions:
        return cls(out=namespace.out, epochs=namespace.epochs)


def handle(namespace: argparse.Namespace) -> int:
    return run(DemoOptions.from_namespace(namespace))


def run(options: DemoOptions) -> int:
    from .progress import TqdmProgress

    run_demo(options.out, epochs=options.epochs, callback=TqdmProgress())
    return 0


@dataclass
class DemoResult:
    root: Path
    sample: SampleFiles
    run_dir: Path
    volume_labels: Path
    volume_probabilities: Path
    image_2d_labels: Path
    test_volume: Evaluation


def run_demo(out: str | Path, *, epochs: int | None = None, callback: ProgressCallback = ignore_events) -> DemoResult:
    from ..config import SchismConfig
    from ..data import samples_from_arrays
    from ..data.io import read_image
    from ..evaluation.scoring import evaluate
    from ..events import Message
    from ..inference import Slices
    from ..inference.files import predict_to_files
    from ..runs import prepare_run_dir
    from ..sample import write_sample
    from ..workflows import DatasetFolder, PredictRequest, TrainRequest, build_predictors, train

    root = prepare_run_dir(Path(out))
    sample = write_sample(root / "sample")
    config = SchismConfig.from_ini(sample.config)
    config.training.epochs = epochs or DEMO_EPOCHS
    config.data.num_samples = 20
    config.data.crops_per_image = 3
    config.validate()
    run_dir = root / "run"
    data = DatasetFolder(sample.datasets, config, callback=callback, planes=False)
    # the demo's settings as they are: no plan, no held-out choice
    train(TrainRequest(config, data, run_dir, planned=False, held_out=False), callback=callback)

    request = PredictRequest(runs=[run_dir], metric="loss", set_threads=False)
    predictors = build_predictors(request, callback=callback)
    trained, predictor = predictors.first, predictors.each[0]  # one run: its own predictor
    predictions = root / "predictions"
    volume_labels, volume_probabilities = predict_to_files(
        predictor,
        Slices(read_image(sample.volume)[..., 0]),
        predictions / "test_volume_labels.tif",
        predictions / "test_volume_probabilities.tif",
        None,
    )
    (image_2d_labels,) = predict_to_files(
        predictor, Slices(read_image(sample.image_2d)[0, ..., 0]), predictions / "test_image_2d_labels.tif", None, None
    )

    # Score the test stack against its ground truth, at full resolution with tiling.
    volume, truth = read_image(sample.volume)[..., 0], read_image(sample.volume_labels)[..., 0]
    test_data = samples_from_arrays(
        [volume],
        [truth],
        class_count=trained.class_count,
        names=["test_volume"],
        stats={"default": trained.normalization},
    )
    scores = evaluate(predictor, test_data, range(len(test_data.samples)), trained.class_names)
    callback(Message("test stack, tiled prediction against ground truth:\n" + scores.format()))
    callback(Message(f"demo outputs in {root}: run folder {run_dir.name}/, predictions/"))
    return DemoResult(root, sample, run_dir, volume_labels, volume_probabilities, image_2d_labels, scores)
