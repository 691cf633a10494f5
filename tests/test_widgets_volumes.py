"""Volumes in the Prediction tab, driven as a user would: a stack streamed into a store on disk, the
slice on screen first; a lazily read image never loaded whole; corrections kept; Save to dataset.

Runs under Xvfb (pytest-xvfb). The stacks are small: the threshold that sends a stack to disk is
lowered to zero, so the streamed path is the one tested (it is the same code as for a CT).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from schism_napari.data import volume_store
from schism_napari.data.volume_store import from_bytes
from schism_napari.events import SlicesStored
from schism_napari.sample import make_rock
from test_widgets import click_and_wait, dock, errors, notifications

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
__all__ = ["dock", "notifications"]  # the fixtures, shared with test_widgets

STEP = 1 / 255


class Guarded:
    """A lazily read stack (as a zarr or dask array would be) that refuses to be read whole: any read
    of more than two slices, and ``np.asarray`` of it, raise."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, key):
        out = self.array[key]
        self.reads.append(np.shape(out))
        if np.size(out) > 2 * self.array[0].size:
            raise AssertionError(f"read {np.shape(out)} of the whole stack at once")
        return out

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("np.asarray of the whole stack")

    def __len__(self) -> int:
        return self.shape[0]


def load(prediction, run) -> None:
    prediction.run_folder.value = run
    prediction.load_button.clicked.emit()


def expected_prediction(prediction, run, volume):
    from schism_napari.inference import Predictor
    from schism_napari.runs import load_trained_model

    settings = prediction.inference_form.config().inference
    return Predictor.from_trained(load_trained_model(run), settings=settings, device="cpu").predict(volume)


def test_a_stack_streams_to_disk_current_slice_first_and_keeps_corrections(qtbot, dock, trained_run, monkeypatch):
    import dask.array as da

    from schism_napari._widgets.volumes import scratch_folder, stored_prediction

    monkeypatch.setattr(volume_store, "STREAM_ABOVE_BYTES", 0)  # any stack goes to disk
    viewer, dock = dock
    prediction = dock.prediction
    load(prediction, trained_run)
    volume, _ = make_rock((6, 96, 96), seed=3)
    image = viewer.add_image(volume, name="scan")
    prediction.reset_choices()
    prediction.image.value = image
    viewer.dims.set_current_step(0, 4)

    stored: list[SlicesStored] = []
    prediction.relay.event.connect(lambda e: stored.append(e) if isinstance(e, SlicesStored) else None)
    first_shown: list[list[int]] = []

    def on_insert(event) -> None:
        if event.value.name == "scan prediction":
            data = event.value.data
            first_shown.append([z for z in range(data.shape[0]) if np.count_nonzero(data[z])])

    viewer.layers.events.inserted.connect(on_insert)
    click_and_wait(qtbot, prediction, prediction.predict_button)

    assert (stored[0].start, stored[0].stop) == (4, 5)  # the slice on screen first
    assert first_shown == [[4]]  # the labels layer arrived with that slice alone
    assert prediction.status.value == "done"
    labels, probabilities = viewer.layers["scan prediction"], viewer.layers["scan probabilities"]
    uncertainty = viewer.layers["scan uncertainty"]
    store = stored_prediction(prediction.session, image)
    assert store is not None and store.folder.is_relative_to(scratch_folder(prediction.session))
    assert (store.folder / "probabilities").is_dir()  # on disk, read lazily
    assert isinstance(probabilities.data, da.Array) and isinstance(uncertainty.data, da.Array)
    assert labels.data is store.corrected and labels.data.dtype == np.uint8  # painted into the store
    labels.selected_label = 3
    labels.paint((0, 50, 50), 3)  # napari's brush writes into the zarr array
    assert store.corrected[0, 50, 50] == 3
    labels.undo()

    expected = expected_prediction(prediction, trained_run, volume)
    np.testing.assert_array_equal(labels.data[:], expected.labels + 1)
    assert probabilities.data.shape == (3, *volume.shape)
    np.testing.assert_allclose(
        np.asarray(probabilities.data), np.moveaxis(expected.probabilities, 1, 0), atol=STEP / 2 + 1e-5
    )
    np.testing.assert_array_equal(np.asarray(probabilities.data), from_bytes(store.probabilities[:]))
    means = np.asarray(uncertainty.data).reshape(6, -1).mean(axis=1)
    assert prediction.next_uncertain_slice() == int(np.argmax(means))

    # correct a block, review a slice, predict again: the same layers, the same store, the work kept
    corrected = labels.data[:]
    corrected[1, :10, :10] = np.where(corrected[1, :10, :10] == 2, 3, 2)
    labels.data[...] = corrected  # "painted" with the brush
    viewer.dims.set_current_step(1, 5)  # z (the probabilities add a class axis first)
    prediction.review_button.clicked.emit()
    reviewed = labels.data[5]
    labels.data[5, :, :3] = 1  # a reviewed slice painted too
    reviewed[:, :3] = 1
    folder = store.folder
    click_and_wait(qtbot, prediction, prediction.predict_button)
    assert viewer.layers["scan prediction"] is labels and viewer.layers["scan probabilities"] is probabilities
    assert stored_prediction(prediction.session, image).folder == folder
    np.testing.assert_array_equal(labels.data[1, :10, :10], corrected[1, :10, :10])
    assert store.edited[1, :10, :10].all() and not store.edited[2].any()  # remembered as edits, on disk
    np.testing.assert_array_equal(labels.data[5], reviewed)
    np.testing.assert_array_equal(labels.data[:][[0, 2, 3, 4]], expected.labels[[0, 2, 3, 4]] + 1)

    # the slice preview writes the slice on screen into the same store
    prediction.current_slice.value = True
    viewer.dims.set_current_step(1, 2)
    stored.clear()
    click_and_wait(qtbot, prediction, prediction.predict_button)
    assert [(e.start, e.stop) for e in stored] == [(2, 3)] and prediction.status.value == "slice 2 predicted"


