"""Tri-planar consensus: predict a stack along XY, XZ and YZ and average the probabilities.

A 2D network sees one slice; a CT volume is 3D. Predicting the same volume resliced along the
three axes and averaging gives every voxel three views with different context, which removes
slice-to-slice flicker and errors that only one orientation makes.

Anisotropic voxels: an XZ plane of a stack with thick slices is stretched along Z compared with
what the network saw. Planes are resampled along Z to square pixels before the XZ/YZ passes
(``voxel_ratio`` = Z size / XY size, from the file or given) and the probabilities resampled
back; beyond ``max_ratio`` those passes are refused, because the interpolated planes no longer
look like the images the network was trained on.

Memory: the volume is processed in slabs of ``slab_depth`` slices (plus a margin of context
above and below, a quarter tile by default, that is predicted and dropped), so peak memory is
set by the slab and the plane size, not by the depth; with ``slab_depth=None`` the whole
volume is one slab (exact consensus). Each output slice is written once, in order, so results
stream to memory-mapped TIFFs or zarr.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.voxels import voxel_ratio_from_file
from ..errors import DataError
from .combined import CombinedPredictor
from .predictor import Predictor, Slices

MAX_RATIO = 8.0  # beyond this Z/XY voxel ratio the XZ/YZ passes are refused
ISOTROPIC_TOLERANCE = 0.05  # ratios within 5% of 1 are not resampled
DEFAULT_SLAB_DEPTH = 64  # slices per slab when streaming (--zarr)


class TriPlanarPredictor(CombinedPredictor):
    """Averages the probabilities of XY, XZ and YZ passes of one predictor over a stack.

    2D images are predicted as the base predictor does (there is only one plane).
    """

    def __init__(
        self,
        base: Predictor,
        *,
        voxel_ratio: float | None = None,
        slab_depth: int | None = None,
        max_ratio: float = MAX_RATIO,
        margin: int | None = None,
    ):
        super().__init__(base)
        ratio = 1.0 if voxel_ratio is None else float(voxel_ratio)
        if ratio <= 0:
            raise DataError(f"voxel ratio {ratio} must be > 0 (Z voxel size / XY pixel size)")
        if max(ratio, 1 / ratio) > max_ratio:
            raise DataError(
                f"tri-planar prediction refused: Z voxels are {ratio:g} times the XY pixel size (limit {max_ratio:g}); "
                "XZ/YZ planes resampled that much do not look like training slices. Use planes = xy, or give the "
                "voxel ratio (--voxel-ratio) if the file's voxel size is wrong"
            )
        self.voxel_ratio = 1.0 if abs(ratio - 1.0) <= ISOTROPIC_TOLERANCE else ratio
        if slab_depth is not None and slab_depth < 1:
            raise DataError(f"slab depth {slab_depth} must be >= 1")
        self.slab_depth = slab_depth
        # context kept above and below each slab for the XZ/YZ passes: a quarter tile, in slices
        # (the gaussian blending already gives tile borders little weight)
        self.margin = math.ceil(self.tile_size / 4 / self.voxel_ratio) if margin is None else margin

    def iter_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z, probabilities (C, Y, X))`` in order: the mean of the three passes."""
        if not slices.is_stack:
            yield from self.base.iter_probabilities(slices)
            return
        depth = slices.count
        slab = depth if self.slab_depth is None else self.slab_depth
        for start in range(0, depth, slab):
            stop = min(depth, start + slab)
            low, high = (0, depth) if slab >= depth else (max(0, start - self.margin), min(depth, stop + self.margin))
            block = np.stack([slices[z] for z in range(low, high)])  # (D, Y, X, C) stored dtype
            total = self._slab_probabilities(block, start - low, stop - low)
            for offset in range(stop - start):
                yield start + offset, total[offset]

    def _slab_probabilities(self, block: np.ndarray, keep_from: int, keep_to: int) -> np.ndarray:
        """Mean of the XY, XZ and YZ probabilities of the block's slices keep_from..keep_to-1."""
        depth, height, width, _ = block.shape
        total = np.zeros((keep_to - keep_from, self.class_count, height, width), np.float32)
        for z, probabilities in self.base.iter_probabilities(Slices(block[keep_from:keep_to], rgb=True)):
            total[z] += probabilities
        # XZ: one plane per row y, (D, X); YZ: one plane per column x, (D, Y)
        for axis in (1, 2):
            planes = _ResampledPlanes(np.moveaxis(block, axis, 0), self.voxel_ratio)
            for index, probabilities in self.base.iter_probabilities(Slices(planes, rgb=True)):
                resampled = _resample_depth(probabilities, depth)[:, keep_from:keep_to]  # (C, d, other)
                if axis == 1:
                    total[:, :, index, :] += resampled.transpose(1, 0, 2)
                else:
                    total[:, :, :, index] += resampled.transpose(1, 0, 2)
        total /= 3.0
        return total


class _ResampledPlanes:
    """Planes ``(D, other, C)`` of a moved-axis block, stretched along D by the voxel ratio.

    Values keep the stored dtype (rounded) so the model's normalisation applies unchanged.
    """

    def __init__(self, planes: np.ndarray, ratio: float):
        self.planes, self.ratio = planes, ratio
        count, depth, other, channels = planes.shape
        self.depth = depth if ratio == 1.0 else max(1, round(depth * ratio))
        self.shape = (count, self.depth, other, channels)
        self.ndim, self.dtype = 4, planes.dtype

    def __getitem__(self, index: int) -> np.ndarray:
        plane = self.planes[index]
        if self.depth == plane.shape[0]:
            return plane
        tensor = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32)).permute(2, 0, 1)[None]
        stretched = F.interpolate(tensor, size=(self.depth, plane.shape[1]), mode="bilinear", align_corners=False)
        result = stretched[0].permute(1, 2, 0).numpy()
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            result = np.clip(np.rint(result), info.min, info.max)
        return result.astype(self.dtype)


def _resample_depth(probabilities: np.ndarray, depth: int) -> np.ndarray:
    """(C, D', other) -> (C, depth, other), linear along D (identity when already that depth)."""
    if probabilities.shape[1] == depth:
        return probabilities
    tensor = torch.from_numpy(np.ascontiguousarray(probabilities))[None]
    size = (depth, probabilities.shape[2])
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0].numpy()


def planar_predictor(
    base: Predictor,
    planes: str,
    *,
    voxel_ratio: float | None = None,
    slab_depth: int | None = None,
) -> Any:
    """The predictor for ``[Inference] planes``: the base itself for "xy", tri-planar for "xyz"."""
    if planes == "xy":
        return base
    if planes != "xyz":
        raise DataError(f"planes = {planes!r}: expected xy or xyz")
    return TriPlanarPredictor(base, voxel_ratio=voxel_ratio, slab_depth=slab_depth)


__all__ = ["DEFAULT_SLAB_DEPTH", "MAX_RATIO", "TriPlanarPredictor", "planar_predictor", "voxel_ratio_from_file"]
