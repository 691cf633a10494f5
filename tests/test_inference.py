"""Tiled prediction: tile layout, blending weights, exactness, seams, stacks, channels, streaming, files."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn

from conftest import PointwiseModel
from schism_napari.config import InferenceConfig
from schism_napari.data.io import gray_levels
from schism_napari.data.normalization import Normalization
from schism_napari.errors import Cancelled
from schism_napari.events import PredictionProgress, StopToken
from schism_napari.inference import Predictor, Slices, importance_map, tile_starts
from schism_napari.inference.files import open_lazy, predict_to_files
from schism_napari.plumbing.atomic import OutputExistsError
from schism_napari.runs import load_trained_model

# ---- helpers -----------------------------------------------------------------------------------


def pointwise_predictor(
    model: nn.Module | None = None,
    *,
    class_count: int = 3,
    in_channels: int = 1,
    normalization: Normalization | None = None,
    **settings,
) -> Predictor:
    settings.setdefault("tile_size", 32)
    return Predictor(
        model or PointwiseModel(in_channels, class_count),
        class_count=class_count,
        in_channels=in_channels,
        normalization=normalization or Normalization((0.4,) * in_channels, (0.2,) * in_channels),
        settings=InferenceConfig(**settings),
        device="cpu",
    )


def reference_probabilities(model: nn.Module, image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Whole-image probabilities computed by hand: (Y, X, C) stored dtype -> (classes, Y, X)."""
    a, b = normalization.affine(image.dtype, image.shape[-1])
    normalised = image.astype(np.float32) * a + b
    tensor = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        return torch.softmax(model(tensor), dim=1)[0].numpy()


def random_image(shape: tuple[int, ...], seed: int = 0, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def trained_predictor(trained, **settings) -> Predictor:
    return Predictor.from_trained(trained, settings=InferenceConfig(**settings), device="cpu")


def tiles_per_slice(height: int, width: int, tile: int, overlap: float) -> int:
    return len(tile_starts(height, min(tile, height), overlap)) * len(tile_starts(width, min(tile, width), overlap))


def no_hidden_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".") or name.endswith(".tmp")]


@pytest.fixture(scope="module")
def trained(trained_run):
    return load_trained_model(trained_run)


@pytest.fixture(scope="module")
def image_2d(sample_files) -> np.ndarray:
    image = tifffile.imread(sample_files.image_2d)
    assert image.shape == (141, 227)
    return image


@pytest.fixture(scope="module")
def volume(sample_files) -> np.ndarray:
    stack = tifffile.imread(sample_files.volume)
    assert stack.shape == (6, 96, 96) and stack.dtype == np.uint16
    return stack


