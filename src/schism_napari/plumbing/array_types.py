"""What the core asks of the arrays it is handed: numpy, zarr, dask, a TIFF's zarr view, or one of
the project's own lazy views (:class:`~.input_checks.CheckedSlices`, the predictor's outputs).

Only typing lives here (no imports of the project), so any module may use these without an import
edge that the architecture test would object to. Each protocol names the few operations the code
really uses: an image is read plane by plane or slab by slab along its first axis, and results are
written the same way.
"""

from __future__ import annotations

from types import EllipsisType
from typing import Any, Protocol

import numpy as np


class Shaped(Protocol):
    """Anything with a shape (a numpy, zarr or dask array, a napari layer's data)."""

    @property
    def shape(self) -> tuple[int, ...]: ...


class PlaneArray(Shaped, Protocol):
    """A 2D image or a stack read one plane (``array[z]``) at a time: numpy, zarr, dask, a TIFF's
    zarr view, :class:`~.input_checks.CheckedSlices`."""

    @property
    def ndim(self) -> int: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, index: int, /) -> Any: ...


class SlabArray(Shaped, Protocol):
    """A stack read one slab of consecutive planes (``array[start:stop]``) at a time."""

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, index: slice, /) -> Any: ...


class StackArray(Shaped, Protocol):
    """A stack read by planes, by slabs or whole (numpy, zarr, dask): both a :class:`PlaneArray`
    and a :class:`SlabArray`."""

    @property
    def ndim(self) -> int: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, index: int | slice | EllipsisType, /) -> Any: ...


class WritableSlabs(Shaped, Protocol):
    """A stack whose slabs of planes are read and rewritten (numpy or zarr labels)."""

    def __getitem__(self, index: slice, /) -> Any: ...

    def __setitem__(self, index: slice, value: np.ndarray, /) -> None: ...


class PlaneOutput(Protocol):
    """Where a prediction writes its slices, ``out[z] = plane``: a numpy or zarr array, a TIFF
    written page by page, or a view that stores them elsewhere."""

    def __setitem__(self, index: int, value: np.ndarray, /) -> None: ...
