"""Reading images and masks from TIFF and PNG into one layout: slices of (Y, X, C).

TIFF axes come from tifffile's series metadata, so an RGB image ('YXS') and a three-slice
stack ('ZYX' or 'QYX') are told apart by what the file says, not by its shape.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
IGNORE = 255  # in-memory mask value for unlabeled pixels (classes are 0..254)


def read_image(path: str | Path) -> np.ndarray:
    """Return the image as slices ``(N, Y, X, C)`` in its stored dtype (N = 1 for a 2D image)."""
    array, axes = _read_with_axes(Path(path))
    return _to_slices(array, axes, Path(path), drop_alpha=True)


def read_mask(path: str | Path) -> np.ndarray:
    """Return a mask as ``(N, Y, X)``, or ``(N, Y, X, 3)`` for a colour-coded RGB mask."""
    path = Path(path)
    array, axes = _read_with_axes(path)
    slices = _to_slices(array, axes, path, drop_alpha=True)
    if slices.shape[-1] == 1:
        return slices[..., 0]
    if slices.shape[-1] == 3:
        return slices
    raise DataError(f"{path}: a mask must have one channel (or be RGB with a class_dict.csv), found {slices.shape[-1]}")


def _read_with_axes(path: Path) -> tuple[np.ndarray, str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return series.asarray(), series.axes
        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image)
        return array, "YXS" if array.ndim == 3 else "YX"
    except DataError:
        raise
    except Exception as error:  # tifffile/PIL raise many types for broken files
        raise DataError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None


def _to_slices(array: np.ndarray, axes: str, path: Path, *, drop_alpha: bool) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.iscomplexobj(array):
        raise DataError(f"{path}: complex images are not supported")
    if len(axes) != array.ndim:  # unusual metadata: fall back to shape
        axes = "YX" if array.ndim == 2 else "Q" * (array.ndim - 2) + "YX"
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: cannot find the Y and X axes (tifffile axes {axes!r}, shape {array.shape})")
    channel_axes = [i for i, a in enumerate(axes) if a in "SC" and array.shape[i] > 1]
    if len(channel_axes) > 1:
        raise DataError(f"{path}: more than one channel axis (axes {axes!r}, shape {array.shape})")
    order = [i for i in range(array.ndim) if i not in channel_axes and axes[i] not in "YX"]
    order += [axes.index("Y"), axes.index("X"), *channel_axes]
    array = np.transpose(array, order)
    if not channel_axes:
        array = array[..., np.newaxis]
    if drop_alpha and channel_axes and axes[channel_axes[0]] == "S" and array.shape[-1] == 4:
        array = array[..., :3]
    height, width, channels = array.shape[-3:]
    return array.reshape(-1, height, width, channels)


def unit_range(dtype: np.dtype) -> tuple[float, float]:
    """The values that map to 0 and 1: the full range of integer types, 0..1 for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def gray_levels(class_count: int) -> np.ndarray:
    """SCHISM's mask encoding: class k written as round(k * 255 / (C - 1))."""
    return np.round(np.linspace(0, 255, class_count)).astype(np.int64)


def decode_mask(
    raw: np.ndarray,
    class_count: int,
    ignore_index: int,
    path: str,
    class_colors: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Map a stored mask ``(N, Y, X)`` to classes 0..C-1 (uint8) with :data:`IGNORE` for unlabeled.

    Accepted: plain classes 0..C-1 (plus ``ignore_index``), SCHISM's evenly spread gray
    levels, two-valued binary masks, and RGB masks whose colours are listed in class_dict.csv.
    """
    if raw.ndim == 4:  # (N, Y, X, 3) colour-coded, as read_mask returns it
        if class_colors is None:
            raise DataError(f"{path}: RGB mask but no class_dict.csv gives the class colours")
        return _decode_colors(raw, class_colors, path)
    if np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise DataError(f"{path}: mask values must be whole numbers")
        raw = raw.astype(np.int64)
    if raw.size and (raw.min() < 0):
        raise DataError(f"{path}: mask has negative values (min {raw.min()})")
    values = _unique_values(raw)
    plain = set(range(class_count)) | {ignore_index}
    lut_size = int(max(values.max(initial=0), ignore_index)) + 1
    lut = np.full(lut_size, -1, dtype=np.int64)
    if set(values.tolist()) <= plain:
        lut[:class_count] = np.arange(class_count)
        lut[ignore_index] = IGNORE
    else:
        levels = gray_levels(class_count)
        allowed_levels = set(levels.tolist())
        if ignore_index not in allowed_levels:
            allowed_levels.add(ignore_index)
        if set(values.tolist()) <= allowed_levels:
            if ignore_index not in set(levels.tolist()):
                lut[ignore_index] = IGNORE
            lut[levels] = np.arange(class_count)
        elif class_count == 2 and len(values) == 2:
            lut[values[0]], lut[values[1]] = 0, 1  # SCHISM normalises binary masks to min/max
        else:
            shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
            raise DataError(
                f"{path}: mask values [{shown}] do not fit {class_count} classes: expected 0..{class_count - 1} "
                f"(and {ignore_index} for unlabeled) or SCHISM gray levels {levels.tolist()}; "
                "check num_classes"
            )
    return lut[raw].astype(np.uint8)


def _unique_values(raw: np.ndarray) -> np.ndarray:
    if raw.dtype in (np.uint8, np.uint16) and raw.size:
        return np.flatnonzero(np.bincount(raw.ravel(), minlength=1))
    return np.unique(raw)


def _decode_colors(raw: np.ndarray, colors: list[tuple[int, int, int]], path: str) -> np.ndarray:
    flat = raw.reshape(-1, 3).astype(np.int64)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    out = np.full(codes.shape, -1, dtype=np.int64)
    for index, (r, g, b) in enumerate(colors):
        out[codes == ((r << 16) | (g << 8) | b)] = index
    if (out < 0).any():
        bad = flat[np.argmax(out < 0)]
        raise DataError(f"{path}: colour {tuple(int(v) for v in bad)} is not in class_dict.csv")
    return out.reshape(raw.shape[:-1]).astype(np.uint8)


def read_class_dict(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Read ``class_dict.csv`` (columns name, r, g, b) as class names and colours."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    if not rows:
        raise DataError(f"{path}: empty class_dict.csv")
    header = [h.strip().lower() for h in rows[0]]
    try:
        columns = [header.index(k) for k in ("name", "r", "g", "b")]
    except ValueError:
        raise DataError(f"{path}: class_dict.csv needs the columns name,r,g,b (found {rows[0]})") from None
    names, colors = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            name, r, g, b = (row[i].strip() for i in columns)
            colors.append((int(r), int(g), int(b)))
        except (IndexError, ValueError):
            raise DataError(f"{path}: line {number} is not name,r,g,b: {row}") from None
        names.append(name)
    return names, colors
