"""Sliding-window prediction with smooth blending, for 2D images and 3D stacks of any size.

Tiles of ``tile_size`` image pixels are scaled by img_res / crop_size (as in training),
padded to what the network divides, predicted, turned into probabilities, scaled back and
blended (a linear crossfade over a halo in pixels by default, gaussian importance weights with a
fractional ``overlap``; see :mod:`.tiling`). Tiles are batched across slices; each slice is
handed out as soon as its last tile is done, so memory is bounded by tiles and a few slices,
not by the volume, and results can stream to disk (zarr, TIFF pages).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import InferenceConfig
from ..data.normalization import Normalization
from ..errors import Cancelled, DataError
from ..events import PredictionProgress, ProgressCallback, StopToken, ignore_events
from ..models import size_divisor
from ..models.probabilities import probabilities_from_logits
from ..plumbing.devices import select_device
from .tiling import auto_halo, auto_tile_size, fit_tile, halo_starts, importance_map, ramp_map, tile_starts

if TYPE_CHECKING:
    from ..forest.stages import StageOne
    from ..plumbing.array_types import PlaneArray, PlaneOutput
    from ..runs import TrainedModel


class ForestLike(Protocol):
    """What the predictor mixes in: a :class:`~schism_napari.forest.classifier.PixelClassifier`, or
    anything giving a plane's (K, Y, X) class probabilities."""

    def predict_proba(self, image: np.ndarray) -> np.ndarray: ...


class ProbabilitySource(Protocol):
    """What :func:`collect_prediction` reads: a :class:`Predictor`, or a predictor built on one."""

    @property
    def class_count(self) -> int: ...

    def iter_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]: ...

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray: ...


class Slices:
    """A lazy ``(N, Y, X, C)`` view of a 2D image or 3D stack, gray or RGB (numpy, zarr, dask).

    Only the slice asked for is read, so a volume on disk is never loaded whole.
    """

    def __init__(self, array: PlaneArray, *, rgb: bool = False):
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


RECENT_PLANES = 4  # batches of tiles span a few slices; a mixed-in forest reads the plane again


class StagedSlices:
    """Slices as stage 2 of a two-stage model reads them: each plane with stage 1's class
    probabilities as K more channels, in the plane's dtype (:meth:`schism_napari.forest.stages.StageOne.encode`).

    The last few staged planes are kept, so a prediction that also mixes the forest into the result
    (a held-out choice of "average") does not compute stage 1 twice."""

    def __init__(self, base: Slices, stage_one: StageOne, image_channels: int):
        self.base, self.stage_one, self.image_channels = base, stage_one, image_channels
        self.count, self.height, self.width = base.count, base.height, base.width
        self.is_stack, self.dtype = base.is_stack, base.dtype
        self.channels = stage_one.network_channels
        self._recent: dict[int, np.ndarray] = {}  # the planes the tiles are still being predicted from

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, z: int) -> np.ndarray:
        if z not in self._recent:
            if len(self._recent) >= RECENT_PLANES:
                del self._recent[next(iter(self._recent))]
            self._recent[z] = self._staged(z)
        return self._recent[z]

    def _staged(self, z: int) -> np.ndarray:
        plane = self.base[z]
        if plane.shape[-1] != self.image_channels:  # as the predictor adapts a plain image
            if self.image_channels == 1:
                plane = plane.mean(axis=-1, keepdims=True).astype(plane.dtype)
            else:
                plane = np.repeat(plane[..., :1], self.image_channels, axis=-1)
        return self.stage_one.encode(plane)

    @staticmethod
    def stage_one_part(plane: np.ndarray, stage_one: StageOne) -> np.ndarray:
        """Stage 1's (K, Y, X) probabilities back from a staged plane (its last K channels)."""
        from ..data.io import unit_range

        if plane.shape[-1] != stage_one.network_channels:
            return np.asarray(stage_one.probabilities(plane), dtype=np.float32)
        low, high = unit_range(plane.dtype)
        part = (plane[..., stage_one.image_channels :].astype(np.float32) - np.float32(low)) / np.float32(high - low)
        return np.ascontiguousarray(np.moveaxis(part, -1, 0))


@dataclass
class PredictionResult:
    probabilities: Any  # (C, Y, X) or (Z, C, Y, X) float32 (numpy or zarr); None when not kept
    labels: Any  # (Y, X) or (Z, Y, X) classes 0..C-1