# ---- tiling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("tile", [16, 32, 64, 100])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 31, 32, 63, 64, 65, 96, 100, 141, 227, 256, 1000])
def test_tile_starts_cover_the_length(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert all(isinstance(s, int) for s in starts)
    assert all(b > a for a, b in itertools.pairwise(starts)), starts
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length  # the last tile ends exactly at the far edge
    assert all(s >= 0 and s + tile <= length for s in starts)
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    stride = max(1, round(tile * (1 - overlap)))
    gaps = np.diff(starts)
    assert gaps.max() <= stride  # never less overlap than asked
    assert (gaps[:-1] == stride).all()  # a regular grid except for the flush last tile


def test_tile_starts_without_overlap_is_a_plain_grid():
    assert tile_starts(128, 32, 0.0) == [0, 32, 64, 96]
    assert tile_starts(100, 32, 0.0) == [0, 32, 64, 68]
    assert tile_starts(96, 64, 0.5) == [0, 32]
    assert tile_starts(96, 64, 0.25) == [0, 32]


@pytest.mark.parametrize("shape", [(64, 64), (33, 33), (32, 48), (17, 90), (1, 5)])
def test_gaussian_importance_map(shape):
    weights = importance_map(*shape, "gaussian")
    assert weights.shape == shape and weights.dtype == np.float32
    assert (weights > 0).all()
    assert weights.max() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1, :], rtol=1e-6)
    np.testing.assert_allclose(weights, weights[:, ::-1], rtol=1e-6)
    height, width = shape
    centre_rows = {(height - 1) // 2, height // 2}
    centre_cols = {(width - 1) // 2, width // 2}
    for y in centre_rows:
        for x in centre_cols:
            assert weights[y, x] == pytest.approx(1.0)
    if height > 2 and width > 2:
        assert weights[0, 0] < weights[height // 2, width // 2]
        # decreasing away from the centre along the middle row
        row = weights[height // 2, width // 2 :]
        assert (np.diff(row) <= 0).all()


def test_importance_map_borders_count_little():
    weights = importance_map(64, 64)
    assert weights[0, 0] < 1e-3
    assert weights[32, 0] < weights[32, 16] < weights[32, 32]


def test_constant_importance_map_is_all_ones():
    weights = importance_map(20, 37, "constant")
    assert weights.shape == (20, 37) and weights.dtype == np.float32
    assert (weights == 1).all()


# ---- exactness on a pointwise model ------------------------------------------------------------


@pytest.mark.parametrize("blending", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(70, 45), (45, 101), (20, 90), (97, 97)])
def test_blending_is_exact_for_a_pointwise_model(shape, overlap, blending):
    predictor = pointwise_predictor(overlap=overlap, blending=blending, batch_size=3)
    image = random_image(shape, seed=sum(shape))
    result = predictor.predict(image)
    whole = predictor.predict_whole(image)
    assert result.probabilities.shape == (3, *shape)
    assert result.labels.shape == shape
    np.testing.assert_allclose(result.probabilities, whole, atol=1e-5)
    reference = reference_probabilities(predictor.model, image[..., None], predictor.normalization)
    np.testing.assert_allclose(result.probabilities, reference, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(0))


# ---- seamless on the trained model -------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_tiled_prediction_matches_whole_image_on_trained_model(trained, image_2d, overlap):
    predictor = trained_predictor(trained, overlap=overlap, blending="gaussian", batch_size=8)
    assert predictor.tile_size == 64 < min(image_2d.shape)  # really tiled
    result = predictor.predict(image_2d)
    whole = predictor.predict_whole(image_2d)
    assert whole.shape == result.probabilities.shape == (3, 141, 227)
    disagree = result.probabilities.argmax(0) != whole.argmax(0)
    agreement = 1 - disagree.mean()
    band = np.zeros_like(disagree)
    band[-4:, :] = band[:, -4:] = True
    assert agreement >= 0.995, (
        f"tiled vs whole argmax agree on {agreement:.4%} of pixels (< 99.5%); "
        f"{disagree[band].sum()} of {disagree.sum()} disagreements lie in the bottom/right 4-pixel band"
    )


@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_tiled_prediction_has_no_seams_inside_the_image(trained, image_2d, overlap):
    """On sides the network divides (no whole-image padding) tiles and whole image agree almost everywhere."""
    crop = image_2d[:140, :224]
    predictor = trained_predictor(trained, overlap=overlap, blending="gaussian", batch_size=8)
    result = predictor.predict(crop)
    whole = predictor.predict_whole(crop)
    agreement = (result.probabilities.argmax(0) == whole.argmax(0)).mean()
    assert agreement >= 0.998


# ---- stacks ------------------------------------------------------------------------------------


def test_stack_prediction_matches_slice_by_slice(trained, volume):
    predictor = trained_predictor(trained, overlap=0.25, batch_size=6)
    per_slice = tiles_per_slice(96, 96, predictor.tile_size, 0.25)
    assert per_slice == 4 and predictor.settings.batch_size % per_slice != 0  # batches span two slices
    result = predictor.predict(volume)
    probabilities, labels = result.probabilities, result.labels
    assert probabilities.shape == (6, 3, 96, 96) and probabilities.dtype == np.float32
    assert labels.shape == (6, 96, 96) and labels.dtype == np.uint8
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))
    for z in range(6):
        alone = predictor.predict(volume[z])
        assert alone.probabilities.shape == (3, 96, 96) and alone.labels.shape == (96, 96)
        np.testing.assert_allclose(probabilities[z], alone.probabilities, atol=1e-5, err_msg=f"slice {z}")
        np.testing.assert_array_equal(labels[z], alone.labels)
    assert not np.allclose(probabilities[0], probabilities[1])  # slices really differ


def test_stack_slices_are_not_mixed_by_a_pointwise_model():
    """Each slice constant at its own level: any tile landing in the wrong slice shows."""
    levels = np.array([0, 12000, 25000, 40000, 65535], dtype=np.uint16)
    stack = np.broadcast_to(levels[:, None, None], (5, 40, 50)).copy()
    predictor = pointwise_predictor(overlap=0.5, batch_size=5)
    assert tiles_per_slice(40, 50, 32, 0.5) % 5 != 0
    result = predictor.predict(stack)
    for z in range(5):
        expected = reference_probabilities(predictor.model, stack[z, :1, :1, None], predictor.normalization)
        np.testing.assert_allclose(
            result.probabilities[z], np.broadcast_to(expected, (3, 40, 50)), atol=1e-5, err_msg=f"slice {z}"
        )


# ---- channels and binary models ----------------------------------------------------------------


def test_rgb_input_with_a_gray_model(trained, image_2d):
    predictor = trained_predictor(trained, overlap=0.25)
    assert trained.in_channels == 1
    rgb = np.repeat(image_2d[..., None], 3, axis=-1)
    result = predictor.predict(rgb, rgb=True)
    assert result.probabilities.shape == (3, 141, 227) and result.labels.shape == (141, 227)
    gray = predictor.predict(image_2d)
    np.testing.assert_allclose(result.probabilities, gray.probabilities, atol=1e-5)
    np.testing.assert_array_equal(result.labels, gray.labels)


def test_rgb_input_with_a_gray_pointwise_model_uses_the_channel_mean():
    rgb = random_image((50, 70, 3), seed=3, dtype=np.uint8)
    predictor = pointwise_predictor(overlap=0.25, normalization=Normalization((0.5,), (0.25,)))
    result = predictor.predict(rgb, rgb=True)
    a, b = predictor.normalization.affine(np.dtype(np.uint8), 1)
    mean = rgb.astype(np.float32).mean(axis=-1, keepdims=True)
    tensor = torch.from_numpy((mean * a + b).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        expected = torch.softmax(predictor.model(tensor), dim=1)[0].numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)


def test_three_channel_model_with_rgb_input():
    normalization = Normalization((0.3, 0.5, 0.7), (0.2, 0.25, 0.3))
    model = PointwiseModel(in_channels=3, classes=4, seed=1)
    predictor = pointwise_predictor(
        model, class_count=4, in_channels=3, normalization=normalization, overlap=0.25, batch_size=4
    )
    rgb = random_image((45, 77, 3), seed=5, dtype=np.uint8)
    result = predictor.predict(rgb, rgb=True)
    assert result.probabilities.shape == (4, 45, 77) and result.labels.shape == (45, 77)
    expected = reference_probabilities(model, rgb, normalization)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    swapped = predictor.predict(rgb[..., ::-1], rgb=True)
    assert not np.allclose(swapped.probabilities, result.probabilities, atol=1e-3)  # channels are used, in order
    stack = predictor.predict(np.stack([rgb, rgb[::-1]]), rgb=True)
    assert stack.probabilities.shape == (2, 4, 45, 77) and stack.labels.shape == (2, 45, 77)
    np.testing.assert_allclose(stack.probabilities[0], result.probabilities, atol=1e-5)


class BinaryLogit(nn.Module):
    """One logit channel, 2 * the normalised intensity: foreground probabilities spread over (0, 1)."""

    size_divisor = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_binary_model_uses_the_threshold():
    model = BinaryLogit()
    image = random_image((60, 90), seed=7)
    counts = {}
    for threshold in (0.1, 0.5, 0.9):
        predictor = pointwise_predictor(model, class_count=2, overlap=0.25, threshold=threshold)
        result = predictor.predict(image)
        assert result.probabilities.shape == (2, 60, 90)
        np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
        assert set(np.unique(result.labels)) <= {0, 1}
        np.testing.assert_array_equal(result.labels, (result.probabilities[1] > threshold).astype(np.uint8))
        counts[threshold] = int(result.labels.sum())
    assert 0 < counts[0.9] < counts[0.5] < counts[0.1] < image.size


# ---- scale -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.75, 1.5])
def test_scaled_prediction_keeps_the_input_shape(trained, image_2d, volume, scale):
    predictor = Predictor(
        trained.model,
        class_count=3,
        in_channels=1,
        normalization=trained.normalization,
        scale=scale,
        settings=InferenceConfig(tile_size=64, overlap=0.25, batch_size=8),
        device="cpu",
    )
    result = predictor.predict(image_2d)
    assert result.probabilities.shape == (3, 141, 227) and result.labels.shape == (141, 227)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)
    stack = predictor.predict(volume[:2])
    assert stack.probabilities.shape == (2, 3, 96, 96) and stack.labels.shape == (2, 96, 96)
    unscaled = trained_predictor(trained, tile_size=64, overlap=0.25).predict(image_2d)
    assert not np.allclose(result.probabilities, unscaled.probabilities, atol=1e-3)  # the scale is applied


