"""Data: image/mask reading, mask decoding, napari labels, dataset discovery and loading, stats, splits, crops."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from schism_napari.data import crops as crops_module
from schism_napari.data import (
    discover_datasets,
    labels_to_mask,
    list_image_files,
    load_dataset,
    mask_to_labels,
    read_image,
    read_mask,
    samples_from_arrays,
)
from schism_napari.data.crops import CropSampler, TrainingCrops, fixed_crops
from schism_napari.data.io import IGNORE, decode_mask, gray_levels, infer_class_count
from schism_napari.data.normalization import Normalization, StatsAccumulator
from schism_napari.data.splits import INDEX_FILES, Split, make_split, read_split, write_split
from schism_napari.errors import DataError
from schism_napari.plumbing.atomic import OutputExistsError
from schism_napari.sample import CLASS_COLORS

CLASS_NAMES = ["pore", "matrix", "mineral"]


def write_tif(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **kwargs)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_dataset(folder: Path, count: int = 3, size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    """A SCHISM dataset folder (images/, masks/) of uint16 images and plain 0..2 masks."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_tif(folder / "images" / f"img_{i:02d}.tif", rng.integers(0, 65535, size, dtype=np.uint16))
        write_tif(folder / "masks" / f"img_{i:02d}.tif", rng.integers(0, 3, size, dtype=np.uint8))
    return folder


@pytest.fixture
def sample_copy(sample_files, tmp_path) -> Path:
    """A private copy of the session sample's datasets folder, without any data_stats.json."""
    copy = tmp_path / "datasets"
    shutil.copytree(sample_files.datasets, copy)
    (copy / "data_stats.json").unlink(missing_ok=True)
    return copy


# ---- read_image / read_mask ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_read_2d_gray_tiff(tmp_path, dtype):
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        array = rng.random((20, 30)).astype(np.float32)
    else:
        array = rng.integers(0, np.iinfo(dtype).max, (20, 30), dtype=dtype)
    image = read_image(write_tif(tmp_path / "gray.tif", array))
    assert image.shape == (1, 20, 30, 1)
    assert image.dtype == dtype
    np.testing.assert_array_equal(image[0, ..., 0], array)


def test_read_rgb_tiff(tmp_path):
    array = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = write_tif(tmp_path / "rgb.tif", array, photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "YXS"
    image = read_image(path)
    assert image.shape == (1, 20, 30, 3)
    np.testing.assert_array_equal(image[0], array)


@pytest.mark.parametrize(
    "kwargs", [{"photometric": "minisblack"}, {"metadata": {"axes": "ZYX"}, "photometric": "minisblack"}]
)
def test_three_slice_gray_stack_is_not_rgb(tmp_path, kwargs):
    stack = np.random.default_rng(3).integers(0, 65535, (3, 20, 30), dtype=np.uint16)
    image = read_image(write_tif(tmp_path / "stack.tif", stack, **kwargs))
    assert image.shape == (3, 20, 30, 1)
    for z in range(3):
        np.testing.assert_array_equal(image[z, ..., 0], stack[z])


def test_stack_whose_last_axis_is_three_stays_gray(tmp_path):
    stack = np.arange(4 * 20 * 3, dtype=np.uint8).reshape(4, 20, 3)
    image = read_image(write_tif(tmp_path / "narrow.tif", stack, photometric="minisblack"))
    assert image.shape == (4, 20, 3, 1)


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.random.default_rng(4).integers(0, 255, (16, 24, 4), dtype=np.uint8)
    image = read_image(write_png(tmp_path / "rgba.png", rgba))
    assert image.shape == (1, 16, 24, 3)
    np.testing.assert_array_equal(image[0], rgba[..., :3])


def test_rgba_tiff_drops_alpha(tmp_path):
    rgba = np.random.default_rng(5).integers(0, 255, (16, 24, 4), dtype=np.uint8)
    image = read_image(write_tif(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"]))
    assert image.shape == (1, 16, 24, 3)
    np.testing.assert_array_equal(image[0], rgba[..., :3])


def test_gray_alpha_png_drops_alpha(tmp_path):
    gray_alpha = np.zeros((16, 24, 2), dtype=np.uint8)
    gray_alpha[..., 0] = np.random.default_rng(20).integers(0, 3, (16, 24))
    gray_alpha[..., 1] = 255
    path = write_png(tmp_path / "gray_alpha.png", gray_alpha)
    with Image.open(path) as image:
        assert image.mode == "LA"
    image = read_image(path)
    assert image.shape == (1, 16, 24, 1)  # like RGBA -> RGB: the alpha channel is not data
    np.testing.assert_array_equal(image[0, ..., 0], gray_alpha[..., 0])
    np.testing.assert_array_equal(read_mask(path), gray_alpha[np.newaxis, ..., 0])


def test_8bit_png(tmp_path):
    array = np.random.default_rng(6).integers(0, 255, (16, 24), dtype=np.uint8)
    image = read_image(write_png(tmp_path / "gray8.png", array))
    assert image.shape == (1, 16, 24, 1)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, ..., 0], array)


def test_16bit_png(tmp_path):
    array = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 170).astype(np.uint16)
    assert array.max() > 255
    image = read_image(write_png(tmp_path / "gray16.png", array))
    assert image.shape == (1, 16, 24, 1)
    assert image.dtype == np.uint16  # 16-bit data is not clipped or widened to int32
    np.testing.assert_array_equal(image[0, ..., 0], array)


