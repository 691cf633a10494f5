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


def corrections_to_mask(
    predicted: np.ndarray, edited: np.ndarray, class_count: int, reviewed: set[int] | frozenset[int] = frozenset()
) -> np.ndarray:
    """A corrected prediction -> training mask: only what the user changed or reviewed is a label.

    ``predicted`` is the Labels data as the model produced it, ``edited`` the same layer after the
    user's corrections (napari labels, 0 = not painted). A pixel counts when its label differs from
    the prediction, or when it lies on a slice (first axis of a stack; any index for a 2D image) the
    user marked as reviewed; everything else becomes IGNORE. Training on the uncorrected rest would
    teach the model its own errors.
    """
    predicted, edited = np.asarray(predicted), np.asarray(edited)
    if predicted.shape != edited.shape:
        from ..errors import DataError

        raise DataError(f"the prediction {predicted.shape} and its corrected layer {edited.shape} differ in shape")
    mask = labels_to_mask(edited, class_count)
    keep = edited != predicted
    if reviewed:
        if edited.ndim == 2:
            keep[:] = True
        else:
            keep[sorted(z for z in reviewed if 0 <= z < edited.shape[0])] = True
    mask[~keep] = IGNORE
    return mask


def labelled_pixels(masks: list[np.ndarray], class_count: int) -> list[tuple[int, list[int]]]:
    """Per class: how many pixels are labelled and on which slices (first axis of 3D masks).

    ``masks`` are training masks (classes 0..C-1, IGNORE elsewhere); 2D masks count as slice 0.
    """
    counts = [0] * class_count
    slices: list[set[int]] = [set() for _ in range(class_count)]
    for mask in masks:
        stack = np.asarray(mask)
        stack = stack[None] if stack.ndim == 2 else stack
        for z, plane in enumerate(stack):
            per_class = np.bincount(plane.ravel(), minlength=256)[:class_count]
            for k in np.flatnonzero(per_class):
                counts[k] += int(per_class[k])
                slices[k].add(z)
    return [(counts[k], sorted(slices[k])) for k in range(class_count)]