def test_run_with_img_res_different_from_crop_size(trained_run, tmp_path, image_2d):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ini = run / "hyperparameters.ini"
    text = ini.read_text(encoding="utf-8")
    assert "img_res = 64" in text
    ini.write_text(text.replace("img_res = 64", "img_res = 48"), encoding="utf-8")
    trained = load_trained_model(run)
    predictor = Predictor.from_trained(trained, device="cpu")
    assert predictor.scale == pytest.approx(0.75)
    result = predictor.predict(image_2d)
    assert result.probabilities.shape == (3, 141, 227) and result.labels.shape == (141, 227)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)


# ---- streaming ---------------------------------------------------------------------------------


def test_zarr_outputs_match_in_memory_result(trained, volume, image_2d, tmp_path):
    predictor = trained_predictor(trained, overlap=0.25, batch_size=6)
    memory = predictor.predict(volume)
    probabilities = zarr.open_array(
        str(tmp_path / "p.zarr"), mode="w", shape=(6, 3, 96, 96), chunks=(1, 3, 96, 96), dtype="float32"
    )
    labels = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=(6, 96, 96), chunks=(1, 96, 96), dtype="uint8")
    streamed = predictor.predict(volume, probabilities_out=probabilities, labels_out=labels)
    assert streamed.probabilities is probabilities and streamed.labels is labels
    reopened_p = zarr.open_array(str(tmp_path / "p.zarr"), mode="r")[:]
    reopened_l = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[:]
    np.testing.assert_array_equal(reopened_p, memory.probabilities)
    np.testing.assert_array_equal(reopened_l, memory.labels)

    flat_p = zarr.open_array(str(tmp_path / "p2.zarr"), mode="w", shape=(1, 3, 141, 227), dtype="float32")
    flat_l = zarr.open_array(str(tmp_path / "l2.zarr"), mode="w", shape=(1, 141, 227), dtype="uint8")
    predictor.predict(image_2d, probabilities_out=flat_p, labels_out=flat_l)
    memory_2d = predictor.predict(image_2d)
    np.testing.assert_array_equal(flat_p[0], memory_2d.probabilities)
    np.testing.assert_array_equal(flat_l[0], memory_2d.labels)


