"""Two stages: the network starts where the forest is.

With a few painted strokes and a CPU's minute or two, a network that starts from nothing loses to
the random forest fitted on the same strokes (ISBI EM, 1 % painted on 3 slices: 0.655 vs 0.670
mean IoU on held-out slices). ilastik's autocontext and Shallow2Deep (Matskevych et al., 2022)
answer this by giving the second stage the first one's class probabilities. Here:

* **Stage 1** is the pixel classifier the napari preview already fits: multiscale filter features
  and a random forest (:class:`~schism_napari.forest.classifier.PixelClassifier`), on the strokes left for
  training (the held-out ones are not seen by either stage).
* **Stage 2** is the network. Its input is the image plus stage 1's K class probabilities, stored
  as K more channels in the image's own dtype (``low + p * (high - low)``, so the crops, the
  augmentation and the tiled predictor handle them as any channel; normalised with mean 0 and
  std 1 they come back as ``p``). The network (:class:`~schism_napari.models.two_stage.ForestPrior`)
  adds ``log p`` to its logits, with its last layer starting at zero: before its first step it
  predicts exactly what the forest does, and training learns the corrections.
* On the pixels it was fitted on, a forest is sure and right; elsewhere it is not. Fed its own
  training pixels, the network would learn to trust it blindly. So the training images get
  **out-of-fold** probabilities (:func:`stage_two_data`): with three or more painted images each
  image's map comes from a forest fitted on the others; with fewer, from a forest fitted on the
  other blocks of a coarse grid. Prediction uses the forest fitted on all the training strokes.

The run folder keeps the forest as ``stage_one.npz`` (numbers only, fitted again when loaded: see
:meth:`PixelClassifier.save`) and ``run_info.json`` says the model has two stages;
:func:`schism_napari.runs.load_trained_model` loads both as one model. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.dataset import SegmentationData
from ..data.io import IGNORE, unit_range
from ..data.normalization import Normalization
from ..errors import SchismError
from .classifier import PixelClassifier
from .selection import FOREST_TREES, HOLDOUT_SEED

if TYPE_CHECKING:
    from .selection import HeldOut

STAGE_ONE_FILE = "stage_one.npz"
FOLDS = 3  # out-of-fold forests: each fitted on two thirds of the strokes
MIN_BLOCK = 64  # px: the smallest grid cell of the block folds (one or two painted images)
BLOCKS_PER_SIDE = 4  # the block folds' grid, at most, along an image's longer side
TREES, SEED = FOREST_TREES, HOLDOUT_SEED  # the preview's forest's: stage 1 is that forest, and the folds alike
MAX_PIXELS = 64_000_000  # stage 2 keeps K more channels per pixel: larger training sets train one stage


@dataclass
class StageOne:
    """The forest whose class probabilities the network reads as extra input channels."""

    forest: PixelClassifier
    image_channels: int

    @property
    def classes(self) -> int:
        return self.forest.class_count

    @property
    def network_channels(self) -> int:
        return self.image_channels + self.classes

    def probabilities(self, plane: np.ndarray) -> np.ndarray:
        """(Y, X, C) stored dtype -> stage 1's (K, Y, X) float32."""
        return np.asarray(self.forest.predict_proba(plane), dtype=np.float32)

    def encode(self, plane: np.ndarray, probabilities: np.ndarray | None = None) -> np.ndarray:
        """(Y, X, C) stored dtype -> (Y, X, C + K) in the same dtype: the image, then the forest's
        probabilities scaled to the dtype's unit range. 32- and 64-bit integer images become float32,
        whose unit range (0..1) is theirs: in their own dtype the probabilities would round to 0 or 1."""
        if probabilities is None:
            probabilities = self.probabilities(plane)
        if np.issubdtype(plane.dtype, np.integer) and plane.dtype.itemsize > 2:
            plane = plane.astype(np.float32)
        low, high = unit_range(plane.dtype)
        scaled = np.moveaxis(probabilities, 0, -1) * np.float32(high - low) + np.float32(low)
        if np.issubdtype(plane.dtype, np.integer):
            scaled = np.rint(scaled)
        return np.concatenate([plane, scaled.astype(plane.dtype)], axis=-1)

    def network_normalization(self, image: Normalization) -> Normalization:
        """The image's statistics for its channels, mean 0 and std 1 (identity) for the probabilities."""
        mean = Normalization._per_channel(image.mean, self.image_channels)
        std = Normalization._per_channel(image.std, self.image_channels)
        return Normalization(tuple(mean) + (0.0,) * self.classes, tuple(std) + (1.0,) * self.classes)

    def image_normalization(self, network: Normalization) -> Normalization:
        """The image's part of :meth:`network_normalization` (what ``data_stats.json`` keeps)."""
        if len(network.mean) != self.network_channels:
            return network
        return Normalization(network.mean[: self.image_channels], network.std[: self.image_channels])

    # ---- the run folder --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``run_info.json`` says of stage 1."""
        return {
            "kind": "forest",
            "file": STAGE_ONE_FILE,
            "classes": self.classes,
            "image_channels": self.image_channels,
        }

    def save(self, run_dir: str | Path) -> Path:
        return self.forest.save(Path(run_dir) / STAGE_ONE_FILE)

    @classmethod
    def load(cls, run_dir: str | Path, described: dict[str, Any]) -> StageOne:
        """The stage 1 that ``run_info.json``'s ``stage_one`` entry describes."""
        path = Path(run_dir) / str(described.get("file", STAGE_ONE_FILE))
        forest = PixelClassifier.load(path)
        classes = int(described.get("classes", forest.class_count))
        if forest.class_count != classes:
            raise SchismError(f"{path}: {forest.class_count} classes, but run_info.json says {classes}")
        return cls(forest, int(described.get("image_channels", 1)))