def test_16bit_png_memory_check_counts_two_bytes_a_pixel(tmp_path, monkeypatch):
    from schism_napari.plumbing import input_checks as inputs

    path = write_png(tmp_path / "gray16.png", np.full((100, 100), 1000, np.uint16))
    # reading holds about twice the decoded pixels: 40 000 bytes at 2 bytes a pixel, 20 000 at one
    monkeypatch.setattr(inputs, "available_memory", lambda: 30_000)
    with pytest.raises(DataError, match=r"gray16\.png: reading its 100x100x1 pixels needs about"):
        read_image(path)
    monkeypatch.setattr(inputs, "available_memory", lambda: 50_000)
    assert read_image(path).dtype == np.uint16


@pytest.mark.parametrize("name", ["broken.tif", "broken.png"])
def test_corrupt_file_gives_data_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match=re.escape(name)):
        read_image(path)


def test_missing_file_gives_data_error(tmp_path):
    with pytest.raises(DataError, match=re.escape("nothing.tif")):
        read_image(tmp_path / "nothing.tif")


def test_read_mask_gray_and_rgb(tmp_path):
    gray = np.random.default_rng(7).integers(0, 3, (16, 24), dtype=np.uint8)
    assert read_mask(write_tif(tmp_path / "gray.tif", gray)).shape == (1, 16, 24)
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    assert read_mask(write_tif(tmp_path / "rgb.tif", rgb, photometric="rgb")).shape == (1, 16, 24, 3)


# ---- decode_mask ---------------------------------------------------------------------------


def test_decode_plain_classes():
    raw = np.array([[[0, 1, 2], [2, 1, 0]]], dtype=np.uint8)
    decoded = decode_mask(raw, 3, 255, "m.tif")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, raw)


@pytest.mark.parametrize("class_count", [3, 4, 5])
def test_decode_schism_gray_levels(class_count):
    levels = np.round(np.linspace(0, 255, class_count)).astype(np.uint8)
    np.testing.assert_array_equal(gray_levels(class_count), levels)
    classes = np.arange(class_count).repeat(4).reshape(1, class_count, 4)
    decoded = decode_mask(levels[classes], class_count, 255, "m.tif")
    np.testing.assert_array_equal(decoded, classes)


@pytest.mark.parametrize(("class_count", "levels"), [(3, [0, 127, 255]), (5, [0, 63, 127, 191, 255])])
def test_decode_levels_of_schisms_normalisation_tool(class_count, levels):
    """SCHISM's own mask normalisation writes int(linspace(0, 255, C)): 0/127/255, not 0/128/255."""
    classes = np.arange(class_count).repeat(3).reshape(1, class_count, 3)
    raw = np.asarray(levels, dtype=np.uint8)[classes]
    np.testing.assert_array_equal(decode_mask(raw, class_count, 255, "m.tif"), classes)
    assert infer_class_count(np.asarray(levels)) == class_count
    with pytest.raises(DataError):  # a value of neither spelling is still refused
        decode_mask(np.array([[[0, 126, 255]]], dtype=np.uint8), 3, 255, "m.tif")


@pytest.mark.parametrize(
    "raw",
    [[0, 85, 170, 255], [0, 1, 2, 3]],  # SCHISM's gray levels for 3 classes + background, or plain 0..3
)
def test_decode_with_schisms_ignore_background(raw):
    mask = np.array([[raw]], dtype=np.uint8)
    decoded = decode_mask(mask, 3, 255, "m.tif", ignore_background=True)
    np.testing.assert_array_equal(decoded, [[[IGNORE, 0, 1, 2]]])
    binary = decode_mask(np.array([[[0, 255]]], dtype=np.uint8), 2, 255, "m.tif", ignore_background=True)
    np.testing.assert_array_equal(binary, [[[0, 1]]])  # SCHISM's binary models ignore the flag
    with pytest.raises(DataError, match="ignore_background"):
        decode_mask(np.array([[[0, 60, 255]]], dtype=np.uint8), 3, 255, "m.tif", ignore_background=True)


def test_decode_ignore_value_becomes_ignore():
    raw = np.array([[[0, 1, 2, 255], [255, 2, 1, 0]]], dtype=np.uint8)
    decoded = decode_mask(raw, 3, 255, "m.tif")
    np.testing.assert_array_equal(decoded, raw)  # classes stay, 255 is IGNORE
    assert IGNORE == 255
    assert (decoded == IGNORE).sum() == 2