def test_a_lazy_image_is_never_read_whole_and_saves_and_joins_the_training_set(
    qtbot, dock, trained_run, tmp_path, notifications
):
    viewer, dock = dock
    prediction = dock.prediction
    load(prediction, trained_run)
    volume, _ = make_rock((5, 96, 96), seed=4)
    lazy = Guarded(volume)
    image = viewer.add_image(lazy, name="lazy", contrast_limits=(0, 65535))
    prediction.reset_choices()
    prediction.image.value = image
    click_and_wait(qtbot, prediction, prediction.predict_button)  # streamed: the image is lazy
    assert not errors(notifications)
    labels = viewer.layers["lazy prediction"]
    expected = expected_prediction(prediction, trained_run, volume)
    np.testing.assert_array_equal(labels.data[:], expected.labels + 1)
    assert max(np.prod(shape[:-2], dtype=int) for shape in lazy.reads) <= 1  # a slice at a time

    written = prediction.save_to_dataset(tmp_path / "datasets")
    assert written is not None and not errors(notifications)
    np.testing.assert_array_equal(tifffile.imread(written / "images" / f"{written.name}.tif"), volume)
    np.testing.assert_array_equal(tifffile.imread(written / "masks" / f"{written.name}.tif"), labels.data[:] - 1)

    prediction.add_button.clicked.emit()
    (pair,) = prediction.session.pairs
    assert pair.image is image and pair.labels is labels
    assert (pair.mask(3) == 255).all()  # nothing corrected yet: nothing to train on


def test_a_binary_stack_on_disk_follows_the_threshold_slider(qtbot, dock, monkeypatch):
    import torch

    from schism_napari.config import SchismConfig
    from schism_napari.data.normalization import Normalization
    from schism_napari.models import build_model
    from schism_napari.runs import TrainedModel

    monkeypatch.setattr(volume_store, "STREAM_ABOVE_BYTES", 0)
    viewer, dock = dock
    prediction = dock.prediction
    config = SchismConfig.from_ini_string(
        "[Model]\nmodel_type = UnetConcat\nnum_classes = 2\nn_block = 2\nchannels = 8\np = 0.0\n"
    )
    torch.manual_seed(0)
    model = build_model(config.model, 1).eval()
    prediction.session.set_model(
        TrainedModel(config, model, Normalization((0.5,), (0.2,)), 1, ["rest", "pore"], None, "random weights")
    )
    image = viewer.add_image(make_rock((4, 64, 64), seed=1)[0], name="scan")
    prediction.reset_choices()
    prediction.image.value = image
    click_and_wait(qtbot, prediction, prediction.predict_button)
    labels = viewer.layers["scan prediction"]
    foreground = np.asarray(viewer.layers["scan probabilities"].data[1])
    counts = []
    for threshold in (0.05, 0.95):
        prediction.threshold.value = threshold
        qtbot.waitUntil(lambda: prediction._threshold_token is None, timeout=10_000)
        np.testing.assert_array_equal(labels.data[:], (foreground > threshold) + 1)  # every slice, from the store
        counts.append(np.count_nonzero(labels.data[:] == 2))
    assert counts[0] > counts[1]
