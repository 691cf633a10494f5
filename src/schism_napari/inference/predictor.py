"""Sliding-window prediction with smooth blending, for 2D images and 3D stacks of any size.

Tiles of ``tile_size`` image pixels are scaled by img_res / crop_size (as in training),
padded to what the network divides, predicted, turned into probabilities, scaled back and
blended with gaussian importance weights. Tiles are batched across slices; each slice is
handed out as soon as its last tile is done, so memory is bounded by tiles and a few slices,
not by the volume, and results can stream to disk (zarr, TIFF pages).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import InferenceConfig
from ..data.normalization import Normalization
from ..devices import select_device
from ..errors import Cancelled, DataError
from ..events import PredictionProgress, ProgressCallback, StopToken, ignore_events
from ..models import size_divisor
from ..probabilities import probabilities_from_logits
from .tiling import importance_map, tile_starts


class Slices:
    """A lazy ``(N, Y, X, C)`` view of a 2D image or 3D stack, gray or RGB (numpy, zarr, dask).

    Only the slice asked for is read, so a volume on disk is never loaded whole.
    """

    def __init__(self, array: Any, *, rgb: bool = False):
        self.array, self.rgb = array, rgb
        spatial = array.ndim - (1 if rgb else 0)
        if spatial not in (2, 3):
            raise DataError(
                f"expected a 2D image or a 3D stack{' (RGB)' if rgb else ''}, got shape {tuple(array.shape)}"
            )
        self.is_stack = spatial == 3
        self.count = int(array.shape[0]) if self.is_stack else 1
        self.height, self.width = (int(v) for v in array.shape[spatial - 2 : spatial])
        self.channels = min(int(array.shape[-1]), 3) if rgb else 1
        self.dtype = np.dtype(array.dtype)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, z: int) -> np.ndarray:
        plane = np.asarray(self.array[z] if self.is_stack else self.array)
        return plane[..., :3] if self.rgb else plane[..., np.newaxis]


@dataclass
class PredictionResult:
    probabilities: Any  # (C, Y, X) or (Z, C, Y, X) float32 (numpy or zarr); None when not kept
    labels: Any  # (Y, X) or (Z, Y, X) classes 0..C-1


class Predictor:
    def __init__(
        self,
        model: nn.Module,
        *,
        class_count: int,
        in_channels: int,
        normalization: Normalization,
        scale: float = 1.0,
        settings: InferenceConfig | None = None,
        tile_size: int = 256,
        device: torch.device | str = "cpu",
        callback: ProgressCallback = ignore_events,
        stop: StopToken | None = None,
    ):
        self.settings = settings or InferenceConfig()
        self.tile_size = self.settings.tile_size or tile_size
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.class_count, self.in_channels = class_count, in_channels
        self.normalization, self.scale = normalization, scale
        self.divisor = size_divisor(model)
        self.callback, self.stop = callback, stop or StopToken()

    @classmethod
    def from_trained(
        cls, trained: Any, *, settings: InferenceConfig | None = None, device: str = "auto", **options: Any
    ) -> Predictor:
        """Build from a :class:`~schism_napari.runs.TrainedModel`; tiles default to crop_size."""
        config = trained.config
        return cls(
            trained.model,
            class_count=config.model.class_count,
            in_channels=trained.in_channels,
            normalization=trained.normalization,
            scale=config.scale,
            settings=settings or config.inference,
            tile_size=config.tile_size,
            device=select_device(device),
            **options,
        )

    # ---- public API --------------------------------------------------------------------------

    def predict(
        self,
        image: Any,
        *,
        rgb: bool = False,
        keep_probabilities: bool = True,
        probabilities_out: Any = None,
        labels_out: Any = None,
    ) -> PredictionResult:
        """Predict a 2D image ``(Y, X[, C])`` or a stack ``(Z, Y, X[, C])``.

        ``probabilities_out`` / ``labels_out`` may be zarr arrays (or any array accepting slice
        assignment) of shape ``(Z, C, Y, X)`` / ``(Z, Y, X)`` to stream results to disk.
        """
        slices = image if isinstance(image, Slices) else Slices(image, rgb=rgb)
        shape = (slices.count, self.class_count, slices.height, slices.width)
        labels_dtype = np.uint8 if self.class_count <= 256 else np.uint16
        labels = (
            labels_out
            if labels_out is not None
            else np.zeros((slices.count, slices.height, slices.width), labels_dtype)
        )
        probabilities = probabilities_out
        if probabilities is None and keep_probabilities:
            probabilities = np.zeros(shape, dtype=np.float32)
        for z, slice_probabilities in self.iter_probabilities(slices):
            labels[z] = self.labels_from_probabilities(slice_probabilities)
            if probabilities is not None:
                probabilities[z] = slice_probabilities
        if not slices.is_stack and isinstance(labels, np.ndarray):
            labels = labels[0]
            probabilities = None if probabilities is None else probabilities[0]
        return PredictionResult(probabilities, labels)

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """(C, Y, X) -> classes; binary models use the configured threshold."""
        if probabilities.shape[0] == 2:
            return (probabilities[1] > self.settings.threshold).astype(np.uint8)
        return probabilities.argmax(axis=0).astype(np.uint8 if self.class_count <= 256 else np.uint16)

    def iter_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z, probabilities (C, Y, X))`` slice by slice, in order."""
        # Planes are reflect-padded at the bottom/right to what the network divides, as a
        # whole-image forward pass would be, so border tiles see the same context.
        height, width = slices.height, slices.width
        padded_h, padded_w = _round_up(height, self.divisor), _round_up(width, self.divisor)
        tile_h, tile_w = min(self.tile_size, padded_h), min(self.tile_size, padded_w)
        positions = [
            (y, x)
            for y in tile_starts(padded_h, tile_h, self.settings.overlap)
            for x in tile_starts(padded_w, tile_w, self.settings.overlap)
        ]
        weights = torch.from_numpy(importance_map(tile_h, tile_w, self.settings.blending))
        weight_sum = torch.zeros(padded_h, padded_w)
        for y, x in positions:
            weight_sum[y : y + tile_h, x : x + tile_w] += weights
        weights_device = weights.to(self.device)
        a, b = self._affine(slices)
        total = len(positions) * slices.count
        done = 0
        pending: dict[int, list[Any]] = {}  # z -> [accumulator, tiles still to come]
        batch: list[tuple[int, int, int, torch.Tensor]] = []
        next_to_emit = 0

        def flush() -> None:
            nonlocal done
            tiles = torch.stack([t for *_, t in batch]).to(self.device)
            probabilities = (self._forward(tiles) * weights_device).cpu()
            for (z, y, x, _), tile in zip(batch, probabilities, strict=True):
                accumulator = pending[z]
                accumulator[0][:, y : y + tile_h, x : x + tile_w] += tile
                accumulator[1] -= 1
            done += len(batch)
            batch.clear()

        for z in range(slices.count):
            if self.stop.requested:
                raise Cancelled("prediction cancelled")
            plane = _pad_to(self._normalise(slices[z], a, b), padded_h, padded_w)
            pending[z] = [torch.zeros(self.class_count, padded_h, padded_w), len(positions)]
            for y, x in positions:
                batch.append((z, y, x, plane[:, y : y + tile_h, x : x + tile_w]))
                if len(batch) == self.settings.batch_size:
                    flush()
                    self._report(done, total, next_to_emit, slices.count)
                    if self.stop.requested:
                        raise Cancelled("prediction cancelled")
            while next_to_emit in pending and pending[next_to_emit][1] == 0:
                yield next_to_emit, _finish(pending.pop(next_to_emit)[0], weight_sum, height, width)
                next_to_emit += 1
        if batch:
            flush()
        self._report(done, total, slices.count, slices.count)
        while next_to_emit in pending:
            yield next_to_emit, _finish(pending.pop(next_to_emit)[0], weight_sum, height, width)
            next_to_emit += 1

    @torch.inference_mode()
    def predict_whole(self, image: np.ndarray, *, rgb: bool = False) -> np.ndarray:
        """One forward pass over a whole 2D image (no tiles): the reference tiling must match."""
        slices = Slices(image, rgb=rgb)
        a, b = self._affine(slices)
        plane = self._normalise(slices[0], a, b)
        return self._forward(plane[None].to(self.device))[0].cpu().numpy()

    # ---- internals ---------------------------------------------------------------------------

    def _affine(self, slices: Slices) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.normalization.affine(slices.dtype, self.in_channels)
        return torch.from_numpy(a)[:, None, None], torch.from_numpy(b)[:, None, None]

    def _normalise(self, plane: np.ndarray, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(Y, X, C) stored dtype -> (in_channels, Y, X) float32 normalised."""
        tensor = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32)).permute(2, 0, 1)
        if tensor.shape[0] != self.in_channels:
            tensor = (
                tensor.mean(0, keepdim=True) if self.in_channels == 1 else tensor[:1].expand(self.in_channels, -1, -1)
            )
        return tensor * a + b

    @torch.inference_mode()
    def _forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Normalised tiles (B, C, h, w) -> class probabilities (B, classes, h, w)."""
        height, width = tiles.shape[-2:]
        if self.scale != 1.0:
            size = (max(1, round(height * self.scale)), max(1, round(width * self.scale)))
            tiles = F.interpolate(tiles, size=size, mode="bilinear", align_corners=False, antialias=self.scale < 1)
        net_h, net_w = tiles.shape[-2:]
        tiles = _pad_to(tiles, _round_up(net_h, self.divisor), _round_up(net_w, self.divisor))
        if self.channels_last:
            tiles = tiles.contiguous(memory_format=torch.channels_last)
        flips = [(), (-1,), (-2,), (-2, -1)] if self.settings.tta else [()]
        probabilities = None
        use_amp = self.device.type == "cuda"
        for dims in flips:
            batch = tiles.flip(dims) if dims else tiles
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
                logits = self.model(batch)
            result = probabilities_from_logits(logits.float())
            result = result.flip(dims) if dims else result
            probabilities = result if probabilities is None else probabilities + result
        assert probabilities is not None  # flips is never empty
        probabilities = probabilities[..., :net_h, :net_w] / len(flips)
        if self.scale != 1.0:
            probabilities = F.interpolate(probabilities, size=(height, width), mode="bilinear", align_corners=False)
        return probabilities

    def _report(self, done: int, total: int, slices_done: int, slices: int) -> None:
        self.callback(PredictionProgress(done, total, slices_done, slices))


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def _pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad (..., h, w) at the bottom/right to (height, width); replicate when too small."""
    pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if not (pad_h or pad_w):
        return tensor
    mode = "reflect" if pad_h < tensor.shape[-2] and pad_w < tensor.shape[-1] else "replicate"
    batched = tensor if tensor.ndim == 4 else tensor[None]
    padded = F.pad(batched, (0, pad_w, 0, pad_h), mode=mode)
    return padded if tensor.ndim == 4 else padded[0]


def _finish(accumulator: torch.Tensor, weight_sum: torch.Tensor, height: int, width: int) -> np.ndarray:
    return (accumulator / weight_sum)[:, :height, :width].numpy()
