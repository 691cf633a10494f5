"""A quick look at a dataset folder before training: counts, shapes, dtypes and classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .discovery import DatasetFolder, discover_datasets
from .io import gray_levels, image_header, infer_class_count, mask_values, read_class_dict, read_mask


@dataclass
class DatasetSummary:
    folder: DatasetFolder
    shapes: list[tuple[int, ...]]  # per image: (N, Y, X, C) as read
    dtypes: list[str]
    mask_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def slices(self) -> int:
        return sum(shape[0] for shape in self.shapes)

    def row(self) -> dict[str, str]:
        shapes = sorted({"x".join(str(v) for v in s[1:3]) + (f"x{s[3]}" if s[3] > 1 else "") for s in self.shapes})
        values = self.mask_values.tolist()
        shown = ", ".join(str(v) for v in values[:8]) + (" …" if len(values) > 8 else "")
        return {
            "dataset": self.name,
            "images": str(len(self.folder.images)),
            "slices": str(self.slices),
            "shape": ", ".join(shapes[:3]) + (" …" if len(shapes) > 3 else ""),
            "dtype": ", ".join(sorted(set(self.dtypes))),
            "mask values": shown if self.folder.masks else "no masks",
        }


@dataclass
class FolderSummary:
    root: Path
    datasets: list[DatasetSummary]
    class_names: list[str] | None
    class_colors: list[tuple[int, int, int]] | None

    @property
    def class_count(self) -> int | None:
        return class_count_from(self.class_names, [d.mask_values for d in self.datasets])

    def describe_classes(self) -> str:
        count = self.class_count
        if count is None:
            return "classes: unknown (mask values fit no encoding)"
        names = f": {', '.join(self.class_names)}" if self.class_names else ""
        levels = ""
        all_values = [d.mask_values for d in self.datasets if d.mask_values.size]
        if all_values and np.unique(np.concatenate(all_values)).max() > count:
            levels = f" (SCHISM gray levels {gray_levels(count).tolist()})"
        return f"{count} classes{names}{levels}"


def class_count_from(class_names: list[str] | None, mask_values: list[np.ndarray]) -> int | None:
    """Classes from class_dict.csv, else guessed from the mask values of all datasets."""
    if class_names:
        return len(class_names)
    values = [v for v in mask_values if v.size]
    return infer_class_count(np.unique(np.concatenate(values))) if values else None


def first_class_dict(folders: list[DatasetFolder]) -> tuple[list[str] | None, list[tuple[int, int, int]] | None]:
    """Class names and colours from the first dataset that has a class_dict.csv."""
    path = next((f.class_dict for f in folders if f.class_dict is not None), None)
    return read_class_dict(path) if path is not None else (None, None)


def summarize_folder(root: str | Path) -> FolderSummary:
    """Read image headers and mask values of every dataset under ``root``."""
    root = Path(root)
    _, folders = discover_datasets(root, require_masks=False)
    names, colors = first_class_dict(folders)
    summaries = []
    for folder in folders:
        headers = [image_header(path) for path in folder.images]
        values = np.zeros(0, dtype=np.int64)
        masks = [read_mask(path) for path in folder.masks or []]
        found = [mask_values(mask) for mask in masks if mask.ndim == 3]  # RGB masks: colours, not values
        if found:
            values = np.unique(np.concatenate(found))
        summaries.append(DatasetSummary(folder, [h[0] for h in headers], [str(h[1]) for h in headers], values))
    return FolderSummary(root, summaries, names, colors)
