"""Prediction straight from and to files: open images lazily, stream results to disk.

TIFFs are read through tifffile's zarr view and zarr stores directly, so a volume larger than
memory is read slice by slice; labels and probabilities are written into memory-mapped TIFFs
(or a zarr store) under temporary names and renamed when complete.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SchismError


def open_lazy(path: Path) -> tuple[Any, bool]:
    """Open an image without loading it when possible: TIFF through its zarr view, zarr stores.

    Returns the array ((Z,) Y, X[, C]) and whether its last axis holds colour channels.
    """
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        try:
            array = zarr.open(str(path), mode="r")
        except Exception as error:
            raise SchismError(f"{path}: cannot open as a zarr array ({error})") from None
        if not hasattr(array, "shape"):
            raise SchismError(f"{path}: is a zarr group; give the array inside it")
        return array, False
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        import zarr

        try:
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
            plain = axes.replace("Q", "Z").replace("I", "Z")
            if plain in ("YX", "ZYX", "YXS", "ZYXS"):
                return zarr.open(tifffile.imread(path, aszarr=True), mode="r"), plain.endswith("S")
        except Exception:
            pass  # unusual layouts: read it whole below, which reports errors properly
    from ..data.io import read_image

    slices = read_image(path)
    if slices.shape[-1] == 1:
        return (slices[0, ..., 0] if slices.shape[0] == 1 else slices[..., 0]), False
    return (slices[0] if slices.shape[0] == 1 else slices), True


def check_channels(slices: Any, in_channels: int, path: Path) -> None:
    if slices.channels not in (1, in_channels) and not (in_channels == 1 and slices.channels == 3):
        raise SchismError(f"{path}: {slices.channels} channels, but the model takes {in_channels}")


def predict_to_files(
    predictor: Any, slices: Any, labels_path: Path, probabilities_path: Path | None, levels: Any
) -> list[Path]:
    """Stream slices into memory-mapped TIFFs (or a zarr store) beside their final names, then rename.

    Labels are (Z, Y, X) or (Y, X); probabilities (Z, C, Y, X) or (C, Y, X), in TIFF or zarr alike.
    Existing outputs are refused before any work starts.
    """
    import tifffile

    from ..atomic import OutputExistsError, atomic_path

    for target in (labels_path, probabilities_path):
        if target is not None and target.exists():
            raise OutputExistsError(f"{target} already exists; not overwriting it (choose another output)")
    classes = predictor.class_count
    maps: list[np.memmap] = []
    with contextlib.ExitStack() as stack:

        def tiff(path: Path, shape: tuple[int, ...], dtype: Any, axes: str) -> Any:
            temporary = stack.enter_context(atomic_path(path))
            maps.append(
                tifffile.memmap(temporary, shape=shape, dtype=dtype, photometric="minisblack", metadata={"axes": axes})
            )
            return maps[-1]

        per_slice = (classes, slices.height, slices.width)
        labels = tiff(labels_path, _shape(slices, per_slice[1:]), np.uint8 if classes <= 256 else np.uint16, "ZYX")
        probabilities = None
        if probabilities_path is not None and probabilities_path.suffix == ".zarr":
            probabilities = zarr_output(stack, probabilities_path, _shape(slices, per_slice))
        elif probabilities_path is not None:
            probabilities = tiff(probabilities_path, _shape(slices, per_slice), np.float32, "ZCYX")
        if not slices.is_stack:  # a 2D image stays 2D on disk; the predictor writes slice 0
            labels = _OnlySlice(labels)
            probabilities = None if probabilities is None else _OnlySlice(probabilities)
        predictor.predict(slices, keep_probabilities=False, labels_out=labels, probabilities_out=probabilities)
        if levels is not None:
            for z in range(slices.count):
                labels[z] = levels[labels[z]]
        for memory_map in maps:
            memory_map.flush()
        del labels, probabilities, maps[:]
    return [labels_path] + ([probabilities_path] if probabilities_path is not None else [])


def _shape(slices: Any, per_slice: tuple[int, ...]) -> tuple[int, ...]:
    return (slices.count, *per_slice) if slices.is_stack else per_slice


class _OnlySlice:
    """Lets a 2D output array stand where the predictor writes ``out[0]``."""

    def __init__(self, array: Any):
        self.array = array

    def __getitem__(self, index: int) -> Any:
        return self.array[...]

    def __setitem__(self, index: int, value: Any) -> None:
        self.array[...] = value


def zarr_output(stack: contextlib.ExitStack, path: Path, shape: tuple[int, ...]) -> Any:
    """A zarr array in a temporary folder, renamed to ``path`` when the block succeeds."""
    import zarr

    from ..atomic import OutputExistsError

    if path.exists():
        raise OutputExistsError(f"{path} already exists; not overwriting it (choose another output)")
    temporary = path.with_name(f".{path.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    chunks = (1,) * (len(shape) - 2) + tuple(shape[-2:])
    array = zarr.open_array(str(temporary), mode="w-", shape=shape, chunks=chunks, dtype="float32")

    def finish(exc_type: Any, exc: Any, traceback: Any) -> bool:
        if exc_type is not None:
            shutil.rmtree(temporary, ignore_errors=True)
            return False
        try:
            temporary.rename(path)
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
            raise OutputExistsError(f"{path} appeared while predicting; not overwriting it") from None
        return False

    stack.push(finish)
    return array
