"""Voxel sizes of stacks, and reslicing stacks into XZ/YZ planes for training.

``voxel_ratio`` is the Z voxel size divided by the XY pixel size: 1 for isotropic CT, much more
for serial-section EM. Planes across the slices are resampled along Z by that ratio so their
pixels are square, as the XY slices' are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def voxel_ratio_from_file(path: Path) -> float | None:
    """Z voxel size / X pixel size from an ImageJ TIFF or an OME-Zarr, or None when not recorded."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_ratio(path)
        if path.suffix == ".zarr" or path.is_dir():
            return _zarr_ratio(path)
    except Exception:  # unreadable metadata is no voxel size, not an error: the image itself opens elsewhere
        return None
    return None


def _tiff_ratio(path: Path) -> float | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        metadata = tif.imagej_metadata or {}
        spacing = metadata.get("spacing")
        tag = tif.pages[0].tags.get("XResolution")
        if spacing is None or tag is None:
            return None
        numerator, denominator = tag.value
        if not numerator:
            return None
        pixel = denominator / numerator  # units per pixel
        return float(spacing) / pixel


def _zarr_ratio(path: Path) -> float | None:
    """From OME-Zarr ``multiscales`` scale transforms of the store or its parent group."""
    import zarr

    for candidate in (path, path.parent):
        try:
            node = zarr.open(str(candidate), mode="r")
        except Exception:
            continue
        ratio = _multiscales_ratio(dict(node.attrs))
        if ratio is not None:
            return ratio
    return None


def _multiscales_ratio(attrs: Mapping[str, Any]) -> float | None:
    """Z / X scale of the first dataset of OME-Zarr ``multiscales`` (0.4, or 0.5's ``ome`` key).

    The attributes are whatever JSON the file holds: anything malformed, or a non-positive
    scale, is no voxel size (None) rather than an error.
    """
    ome = attrs.get("ome")
    multiscales = attrs.get("multiscales") or (ome.get("multiscales") if isinstance(ome, Mapping) else None)
    if not isinstance(multiscales, Sequence) or not multiscales or not isinstance(multiscales[0], Mapping):
        return None
    datasets = multiscales[0].get("datasets")
    if not isinstance(datasets, Sequence) or not datasets or not isinstance(datasets[0], Mapping):
        return None
    transforms = datasets[0].get("coordinateTransformations")
    for transform in transforms if isinstance(transforms, Sequence) else []:
        if not isinstance(transform, Mapping) or transform.get("type") != "scale":
            continue
        scale = transform.get("scale")
        if isinstance(scale, Sequence) and len(scale) >= 3:
            z, x = scale[-3], scale[-1]
            if isinstance(z, int | float) and isinstance(x, int | float) and z > 0 and x > 0:
                return float(z) / float(x)
    return None


def resample_depth(array: np.ndarray, ratio: float, *, nearest: bool = False) -> np.ndarray:
    """Stretch axis 0 by ``ratio`` (linear, or nearest for masks), pixel centres aligned; dtype kept."""
    depth = array.shape[0]
    target = max(1, round(depth * ratio))
    if target == depth:
        return array
    positions = np.clip((np.arange(target) + 0.5) * depth / target - 0.5, 0, depth - 1)
    if nearest:
        return array[np.rint(positions).astype(int)]
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, depth - 1)
    weight = (positions - low).reshape((-1,) + (1,) * (array.ndim - 1)).astype(np.float32)
    mixed = array[low].astype(np.float32) * (1 - weight) + array[high].astype(np.float32) * weight
    if np.issubdtype(array.dtype, np.integer):
        mixed = np.rint(mixed)
    return mixed.astype(array.dtype)


def orthogonal_planes(
    image: np.ndarray, mask: np.ndarray | None, count: int, ratio: float = 1.0
) -> list[tuple[str, int, np.ndarray, np.ndarray | None]]:
    """``count`` evenly spaced XZ planes and as many YZ planes of a stack, resampled to square pixels.

    ``image`` is (Z, Y, X, C), ``mask`` (Z, Y, X) or None; returns (axis name, position, plane
    (Z', other, C), mask plane or None) tuples.
    """
    planes = []
    for axis, name in ((1, "xz"), (2, "yz")):
        length = image.shape[axis]
        for position in np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int)):
            plane = np.take(image, position, axis=axis)
            plane_mask = None if mask is None else np.take(mask, position, axis=axis)
            if ratio != 1.0:
                plane = resample_depth(plane, ratio)
                plane_mask = None if plane_mask is None else resample_depth(plane_mask, ratio, nearest=True)
            planes.append((name, int(position), np.ascontiguousarray(plane), plane_mask))
    return planes
