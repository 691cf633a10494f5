"""A stack's prediction on disk, read lazily: how napari shows volumes larger than memory.

The napari Prediction tab used to hold a stack's results in memory: float32 probabilities per
class, a float32 uncertainty, the labels, and full-size copies of each on the way, 28-31 MB per
1024² slice (14x a uint16 image); a 1024-slice CT would have needed 28 GB. A :class:`VolumeStore`
keeps them in zarr arrays in a folder instead, one chunk per plane, written slice by slice as the
predictor finishes them (:mod:`schism_napari.inference.streaming`), and the layers read the planes
they show. Probabilities and uncertainty are stored as bytes, 0-255 for 0-1: steps of 1/255 are
finer than a colormap shows, and the labels are taken from the exact probabilities before
rounding. Labels are stored as napari labels (class k is k + 1; 0 = not predicted yet).

The labels the user corrects are in the store too (``corrected``, the Labels layer's data: napari
paints, fills and undoes on a zarr array, a brush stroke rewriting the chunks it touches), beside
the labels as the model made them (``predicted``), which tell the corrections apart, and the pixels
ever found corrected (``edited``). Kept in memory they would cost 3 bytes per voxel, 1.5 times a
uint16 image. The worker only writes ``labels``;
:func:`store_labels` merges arrived slices from it into ``corrected`` and ``predicted`` in the GUI
thread, without losing the user's edits.

Nothing here imports torch, Qt or zarr at module level: the widgets decide on the GUI thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from .uncertainty import margin_uncertainty

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..plumbing.array_types import Shaped, SlabArray, WritableSlabs

# An in-memory prediction of a stack holds about held_bytes(); above this it streams to disk.
# Below it the results are a few tens of MB and stay exact float32 arrays, with no disk use.
STREAM_ABOVE_BYTES = 64 * 2**20
SLAB_BYTES = 128 * 2**20  # a lazy input is read in chunk-aligned slabs of up to this many bytes
CHUNK_SIDE = 2048  # planes larger than this are split into chunks of this side
MAX_CLASSES = 255  # labels k + 1 in one byte


def held_bytes(shape: tuple[int, ...], class_count: int) -> int:
    """Bytes an in-memory prediction of a (Z, Y, X) stack holds: float32 probabilities per class and
    uncertainty, the labels and the copy of them that corrections are measured against."""
    voxels = int(np.prod(shape, dtype=np.int64))
    return voxels * (4 * class_count + 4 + 2)


def should_stream(array: Shaped, *, rgb: bool, class_count: int) -> bool:
    """Whether a prediction of ``array`` goes to a store on disk: stacks (Z, Y, X, not RGB) whose
    results would exceed :data:`STREAM_ABOVE_BYTES` in memory, and every stack read lazily (a
    dask or zarr array: it may be larger than memory itself). 2D and RGB images stay in memory."""
    if rgb or len(array.shape) != 3 or class_count > MAX_CLASSES:
        return False
    if not isinstance(array, np.ndarray):
        return True
    return held_bytes(tuple(array.shape), class_count) > STREAM_ABOVE_BYTES


def to_bytes(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 0-255, rounded to the nearest step (what the store holds)."""
    scaled = np.multiply(values, np.float32(255), dtype=np.float32)
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def from_bytes(values: ArrayLike) -> np.ndarray:
    """Stored bytes -> float32 in [0, 1] (k / 255): what the probability and uncertainty layers show."""
    return np.asarray(values).astype(np.float32) / np.float32(255)


class VolumeStore:
    """One stack's prediction on disk: uint8 zarr arrays (format 2, compressed) of one chunk per
    plane, zeros until written: ``labels`` (Z, Y, X: the latest prediction, written by the worker),
    ``probabilities`` (C, Z, Y, X: the class axis first, as the probability layer shows it),
    ``uncertainty`` (Z, Y, X), and for the Labels layer ``corrected`` (what it shows and the user
    paints), ``predicted`` (the model's labels the corrections are measured against) and ``edited``
    (bool: every pixel found corrected so far)."""

    def __init__(self, folder: str | Path, shape: tuple[int, ...], class_count: int):
        from ..plumbing.zarr_compat import create_array, open_v2_group

        if len(shape) != 3:
            raise DataError(f"a volume store holds a (Z, Y, X) stack, not shape {tuple(shape)}")
        if not 2 <= class_count <= MAX_CLASSES:
            raise DataError(f"a volume store holds 2 to {MAX_CLASSES} classes, not {class_count}")
        self.folder = Path(folder)
        self.shape: tuple[int, int, int] = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.class_count = int(class_count)
        plane = (min(self.shape[1], CHUNK_SIDE), min(self.shape[2], CHUNK_SIDE))
        group = open_v2_group(self.folder, mode="w-")
        self.labels = create_array(group, "labels", shape=self.shape, chunks=(1, *plane), dtype=np.uint8, fill_value=0)
        self.probabilities = create_array(
            group,
            "probabilities",
            shape=(self.class_count, *self.shape),
            chunks=(1, 1, *plane),
            dtype=np.uint8,
            fill_value=0,
        )
        self.uncertainty = create_array(
            group, "uncertainty", shape=self.shape, chunks=(1, *plane), dtype=np.uint8, fill_value=0
        )
        self.corrected = create_array(
            group, "corrected", shape=self.shape, chunks=(1, *plane), dtype=np.uint8, fill_value=0
        )
        self.predicted = create_array(
            group, "predicted", shape=self.shape, chunks=(1, *plane), dtype=np.uint8, fill_value=0
        )
        self.edited = create_array(group, "edited", shape=self.shape, chunks=(1, *plane), dtype=bool, fill_value=False)

    @staticmethod
    def disk_bytes(shape: tuple[int, ...], class_count: int) -> int:
        """The store's size before compression: one byte per voxel for each class, the uncertainty
        and four label arrays."""
        return int(np.prod(shape, dtype=np.int64)) * (class_count + 5)

    def matches(self, shape: tuple[int, ...], class_count: int) -> bool:
        return self.shape == tuple(int(v) for v in shape) and self.class_count == class_count and self.folder.exists()

    def write(self, z: int, probabilities: np.ndarray, classes: np.ndarray) -> None:
        """Slice ``z``: its (C, Y, X) probabilities, their uncertainty, and its classes 0..C-1."""
        self.probabilities[:, z] = to_bytes(probabilities)
        self.uncertainty[z] = to_bytes(margin_uncertainty(probabilities))
        self.labels[z] = np.asarray(classes, dtype=np.uint8) + np.uint8(1)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def chunk_depth(array: object) -> int:
    """Slices per chunk along the first axis of a dask or zarr array (1 when unknown)."""
    chunks = getattr(array, "chunks", None)
    if not chunks:
        return 1
    first = chunks[0]
    return int(first[0] if isinstance(first, tuple) else first)


