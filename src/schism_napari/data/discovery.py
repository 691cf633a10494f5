"""Finding image/mask pairs: SCHISM layout, BiaPy layout, or a single pair of files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .io import IMAGE_SUFFIXES


@dataclass
class DatasetFolder:
    name: str
    images: list[Path]
    masks: list[Path] | None
    layout: str  # "schism", "biapy" or "pair"
    class_dict: Path | None = None


def list_image_files(folder: Path) -> list[Path]:
    """Image files of a folder in sorted name order (SCHISM pairs images and masks by this order)."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def discover_datasets(
    root: str | Path, *, mask: str | Path | None = None, require_masks: bool = True
) -> tuple[Path, list[DatasetFolder]]:
    """Return the folder holding ``data_stats.json`` and the datasets found under ``root``.

    ``root`` may be: a SCHISM ``datasets/`` folder (subfolders with images/ and masks/), one such
    dataset folder, a BiaPy folder (train/x, train/y), or an image file with ``mask`` its mask.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if mask is None and require_masks:
            raise DataError(f"{root}: a single image needs its mask (give the mask file too)")
        masks = [Path(mask)] if mask is not None else None
        if masks and not masks[0].is_file():
            raise DataError(f"{masks[0]}: no such file")
        return root.parent, [DatasetFolder(root.stem, [root], masks, "pair", _class_dict(root.parent))]
    if (root / "images").is_dir():
        return root, [_schism_dataset(root, require_masks)]
    if (root / "train" / "x").is_dir():
        images = list_image_files(root / "train" / "x")
        masks = _masks(root / "train" / "y", images, require_masks)
        return root, [DatasetFolder("train", images, masks, "biapy", _class_dict(root))]
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())
    if subfolders:
        return root, [_schism_dataset(p, require_masks) for p in subfolders]
    raise DataError(
        f"{root}: no dataset found; expected images/ and masks/ folders, dataset subfolders holding them "
        "(SCHISM layout), or train/x and train/y (BiaPy layout)"
    )


def _schism_dataset(folder: Path, require_masks: bool) -> DatasetFolder:
    images = list_image_files(folder / "images")
    masks = _masks(folder / "masks", images, require_masks)
    return DatasetFolder(folder.name, images, masks, "schism", _class_dict(folder) or _class_dict(folder.parent))


def _masks(folder: Path, images: list[Path], require_masks: bool) -> list[Path] | None:
    if not images:
        raise DataError(f"{folder.parent}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    if not folder.is_dir():
        if require_masks:
            raise DataError(f"{folder}: mask folder missing")
        return None
    masks = list_image_files(folder)
    if len(masks) != len(images):
        raise DataError(
            f"{folder}: {len(masks)} masks for {len(images)} images in {images[0].parent}; "
            "images and masks are paired by sorted name, so the counts must match"
        )
    return masks


def _class_dict(folder: Path) -> Path | None:
    path = folder / "class_dict.csv"
    return path if path.is_file() else None
