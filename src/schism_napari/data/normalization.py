"""Intensity normalisation shared by training and prediction, in SCHISM's data_stats.json units.

Stats are a mean and std per channel in 0..1 units, where integer images are scaled by their
dtype's full range (uint8 / 255, uint16 / 65535) instead of clipping 16-bit data at 255.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .io import unit_range


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def affine(self, dtype: np.dtype, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per channel so that ``raw * a + b`` is the normalised input (float32)."""
        low, high = unit_range(dtype)
        mean = np.asarray(self._per_channel(self.mean, channels), dtype=np.float64)
        std = np.maximum(np.asarray(self._per_channel(self.std, channels), dtype=np.float64), 1e-6)
        a = 1.0 / ((high - low) * std)
        b = (-low / (high - low) - mean) / std
        return a.astype(np.float32), b.astype(np.float32)

    @staticmethod
    def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
        if len(values) == channels:
            return list(values)
        if channels == 1:
            return [float(np.mean(values))]
        if len(values) == 1:
            return list(values) * channels
        raise DataError(f"normalisation stats have {len(values)} channels, the images {channels}")

    def to_json(self) -> list[list[float]]:
        """SCHISM writes three values even for gray images."""
        mean, std = list(self.mean), list(self.std)
        if len(mean) == 1:
            mean, std = mean * 3, std * 3
        return [[round(v, 8) for v in mean], [round(v, 8) for v in std]]


class StatsAccumulator:
    """Exact per-channel mean and std over many images, in 0..1 units."""

    def __init__(self) -> None:
        self.total = 0
        self.sums: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        """``image`` is (..., Y, X, C) in its stored dtype."""
        low, high = unit_range(image.dtype)
        flat = image.reshape(-1, image.shape[-1])
        for start in range(0, flat.shape[0], 1 << 22):  # bounded temporary memory
            chunk = (flat[start : start + (1 << 22)].astype(np.float64) - low) / (high - low)
            sums, squares = chunk.sum(axis=0), np.square(chunk).sum(axis=0)
            if self.sums is None:
                self.sums, self.squares = sums, squares
            else:
                self.sums, self.squares = self.sums + sums, self.squares + squares
            self.total += chunk.shape[0]

    def merge(self, other: StatsAccumulator) -> None:
        if other.sums is None or other.squares is None:
            return
        if self.sums is None or self.squares is None:
            self.sums, self.squares, self.total = other.sums.copy(), other.squares.copy(), other.total
        else:
            self.sums, self.squares = self.sums + other.sums, self.squares + other.squares
            self.total += other.total

    def result(self) -> Normalization:
        if self.sums is None or self.squares is None or self.total == 0:
            raise DataError("no pixels to compute normalisation statistics from")
        mean = self.sums / self.total
        std = np.sqrt(np.maximum(self.squares / self.total - mean**2, 0.0))
        return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def read_stats_file(path: Path) -> dict[str, Normalization]:
    """Read SCHISM's ``{"name": [[means], [stds]], "default": [...]}``."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected an object of dataset name -> [[means], [stds]]")
    stats = {}
    for name, value in content.items():
        try:
            mean, std = value
            stats[name] = Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))
            if len(stats[name].mean) != len(stats[name].std) or not stats[name].mean:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{path}: entry {name!r} must be [[mean per channel], [std per channel]]") from None
    return stats


def write_stats_file(path: Path, stats: dict[str, Normalization], *, overwrite: bool = False) -> Path:
    from ..plumbing.atomic import atomic_write_text

    content = {name: value.to_json() for name, value in stats.items()}
    return atomic_write_text(Path(path), json.dumps(content, indent=2) + "\n", overwrite=overwrite)