class SlabReader:
    """Slices of a lazy stack (dask, zarr, a TIFF's zarr view) read one chunk-aligned slab at a time.

    Reading slice by slice from an array chunked 64 slices deep reads each chunk 64 times; reading
    it whole may not fit in memory. A slab is whole chunks, at most :data:`SLAB_BYTES`.
    """

    def __init__(self, array: SlabArray, max_bytes: int = SLAB_BYTES):
        self.array = array
        self.shape = tuple(int(v) for v in array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)
        plane_bytes = max(1, int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize)
        self.depth = max(1, min(chunk_depth(array), max_bytes // plane_bytes))
        self._start = 0
        self._slab: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        z = int(index)
        if not 0 <= z < self.shape[0]:
            raise IndexError(z)
        if self._slab is None or not self._start <= z < self._start + len(self._slab):
            self._slab = None  # the old slab goes before the new one is read
            self._start = z // self.depth * self.depth
            self._slab = np.asarray(self.array[self._start : self._start + self.depth])
        return self._slab[z - self._start]


def iter_slabs(array: SlabArray, max_bytes: int = SLAB_BYTES) -> Iterator[np.ndarray]:
    """The first-axis slices of ``array`` (numpy or lazy), read a slab at a time (for writing a
    lazily opened volume to a file without holding it whole)."""
    reader = SlabReader(array, max_bytes)
    for z in range(reader.shape[0]):
        yield reader[z]


def store_labels(store: VolumeStore, start: int, stop: int, reviewed: set[int] | frozenset[int] = frozenset()) -> None:
    """Slices ``start:stop`` of the latest prediction (``store.labels``) into the Labels layer's
    ``store.corrected`` and into ``store.predicted``; what the user corrected stays (see
    :func:`write_labels`). Callers keep slabs small: this runs in the GUI thread."""
    labels = np.asarray(store.labels[start:stop])
    write_labels(store.corrected, store.predicted, start, labels, reviewed, store.edited)


def write_labels(
    labels: WritableSlabs,
    predicted: WritableSlabs,
    start: int,
    new: np.ndarray,
    reviewed: set[int] | frozenset[int] = frozenset(),
    edited: WritableSlabs | None = None,
) -> None:
    """A new prediction ``new`` of slices ``start:start + len(new)``, merged around the user's work
    one slab at a time (a whole volume's temporaries would not fit). The arrays may be numpy or zarr.

    Pixels the user changed (``labels`` differs from ``predicted``, or ``edited`` already says so)
    and every pixel of a ``reviewed`` slice keep what ``labels`` holds; the rest take ``new``.
    ``predicted`` becomes ``new`` except on reviewed, unedited pixels, which stay the prediction the
    user reviewed; ``edited`` (a bool array, when given) remembers the edits, so a later prediction
    that happens to agree with an edit does not turn it back into the model's guess.
    """
    stop = start + len(new)
    shown, before = np.asarray(labels[start:stop]), np.asarray(predicted[start:stop])
    edits = shown != before
    if edited is not None:
        edits |= np.asarray(edited[start:stop], dtype=bool)
        edited[start:stop] = edits
    kept = edits.copy()
    for z in reviewed:
        if start <= z < stop:
            kept[z - start] = True
    predicted[start:stop] = np.where(kept & ~edits, before, new)  # reviewed, unedited: as reviewed
    labels[start:stop] = np.where(kept, shown, new)


def threshold_labels(
    foreground: SlabArray,
    threshold: float,
    labels: WritableSlabs,
    predicted: WritableSlabs,
    reviewed: set[int] | frozenset[int] = frozenset(),
    edited: WritableSlabs | None = None,
    *,
    slab: int = 4,
) -> Iterator[int]:
    """A binary model's labels at a new ``threshold`` from P(class 1) (a lazy (Z, Y, X) array of
    floats): a new prediction, merged as in :func:`write_labels`, ``slab`` slices at a time; yields
    after each slab (the widget runs one per event-loop turn)."""
    for low in range(0, int(labels.shape[0]), slab):
        high = min(int(labels.shape[0]), low + slab)
        above = np.asarray(foreground[low:high]) > threshold
        write_labels(labels, predicted, low, above.astype(np.uint8) + np.uint8(1), reviewed, edited)
        yield high
