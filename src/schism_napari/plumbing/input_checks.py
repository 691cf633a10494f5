"""The one place that checks what a user's input file holds before any work is done on it.

Every check ends in a :class:`DataError` naming the file and the value at fault: pixels that are
not finite, more axes than a 3D stack, a declared size that cannot fit in memory or on disk. The
outputs' OME-NGFF metadata is written from here too; the input's voxel size, which it carries
(Fiji, Avizo, napari), is read in :mod:`.data.voxels`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.voxels import VoxelSize
from ..errors import DataError

if TYPE_CHECKING:
    from types import EllipsisType

    from numpy.typing import DTypeLike

    from .array_types import StackArray

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


def check_disk(needed: int, folder: Path, path: str | Path, planned: int = 0) -> None:
    """Refuse when the outputs for ``path`` cannot fit on the disk holding ``folder``, beside the
    ``planned`` bytes of the inputs before it in the same command."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if needed + planned > free:
        before = f" ({_gb(needed + planned)} with the inputs before it)" if planned else ""
        raise DataError(f"{path}: its outputs need about {_gb(needed)}{before} in {folder}; {_gb(free)} is free there")


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
    planned: int = 0,
) -> None:
    """A declared size is checked against memory (one slice at a time) and disk before any work;
    ``planned``: bytes the outputs of earlier inputs of the same command will take."""
    per_pixel = 4 * (_WORKING_FLOATS_PER_CLASS * class_count + _WORKING_FLOATS + 2 * channels)
    check_memory(height * width * per_pixel, path, f"predicting one {height}x{width} slice")
    check_disk(output_bytes, out, path, planned)


def _gb(size: int) -> str:
    return f"{size / GB:.1f} GB" if size >= GB / 10 else f"{size / 1024**2:.0f} MB"


# ---- reading lazily, safely -------------------------------------------------------------------------


class CheckedSlices:
    """A read-only view of a lazy input array that names the file when a read fails and replaces
    non-finite pixels (NaN/inf) by the slice's finite mean, counting them for one warning.

    Without it a truncated TIFF fails mid-prediction with a decoder traceback, and NaN pixels
    spread through the convolutions to NaN probabilities several times their number.
    """

    def __init__(self, array: StackArray, path: str | Path):
        self.array, self.path = array, path
        self.shape, self.ndim, self.dtype = tuple(array.shape), len(array.shape), np.dtype(array.dtype)
        self.replaced = 0

    def __getitem__(self, index: int | slice | EllipsisType) -> np.ndarray:
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

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
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


# ---- OME-NGFF metadata of the outputs (voxel sizes are read in data.voxels) ------------------------


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
