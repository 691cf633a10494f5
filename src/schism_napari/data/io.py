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
# PIL modes whose pixels are wider than a byte per band (16-bit PNGs, 32-bit TIFFs read by PIL)
_PIL_DTYPES: dict[str, type[np.generic]] = {
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I;16N": np.uint16,
    "I": np.int32,
    "F": np.float32,
}


def read_image(path: str | Path) -> np.ndarray:
    """Return the image as slices ``(N, Y, X, C)`` in its stored dtype (N = 1 for a 2D image)."""
    array, axes = _read_with_axes(Path(path))
    return _to_slices(array, axes, Path(path))


def read_mask(path: str | Path) -> np.ndarray:
    """Return a mask as ``(N, Y, X)``, or ``(N, Y, X, 3)`` for a colour-coded RGB mask."""
    path = Path(path)
    array, axes = _read_with_axes(path)
    slices = _to_slices(array, axes, path)
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
                _check_declared_size(series.shape, series.dtype, path)
                return series.asarray(), series.axes
        from PIL import Image

        with Image.open(path) as image:
            dtype = np.dtype(_PIL_DTYPES.get(image.mode, np.uint8))
            _check_declared_size((image.height, image.width, len(image.getbands())), dtype, path)
            array = np.asarray(image)
        return array, "YXS" if array.ndim == 3 else "YX"
    except DataError:
        raise
    except Exception as error:  # tifffile/PIL raise many types for broken files
        raise DataError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None


def _check_declared_size(shape: tuple[int, ...], dtype: np.dtype, path: Path) -> None:
    """A header can declare any size: check it against the memory available before decoding."""
    from ..plumbing.input_checks import check_memory

    size = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    check_memory(2 * size, path, f"reading its {'x'.join(str(v) for v in shape)} pixels")


def _slice_plan(shape: tuple[int, ...], axes: str, path: Path) -> tuple[list[int], bool, tuple[int, int, int, int]]:
    """How to turn an array of ``shape``/``axes`` into (N, Y, X, C): transpose order, whether a
    channel axis exists, and the final shape (alpha dropped)."""
    ndim = len(shape)
    if len(axes) != ndim:  # unusual metadata: fall back to shape
        axes = "YX" if ndim == 2 else "Q" * (ndim - 2) + "YX"
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: cannot find the Y and X axes (tifffile axes {axes!r}, shape {shape})")
    channel_axes = [i for i, a in enumerate(axes) if a in "SC" and shape[i] > 1]
    if len(channel_axes) > 1:
        raise DataError(f"{path}: more than one channel axis (axes {axes!r}, shape {shape})")
    order = [i for i in range(ndim) if i not in channel_axes and axes[i] not in "YX"]
    stacked = [i for i in order if shape[i] > 1]
    if len(stacked) > 1:  # (T, Z, Y, X) and the like: flattening them into one stack would mix them
        raise DataError(
            f"{path}: {len(stacked) + 2}D data (axes {''.join(axes[i] for i in stacked)}YX, shape {shape}); "
            "give a 2D image or one 3D stack per file (split time points or other axes into separate files)"
        )
    order += [axes.index("Y"), axes.index("X"), *channel_axes]
    channels = shape[channel_axes[0]] if channel_axes else 1
    if channel_axes and axes[channel_axes[0]] == "S" and channels in (2, 4):
        channels -= 1  # gray + alpha, RGBA: alpha dropped
    count = int(np.prod([shape[i] for i in order[: -3 if channel_axes else -2]], dtype=np.int64))
    return order, bool(channel_axes), (count, shape[axes.index("Y")], shape[axes.index("X")], channels)


