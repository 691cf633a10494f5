"""Where tiles go and how much each pixel of a tile counts when tiles overlap.

Two ways to overlap tiles:

- **a halo in pixels** (the default, ``[Inference] overlap = None``): neighbouring tiles share
  ``halo`` pixels, a margin sized by how far the network's border effects reach (its receptive
  field scale), not by the tile. Tiles are as large as memory allows, spread evenly over the image,
  and blended with a linear crossfade across the shared margin, so every pixel away from a seam
  comes from exactly one tile. A 64 px halo around 512 px tiles computes 1.31x the image pixels;
  a 0.25 overlap of 256 px tiles computes 1.78x.
- **a fraction of the tile** (``overlap = 0.25``, SCHISM-napari before 0.2): stride
  ``tile * (1 - overlap)``, gaussian importance weights (as nnU-Net and MONAI).
"""

from __future__ import annotations

import math

import numpy as np

# Peak bytes per network pixel of one image in a batch during an inference forward pass, measured
# for smp Unet/resnet18 on CPU (about 640 B; with margin for wider encoders and allocator slack).
BYTES_PER_NETWORK_PIXEL = 1024
# Largest tile side (network pixels): per pixel, smp Unet/resnet18 ran as fast on 1024 px tiles as on 256 px
# ones on a CPU (0.101 / 0.091 / 0.093 MP/s at 1024 / 512 / 256, one thread, interleaved), so larger tiles
# only save overlap; memory is the real limit. A GPU fills better with large tiles.
MAX_TILE = {"cpu": 1024, "cuda": 2048, "mps": 1024}
MIN_HALO = 32


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile origins covering ``length``: stride tile * (1 - overlap), the last tile flush with the end.

    No square grid is assumed and nothing is left out at the far edge.
    """
    return starts_with_stride(length, tile, max(1, round(tile * (1 - overlap))))


def starts_with_stride(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins every ``stride`` pixels, the last tile flush with the end of ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, max(1, stride)))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def halo_starts(length: int, tile: int, halo: int) -> list[int]:
    """Tile origins where neighbours share at least ``halo`` pixels, the last tile flush with the end."""
    return starts_with_stride(length, tile, tile - halo)


def fit_tile(length: int, tile: int, halo: int, divisor: int) -> int:
    """The smallest tile side (a multiple of ``divisor``, at most ``tile``) that covers ``length`` with
    as few tiles as ``tile`` needs, so the tiles spread evenly instead of the last one overlapping most."""
    if length <= tile:
        return length
    count = math.ceil((length - halo) / (tile - halo))
    fitted = math.ceil((length - halo) / count) + halo
    fitted = -(-fitted // divisor) * divisor
    return min(max(fitted, halo + divisor), tile)


def auto_halo(divisor: int, scale: float = 1.0) -> int:
    """Halo (image pixels) from the network's scale: twice its size divisor (its coarsest stride,
    64 px for a 5-level encoder), at least 32 network pixels, converted to image pixels."""
    network = max(MIN_HALO, 2 * divisor)
    return max(1, math.ceil(network / scale))


def auto_tile_size(
    device_type: str, *, batch_size: int, divisor: int, scale: float = 1.0, free_bytes: int | None = None
) -> int:
    """Tile side (image pixels) from the memory free on the device: a quarter of it (half on CUDA)
    for one batch of tiles, capped by :data:`MAX_TILE`, a multiple of ``divisor``, at least 128."""
    if free_bytes is None:
        from ..plumbing.resources import available_memory

        free_bytes = available_memory(device_type)
    share = 0.5 if device_type == "cuda" else 0.25
    network_pixels = free_bytes * share / (max(1, batch_size) * BYTES_PER_NETWORK_PIXEL)
    network_side = min(int(math.sqrt(max(network_pixels, 1))), MAX_TILE.get(device_type, 1024))
    side = int(network_side / scale) // divisor * divisor
    return max(side, 128 // divisor * divisor or divisor)


def ramp_map(height: int, width: int, halo_y: int, halo_x: int) -> np.ndarray:
    """Per-pixel weights of a tile for halo tiling: 1 inside, a linear ramp over the ``halo`` outermost
    pixels. Two neighbours sharing exactly ``halo`` pixels sum to 1 there: a seamless crossfade."""

    def profile(n: int, halo: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        return np.minimum(1.0, np.minimum(i + 1, n - i) / (halo + 1))

    return np.outer(profile(height, halo_y), profile(width, halo_x)).astype(np.float32)


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
