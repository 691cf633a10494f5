"""``schism``: train, predict, evaluate and more without a GUI, on the same core as the napari plugin.

User errors (bad INI, unreadable image, existing output) end with one line on stderr and exit
code 2, never a traceback. Ctrl-C during training stops after the current batch and keeps the
best weights; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import SchismError
from .progress import TqdmProgress

if TYPE_CHECKING:
    from ..data.dataset import SegmentationData
    from ..events import StopToken
    from ..inference import Predictor
    from ..runs import TrainedModel
    from ..training.planning import Plan
    from ..workflows import InferenceOverrides, Predictors, PredictRequest

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments) or 0)
    except SchismError as error:
        print(f"schism: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # a file system refusal the checks did not foresee: still one line
        from ..plumbing.atomic import DISK_FULL_ERRNOS

        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or one_line(str(error))
        if error.errno in DISK_FULL_ERRNOS:  # writes go through atomic.py, which names the folder: a fallback
            reason = f"disk full ({reason}) while writing an output; free some space and run it again"
        print(f"schism: error: {where}{reason}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as error:  # a library's wrapper around a full disk (torch's serializer)
        from ..plumbing.atomic import disk_full_errno

        number = disk_full_errno(error)
        if number is None:
            raise
        reason = f"disk full ({os.strerror(number)}) while writing an output"
        print(f"schism: error: {reason}; free some space and run it again", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print("schism: error: out of memory; use a smaller --tile-size or --batch-size", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("schism: interrupted", file=sys.stderr)
        return 130


def one_line(text: str) -> str:
    """Messages quoting other libraries' errors can span lines; the CLI promises one."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


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
    train.add_argument(
        "--config",
        type=Path,
        help="INI file (SCHISM format); keys it leaves out are planned from the data. Optional; not with --resume",
    )
    train.add_argument("--out", type=Path, help="new run folder for weights, curves and logs")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run in its folder")
    train.add_argument("--epochs", type=int, help="override [Training] epochs (e.g. to extend a resumed run)")
    train.add_argument("--device", help="override [Training] device (auto, cpu, cuda, mps)")
    train.add_argument(
        "--per-class", action="store_true", help="one binary model per class + a learned stacker, in one run folder"
    )
    train.add_argument("--threads", type=int, help="override [Training] threads (CPU threads; 0: auto)")
    train.add_argument(
        "--minutes",
        type=float,
        help="[Training] time_budget: train this long (step time measured, steps planned to fit)",
    )
    train.set_defaults(handler=command_train)

    predict = commands.add_parser("predict", help="tiled prediction of images or stacks")
    predict.add_argument(
        "--weights",
        required=True,
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="training run folder; several: an ensemble averaging their probabilities",
    )
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
    predict.add_argument("--max-frames", type=int, help="videos: predict at most this many frames")
    predict.add_argument("--every", type=int, default=1, help="videos: predict every K-th frame (default 1)")
    predict.add_argument("--overlay", type=Path, help="videos: also write the frames with class colours blended on")
    predict.add_argument(
        "--layout",
        choices=("flat", "schism"),
        default="flat",
        help="flat: <out>/<image>_labels.tif; schism: <out>/<dataset>/preds_<Metric>/<image>_<Metric>.tif (gray)",
    )
    _add_inference_options(predict)
    predict.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="predict on this dask cluster (tcp://host:8786) into OME-Zarr outputs, chunks of slices per worker",
    )
    predict.add_argument("--workers", type=int, help="predict on a local dask cluster of N worker processes")
    predict.add_argument("--chunk-slices", type=int, help="slices per dask task (default: about 4 tasks per worker)")
    predict.set_defaults(handler=command_predict)

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
    parser.add_argument("--halo", type=int, help="pixels shared by neighbouring tiles (default: from the network)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores other processes leave free)")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    parser.add_argument("--planes", choices=("xy", "xyz"), help="stacks: xyz averages XY, XZ and YZ predictions")
    parser.add_argument("--voxel-ratio", type=float, help="Z voxel size / XY pixel size (default: from the file)")
    parser.add_argument(
        "--slab-depth", type=int, help="xyz: slices per slab held in memory (default: all; 64 with --zarr)"
    )
    parser.add_argument("--device", default="auto")