def test_decode_custom_ignore_index():
    raw = np.array([[[0, 1, 2, 9]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(raw, 3, 9, "m.tif"), [[[0, 1, 2, IGNORE]]])
    levels = np.array([[[0, 128, 255, 9]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(levels, 3, 9, "m.tif"), [[[0, 1, 2, IGNORE]]])


def test_decode_binary_two_valued_mask():
    raw = np.array([[[0, 65535], [65535, 0]]], dtype=np.uint16)
    decoded = decode_mask(raw, 2, 255, "m.tif")
    np.testing.assert_array_equal(decoded, [[[0, 1], [1, 0]]])
    assert decoded.dtype == np.uint8


def test_decode_binary_schism_mask_0_255():
    # SCHISM writes a binary mask as its gray levels [0, 255]: 255 is the foreground, not "unlabeled".
    raw = np.array([[[0, 255], [255, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(raw, 2, 255, "m.tif"), [[[0, 1], [1, 0]]])


def test_decode_values_fitting_nothing_name_the_file_and_values():
    raw = np.array([[[0, 7, 300]]], dtype=np.uint16)
    with pytest.raises(DataError) as info:
        decode_mask(raw, 3, 255, "/data/masks/bad_mask.tif")
    message = str(info.value)
    assert "/data/masks/bad_mask.tif" in message
    assert "7" in message and "300" in message


def test_decode_rejects_fractional_and_negative_masks():
    with pytest.raises(DataError, match=re.escape("frac.tif")):
        decode_mask(np.array([[[0.0, 0.5]]], dtype=np.float32), 3, 255, "frac.tif")
    with pytest.raises(DataError, match=re.escape("neg.tif")):
        decode_mask(np.array([[[0, -1]]], dtype=np.int16), 3, 255, "neg.tif")


def test_decode_rgb_mask_through_class_colors():
    colors = [(40, 40, 200), (150, 150, 150), (230, 180, 40)]
    classes = np.array([[[0, 1, 2], [2, 2, 0]]])
    raw = np.asarray(colors, dtype=np.uint8)[classes]
    assert raw.shape == (1, 2, 3, 3)
    decoded = decode_mask(raw, 3, 255, "rgb.png", colors)
    np.testing.assert_array_equal(decoded, classes)
    raw[0, 0, 0] = (1, 2, 3)
    with pytest.raises(DataError, match=r"rgb\.png.*\(1, 2, 3\)"):
        decode_mask(raw, 3, 255, "rgb.png", colors)


def test_decode_rgb_mask_without_class_dict():
    raw = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(DataError, match=r"rgb_mask\.png.*class_dict"):
        decode_mask(raw, 3, 255, "rgb_mask.png")


# ---- napari labels -------------------------------------------------------------------------


def test_labels_mask_round_trip():
    labels = np.random.default_rng(8).integers(0, 4, (5, 16, 16)).astype(np.int32)
    mask = labels_to_mask(labels, 3)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[labels == 0], IGNORE)
    np.testing.assert_array_equal(mask[labels > 0], labels[labels > 0] - 1)
    np.testing.assert_array_equal(mask_to_labels(mask), labels)
    # and the other way
    np.testing.assert_array_equal(labels_to_mask(mask_to_labels(mask), 3), mask)


def test_labels_above_class_count_rejected():
    labels = np.array([[0, 1, 4]], dtype=np.uint8)
    with pytest.raises(DataError, match="3 classes"):
        labels_to_mask(labels, 3)
    labels_to_mask(np.array([[0, 1, 3]]), 3)  # 3 is class 2: fine


# ---- discovery -----------------------------------------------------------------------------


def test_discover_schism_multi_dataset(sample_files):
    stats_folder, folders = discover_datasets(sample_files.datasets)
    assert stats_folder == sample_files.datasets
    assert [f.name for f in folders] == ["rock_a", "rock_b"]
    for folder in folders:
        assert folder.layout == "schism"
        assert len(folder.images) == len(folder.masks) == 6
        assert folder.class_dict == sample_files.datasets / "class_dict.csv"


def test_discover_single_dataset_folder(tmp_path):
    folder = make_dataset(tmp_path / "one")
    stats_folder, folders = discover_datasets(folder)
    assert stats_folder == folder
    assert len(folders) == 1
    assert folders[0].name == "one"
    assert folders[0].layout == "schism"
    assert [p.name for p in folders[0].images] == ["img_00.tif", "img_01.tif", "img_02.tif"]
    assert [p.parent.name for p in folders[0].masks] == ["masks"] * 3


def test_discover_biapy_layout(tmp_path):
    root = tmp_path / "biapy"
    for i in range(2):
        write_tif(root / "train" / "x" / f"x{i}.tif", np.zeros((8, 8), np.uint8))
        write_tif(root / "train" / "y" / f"y{i}.tif", np.zeros((8, 8), np.uint8))
    stats_folder, folders = discover_datasets(root)
    assert stats_folder == root
    assert len(folders) == 1
    assert folders[0].layout == "biapy"
    assert [p.name for p in folders[0].images] == ["x0.tif", "x1.tif"]
    assert [p.name for p in folders[0].masks] == ["y0.tif", "y1.tif"]


def test_discover_single_pair(tmp_path):
    image = write_tif(tmp_path / "scan.tif", np.zeros((8, 8), np.uint8))
    mask = write_tif(tmp_path / "labels" / "scan_mask.tif", np.zeros((8, 8), np.uint8))
    stats_folder, folders = discover_datasets(image, mask=mask)
    assert stats_folder == tmp_path
    assert len(folders) == 1
    assert folders[0].layout == "pair"
    assert folders[0].images == [image]
    assert folders[0].masks == [mask]
    with pytest.raises(DataError, match=re.escape("scan.tif")):
        discover_datasets(image)  # a single image needs its mask


def test_discover_mismatched_counts(tmp_path):
    folder = make_dataset(tmp_path / "uneven", count=3)
    (folder / "masks" / "img_02.tif").unlink()
    with pytest.raises(DataError) as info:
        discover_datasets(folder)
    message = str(info.value)
    assert str(folder / "masks") in message
    assert "2 masks" in message and "3 images" in message


def test_discover_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        discover_datasets(empty)
    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    with pytest.raises(DataError, match="no images"):
        discover_datasets(empty)


def test_discover_ignores_hidden_and_non_image_files(tmp_path):
    folder = make_dataset(tmp_path / "ds", count=2)
    for sub in ("images", "masks"):
        (folder / sub / ".img_00.tif").write_bytes(b"macOS resource fork")
        (folder / sub / "notes.txt").write_text("not an image", encoding="utf-8")
        (folder / sub / "Thumbs.db").write_bytes(b"\0")
        (folder / sub / "sub.tif").mkdir()  # a folder with an image suffix
    _, folders = discover_datasets(folder)
    assert [p.name for p in folders[0].images] == ["img_00.tif", "img_01.tif"]
    assert [p.name for p in folders[0].masks] == ["img_00.tif", "img_01.tif"]
    data = load_dataset(folder, class_count=3, write_stats=False)
    assert len(data.samples) == 2


def test_pairing_is_by_sorted_name(tmp_path):
    folder = tmp_path / "ds"
    # Created out of order, with differently named masks: pairs are formed by sorted position.
    for image_name, mask_name, value in [
        ("c.tif", "mask_3.tif", 2),
        ("a.tif", "mask_1.tif", 0),
        ("b.tif", "mask_2.tif", 1),
    ]:
        write_tif(folder / "images" / image_name, np.full((8, 8), value * 1000, np.uint16))
        write_tif(folder / "masks" / mask_name, np.full((8, 8), value, np.uint8))
    assert [p.name for p in list_image_files(folder / "images")] == ["a.tif", "b.tif", "c.tif"]
    _, folders = discover_datasets(folder)
    assert [(i.name, m.name) for i, m in zip(folders[0].images, folders[0].masks, strict=True)] == [
        ("a.tif", "mask_1.tif"),
        ("b.tif", "mask_2.tif"),
        ("c.tif", "mask_3.tif"),
    ]
    data = load_dataset(folder, class_count=3, write_stats=False)
    for sample in data.samples:
        assert int(sample.image[0, 0, 0]) == 1000 * int(sample.mask[0, 0])


def test_discover_missing_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        discover_datasets(tmp_path / "nowhere")


# ---- load_dataset --------------------------------------------------------------------------


def test_load_sample_datasets(sample_copy):
    data = load_dataset(sample_copy, class_count=3)
    assert data.datasets == ["rock_a", "rock_b"]
    assert len(data.samples) == 12
    assert data.class_count == 3
    assert data.in_channels == 1
    assert data.class_names == CLASS_NAMES
    assert data.class_colors == [tuple(c) for c in CLASS_COLORS]
    for name in ("rock_a", "rock_b"):
        samples = [s for s in data.samples if s.dataset == name]
        assert [s.index for s in samples] == list(range(6))
        assert all(s.image.shape == (96, 96, 1) and s.image.dtype == np.uint16 for s in samples)
        assert all(s.mask.shape == (96, 96) and s.mask.dtype == np.uint8 for s in samples)
    classes_a = set(np.unique(np.stack([s.mask for s in data.samples if s.dataset == "rock_a"])).tolist())
    classes_b = set(np.unique(np.stack([s.mask for s in data.samples if s.dataset == "rock_b"])).tolist())
    assert classes_a == classes_b == {0, 1, 2}
    # rock_b's gray levels 0/128/255 decode to the classes they encode
    raw = read_mask(sample_copy / "rock_b" / "masks" / "slice_000.tif")[0]
    assert set(np.unique(raw).tolist()) == {0, 128, 255}
    rock_b_first = next(s for s in data.samples if s.dataset == "rock_b" and s.index == 0)
    np.testing.assert_array_equal(rock_b_first.mask, np.searchsorted([0, 128, 255], raw))


def test_load_computes_data_stats_in_schism_format_without_writing_them(sample_copy):
    stats_path = sample_copy / "data_stats.json"
    assert not stats_path.exists()
    before = sorted(p.name for p in sample_copy.iterdir())
    data = load_dataset(sample_copy, class_count=3)
    assert data.stats_path is None
    assert not stats_path.exists()  # never written into the user's dataset folder (the run folder gets it)
    assert sorted(p.name for p in sample_copy.iterdir()) == before
    content = {name: value.to_json() for name, value in data.stats.items()}
    assert set(content) == {"rock_a", "rock_b", "default"}
    everything = []
    for name in ("rock_a", "rock_b"):
        images = np.stack([tifffile.imread(p) for p in sorted((sample_copy / name / "images").glob("*.tif"))])
        everything.append(images)
        mean, std = content[name]
        assert len(mean) == len(std) == 3  # SCHISM writes three values even for gray images
        assert mean == pytest.approx([images.mean() / 65535] * 3, abs=1e-6)
        assert std == pytest.approx([(images / 65535).std()] * 3, abs=1e-6)
        assert 0 < mean[0] < 1
    pooled = np.concatenate(everything) / 65535
    assert content["default"][0] == pytest.approx([pooled.mean()] * 3, abs=1e-6)
    assert content["default"][1] == pytest.approx([pooled.std()] * 3, abs=1e-6)
    # in memory too
    assert data.normalization("rock_a").mean[0] == pytest.approx(content["rock_a"][0][0], abs=1e-6)


def test_load_reads_existing_data_stats(sample_copy):
    stats_path = sample_copy / "data_stats.json"
    hand_made = {"rock_a": [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]], "default": [[0.3, 0.3, 0.3], [0.05, 0.05, 0.05]]}
    text = json.dumps(hand_made)
    stats_path.write_text(text, encoding="utf-8")
    data = load_dataset(sample_copy, class_count=3)
    assert stats_path.read_text(encoding="utf-8") == text  # not rewritten
    assert data.messages == []
    assert data.normalization("rock_a") == Normalization((0.1, 0.1, 0.1), (0.2, 0.2, 0.2))
    assert data.normalization("rock_b") == Normalization((0.3, 0.3, 0.3), (0.05, 0.05, 0.05))  # falls back
    # and the crops use them: (raw / 65535 - mean) / std
    position = next(i for i, s in enumerate(data.samples) if s.dataset == "rock_a")
    sampler = CropSampler(data, [position], 32, np.random.default_rng(0))
    image, _ = sampler.crop(position, (0, 0))
    raw = data.samples[position].image[:32, :32, 0].astype(np.float64)
    np.testing.assert_allclose(image[0], (raw / 65535 - 0.1) / 0.2, rtol=1e-4, atol=1e-4)


def test_load_reads_back_the_stats_it_computed(sample_copy):
    from schism_napari.data.normalization import write_stats_file

    first = load_dataset(sample_copy, class_count=3)
    write_stats_file(sample_copy / "data_stats.json", first.stats)  # as `schism stats` or a run folder holds them
    second = load_dataset(sample_copy, class_count=3)
    assert second.stats_path == sample_copy / "data_stats.json"
    assert second.messages == []
    for name in ("rock_a", "rock_b", "default"):
        assert second.stats[name].mean == pytest.approx((first.stats[name].mean[0],) * 3, abs=1e-7)
        assert second.stats[name].std == pytest.approx((first.stats[name].std[0],) * 3, abs=1e-7)


def test_load_stats_without_entry_or_default(sample_copy):
    (sample_copy / "data_stats.json").write_text(json.dumps({"rock_a": [[0.1] * 3, [0.2] * 3]}), encoding="utf-8")
    with pytest.raises(DataError, match="rock_b"):
        load_dataset(sample_copy, class_count=3)


def test_load_mask_image_shape_mismatch(tmp_path):
    folder = make_dataset(tmp_path / "ds", count=2)
    write_tif(folder / "masks" / "img_01.tif", np.zeros((20, 32), np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset(folder, class_count=3, write_stats=False)
    message = str(info.value)
    assert str(folder / "masks" / "img_01.tif") in message
    assert "img_01.tif" in message.split("does not match")[1]  # names the image too
    assert "20x32" in message and "24x32" in message


def test_load_class_dict_count_must_match(sample_copy):
    with pytest.raises(DataError, match=re.escape("class_dict.csv")):
        load_dataset(sample_copy, class_count=4)


def test_load_gray_level_dataset_decodes_all_masks_alike(tmp_path):
    # A gray-level (0/128/255) dataset where one slice lacks the middle class: its 255 is still class 2.
    folder = tmp_path / "levels"
    write_tif(folder / "images" / "a.tif", np.zeros((8, 8), np.uint16))
    write_tif(folder / "images" / "b.tif", np.zeros((8, 8), np.uint16))
    write_tif(folder / "masks" / "a.tif", np.array([0, 128, 255] * 21 + [0], np.uint8).reshape(8, 8))
    write_tif(folder / "masks" / "b.tif", np.array([0, 255] * 32, np.uint8).reshape(8, 8))
    data = load_dataset(folder, class_count=3, write_stats=False)
    assert set(np.unique(data.samples[1].mask).tolist()) == {0, 2}
    assert set(np.unique(data.samples[0].mask).tolist()) == {0, 1, 2}


def test_load_rgb_masks_with_class_dict(tmp_path):
    colors = [(40, 40, 200), (150, 150, 150), (230, 180, 40)]
    folder = tmp_path / "colour"
    classes = np.random.default_rng(9).integers(0, 3, (12, 16))
    write_tif(folder / "images" / "a.tif", np.zeros((12, 16), np.uint8))
    write_png(folder / "masks" / "a.png", np.asarray(colors, np.uint8)[classes])
    (folder / "class_dict.csv").write_text(
        "name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(CLASS_NAMES, colors, strict=True)),
        encoding="utf-8",
    )
    data = load_dataset(folder, class_count=3, write_stats=False)
    np.testing.assert_array_equal(data.samples[0].mask, classes)
    assert data.class_names == CLASS_NAMES


def test_load_stack_files_become_slices(tmp_path):
    folder = tmp_path / "stacks"
    stack = np.random.default_rng(10).integers(0, 65535, (4, 16, 16), dtype=np.uint16)
    write_tif(folder / "images" / "vol.tif", stack, photometric="minisblack")
    write_tif(folder / "masks" / "vol.tif", np.ones((4, 16, 16), np.uint8), photometric="minisblack")
    data = load_dataset(folder, class_count=3, write_stats=False)
    assert len(data.samples) == 4
    assert [s.index for s in data.samples] == [0, 1, 2, 3]
    np.testing.assert_array_equal(data.samples[2].image[..., 0], stack[2])


# ---- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "full"), [(np.uint16, 65535.0), (np.uint8, 255.0)])
def test_affine_matches_schism_units(dtype, full):
    norm = Normalization((0.3,), (0.12,))
    a, b = norm.affine(np.dtype(dtype), 1)
    assert a.dtype == b.dtype == np.float32
    raw = np.random.default_rng(11).integers(0, int(full), 1000).astype(dtype)
    expected = (raw / full - 0.3) / 0.12
    np.testing.assert_allclose(raw.astype(np.float32) * a[0] + b[0], expected, rtol=1e-5, atol=1e-4)


def test_affine_per_channel_and_gray_from_three_values():
    norm = Normalization((0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    a, b = norm.affine(np.dtype(np.uint8), 3)
    raw = np.array([0, 100, 255], dtype=np.float64)
    for c in range(3):
        np.testing.assert_allclose(raw * a[c] + b[c], (raw / 255 - norm.mean[c]) / norm.std[c], rtol=1e-5)
    # SCHISM's three equal values apply to a gray image
    a, b = Normalization((0.4,) * 3, (0.2,) * 3).affine(np.dtype(np.float32), 1)
    assert a.shape == (1,)
    np.testing.assert_allclose(0.6 * a + b, (0.6 - 0.4) / 0.2, rtol=1e-5)
    with pytest.raises(DataError):
        Normalization((0.1, 0.2), (0.1, 0.2)).affine(np.dtype(np.uint8), 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_stats_accumulator_matches_numpy(dtype):
    rng = np.random.default_rng(12)
    images = []
    for shape in [(30, 40, 3), (17, 23, 3), (2, 9, 11, 3)]:
        if dtype == np.float32:
            images.append(rng.random(shape).astype(np.float32))
        else:
            images.append(rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype))
    scale = 1.0 if dtype == np.float32 else float(np.iinfo(dtype).max)
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / scale

    accumulator = StatsAccumulator()
    for image in images:
        accumulator.add(image)
    result = accumulator.result()
    np.testing.assert_allclose(result.mean, pixels.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.std, pixels.std(axis=0), rtol=1e-6, atol=1e-9)

    # merging two halves gives the same
    left, right = StatsAccumulator(), StatsAccumulator()
    left.add(images[0])
    for image in images[1:]:
        right.add(image)
    left.merge(right)
    np.testing.assert_allclose(left.result().mean, result.mean, rtol=1e-12)
    np.testing.assert_allclose(left.result().std, result.std, rtol=1e-9)


def test_stats_accumulator_empty():
    with pytest.raises(DataError):
        StatsAccumulator().result()


# ---- splits --------------------------------------------------------------------------------


def test_make_split_schism_meaning():
    split = make_split(5000, 3000, 0.8, seed=7)
    assert (len(split.train), len(split.val), len(split.test)) == (2400, 600, 2000)
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(5000))
    assert make_split(5000, 3000, 0.8, seed=7) == split
    assert make_split(5000, 3000, 0.8, seed=8) != split
    assert split.part("all") == split.train + split.val + split.test


def test_make_split_more_samples_than_images():
    split = make_split(10, 500, 0.7, seed=0)  # 0.7 * 10 is 7.000000000000001 in floating point
    assert (len(split.train), len(split.val), len(split.test)) == (7, 3, 0)
    assert sorted(split.train + split.val) == list(range(10))


def test_write_and_read_split(tmp_path, sample_copy):
    data = load_dataset(sample_copy, class_count=3, write_stats=False)
    split = make_split(len(data.samples), 8, 0.75, seed=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_split(run_dir, data, split)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(INDEX_FILES.values())
    train_lines = (run_dir / "train_indices.txt").read_text(encoding="utf-8").splitlines()
    assert len(train_lines) == 6
    expected = [f"{data.samples[p].dataset}, {data.samples[p].index}" for p in split.train]
    assert train_lines == expected
    for line in train_lines:
        dataset, index = line.split(", ")
        assert dataset in ("rock_a", "rock_b") and 0 <= int(index) < 6
    assert read_split(run_dir, data) == split
    with pytest.raises(OutputExistsError):
        write_split(run_dir, data, split)  # no silent overwrite
    write_split(run_dir, data, Split(split.val, split.train, split.test), overwrite=True)
    assert read_split(run_dir, data).train == split.val


def test_split_files_with_spaces_in_dataset_names(tmp_path):
    # the SCHISM README names its datasets "dataset 1", "dataset 2"...
    images = [np.zeros((3, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8)]
    masks = [np.zeros((3, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8)]
    data = samples_from_arrays(images, masks, class_count=2, names=["dataset 1", "dataset 2"])
    split = make_split(5, 4, 0.5, seed=0)
    write_split(tmp_path, data, split)
    lines = "".join((tmp_path / f).read_text(encoding="utf-8") for f in INDEX_FILES.values()).splitlines()
    assert sorted(lines) == ["dataset 1, 0", "dataset 1, 1", "dataset 1, 2", "dataset 2, 0", "dataset 2, 1"]
    assert read_split(tmp_path, data) == split


@pytest.mark.parametrize("line", ["rock_c, 0", "rock_a, 99", "garbage"])
def test_read_split_unknown_image(tmp_path, sample_copy, line):
    data = load_dataset(sample_copy, class_count=3, write_stats=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_split(run_dir, data, make_split(len(data.samples), 8, 0.75, seed=3))
    path = run_dir / "val_indices.txt"
    path.write_text(path.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_split(run_dir, data)
    assert "val_indices.txt" in str(info.value)
    assert line in str(info.value)


def test_read_split_missing_file(tmp_path, sample_copy):
    data = load_dataset(sample_copy, class_count=3, write_stats=False)
    with pytest.raises(DataError, match=re.escape("train_indices.txt")):
        read_split(tmp_path, data)


# ---- crops ---------------------------------------------------------------------------------


def array_data(images, masks, class_count=3, rgb=False):
    return samples_from_arrays(images, masks, class_count=class_count, rgb=rgb)


def test_crop_shapes_and_values():
    rng = np.random.default_rng(13)
    image = rng.integers(0, 65535, (64, 80), dtype=np.uint16)
    mask = rng.integers(0, 3, (64, 80), dtype=np.uint8)
    data = array_data([image], [mask])
    sampler = CropSampler(data, [0], 32, np.random.default_rng(0))
    for _ in range(10):
        crop, crop_mask = sampler.crop(0)
        assert crop.shape == (1, 32, 32) and crop.dtype == np.float32
        assert crop_mask.shape == (32, 32) and crop_mask.dtype == np.uint8
    crop, crop_mask = sampler.crop(0, (10, 20))
    norm = data.normalization("layer_0")
    expected = (image[10:42, 20:52] / 65535 - norm.mean[0]) / norm.std[0]
    np.testing.assert_allclose(crop[0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(crop_mask, mask[10:42, 20:52])


def test_rgb_crops_are_channel_first():
    image = np.random.default_rng(14).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    data = array_data([image], [np.zeros((40, 40), np.uint8)], rgb=True)
    crop, _ = CropSampler(data, [0], 16, np.random.default_rng(0)).crop(0, (0, 0))
    assert crop.shape == (3, 16, 16)
    norm = data.normalization("layer_0")
    for c in range(3):
        np.testing.assert_allclose(crop[c], (image[:16, :16, c] / 255 - norm.mean[c]) / norm.std[c], atol=1e-4)


def test_small_images_are_padded_with_ignore_masks():
    rng = np.random.default_rng(15)
    image = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    mask = rng.integers(0, 3, (20, 30), dtype=np.uint8)
    data = array_data([image], [mask])
    sampler = CropSampler(data, [0], 48, np.random.default_rng(0))
    crop, crop_mask = sampler.crop(0)
    assert crop.shape == (1, 48, 48)
    assert crop_mask.shape == (48, 48)
    assert np.isfinite(crop).all()
    np.testing.assert_array_equal(crop_mask[:20, :30], mask)
    assert (crop_mask[20:, :] == IGNORE).all()
    assert (crop_mask[:, 30:] == IGNORE).all()
    crops = TrainingCrops(data, [0], 48, 3, 2, np.random.default_rng(1))
    batches = list(crops)
    assert len(crops) == len(batches) == 2
    assert [b[0].shape for b in batches] == [(2, 1, 48, 48), (1, 1, 48, 48)]


def test_sparse_masks_anchor_most_crops_on_painted_pixels(monkeypatch):
    image = np.random.default_rng(16).integers(0, 65535, (160, 160), dtype=np.uint16)
    mask = np.full((160, 160), IGNORE, dtype=np.uint8)
    mask[120:123, 15:18] = 1  # two small scribbles
    mask[30, 140] = 2
    data = array_data([image], [mask])
    draws = 200

    def hit_rate(seed: int) -> float:
        sampler = CropSampler(data, [0], 32, np.random.default_rng(seed))
        return sum(bool((sampler.crop(0)[1] != IGNORE).any()) for _ in range(draws)) / draws

    assert hit_rate(0) > 0.7
    assert hit_rate(1) > 0.7
    # without anchoring, uniform crops rarely see the scribbles: the check above measures the anchoring
    monkeypatch.setattr(crops_module, "SPARSE_FRACTION", 0.0)
    assert hit_rate(0) < 0.3


def test_training_crops_epoch():
    rng = np.random.default_rng(17)
    images = [rng.integers(0, 65535, (48, 48), dtype=np.uint16) for _ in range(5)]
    masks = [rng.integers(0, 3, (48, 48), dtype=np.uint8) for _ in range(5)]
    data = array_data(images, masks)
    crops = TrainingCrops(data, [0, 2, 4], 32, crops_per_image=3, batch_size=4, rng=np.random.default_rng(0))
    assert len(crops) == 3  # ceil(9 / 4)
    batches = list(crops)
    assert [b[0].shape[0] for b in batches] == [4, 4, 1]
    for image_batch, mask_batch in batches:
        assert image_batch.dtype == np.float32 and image_batch.shape[1:] == (1, 32, 32)
        assert mask_batch.dtype == np.uint8 and mask_batch.shape[1:] == (32, 32)


def test_fixed_crops_are_reproducible():
    rng = np.random.default_rng(18)
    images = [rng.integers(0, 65535, (96, 96), dtype=np.uint16) for _ in range(3)]
    masks = [rng.integers(0, 3, (96, 96), dtype=np.uint8) for _ in range(3)]
    data = array_data(images, masks)
    first = fixed_crops(data, [0, 1, 2], 32, 4, seed=5)
    second = fixed_crops(data, [0, 1, 2], 32, 4, seed=5)
    assert first[0].shape == (12, 1, 32, 32) and first[0].dtype == np.float32
    assert first[1].shape == (12, 32, 32) and first[1].dtype == np.uint8
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other = fixed_crops(data, [0, 1, 2], 32, 4, seed=6)
    assert not np.array_equal(first[0], other[0])


# ---- samples_from_arrays -------------------------------------------------------------------


def test_samples_from_2d_3d_and_rgb_arrays():
    rng = np.random.default_rng(19)
    image_2d = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    stack = rng.integers(0, 255, (4, 20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    mask_2d = rng.integers(0, 3, (20, 30), dtype=np.uint8)
    mask_3d = rng.integers(0, 3, (4, 20, 30), dtype=np.uint8)

    data = samples_from_arrays([image_2d], [mask_2d], class_count=3, names=["slice"])
    assert len(data.samples) == 1
    assert data.samples[0].image.shape == (20, 30, 1)
    assert data.in_channels == 1
    np.testing.assert_array_equal(data.samples[0].mask, mask_2d)

    data = samples_from_arrays([stack], [mask_3d], class_count=3, names=["volume"])
    assert len(data.samples) == 4
    assert [s.index for s in data.samples] == [0, 1, 2, 3]
    assert data.samples[3].source == "volume[3]"
    np.testing.assert_array_equal(data.samples[2].image[..., 0], stack[2])
    np.testing.assert_array_equal(data.samples[2].mask, mask_3d[2])

    data = samples_from_arrays([rgb], [mask_2d], class_count=3, rgb=True)
    assert data.samples[0].image.shape == (20, 30, 3)
    assert data.in_channels == 3

    # gray and RGB together: gray is repeated to three channels
    data = samples_from_arrays([image_2d, rgb], [mask_2d, None], class_count=3, rgb=[False, True])
    assert data.in_channels == 3
    np.testing.assert_array_equal(data.samples[0].image, np.repeat(image_2d[..., None], 3, axis=-1))
    assert data.samples[1].mask is None


def test_samples_from_arrays_shape_mismatch():
    image = np.zeros((20, 30), np.uint8)
    with pytest.raises(DataError, match="scan"):
        samples_from_arrays([image], [np.zeros((20, 31), np.uint8)], class_count=3, names=["scan"])
    with pytest.raises(DataError, match="scan"):
        samples_from_arrays(
            [np.zeros((4, 20, 30), np.uint8)], [np.zeros((3, 20, 30), np.uint8)], class_count=3, names=["scan"]
        )


def test_samples_from_arrays_classes_beyond_count():
    image = np.zeros((8, 8), np.uint8)
    mask = np.full((8, 8), IGNORE, np.uint8)
    mask[0, 0] = 3
    with pytest.raises(DataError, match="3 configured"):
        samples_from_arrays([image], [mask], class_count=3)
    mask[0, 0] = 2
    assert samples_from_arrays([image], [mask], class_count=3).samples[0].labelled_fraction == pytest.approx(1 / 64)


def test_one_palette_and_one_default_class_names():
    """The dock's Labels layers and the overlay videos colour a class alike: one palette, one
    fallback for class names, both in data.classes (Qt-free) and defined nowhere else."""
    import ast

    import schism_napari
    from schism_napari.data import classes, video

    assert video.DEFAULT_COLORS is classes.DEFAULT_COLORS
    assert classes.default_class_names(3) == ["class 0", "class 1", "class 2"]
    assert classes.default_colors(12)[10] == classes.DEFAULT_COLORS[0]
    root = Path(schism_napari.__file__).parent
    defined = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = {node.name} if isinstance(node, ast.FunctionDef) else set()
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
            defined |= {
                (name, path.relative_to(root).as_posix()) for name in names & {"DEFAULT_COLORS", "default_class_names"}
            }
    assert defined == {("DEFAULT_COLORS", "data/classes.py"), ("default_class_names", "data/classes.py")}
