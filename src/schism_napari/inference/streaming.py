"""Prediction of a stack into a :class:`~schism_napari.data.volume_store.VolumeStore`, the current
slice first: what the napari Prediction tab runs for volumes.

The user looks at one slice; it is predicted first and announced at once (seconds), then the
other slices in order, each written to the store as soon as the predictor hands it out and
announced in runs (:class:`~schism_napari.events.SlicesStored`, about twice a second) so the
layers refresh as they fill. Memory stays that of the predictor's few slices in flight plus one
input slab: a lazy input (dask, zarr) is read in chunk-aligned slabs, never whole.

Tri-planar consensus needs neighbouring slices: it runs in slabs of
:data:`~.planes.DEFAULT_SLAB_DEPTH` slices plus a margin (as ``schism predict --zarr``), and the
first slice shown is its plain XY prediction, replaced when the slab holding it is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.volume_store import SlabReader, VolumeStore
from ..errors import Cancelled, DataError
from ..events import PredictionProgress, ProgressCallback, SlicesStored, StopToken, ignore_events
from .planes import TriPlanarPredictor
from .predictor import Slices

if TYPE_CHECKING:
    from ..events import Event
    from ..plumbing.array_types import PlaneArray, StackArray
    from .combined import CombinedPredictor
    from .predictor import Predictor

REPORT_EVERY_S = 0.5  # at most about this often a run of finished slices is announced


class StreamProgress:
    """The predictor's callback during a streamed prediction: tile and slice counts over the run.

    A predictor counts per call, and a streamed stack takes two calls (its current slice, then the
    others); this turns each call's counts into one count over all the slices the run writes.
    Other events pass through unchanged, and so does everything while ``raw`` (tri-planar slabs,
    whose passes count planes of three orientations).
    """

    def __init__(self, callback: ProgressCallback = ignore_events):
        self.callback = callback
        self.slices_before = 0  # slices written by earlier calls of this run
        self.slices = 1  # slices the whole run writes
        self.raw = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, PredictionProgress) and not self.raw and event.slices:
            per_slice = event.total / event.slices
            event = PredictionProgress(
                round(per_slice * self.slices_before) + event.done,
                round(per_slice * self.slices),
                self.slices_before + event.slices_done,
                self.slices,
            )
        self.callback(event)


class _Picked:
    """Slices ``indices`` of a stack, in that order: what the predictor sees of the slices to do."""

    def __init__(self, array: PlaneArray, indices: Sequence[int]):
        self.array, self.indices = array, list(indices)
        self.shape = (len(self.indices), *tuple(array.shape)[1:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, index: int) -> Any:
        return self.array[self.indices[int(index)]]


class _Runs:
    """Collects written slices into runs of consecutive slices and announces each run."""

    def __init__(self, callback: ProgressCallback, total: int, every: float):
        self.callback, self.total, self.every = callback, total, every
        self.done = 0
        self.start = self.stop = -1
        self.last = time.perf_counter()

    def add(self, z: int) -> None:
        if z != self.stop:
            self.flush()
            self.start = z
        self.stop = z + 1
        self.done += 1
        if time.perf_counter() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.stop > self.start >= 0:
            self.callback(SlicesStored(self.start, self.stop, self.done, self.total))
            self.last = time.perf_counter()
        self.start = self.stop = -1


def stream_prediction(
    predictor: Predictor | CombinedPredictor,
    array: StackArray,
    store: VolumeStore,
    first: int,
    *,
    only_first: bool = False,
    progress: StreamProgress | None = None,
    stop: StopToken | None = None,
    every: float = REPORT_EVERY_S,
) -> int:
    """Predict the (Z, Y, X) stack ``array`` into ``store``: slice ``first`` before the others (with
    ``only_first``, that slice alone). Returns the number of slices written.

    ``progress`` must be the callback the predictor was built with (it also carries the
    :class:`SlicesStored` announcements); ``stop`` is checked between slices, as the predictor
    checks it between batches.
    """
    count = store.shape[0]
    if tuple(int(v) for v in array.shape) != store.shape:
        raise DataError(f"the stack {tuple(array.shape)} does not fit its store {store.shape}")
    report = progress or StreamProgress()
    source = array if isinstance(array, np.ndarray) else SlabReader(array)
    first = min(max(int(first), 0), count - 1)
    planar = isinstance(predictor, TriPlanarPredictor)
    quick = predictor.base if isinstance(predictor, TriPlanarPredictor) else predictor
    total = 1 if only_first else count + (1 if planar else 0)
    runs = _Runs(report.callback, total, every)

    def written(z: int, probabilities: np.ndarray, source_of_labels: Predictor | CombinedPredictor) -> None:
        store.write(z, probabilities, source_of_labels.labels_from_probabilities(probabilities))
        runs.add(z)
        if stop is not None and stop.requested:
            raise Cancelled("prediction cancelled")

    report.slices_before, report.slices, report.raw = 0, total, False
    for _, probabilities in quick.iter_probabilities(Slices(_Picked(source, [first]))):
        written(first, probabilities, quick)
    runs.flush()  # the slice the user looks at: at once
    if only_first:
        return runs.done
    if planar:  # tri-planar needs the slices in order, around each one: all of them, in slabs
        order: list[int] = list(range(count))
        view: Any = source
        report.raw = True
    else:
        order = [z for z in range(count) if z != first]
        view = _Picked(source, order)
        report.slices_before = 1
    if order:
        for index, probabilities in predictor.iter_probabilities(Slices(view)):
            written(order[index], probabilities, predictor)
    runs.flush()
    return runs.done