class Predictor:
    """Tiled, blended prediction of a model over images and stacks larger than memory.

    Why tiles at all: a fully convolutional network gives the same answer on any input size, but its
    activations need ~0.6 KB per pixel, so a whole CT slice or volume does not fit; tiles bound the
    memory. Why these tiles: the cost of tiling is the pixels computed twice, so by default
    (``[Inference] overlap = None``) tiles are as large as the device's free memory allows
    (:func:`.tiling.auto_tile_size`), spread evenly, and overlap by a halo in pixels sized by the
    network's receptive-field scale (:func:`.tiling.auto_halo`), not by a fraction of the tile; a
    linear crossfade across the halo keeps the result seamless (>= 99.5 % argmax agreement with one
    whole-image forward, see ``benchmarks/bench_inference.py``). A fractional ``overlap`` keeps the
    older gaussian-blended layout. The model runs in ``channels_last`` under ``torch.inference_mode``;
    on CUDA also in fp16 autocast, with cuDNN benchmarking and pinned, non-blocking tile copies.

    ``forest`` (a :class:`~schism_napari.forest.classifier.PixelClassifier`, or anything with its
    ``predict_proba(plane)``) and ``forest_weight`` mix a forest's probabilities into each slice's:
    0.5 is their mean, 1 the forest alone (the network is then not run), as a run's held-out choice
    says (:mod:`schism_napari.forest.selection`).

    ``stage_one`` (a :class:`~schism_napari.forest.stages.StageOne`) makes ``model`` the second stage of a
    two-stage model: each slice is given to it with the forest's class probabilities as K more
    channels (:class:`StagedSlices`), computed once per slice before its tiles.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_count: int,
        in_channels: int,
        normalization: Normalization,
        scale: float = 1.0,
        settings: InferenceConfig | None = None,
        tile_size: int | None = None,
        device: torch.device | str = "cpu",
        callback: ProgressCallback = ignore_events,
        stop: StopToken | None = None,
        forest: ForestLike | None = None,
        forest_weight: float = 0.0,
        stage_one: StageOne | None = None,
    ):
        self.settings = settings or InferenceConfig()
        self.stage_one = stage_one
        mixed = forest is not None and forest_weight > 0
        self.forest: ForestLike | None = forest if mixed else None
        self.forest_weight = float(forest_weight) if mixed else 0.0
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # channels_last: oneDNN's fast layout on a CPU, and what fp16 tensor cores want on CUDA
        self.channels_last = self.device.type in ("cpu", "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.device.type == "cuda":  # tiles keep one shape: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.class_count, self.in_channels = class_count, in_channels
        self.normalization, self.scale = normalization, scale
        self.divisor = size_divisor(model)
        self.callback, self.stop = callback, stop or StopToken()
        self.tile_size = self.settings.tile_size or tile_size or self._default_tile_size()
        halo = self.settings.halo if self.settings.halo is not None else auto_halo(self.divisor, scale)
        self.halo = min(halo, self.tile_size // 2)

    def _default_tile_size(self) -> int:
        if self.settings.overlap is not None:
            return 256
        return auto_tile_size(
            self.device.type, batch_size=self.settings.batch_size, divisor=self.divisor, scale=self.scale
        )

    @classmethod
    def from_trained(
        cls, trained: TrainedModel, *, settings: InferenceConfig | None = None, device: str = "auto", **options: Any
    ) -> Predictor:
        """Build from a :class:`~schism_napari.runs.TrainedModel`; tiles default to crop_size. A run
        whose held-out choice includes the forest predicts with it (``forest=None`` leaves it out)."""
        config = trained.config
        options.setdefault("forest", getattr(trained, "forest", None))
        options.setdefault("forest_weight", getattr(trained, "forest_weight", 0.0))
        options.setdefault("stage_one", getattr(trained, "stage_one", None))
        settings = settings or config.inference
        return cls(
            trained.model,
            class_count=config.model.class_count,
            in_channels=trained.in_channels,
            normalization=trained.normalization,
            scale=config.scale,
            settings=settings,
            # a fractional overlap keeps tiles of crop_size; halo tiling sizes them by free memory
            tile_size=config.tile_size if settings.overlap is not None else settings.tile_size,
            device=select_device(device),
            **options,
        )

    # ---- public API --------------------------------------------------------------------------

    def predict(
        self,
        image: PlaneArray | Slices,
        *,
        rgb: bool = False,
        keep_probabilities: bool = True,
        probabilities_out: PlaneOutput | None = None,
        labels_out: PlaneOutput | None = None,
    ) -> PredictionResult:
        """Predict a 2D image ``(Y, X[, C])`` or a stack ``(Z, Y, X[, C])``.

        ``probabilities_out`` / ``labels_out`` may be zarr arrays (or any array accepting slice
        assignment) of shape ``(Z, C, Y, X)`` / ``(Z, Y, X)`` to stream results to disk.
        """
        slices = image if isinstance(image, Slices) else Slices(image, rgb=rgb)
        return collect_prediction(self, slices, keep_probabilities, probabilities_out, labels_out)

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """(C, Y, X) -> classes; binary models use the configured threshold."""
        if probabilities.shape[0] == 2:
            return (probabilities[1] > self.settings.threshold).astype(np.uint8)
        return _argmax_classes(probabilities, np.uint8 if self.class_count <= 256 else np.uint16)

    def iter_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z, probabilities (C, Y, X))`` slice by slice, in order (with the forest's mixed in)."""
        if self.stage_one is not None:
            slices = StagedSlices(slices, self.stage_one, self.in_channels)  # type: ignore[assignment]  # as Slices
        if self.forest is None:
            yield from self._network_probabilities(slices)
        elif self.forest_weight >= 1:
            for z in range(slices.count):
                if self.stop.requested:
                    raise Cancelled("prediction cancelled")
                yield z, self._forest_probabilities(slices[z])
                self._report(z + 1, slices.count, z + 1, slices.count)
        else:
            for z, probabilities in self._network_probabilities(slices):
                forest = self._forest_probabilities(slices[z])
                yield z, ((1 - self.forest_weight) * probabilities + self.forest_weight * forest).astype(np.float32)

    def _forest_probabilities(self, plane: np.ndarray) -> np.ndarray:
        if self.stage_one is not None:  # a staged plane: the image, then stage 1's probabilities
            if self.forest is self.stage_one.forest:  # computed already
                return StagedSlices.stage_one_part(plane, self.stage_one)
            plane = plane[..., : self.stage_one.image_channels]
        assert self.forest is not None  # only called when a forest is mixed in
        probabilities = np.asarray(self.forest.predict_proba(plane), dtype=np.float32)
        if probabilities.shape[0] != self.class_count:
            raise DataError(f"the forest predicts {probabilities.shape[0]} classes, the network {self.class_count}")
        return probabilities

    def _network_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]:
        """The network's ``(z, probabilities (C, Y, X))``, slice by slice, in order."""
        # Planes are reflect-padded at the bottom/right to what the network divides, as a
        # whole-image forward pass would be, so border tiles see the same context.
        height, width = slices.height, slices.width
        padded_h, padded_w = _round_up(height, self.divisor), _round_up(width, self.divisor)
        (tile_h, tile_w), positions, weights = self.layout(padded_h, padded_w)
        weight_sum = torch.zeros(padded_h, padded_w)
        for y, x in positions:
            weight_sum[y : y + tile_h, x : x + tile_w] += weights
        # flat weights (no overlap, or constant blending) need no multiplication per tile
        weights_device = None if bool((weights == 1).all()) else weights.to(self.device)
        a, b = self._affine(slices)
        total = len(positions) * slices.count
        done = 0
        pending: dict[int, list[Any]] = {}  # z -> [accumulator, tiles still to come]
        batch: list[tuple[int, int, int, torch.Tensor]] = []
        next_to_emit = 0

        def flush() -> None:
            nonlocal done
            tiles = torch.stack([t for *_, t in batch])
            if self.device.type == "cuda":  # pinned host memory: the copy overlaps the previous batch's work
                tiles = tiles.pin_memory().to(self.device, non_blocking=True)
            else:
                tiles = tiles.to(self.device)
            probabilities = self._forward(tiles)
            if weights_device is not None:
                probabilities = probabilities * weights_device
            probabilities = probabilities.cpu()
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

    def layout(self, height: int, width: int) -> tuple[tuple[int, int], list[tuple[int, int]], torch.Tensor]:
        """Tile size, tile origins and per-pixel tile weights for a (padded) plane of ``height x width``."""
        if self.settings.overlap is not None:  # a fraction of the tile, gaussian weights
            tile_h, tile_w = min(self.tile_size, height), min(self.tile_size, width)
            ys = tile_starts(height, tile_h, self.settings.overlap)
            xs = tile_starts(width, tile_w, self.settings.overlap)
            weights = importance_map(tile_h, tile_w, self.settings.blending)
        else:  # a halo in pixels, tiles spread evenly, linear crossfade
            tile_h = fit_tile(height, self.tile_size, self.halo, self.divisor)
            tile_w = fit_tile(width, self.tile_size, self.halo, self.divisor)
            ys, xs = halo_starts(height, tile_h, self.halo), halo_starts(width, tile_w, self.halo)
            if self.settings.blending == "constant":
                weights = importance_map(tile_h, tile_w, "constant")
            else:
                weights = ramp_map(tile_h, tile_w, self.halo if len(ys) > 1 else 0, self.halo if len(xs) > 1 else 0)
        return (tile_h, tile_w), [(y, x) for y in ys for x in xs], torch.from_numpy(weights)

    @torch.inference_mode()
    def predict_whole(self, image: np.ndarray, *, rgb: bool = False) -> np.ndarray:
        """One forward pass over a whole 2D image (no tiles): the reference tiling must match."""
        slices: Any = Slices(image, rgb=rgb)
        if self.stage_one is not None:
            slices = StagedSlices(slices, self.stage_one, self.in_channels)
        a, b = self._affine(slices)
        plane = self._normalise(slices[0], a, b)
        return self._forward(plane[None].to(self.device))[0].cpu().numpy()

    # ---- internals ---------------------------------------------------------------------------

    @property
    def network_channels(self) -> int:
        """The channels the network takes: the image's, and stage 1's probabilities in a two-stage model."""
        return self.in_channels if self.stage_one is None else self.stage_one.network_channels

    def _affine(self, slices: Slices) -> tuple[torch.Tensor, torch.Tensor]:
        normalization = self.normalization
        if self.stage_one is not None:
            normalization = self.stage_one.network_normalization(normalization)
        a, b = normalization.affine(slices.dtype, self.network_channels)
        return torch.from_numpy(a)[:, None, None], torch.from_numpy(b)[:, None, None]

    def _normalise(self, plane: np.ndarray, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(Y, X, C) stored dtype -> (network channels, Y, X) float32 normalised."""
        tensor = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32)).permute(2, 0, 1)
        if tensor.shape[0] != self.network_channels:
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


def collect_prediction(
    source: ProbabilitySource,
    slices: Slices,
    keep_probabilities: bool,
    probabilities_out: PlaneOutput | None,
    labels_out: PlaneOutput | None,
) -> PredictionResult:
    """Labels (and probabilities) of every slice that ``source.iter_probabilities`` yields, into the
    given outputs or new arrays; a 2D image gives 2D results. Shared by :class:`Predictor` and the
    predictors built on it (tri-planar consensus, ensembles)."""
    labels_dtype = np.uint8 if source.class_count <= 256 else np.uint16
    labels = labels_out
    if labels is None:
        labels = np.zeros((slices.count, slices.height, slices.width), labels_dtype)
    probabilities: Any = probabilities_out  # the caller's output or a new array: either is read back in 2D
    if probabilities is None and keep_probabilities:
        probabilities = np.zeros((slices.count, source.class_count, slices.height, slices.width), dtype=np.float32)
    for z, slice_probabilities in source.iter_probabilities(slices):
        labels[z] = source.labels_from_probabilities(slice_probabilities)
        if probabilities is not None:
            probabilities[z] = slice_probabilities
    if not slices.is_stack and isinstance(labels, np.ndarray):
        labels = labels[0]
        probabilities = None if probabilities is None else probabilities[0]
    return PredictionResult(probabilities, labels)


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


def _argmax_classes(probabilities: np.ndarray, dtype: type[np.uint8] | type[np.uint16]) -> np.ndarray:
    """``probabilities.argmax(axis=0)`` (ties to the lowest class) in a few passes over whole planes:
    2x faster than numpy's argmax along the first axis, which walks the class axis pixel by pixel."""
    labels = np.zeros(probabilities.shape[1:], dtype)
    best = probabilities[0].copy()
    for k in range(1, len(probabilities)):
        np.copyto(labels, dtype(k), where=probabilities[k] > best)
        np.maximum(best, probabilities[k], out=best)
    return labels


def _finish(accumulator: torch.Tensor, weight_sum: torch.Tensor, height: int, width: int) -> np.ndarray:
    return (accumulator / weight_sum)[:, :height, :width].numpy()
