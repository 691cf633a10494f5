"""``schism``: train, predict, evaluate and more without a GUI, on the same core as the napari plugin.

User errors (bad INI, unreadable image, existing output) end with one line on stderr and exit
code 2, never a traceback. Ctrl-C during training stops after the current batch and keeps the
best weights; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__
from .errors import SchismError

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments) or 0)
    except SchismError as error:
        print(f"schism: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("schism: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schism", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"schism-napari {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model on a dataset folder (N processes: torchrun --nproc_per_node N -m schism_napari.cli train)",
    )
    train.add_argument(
        "--data", required=True, type=Path, help="SCHISM datasets/ folder, one dataset, BiaPy folder or an image"
    )
    train.add_argument("--mask", type=Path, help="the mask when --data is a single image")
    train.add_argument("--config", type=Path, help="INI file (SCHISM format); not needed with --resume")
    train.add_argument("--out", type=Path, help="new run folder for weights, curves and logs")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run in its folder")
    train.add_argument("--epochs", type=int, help="override [Training] epochs (e.g. to extend a resumed run)")
    train.add_argument("--device", help="override [Training] device (auto, cpu, cuda, mps)")
    train.set_defaults(handler=command_train)

    predict = commands.add_parser("predict", help="tiled prediction of images or stacks")
    predict.add_argument("--weights", required=True, type=Path, metavar="RUN_DIR", help="training run folder")
    predict.add_argument(
        "--input", required=True, type=Path, help="image/stack file (TIFF, PNG, .zarr) or folder of them"
    )
    predict.add_argument("--out", required=True, type=Path, help="output folder (existing files are never replaced)")
    predict.add_argument("--metric", default="loss", help="which best checkpoint: loss (default) or a metric name")
    predict.add_argument("--probabilities", action="store_true", help="also write class probabilities (float32)")
    predict.add_argument(
        "--zarr", action="store_true", help="write probabilities as a zarr store (implies --probabilities)"
    )
    predict.add_argument("--gray-levels", action="store_true", help="write labels as SCHISM's spread gray levels")
    predict.add_argument(
        "--layout",
        choices=("flat", "schism"),
        default="flat",
        help="flat: <out>/<image>_labels.tif; schism: <out>/<dataset>/preds_<Metric>/<image>_<Metric>.tif (gray)",
    )
    _add_inference_options(predict)
    predict.set_defaults(handler=command_predict)

    evaluate = commands.add_parser("evaluate", help="metrics per class on a split of a dataset")
    evaluate.add_argument("--weights", required=True, type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--mask", type=Path, help="the mask when --data is a single image")
    evaluate.add_argument("--metric", default="loss", help="which best checkpoint to evaluate")
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train", "all"))
    evaluate.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    _add_inference_options(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    export = commands.add_parser("export", help="export a trained model: bioimage.io package, ONNX or TorchScript")
    export.add_argument("--weights", required=True, type=Path, metavar="RUN_DIR", help="run folder (or SCHISM's)")
    export.add_argument("--format", required=True, choices=("bioimageio", "onnx", "torchscript"))
    export.add_argument("--out", required=True, type=Path, help="new file: .zip (bioimageio), .onnx, .pt")
    export.add_argument("--metric", default="loss", help="which best checkpoint: loss (default) or a metric name")
    export.add_argument("--no-test", action="store_true", help="bioimageio: skip bioimageio.core's model test")
    export.set_defaults(handler=command_export)

    stats = commands.add_parser("stats", help="write data_stats.json (normalisation) for a dataset folder")
    stats.add_argument("--data", required=True, type=Path)
    stats.add_argument("--out", type=Path, help="where to write (default: data_stats.json in the dataset folder)")
    stats.set_defaults(handler=command_stats)

    sample = commands.add_parser("sample", help="write the synthetic rock CT sample dataset")
    sample.add_argument("--out", required=True, type=Path)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--schism", action="store_true", help="also readable by the original SCHISM: 8-bit images, gray-level masks"
    )
    sample.set_defaults(handler=command_sample)

    demo = commands.add_parser("demo", help="sample -> short training -> prediction -> metrics (about a minute on CPU)")
    demo.add_argument("--out", required=True, type=Path)
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's number of epochs")
    demo.set_defaults(handler=command_demo)

    launch = commands.add_parser(
        "launch", help="open napari with the plugin and the sample (headless: run the demo and take screenshots)"
    )
    launch.add_argument("--out", type=Path, default=Path("schism-demo"), help="folder for the sample and runs")
    launch.add_argument("--headless", action="store_true", help="force the headless demo even with a display")
    launch.set_defaults(handler=command_launch)
    return parser


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile-size", type=int, help="tile side in image pixels (default: [Inference] or crop_size)")
    parser.add_argument("--overlap", type=float, help="tile overlap fraction (default: [Inference] overlap)")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    parser.add_argument("--device", default="auto")


# ---- progress ----------------------------------------------------------------------------------


class TqdmProgress:
    """Turns core events into tqdm bars and one summary line per epoch."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        from . import events

        if isinstance(event, events.TrainingStarted):
            self._write(
                f"training on {event.device}: {event.train_samples} training / {event.val_samples} validation images, "
                f"{event.batches_per_epoch} batches per epoch -> {event.run_dir}"
            )
        elif isinstance(event, events.BatchEnded):
            if self.bar is None:
                self.bar = self._tqdm(
                    total=event.batches, desc=f"epoch {event.epoch}", unit="batch", leave=False, disable=None
                )
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.loss:.4f}")
        elif isinstance(event, events.EpochEnded):
            self._close()
            metrics = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            saved = f"  saved best: {', '.join(event.improved)}" if event.improved else ""
            self._write(
                f"epoch {event.epoch}/{event.epochs}  train_loss={event.train_loss:.4f}  "
                f"val_loss={event.val_loss:.4f}  {metrics}  ({event.seconds:.1f}s){saved}"
            )
        elif isinstance(event, events.TrainingFinished):
            self._close()
            self._write(f"{event.reason} after {event.epochs_completed} epochs; run folder: {event.run_dir}")
        elif isinstance(event, events.PredictionProgress):
            if self.bar is None:
                self.bar = self._tqdm(total=event.total, desc="predicting", unit="tile", leave=False, disable=None)
            self.bar.update(event.done - self.bar.n)
            if event.done >= event.total:
                self._close()
        elif isinstance(event, events.Message):
            self._write(("warning: " if event.level == "warning" else "") + event.text)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)


