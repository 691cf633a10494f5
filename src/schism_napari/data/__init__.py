"""Data: reading images and masks, dataset layouts, normalisation statistics, splits and crops."""

from .dataset import Sample, SegmentationData, load_dataset, samples_from_arrays
from .discovery import DatasetFolder, discover_datasets, list_image_files
from .io import read_image, read_mask
from .labels import labels_to_mask, mask_to_labels
from .normalization import Normalization

__all__ = [
    "DatasetFolder",
    "Normalization",
    "Sample",
    "SegmentationData",
    "discover_datasets",
    "labels_to_mask",
    "list_image_files",
    "load_dataset",
    "mask_to_labels",
    "read_image",
    "read_mask",
    "samples_from_arrays",
]
