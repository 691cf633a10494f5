"""Saving napari-made training data (image + corrected labels) as a new SCHISM dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..plumbing.atomic import atomic_write, unique_path
from .volume_store import iter_slabs

if TYPE_CHECKING:
    from ..plumbing.array_types import SlabArray


def dataset_name(text: str) -> str:
    """A file-system-safe dataset folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "napari"


def write_training_pair(
    root: str | Path,
    name: str,
    image: SlabArray,
    mask: np.ndarray,
    *,
    rgb: bool = False,
    class_names: list[str] | None = None,
    class_colors: list[tuple[int, int, int]] | None = None,
) -> Path:
    """Write ``image`` and ``mask`` (classes 0..C-1, 255 unlabeled) as a new dataset folder.

    ``root`` is a SCHISM ``datasets/`` folder (or a dataset inside it, whose parent is used).
    A new subfolder ``<name>/images`` + ``<name>/masks`` is created, so existing files are
    never touched and SCHISM's sorted-name pairing of the other datasets cannot shift.
    ``image`` may be lazy (a dask or zarr array): a stack is then written slab by slab, never
    read whole.
    """
    import tifffile

    root = Path(root)
    if (root / "images").is_dir():
        root = root.parent
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; choose a datasets folder")
    mask = np.asarray(mask)
    shape = tuple(int(v) for v in image.shape)
    if mask.shape != shape[: mask.ndim]:
        raise DataError(f"labels shape {mask.shape} does not match image shape {shape}")
    folder = unique_path(root / dataset_name(name))
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    filename = f"{folder.name}.tif"
    # photometric says what the axes are: tifffile would store a 3- or 4-slice stack as RGB(A)
    photometric = "rgb" if rgb else "minisblack"
    options: dict[str, Any] = {"photometric": photometric, "compression": "zlib"}
    if isinstance(image, np.ndarray) or len(shape) < (4 if rgb else 3):
        pages: Any = np.asarray(image)
    else:  # a lazy stack: its pages one at a time (tifffile writes an iterator given shape and dtype)
        pages = iter_slabs(image)
        options.update(shape=shape, dtype=np.dtype(image.dtype))
    atomic_write(folder / "images" / filename, lambda p: tifffile.imwrite(p, pages, **options))
    mask_bytes = mask.astype(np.uint8, copy=False)
    atomic_write(
        folder / "masks" / filename,
        lambda p: tifffile.imwrite(p, mask_bytes, photometric="minisblack", compression="zlib"),
    )
    if class_names and class_colors and not (root / "class_dict.csv").exists():
        colors = class_colors
        rows = "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(class_names, colors, strict=True))
        atomic_write(root / "class_dict.csv", lambda p: p.write_text("name,r,g,b\n" + rows, encoding="utf-8"))
    return folder