@contextlib.contextmanager
def stop_on_interrupt(stop: Any) -> Iterator[None]:
    """First Ctrl-C asks the loop to stop after this batch; the second one aborts."""

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()
        print("\nschism: stopping after this batch (Ctrl-C again to abort)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- commands ----------------------------------------------------------------------------------


def command_train(arguments: argparse.Namespace) -> int:
    from .config import SchismConfig
    from .data import load_dataset
    from .events import StopToken
    from .runs import prepare_run_dir, read_run_config
    from .training.trainer import Trainer

    if arguments.resume is not None:
        if arguments.out is not None and arguments.out.resolve() != arguments.resume.resolve():
            raise SchismError("--resume continues in its own run folder; leave out --out")
        config = read_run_config(arguments.resume)
        run_dir = arguments.resume
    else:
        if arguments.config is None or arguments.out is None:
            raise SchismError("train needs --config FILE.ini and --out RUN_DIR (or --resume RUN_DIR)")
        config = SchismConfig.from_ini(arguments.config)
        run_dir = None
    if arguments.epochs is not None:
        config.training.epochs = arguments.epochs
    if arguments.device is not None:
        config.training.device = arguments.device
    config.validate()
    progress = TqdmProgress()
    for warning in config.warnings:
        progress._write(f"warning: {warning}")
    # under torchrun every process runs this; only rank 0 creates the run folder and writes files
    main_process = int(os.environ.get("RANK", "0")) == 0
    if run_dir is None:  # refuse a used --out before anything is read or written
        run_dir = prepare_run_dir(arguments.out) if main_process else arguments.out
    data = load_dataset(
        arguments.data,
        class_count=config.model.class_count,
        ignore_index=config.data.ignore_index,
        in_channels=config.model.in_channels,
        mask=arguments.mask,
        callback=progress,
        write_stats=main_process,
        ignore_background=config.loss.ignore_background,
    )
    stop = StopToken()
    with stop_on_interrupt(stop):
        Trainer(config, data, run_dir, resume=arguments.resume is not None, callback=progress, stop=stop).run()
    return 0


def _predictor(arguments: argparse.Namespace, callback: Any = None, dataset: str | None = None) -> tuple[Any, Any]:
    from .inference import Predictor
    from .runs import load_trained_model

    trained = load_trained_model(arguments.weights, arguments.metric, dataset=dataset)
    settings = trained.config.inference
    if arguments.tile_size is not None:
        settings.tile_size = arguments.tile_size
    if arguments.overlap is not None:
        settings.overlap = arguments.overlap
    if arguments.batch_size is not None:
        settings.batch_size = arguments.batch_size
    if arguments.tta:
        settings.tta = True
    settings.validate(source="command line")
    options = {} if callback is None else {"callback": callback}
    return trained, Predictor.from_trained(trained, settings=settings, device=arguments.device, **options)


def command_predict(arguments: argparse.Namespace) -> int:
    from .data.discovery import list_image_files
    from .data.io import gray_levels
    from .inference import Slices
    from .inference.files import check_channels, open_lazy, predict_to_files

    arguments.probabilities = arguments.probabilities or arguments.zarr
    inputs = _prediction_inputs(arguments.input, list_image_files)
    out = arguments.out
    if out.exists() and not out.is_dir():
        raise SchismError(f"--out {out} is a file; give a folder")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise SchismError("--out must not be one of the inputs")
    plans = []
    for path in inputs:
        labels_path, probabilities_path = _output_paths(arguments, path)
        for target in (labels_path, probabilities_path if arguments.probabilities else None):
            if target is not None and target.exists():
                raise SchismError(f"{target} already exists; not overwriting it (choose another --out)")
            if target is not None and any(target in planned for planned in plans):
                raise SchismError(f"two inputs would both write {target}; predict them into separate --out folders")
        plans.append((path, labels_path, probabilities_path))
    progress = TqdmProgress()
    loaded: dict[str | None, tuple[Any, Any]] = {}
    for path, labels_path, probabilities_path in plans:
        dataset = schism_dataset_name(path)  # a SCHISM run normalises with that dataset's stats
        if dataset not in loaded:
            loaded[dataset] = _predictor(arguments, progress, dataset)
        trained, predictor = loaded[dataset]
        gray = arguments.gray_levels or arguments.layout == "schism"
        levels = gray_levels(trained.class_count) if gray else None
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        array, rgb = open_lazy(path)
        slices = Slices(array, rgb=rgb)
        check_channels(slices, trained.in_channels, path)
        written = predict_to_files(
            predictor,
            slices,
            labels_path,
            probabilities_path if arguments.probabilities else None,
            levels,
        )
        megapixels = slices.count * slices.height * slices.width / 1e6
        elapsed = time.perf_counter() - started
        progress._write(
            f"{path.name}: {megapixels:.1f} MP in {elapsed:.1f}s ({megapixels / elapsed:.2f} MP/s) -> "
            + ", ".join(str(p) for p in written)
        )
    return 0


def schism_dataset_name(path: Path) -> str | None:
    """``<data>/<dataset>/images/<image>``: the dataset SCHISM's inference would name."""
    return path.parent.parent.name if path.parent.name == "images" else None


def _output_paths(arguments: argparse.Namespace, path: Path) -> tuple[Path, Path]:
    """Where one input's labels and probabilities go (inside --out, never next to the input)."""
    probabilities_suffix = "_probabilities.zarr" if arguments.zarr else "_probabilities.tif"
    if arguments.layout == "schism":  # SCHISM writes <data>/<dataset>/preds_<Metric>/<image>_<Metric>.tif
        dataset = schism_dataset_name(path)
        folder = arguments.out / dataset if dataset else arguments.out
        stem = f"{path.stem}_{arguments.metric}"
        folder = folder / f"preds_{arguments.metric}"
        return folder / f"{stem}.tif", folder / f"{stem}{probabilities_suffix}"
    return arguments.out / f"{path.stem}_labels.tif", arguments.out / f"{path.stem}{probabilities_suffix}"


def _prediction_inputs(path: Path, list_image_files: Any) -> list[Path]:
    if not path.exists():
        raise SchismError(f"--input {path}: no such file or folder")
    if path.is_dir() and path.suffix != ".zarr":
        folder = path / "images" if (path / "images").is_dir() else path
        files = list_image_files(folder) + sorted(folder.glob("*.zarr"))
        if not files:  # SCHISM's inference folder: <data>/<dataset>/images for every dataset
            for dataset in sorted(p for p in path.iterdir() if (p / "images").is_dir()):
                files.extend(list_image_files(dataset / "images"))
        if not files:
            raise SchismError(f"--input {path}: no images (.tif, .png, .zarr ...) in this folder")
        return files
    return [path]


def command_evaluate(arguments: argparse.Namespace) -> int:
    from .atomic import atomic_write_text
    from .data import load_dataset
    from .data.splits import read_split
    from .evaluation import evaluate

    trained, predictor = _predictor(arguments)
    config = trained.config
    data = load_dataset(
        arguments.data,
        class_count=config.model.class_count,
        ignore_index=config.data.ignore_index,
        in_channels=trained.in_channels,
        mask=arguments.mask,
        write_stats=False,
        ignore_background=config.loss.ignore_background,
    )
    from .schism_runs import locate_run

    positions = read_split(locate_run(arguments.weights), data).part(arguments.split)
    if not positions:
        raise SchismError(
            f"the {arguments.split} split of {arguments.weights} is empty "
            "(num_samples covers every image); try --split val or --split all"
        )
    result = evaluate(predictor, data, positions, trained.class_names)  # the background is unlabeled already
    print(f"{arguments.split} split: {len(positions)} images, weights {trained.source}")
    print(result.format())
    if arguments.csv is not None:
        rows = result.table()
        header = ",".join(rows[0])
        lines = [header] + [",".join(str(v) for v in row.values()) for row in rows]
        atomic_write_text(arguments.csv, "\n".join(lines) + "\n")
        print(f"wrote {arguments.csv}")
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    from .export import check_bioimageio, export_model

    path = export_model(arguments.weights, arguments.format, arguments.out, metric=arguments.metric)
    print(f"wrote {path}")
    if arguments.format == "bioimageio" and not arguments.no_test:
        summary = check_bioimageio(path)
        print(f"bioimageio.core model test: {summary.status}")
        if summary.status != "passed":
            print(summary.format() if hasattr(summary, "format") else summary, file=sys.stderr)
            return 1
    elif arguments.format != "bioimageio":
        print(f"  output matches torch within 1e-4; inputs and classes described in {path.name}.json")
    return 0


def command_stats(arguments: argparse.Namespace) -> int:
    from .data.dataset import STATS_FILE, folder_stats
    from .data.discovery import discover_datasets
    from .data.normalization import write_stats_file

    stats_folder, folders = discover_datasets(arguments.data, require_masks=False)
    target = arguments.out or stats_folder / STATS_FILE
    if target.exists():
        raise SchismError(f"{target} already exists; not overwriting it (delete it or give --out)")
    stats = folder_stats(folders)
    write_stats_file(target, stats)
    for name, value in stats.items():
        mean, std = value.to_json()
        print(f"{name}: mean {mean}, std {std}")
    print(f"wrote {target}")
    return 0


def command_sample(arguments: argparse.Namespace) -> int:
    from .sample import write_sample

    files = write_sample(arguments.out, seed=arguments.seed, schism=arguments.schism)
    print(f"wrote the synthetic rock CT sample to {files.root}:")
    print(f"  dataset (SCHISM layout): {files.datasets}")
    print(f"  configuration:           {files.config}")
    print(f"  test stack:              {files.volume} (+ {files.volume_labels.name})")
    print(f"  non-square 2D image:     {files.image_2d} (+ {files.image_2d_labels.name})")
    if files.schism_test is not None:
        print(f"  SCHISM inference folder: {files.schism_test} (8-bit images, gray-level masks)")
    return 0


def command_demo(arguments: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(arguments.out, epochs=arguments.epochs, callback=TqdmProgress())
    return 0


def command_launch(arguments: argparse.Namespace) -> int:
    from .launch import launch

    return launch(arguments.out, headless=arguments.headless)


if __name__ == "__main__":
    sys.exit(main())