# ---- progress ----------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_interrupt(stop: StopToken) -> Iterator[None]:
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
    from ..config import SchismConfig
    from ..events import StopToken
    from ..plumbing.output_folders import removed_on_failure
    from ..runs import (
        BEST_LOSS,
        LAST_CHECKPOINT,
        best_weights_file,
        claimed_new_run_dir,
        claimed_run_dir,
        read_run_config,
        remove_partial_files,
    )
    from ..workflows import DatasetFolder, TrainRequest, prepare_training, run_training

    resume = arguments.resume is not None
    if resume:
        if arguments.out is not None and arguments.out.resolve() != arguments.resume.resolve():
            raise SchismError("--resume continues in its own run folder; leave out --out")
        config = read_run_config(arguments.resume)
        run_dir = arguments.resume
    else:
        if arguments.out is None:
            raise SchismError("train needs --out RUN_DIR (or --resume RUN_DIR)")
        config = SchismConfig.from_ini(arguments.config) if arguments.config is not None else SchismConfig()
        run_dir = None
    overrides = {}  # [Training] key -> the option that set it, for messages
    for option, key in (("epochs", "epochs"), ("device", "device"), ("threads", "threads"), ("minutes", "time_budget")):
        value = getattr(arguments, option)
        if value is not None:
            config.set_given("Training", key, value)
            overrides[key] = f"--{option}"
    classes_from_masks = not resume and not config.is_given("Model", "num_classes")
    if classes_from_masks:
        config.model.num_classes = _classes_from_masks(arguments.data, arguments.mask)
    validate_with_overrides(config, overrides)
    from ..plumbing.resources import apply_threads

    apply_threads(config.training.threads)
    progress = TqdmProgress()
    for warning in config.warnings:
        progress.write(f"warning: {warning}")
    # under torchrun every process runs this; only rank 0 creates the run folder and writes files
    main_process = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as held:
        created = False
        if run_dir is None:  # refuse a used --out (or one another process is starting in) before any reading
            created = not arguments.out.exists()
            hint = "choose a new --out folder (or --resume RUN_DIR to continue a run)"
            run_dir = (
                held.enter_context(claimed_new_run_dir(arguments.out, hint=hint)) if main_process else arguments.out
            )
        elif main_process:
            held.enter_context(claimed_run_dir(run_dir))  # not while another process trains in it
            removed = remove_partial_files(run_dir)  # held: no live writer's temporary files
            if removed:
                progress.write(f"removed {len(removed)} partial file(s) an interrupted run left in {run_dir}")
        # what a failed first epoch leaves worth keeping: a checkpoint to resume, the best weights to predict
        keep = (LAST_CHECKPOINT, best_weights_file(BEST_LOSS))
        held.enter_context(removed_on_failure(run_dir, created and main_process, keep_if=keep))
        request = TrainRequest(
            config,
            DatasetFolder(arguments.data, config, mask=arguments.mask, callback=progress),
            run_dir,
            resume=resume,
            classes_from_masks=classes_from_masks,
            # processes split by a shared random seed: no held-out choice
            held_out=int(os.environ.get("WORLD_SIZE", "1")) <= 1,
            per_class=arguments.per_class,
        )
        prepared = prepare_training(request)
        if prepared.plan is not None:
            _print_plan(prepared.plan)
        if arguments.per_class:
            _check_per_class(arguments)
        stop = StopToken()
        with stop_on_interrupt(stop):
            outcome = run_training(prepared, callback=progress, stop=stop)
        if outcome.per_class is not None:
            result = outcome.per_class
            progress.write(
                f"per-class run ({len(result.member_runs)} members + stacker) in {result.seconds:.0f}s: {run_dir}"
            )
        elif outcome.selection is not None:
            progress.write(f"chose {outcome.selection.describe()}; predictions from {outcome.run_dir} use it")
    return 0


def _print_plan(plan: Plan) -> None:
    """Say why each key the INI left out was planned from the data (see :mod:`schism_napari.training.planning`)."""
    for key, reason in plan.reasons.items():
        if "." in key:
            section, name = key.split(".", 1)
            # a report, not progress: stdout, so stderr keeps one line when something then fails
            print(f"plan: [{section}] {name} = {getattr(plan.config.section(section), name)}  ({reason})")