def test_keep_probabilities_false_returns_only_labels(trained, image_2d):
    predictor = trained_predictor(trained, overlap=0.25)
    result = predictor.predict(image_2d, keep_probabilities=False)
    assert result.probabilities is None
    np.testing.assert_array_equal(result.labels, predictor.predict(image_2d).labels)


class CountingArray:
    """Wraps an array and records every read; refuses whole-array conversion."""

    def __init__(self, array):
        self.array = array
        self.keys: list = []

    @property
    def shape(self):
        return self.array.shape

    @property
    def ndim(self):
        return len(self.array.shape)

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def test_slices_over_zarr_read_only_requested_slices(trained, volume, tmp_path):
    stored = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=volume.shape, chunks=(1, 96, 96), dtype="uint16")
    stored[:] = volume
    counting = CountingArray(zarr.open_array(str(tmp_path / "v.zarr"), mode="r"))
    slices = Slices(counting)
    assert counting.keys == []  # opening reads nothing
    assert len(slices) == 6 and slices.is_stack and (slices.height, slices.width) == (96, 96)
    plane = slices[3]
    assert counting.keys == [3]
    assert plane.shape == (96, 96, 1)
    np.testing.assert_array_equal(plane[..., 0], volume[3])
    counting.keys.clear()
    predictor = trained_predictor(trained, overlap=0.25, batch_size=6)
    result = predictor.predict(slices)
    assert counting.keys == list(range(6))  # each slice read once, nothing else
    np.testing.assert_allclose(result.probabilities, predictor.predict(volume).probabilities, atol=1e-6)


# ---- test-time augmentation --------------------------------------------------------------------


