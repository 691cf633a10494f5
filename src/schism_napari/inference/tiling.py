"""Where tiles go and how much each pixel of a tile counts when tiles overlap."""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile origins covering ``length``: stride tile * (1 - overlap), the last tile flush with the end.

    No square grid is assumed and nothing is left out at the far edge.
    """
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def importance_map(height: int, width: int, blending: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Per-pixel weights of a tile: a gaussian centred on the tile (sigma = side / 8), so tile
    borders, where the network sees least context, count least (as in nnU-Net); or flat."""
    if blending == "constant":
        return np.ones((height, width), dtype=np.float32)

    def profile(n: int) -> np.ndarray:
        coordinates = np.arange(n, dtype=np.float64) - (n - 1) / 2
        return np.exp(-0.5 * (coordinates / max(n * sigma_scale, 1e-6)) ** 2)

    weights = np.outer(profile(height), profile(width))
    weights /= weights.max()
    return np.maximum(weights, 1e-6).astype(np.float32)