def _check_per_class(arguments: argparse.Namespace) -> None:
    """``train --per-class``: one-vs-rest members and a stacker, written as one new run folder."""
    if arguments.resume is not None:
        raise SchismError("--per-class cannot --resume; train a new run folder")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SchismError("--per-class runs in one process; start it without torchrun")


def _classes_from_masks(data: Path, mask: Path | None) -> int:
    from ..training.planning import infer_class_count

    try:
        count = infer_class_count(data, mask)
    except (OSError, ValueError) as error:
        raise SchismError(f"--data {data}: cannot read the masks to count the classes ({error})") from None
    if count is None:
        raise SchismError(f"--data {data}: the mask values fit no class encoding; set [Model] num_classes in an INI")
    return count


def validate_with_overrides(config: Any, overrides: dict[str, str]) -> None:
    """Validate the whole configuration; a bad value given as a [Training] option on the command
    line is blamed on that option, not on the INI file it overrides."""
    from ..errors import ConfigError

    try:
        config.validate()
    except ConfigError as error:
        if error.section == "Training" and error.key in overrides:
            raise SchismError(
                f"{overrides[error.key]} {error.value} (command line, overrides [Training] {error.key}): "
                f"{error.allowed}"
            ) from None
        raise


def _inference_overrides(arguments: argparse.Namespace) -> InferenceOverrides:
    """The inference options given on the command line, over each run's [Inference]."""
    from ..workflows import InferenceOverrides

    return InferenceOverrides(
        tile_size=arguments.tile_size,
        overlap=arguments.overlap,
        halo=arguments.halo,
        batch_size=arguments.batch_size,
        tta=arguments.tta,
        planes=getattr(arguments, "planes", None),
        voxel_ratio=getattr(arguments, "voxel_ratio", None),
    )


def _predict_request(arguments: argparse.Namespace, dataset: str | None = None) -> PredictRequest:
    """The run folder(s) and the inference options of ``predict`` or ``evaluate``. ``dataset`` picks
    a SCHISM run's normalisation (its data_stats entry for that dataset)."""
    from ..workflows import PredictRequest

    return PredictRequest(
        runs=_weights(arguments),
        metric=arguments.metric,
        dataset=dataset,
        overrides=_inference_overrides(arguments),
        device=arguments.device,
        threads=arguments.threads,
    )


def _weights(arguments: argparse.Namespace) -> list[Path]:
    return arguments.weights if isinstance(arguments.weights, list) else [arguments.weights]


def command_predict(arguments: argparse.Namespace) -> int:
    from ..data.discovery import list_image_files
    from ..data.io import gray_levels
    from ..inference.files import predict_to_files
    from ..inference.planes import DEFAULT_SLAB_DEPTH
    from ..plumbing.claims import claimed_outputs
    from ..plumbing.input_checks import CheckedSlices
    from ..plumbing.output_folders import output_folder, removed_on_failure
    from ..workflows import build_predictors, planar

    arguments.probabilities = arguments.probabilities or arguments.zarr
    if arguments.dask_scheduler or arguments.workers:
        return command_predict_distributed(arguments)
    inputs = _prediction_inputs(arguments.input, list_image_files)
    out = arguments.out
    if out.exists() and not out.is_dir():
        raise SchismError(f"--out {out} is a file; give a folder")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise SchismError("--out must not be one of the inputs")
    plans = _output_plans(arguments, inputs)
    for _, labels_path, probabilities_path in plans:
        for target in (labels_path, probabilities_path if arguments.probabilities else None):
            if target is not None and target.exists():
                raise SchismError(f"{target} already exists; not overwriting it (choose another --out)")
    _check_video_options(arguments, inputs)
    progress = TqdmProgress()
    loaded: dict[str | None, Predictors] = {}

    def predictor_for(path: Path) -> Predictors:
        dataset = schism_dataset_name(path)  # a SCHISM run normalises with that dataset's stats
        if dataset not in loaded:
            loaded[dataset] = build_predictors(_predict_request(arguments, dataset), callback=progress)
        return loaded[dataset]

    targets = [
        t
        for _, labels, probabilities in plans
        for t in (labels, probabilities if arguments.probabilities else None)
        if t is not None
    ]
    created = output_folder(out)
    gray = arguments.gray_levels or arguments.layout == "schism"
    # outputs claimed at once: a second command writing the same files is refused before any work
    with removed_on_failure(out, created), claimed_outputs(targets):
        planned: list[int] = []
        opened = [_open_checked(arguments, path, predictor_for(path).first, out, planned) for path, *_ in plans]
        for (path, labels_path, probabilities_path), (slices, view, voxel_size) in zip(plans, opened, strict=True):
            predictors = predictor_for(path)
            trained = predictors.first
            levels = gray_levels(trained.class_count) if gray else None
            labels_path.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            # [Inference] planes = xyz: the mean of the XY, XZ and YZ passes, the voxel ratio given or the file's
            slab = arguments.slab_depth or (DEFAULT_SLAB_DEPTH if arguments.zarr else None)
            written = predict_to_files(
                planar(predictors.predictor, trained.config.inference, slab_depth=slab, source=path),
                slices,
                labels_path,
                probabilities_path if arguments.probabilities else None,
                levels,
                voxel_size,
            )
            if arguments.overlay is not None:
                written.append(_write_overlay(arguments.overlay, view, labels_path, trained))
            megapixels = slices.count * slices.height * slices.width / 1e6
            elapsed = time.perf_counter() - started
            warning = view.warning() if isinstance(view, CheckedSlices) else None
            if warning:
                progress.write(f"warning: {warning}")
            progress.write(
                f"{path.name}: {megapixels:.1f} MP in {elapsed:.1f}s ({megapixels / elapsed:.2f} MP/s) -> "
                + ", ".join(str(p) for p in written)
            )
    return 0


