"""Prediction straight from and to files: open images lazily, stream results to disk.

TIFFs are read through tifffile's zarr view and zarr stores directly, so a volume larger than
memory is read slice by slice. Outputs are written under temporary names and renamed when
complete: TIFFs (ImageJ hyperstacks carrying the input's voxel size) through the file API, one
slice at a time, so their pages never pile up in the process as a memory map's would; class
probabilities optionally as an OME-Zarr image (axes and scale in OME-NGFF metadata).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.voxels import VoxelSize
from ..errors import DataError, SchismError
from ..plumbing.input_checks import CheckedSlices, ngff_multiscales

if TYPE_CHECKING:
    from types import EllipsisType, TracebackType

    import tifffile
    import zarr
    from numpy.typing import ArrayLike, DTypeLike

    from .combined import CombinedPredictor
    from .predictor import Predictor, Slices


def open_lazy(path: Path) -> tuple[Any, bool]:
    """Open an image without loading it when possible: TIFF through its zarr view, zarr stores
    (an OME-Zarr image opens at full resolution).

    Returns the array ((Z,) Y, X[, C]) and whether its last axis holds colour channels. The array
    is wrapped in :class:`CheckedSlices`: a read that fails names the file, NaN/inf are replaced.
    """
    array, rgb = _open(path)
    spatial = len(array.shape) - (1 if rgb else 0)
    if spatial not in (2, 3):
        raise DataError(
            f"{path}: {spatial}D data of shape {tuple(array.shape)}; give a 2D image or one 3D stack (Z, Y, X) "
            "per file (split time points or other axes into separate files)"
        )
    return CheckedSlices(array, path), rgb


def _open(path: Path) -> tuple[Any, bool]:
    if path.suffix == ".zarr" or path.is_dir():
        return _open_zarr(path), False
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        import zarr

        missing: tuple[int, int] | None = None
        try:
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
                missing = _beyond_the_end(tif.series[0], path.stat().st_size)
            plain = axes.replace("Q", "Z").replace("I", "Z")
            if plain in ("YX", "ZYX", "YXS", "ZYXS") and missing is None:
                return zarr.open(tifffile.imread(path, aszarr=True), mode="r"), plain.endswith("S")
        except Exception:
            pass  # unusual layouts: read it whole below, which reports errors properly
        if missing is not None:  # newer tifffile zarr views read the missing part as zeros
            raise DataError(
                f"{path}: the file is cut short: its pixels need {missing[0]} bytes but it has {missing[1]} "
                "(an incomplete copy or download?)"
            )
    from ..data.io import read_image

    slices = read_image(path)
    if slices.shape[-1] == 1:
        return (slices[0, ..., 0] if slices.shape[0] == 1 else slices[..., 0]), False
    return (slices[0] if slices.shape[0] == 1 else slices), True


def _beyond_the_end(series: tifffile.TiffPageSeries, size: int) -> tuple[int, int] | None:
    """(bytes the series' pixel data reaches, the file's size) when the file ends before its data."""
    if series.dataoffset is not None:  # contiguous, uncompressed
        end = int(series.dataoffset) + int(series.nbytes)
    else:
        end = max(
            (
                int(offset) + int(count)
                for page in series.pages
                if page is not None
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)
            ),
            default=0,
        )
    return (end, size) if end > size else None


def _open_zarr(path: Path) -> Any:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise SchismError(f"{path}: cannot open as a zarr array ({type(error).__name__}: {error})") from None
    if hasattr(node, "shape"):
        return node
    attributes: dict[str, Any] = dict(node.attrs)
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if multiscales:  # OME-Zarr image: its full-resolution array
        first = multiscales[0]["datasets"][0]["path"]
        try:
            return node[first]
        except KeyError:
            raise SchismError(f"{path}: OME-Zarr metadata names array {first!r}, which is missing") from None
    raise SchismError(f"{path}: is a zarr group; give the array inside it")


def check_channels(slices: Slices, in_channels: int, path: Path) -> None:
    if slices.channels not in (1, in_channels) and not (in_channels == 1 and slices.channels == 3):
        raise SchismError(f"{path}: {slices.channels} channels, but the model takes {in_channels}")


def predict_to_files(
    predictor: Predictor | CombinedPredictor,
    slices: Slices,
    labels_path: Path,
    probabilities_path: Path | None,
    levels: np.ndarray | None,
    voxel_size: VoxelSize | None = None,
) -> list[Path]:
    """Stream slices into TIFFs (or an OME-Zarr image) beside their final names, then rename.

    Labels are (Z, Y, X) or (Y, X); probabilities (Z, C, Y, X) or (C, Y, X) in a TIFF, and
    (C, Z, Y, X) or (C, Y, X) in OME-Zarr (NGFF puts the channel axis before space). Every output
    carries ``voxel_size``. Existing outputs are refused before any work starts.
    """
    from ..plumbing.atomic import OutputExistsError
    from ..plumbing.claims import claimed_outputs

    targets = [target for target in (labels_path, probabilities_path) if target is not None]
    classes = predictor.class_count
    with contextlib.ExitStack() as stack:
        stack.enter_context(claimed_outputs(targets))  # the CLI holds them already: claims nest
        for target in targets:
            if target.exists():
                raise OutputExistsError(f"{target} already exists; not overwriting it (choose another output)")
        per_slice = (classes, slices.height, slices.width)
        labels_dtype = np.uint8 if classes <= 256 else np.uint16
        labels_axes, probabilities_axes = ("ZYX", "ZCYX") if slices.is_stack else ("YX", "CYX")
        labels: Any = tiff_output(
            stack, labels_path, _shape(slices, per_slice[1:]), labels_dtype, labels_axes, voxel_size
        )
        probabilities: Any = None
        if probabilities_path is not None and probabilities_path.suffix == ".zarr":
            probabilities = ome_zarr_output(stack, probabilities_path, slices, classes, voxel_size)
        elif probabilities_path is not None:
            probabilities = tiff_output(
                stack, probabilities_path, _shape(slices, per_slice), np.float32, probabilities_axes, voxel_size
            )
        if not slices.is_stack:  # a 2D image stays 2D on disk; the predictor writes slice 0
            labels = _OnlySlice(labels)
            probabilities = None if probabilities is None else _OnlySlice(probabilities)
        predictor.predict(slices, keep_probabilities=False, labels_out=labels, probabilities_out=probabilities)
        if levels is not None:
            for z in range(slices.count):
                labels[z] = levels[labels[z]]
    return [labels_path] + ([probabilities_path] if probabilities_path is not None else [])


def output_bytes(slices: Slices, class_count: int, probabilities: bool) -> int:
    """Bytes the labels (and probabilities) of ``slices`` take on disk, for the space check."""
    pixels = slices.count * slices.height * slices.width
    return pixels * (1 if class_count <= 256 else 2) + (pixels * class_count * 4 if probabilities else 0)


def _shape(slices: Slices, per_slice: tuple[int, ...]) -> tuple[int, ...]:
    return (slices.count, *per_slice) if slices.is_stack else per_slice


class _OnlySlice:
    """Lets a 2D output array stand where the predictor writes ``out[0]``."""

    def __init__(self, array: TiffSlices | zarr.Array):
        self.array = array

    def __getitem__(self, index: int) -> Any:
        return self.array[...]

    def __setitem__(self, index: int, value: ArrayLike) -> None:
        self.array[...] = value


_TIFF_HEADER_BYTES = 64 * 1024  # tags, ImageJ metadata and the offsets of every page: an upper bound


def tiff_output(
    stack: contextlib.ExitStack,
    path: Path,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    axes: str,
    voxel_size: VoxelSize | None = None,
) -> TiffSlices:
    """An ImageJ-hyperstack TIFF of ``shape`` under a temporary name, renamed onto ``path`` when
    the block succeeds. Axes are YX, ZYX, CYX or ZCYX, so readers tell slices from classes."""
    import tifffile

    from ..plumbing.atomic import atomic_path

    data_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    # pixels written slice by slice into a sparse file: a full disk shows up mid-way, as one line
    temporary = stack.enter_context(atomic_path(path, needed=data_bytes + _TIFF_HEADER_BYTES))
    # ImageJ cannot read BigTIFF: above 4 GB a BigTIFF with tifffile's shaped metadata (same keys)
    big = data_bytes > 2**32 - 2**25
    options: dict[str, Any] = {"metadata": {"axes": axes}, "imagej": not big, "bigtiff": big}
    if voxel_size is not None:
        options["resolution"] = (1.0 / voxel_size.x, 1.0 / voxel_size.y)
        options["resolutionunit"] = "NONE"
        options["metadata"]["unit"] = voxel_size.imagej_unit
        if voxel_size.z is not None:
            options["metadata"]["spacing"] = voxel_size.z
    written = tifffile.imwrite(
        temporary, shape=shape, dtype=np.dtype(dtype), byteorder="<", returnoffset=True, **options
    )
    assert written is not None  # returnoffset: the contiguous data's offset and size
    offset = written[0]
    writer = TiffSlices(temporary, offset, shape, np.dtype(dtype).newbyteorder("<"))
    stack.callback(writer.close)
    return writer


class TiffSlices:
    """Slices of a contiguous, uncompressed TIFF read and written with pread/pwrite.

    A memory map would be simpler, but its pages stay mapped in the process, and a container
    counts them against its memory limit (1.8 GB at 128 slices with probabilities); written through
    the file API they are page cache the kernel can drop. Indexing is by first axis only.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype, self.offset = shape, dtype, offset
        self.slice_shape = shape[1:]
        self.slice_bytes = int(np.prod(self.slice_shape, dtype=np.int64)) * dtype.itemsize
        self.fd: int | None = os.open(path, os.O_RDWR)

    def _position(self, index: int | EllipsisType) -> int:
        if index is Ellipsis:
            return -1
        z = int(index)
        if not 0 <= z < self.shape[0]:
            raise IndexError(z)
        return self.offset + z * self.slice_bytes

    def __setitem__(self, index: int | EllipsisType, value: ArrayLike) -> None:
        assert self.fd is not None
        position = self._position(index)
        shape = self.shape if position < 0 else self.slice_shape
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(value), shape), dtype=self.dtype)
        view = memoryview(data).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
        position = max(position, self.offset)
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written

    def __getitem__(self, index: int | EllipsisType) -> np.ndarray:
        assert self.fd is not None
        position = self._position(index)
        shape = self.shape if position < 0 else self.slice_shape
        size = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        data = os.pread(self.fd, size, max(position, self.offset))
        return np.frombuffer(data, dtype=self.dtype).reshape(shape).copy()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def create_ome_zarr(
    path: Path, shape: tuple[int, ...], dtype: DTypeLike, axes: str, *, name: str, voxel_size: VoxelSize | None
) -> zarr.Array:
    """Create an OME-Zarr image (NGFF 0.4, zarr format 2) at ``path``: one array ``0`` of ``shape``
    filled with zeros, one zarr chunk per plane, ``axes`` such as "zyx" or "czyx", the input's voxel
    size as its scale. Returns the array."""
    from ..plumbing.zarr_compat import create_array, open_v2_group

    group = open_v2_group(path, mode="w-")
    chunks = (1,) * (len(shape) - 2) + tuple(shape[-2:])
    array = create_array(group, "0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    group.attrs["multiscales"] = ngff_multiscales(name, axes, voxel_size)
    return array


def ome_zarr_output(
    stack: contextlib.ExitStack, path: Path, slices: Slices, classes: int, voxel_size: VoxelSize | None
) -> zarr.Array | _ClassesFirst:
    """An OME-Zarr image (NGFF 0.4, zarr format 2) of probabilities (C, [Z,] Y, X) in a temporary
    folder, renamed to ``path`` when the block succeeds. Returns what the predictor writes
    (Z, C, Y, X) slices into."""
    from ..plumbing.atomic import OutputExistsError, full_disk_error

    if path.exists():
        raise OutputExistsError(f"{path} already exists; not overwriting it (choose another output)")
    temporary = path.with_name(f".{path.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    plane = (slices.height, slices.width)
    shape = (classes, slices.count, *plane) if slices.is_stack else (classes, *plane)
    needed = int(np.prod(shape, dtype=np.int64)) * 4  # float32, before zarr's compression
    axes = "czyx" if slices.is_stack else "cyx"
    array = create_ome_zarr(temporary, shape, np.float32, axes, name=path.stem, voxel_size=voxel_size)

    def finish(
        exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        if exc_type is not None:
            full = full_disk_error(exc, path, needed=needed) if isinstance(exc, Exception) else None
            shutil.rmtree(temporary, ignore_errors=True)
            if full is not None:
                raise full.with_free_space() from None
            return False
        try:
            temporary.rename(path)
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
            raise OutputExistsError(f"{path} appeared while predicting; not overwriting it") from None
        return False

    stack.push(finish)
    return _ClassesFirst(array) if slices.is_stack else array


class _ClassesFirst:
    """Takes (C, Y, X) slices at z and stores them in a (C, Z, Y, X) array."""

    def __init__(self, array: zarr.Array):
        self.array = array

    def __getitem__(self, z: int) -> Any:
        return self.array[:, z]

    def __setitem__(self, z: int, value: ArrayLike) -> None:
        self.array[:, z] = value