def stage_two_data(
    data: SegmentationData,
    forest_positions: Sequence[int],
    *,
    threads: int = -1,
    report: Callable[[str], None] | None = None,
    forest: PixelClassifier | None = None,
) -> tuple[SegmentationData, StageOne]:
    """The data the network trains on (every image with stage 1's probabilities as K more channels)
    and the stage 1 that prediction uses (the forest on all the labels at ``forest_positions``).

    The labelled images at ``forest_positions`` get out-of-fold probabilities; every other image is
    one the full forest never saw, and gets its probabilities. ``forest``: the full forest when it
    was fitted already (napari's preview fits it on the same labels)."""
    painted = [p for p in forest_positions if _labelled(data, p)]
    if not painted:
        raise SchismError("no painted pixels to fit stage 1 (the forest) on")
    full = forest if forest is not None else _fit(data, painted, threads)
    stage_one = StageOne(full, data.in_channels)
    maps: dict[int, np.ndarray] = {}
    if len(painted) >= FOLDS:
        folds = [painted[f::FOLDS] for f in range(FOLDS)]
        for fold in folds:
            others = [p for p in painted if p not in set(fold)]
            fold_forest = _fit(data, others, threads)
            for position in fold:
                maps[position] = fold_forest.predict_proba(data.samples[position].image)
        how = f"each of the {len(painted)} painted images from a forest fitted on the others ({FOLDS} folds)"
    else:
        maps = _block_fold_maps(data, painted, threads)
        how = f"the {len(painted)} painted image(s) in blocks, each from a forest fitted on the other blocks"
    samples = []
    for position, sample in enumerate(data.samples):
        probabilities = maps.get(position)
        samples.append(dataclasses.replace(sample, image=stage_one.encode(sample.image, probabilities)))
    stats = {name: stage_one.network_normalization(value) for name, value in data.stats.items()}
    staged = dataclasses.replace(data, samples=samples, in_channels=stage_one.network_channels, stats=stats)
    if report is not None:
        report(f"two stages: the network reads the image and the forest's {data.class_count} probabilities; {how}")
    return staged, stage_one


def stage_one_positions(held: HeldOut) -> list[int] | None:
    """The samples stage 1 is fitted on when the model has two stages (a
    :class:`~schism_napari.forest.selection.HeldOut`'s forest samples), or None for one stage: scribbles get
    two stages; dense masks, whose networks beat the forest on their own, one."""
    if held.mode != "strokes":
        return None
    return list(held.forest_positions)


def fits_in_memory(data: SegmentationData) -> bool:
    """Whether the stage-2 copy of the data (K more channels per pixel) is small enough to make."""
    pixels = sum(int(np.prod(s.image.shape[:2])) for s in data.samples)
    return pixels * (data.in_channels + data.class_count) <= MAX_PIXELS


def _labelled(data: SegmentationData, position: int) -> bool:
    mask = data.samples[position].mask
    return mask is not None and bool((mask != IGNORE).any())


def _fit(
    data: SegmentationData, positions: Sequence[int], threads: int, masks: Sequence[np.ndarray] | None = None
) -> PixelClassifier:
    """A forest on the images at ``positions`` (all painted), with their masks or the ``masks`` given."""
    images = [data.samples[p].image for p in positions]
    labels = masks if masks is not None else [np.asarray(data.samples[p].mask) for p in positions]
    classifier = PixelClassifier("forest", class_count=data.class_count, trees=TREES, seed=SEED, threads=threads)
    return classifier.fit(images, labels)


def _block_fold_maps(data: SegmentationData, painted: Sequence[int], threads: int) -> dict[int, np.ndarray]:
    """One or two painted images: a coarse grid of blocks in FOLDS folds; each fold's pixels get the
    probabilities of a forest fitted on the other folds' strokes."""
    rng = np.random.default_rng(SEED)
    folds_of: dict[int, np.ndarray] = {}
    for position in painted:
        height, width = data.samples[position].mask.shape  # type: ignore[union-attr]
        block = max(MIN_BLOCK, -(-max(height, width) // BLOCKS_PER_SIDE))
        rows, columns = -(-height // block), -(-width // block)
        cells = rng.permutation(rows * columns) % FOLDS
        grid = cells.reshape(rows, columns).repeat(block, 0).repeat(block, 1)
        folds_of[position] = grid[:height, :width]
    maps = {p: np.zeros((data.class_count, *folds_of[p].shape), dtype=np.float32) for p in painted}
    for fold in range(FOLDS):
        positions, masks = [], []
        for position in painted:
            painted_mask = np.asarray(data.samples[position].mask)
            mask = np.where(folds_of[position] == fold, IGNORE, painted_mask).astype(np.uint8)
            if (mask != IGNORE).any():
                positions.append(position)
                masks.append(mask)
        if not positions:
            continue
        forest = _fit(data, positions, threads, masks)
        for position in painted:
            inside = folds_of[position] == fold
            if inside.any():
                maps[position][:, inside] = forest.predict_proba(data.samples[position].image)[:, inside]
    return maps
