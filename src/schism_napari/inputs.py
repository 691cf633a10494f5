"""The one place that checks what a user's input file holds before any work is done on it.

Every check ends in a :class:`DataError` naming the file and the value at fault: pixels that are
not finite, more axes than a 3D stack, a declared size that cannot fit in memory or on disk. The
voxel size is read here too, so outputs can carry the input's scale (Fiji, Avizo, napari).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

GB = 1024**3
# float32 accumulator + blended probabilities per class, normalised input, weights: bytes per pixel
_WORKING_FLOATS_PER_CLASS = 3
_WORKING_FLOATS = 6


def finite_check(array: np.ndarray, source: str | Path) -> None:
    """Refuse NaN/inf pixels (training data): a NaN loss later would not say where it came from."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(
            f"{source}: {bad} pixel(s) are NaN or infinite; replace them (e.g. with the image mean) before training"
        )


def available_memory() -> int:
    """Bytes of memory this process may still use: MemAvailable, capped by a cgroup limit less
    the cgroup's anonymous memory (its page cache can be reclaimed, so it does not count)."""
    available = _meminfo_available()
    for limit_file, stat_file, key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.stat", "anon"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.stat", "total_rss"),
    ):
        try:
            limit = Path(limit_file).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if limit != "max" and int(limit) < 1 << 60:
            used = _stat_value(Path(stat_file), key)
            available = min(available, int(limit) - used)
        break
    return max(available, 0)


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_memory(needed: int, path: str | Path, what: str) -> None:
    """Refuse before allocating when ``needed`` bytes exceed the memory available."""
    available = available_memory()
    if needed > available:
        raise DataError(f"{path}: {what} needs about {_gb(needed)} of memory; {_gb(available)} is available")


def check_disk(needed: int, folder: Path, path: str | Path) -> None:
    """Refuse when the outputs for ``path`` cannot fit on the disk holding ``folder``."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if needed > free:
        raise DataError(f"{path}: its outputs need about {_gb(needed)} in {folder}; {_gb(free)} is free there")


def check_prediction_resources(
    path: str | Path,
    *,
    count: int,
    height: int,
    width: int,
    channels: int,
    class_count: int,
    output_bytes: int,
    out: Path,
) -> None:
    """A declared size is checked against memory (one slice at a time) and disk before any work."""
    per_pixel = 4 * (_WORKING_FLOATS_PER_CLASS * class_count + _WORKING_FLOATS + 2 * channels)
    check_memory(height * width * per_pixel, path, f"predicting one {height}x{width} slice")
    check_disk(output_bytes, out, path)


def _gb(size: int) -> str:
    return f"{size / GB:.1f} GB" if size >= GB / 10 else f"{size / 1024**2:.0f} MB"


# ---- reading lazily, safely -------------------------------------------------------------------------


class CheckedSlices:
    """A read-only view of a lazy input array that names the file when a read fails and replaces
    non-finite pixels (NaN/inf) by the slice's finite mean, counting them for one warning.

    Without it a truncated TIFF fails mid-prediction with a decoder traceback, and NaN pixels
    spread through the convolutions to NaN probabilities several times their number.
    """

    def __init__(self, array: Any, path: str | Path):
        self.array, self.path = array, path
        self.shape, self.ndim, self.dtype = tuple(array.shape), len(array.shape), np.dtype(array.dtype)
        self.replaced = 0

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            values = np.asarray(self.array[index])
        except Exception as error:  # decoders raise many types for broken files
            raise DataError(f"{self.path}: cannot read image data ({type(error).__name__}: {error})") from None
        if not np.issubdtype(values.dtype, np.floating):
            return values
        finite = np.isfinite(values)
        bad = values.size - int(np.count_nonzero(finite))
        if not bad:
            return values
        self.replaced += bad
        fill = float(values[finite].mean()) if bad < values.size else 0.0
        return np.where(finite, values, np.asarray(fill, dtype=values.dtype))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self[...]
        return values if dtype is None else values.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def warning(self) -> str | None:
        if not self.replaced:
            return None
        return (
            f"{self.path}: {self.replaced} NaN/infinite pixel(s) were replaced by their slice's mean; "
            "their labels mean nothing"
        )


# ---- voxel size -------------------------------------------------------------------------------------


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
    import zarr

    node = zarr.open(str(path), mode="r")
    attributes: dict[str, Any] = dict(node.attrs)
    array_path = "0"
    if "multiscales" not in attributes and "ome" not in attributes:
        try:  # an array inside an OME-Zarr image: the scale is on its group
            parent: dict[str, Any] = dict(zarr.open_group(str(path.parent), mode="r").attrs)
        except Exception:
            parent = {}
        if "multiscales" in parent or "ome" in parent:
            attributes, array_path = parent, path.name
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not multiscales:
        scale = attributes.get("voxel_size") or attributes.get("resolution") or attributes.get("spacing")
        if scale and len(scale) in (2, 3):
            values = [float(v) for v in scale]
            return VoxelSize(values[-1], values[-2], values[0] if len(values) == 3 else None, attributes.get("unit"))
        return None
    first = multiscales[0]
    axes = first.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    units = {a["name"]: a.get("unit") for a in axes if isinstance(a, dict)}
    dataset = next((d for d in first["datasets"] if d.get("path") == array_path), first["datasets"][0])
    scale = next(t["scale"] for t in dataset["coordinateTransformations"] if t.get("type") == "scale")
    by_axis = dict(zip(names, scale, strict=False))
    if "x" not in by_axis or "y" not in by_axis:
        return None
    z = by_axis.get("z")
    return VoxelSize(float(by_axis["x"]), float(by_axis["y"]), None if z is None else float(z), units.get("x"))


def ngff_multiscales(name: str, axes: str, voxel: VoxelSize | None) -> list[dict[str, Any]]:
    """OME-NGFF 0.4 ``multiscales`` for one full-resolution array "0" with ``axes`` like "czyx"."""
    size = {"x": voxel.x if voxel else 1.0, "y": voxel.y if voxel else 1.0, "z": (voxel.z if voxel else None) or 1.0}
    described = []
    for axis in axes:
        if axis in "tc":
            described.append({"name": axis, "type": "time" if axis == "t" else "channel"})
        else:
            entry = {"name": axis, "type": "space"}
            if voxel is not None and voxel.unit:
                entry["unit"] = voxel.unit
            described.append(entry)
    scale = [1.0 if axis in "tc" else float(size[axis]) for axis in axes]
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": described,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]
