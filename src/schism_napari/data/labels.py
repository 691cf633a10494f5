"""The napari label convention: Labels value 0 means "not painted", class k is shown as k + 1.

Masks in memory and on disk stay 0..C-1 (SCHISM) with 255 for unlabeled pixels, so a painted or
corrected napari Labels layer is training data as it is.
"""

from __future__ import annotations

import numpy as np

from .io import IGNORE


def labels_to_mask(labels: np.ndarray, class_count: int) -> np.ndarray:
    """napari labels (0 = unpainted, k + 1 = class k) -> mask (k, IGNORE for unpainted)."""
    labels = np.asarray(labels)
    if labels.size and labels.max() > class_count:
        from ..errors import DataError

        raise DataError(
            f"labels go up to {int(labels.max())} but the model has {class_count} classes "
            f"(label k + 1 is class k, so labels must be 0..{class_count})"
        )
    mask = labels.astype(np.int64) - 1
    mask[labels == 0] = IGNORE
    return mask.astype(np.uint8)


def mask_to_labels(mask: np.ndarray) -> np.ndarray:
    """mask (classes 0..C-1, IGNORE) -> napari labels (k + 1, 0 for unlabeled)."""
    mask = np.asarray(mask)
    labels = mask.astype(np.uint8) + np.uint8(1)  # classes are 0..254, so labels fit in uint8
    labels[mask == IGNORE] = 0
    return labels
