"""Tiled, overlapping, blended prediction over 2D images and 3D stacks."""

from .predictor import PredictionResult, Predictor, Slices
from .tiling import importance_map, tile_starts

__all__ = ["PredictionResult", "Predictor", "Slices", "importance_map", "tile_starts"]
