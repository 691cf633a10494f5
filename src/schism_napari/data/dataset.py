"""A segmentation dataset in memory: 2D samples (slices of stacks included) with decoded masks.

Each sample keeps its SCHISM identity (dataset name, index among that dataset's sorted slices)
so split files read and write in SCHISM's ``<dataset>, <index>`` format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..events import Message, ProgressCallback, ignore_events
from ..plumbing.input_checks import finite_check
from .discovery import DatasetFolder, discover_datasets
from .io import IGNORE, as_integer_mask, decode_mask, read_class_dict, read_image, read_mask, shared_encoding
from .normalization import Normalization, StatsAccumulator, read_stats_file

STATS_FILE = "data_stats.json"
DEFAULT_STATS = "default"


@dataclass
class Sample:
    dataset: str
    index: int  # position among the dataset's slices, in sorted file order
    image: np.ndarray  # (Y, X, C), stored dtype
    mask: np.ndarray | None  # (Y, X) uint8 classes, IGNORE for unlabeled
    source: str  # file (and slice) or layer name, for messages

    @property
    def labelled_fraction(self) -> float:
        return 0.0 if self.mask is None else float(np.count_nonzero(self.mask != IGNORE)) / self.mask.size


@dataclass
class SegmentationData:
    """Every image + mask pair a training run (or evaluation) sees, already decoded, with what the
    model needs to know about them: the class count, the input channels and the normalization
    statistics of each dataset.

    Folders on disk, BiaPy layouts and napari layers all become this one type, so the trainer,
    the splits, the crops and the evaluation never care where the pixels came from; masks are
    decoded to classes 0..C-1 with IGNORE for unlabeled pixels once, here, rather than per batch.
    ``messages`` keeps what loading found worth telling the user (guessed encodings, skipped files).
    """

    samples: list[Sample]
    class_count: int
    in_channels: int
    stats: dict[str, Normalization]
    class_names: list[str] | None = None
    class_colors: list[tuple[int, int, int]] | None = None
    stats_path: Path | None = None
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.samples:
            raise DataError("the dataset has no images")

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(s.dataset for s in self.samples))

    def normalization(self, dataset: str) -> Normalization:
        return self.stats.get(dataset) or self.stats[DEFAULT_STATS]

    def class_pixel_counts(self, positions: Sequence[int]) -> np.ndarray:
        counts = np.zeros(256, dtype=np.int64)
        for position in positions:
            mask = self.samples[position].mask
            if mask is not None:
                counts += np.bincount(mask.ravel(), minlength=256)
        return counts[: self.class_count]

    def position_of(self) -> dict[tuple[str, int], int]:
        return {(s.dataset, s.index): i for i, s in enumerate(self.samples)}


def load_dataset(
    root: str | Path,
    *,
    class_count: int,
    ignore_index: int = 255,
    in_channels: int | None = None,
    mask: str | Path | None = None,
    write_stats: bool = True,
    callback: ProgressCallback = ignore_events,
    planes: str = "xy",
    ignore_background: bool = False,
) -> SegmentationData:
    """Read every image/mask pair found under ``root`` (see :func:`discover_datasets`).

    Normalisation comes from the dataset's ``data_stats.json`` when there is one (as in SCHISM),
    else it is computed; nothing is written into the dataset folder (the trainer writes the
    stats it used to the run folder). ``write_stats`` is accepted for older callers and ignored.
    ``planes="xyz"`` adds XZ and YZ planes of every stack as extra samples (see
    :func:`stack_planes`), after the dataset's slices so SCHISM's slice indices do not change.
    ``ignore_background`` is SCHISM's: gray 0 is an unlabeled background before the classes.
    """
    del write_stats
    stats_folder, folders = discover_datasets(root, mask=mask)
    class_names = class_colors = None
    for folder in folders:
        if folder.class_dict is not None:
            class_names, class_colors = read_class_dict(folder.class_dict)
            if len(class_names) != class_count:
                raise DataError(
                    f"{folder.class_dict}: lists {len(class_names)} classes but num_classes gives {class_count}"
                )
            break
    samples: list[Sample] = []
    for folder in folders:
        samples.extend(_read_folder(folder, class_count, ignore_index, class_colors, planes, ignore_background))
    samples = _harmonise_channels(samples, in_channels)
    stats_path: Path | None = stats_folder / STATS_FILE
    messages: list[str] = []
    if stats_path is not None and stats_path.is_file():  # SCHISM reads them from the dataset folder
        stats = read_stats_file(stats_path)
        missing = [name for name in dict.fromkeys(s.dataset for s in samples) if name not in stats]
        if missing and DEFAULT_STATS not in stats:
            raise DataError(f"{stats_path}: no entry for {', '.join(missing)} and no 'default' entry")
    else:  # computed, and written to the run folder by the trainer: never into the user's data
        stats, stats_path = compute_stats(samples), None
    for text in messages:
        callback(Message(text))
    return SegmentationData(
        samples,
        class_count,
        samples[0].image.shape[-1],
        stats,
        class_names,
        class_colors,
        stats_path,
        messages,
    )


def samples_from_arrays(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    *,
    class_count: int,
    rgb: Sequence[bool] | bool = False,
    names: Sequence[str] | None = None,
    in_channels: int | None = None,
    stats: dict[str, Normalization] | None = None,
    skip_unlabeled: bool = False,
    planes: str = "xy",
) -> SegmentationData:
    """Build a dataset from arrays already in memory (napari layers).

    Each image is (Y, X), (Z, Y, X), or with a trailing channel axis when ``rgb``; each mask
    has the image's shape without channels, classes 0..C-1 and IGNORE for unlabeled pixels.
    ``skip_unlabeled`` leaves out slices without a single painted pixel (sparse scribbles).
    """
    rgb_flags = [rgb] * len(images) if isinstance(rgb, bool) else list(rgb)
    names = list(names) if names is not None else [f"layer_{i}" for i in range(len(images))]
    samples: list[Sample] = []
    for image, mask, is_rgb, name in zip(images, masks, rgb_flags, names, strict=True):
        image = np.asarray(image)
        image = image if is_rgb else image[..., np.newaxis]
        if image.ndim == 3:
            image = image[np.newaxis]
        if image.ndim != 4:
            raise DataError(f"{name}: expected a 2D image or a 3D stack, got shape {image.shape}")
        if mask is not None:
            mask = np.asarray(mask)
            mask = mask[np.newaxis] if mask.ndim == 2 else mask
            if mask.shape != image.shape[:3]:
                raise DataError(f"{name}: labels shape {mask.shape} does not match the image {image.shape[:3]}")
            if mask.size and (mask[mask != IGNORE].max(initial=0) >= class_count):
                raise DataError(f"{name}: labels have classes beyond the {class_count} configured")
        for z in range(image.shape[0]):
            slice_mask = None if mask is None else mask[z].astype(np.uint8, copy=False)
            if skip_unlabeled and (slice_mask is None or not (slice_mask != IGNORE).any()):
                continue
            source = name if image.shape[0] == 1 else f"{name}[{z}]"
            samples.append(Sample(name, z, image[z], slice_mask, source))
        if planes == "xyz":
            masks_uint8 = None if mask is None else mask.astype(np.uint8, copy=False)
            extra = stack_planes(image, masks_uint8, name, image.shape[0], name)
            samples.extend(s for s in extra if not skip_unlabeled or (s.mask is not None and (s.mask != IGNORE).any()))
    if not samples:
        raise DataError("no labelled pixels: paint at least a few strokes in the labels layer(s)")
    samples = _harmonise_channels(samples, in_channels)
    return SegmentationData(samples, class_count, samples[0].image.shape[-1], stats or compute_stats(samples))


def merge_datasets(parts: Sequence[SegmentationData]) -> SegmentationData:
    """One training set from several (a dataset folder plus layers added in napari).

    Dataset names must differ between parts; the first part's "default" statistics win, so a
    folder's data_stats.json keeps normalising everything as it did.
    """
    if len(parts) == 1:
        return parts[0]
    names = [name for part in parts for name in part.datasets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"two training sources share the dataset name(s) {', '.join(duplicates)}")
    first = parts[0]
    for part in parts[1:]:
        if part.class_count != first.class_count or part.in_channels != first.in_channels:
            raise DataError(
                f"cannot combine training sources: {part.class_count} vs {first.class_count} classes, "
                f"{part.in_channels} vs {first.in_channels} channels"
            )
    stats: dict[str, Normalization] = {}
    for part in reversed(parts):
        stats.update(part.stats)
    return SegmentationData(
        [sample for part in parts for sample in part.samples],
        first.class_count,
        first.in_channels,
        stats,
        next((p.class_names for p in parts if p.class_names), None),
        next((p.class_colors for p in parts if p.class_colors), None),
        first.stats_path,
        [m for p in parts for m in p.messages],
    )


def compute_stats(samples: Sequence[Sample]) -> dict[str, Normalization]:
    """Mean/std per dataset and over all samples ("default"), in 0..1 units."""
    per_dataset: dict[str, StatsAccumulator] = {}
    for sample in samples:
        per_dataset.setdefault(sample.dataset, StatsAccumulator()).add(sample.image)
    return _with_default(per_dataset)


def folder_stats(folders: Sequence[DatasetFolder]) -> dict[str, Normalization]:
    """Like :func:`compute_stats`, reading only the images (masks not needed)."""
    per_dataset: dict[str, StatsAccumulator] = {}
    for folder in folders:
        for path in folder.images:
            image = read_image(path)
            finite_check(image, path)
            per_dataset.setdefault(folder.name, StatsAccumulator()).add(image)
    return _with_default(per_dataset)


def _with_default(per_dataset: dict[str, StatsAccumulator]) -> dict[str, Normalization]:
    total = StatsAccumulator()
    for accumulator in per_dataset.values():
        total.merge(accumulator)
    stats = {name: acc.result() for name, acc in per_dataset.items()}
    stats[DEFAULT_STATS] = total.result()
    return stats


def stack_planes(
    image: np.ndarray, mask: np.ndarray | None, dataset: str, first_index: int, source: str, ratio: float = 1.0
) -> list[Sample]:
    """XZ and YZ planes of a (Z, Y, X, C) stack as samples: as many of each orientation as it has
    slices, evenly spaced, stretched along Z by ``ratio`` (Z voxel size / XY pixel size).

    With them the network sees the textures of the side passes of tri-planar prediction. They
    cross every slice of the stack: evaluate on another stack, not on slices of this one.
    """
    from .voxels import orthogonal_planes

    if image.shape[0] < 2:
        return []
    planes = orthogonal_planes(image, mask, image.shape[0], ratio)
    return [
        Sample(dataset, first_index + i, plane, plane_mask, f"{source} [{axis} plane at {position}]")
        for i, (axis, position, plane, plane_mask) in enumerate(planes)
    ]


def _read_folder(
    folder: DatasetFolder,
    class_count: int,
    ignore_index: int,
    class_colors: list[tuple[int, int, int]] | None,
    planes: str = "xy",
    ignore_background: bool = False,
) -> list[Sample]:
    pairs = []
    masks: list[Path | None] = list(folder.masks) if folder.masks else [None] * len(folder.images)
    for image_path, mask_path in zip(folder.images, masks, strict=True):
        image = read_image(image_path)
        finite_check(image, image_path)
        raw = None
        if mask_path is not None:
            raw = read_mask(mask_path)
            if raw.ndim == 3:  # gray masks: whole, finite, non-negative values, checked here to name the file
                raw = as_integer_mask(raw, str(mask_path))
            if raw.shape[:3] != image.shape[:3]:
                raise DataError(
                    f"{mask_path}: mask shape {_shape(raw.shape[:3])} does not match image "
                    f"{image_path.name} {_shape(image.shape[:3])}"
                )
        pairs.append((image_path, image, mask_path, raw))
    raws = [raw for *_, raw in pairs if raw is not None]
    encoding = shared_encoding(
        raws, class_count, ignore_index, f"{folder.images[0].parent.parent} masks", ignore_background
    )
    samples: list[Sample] = []
    stacks = []
    for image_path, image, mask_path, raw in pairs:
        decoded = None
        if raw is not None:
            decoded = decode_mask(raw, class_count, ignore_index, str(mask_path), class_colors, encoding)
        for z in range(image.shape[0]):
            source = str(image_path) if image.shape[0] == 1 else f"{image_path} [slice {z}]"
            samples.append(Sample(folder.name, len(samples), image[z], None if decoded is None else decoded[z], source))
        if planes == "xyz" and image.shape[0] > 1:
            stacks.append((image_path, image, decoded))
    for image_path, image, decoded in stacks:  # after every slice: SCHISM's slice indices stay as they are
        from .voxels import voxel_ratio_from_file

        ratio = voxel_ratio_from_file(image_path) or 1.0
        samples.extend(stack_planes(image, decoded, folder.name, len(samples), str(image_path), ratio))
    return samples


def _harmonise_channels(samples: list[Sample], in_channels: int | None) -> list[Sample]:
    channels = {s.image.shape[-1] for s in samples}
    target = in_channels or max(channels)
    for sample in samples:
        have = sample.image.shape[-1]
        if have == target:
            continue
        if have == 1:
            sample.image = np.repeat(sample.image, target, axis=-1)  # gray -> RGB, as SCHISM does
        else:
            raise DataError(f"{sample.source}: has {have} channels but the model takes {target}")
    return samples


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in (shape[1:] if shape[0] == 1 else shape))