def schism_dataset_name(path: Path) -> str | None:
    """``<data>/<dataset>/images/<image>``: the dataset SCHISM's inference would name."""
    return path.parent.parent.name if path.parent.name == "images" else None


def _output_folder(arguments: argparse.Namespace, path: Path) -> Path:
    """Where one input's outputs go, always inside --out: SCHISM writes <dataset>/preds_<Metric>/."""
    if arguments.layout != "schism":
        return arguments.out
    dataset = schism_dataset_name(path)
    return (arguments.out / dataset if dataset else arguments.out) / f"preds_{arguments.metric}"


def _output_plans(arguments: argparse.Namespace, inputs: list[Path]) -> list[tuple[Path, Path, Path]]:
    """(input, labels file, probabilities file) per input; inputs sharing a stem in one output folder
    (a.tif, a.png) keep their suffix in the output names (a_tif_labels.tif, a_png_labels.tif)."""
    folders = [_output_folder(arguments, path) for path in inputs]
    keys = [(folder, path.stem) for folder, path in zip(folders, inputs, strict=True)]
    probabilities_suffix = "_probabilities.zarr" if arguments.zarr else "_probabilities.tif"
    plans = []
    for path, folder, key in zip(inputs, folders, keys, strict=True):
        stem = path.stem
        if keys.count(key) > 1:
            stem = f"{stem}_{path.suffix.lstrip('.').lower()}"
        if arguments.layout == "schism":
            labels_path = folder / f"{stem}_{arguments.metric}.tif"
            probabilities_path = folder / f"{stem}_{arguments.metric}{probabilities_suffix}"
        else:
            labels_path, probabilities_path = folder / f"{stem}_labels.tif", folder / f"{stem}{probabilities_suffix}"
        plans.append((path, labels_path, probabilities_path))
    return plans


def _open_checked(
    arguments: argparse.Namespace, path: Path, trained: TrainedModel, out: Path, planned: list[int]
) -> tuple[Any, Any, Any]:
    """Open one input lazily (a video frame by frame) and check it (channels, size against memory
    and disk, beside the ``planned`` outputs of the inputs before it, to which its own are added)
    before any work."""
    from ..data.video import VideoFrames, is_video
    from ..data.voxels import read_voxel_size
    from ..inference import Slices
    from ..inference.files import check_channels, open_lazy, output_bytes
    from ..plumbing.input_checks import check_prediction_resources

    probabilities = arguments.probabilities
    if is_video(path):
        array, rgb = VideoFrames(path, max_frames=arguments.max_frames, every=arguments.every), True
    else:
        array, rgb = open_lazy(path)
    slices = Slices(array, rgb=rgb)
    check_channels(slices, trained.in_channels, path)
    check_prediction_resources(
        path,
        count=slices.count,
        height=slices.height,
        width=slices.width,
        channels=max(slices.channels, trained.in_channels),
        class_count=trained.class_count,
        output_bytes=output_bytes(slices, trained.class_count, probabilities),
        out=out,
        planned=sum(planned),
    )
    planned.append(output_bytes(slices, trained.class_count, probabilities))
    return slices, array, read_voxel_size(path)


