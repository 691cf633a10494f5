"""Prediction of volumes on a dask cluster: chunks of slices, one model per worker, OME-Zarr output.

One machine predicts a stack slice by slice (:class:`~.predictor.Predictor`); a volume that takes
hours there is cut into chunks of consecutive slices, one dask task each. Models are 2D, so a chunk
needs no halo along Z (each slice is predicted from itself; tiles inside a slice carry their own
halo). The client opens the input only to read its shape, creates the output OME-Zarr arrays once
(axes and chunking: one slice per zarr chunk, so workers never write the same chunk), and shows
progress; each worker opens the input lazily, loads the model once (a cached loader keyed by run
folder, checkpoint and settings) and writes its slices straight into the output. The output is
built under a hidden temporary name and renamed when every chunk succeeded, like every other output.

Works with any ``dask.distributed`` scheduler (``schism predict --dask-scheduler tcp://host:8786``)
or a local cluster of worker processes (``--workers N``). Workers need the package and read access
to the run folder and the input; the output folder must be shared with them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import InferenceConfig
from ..errors import SchismError
from ..events import PredictionProgress, ProgressCallback, ignore_events
from ..plumbing.atomic import OutputExistsError, full_disk_error

if TYPE_CHECKING:
    from distributed import Client

    from ..plumbing.array_types import PlaneArray
    from .predictor import Predictor, Slices

LOADS: dict[tuple[Any, ...], int] = {}  # model loads per cache key in this process (what the tests check)


@dataclasses.dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs for its chunks, small enough to send with every task."""

    run_dir: str
    metric: str
    input_path: str
    labels_path: str  # the temporary OME-Zarr group of the labels
    probabilities_path: str | None
    settings: tuple[tuple[str, Any], ...]  # InferenceConfig fields, resolved (tile size and halo fixed)
    device: str = "cpu"
    threads: int | None = None
    levels: tuple[int, ...] | None = None  # SCHISM gray levels for the labels, or None for classes


# ---- output ------------------------------------------------------------------------------------


def write_slices(array_path: str, start: int, values: np.ndarray) -> None:
    """Write ``values`` (slices along the first axis) into the zarr array at ``array_path`` from ``start``."""
    import zarr

    zarr.open_array(array_path, mode="r+")[start : start + len(values)] = values


class _SliceWriter:
    """Stands where the Predictor writes ``out[z] = slice``: writes slice ``start + z`` of a zarr array."""

    def __init__(self, array_path: str, start: int, levels: np.ndarray | None = None):
        import zarr

        self.array = zarr.open_array(array_path, mode="r+")
        self.start, self.levels = start, levels

    def __setitem__(self, z: int, value: np.ndarray) -> None:
        if self.levels is not None:
            value = self.levels[value]
        self.array[self.start + z] = value


class _SliceRange:
    """A lazy view of slices ``start..stop`` of a stack (only what is indexed is read)."""

    def __init__(self, array: PlaneArray, start: int, stop: int, stack: bool):
        self.array, self.start, self.stack = array, start, stack
        self.shape = (stop - start, *(array.shape[1:] if stack else array.shape))
        self.ndim = len(self.shape)
        self.dtype = array.dtype

    def __getitem__(self, z: int) -> Any:
        return self.array[self.start + z] if self.stack else self.array


# ---- worker side -------------------------------------------------------------------------------


def _settings_of(job: ChunkJob) -> InferenceConfig:
    return InferenceConfig(**dict(job.settings))


@functools.lru_cache(maxsize=4)
def cached_predictor(run_dir: str, metric: str, settings: tuple[tuple[str, Any], ...], device: str) -> Predictor:
    """The Predictor of a run folder, loaded once per worker process and kept for its next chunks."""
    from ..runs import load_trained_model
    from .predictor import Predictor

    key = (run_dir, metric, settings, device)
    LOADS[key] = LOADS.get(key, 0) + 1
    trained = load_trained_model(run_dir, metric)
    return Predictor.from_trained(trained, settings=InferenceConfig(**dict(settings)), device=device)


def predict_chunk(job: ChunkJob, start: int, stop: int) -> dict[str, Any]:
    """Predict slices ``start..stop`` of the input and write them into the outputs (runs on a worker)."""
    import torch

    from .files import open_lazy
    from .predictor import Slices

    if job.threads:
        torch.set_num_threads(job.threads)
    began = time.perf_counter()
    predictor = cached_predictor(job.run_dir, job.metric, job.settings, job.device)
    array, rgb = open_lazy(Path(job.input_path))
    stack = array.ndim - (1 if rgb else 0) == 3
    view = _SliceRange(array, start, stop, stack)
    slices = Slices(view, rgb=rgb)
    levels = None if job.levels is None else np.asarray(job.levels, dtype=np.uint8)
    labels = _SliceWriter(job.labels_path + "/0", start, levels)
    probabilities = None if job.probabilities_path is None else _SliceWriter(job.probabilities_path + "/0", start)
    predictor.predict(slices, keep_probabilities=False, labels_out=labels, probabilities_out=probabilities)
    key = (job.run_dir, job.metric, job.settings, job.device)
    return {
        "start": start,
        "stop": stop,
        "pid": os.getpid(),
        "loads": LOADS.get(key, 0),
        "seconds": time.perf_counter() - began,
    }


# ---- client side -------------------------------------------------------------------------------


