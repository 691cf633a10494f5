"""npe2 contributions: the dataset reader, the Labels writer and sample data (widgets: _widgets).

Only these thin adapters know napari's calling conventions; the work is done by the core.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

# ---- reader --------------------------------------------------------------------------------------


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Claim folders in SCHISM layout (a datasets/ folder or one dataset with images/ + masks/)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / "images").is_dir() or any((p / "images").is_dir() for p in folder.iterdir() if p.is_dir()):
        return read_dataset_folder
    return None


def read_dataset_folder(path: str | list[str]) -> list[tuple]:
    """Each dataset becomes an image layer (slices stacked when shapes agree) and a Labels layer."""
    from .data.discovery import discover_datasets
    from .data.io import mask_values, read_image, read_mask
    from .data.layers import image_layer_data, labels_layer_data
    from .data.summary import class_count_from, first_class_dict
    from .errors import DataError

    folder = Path(path[0] if isinstance(path, list) else path)
    _, folders = discover_datasets(folder, require_masks=False)
    names, colors = first_class_dict(folders)
    contents = [(d, [read_image(p) for p in d.images], [read_mask(p) for p in d.masks or []]) for d in folders]
    count = class_count_from(names, [mask_values(r) for *_, raws in contents for r in raws if r.ndim == 3])
    layers: list[tuple] = []
    for dataset, images, raws in contents:
        if len({img.shape[1:] for img in images}) != 1:
            raise DataError(f"{dataset.name}: images differ in shape; open them one by one from the Dataset widget")
        data, rgb = image_layer_data(images)
        layers.append((data, {"name": dataset.name, "rgb": rgb, "metadata": {"schism_dataset": str(folder)}}, "image"))
        if raws and count is not None:
            masks = dataset.masks or []  # raws were read from these paths
            labels = labels_layer_data(raws, masks, count, source=dataset.name, class_colors=colors)
            layers.append((labels, {"name": f"{dataset.name} masks", "metadata": {"schism_classes": names}}, "labels"))
    return layers


# ---- writer --------------------------------------------------------------------------------------


def write_labels(path: str, data: ArrayLike, meta: dict) -> list[str]:
    """Labels (0 unpainted, k + 1 class k) -> TIFF mask with classes 0..C-1 and 255 for unpainted."""
    import tifffile

    from .data.io import IGNORE
    from .plumbing.atomic import atomic_write

    labels = np.asarray(data)
    if labels.max(initial=0) > IGNORE:
        raise ValueError(f"labels go up to {labels.max()}; a SCHISM mask holds at most 255 classes")
    mask = labels.astype(np.int64) - 1
    mask[labels == 0] = IGNORE
    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    # napari's save dialog has already confirmed replacing an existing file
    atomic_write(
        target,
        lambda p: tifffile.imwrite(p, mask.astype(np.uint8), photometric="minisblack", compression="zlib"),
        overwrite=True,
    )
    return [str(target)]


# ---- sample data ---------------------------------------------------------------------------------


def sample_rock_ct() -> list[tuple]:
    """The synthetic rock CT stack with its ground truth (pore, matrix, mineral)."""
    from .sample import make_rock

    volume, labels = make_rock((16, 192, 192), seed=3)
    return [
        (volume, {"name": "rock CT", "contrast_limits": (0, 60000)}, "image"),
        (labels + 1, {"name": "rock CT ground truth", **_class_metadata()}, "labels"),
    ]


def sample_rock_ct_scribbles() -> list[tuple]:
    """The same stack with a few strokes painted on three slices: ready for training from scribbles."""
    from .sample import make_rock, scribbles

    volume, labels = make_rock((16, 192, 192), seed=3)
    return [
        (volume, {"name": "rock CT", "contrast_limits": (0, 60000)}, "image"),
        (scribbles(labels, slices=(2, 8, 13)), {"name": "rock CT scribbles", **_class_metadata()}, "labels"),
    ]


def _class_metadata() -> dict[str, Any]:
    """Class names and colours travel with the layer, for the widgets and the Labels colormap."""
    from ._widgets.session import class_colormap
    from .sample import CLASS_COLORS, CLASS_NAMES

    return {
        "metadata": {"schism_classes": list(CLASS_NAMES), "schism_colors": [list(c) for c in CLASS_COLORS]},
        "colormap": class_colormap(CLASS_COLORS),
    }
