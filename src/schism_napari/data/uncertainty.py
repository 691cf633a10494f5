"""Where the model is least sure: per-pixel uncertainty of class probabilities, and the slice to correct next.

Corrections help most where the model hesitates; these functions let the napari widget show an
uncertainty layer and jump to the slice most in need of review. Pure numpy, no Qt.
"""

from __future__ import annotations

import numpy as np


def margin_uncertainty(probabilities: np.ndarray, class_axis: int = 0) -> np.ndarray:
    """1 - (highest - second highest probability): 0 where one class is certain, 1 on a tie.

    Binary models (two classes) give 1 - |p1 - p0|. Returns float32 without the class axis.
    """
    p = np.moveaxis(np.asarray(probabilities, dtype=np.float32), class_axis, 0)
    if p.shape[0] < 2:
        return np.zeros(p.shape[1:], dtype=np.float32)
    top = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return (1.0 - (top[1] - top[0])).astype(np.float32)


def most_uncertain_slice(uncertainty: np.ndarray, exclude: set[int] | frozenset[int] = frozenset()) -> int | None:
    """The slice (first axis) with the highest mean uncertainty, skipping ``exclude`` (reviewed slices).

    None for a 2D map or when every slice is excluded.
    """
    u = np.asarray(uncertainty)
    if u.ndim < 3:
        return None
    means = u.reshape(u.shape[0], -1).mean(axis=1)
    order = [int(z) for z in np.argsort(-means, kind="stable") if int(z) not in exclude]
    return order[0] if order else None
