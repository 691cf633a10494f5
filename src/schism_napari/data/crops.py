"""Random training crops and fixed validation crops, normalised to float32 on the CPU.

Crops are cheap numpy slices; resizing to img_res and augmentation happen on the training
device (see :mod:`schism_napari.training.batches`). With sparse labels (scribbles) most crops
are centred near painted pixels, so few batches are wasted on unlabeled areas. A share of the
crops (``class_share``; nnU-Net oversamples foreground the same way) is centred on a pixel of a
class drawn uniformly among the classes the image holds, so small phases are learned; for
scribbles the anchored crops pick their class the same way, so a short stroke weighs as much as
a long one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from .dataset import SegmentationData
from .io import IGNORE

SPARSE_FRACTION = 0.5  # below this labelled fraction, crops are anchored on labelled pixels
LABELLED_BIAS = 0.8  # share of anchored crops for sparse samples
MAX_ANCHORS = 50_000


class CropSampler:
    """Crop corners and normalised crops of the samples at ``positions``.

    ``class_share`` of the crops of densely labelled images, and :data:`LABELLED_BIAS` (or
    ``class_share`` if larger) of the crops of sparsely labelled ones, are centred (with jitter)
    on a labelled pixel of a class drawn uniformly among those present in the image.
    """

    def __init__(
        self,
        data: SegmentationData,
        positions: Sequence[int],
        crop_size: int,
        rng: np.random.Generator,
        class_share: float = 0.0,
    ):
        self.data, self.crop_size, self.rng = data, crop_size, rng
        self.class_share = class_share
        self._affine: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._padded: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._anchors: dict[int, list[np.ndarray]] = {}  # per image: flat labelled indices, one array per class
        self._anchor_share: dict[int, float] = {}
        for position in positions:
            sample = data.samples[position]
            image, mask = sample.image, sample.mask
            height, width = image.shape[:2]
            if height < crop_size or width < crop_size:
                pad = ((0, max(0, crop_size - height)), (0, max(0, crop_size - width)))
                image = np.pad(image, (*pad, (0, 0)), mode="symmetric")
                mask = None if mask is None else np.pad(mask, pad, constant_values=IGNORE)
                self._padded[position] = (image, mask)
            if mask is None:
                continue
            sparse = sample.labelled_fraction < SPARSE_FRACTION
            share = max(class_share, LABELLED_BIAS) if sparse else class_share
            if share > 0:
                self._anchors[position] = self._class_anchors(mask, rng)
                self._anchor_share[position] = share

    @staticmethod
    def _class_anchors(mask: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        flat = mask.ravel()
        order = np.argsort(flat, kind="stable")
        values, starts = np.unique(flat[order], return_index=True)
        groups = np.split(order, starts[1:])
        anchors = []
        for value, indices in zip(values, groups, strict=True):
            if value == IGNORE:
                continue
            if indices.size > MAX_ANCHORS:
                indices = rng.choice(indices, MAX_ANCHORS, replace=False)
            anchors.append(indices)
        return anchors

    def arrays(self, position: int) -> tuple[np.ndarray, np.ndarray | None]:
        if position in self._padded:
            return self._padded[position]
        sample = self.data.samples[position]
        return sample.image, sample.mask

    def corner(self, position: int) -> tuple[int, int]:
        image, _ = self.arrays(position)
        height, width = image.shape[:2]
        size = self.crop_size
        classes = self._anchors.get(position)
        if classes and self.rng.random() < self._anchor_share[position]:
            anchors = classes[self.rng.integers(len(classes))]
            y, x = divmod(int(anchors[self.rng.integers(anchors.size)]), width)
            jitter = self.rng.integers(-(size // 4), size // 4 + 1, size=2)
            top = int(np.clip(y - size // 2 + jitter[0], 0, height - size))
            left = int(np.clip(x - size // 2 + jitter[1], 0, width - size))
            return top, left
        return int(self.rng.integers(0, height - size + 1)), int(self.rng.integers(0, width - size + 1))

    def crop(self, position: int, corner: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image crop (C, S, S) float32 and mask crop (S, S) uint8."""
        top, left = corner if corner is not None else self.corner(position)
        image, mask = self.arrays(position)
        size = self.crop_size
        window = image[top : top + size, left : left + size]
        a, b = self.affine(position)
        normalised = (window.astype(np.float32) * a + b).transpose(2, 0, 1)
        if mask is None:
            mask_window = np.full((size, size), IGNORE, dtype=np.uint8)
        else:
            mask_window = mask[top : top + size, left : left + size]
        return np.ascontiguousarray(normalised), np.ascontiguousarray(mask_window)

    def affine(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.data.samples[position]
        key = (sample.dataset, sample.image.dtype.str)
        if key not in self._affine:
            self._affine[key] = self.data.normalization(sample.dataset).affine(
                sample.image.dtype, self.data.in_channels
            )
        return self._affine[key]


class TrainingCrops:
    """An epoch of shuffled random crops, ``crops_per_image`` from each training image.

    With ``steps`` the epoch is that many batches instead (images drawn in shuffled rounds, each
    image once per round), so an epoch's length does not grow with the number of images.

    With ``shard=(rank, world)`` (distributed training) every process shuffles the same way,
    takes every world-th crop and gets the same number of batches; crop positions differ per
    process through ``rng``.
    """

    def __init__(
        self,
        data: SegmentationData,
        positions: Sequence[int],
        crop_size: int,
        crops_per_image: int,
        batch_size: int,
        rng: np.random.Generator,
        *,
        shard: tuple[int, int] = (0, 1),
        order_rng: np.random.Generator | None = None,
        steps: int | None = None,
        class_share: float = 0.0,
    ):
        self.positions = list(positions)
        self.steps = steps
        self.sampler = CropSampler(data, self.positions, crop_size, rng, class_share)
        self.crops_per_image, self.batch_size, self.rng = crops_per_image, batch_size, rng
        self.order_rng = order_rng or rng
        self.rank, self.world = shard

    @property
    def crops_per_process(self) -> int:
        if self.steps is not None:
            return self.steps * self.batch_size
        return math.ceil(len(self.positions) * self.crops_per_image / self.world)

    def __len__(self) -> int:
        return math.ceil(self.crops_per_process / self.batch_size)

    def _order(self) -> np.ndarray:
        if self.steps is None:
            order = np.repeat(np.asarray(self.positions), self.crops_per_image)
            self.order_rng.shuffle(order)
            return order
        needed = self.crops_per_process * self.world
        rounds = [self.order_rng.permutation(self.positions) for _ in range(math.ceil(needed / len(self.positions)))]
        return np.concatenate(rounds)[:needed]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self._order()
        if self.world > 1:  # wrap around so every process has as many crops
            order = np.resize(order, self.crops_per_process * self.world)[self.rank :: self.world]
        for start in range(0, order.size, self.batch_size):
            crops = [self.sampler.crop(int(p)) for p in order[start : start + self.batch_size]]
            yield np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])


def fixed_crops(
    data: SegmentationData,
    positions: Sequence[int],
    crop_size: int,
    crops_per_image: int,
    seed: int | None,
    class_share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The same crops every epoch, so validation curves compare like with like."""
    rng = np.random.default_rng(None if seed is None else seed + 1)
    sampler = CropSampler(data, positions, crop_size, rng, class_share)
    crops = [sampler.crop(p) for p in positions for _ in range(crops_per_image)]
    return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])