def test_tta_output(trained, image_2d):
    plain = trained_predictor(trained, overlap=0.25).predict(image_2d)
    augmented = trained_predictor(trained, overlap=0.25, tta=True).predict(image_2d)
    assert augmented.probabilities.shape == (3, 141, 227) and augmented.labels.shape == (141, 227)
    np.testing.assert_allclose(augmented.probabilities.sum(axis=0), 1.0, atol=1e-5)
    difference = np.abs(augmented.probabilities - plain.probabilities)
    assert difference.max() > 1e-3  # flips change the prediction of a real network...
    assert (augmented.labels == plain.labels).mean() > 0.9  # ...but only slightly


def test_tta_undoes_its_flips():
    image = random_image((50, 83), seed=11)
    plain = pointwise_predictor(overlap=0.25).predict(image)
    augmented = pointwise_predictor(overlap=0.25, tta=True).predict(image)
    np.testing.assert_allclose(augmented.probabilities, plain.probabilities, atol=1e-5)


# ---- progress and cancelling -------------------------------------------------------------------


def test_progress_events_count_tiles(trained, volume):
    events: list[PredictionProgress] = []
    predictor = Predictor.from_trained(
        trained, settings=InferenceConfig(overlap=0.25, batch_size=3), device="cpu", callback=events.append
    )
    predictor.predict(volume)
    expected_total = tiles_per_slice(96, 96, 64, 0.25) * 6
    assert expected_total == 24
    assert events and all(isinstance(e, PredictionProgress) for e in events)
    assert {e.total for e in events} == {expected_total}
    assert {e.slices for e in events} == {6}
    done = [e.done for e in events]
    assert done == sorted(done) and done[0] > 0
    assert events[-1].done == expected_total and events[-1].slices_done == 6
    assert all(0 <= e.slices_done <= 6 for e in events)


def test_cancel_on_first_progress_raises(trained, volume):
    stop = StopToken()
    events = []

    def callback(event):
        events.append(event)
        if isinstance(event, PredictionProgress):
            stop.request()

    predictor = Predictor.from_trained(
        trained, settings=InferenceConfig(overlap=0.25, batch_size=4), device="cpu", callback=callback, stop=stop
    )
    with pytest.raises(Cancelled):
        predictor.predict(volume)
    assert len(events) == 1  # stopped right after the first batch
    assert events[0].done < events[0].total


def test_stop_requested_before_predicting(trained, volume):
    stop = StopToken()
    stop.request()
    predictor = Predictor.from_trained(trained, device="cpu", stop=stop)
    with pytest.raises(Cancelled):
        predictor.predict(volume)


# ---- files -------------------------------------------------------------------------------------


def test_predict_to_files_stack(trained, sample_files, volume, tmp_path):
    predictor = trained_predictor(trained, overlap=0.25, batch_size=6)
    memory = predictor.predict(volume)
    array, rgb = open_lazy(sample_files.volume)
    assert rgb is False
    labels_path, probabilities_path = tmp_path / "v_labels.tif", tmp_path / "v_probabilities.tif"
    written = predict_to_files(predictor, Slices(array), labels_path, probabilities_path, None)
    assert written == [labels_path, probabilities_path]
    labels = tifffile.imread(labels_path)
    assert labels.shape == (6, 96, 96) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, memory.labels)
    probabilities = tifffile.imread(probabilities_path)
    assert probabilities.shape == (6, 3, 96, 96) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, memory.probabilities, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["v_labels.tif", "v_probabilities.tif"]


def test_predict_to_files_2d_and_gray_levels(trained, sample_files, image_2d, tmp_path):
    predictor = trained_predictor(trained, overlap=0.25)
    memory = predictor.predict(image_2d)
    array, rgb = open_lazy(sample_files.image_2d)
    assert rgb is False and array.shape == (141, 227)
    predict_to_files(predictor, Slices(array), tmp_path / "a_labels.tif", tmp_path / "a_probabilities.tif", None)
    labels = tifffile.imread(tmp_path / "a_labels.tif")
    assert labels.shape == (141, 227) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, memory.labels)
    probabilities = tifffile.imread(tmp_path / "a_probabilities.tif")
    assert probabilities.shape == (3, 141, 227) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, memory.probabilities, atol=1e-6)

    levels = gray_levels(3)
    assert levels.tolist() == [0, 128, 255]
    (only_labels,) = predict_to_files(predictor, Slices(array), tmp_path / "b_labels.tif", None, levels)
    spread = tifffile.imread(only_labels)
    assert spread.dtype == np.uint8
    assert set(np.unique(spread)) <= {0, 128, 255} and len(np.unique(spread)) > 1
    np.testing.assert_array_equal(spread, levels[memory.labels])
    assert sorted(os.listdir(tmp_path)) == ["a_labels.tif", "a_probabilities.tif", "b_labels.tif"]


