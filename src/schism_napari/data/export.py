"""Saving napari-made training data (image + corrected labels) as a new SCHISM dataset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, unique_path
from ..errors import DataError


def dataset_name(text: str) -> str:
    """A file-system-safe dataset folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "napari"


def write_training_pair(
    root: str | Path,
    name: str,
    image: np.ndarray,
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
    """
    import tifffile

    root = Path(root)
    if (root / "images").is_dir():
        root = root.parent
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; choose a datasets folder")
    image, mask = np.asarray(image), np.asarray(mask)
    if mask.shape != image.shape[: mask.ndim]:
        raise DataError(f"labels shape {mask.shape} does not match image shape {image.shape}")
    folder = unique_path(root / dataset_name(name))
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    filename = f"{folder.name}.tif"
    # photometric says what the axes are: tifffile would store a 3- or 4-slice stack as RGB(A)
    photometric = "rgb" if rgb else "minisblack"
    atomic_write(
        folder / "images" / filename, lambda p: tifffile.imwrite(p, image, photometric=photometric, compression="zlib")
    )
    mask_bytes = mask.astype(np.uint8)
    atomic_write(
        folder / "masks" / filename,
        lambda p: tifffile.imwrite(p, mask_bytes, photometric="minisblack", compression="zlib"),
    )
    if class_names and class_colors and not (root / "class_dict.csv").exists():
        colors = class_colors
        rows = "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(class_names, colors, strict=True))
        atomic_write(root / "class_dict.csv", lambda p: p.write_text("name,r,g,b\n" + rows, encoding="utf-8"))
    return folder
