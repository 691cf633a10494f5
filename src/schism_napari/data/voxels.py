"""Voxel sizes of images and stacks (read from TIFF/OME/zarr metadata), and reslicing stacks into
XZ/YZ planes for training.

``voxel_ratio`` is the Z voxel size divided by the XY pixel size: 1 for isotropic CT, much more
for serial-section EM. Planes across the slices are resampled along Z by that ratio so their
pixels are square, as the XY slices' are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def voxel_ratio_from_file(path: Path) -> float | None:
    """Z voxel size / X pixel size of an ImageJ/OME TIFF or an OME-Zarr, or None when not recorded."""
    size = read_voxel_size(path)
    if size is None or size.z is None or not size.z > 0 or not size.x > 0:
        return None
    return size.z / size.x


@dataclass(frozen=True)
class VoxelSize:
    """Physical pixel size of an image (x, y and, for stacks, z) in ``unit`` (UDUNITS name)."""

    x: float
    y: float
    z: float | None = None
    unit: str | None = None

    @property
    def imagej_unit(self) -> str:
        return {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "angstrom": "A"}.get(
            self.unit or "", self.unit or "pixel"
        )


_UNITS = {
    "micron": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "\\u00b5m": "micrometer",
    "micrometer": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "cm": "centimeter",
    "centimeter": "centimeter",
    "m": "meter",
    "meter": "meter",
    "a": "angstrom",
    "å": "angstrom",
    "angstrom": "angstrom",
    "inch": "inch",
}


def unit_name(unit: Any) -> str | None:
    """A UDUNITS name for ImageJ/OME spellings ("micron", "µm", "um"); None when unknown."""
    if unit is None:
        return None
    return _UNITS.get(str(unit).strip().lower())


def read_voxel_size(path: str | Path) -> VoxelSize | None:
    """The input's voxel size from OME metadata, ImageJ spacing, TIFF resolution tags or zarr
    attributes (OME-NGFF ``coordinateTransformations``); None when the file does not say."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_voxel_size(path)
        if path.suffix == ".zarr" or path.is_dir():
            return _zarr_voxel_size(path)
    except Exception:  # metadata is optional: a file that cannot say simply has no scale
        return None
    return None


def _tiff_voxel_size(path: Path) -> VoxelSize | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            found = _ome_voxel_size(tif.ome_metadata)
            if found is not None:
                return found
        page = tif.pages.first
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        x, y = (_per_pixel(tags[name].value) for name in ("XResolution", "YResolution"))
        if x is None or y is None:
            return None
        imagej = tif.imagej_metadata or (tif.shaped_metadata[0] if tif.shaped_metadata else {})
        unit = unit_name(imagej.get("unit"))
        resolution_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        if unit is None and resolution_unit in (2, 3):
            unit = "inch" if resolution_unit == 2 else "centimeter"
            if x == y == 1.0 or (resolution_unit == 2 and x == y and round(1 / x) in (72, 96, 300)):
                return None  # a screen/print DPI, not a measurement
        spacing = imagej.get("spacing")
        z = float(spacing) if spacing else None
        if x == y == 1.0 and unit is None and z is None:
            return None  # tifffile's default tags: no scale was recorded
        return VoxelSize(x, y, z, unit)


def _per_pixel(value: Any) -> float | None:
    numerator, denominator = value if isinstance(value, tuple) else (value, 1)
    if not numerator or not denominator:
        return None
    size = float(denominator) / float(numerator)
    return size if math.isfinite(size) and size > 0 else None


def _ome_voxel_size(xml: str) -> VoxelSize | None:
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if pixels is None:
        return None
    attributes = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    if "PhysicalSizeX" not in attributes:
        return None
    x = float(attributes["PhysicalSizeX"])
    y = float(attributes.get("PhysicalSizeY", x))
    z = float(attributes["PhysicalSizeZ"]) if "PhysicalSizeZ" in attributes else None
    return VoxelSize(x, y, z, unit_name(attributes.get("PhysicalSizeXUnit", "µm")))


def _zarr_voxel_size(path: Path) -> VoxelSize | None:
    """From the store's attributes or, for an array inside an OME-Zarr image, its group's."""
    import zarr

    for candidate, array_path in ((path, "0"), (path.parent, path.name)):
        try:
            attributes = dict(zarr.open(str(candidate), mode="r").attrs)
        except Exception:  # not a zarr node: no scale there
            continue
        found = _attributes_voxel_size(attributes, array_path)
        if found is not None:
            return found
    return None


def _attributes_voxel_size(attributes: Mapping[str, Any], array_path: str) -> VoxelSize | None:
    """OME-NGFF ``multiscales`` (0.4, or 0.5 under ``ome``), else plain ``voxel_size``/``resolution``/
    ``spacing`` (z, y, x) attributes. The attributes are whatever JSON the file holds: anything
    malformed, or a scale that is not a positive number, is no voxel size (None), not an error."""
    ome = attributes.get("ome")
    multiscales = attributes.get("multiscales") or (ome.get("multiscales") if isinstance(ome, Mapping) else None)
    if multiscales is None:
        scale = attributes.get("voxel_size") or attributes.get("resolution") or attributes.get("spacing")
        if isinstance(scale, Sequence) and len(scale) in (2, 3) and _positive_numbers(scale):
            values = [float(v) for v in scale]
            unit = attributes.get("unit")
            return VoxelSize(values[-1], values[-2], values[0] if len(values) == 3 else None, unit_name(unit) or unit)
        return None
    try:
        return _multiscales_voxel_size(multiscales, array_path)
    except (AttributeError, IndexError, KeyError, StopIteration, TypeError):
        return None


def _multiscales_voxel_size(multiscales: Any, array_path: str) -> VoxelSize | None:
    first = multiscales[0]
    datasets = first["datasets"]
    dataset = next((d for d in datasets if d.get("path") == array_path), datasets[0])
    scale = next(t["scale"] for t in dataset["coordinateTransformations"] if t.get("type") == "scale")
    if not isinstance(scale, Sequence) or len(scale) < 2 or not _positive_numbers(scale):
        return None
    axes = first.get("axes") or []
    names = [a["name"] if isinstance(a, Mapping) else str(a) for a in axes]
    if len(names) != len(scale):  # no (or mismatched) axes: the last ones are z, y, x as NGFF orders them
        names = [f"axis{i}" for i in range(len(scale))]
        names[-min(3, len(scale)) :] = ["z", "y", "x"][-min(3, len(scale)) :]
    units = {a["name"]: a.get("unit") for a in axes if isinstance(a, Mapping)}
    by_axis = dict(zip(names, scale, strict=True))
    z = by_axis.get("z")
    return VoxelSize(float(by_axis["x"]), float(by_axis["y"]), None if z is None else float(z), units.get("x"))


def _positive_numbers(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)


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