def test_predict_to_files_zarr(trained, sample_files, volume, tmp_path):
    predictor = trained_predictor(trained, overlap=0.25, batch_size=6)
    memory = predictor.predict(volume)
    array, _ = open_lazy(sample_files.volume)
    store = tmp_path / "v_probabilities.zarr"
    predict_to_files(predictor, Slices(array), tmp_path / "v_labels.tif", store, None)
    group = zarr.open_group(str(store), mode="r")  # OME-Zarr: classes before space (NGFF axis order)
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    probabilities = group["0"]
    assert probabilities.shape == (3, 6, 96, 96) and probabilities.dtype == np.float32
    np.testing.assert_allclose(np.moveaxis(probabilities[:], 0, 1), memory.probabilities, atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "v_labels.tif"), memory.labels)
    assert sorted(os.listdir(tmp_path)) == ["v_labels.tif", "v_probabilities.zarr"]


def test_predict_to_files_refuses_existing_tiffs(trained, sample_files, tmp_path):
    predictor = trained_predictor(trained, overlap=0.25)
    array, _ = open_lazy(sample_files.image_2d)
    labels_path = tmp_path / "x_labels.tif"
    labels_path.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        predict_to_files(predictor, Slices(array), labels_path, tmp_path / "x_probabilities.tif", None)
    assert labels_path.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["x_labels.tif"]

    probabilities_path = tmp_path / "y_probabilities.tif"
    probabilities_path.write_bytes(b"precious too")
    with pytest.raises(OutputExistsError):
        predict_to_files(predictor, Slices(array), tmp_path / "y_labels.tif", probabilities_path, None)
    assert probabilities_path.read_bytes() == b"precious too"
    assert not (tmp_path / "y_labels.tif").exists()
    assert no_hidden_files(tmp_path) == []


def test_predict_to_files_refuses_existing_zarr_store(trained, sample_files, tmp_path):
    predictor = trained_predictor(trained, overlap=0.25)
    array, _ = open_lazy(sample_files.image_2d)
    store = tmp_path / "z_probabilities.zarr"
    existing = zarr.open_array(str(store), mode="w", shape=(2, 2), dtype="uint8")
    existing[:] = 7
    with pytest.raises(OutputExistsError):
        predict_to_files(predictor, Slices(array), tmp_path / "z_labels.tif", store, None)
    assert (zarr.open_array(str(store), mode="r")[:] == 7).all()
    assert not (tmp_path / "z_labels.tif").exists()
    assert no_hidden_files(tmp_path) == []


def test_open_lazy_formats(sample_files, volume, image_2d, tmp_path):
    stack, rgb = open_lazy(sample_files.volume)
    assert rgb is False and not isinstance(stack, np.ndarray)  # a lazy view, not the loaded volume
    assert tuple(stack.shape) == (6, 96, 96)
    np.testing.assert_array_equal(np.asarray(stack[4]), volume[4])

    flat, rgb = open_lazy(sample_files.image_2d)
    assert rgb is False and tuple(flat.shape) == (141, 227)
    np.testing.assert_array_equal(np.asarray(flat[:]), image_2d)

    colour = random_image((40, 50, 3), seed=2, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    array, rgb = open_lazy(tmp_path / "colour.tif")
    assert rgb is True and tuple(array.shape) == (40, 50, 3)
    np.testing.assert_array_equal(np.asarray(array[:]), colour)
    slices = Slices(array, rgb=rgb)
    assert slices.channels == 3 and not slices.is_stack and len(slices) == 1

    store = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(3, 20, 30), chunks=(1, 20, 30), dtype="uint16")
    store[:] = volume[:3, :20, :30]
    array, rgb = open_lazy(tmp_path / "v.zarr")
    assert rgb is False and tuple(array.shape) == (3, 20, 30)
    np.testing.assert_array_equal(np.asarray(array[1]), volume[1, :20, :30])
