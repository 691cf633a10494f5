"""Where the model is least sure: per-pixel uncertainty of class probabilities, and the slice to correct next.

Corrections help most where the model hesitates; these functions let the napari widget show an
uncertainty layer and jump to the slice most in need of review. Pure numpy, no Qt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..plumbing.array_types import SlabArray


def margin_uncertainty(probabilities: np.ndarray, class_axis: int = 0) -> np.ndarray:
    """1 - (highest - second highest probability): 0 where one class is certain, 1 on a tie.

    Binary models (two classes) give 1 - |p1 - p0|. Returns float32 without the class axis.
    The two highest are kept in one pass over the classes (a few whole-plane operations per class):
    ``np.partition`` along the class axis took 76 ms per 1024² slice of 3 classes, this 10.
    """
    p = np.moveaxis(np.asarray(probabilities, dtype=np.float32), class_axis, 0)
    if p.shape[0] < 2:
        return np.zeros(p.shape[1:], dtype=np.float32)
    top = np.maximum(p[0], p[1])
    second = np.minimum(p[0], p[1])
    for k in range(2, p.shape[0]):
        np.maximum(second, np.minimum(top, p[k]), out=second)
        np.maximum(top, p[k], out=top)
    top -= second
    return np.subtract(np.float32(1), top, dtype=np.float32)


def most_uncertain_slice(
    uncertainty: SlabArray, exclude: set[int] | frozenset[int] = frozenset(), *, slab: int = 16
) -> int | None:
    """The slice (first axis) with the highest mean uncertainty, skipping ``exclude`` (reviewed slices).

    ``uncertainty`` may be lazy (a dask or zarr array on disk): it is read ``slab`` slices at a
    time, never whole. None for a 2D map or when every slice is excluded.
    """
    if len(uncertainty.shape) < 3:
        return None
    depth = int(uncertainty.shape[0])
    means = np.empty(depth, dtype=np.float64)
    for low in range(0, depth, slab):
        block = np.asarray(uncertainty[low : low + slab], dtype=np.float32)
        means[low : low + len(block)] = block.reshape(len(block), -1).mean(axis=1)
    order = [int(z) for z in np.argsort(-means, kind="stable") if int(z) not in exclude]
    return order[0] if order else None
