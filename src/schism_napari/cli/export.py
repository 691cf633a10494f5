"""``schism export``: a trained model as a bioimage.io package, ONNX or TorchScript."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Commands


def add_parser(commands: Commands) -> None:
    export = commands.add_parser("export", help="export a trained model: bioimage.io package, ONNX or TorchScript")
    export.add_argument("--weights", required=True, type=Path, metavar="RUN_DIR", help="run folder (or SCHISM's)")
    export.add_argument("--format", required=True, choices=("bioimageio", "onnx", "torchscript"))
    export.add_argument("--out", required=True, type=Path, help="new file: .zip (bioimageio), .onnx, .pt")
    export.add_argument("--metric", default="loss", help="which best checkpoint: loss (default) or a metric name")
    export.add_argument("--no-test", action="store_true", help="bioimageio: skip bioimageio.core's model test")
    export.set_defaults(handler=handle)


@dataclass(frozen=True)
class ExportOptions:
    weights: Path
    format: str
    out: Path
    metric: str
    no_test: bool

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> ExportOptions:
        return cls(
            weights=namespace.weights,
            format=namespace.format,
            out=namespace.out,
            metric=namespace.metric,
            no_test=namespace.no_test,
        )


def handle(namespace: argparse.Namespace) -> int:
    return run(ExportOptions.from_namespace(namespace))


def run(options: ExportOptions) -> int:
    from ..runs.export import check_bioimageio, export_model

    path = export_model(options.weights, options.format, options.out, metric=options.metric)
    print(f"wrote {path}")
    _warn_stage_one(options.weights, path)
    _warn_network_only(options.weights, options.metric)
    if options.format == "bioimageio" and not options.no_test:
        summary = check_bioimageio(path)
        print(f"bioimageio.core model test: {summary.status}")
        if summary.status != "passed":
            print(summary.format() if hasattr(summary, "format") else summary, file=sys.stderr)
            return 1
    elif options.format != "bioimageio":
        print(f"  output matches torch within 1e-4; inputs and classes described in {path.name}.json")
    return 0


def _warn_stage_one(run_dir: Path, path: Path) -> None:
    """A two-stage model's export is its second stage: say where the first one is."""
    from ..runs import read_run_info
    from ..runs.schism import locate_run

    described = read_run_info(locate_run(Path(run_dir))).get("stage_one")
    if described:
        print(
            f"note: {path.name} is stage 2 of a two-stage model; its last {described.get('classes')} input channels "
            f"are the probabilities of stage 1, the random forest in {run_dir}/{described.get('file')}, which "
            "ONNX and TorchScript do not carry",
            file=sys.stderr,
        )


def _warn_network_only(run_dir: Path, metric: str) -> None:
    """An export holds the network: say so when the run predicts with the forest too."""
    from ..forest.selection import LABELS, read_selection

    selection = read_selection(run_dir) if Path(run_dir).is_dir() else None
    if selection is not None and selection.forest_weight > 0 and selection.checkpoint == metric:
        print(
            f"warning: {run_dir} predicts with the {LABELS[selection.choice]} (selection.json); "
            "the export holds the network alone",
            file=sys.stderr,
        )
