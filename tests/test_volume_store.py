"""Stacks predicted into a store on disk, the current slice first (what napari runs for volumes):
values as the in-memory predictor's, slices announced in order, lazy inputs read in slabs, never whole."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
import tifffile

from conftest import PointwiseModel
from schism_napari.config import InferenceConfig
from schism_napari.data import labels_to_mask
from schism_napari.data.export import write_training_pair
from schism_napari.data.io import IGNORE
from schism_napari.data.normalization import Normalization
from schism_napari.data.uncertainty import margin_uncertainty, most_uncertain_slice
from schism_napari.data.volume_store import (
    STREAM_ABOVE_BYTES,
    SlabReader,
    VolumeStore,
    from_bytes,
    held_bytes,
    should_stream,
    store_labels,
    threshold_labels,
    to_bytes,
    write_labels,
)
from schism_napari.errors import Cancelled
from schism_napari.events import PredictionProgress, SlicesStored, StopToken
from schism_napari.inference import Predictor
from schism_napari.inference.planes import planar_predictor
from schism_napari.inference.streaming import StreamProgress, stream_prediction

STEP = 1 / 255  # the store's resolution for probabilities and uncertainty


def predictor(callback=None, stop=None, **settings) -> Predictor:
    settings.setdefault("tile_size", 32)
    options = {} if callback is None else {"callback": callback}
    return Predictor(
        PointwiseModel(1, 3),
        class_count=3,
        in_channels=1,
        normalization=Normalization((0.4,), (0.2,)),
        settings=InferenceConfig(**settings),
        device="cpu",
        stop=stop,
        **options,
    )


def stack(shape=(7, 40, 36), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=shape).astype(np.uint16)


class ReadCounter:
    """A dask stack whose chunk reads are recorded (first slice, depth) and which refuses np.asarray
    of the whole volume (what the widget must never do)."""

    def __init__(self, volume: np.ndarray, depth: int):
        self.volume, self.reads = volume, []

        def read(block, block_info=None):
            low, high = block_info[None]["array-location"][0]
            self.reads.append((low, high - low))
            return volume[low:high]

        self.array = da.map_blocks(
            read, da.zeros(volume.shape, dtype=volume.dtype, chunks=(depth, *volume.shape[1:])), dtype=volume.dtype
        )


def test_the_decision_to_stream():
    big = np.zeros((8, 1024, 1024), np.uint16)
    assert held_bytes(big.shape, 3) == 8 * 1024 * 1024 * 18  # 18 bytes per voxel held in memory
    assert should_stream(big, rgb=False, class_count=3)
    assert not should_stream(np.zeros((4, 96, 96), np.uint16), rgb=False, class_count=3)  # a few MB: in memory
    assert held_bytes((4, 96, 96), 3) < STREAM_ABOVE_BYTES
    assert should_stream(da.zeros((2, 8, 8)), rgb=False, class_count=3)  # lazy: always
    assert not should_stream(da.zeros((2, 8, 8, 3)), rgb=True, class_count=3)  # RGB stays in memory
    assert not should_stream(np.zeros((4096, 4096), np.uint8), rgb=False, class_count=3)  # 2D
    assert not should_stream(big, rgb=False, class_count=300)  # labels need one byte


def test_bytes_round_trip_to_the_nearest_step():
    values = np.linspace(0, 1, 1001, dtype=np.float32)
    stored = to_bytes(values)
    assert stored.dtype == np.uint8 and stored[0] == 0 and stored[-1] == 255
    assert np.abs(from_bytes(stored) - values).max() <= STEP / 2 + 1e-6


def test_a_streamed_stack_matches_the_in_memory_prediction_current_slice_first(tmp_path):
    volume = stack()
    events: list = []
    progress = StreamProgress(events.append)
    streaming = predictor(callback=progress)
    store = VolumeStore(tmp_path / "p.zarr", volume.shape, 3)
    written = stream_prediction(streaming, volume, store, first=4, progress=progress, every=0.0)
    assert written == 7

    expected = predictor().predict(volume)  # (Z, C, Y, X) float32
    probabilities = from_bytes(store.probabilities[:])  # (C, Z, Y, X)
    np.testing.assert_allclose(probabilities, np.moveaxis(expected.probabilities, 1, 0), atol=STEP / 2 + 1e-6)
    np.testing.assert_array_equal(store.labels[:], expected.labels + 1)  # napari labels, exact
    uncertainty = margin_uncertainty(expected.probabilities, class_axis=1)
    np.testing.assert_allclose(from_bytes(store.uncertainty[:]), uncertainty, atol=STEP / 2 + 1e-6)

    stored = [e for e in events if isinstance(e, SlicesStored)]
    assert (stored[0].start, stored[0].stop, stored[0].slices_done) == (4, 5, 1)  # the current slice first
    covered = [z for e in stored for z in range(e.start, e.stop)]
    assert sorted(covered) == list(range(7)) and covered[1:] == [0, 1, 2, 3, 5, 6]
    assert stored[-1].slices_done == stored[-1].slices == 7
    tiles = [e for e in events if isinstance(e, PredictionProgress)]
    assert tiles[-1].done == tiles[-1].total and tiles[-1].slices_done == 7  # one count over both calls
    assert all(a.done <= b.done for a, b in itertools.pairwise(tiles))


def test_the_preview_writes_only_the_current_slice(tmp_path):
    volume = stack()
    store = VolumeStore(tmp_path / "p.zarr", volume.shape, 3)
    assert stream_prediction(predictor(), volume, store, first=2, only_first=True) == 1
    labels = store.labels[:]
    assert np.count_nonzero(labels[2]) == labels[2].size
    assert not np.count_nonzero(np.delete(labels, 2, axis=0))  # the others not predicted (0)


def test_a_lazy_stack_is_read_in_chunk_slabs_never_whole(tmp_path):
    volume = stack((12, 24, 24))
    counter = ReadCounter(volume, depth=4)
    store = VolumeStore(tmp_path / "p.zarr", volume.shape, 3)
    stream_prediction(predictor(), counter.array, store, first=9)
    assert max(depth for _, depth in counter.reads) == 4  # one chunk at a time
    assert len(counter.reads) <= 12 // 4 + 1  # each chunk once, the current slice's twice
    assert counter.reads[0] == (8, 4)  # the current slice's chunk first
    np.testing.assert_array_equal(store.labels[:], predictor().predict(volume).labels + 1)


def test_a_slab_reader_serves_slices_from_whole_chunks():
    volume = stack((10, 8, 8))
    counter = ReadCounter(volume, depth=3)
    reader = SlabReader(counter.array)
    assert reader.depth == 3 and reader.shape == volume.shape
    np.testing.assert_array_equal(np.stack([reader[z] for z in range(10)]), volume)
    assert counter.reads == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert SlabReader(counter.array, max_bytes=2 * 8 * 8 * 2).depth == 2  # capped by bytes


def test_tri_planar_streams_in_slabs_after_an_xy_first_slice(tmp_path):
    volume = stack((9, 24, 24))
    base = predictor(tile_size=16)
    tri = planar_predictor(base, "xyz", slab_depth=4)
    events: list = []
    store = VolumeStore(tmp_path / "p.zarr", volume.shape, 3)
    assert stream_prediction(tri, volume, store, first=5, progress=StreamProgress(events.append), every=0.0) == 10
    expected = planar_predictor(predictor(tile_size=16), "xyz", slab_depth=4).predict(volume)
    np.testing.assert_array_equal(store.labels[:], expected.labels + 1)  # slice 5 re-done by its slab
    stored = [e for e in events if isinstance(e, SlicesStored)]
    assert (stored[0].start, stored[0].stop) == (5, 6)
    assert [z for e in stored[1:] for z in range(e.start, e.stop)] == list(range(9))


def test_cancel_stops_between_slices(tmp_path):
    volume = stack()
    stop = StopToken()

    def cancel_after_first(event) -> None:
        if isinstance(event, SlicesStored):
            stop.request()

    store = VolumeStore(tmp_path / "p.zarr", volume.shape, 3)
    progress = StreamProgress(cancel_after_first)
    with pytest.raises(Cancelled):
        stream_prediction(predictor(stop=stop), volume, store, 3, progress=progress, stop=stop)
    labels = store.labels[:]
    assert np.count_nonzero(labels[3]) == labels[3].size  # the slice shown first stays


def test_new_predictions_keep_the_users_corrections_and_reviewed_slices():
    rng = np.random.default_rng(1)
    predicted = rng.integers(1, 4, (5, 6, 6)).astype(np.uint8)
    labels = predicted.copy()
    labels[1, :2, :2] = np.where(predicted[1, :2, :2] == 1, 2, 1)  # corrected with the brush
    new = rng.integers(1, 4, (5, 6, 6)).astype(np.uint8)
    edited = np.zeros(labels.shape, bool)
    before_labels, before_predicted = labels.copy(), predicted.copy()
    write_labels(labels, predicted, 1, new[1:4], reviewed={3}, edited=edited)  # slices 1-3 arrive
    np.testing.assert_array_equal(labels[1, :2, :2], before_labels[1, :2, :2])  # the edit stays
    np.testing.assert_array_equal(labels[1, 2:], new[1, 2:])  # the rest is the new prediction
    np.testing.assert_array_equal(labels[2], new[2])
    np.testing.assert_array_equal(labels[3], before_labels[3])  # reviewed: kept whole
    np.testing.assert_array_equal(predicted[3], before_predicted[3])  # ... as the prediction reviewed
    np.testing.assert_array_equal(labels[[0, 4]], before_labels[[0, 4]])  # not arrived yet
    assert edited[1, :2, :2].all() and edited.sum() == 4
    np.testing.assert_array_equal(predicted[1], new[1])
    # a later prediction that agrees with the edit does not make it the model's again
    again = new.copy()
    again[1, :2, :2] = labels[1, :2, :2]
    write_labels(labels, predicted, 0, again, edited=edited)
    assert edited[1, :2, :2].all()


def test_the_labels_layer_and_the_threshold_are_merged_in_the_store(tmp_path):
    store = VolumeStore(tmp_path / "p.zarr", (5, 8, 8), 2)
    foreground = np.linspace(0, 1, 5 * 8 * 8, dtype=np.float32).reshape(5, 8, 8)
    for z in range(5):
        probabilities = np.stack([1 - foreground[z], foreground[z]])
        store.write(z, probabilities, (foreground[z] > 0.5).astype(np.uint8))
    store_labels(store, 0, 2)
    store_labels(store, 2, 5)
    np.testing.assert_array_equal(store.corrected[:], (foreground > 0.5) + 1)  # the Labels layer's data
    np.testing.assert_array_equal(store.predicted[:], store.corrected[:])
    store.corrected[0, :2, :2] = 1  # painted (napari writes into the zarr array)
    lazy = da.from_zarr(store.probabilities)[1].map_blocks(from_bytes, dtype=np.float32)
    passes = list(threshold_labels(lazy, 0.2, store.corrected, store.predicted, slab=2))
    assert passes == [2, 4, 5]  # one slab per event-loop turn
    expected = (from_bytes(store.probabilities[1]) > 0.2) + 1
    np.testing.assert_array_equal(store.predicted[:], expected)
    expected[0, :2, :2] = 1  # the correction stays
    np.testing.assert_array_equal(store.corrected[:], expected)


def test_the_next_uncertain_slice_reads_a_lazy_map_slab_by_slab():
    uncertainty = np.random.default_rng(2).random((9, 5, 5)).astype(np.float32)
    lazy = da.from_array(uncertainty, chunks=(1, 5, 5))
    assert most_uncertain_slice(lazy, slab=2) == most_uncertain_slice(uncertainty)
    reviewed = {most_uncertain_slice(uncertainty)}
    assert most_uncertain_slice(lazy, reviewed, slab=4) == most_uncertain_slice(uncertainty, reviewed)


def test_labels_to_mask_in_one_byte():
    labels = np.array([[0, 1, 2, 3]], np.uint8)
    mask = labels_to_mask(labels, 3)
    assert mask.dtype == np.uint8 and mask.tolist() == [[IGNORE, 0, 1, 2]]
    assert labels_to_mask(labels.astype(np.int32), 3).tolist() == [[IGNORE, 0, 1, 2]]


def test_a_lazy_image_is_saved_as_a_dataset_slab_by_slab(tmp_path):
    volume = stack((6, 16, 20))
    counter = ReadCounter(volume, depth=2)
    mask = np.random.default_rng(3).integers(0, 3, volume.shape).astype(np.uint8)
    folder = write_training_pair(tmp_path / "datasets", "scan", counter.array, mask)
    np.testing.assert_array_equal(tifffile.imread(folder / "images" / "scan.tif"), volume)
    np.testing.assert_array_equal(tifffile.imread(folder / "masks" / "scan.tif"), mask)
    assert max(depth for _, depth in counter.reads) == 2 and len(counter.reads) == 3
