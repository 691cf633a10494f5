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
    """Stream slices into memory-mapped TIFFs (or a zarr store) beside their final names, then rename."""
    import tifffile

    from ..atomic import atomic_path

    spatial = (slices.count, slices.height, slices.width)
    classes = predictor.class_count
    maps: list[np.memmap] = []
    with contextlib.ExitStack() as stack:

        def tiff(path: Path, shape: tuple[int, ...], dtype: Any, axes: str) -> np.ndarray:
            temporary = stack.enter_context(atomic_path(path))
            if not slices.is_stack:  # a 2D image stays 2D on disk
                shape, axes = shape[1:], axes[1:]
            maps.append(tifffile.memmap(temporary, shape=shape, dtype=dtype, metadata={"axes": axes}))
            return maps[-1] if slices.is_stack else maps[-1][np.newaxis]  # (1, ...) view writes through

        labels = tiff(labels_path, spatial, np.uint8 if classes <= 256 else np.uint16, "ZYX")
        probabilities = None
        if probabilities_path is not None and probabilities_path.suffix == ".zarr":
            probabilities = zarr_output(stack, probabilities_path, (slices.count, classes, *spatial[1:]))
        elif probabilities_path is not None:
            probabilities = tiff(probabilities_path, (slices.count, classes, *spatial[1:]), np.float32, "ZCYX")
        predictor.predict(slices, keep_probabilities=False, labels_out=labels, probabilities_out=probabilities)
        if levels is not None:
            for z in range(slices.count):
                labels[z] = levels[labels[z]]
        for memory_map in maps:
            memory_map.flush()
        del labels, probabilities, maps[:]
    return [labels_path] + ([probabilities_path] if probabilities_path is not None else [])


def zarr_output(stack: contextlib.ExitStack, path: Path, shape: tuple[int, ...]) -> Any:
    """A zarr array in a temporary folder, renamed to ``path`` when the block succeeds."""
    import zarr

    temporary = path.with_name(f".{path.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    array = zarr.open_array(str(temporary), mode="w-", shape=shape, chunks=(1, 1, *shape[2:]), dtype="float32")

    def finish(exc_type: Any, exc: Any, traceback: Any) -> bool:
        if exc_type is None:
            temporary.rename(path)
        else:
            shutil.rmtree(temporary, ignore_errors=True)
        return False

    stack.push(finish)
    return array
