"""``schism predict``: tiled prediction of images, stacks and videos into label (and probability) files."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SchismError
from .common import InferenceOptions, add_inference_options, predict_request, prediction_inputs
from .predict_dask import DaskOptions, run_distributed
from .progress import TqdmProgress

if TYPE_CHECKING:
    from ..data.voxels import VoxelSize
    from ..inference import Slices
    from ..runs import TrainedModel
    from ..workflows import Predictors
    from .common import Commands

# (input, labels file, probabilities file) for each input
OutputPlan = tuple[Path, Path, Path]


def add_parser(commands: Commands) -> None:
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
    add_inference_options(predict)
    predict.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="predict on this dask cluster (tcp://host:8786) into OME-Zarr outputs, chunks of slices per worker",
    )
    predict.add_argument("--workers", type=int, help="predict on a local dask cluster of N worker processes")
    predict.add_argument("--chunk-slices", type=int, help="slices per dask task (default: about 4 tasks per worker)")
    predict.set_defaults(handler=handle)


@dataclass(frozen=True)
class PredictOptions:
    weights: list[Path]
    input: Path
    out: Path
    metric: str
    probabilities: bool  # --probabilities, or implied by --zarr
    zarr: bool
    gray_levels: bool
    max_frames: int | None
    every: int
    overlay: Path | None
    layout: str
    inference: InferenceOptions
    dask: DaskOptions

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> PredictOptions:
        return cls(
            weights=list(namespace.weights),
            input=namespace.input,
            out=namespace.out,
            metric=namespace.metric,
            probabilities=namespace.probabilities or namespace.zarr,
            zarr=namespace.zarr,
            gray_levels=namespace.gray_levels,
            max_frames=namespace.max_frames,
            every=namespace.every,
            overlay=namespace.overlay,
            layout=namespace.layout,
            inference=InferenceOptions.from_namespace(namespace),
            dask=DaskOptions(namespace.dask_scheduler, namespace.workers, namespace.chunk_slices),
        )


def handle(namespace: argparse.Namespace) -> int:
    return run(PredictOptions.from_namespace(namespace))


def run(options: PredictOptions) -> int:
    from ..data.discovery import list_image_files
    from ..plumbing.claims import claimed_outputs
    from ..plumbing.output_folders import output_folder, removed_on_failure
    from ..workflows import build_predictors

    if options.dask.scheduler or options.dask.workers:
        return run_distributed(
            options.dask,
            options.weights,
            options.input,
            options.out,
            metric=options.metric,
            probabilities=options.probabilities,
            gray_levels=options.gray_levels,
            inference=options.inference,
        )
    inputs = prediction_inputs(options.input, list_image_files)
    out = options.out
    if out.exists() and not out.is_dir():
        raise SchismError(f"--out {out} is a file; give a folder")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise SchismError("--out must not be one of the inputs")
    plans = _output_plans(options, inputs)
    targets = [t for _, labels, probabilities in plans for t in (labels, _probabilities(options, probabilities))]
    for target in targets:
        if target is not None and target.exists():
            raise SchismError(f"{target} already exists; not overwriting it (choose another --out)")
    _check_video_options(options, inputs)
    progress = TqdmProgress()
    loaded: dict[str | None, Predictors] = {}

    def predictor_for(path: Path) -> Predictors:
        dataset = schism_dataset_name(path)  # a SCHISM run normalises with that dataset's stats
        if dataset not in loaded:
            request = predict_request(options.weights, options.metric, options.inference, dataset)
            loaded[dataset] = build_predictors(request, callback=progress)
        return loaded[dataset]

    created = output_folder(out)
    # outputs claimed at once: a second command writing the same files is refused before any work
    with removed_on_failure(out, created), claimed_outputs([t for t in targets if t is not None]):
        planned: list[int] = []
        opened = [_open_checked(options, path, predictor_for(path).first, out, planned) for path, *_ in plans]
        for plan, (slices, view, voxel_size) in zip(plans, opened, strict=True):
            _predict_one(options, plan, predictor_for(plan[0]), slices, view, voxel_size, progress)
    return 0


def _probabilities(options: PredictOptions, path: Path) -> Path | None:
    return path if options.probabilities else None


def _predict_one(
    options: PredictOptions,
    plan: OutputPlan,
    predictors: Predictors,
    slices: Slices,
    view: Any,
    voxel_size: VoxelSize | None,
    progress: TqdmProgress,
) -> None:
    """Predict one opened input into its planned files and say how fast it went."""
    from ..data.io import gray_levels
    from ..inference.files import predict_to_files
    from ..inference.planes import DEFAULT_SLAB_DEPTH
    from ..plumbing.input_checks import CheckedSlices
    from ..workflows import planar

    path, labels_path, probabilities_path = plan
    trained = predictors.first
    gray = options.gray_levels or options.layout == "schism"
    levels = gray_levels(trained.class_count) if gray else None
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # [Inference] planes = xyz: the mean of the XY, XZ and YZ passes, the voxel ratio given or the file's
    slab = options.inference.slab_depth or (DEFAULT_SLAB_DEPTH if options.zarr else None)
    written = predict_to_files(
        planar(predictors.predictor, trained.config.inference, slab_depth=slab, source=path),
        slices,
        labels_path,
        _probabilities(options, probabilities_path),
        levels,
        voxel_size,
    )
    if options.overlay is not None:
        written.append(_write_overlay(options.overlay, view, labels_path, trained))
    megapixels = slices.count * slices.height * slices.width / 1e6
    elapsed = time.perf_counter() - started
    warning = view.warning() if isinstance(view, CheckedSlices) else None
    if warning:
        progress.write(f"warning: {warning}")
    progress.write(
        f"{path.name}: {megapixels:.1f} MP in {elapsed:.1f}s ({megapixels / elapsed:.2f} MP/s) -> "
        + ", ".join(str(p) for p in written)
    )


def schism_dataset_name(path: Path) -> str | None:
    """``<data>/<dataset>/images/<image>``: the dataset SCHISM's inference would name."""
    return path.parent.parent.name if path.parent.name == "images" else None


