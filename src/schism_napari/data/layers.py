"""Dataset files -> the arrays napari shows: one path for the reader and the Dataset widget.

Images are read as ``(N, Y, X, C)`` slices and become ``(Z,) Y, X (, C)`` layer data (single
slices squeezed, one channel dropped); masks are decoded with one encoding for the dataset and
become Labels (class k shown as k + 1, 0 for unlabeled).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .discovery import DatasetFolder
from .io import IGNORE, decode_mask, read_image, read_mask, shared_encoding
from .labels import mask_to_labels


def image_layer_data(images: Sequence[np.ndarray]) -> tuple[np.ndarray, bool]:
    """Slices read by :func:`read_image` -> layer data and whether it is RGB(A)."""
    stack = np.concatenate(list(images))
    rgb = stack.shape[-1] > 1
    data = stack if rgb else stack[..., 0]
    return (data[0] if data.shape[0] == 1 else data), rgb


def labels_layer_data(
    raws: Sequence[np.ndarray],
    paths: Sequence[Path],
    class_count: int,
    *,
    source: str,
    class_colors: list[tuple[int, int, int]] | None = None,
    ignore_index: int = IGNORE,
    encoding: str | None = None,
) -> np.ndarray:
    """Masks read by :func:`read_mask` -> Labels data; ``encoding`` defaults to the one the masks share."""
    if encoding is None:
        encoding = shared_encoding(list(raws), class_count, ignore_index, source)
    decoded = [
        decode_mask(raw, class_count, ignore_index, str(path), class_colors, encoding)
        for raw, path in zip(raws, paths, strict=True)
    ]
    masks = np.concatenate(decoded)
    return mask_to_labels(masks[0] if masks.shape[0] == 1 else masks)


def read_pair(
    dataset: DatasetFolder,
    indices: Sequence[int],
    class_count: int,
    *,
    class_colors: list[tuple[int, int, int]] | None = None,
    ignore_index: int = IGNORE,
    encoding: str | None = None,
) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """Images ``indices`` of a dataset (and their masks when it has some) as layer data.

    Returns ``(image data, rgb, labels data or None)``. Pass the dataset's ``encoding`` when
    reading a few masks of many, so they decode as training will decode them.
    """
    image, rgb = image_layer_data([read_image(dataset.images[i]) for i in indices])
    if not dataset.masks:
        return image, rgb, None
    paths = [dataset.masks[i] for i in indices]
    labels = labels_layer_data(
        [read_mask(p) for p in paths],
        paths,
        class_count,
        source=dataset.name,
        class_colors=class_colors,
        ignore_index=ignore_index,
        encoding=encoding,
    )
    return image, rgb, labels