def _check_video_options(arguments: argparse.Namespace, inputs: list[Path]) -> None:
    from ..data.video import is_video

    videos = [p for p in inputs if is_video(p)]
    if arguments.overlay is not None:
        if len(inputs) != 1 or not videos:
            raise SchismError("--overlay needs one video as --input")
        if arguments.overlay.exists():
            raise SchismError(f"--overlay {arguments.overlay} already exists; not overwriting it")
        if arguments.gray_levels:
            raise SchismError("--overlay colours classes 0..C-1; leave out --gray-levels")
    if (arguments.max_frames is not None or arguments.every != 1) and not videos:
        raise SchismError("--max-frames and --every apply to video inputs (.mp4, .avi, ...)")


def _write_overlay(target: Path, frames: Any, labels_path: Path, trained: TrainedModel) -> Path:
    import tifffile

    from ..data.video import write_overlay

    mapped = tifffile.memmap(labels_path, mode="r")
    labels = mapped if mapped.ndim == 3 else mapped[None]  # one frame was written as (Y, X)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_overlay(frames, labels, target, colors=trained.class_colors)


def command_predict_distributed(arguments: argparse.Namespace) -> int:
    """``predict --dask-scheduler ADDRESS`` / ``--workers N``: chunks of slices on dask workers, OME-Zarr out."""
    from ..data.discovery import list_image_files
    from ..data.io import gray_levels
    from ..inference.distributed import predict_distributed
    from ..plumbing.claims import claimed_outputs
    from ..plumbing.output_folders import output_folder, removed_on_failure
    from ..plumbing.resources import choose_threads
    from ..runs import load_trained_model

    if arguments.workers is not None and arguments.workers < 1:
        raise SchismError(f"--workers {arguments.workers}: must be at least 1")
    inputs = _prediction_inputs(arguments.input, list_image_files)
    out = arguments.out
    if out.exists() and not out.is_dir():
        raise SchismError(f"--out {out} is a file; give a folder")
    plans = []
    for path in inputs:
        labels = out / f"{path.stem}_labels.ome.zarr"
        probabilities = out / f"{path.stem}_probabilities.ome.zarr" if arguments.probabilities else None
        for target in (labels, probabilities):
            if target is not None and target.exists():
                raise SchismError(f"{target} already exists; not overwriting it (choose another --out)")
        plans.append((path, labels, probabilities))
    weights = _weights(arguments)
    if len(weights) > 1:
        raise SchismError("--dask-scheduler/--workers predict with one run folder; give one --weights")
    trained = load_trained_model(weights[0], arguments.metric)
    # the workers tile each slice as one run does: planes and voxel ratio do not apply
    overrides = dataclasses.replace(_inference_overrides(arguments), planes=None, voxel_ratio=None)
    settings = overrides.apply(trained.config.inference)
    threads = arguments.threads
    if threads is None and not arguments.dask_scheduler:  # a local cluster shares this machine's free cores
        threads = max(1, choose_threads() // arguments.workers)
    levels = gray_levels(trained.class_count) if arguments.gray_levels else None
    device = "cpu" if arguments.device == "auto" else arguments.device
    progress = TqdmProgress()
    created = output_folder(out)
    targets = [t for _, labels, probabilities in plans for t in (labels, probabilities) if t is not None]
    # another command writing the same outputs is refused at once; a failed command leaves no empty folder
    with removed_on_failure(out, created), claimed_outputs(targets):
        for path, labels, probabilities in plans:
            result = predict_distributed(
                weights[0],
                path,
                labels,
                probabilities_path=probabilities,
                metric=arguments.metric,
                settings=settings,
                scheduler=arguments.dask_scheduler,
                workers=arguments.workers,
                chunk_slices=arguments.chunk_slices,
                threads=threads,
                device=device,
                levels=levels,
                callback=progress,
            )
            workers = len({chunk["pid"] for chunk in result.chunks})
            progress.write(
                f"{path.name}: {len(result.chunks)} chunks on {workers} workers in {result.seconds:.1f}s -> "
                + ", ".join(str(p) for p in result.paths)
            )
    return 0


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
    from ..data import load_dataset
    from ..data.splits import read_split
    from ..evaluation.scoring import evaluate
    from ..plumbing.atomic import atomic_write_text
    from ..runs.schism import locate_run
    from ..workflows import build_predictors, dataset_options

    built = build_predictors(_predict_request(arguments))
    members, predictors = built.members, built.each
    trained = built.first
    options = dataset_options(trained.config, in_channels=trained.in_channels)
    data = load_dataset(arguments.data, mask=arguments.mask, write_stats=False, **options)
    runs = [locate_run(run) for run in _weights(arguments)]  # a SCHISM run: the folder it was given holds it
    positions = read_split(runs[0], data).part(arguments.split)
    if not positions:
        raise SchismError(
            f"the {arguments.split} split of {runs[0]} is empty "
            "(num_samples covers every image); try --split val or --split all"
        )
    if len(runs) > 1:
        return _evaluate_ensemble(arguments, runs, members, predictors, data, positions)
    result = evaluate(predictors[0], data, positions, trained.class_names)  # the background is unlabeled already
    print(f"{arguments.split} split: {len(positions)} images, weights {trained.source}")
    print(result.format())
    if arguments.baseline:
        from ..forest.classifier import compare_with_baselines

        train_positions = read_split(runs[0], data).train
        print(
            f"\nIoU per class beside classical pixel classifiers trained on the {len(train_positions)} training images:"
        )
        print(compare_with_baselines(result, data, train_positions, positions, trained.class_names))
    if arguments.csv is not None:
        rows = result.table()
        header = ",".join(rows[0])
        lines = [header] + [",".join(str(v) for v in row.values()) for row in rows]
        atomic_write_text(arguments.csv, "\n".join(lines) + "\n")
        print(f"wrote {arguments.csv}")
    return 0


def _evaluate_ensemble(
    arguments: argparse.Namespace,
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
            print(f"warning: {run} trained or validated on some of these {arguments.split} images (other split)")
    table = compare_members(
        predictors,
        [str(run) for run in runs],
        data,
        positions,
        members[0].class_names,  # SCHISM's ignore_background made gray 0 unlabeled when the masks were read
    )
    print(f"{arguments.split} split of {runs[0]}: {len(positions)} images")
    print(table.format())
    if arguments.csv is not None:
        atomic_write_text(arguments.csv, table.csv())
        print(f"wrote {arguments.csv}")
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    from ..runs.export import check_bioimageio, export_model

    path = export_model(arguments.weights, arguments.format, arguments.out, metric=arguments.metric)
    print(f"wrote {path}")
    _warn_stage_one(arguments.weights, path)
    _warn_network_only(arguments.weights, arguments.metric)
    if arguments.format == "bioimageio" and not arguments.no_test:
        summary = check_bioimageio(path)
        print(f"bioimageio.core model test: {summary.status}")
        if summary.status != "passed":
            print(summary.format() if hasattr(summary, "format") else summary, file=sys.stderr)
            return 1
    elif arguments.format != "bioimageio":
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


def command_stats(arguments: argparse.Namespace) -> int:
    from ..data.dataset import STATS_FILE, folder_stats
    from ..data.discovery import discover_datasets
    from ..data.normalization import write_stats_file
    from ..plumbing.output_folders import writable_parent

    stats_folder, folders = discover_datasets(arguments.data, require_masks=False)
    target = arguments.out or stats_folder / STATS_FILE
    if target.exists():
        hint = "choose another --out" if arguments.out is not None else "delete it or give --out FILE"
        raise SchismError(f"{target} already exists; not overwriting it ({hint})")
    writable_parent(target, "--out" if arguments.out is not None else "--data")
    stats = folder_stats(folders)
    write_stats_file(target, stats)
    for name, value in stats.items():
        mean, std = value.to_json()
        print(f"{name}: mean {mean}, std {std}")
    print(f"wrote {target}")
    return 0


def command_sample(arguments: argparse.Namespace) -> int:
    from ..sample import write_sample

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
