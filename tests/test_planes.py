"""Tri-planar consensus: exact averages of three passes, slabs, anisotropy, voxel size from files, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from conftest import PointwiseModel
from schism_napari.config import InferenceConfig, SchismConfig
from schism_napari.data.normalization import Normalization
from schism_napari.errors import ConfigError, DataError
from schism_napari.inference import Predictor, Slices
from schism_napari.inference.planes import TriPlanarPredictor, planar_predictor, voxel_ratio_from_file
from schism_napari.plumbing.zarr_compat import create_array


class RowMeanModel(nn.Module):
    """Logits from each pixel and the mean of its row: a different answer for each orientation."""

    size_divisor = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = x.mean(dim=-1, keepdim=True).expand_as(x)
        return torch.cat([x, row, -x - row], dim=1) * 3


def predictor(model: nn.Module, **settings) -> Predictor:
    settings.setdefault("tile_size", 32)
    return Predictor(
        model, class_count=3, in_channels=1, normalization=Normalization((0.4,), (0.2,)),
        settings=InferenceConfig(**settings), device="cpu",
    )  # fmt: skip


def volume(shape=(10, 40, 36), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=shape).astype(np.uint16)


def test_pointwise_model_gives_the_xy_result_on_every_plane():
    base = predictor(PointwiseModel())
    stack = volume()
    xy = base.predict(stack)
    xyz = TriPlanarPredictor(base).predict(stack)
    np.testing.assert_allclose(xyz.probabilities, xy.probabilities, atol=1e-5)
    np.testing.assert_array_equal(xyz.labels, xy.labels)


def test_consensus_is_the_mean_of_the_three_passes():
    base = predictor(RowMeanModel(), overlap=0.0, blending="constant", tile_size=64)
    stack = volume((6, 16, 24))
    xy = base.predict(stack).probabilities  # (Z, C, Y, X)
    xz = base.predict(np.ascontiguousarray(stack.transpose(1, 0, 2))).probabilities  # (Y, C, Z, X)
    yz = base.predict(np.ascontiguousarray(stack.transpose(2, 0, 1))).probabilities  # (X, C, Z, Y)
    expected = (xy + xz.transpose(2, 1, 0, 3) + yz.transpose(2, 1, 3, 0)) / 3
    result = TriPlanarPredictor(base).predict(stack)
    assert not np.allclose(xy, expected, atol=1e-3)  # the passes really differ
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(result.labels, expected.argmax(axis=1))


def test_slabs_with_margins_match_the_whole_volume():
    base = predictor(PointwiseModel())
    stack = volume((23, 24, 24))
    whole = TriPlanarPredictor(base).predict(stack).probabilities
    slabbed = TriPlanarPredictor(base, slab_depth=5).predict(stack).probabilities
    np.testing.assert_allclose(slabbed, whole, atol=1e-5)


def test_slabs_read_only_their_slices_at_a_time():
    """Streaming: a slab reads its slices plus the margin, never the whole stack at once."""

    class Counting:
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
            self.reads: list[int] = []

        def __getitem__(self, z):
            self.reads.append(z)
            return self.array[z]

    base = predictor(PointwiseModel(), tile_size=16)
    stack = Counting(volume((30, 16, 16)))
    tri = TriPlanarPredictor(base, slab_depth=6)
    seen = 0
    for z, _ in tri.iter_probabilities(Slices(stack)):
        assert z == seen
        seen += 1
        # at most the slab, its margin on both sides, ahead of what was yielded
        assert max(stack.reads) < z + 6 + tri.margin + 1
    assert seen == 30


def test_two_dimensional_images_are_predicted_as_by_the_base():
    base = predictor(RowMeanModel())
    image = volume((40, 36))
    np.testing.assert_array_equal(TriPlanarPredictor(base).predict(image).labels, base.predict(image).labels)


def test_anisotropic_voxels_are_resampled_for_the_side_passes():
    base = predictor(PointwiseModel())
    # smooth along Z so linear resampling of a pointwise model changes little
    stack = np.broadcast_to(volume((1, 24, 24)), (4, 24, 24)).copy()
    result = TriPlanarPredictor(base, voxel_ratio=3.0).predict(stack)
    assert result.probabilities.shape == (4, 3, 24, 24)
    np.testing.assert_allclose(result.probabilities, base.predict(stack).probabilities, atol=1e-4)


def test_too_anisotropic_voxels_are_refused_with_a_clear_message():
    with pytest.raises(DataError, match=r"refused: Z voxels are 12.5 times .*planes = xy"):
        TriPlanarPredictor(predictor(PointwiseModel()), voxel_ratio=12.5)


def test_planar_predictor_follows_the_config_value():
    base = predictor(PointwiseModel())
    assert planar_predictor(base, "xy") is base
    assert isinstance(planar_predictor(base, "xyz"), TriPlanarPredictor)


def test_config_planes_and_voxel_ratio():
    config = SchismConfig.from_ini_string("[Inference]\nplanes = XYZ\nvoxel_ratio = 2.5\n[Data]\nplanes = xyz\n")
    assert (config.inference.planes, config.inference.voxel_ratio, config.data.planes) == ("xyz", 2.5, "xyz")
    assert "planes = xyz" in config.to_ini_string()
    with pytest.raises(ConfigError, match=r"\[Inference\] planes = 'xz'.*allowed: xy, xyz"):
        SchismConfig.from_ini_string("[Inference]\nplanes = xz\n")


def test_voxel_ratio_read_from_an_imagej_tiff(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        volume((3, 8, 8)),
        imagej=True,
        photometric="minisblack",
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"spacing": 2.0},
    )
    assert voxel_ratio_from_file(path) == pytest.approx(4.0)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, volume((3, 8, 8)), photometric="minisblack")
    assert voxel_ratio_from_file(plain) is None


def _ome_scale(z: object, x: float = 0.5) -> dict:
    return {"multiscales": [{"datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [z, x, x]}]}]}]}  # fmt: skip


def test_voxel_ratio_read_from_an_ome_zarr_and_malformed_metadata_is_none(tmp_path):
    import zarr

    store = tmp_path / "stack.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.attrs.update(_ome_scale(2.0))
    array = create_array(group, "0", shape=(3, 8, 8), dtype="uint8")
    assert voxel_ratio_from_file(store) == pytest.approx(4.0)
    # the array's own attributes are malformed (no dataset): the parent group's scale still counts
    array.attrs.update({"multiscales": [{"datasets": []}]})
    assert voxel_ratio_from_file(store / "0") == pytest.approx(4.0)
    for broken in (_ome_scale(0.0), _ome_scale("2"), {"multiscales": "xyz"}, {"ome": {"multiscales": [3]}}):
        group.attrs.clear()
        group.attrs.update(broken)
        assert voxel_ratio_from_file(store) is None
    group.attrs.clear()
    group.attrs.update({"ome": _ome_scale(1.5)})  # OME-Zarr 0.5 keeps multiscales under "ome"
    assert voxel_ratio_from_file(store) == pytest.approx(3.0)


def test_cli_predict_with_planes(trained_run, sample_files, tmp_path):
    from schism_napari.cli import main
    from schism_napari.runs import load_trained_model

    out = tmp_path / "out"
    assert main(["predict", "--weights", str(trained_run), "--input", str(sample_files.volume),
                 "--out", str(out), "--planes", "xyz", "--zarr", "--slab-depth", "4"]) == 0  # fmt: skip
    labels = tifffile.imread(out / f"{sample_files.volume.stem}_labels.tif")
    trained = load_trained_model(trained_run)
    base = Predictor.from_trained(trained, device="cpu")
    expected = TriPlanarPredictor(base, slab_depth=4).predict(tifffile.imread(sample_files.volume)).labels
    np.testing.assert_array_equal(labels, expected)
    assert main(["predict", "--weights", str(trained_run), "--input", str(sample_files.volume),
                 "--out", str(tmp_path / "o2"), "--planes", "xyz", "--voxel-ratio", "20"]) == 2  # fmt: skip


# ---- training on three orientations ------------------------------------------------------------


def test_stack_planes_are_resliced_image_and_mask():
    from schism_napari.data.dataset import samples_from_arrays

    image = volume((4, 10, 12))
    mask = np.random.default_rng(2).integers(0, 3, size=(4, 10, 12)).astype(np.uint8)
    data = samples_from_arrays([image], [mask], class_count=3, names=["vol"], planes="xyz")
    assert len(data.samples) == 4 + 4 + 4  # slices, then as many XZ and YZ planes as slices
    xz = [s for s in data.samples if "xz plane" in s.source]
    yz = [s for s in data.samples if "yz plane" in s.source]
    assert [s.index for s in data.samples] == list(range(12))
    first_xz, last_yz = xz[0], yz[-1]
    np.testing.assert_array_equal(first_xz.image[..., 0], image[:, 0, :])
    np.testing.assert_array_equal(first_xz.mask, mask[:, 0, :])
    np.testing.assert_array_equal(last_yz.image[..., 0], image[:, :, 11])
    np.testing.assert_array_equal(last_yz.mask, mask[:, :, 11])
    assert len(samples_from_arrays([image], [mask], class_count=3).samples) == 4  # xy: slices only


def test_anisotropic_stack_planes_are_stretched_along_z():
    from schism_napari.data.voxels import orthogonal_planes, resample_depth

    image = np.arange(3, dtype=np.uint16).reshape(3, 1, 1, 1) * 100 * np.ones((3, 5, 6, 1), np.uint16)
    mask = np.broadcast_to(np.arange(3, dtype=np.uint8).reshape(3, 1, 1), (3, 5, 6)).copy()
    name, position, plane, plane_mask = orthogonal_planes(image, mask, 3, ratio=2.0)[0]
    assert (name, position, plane.shape, plane_mask.shape) == ("xz", 0, (6, 6, 1), (6, 6))
    np.testing.assert_array_equal(plane[:, 0, 0], [0, 25, 75, 125, 175, 200])  # linear, centres aligned
    np.testing.assert_array_equal(plane_mask[:, 0], [0, 0, 1, 1, 2, 2])  # nearest for classes
    assert plane.dtype == np.uint16
    assert resample_depth(image, 1.0) is image


def test_load_dataset_with_xyz_planes_keeps_slice_indices(tmp_path):
    from schism_napari.data import load_dataset
    from schism_napari.sample import make_rock

    image, labels = make_rock((5, 32, 40), seed=1)
    for name in ("images", "masks"):
        (tmp_path / "vol" / name).mkdir(parents=True)
    for index in range(2):  # a 2D image first, then a stack with a Z spacing twice the pixel size
        metadata = {"spacing": 2.0, "axes": "ZYX" if index else "YX"}
        pixels = image if index else image[0]
        tifffile.imwrite(tmp_path / "vol" / "images" / f"a{index}.tif", pixels, imagej=True, resolution=(1.0, 1.0),
                         metadata=metadata)  # fmt: skip
        tifffile.imwrite(tmp_path / "vol" / "masks" / f"a{index}.tif", labels if index else labels[0])
    plain = load_dataset(tmp_path / "vol", class_count=3, write_stats=False)
    tri = load_dataset(tmp_path / "vol", class_count=3, write_stats=False, planes="xyz")
    assert len(plain.samples) == 6
    assert [(s.index, s.source) for s in tri.samples[:6]] == [(s.index, s.source) for s in plain.samples]
    extra = tri.samples[6:]
    assert len(extra) == 10 and [s.index for s in extra] == list(range(6, 16))
    assert all(s.image.shape[:2] == (10, 40) for s in extra if "xz plane" in s.source)  # 5 slices x 2
    assert all(s.mask is not None and s.mask.shape == s.image.shape[:2] for s in extra)
