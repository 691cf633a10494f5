"""``schism predict --dask-scheduler ADDRESS`` / ``--workers N``: chunks of slices on dask workers, OME-Zarr out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import SchismError
from .common import InferenceOptions, prediction_inputs
from .progress import TqdmProgress


@dataclass(frozen=True)
class DaskOptions:
    scheduler: str | None  # --dask-scheduler ADDRESS
    workers: int | None  # --workers N: a local cluster
    chunk_slices: int | None


def run_distributed(
    dask: DaskOptions,
    weights: list[Path],
    source: Path,
    out: Path,
    *,
    metric: str,
    probabilities: bool,
    gray_levels: bool,
    inference: InferenceOptions,
) -> int:
    """Predict ``source`` (``--input``) with the one run folder in ``weights`` into OME-Zarr stores in ``out``."""
    from ..data.discovery import list_image_files
    from ..data.io import gray_levels as spread_gray_levels
    from ..inference.distributed import predict_distributed
    from ..plumbing.claims import claimed_outputs
    from ..plumbing.output_folders import output_folder, removed_on_failure
    from ..runs import load_trained_model

    if dask.workers is not None and dask.workers < 1:
        raise SchismError(f"--workers {dask.workers}: must be at least 1")
    inputs = prediction_inputs(source, list_image_files)
    if out.exists() and not out.is_dir():
        raise SchismError(f"--out {out} is a file; give a folder")
    plans = _output_plans(out, inputs, probabilities)
    if len(weights) > 1:
        raise SchismError("--dask-scheduler/--workers predict with one run folder; give one --weights")
    trained = load_trained_model(weights[0], metric)
    # the workers tile each slice as one run does: planes and voxel ratio do not apply
    overrides = dataclasses.replace(inference.overrides(), planes=None, voxel_ratio=None)
    settings = overrides.apply(trained.config.inference)
    threads = _threads(dask, inference.threads)
    levels = spread_gray_levels(trained.class_count) if gray_levels else None
    device = "cpu" if inference.device == "auto" else inference.device
    progress = TqdmProgress()
    created = output_folder(out)
    targets = [t for _, labels, probabilities_path in plans for t in (labels, probabilities_path) if t is not None]
    # another command writing the same outputs is refused at once; a failed command leaves no empty folder
    with removed_on_failure(out, created), claimed_outputs(targets):
        for path, labels, probabilities_path in plans:
            result = predict_distributed(
                weights[0],
                path,
                labels,
                probabilities_path=probabilities_path,
                metric=metric,
                settings=settings,
                scheduler=dask.scheduler,
                workers=dask.workers,
                chunk_slices=dask.chunk_slices,
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


def _threads(dask: DaskOptions, threads: int | None) -> int | None:
    """Torch threads per worker: the given ones; on a local cluster, this machine's free cores shared."""
    from ..plumbing.resources import choose_threads

    if threads is None and not dask.scheduler and dask.workers:
        return max(1, choose_threads() // dask.workers)
    return threads


def _output_plans(out: Path, inputs: list[Path], probabilities: bool) -> list[tuple[Path, Path, Path | None]]:
    """(input, labels store, probabilities store or None) per input; existing ones are refused."""
    plans = []
    for path in inputs:
        labels = out / f"{path.stem}_labels.ome.zarr"
        probabilities_path = out / f"{path.stem}_probabilities.ome.zarr" if probabilities else None
        for target in (labels, probabilities_path):
            if target is not None and target.exists():
                raise SchismError(f"{target} already exists; not overwriting it (choose another --out)")
        plans.append((path, labels, probabilities_path))
    return plans