def chunk_ranges(count: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``count`` slices into runs of ``chunk``."""
    return [(start, min(start + chunk, count)) for start in range(0, count, max(1, chunk))]


def default_chunk(count: int, workers: int) -> int:
    """Slices per task: about four tasks per worker (balance) but at least one slice."""
    return max(1, math.ceil(count / max(1, 4 * workers)))


@dataclasses.dataclass
class DistributedResult:
    paths: list[Path]
    chunks: list[dict[str, Any]]  # what each task reported: start, stop, pid, loads, seconds
    seconds: float


def predict_distributed(
    run_dir: str | Path,
    input_path: str | Path,
    labels_path: str | Path,
    *,
    probabilities_path: str | Path | None = None,
    metric: str = "loss",
    settings: InferenceConfig | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    chunk_slices: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
    levels: np.ndarray | None = None,
    callback: ProgressCallback = ignore_events,
    client: Client | None = None,
) -> DistributedResult:
    """Predict a stack on a dask cluster into OME-Zarr groups ``labels_path`` (Z, Y, X) and optionally
    ``probabilities_path`` (Z, C, Y, X). Give ``scheduler`` (an address), ``workers`` (a local cluster
    of that many processes) or an open ``client``. Existing outputs are refused before any work."""
    from ..data.voxels import read_voxel_size
    from ..runs import load_trained_model
    from .files import create_ome_zarr, open_lazy
    from .predictor import Predictor, Slices

    outputs = [Path(labels_path)] + ([Path(probabilities_path)] if probabilities_path is not None else [])
    for target in outputs:
        if target.exists():
            raise OutputExistsError(f"{target} already exists; not overwriting it (choose another output)")
    input_path = Path(input_path)
    array, rgb = open_lazy(input_path)
    slices = Slices(array, rgb=rgb)
    trained = load_trained_model(run_dir, metric)
    predictor = Predictor.from_trained(trained, settings=settings, device="cpu")
    resolved = dataclasses.replace(predictor.settings, tile_size=predictor.tile_size, halo=predictor.halo)
    _, positions, _ = predictor.layout(*_padded(slices, predictor.divisor))
    temporaries = [target.with_name(f".{target.name}.tmp") for target in outputs]
    for temporary in temporaries:
        shutil.rmtree(temporary, ignore_errors=True)
    classes = predictor.class_count
    voxel_size = read_voxel_size(input_path)
    plane = (slices.height, slices.width)
    try:  # no temporary output stays behind: a cluster that does not start, a full disk, a failed chunk
        create_ome_zarr(
            temporaries[0], (slices.count, *plane), np.uint8, "zyx", name=outputs[0].stem, voxel_size=voxel_size
        )
        if probabilities_path is not None:
            shape = (slices.count, classes, *plane)
            create_ome_zarr(temporaries[1], shape, np.float32, "zcyx", name=outputs[1].stem, voxel_size=voxel_size)
        with _client(client, scheduler, workers) as active:
            worker_count = max(1, len(active.scheduler_info().get("workers", {})))
            job = ChunkJob(
                run_dir=str(Path(run_dir).resolve()),
                metric=metric,
                input_path=str(input_path.resolve()),
                labels_path=str(temporaries[0].resolve()),
                probabilities_path=str(temporaries[1].resolve()) if probabilities_path is not None else None,
                settings=tuple(dataclasses.asdict(resolved).items()),
                device=device,
                threads=threads,
                levels=None if levels is None else tuple(int(v) for v in levels),
            )
            ranges = chunk_ranges(slices.count, chunk_slices or default_chunk(slices.count, worker_count))
            began = time.perf_counter()
            reports = _run(active, job, ranges, len(positions), slices.count, callback)
    except BaseException as error:
        full = full_disk_error(error, outputs[0]) if isinstance(error, Exception) else None
        for temporary in temporaries:
            shutil.rmtree(temporary, ignore_errors=True)
        if full is not None:
            raise full.with_free_space() from None
        raise
    for temporary, target in zip(temporaries, outputs, strict=True):
        temporary.rename(target)
    return DistributedResult(outputs, reports, time.perf_counter() - began)


def _padded(slices: Slices, divisor: int) -> tuple[int, int]:
    return -(-slices.height // divisor) * divisor, -(-slices.width // divisor) * divisor


def _run(
    client: Client,
    job: ChunkJob,
    ranges: list[tuple[int, int]],
    tiles_per_slice: int,
    count: int,
    callback: ProgressCallback,
) -> list[dict[str, Any]]:
    from distributed import as_completed

    futures = [client.submit(predict_chunk, job, start, stop, pure=False) for start, stop in ranges]
    reports, slices_done = [], 0
    callback(PredictionProgress(0, count * tiles_per_slice, 0, count))
    for future in as_completed(futures):
        report = future.result()
        reports.append(report)
        slices_done += report["stop"] - report["start"]
        callback(PredictionProgress(slices_done * tiles_per_slice, count * tiles_per_slice, slices_done, count))
    return sorted(reports, key=lambda r: r["start"])


class _client:
    """Context manager: the given client, a client of ``scheduler``, or a local cluster of ``workers``."""

    def __init__(self, client: Client | None, scheduler: str | None, workers: int | None):
        self.given, self.scheduler, self.workers = client, scheduler, workers
        self.opened: list[Any] = []

    def __enter__(self) -> Client:
        if self.given is not None:
            return self.given
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SchismError(
                "--dask-scheduler/--workers need dask.distributed: pip install 'schism-napari[dask]'"
            ) from None

        if self.scheduler:
            try:
                client = Client(self.scheduler, timeout="30s")
            except OSError as error:
                raise SchismError(f"--dask-scheduler {self.scheduler}: cannot connect ({error})") from None
        else:
            cluster = LocalCluster(
                n_workers=max(1, self.workers or 1), threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            self.opened.append(cluster)
            client = Client(cluster)
        self.opened.insert(0, client)
        return client

    def __exit__(self, *exc: Any) -> None:
        for item in self.opened:
            item.close()