def _to_slices(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.iscomplexobj(array):
        raise DataError(f"{path}: complex images are not supported")
    order, has_channels, final = _slice_plan(array.shape, axes, path)
    array = np.transpose(array, order)
    if not has_channels:
        array = array[..., np.newaxis]
    return array[..., : final[3]].reshape(final)


def image_header(path: str | Path) -> tuple[tuple[int, int, int, int], np.dtype]:
    """(N, Y, X, C) and dtype of an image without decoding its pixels where the format allows."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return _slice_plan(tuple(series.shape), series.axes, path)[2], np.dtype(series.dtype)
        from PIL import Image

        with Image.open(path) as image:
            dtype = np.asarray(image.crop((0, 0, 1, 1))).dtype
            bands = [band for band in image.getbands() if band != "A"]
            return (1, image.height, image.width, min(len(bands), 3)), dtype
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot read image header ({type(error).__name__}: {error})") from None


def unit_range(dtype: np.dtype) -> tuple[float, float]:
    """The values that map to 0 and 1: the full range of 8- and 16-bit integers (SCHISM's units,
    without its clipping of 16-bit data at 255); floats and 32/64-bit integers stay as they are,
    since their full range says nothing about the data's."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def gray_levels(class_count: int) -> np.ndarray:
    """SCHISM's mask encoding: class k written as round(k * 255 / (C - 1))."""
    return np.round(np.linspace(0, 255, class_count)).astype(np.int64)


def truncated_gray_levels(class_count: int) -> np.ndarray:
    """The levels of SCHISM's own mask normalisation tool: int(linspace), 0/127/255 for three classes."""
    return np.linspace(0, 255, class_count).astype(np.int64)


def level_encodings(class_count: int) -> dict[str, np.ndarray]:
    """Both spellings of SCHISM's evenly spread gray levels (identical for 2 and 4 classes)."""
    return {"levels": gray_levels(class_count), "int_levels": truncated_gray_levels(class_count)}


def schism_background(class_count: int, ignore_background: bool) -> bool:
    """SCHISM's ``ignore_background``: num_classes counts the foreground classes and gray 0 is an
    ignored background (0/85/170/255 -> unlabeled, 0, 1, 2). SCHISM's binary models ignore it."""
    return ignore_background and class_count > 2


def infer_class_count(values: np.ndarray, ignore_index: int = 255) -> int | None:
    """Guess the number of classes from the distinct values of stored masks, or None.

    Plain classes 0..C-1 (small values) first, then SCHISM gray levels, where 255 is the last
    class rather than the ignore value.
    """
    present = sorted(int(v) for v in np.unique(values))
    if not present:
        return None
    labelled = [v for v in present if v != ignore_index]
    if labelled and labelled[-1] < 64:
        return max(2, labelled[-1] + 1)
    if present[-1] == 255:
        for count in range(2, 256):
            if any(set(present) <= set(levels.tolist()) for levels in level_encodings(count).values()):
                return count
    return None


def choose_encoding(
    values: np.ndarray, class_count: int, ignore_index: int, source: str, ignore_background: bool = False
) -> str:
    """How stored mask values map to classes, decided once for all masks of a dataset.

    "plain": classes 0..C-1 plus ``ignore_index`` for unlabeled pixels; "levels": SCHISM's gray
    levels, round(linspace); "int_levels": int(linspace), as SCHISM's normalisation tool writes
    them; "minmax": a two-valued binary mask (SCHISM normalises those to 0/1). When only 0 and
    255 occur, SCHISM's reading (255 = last class) wins over "class 0 + unlabeled".
    With SCHISM's ``ignore_background`` (see :func:`schism_background`), "background_levels" /
    "background_int_levels" (C + 1 levels) and "background_plain" (0..C) read 0 as unlabeled.
    """
    present = set(int(v) for v in values)
    if schism_background(class_count, ignore_background):
        return _background_encoding(present, class_count, ignore_index, source)
    plain = set(range(class_count)) | {ignore_index}
    levels = gray_levels(class_count)
    level_set = set(levels.tolist())
    has_middle_class = bool(present & set(range(1, class_count)) - {ignore_index})
    if present <= plain and (has_middle_class or not present <= level_set):
        return "plain"
    if present <= level_set | {ignore_index}:
        return "levels"
    if present <= set(truncated_gray_levels(class_count).tolist()) | {ignore_index}:
        return "int_levels"
    if class_count == 2 and len(present) == 2:
        return "minmax"
    shown = ", ".join(str(v) for v in sorted(present)[:12]) + (" ..." if len(present) > 12 else "")
    hint = ""
    if class_count > 2 and any(present <= set(v.tolist()) for v in level_encodings(class_count + 1).values()):
        hint = f" (or [Loss] ignore_background = True: SCHISM's gray 0 background + {class_count} classes)"
    raise DataError(
        f"{source}: mask values [{shown}] do not fit {class_count} classes: expected 0..{class_count - 1} "
        f"(and {ignore_index} for unlabeled) or SCHISM gray levels {levels.tolist()}; check num_classes{hint}"
    )


def _background_encoding(present: set[int], class_count: int, ignore_index: int, source: str) -> str:
    """SCHISM's ignore_background: C foreground classes after an ignored gray 0."""
    if present <= set(range(class_count + 1)) | {ignore_index}:
        return "background_plain"
    for name, levels in level_encodings(class_count + 1).items():
        if present <= set(levels.tolist()):
            return f"background_{name}"
    shown = ", ".join(str(v) for v in sorted(present)[:12]) + (" ..." if len(present) > 12 else "")
    raise DataError(
        f"{source}: mask values [{shown}] do not fit {class_count} classes with ignore_background = True "
        f"(SCHISM's meaning: gray 0 is an ignored background, then {class_count} classes): expected "
        f"0..{class_count} or gray levels {gray_levels(class_count + 1).tolist()}; check num_classes"
    )


def encoding_lut(encoding: str, class_count: int, ignore_index: int, size: int) -> np.ndarray:
    """Stored value -> class (or IGNORE, or -1 for values the encoding does not know)."""
    lut = np.full(size, -1, dtype=np.int64)
    background = encoding.startswith("background_")
    if background:
        encoding = encoding.removeprefix("background_")
    count = class_count + 1 if background else class_count
    classes = np.arange(count) - 1 if background else np.arange(count)
    if encoding == "plain":
        lut[:count] = classes
        lut[ignore_index] = IGNORE
    else:  # 255 is the last gray level, not "unlabeled"
        lut[ignore_index] = IGNORE
        lut[level_encodings(count)[encoding]] = classes
    if background:
        lut[0] = IGNORE
    return lut


def shared_encoding(
    raws: list[np.ndarray], class_count: int, ignore_index: int, source: str, ignore_background: bool = False
) -> str | None:
    """One encoding for all masks of a dataset, from the union of their values: a single mask
    cannot tell 255 = "unlabeled" from 255 = "last SCHISM gray level". None without gray masks."""
    gray = [raw for raw in raws if raw.ndim == 3]
    if not gray:
        return None
    values = np.unique(np.concatenate([mask_values(raw) for raw in gray]))
    return choose_encoding(values, class_count, ignore_index, source, ignore_background)


def decode_mask(
    raw: np.ndarray,
    class_count: int,
    ignore_index: int,
    path: str,
    class_colors: list[tuple[int, int, int]] | None = None,
    encoding: str | None = None,
    ignore_background: bool = False,
) -> np.ndarray:
    """Map a stored mask ``(N, Y, X)`` to classes 0..C-1 (uint8) with :data:`IGNORE` for unlabeled.

    Accepted: plain classes 0..C-1 (plus ``ignore_index``), SCHISM's evenly spread gray
    levels, two-valued binary masks, and RGB masks whose colours are listed in class_dict.csv.
    ``encoding`` (see :func:`choose_encoding`) is decided from this mask alone when not given.
    """
    if raw.ndim == 4:  # (N, Y, X, 3) colour-coded, as read_mask returns it
        if class_colors is None:
            raise DataError(f"{path}: RGB mask but no class_dict.csv gives the class colours")
        return _decode_colors(raw, class_colors, path)
    raw = as_integer_mask(raw, path)
    values = _unique_values(raw)
    if encoding is None:
        encoding = choose_encoding(values, class_count, ignore_index, path, ignore_background)
    size = int(max(values.max(initial=0), ignore_index, 255)) + 1
    lut = np.full(size, -1, dtype=np.int64)
    if encoding != "minmax":
        lut = encoding_lut(encoding, class_count, ignore_index, size)
    elif len(values) == 2:  # minmax
        lut[values[0]], lut[values[1]] = 0, 1
    else:
        lut[values[0]] = 0 if values[0] == 0 else 1
    if (lut[values] < 0).any():
        bad = values[lut[values] < 0]
        raise DataError(f"{path}: mask values {bad[:12].tolist()} do not fit the dataset's other masks")
    return lut[raw].astype(np.uint8)


def as_integer_mask(raw: np.ndarray, path: str) -> np.ndarray:
    """Class values as integers; ``path`` names the mask file in the message when they are not."""
    if np.issubdtype(raw.dtype, np.floating):
        finite = np.isfinite(raw)
        if not finite.all():
            bad = raw.size - int(finite.sum())
            raise DataError(f"{path}: mask has {bad} NaN/infinite value(s); classes are whole numbers 0, 1, 2...")
        fractional = raw != np.round(raw)
        if fractional.any():
            raise DataError(
                f"{path}: mask values must be whole numbers (class indices), found {float(raw[fractional][0])!r}"
            )
        raw = raw.astype(np.int64)
    if raw.size and raw.min() < 0:
        raise DataError(f"{path}: mask has negative values (min {raw.min()})")
    return raw


def mask_values(raw: np.ndarray) -> np.ndarray:
    """Distinct values of a stored (non-RGB) mask."""
    return _unique_values(as_integer_mask(raw, "mask"))


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