def _output_folder(options: PredictOptions, path: Path) -> Path:
    """Where one input's outputs go, always inside --out: SCHISM writes <dataset>/preds_<Metric>/."""
    if options.layout != "schism":
        return options.out
    dataset = schism_dataset_name(path)
    return (options.out / dataset if dataset else options.out) / f"preds_{options.metric}"


def _output_plans(options: PredictOptions, inputs: list[Path]) -> list[OutputPlan]:
    """(input, labels file, probabilities file) per input; inputs sharing a stem in one output folder
    (a.tif, a.png) keep their suffix in the output names (a_tif_labels.tif, a_png_labels.tif)."""
    folders = [_output_folder(options, path) for path in inputs]
    keys = [(folder, path.stem) for folder, path in zip(folders, inputs, strict=True)]
    probabilities_suffix = "_probabilities.zarr" if options.zarr else "_probabilities.tif"
    plans = []
    for path, folder, key in zip(inputs, folders, keys, strict=True):
        stem = path.stem
        if keys.count(key) > 1:
            stem = f"{stem}_{path.suffix.lstrip('.').lower()}"
        if options.layout == "schism":
            labels_path = folder / f"{stem}_{options.metric}.tif"
            probabilities_path = folder / f"{stem}_{options.metric}{probabilities_suffix}"
        else:
            labels_path, probabilities_path = folder / f"{stem}_labels.tif", folder / f"{stem}{probabilities_suffix}"
        plans.append((path, labels_path, probabilities_path))
    return plans


def _open_checked(
    options: PredictOptions, path: Path, trained: TrainedModel, out: Path, planned: list[int]
) -> tuple[Slices, Any, VoxelSize | None]:
    """Open one input lazily (a video frame by frame) and check it (channels, size against memory
    and disk, beside the ``planned`` outputs of the inputs before it, to which its own are added)
    before any work."""
    from ..data.video import VideoFrames, is_video
    from ..data.voxels import read_voxel_size
    from ..inference import Slices
    from ..inference.files import check_channels, open_lazy, output_bytes
    from ..plumbing.input_checks import check_prediction_resources

    probabilities = options.probabilities
    if is_video(path):
        array, rgb = VideoFrames(path, max_frames=options.max_frames, every=options.every), True
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


def _check_video_options(options: PredictOptions, inputs: list[Path]) -> None:
    from ..data.video import is_video

    videos = [p for p in inputs if is_video(p)]
    if options.overlay is not None:
        if len(inputs) != 1 or not videos:
            raise SchismError("--overlay needs one video as --input")
        if options.overlay.exists():
            raise SchismError(f"--overlay {options.overlay} already exists; not overwriting it")
        if options.gray_levels:
            raise SchismError("--overlay colours classes 0..C-1; leave out --gray-levels")
    if (options.max_frames is not None or options.every != 1) and not videos:
        raise SchismError("--max-frames and --every apply to video inputs (.mp4, .avi, ...)")


def _write_overlay(target: Path, frames: Any, labels_path: Path, trained: TrainedModel) -> Path:
    import tifffile

    from ..data.video import write_overlay

    mapped = tifffile.memmap(labels_path, mode="r")
    labels = mapped if mapped.ndim == 3 else mapped[None]  # one frame was written as (Y, X)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_overlay(frames, labels, target, colors=trained.class_colors)
