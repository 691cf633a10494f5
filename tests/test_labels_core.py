"""Core logic behind the correction loop: what counts as a label, where the model is unsure, how dataset
files become layer data (shared by the napari reader and the Dataset widget)."""

from __future__ import annotations

import numpy as np
import pytest

from schism_napari.data.io import IGNORE
from schism_napari.data.labels import corrections_to_mask, labelled_pixels
from schism_napari.data.uncertainty import margin_uncertainty, most_uncertain_slice
from schism_napari.errors import DataError


def test_only_edited_pixels_and_reviewed_slices_are_labels():
    predicted = np.full((3, 4, 5), 2, np.uint8)  # the model said "class 1" everywhere
    edited = predicted.copy()
    edited[0, 1, 1] = 1  # the user corrected one pixel to class 0
    edited[2, 0, :2] = 3  # and two pixels to class 2
    mask = corrections_to_mask(predicted, edited, class_count=3)
    assert mask[0, 1, 1] == 0 and (mask[2, 0, :2] == 2).all()
    assert np.count_nonzero(mask != IGNORE) == 3  # the uncorrected prediction is not ground truth
    reviewed = corrections_to_mask(predicted, edited, class_count=3, reviewed={1})
    assert (reviewed[1] == 1).all()  # the whole reviewed slice, as predicted
    assert np.count_nonzero(reviewed != IGNORE) == 3 + 20
    erased = edited.copy()
    erased[1, 0, 0] = 0  # erased with the eraser: not painted, even on a reviewed slice
    assert corrections_to_mask(predicted, erased, class_count=3, reviewed={1})[1, 0, 0] == IGNORE


def test_corrections_of_a_2d_image_and_shape_errors():
    predicted = np.ones((4, 4), np.uint8)
    edited = predicted.copy()
    edited[0, 0] = 2
    assert np.count_nonzero(corrections_to_mask(predicted, edited, 2) != IGNORE) == 1
    assert np.count_nonzero(corrections_to_mask(predicted, edited, 2, reviewed={0}) != IGNORE) == 16
    with pytest.raises(DataError, match="differ in shape"):
        corrections_to_mask(predicted, edited[:2], 2)
    with pytest.raises(DataError, match="up to 5"):
        corrections_to_mask(predicted, np.full((4, 4), 5, np.uint8), 2)


def test_labelled_pixels_per_class_and_slice():
    mask = np.full((3, 4, 4), IGNORE, np.uint8)
    mask[0, 0, :3] = 0
    mask[2, 1, 1] = 0
    mask[2, 2, :2] = 2
    flat = np.full((4, 4), IGNORE, np.uint8)
    flat[0, 0] = 1
    assert labelled_pixels([mask, flat], 3) == [(4, [0, 2]), (1, [0]), (2, [2])]


def test_margin_uncertainty_and_the_next_slice_to_correct():
    p = np.zeros((3, 4, 2, 2), np.float32)  # (C, Z, Y, X)
    p[0] = 1.0  # certain everywhere...
    p[:, 2] = [[[0.4]], [[0.35]], [[0.25]]]  # ...but slice 2 hesitates between classes 0 and 1
    p[:, 3] = [[[0.6]], [[0.3]], [[0.1]]]
    u = margin_uncertainty(p, class_axis=0)
    assert u.shape == (4, 2, 2) and u.dtype == np.float32
    np.testing.assert_allclose(u[0], 0.0)
    np.testing.assert_allclose(u[2], 0.95, atol=1e-6)
    np.testing.assert_allclose(u[3], 0.7, atol=1e-6)
    assert most_uncertain_slice(u) == 2
    assert most_uncertain_slice(u, exclude={2}) == 3  # a reviewed slice is not proposed again
    assert most_uncertain_slice(u, exclude={0, 1, 2, 3}) is None
    assert most_uncertain_slice(u[0]) is None  # 2D
    binary = np.stack([np.full((2, 2), 0.5), np.full((2, 2), 0.5)])
    np.testing.assert_allclose(margin_uncertainty(binary), 1.0)


def test_read_pair_is_what_the_reader_shows(sample_files):
    """The Dataset widget's one pair and the reader's stack come from the same decoding."""
    from schism_napari._napari import read_dataset_folder
    from schism_napari.data.discovery import discover_datasets
    from schism_napari.data.layers import read_pair

    _, folders = discover_datasets(sample_files.datasets)
    rock_b = next(f for f in folders if f.name == "rock_b")
    image, rgb, labels = read_pair(rock_b, [2], 3)
    layers = {meta["name"]: data for data, meta, _ in read_dataset_folder(str(sample_files.datasets))}
    assert not rgb and image.shape == (96, 96)
    np.testing.assert_array_equal(image, layers["rock_b"][2])
    # rock_b stores gray levels 0/128/255: decoded with the dataset's encoding, as the reader does
    np.testing.assert_array_equal(labels, layers["rock_b masks"][2])
    assert set(np.unique(labels)) <= {1, 2, 3}


def test_corrections_survive_new_predictions_and_count_exactly():
    from schism_napari.data.labels import Corrections

    first = np.ones((3, 4, 4), np.uint8)
    corrections = Corrections(first)
    layer = first.copy()
    layer[0, 0, 0] = 2  # an edit
    corrections.review(2)
    second = np.full((3, 4, 4), 2, np.uint8)  # the next model agrees with the edit and changes the rest
    shown = corrections.repredicted(layer, second)
    assert shown[0, 0, 0] == 2 and (shown[2] == 1).all()  # the reviewed slice keeps what it showed
    assert (shown[1] == 2).all()  # elsewhere the new prediction
    third = np.full((3, 4, 4), 3, np.uint8)
    shown = corrections.repredicted(shown, third)
    assert shown[0, 0, 0] == 2, "an edit that a prediction once agreed with is still the user's"
    mask = corrections.mask(shown, 3)
    assert np.count_nonzero(mask != IGNORE) == 1 + 16 and mask[0, 0, 0] == 1 and (mask[2] == 0).all()
    corrections.unreview(2)
    assert np.count_nonzero(corrections.mask(shown, 3) != IGNORE) == 1
    assert (corrections.repredicted(shown, third)[2] == 3).all()  # no longer reviewed: replaced
