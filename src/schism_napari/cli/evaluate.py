"""``schism evaluate``: metrics per class of a run (or an ensemble's members) on a split of a dataset."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SchismError
from .common import InferenceOptions, add_inference_options, predict_request

if TYPE_CHECKING:
    from ..data.dataset import SegmentationData
    from ..evaluation.scoring import Evaluation
    from ..inference import Predictor
    from ..runs import TrainedModel
    from .common import Commands


def add_parser(commands: Commands) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics per class on a split of a dataset")
    evaluate.add_argument(
        "--weights", required=True, type=Path, nargs="+", metavar="RUN_DIR", help="run folder(s); several: ensemble"
    )
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--mask", type=Path, help="the mask when --data is a single image")
    evaluate.add_argument("--metric", default="loss", help="which best checkpoint to evaluate")
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train", "all"))
    evaluate.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    evaluate.add_argument(
        "--baseline",
        action="store_true",
        help="also train LDA (pixel values) and a random forest (multiscale features) on the run's training "
        "images and print their IoU per class beside the network's",
    )
    add_inference_options(evaluate)
    evaluate.set_defaults(handler=handle)


@dataclass(frozen=True)
class EvaluateOptions:
    weights: list[Path]
    data: Path
    mask: Path | None
    metric: str
    split: str
    csv: Path | None
    baseline: bool
    inference: InferenceOptions

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> EvaluateOptions:
        return cls(
            weights=list(namespace.weights),
            data=namespace.data,
            mask=namespace.mask,
            metric=namespace.metric,
            split=namespace.split,
            csv=namespace.csv,
            baseline=namespace.baseline,
            inference=InferenceOptions.from_namespace(namespace),
        )


def handle(namespace: argparse.Namespace) -> int:
    return run(EvaluateOptions.from_namespace(namespace))


def run(options: EvaluateOptions) -> int:
    from ..data import load_dataset
    from ..data.splits import read_split
    from ..evaluation.scoring import evaluate
    from ..runs.schism import locate_run
    from ..workflows import build_predictors, dataset_options

    built = build_predictors(predict_request(options.weights, options.metric, options.inference))
    members, predictors = built.members, built.each
    trained = built.first
    dataset = dataset_options(trained.config, in_channels=trained.in_channels)
    data = load_dataset(options.data, mask=options.mask, write_stats=False, **dataset)
    runs = [locate_run(run) for run in options.weights]  # a SCHISM run: the folder it was given holds it
    positions = read_split(runs[0], data).part(options.split)
    if not positions:
        raise SchismError(
            f"the {options.split} split of {runs[0]} is empty "
            "(num_samples covers every image); try --split val or --split all"
        )
    if len(runs) > 1:
        return _evaluate_ensemble(options, runs, members, predictors, data, positions)
    result = evaluate(predictors[0], data, positions, trained.class_names)  # the background is unlabeled already
    print(f"{options.split} split: {len(positions)} images, weights {trained.source}")
    print(result.format())
    if options.baseline:
        _print_baselines(result, runs[0], data, positions, trained)
    if options.csv is not None:
        _write_csv(options.csv, result)
    return 0


def _print_baselines(
    result: Evaluation, run: Path, data: SegmentationData, positions: list[int], trained: TrainedModel
) -> None:
    """``--baseline``: classical pixel classifiers trained on the run's training images, beside the network."""
    from ..data.splits import read_split
    from ..forest.classifier import compare_with_baselines

    train_positions = read_split(run, data).train
    print(f"\nIoU per class beside classical pixel classifiers trained on the {len(train_positions)} training images:")
    print(compare_with_baselines(result, data, train_positions, positions, trained.class_names))


def _write_csv(path: Path, result: Evaluation) -> None:
    from ..plumbing.atomic import atomic_write_text

    rows = result.table()
    header = ",".join(rows[0])
    lines = [header] + [",".join(str(v) for v in row.values()) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


def _evaluate_ensemble(
    options: EvaluateOptions,
    runs: list[Path],
    members: list[TrainedModel],
    predictors: list[Predictor],
    data: SegmentationData,
    positions: list[int],
) -> int:
    """Each member, then the ensemble, on the same images (the first run's split); one CSV for all."""
    from ..data.splits import read_split
    from ..inference.ensemble import compare_members
    from ..plumbing.atomic import atomic_write_text

    for run in runs[1:]:
        other = read_split(run, data)
        if set(other.train + other.val) & set(positions):
            print(f"warning: {run} trained or validated on some of these {options.split} images (other split)")
    table = compare_members(
        predictors,
        [str(run) for run in runs],
        data,
        positions,
        members[0].class_names,  # SCHISM's ignore_background made gray 0 unlabeled when the masks were read
    )
    print(f"{options.split} split of {runs[0]}: {len(positions)} images")
    print(table.format())
    if options.csv is not None:
        atomic_write_text(options.csv, table.csv())
        print(f"wrote {options.csv}")
    return 0
