"""The napari label convention: Labels value 0 means "not painted", class k is shown as k + 1.

Masks in memory and on disk stay 0..C-1 (SCHISM) with 255 for unlabeled pixels, so a painted or
corrected napari Labels layer is training data as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .io import IGNORE

if TYPE_CHECKING:
    from ..plumbing.array_types import WritableSlabs


def labels_to_mask(labels: np.ndarray, class_count: int) -> np.ndarray:
    """napari labels (0 = unpainted, k + 1 = class k) -> mask (k, IGNORE for unpainted)."""
    labels = np.asarray(labels)
    if labels.size and labels.max() > class_count:
        from ..errors import DataError

        raise DataError(
            f"labels go up to {int(labels.max())} but the model has {class_count} classes "
            f"(label k + 1 is class k, so labels must be 0..{class_count})"
        )
    # one byte per voxel (a volume's mask is built whole): label 0 wraps round to 255 = IGNORE
    mask = labels.astype(np.uint8)
    mask -= np.uint8(1)
    return mask


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
    return Corrections(predicted, set(reviewed)).mask(edited, class_count)


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


class Corrections:
    """What the user did to a predicted Labels layer, kept across any number of predictions.

    A prediction layer mixes the model's labels with the user's work: pixels painted over with the
    brush and slices marked reviewed (right as they stand). Both must survive the next prediction,
    and both, and nothing else, are training labels; the rest of the layer is the model's own guess.
    So the model's labels are kept beside the layer (``predicted``), and every pixel ever found to
    differ from them is remembered (``edited``): a later prediction that happens to agree with an
    edit does not turn it back into a guess.
    """

    def __init__(self, predicted: np.ndarray, reviewed: set[int] | None = None) -> None:
        self.predicted: Any = np.array(predicted, dtype=np.uint8, copy=True)
        self.edited: Any = np.zeros(self.predicted.shape, dtype=bool)
        self.reviewed: set[int] = set() if reviewed is None else reviewed

    @classmethod
    def stored(cls, predicted: WritableSlabs, edited: WritableSlabs, reviewed: set[int] | None = None) -> Corrections:
        """Corrections kept in arrays on disk (a stack streamed to a store, see
        :mod:`.volume_store`), used as they are, not copied; new predictions merge into them slab
        by slab (:func:`.volume_store.write_labels`), not through :meth:`repredicted`."""
        corrections = cls.__new__(cls)
        corrections.predicted, corrections.edited = predicted, edited
        corrections.reviewed = set() if reviewed is None else reviewed
        return corrections

    def _check(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != self.predicted.shape:
            from ..errors import DataError

            raise DataError(
                f"the prediction {self.predicted.shape} and its corrected layer {labels.shape} differ in shape"
            )
        return labels

    def edits(self, labels: np.ndarray) -> np.ndarray:
        """Every pixel the user changed so far (True), given the layer's labels now."""
        return np.asarray(self.edited, dtype=bool) | (self._check(labels) != np.asarray(self.predicted))

    def kept(self, labels: np.ndarray) -> np.ndarray:
        """The user's pixels: edits and the whole of every reviewed slice."""
        keep = self.edits(labels)
        if self.reviewed:
            if keep.ndim == 2:
                keep[:] = True
            else:
                keep[sorted(z for z in self.reviewed if 0 <= z < keep.shape[0])] = True
        return keep

    def repredicted(self, labels: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The labels to show after a new prediction ``new``: the model's new labels, except where the
        user edited or reviewed, which keep what the layer holds (``labels``)."""
        labels, new = np.asarray(labels), np.asarray(new, dtype=np.uint8)
        if not new.shape == labels.shape == self.predicted.shape:  # another image size: nothing applies
            self.predicted, self.edited = np.array(new, copy=True), np.zeros(new.shape, dtype=bool)
            self.reviewed.clear()
            return np.array(new, copy=True)
        self.edited = self.edits(labels)
        kept = self.kept(labels)
        merged = np.where(kept, labels, new).astype(np.uint8)
        # a reviewed slice's unedited pixels stay the prediction the user reviewed, not edits: once the
        # review is cleared they are the model's again and the next prediction replaces them
        self.predicted = np.where(kept & ~self.edited, labels, new).astype(np.uint8)
        return merged

    def mask(self, labels: np.ndarray, class_count: int) -> np.ndarray:
        """The training mask: edited pixels and reviewed slices as classes, IGNORE elsewhere."""
        labels = self._check(labels)
        mask = labels_to_mask(labels, class_count)
        mask[~self.kept(labels)] = IGNORE
        return mask

    def review(self, z: int) -> None:
        self.reviewed.add(int(z))

    def unreview(self, z: int) -> None:
        """The slice is no longer taken whole: only its edited pixels count, and the next prediction
        replaces the rest."""
        self.reviewed.discard(int(z))
