"""The napari side of stacks streamed to disk: each viewer session's scratch folder of stores, and
the lazy arrays the result layers show (see :mod:`schism_napari.data.volume_store`).

A session keeps one temporary folder (``schism-napari-*`` under the system's temporary folder,
``TMPDIR``), created on its first streamed prediction and removed with the session (when the
viewer goes, or when Python exits). Each image layer keeps one store in it, reused while the
image's shape, the model's classes and its Labels layer stay, so predicting again updates the
same layers and keeps the corrections; a store given up is deleted once no layer reads it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.volume_store import VolumeStore, from_bytes
from ..errors import SchismError

_GB = 1024**3


class _Scratch:
    """A session's temporary folder and the store of each image layer in it.

    Removed by a finalizer when the session goes or Python exits (a ``TemporaryDirectory`` left to
    its own cleanup warns then, and napari's worker threads route warnings to deleted Qt objects).
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="schism-napari-"))
        self.stores: weakref.WeakKeyDictionary[Any, VolumeStore] = weakref.WeakKeyDictionary()
        self.remove = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)


_scratch: weakref.WeakKeyDictionary[Any, _Scratch] = weakref.WeakKeyDictionary()


def store_for(
    session: Any, layer: Any, shape: tuple[int, ...], class_count: int, *, reuse: bool
) -> tuple[VolumeStore, VolumeStore | None]:
    """The store for ``layer``'s next prediction and the one it replaces (None: the same one): the
    current store when ``reuse`` and it fits, else a new one (refused in one line when the
    temporary folder's disk lacks the room)."""
    scratch = _scratch.get(session)
    if scratch is None:
        scratch = _scratch[session] = _Scratch()
    current = scratch.stores.get(layer)
    if reuse and current is not None and current.matches(shape, class_count):
        return current, None
    root = scratch.folder
    needed, free = VolumeStore.disk_bytes(shape, class_count), shutil.disk_usage(root).free
    if needed > free:
        raise SchismError(
            f"predicting {layer.name!r} {tuple(shape)} needs up to {needed / _GB:.1f} GB in {root.parent} "
            f"({free / _GB:.1f} GB free); point TMPDIR to a larger disk before starting napari"
        )
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(layer.name)).strip("._") or "image"
    folder = Path(tempfile.mkdtemp(prefix=f"{name[:40]}-", dir=root)) / "prediction.zarr"
    store = scratch.stores[layer] = VolumeStore(folder, shape, class_count)
    return store, current


def retire(store: VolumeStore | None) -> None:
    """Delete a store no layer reads any more (its folder, with the folder made for it)."""
    if store is not None:
        store.remove()
        shutil.rmtree(store.folder.parent, ignore_errors=True)


def stored_prediction(session: Any, layer: Any) -> VolumeStore | None:
    """The store holding ``layer``'s streamed prediction, if it has one."""
    scratch = _scratch.get(session)
    return None if scratch is None else scratch.stores.get(layer)


def scratch_folder(session: Any) -> Path | None:
    """The session's temporary folder, once a prediction has streamed to it."""
    scratch = _scratch.get(session)
    return None if scratch is None else scratch.folder


def probability_view(store: VolumeStore) -> Any:
    """The store's probabilities as a lazy (C, Z, Y, X) float32 dask array in [0, 1]: napari reads the
    planes it shows, and sees each new slice once its layer is refreshed (give the layer
    ``cache=False``: napari's dask cache would keep showing what it read before)."""
    import dask.array as da

    return da.from_zarr(store.probabilities).map_blocks(from_bytes, dtype=np.float32)


def uncertainty_view(store: VolumeStore) -> Any:
    """The store's uncertainty as a lazy (Z, Y, X) float32 dask array in [0, 1]."""
    import dask.array as da

    return da.from_zarr(store.uncertainty).map_blocks(from_bytes, dtype=np.float32)


def full_resolution(layer: Any) -> Any:
    """The array a layer shows at full resolution: its data, or the first level of a multiscale
    image (an OME-Zarr opened lazily); never read into memory here."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


@dataclass
class StreamedRun:
    """One streamed prediction, as the widget follows it in the GUI thread."""

    layer: Any  # the image layer
    model: Any
    store: VolumeStore
    previous: VolumeStore | None  # the store this one replaces, deleted once the layers read the new one
    first: int  # the slice predicted first (the one the user looks at)
    preview: bool  # only that slice
    shown: bool = False  # the layers read the store
    pending: list[tuple[int, int]] = field(default_factory=list)  # stored slices not yet merged into the labels
    draining: bool = False  # pending slices are being merged, a few per event-loop turn
    status: str | None = None  # the final status, once the worker returned
