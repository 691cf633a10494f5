"""Bad inputs and faults through the ``schism`` CLI: one clear line each, no debris, valid outputs.

The table holds what a careless user or a hostile file gives the command line; every case must
end with exit code 2, exactly one ``schism: error:`` line naming the file, key or value at
fault, no traceback, and no output folder left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from conftest import TINY_INI
from schism_napari.cli import main
from schism_napari.data.voxels import read_voxel_size
from schism_napari.plumbing.atomic import atomic_write_text, current_umask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("schism: error: "), err
    return lines[0]


def last_error_line(capsys: pytest.CaptureFixture) -> str:
    """A command that got going (training reports progress on stderr) ends with one error line."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert lines[-1].startswith("schism: error: "), err
    return lines[-1]


class Pickled:
    """Unpickling this would run code: a weights_only load must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo unsafe checkpoint ran",))


@dataclass
class Case:
    """``build(tmp_path, env)`` returns the CLI arguments; ``named`` must appear in the line."""

    build: Callable[[Path, dict], list[str]]
    named: Callable[[Path], list[str]]
    absent: tuple[str, ...] = ()


def _dataset(tmp: Path, sample_files, edit: Callable[[Path], None] | None = None) -> Path:
    data = tmp / "datasets"
    shutil.copytree(sample_files.datasets, data, ignore=shutil.ignore_patterns("data_stats.json"))
    if edit is not None:
        edit(data)
    return data


def _ini(tmp: Path, text: str = TINY_INI) -> Path:
    path = tmp / "tiny.ini"
    path.write_text(text.replace("epochs = 4", "epochs = 1"), encoding="utf-8")
    return path


def _train(tmp: Path, env: dict, edit=None, ini: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    data = _dataset(tmp, env["sample"], edit)
    config = ini or _ini(tmp)
    return ["train", "--data", str(data), "--config", str(config), "--out", str(tmp / "out"), *extra]


def _predict(tmp: Path, env: dict, image: Path, weights: Path | None = None) -> list[str]:
    run = weights or env["run"]
    return ["predict", "--weights", str(run), "--input", str(image), "--out", str(tmp / "out")]


def _float_mask(value: float):
    def edit(data: Path) -> None:
        path = data / "rock_a" / "masks" / "slice_002.tif"
        mask = tifffile.imread(path).astype(np.float32)
        mask[3, 4] = value
        tifffile.imwrite(path, mask)

    return edit


def _nan_image(data: Path) -> None:
    path = data / "rock_b" / "images" / "slice_001.tif"
    image = tifffile.imread(path).astype(np.float32)
    image[10:12, 10:12] = np.nan
    image[0, 0] = np.inf
    tifffile.imwrite(path, image)


def _file_in_the_way(tmp: Path) -> Path:
    blocker = tmp / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    return blocker / "out"


def _truncated(tmp: Path, env: dict) -> list[str]:
    path = tmp / "truncated.tif"
    whole = tmp / "whole.tif"
    tifffile.imwrite(whole, tifffile.imread(env["sample"].volume))  # uncompressed: header first, then pixels
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return _predict(tmp, env, path)


def _huge(tmp: Path, env: dict) -> list[str]:
    path = tmp / "huge.tif"
    tifffile.imwrite(path, shape=(300_000, 300_000), dtype=np.uint8)  # sparse file: a header declaring 90 GB
    return _predict(tmp, env, path)


def _four_d(tmp: Path, env: dict) -> list[str]:
    path = tmp / "time_series.tif"
    volume = tifffile.imread(env["sample"].volume)
    tifffile.imwrite(path, np.stack([volume, volume]), metadata={"axes": "TZYX"})
    return _predict(tmp, env, path)


def _unsafe_checkpoint(tmp: Path, env: dict) -> list[str]:
    run = tmp / "run"
    shutil.copytree(env["run"], run)
    torch.save({"weights": Pickled()}, run / "model_best_loss.pth")
    return _predict(tmp, env, env["sample"].image_2d, weights=run)


def _binary_ini(tmp: Path, env: dict) -> list[str]:
    ini = tmp / "binary.ini"
    ini.write_bytes(bytes(range(256)) * 4)
    return _train(tmp, env, ini=ini)


def _unknown_encoder(tmp: Path, env: dict) -> list[str]:
    text = re.sub(r"model_type = \w+", "model_type = Unet\nencoder = resnet343", TINY_INI)
    return _train(tmp, env, ini=_ini(tmp, text))


CASES = {
    "train --out under a file": Case(
        lambda tmp, env: [
            "train",
            "--data",
            str(_dataset(tmp, env["sample"])),
            "--config",
            str(_ini(tmp)),
            "--out",
            str(_file_in_the_way(tmp)),
        ],
        lambda tmp: [str(tmp / "blocker")],
    ),
    "predict --out under a file": Case(
        lambda tmp, env: [*_predict(tmp, env, env["sample"].image_2d)[:-1], str(_file_in_the_way(tmp))],
        lambda tmp: [str(tmp / "blocker")],
    ),
    "stats --out under a file": Case(
        lambda tmp, env: [
            "stats",
            "--data",
            str(_dataset(tmp, env["sample"])),
            "--out",
            str(_file_in_the_way(tmp) / "s.json"),
        ],
        lambda tmp: [str(tmp / "blocker")],
    ),
    "predict a truncated TIFF": Case(_truncated, lambda tmp: [str(tmp / "truncated.tif")]),
    "INI file of binary bytes": Case(_binary_ini, lambda tmp: [str(tmp / "binary.ini"), "not a text INI file"]),
    "predict an enormous declared image": Case(_huge, lambda tmp: [str(tmp / "huge.tif"), "GB"]),
    "fractional mask value": Case(
        lambda tmp, env: _train(tmp, env, _float_mask(0.5)),
        lambda tmp: [str(tmp / "datasets" / "rock_a" / "masks" / "slice_002.tif"), "0.5"],
    ),
    "NaN mask value": Case(
        lambda tmp, env: _train(tmp, env, _float_mask(np.nan)),
        lambda tmp: [str(tmp / "datasets" / "rock_a" / "masks" / "slice_002.tif"), "NaN"],
    ),
    "NaN/inf pixels in a training image": Case(
        lambda tmp, env: _train(tmp, env, _nan_image),
        lambda tmp: [str(tmp / "datasets" / "rock_b" / "images" / "slice_001.tif"), "5 pixel(s)"],
    ),
    "--epochs 0 on the command line": Case(
        lambda tmp, env: _train(tmp, env, extra=("--epochs", "0")),
        lambda tmp: ["--epochs 0", "command line"],
        absent=("tiny.ini",),
    ),
    "unsafe checkpoint": Case(
        _unsafe_checkpoint,
        lambda tmp: [str(tmp / "run" / "model_best_loss.pth"), "not a plain weights file"],
        absent=("weights_only", "unsafe checkpoint ran"),
    ),
    "unknown encoder": Case(_unknown_encoder, lambda tmp: ["resnet343", "resnet34"]),
    "4D (T, Z, Y, X) input": Case(_four_d, lambda tmp: [str(tmp / "time_series.tif"), "4D"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line(name, sample_files, trained_run, tmp_path, capsys):
    case = CASES[name]
    arguments = case.build(tmp_path, {"sample": sample_files, "run": trained_run})
    capsys.readouterr()
    assert main(arguments) == 2
    line = one_error_line(capsys)
    for expected in case.named(tmp_path):
        assert expected in line, line
    for unexpected in case.absent:
        assert unexpected not in line, line
    assert len(line) < 400, line  # no list of every encoder, no quoted traceback
    assert not (tmp_path / "out").exists()  # a failed command leaves no output folder behind
    assert "unsafe checkpoint ran" not in capsys.readouterr().out


def _refuse_writes_under(parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 555 does not stop root (CI containers): refuse what the kernel would refuse a user."""
    import tempfile

    def denied(path: object) -> PermissionError:
        return PermissionError(13, "Permission denied", str(path))

    def inside(path: object) -> bool:
        return Path(str(path)).resolve().is_relative_to(parent.resolve())

    real_mkdir, real_mkstemp, real_access = Path.mkdir, tempfile.mkstemp, os.access

    def mkdir(self: Path, *args, **kwargs):
        if inside(self) and not self.exists():
            raise denied(self)
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, **kwargs):
        if kwargs.get("dir") is not None and inside(kwargs["dir"]):
            raise denied(kwargs["dir"])
        return real_mkstemp(*args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if inside(path) and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("command", ["train", "predict", "stats"])
def test_read_only_parent_gives_one_line(command, sample_files, trained_run, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "read_only"
    parent.mkdir()
    data = _dataset(tmp_path, sample_files)
    arguments = {
        "train": ["train", "--data", str(data), "--config", str(_ini(tmp_path))],
        "predict": ["predict", "--weights", str(trained_run), "--input", str(sample_files.image_2d)],
        "stats": ["stats", "--data", str(data)],
    }[command]
    out = parent / "out"
    parent.chmod(0o555)
    if os.geteuid() == 0:
        _refuse_writes_under(parent, monkeypatch)
    try:
        assert main([*arguments, "--out", str(out if command != "stats" else parent / "stats.json")]) == 2
        line = one_error_line(capsys)
        assert str(parent) in line and ("permission denied" in line.lower()), line
        assert not out.exists()
    finally:
        parent.chmod(0o755)


def test_hints_fit_the_command(sample_files, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("keep", encoding="utf-8")
    assert main(["sample", "--out", str(existing)]) == 2
    assert "--resume" not in one_error_line(capsys)

    data = _dataset(tmp_path, sample_files)
    target = tmp_path / "stats.json"
    target.write_text("{}", encoding="utf-8")
    assert main(["stats", "--data", str(data), "--out", str(target)]) == 2
    line = one_error_line(capsys)
    assert str(target) in line and "choose another --out" in line and "give --out" not in line
    assert target.read_text(encoding="utf-8") == "{}"


# ---- outputs: valid files, scale kept, permissions -------------------------------------------


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_outputs_keep_the_voxel_size_and_follow_the_umask(sample_files, trained_run, tmp_path, umask_022):
    volume = tifffile.imread(sample_files.volume)
    scaled = tmp_path / "in" / "scaled.tif"
    scaled.parent.mkdir()
    metadata = {"spacing": 2.5, "unit": "micron", "axes": "ZYX"}
    tifffile.imwrite(scaled, volume, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata=metadata)
    image_2d = tmp_path / "in" / "flat.tif"
    tifffile.imwrite(
        image_2d, tifffile.imread(sample_files.image_2d), resolution=(1 / 0.25, 1 / 0.25), resolutionunit="CENTIMETER"
    )
    out, zarr_out = tmp_path / "out", tmp_path / "zarr"
    base = ["predict", "--weights", str(trained_run), "--input"]
    assert main([*base, str(scaled.parent), "--out", str(out), "--probabilities"]) == 0
    assert main([*base, str(scaled), "--out", str(zarr_out), "--zarr"]) == 0

    with tifffile.TiffFile(out / "scaled_labels.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == volume.shape
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
    with tifffile.TiffFile(out / "scaled_probabilities.tif") as tif:
        assert tif.series[0].axes == "ZCYX" and tif.series[0].shape == (volume.shape[0], 3, *volume.shape[1:])
    for name in ("scaled_labels.tif", "scaled_probabilities.tif"):
        size = read_voxel_size(out / name)
        assert (size.x, size.y, size.z, size.unit) == pytest.approx((0.5, 0.5, 2.5, "micrometer"))
    with tifffile.TiffFile(out / "flat_labels.tif") as tif:  # 2D outputs are tagged YX, not ZYX
        assert tif.series[0].axes == "YX" and tif.series[0].shape == (141, 227)
    size = read_voxel_size(out / "flat_labels.tif")
    assert (size.x, size.y, size.unit) == pytest.approx((0.25, 0.25, "centimeter"))
    np.testing.assert_array_equal(
        tifffile.imread(out / "scaled_labels.tif"), tifffile.imread(zarr_out / "scaled_labels.tif")
    )

    group = zarr.open_group(str(zarr_out / "scaled_probabilities.zarr"), mode="r")
    (multiscale,) = group.attrs["multiscales"]
    assert [axis["name"] for axis in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert multiscale["axes"][1]["unit"] == "micrometer"
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.5, 0.5, 0.5]
    probabilities = np.asarray(group["0"][:])
    assert probabilities.shape == (3, *volume.shape)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), tifffile.imread(zarr_out / "scaled_labels.tif"))
    np.testing.assert_allclose(
        np.moveaxis(probabilities, 0, 1), tifffile.imread(out / "scaled_probabilities.tif"), atol=1e-6
    )
    for path in [*out.iterdir(), *zarr_out.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_atomic_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        written = atomic_write_text(tmp_path / "settings.ini", "[Model]\n")
        assert stat.S_IMODE(written.stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_predict_replaces_non_finite_pixels_with_a_warning(sample_files, trained_run, tmp_path, capsys):
    image = tifffile.imread(sample_files.image_2d).astype(np.float32)
    image[40:50, 60:70] = np.nan
    image[0, :5] = np.inf
    path = tmp_path / "holes.tif"
    tifffile.imwrite(path, image)
    out = tmp_path / "out"
    assert (
        main(["predict", "--weights", str(trained_run), "--input", str(path), "--out", str(out), "--probabilities"])
        == 0
    )
    err = capsys.readouterr().err
    assert f"warning: {path}: 105 NaN/infinite pixel(s)" in err
    probabilities = tifffile.imread(out / "holes_probabilities.tif")
    assert np.isfinite(probabilities).all()  # no NaN spreading through the network
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    labels = tifffile.imread(out / "holes_labels.tif")
    assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 1, 2}


def test_predict_inputs_sharing_a_stem(sample_files, trained_run, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    image = tifffile.imread(sample_files.image_2d)
    tifffile.imwrite(folder / "a.tif", image)
    Image.fromarray((image >> 8).astype(np.uint8)).save(folder / "a.png")
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(trained_run), "--input", str(folder), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["a_png_labels.tif", "a_tif_labels.tif"]
    for name in os.listdir(out):
        assert tifffile.imread(out / name).shape == image.shape


# ---- debris ------------------------------------------------------------------------------------


def test_resume_removes_partial_files_of_a_killed_run(sample_files, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    debris = [run / ".model_best_loss.pth.k1ll3d.tmp", run / ".last_checkpoint.pth.9x8y7z.tmp"]
    for path in debris:
        path.write_bytes(b"\0" * 4096)
    (run / ".keep_me.txt").write_text("not ours", encoding="utf-8")
    data = _dataset(tmp_path, sample_files)
    main(["train", "--data", str(data), "--resume", str(run)])  # already complete: may refuse, but cleans first
    err = capsys.readouterr().err
    assert "removed 2 partial file(s)" in err
    assert not any(path.exists() for path in debris)
    assert (run / ".keep_me.txt").exists()


def test_training_writes_stats_to_the_run_folder_only(sample_files, tmp_path):
    data = _dataset(tmp_path, sample_files)
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--config", str(_ini(tmp_path)), "--out", str(run)]) == 0
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    assert (run / "data_stats.json").is_file()


def test_voxel_size_read_from_ome_tiff_zarr_and_plain_files(tmp_path):
    from schism_napari.data.voxels import VoxelSize
    from schism_napari.inference.files import open_lazy
    from schism_napari.plumbing.input_checks import ngff_multiscales
    from schism_napari.plumbing.zarr_compat import create_array, open_v2_group

    volume = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)
    ome = tmp_path / "scan.ome.tif"
    metadata = {
        "axes": "ZYX",
        "PhysicalSizeX": 0.3,
        "PhysicalSizeY": 0.4,
        "PhysicalSizeZ": 1.2,
        "PhysicalSizeXUnit": "µm",
    }
    tifffile.imwrite(ome, volume, ome=True, metadata=metadata)
    assert read_voxel_size(ome) == VoxelSize(0.3, 0.4, 1.2, "micrometer")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, volume)
    assert read_voxel_size(plain) is None  # tifffile's default 1/1 tags record no scale

    attributes = tmp_path / "attributes.zarr"
    array = zarr.open_array(str(attributes), mode="w", shape=volume.shape, dtype="uint16")
    array[:] = volume
    array.attrs["voxel_size"] = [2.0, 0.5, 0.5]
    assert read_voxel_size(attributes) == VoxelSize(0.5, 0.5, 2.0, None)

    image = tmp_path / "image.zarr"  # an OME-Zarr image opens at full resolution, with its scale
    group = open_v2_group(image, mode="w")
    create_array(group, "0", shape=volume.shape, dtype="uint16")[:] = volume
    group.attrs["multiscales"] = ngff_multiscales("image", "zyx", VoxelSize(0.7, 0.7, 3.0, "nanometer"))
    assert read_voxel_size(image) == VoxelSize(0.7, 0.7, 3.0, "nanometer")
    opened, rgb = open_lazy(image)
    assert not rgb and opened.shape == volume.shape
    np.testing.assert_array_equal(opened[1], volume[1])


def test_lazy_inputs_name_the_file_when_reading_fails_or_axes_are_too_many(tmp_path):
    from schism_napari.errors import DataError
    from schism_napari.inference.files import open_lazy
    from schism_napari.plumbing.input_checks import CheckedSlices

    class Broken:
        shape, dtype = (4, 8, 8), np.dtype(np.uint16)

        def __getitem__(self, index):
            raise OSError("unexpected end of data")

    with pytest.raises(DataError, match=r"scan\.tif: cannot read image data \(OSError: unexpected end of data\)"):
        CheckedSlices(Broken(), tmp_path / "scan.tif")[2]

    store = tmp_path / "series.zarr"
    zarr.open_array(str(store), mode="w", shape=(2, 3, 8, 8), dtype="uint8")
    with pytest.raises(DataError, match=r"series\.zarr: 4D data of shape \(2, 3, 8, 8\)"):
        open_lazy(store)


# ---- unsafe weight files: one line of ours wherever weights load --------------------------------


def _pickled_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv.weight": torch.zeros(2), "hook": Pickled()}, path)
    return path


SCHISM_RUN = Path(__file__).parent / "data" / "schism" / "runs" / "UnetSegmentor" / "UnetSegmentor__01-12-26-22-50-00"


def _unsafe_weights_arguments(where: str, tmp: Path, sample_files, trained_run) -> tuple[list[str], Path]:
    """CLI arguments that make the command load a pickled-object file, and that file."""
    image = str(sample_files.image_2d)
    if where == "encoder_weights":
        evil = _pickled_file(tmp / "encoder.pth")
        text = re.sub(r"model_type = \w+", f"model_type = Unet\nencoder = resnet18\nencoder_weights = {evil}", TINY_INI)
        return _train(tmp, {"sample": sample_files}, ini=_ini(tmp, text)), evil
    if where == "ensemble member":
        member = tmp / "member"
        shutil.copytree(trained_run, member)
        evil = _pickled_file(member / "model_best_loss.pth")
        arguments = ["predict", "--weights", str(trained_run), str(member), "--input", image]
        return [*arguments, "--out", str(tmp / "out")], evil
    if where == "SCHISM run":
        run = tmp / "schism" / SCHISM_RUN.name
        shutil.copytree(SCHISM_RUN, run)
        evil = _pickled_file(run / "model_best_Jaccard.pth")
        arguments = ["predict", "--weights", str(run.parent), "--metric", "Jaccard", "--input", image]
        return [*arguments, "--out", str(tmp / "out")], evil
    run = tmp / "run"  # --resume: last_checkpoint.pth
    shutil.copytree(trained_run, run)
    evil = _pickled_file(run / "last_checkpoint.pth")
    data = _dataset(tmp, sample_files)
    return ["train", "--data", str(data), "--resume", str(run), "--epochs", "9"], evil


@pytest.mark.parametrize("where", ["encoder_weights", "ensemble member", "SCHISM run", "resume checkpoint"])
def test_unsafe_weight_files_are_refused_in_one_line_everywhere(where, sample_files, trained_run, tmp_path, capsys):
    arguments, evil = _unsafe_weights_arguments(where, tmp_path, sample_files, trained_run)
    capsys.readouterr()
    assert main(arguments) == 2
    line = one_error_line(capsys)
    assert f"{evil}: not a plain weights file" in line, line
    assert "Python objects (posix.system)" in line and "refusing to load it" in line, line
    assert "weights_only" not in line and len(line) < 300, line  # not torch's 1,131 characters
    if where == "encoder_weights":
        assert "[Model] encoder_weights" in line, line
    assert "unsafe checkpoint ran" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_damaged_weights_file_is_not_called_unsafe(tmp_path):
    from schism_napari.errors import SchismError
    from schism_napari.plumbing.weights_io import load_torch_file

    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"\x80\x02garbage" * 20)  # a pickle protocol header, then nonsense
    with pytest.raises(SchismError) as caught:
        load_torch_file(damaged)
    assert str(caught.value) == f"{damaged}: not a readable weights file (damaged, or not saved by torch)"


# ---- a full disk: one line, nothing lost, no temporary files -------------------------------------


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files and locks left anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def _fingerprints(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.glob("*.pth"))}


def _torch_save_fills_the_disk(monkeypatch: pytest.MonkeyPatch, after: int = 4096) -> None:
    """torch.save as it behaves on a full disk: it writes ``after`` bytes, the file object's write
    raises ENOSPC, and torch reports a RuntimeError about positions with that OSError as context."""
    import errno
    import io

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:after])
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 36736 vs 36640") from None

    monkeypatch.setattr(torch, "save", save)


def test_training_on_a_full_disk_gives_one_line_and_keeps_the_checkpoint(
    sample_files, trained_run, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = _fingerprints(run)
    data = _dataset(tmp_path, sample_files)
    resume = ["train", "--data", str(data), "--resume", str(run), "--epochs", "9"]
    with monkeypatch.context() as patch:
        _torch_save_fills_the_disk(patch)
        capsys.readouterr()
        assert main(resume) == 2
    line = last_error_line(capsys)
    assert f"schism: error: {run}: disk full (no space left on the device) writing " in line, line
    assert re.search(r"it needs about \d+\.\d KB, .* is free", line), line
    assert (
        f"last_checkpoint.pth saved before are intact: free some space, then continue with schism train --resume {run}"
        in line
    )
    assert _fingerprints(run) == before  # previous best weights and checkpoint, byte for byte
    assert _leftovers(run) == []  # no temporary file, and the run folder's lock is released
    assert main(resume) == 0  # space freed: the run continues from its checkpoint
    assert torch.load(run / "last_checkpoint.pth", weights_only=True)["epoch"] == 9


def test_prediction_on_a_full_disk_gives_one_line_and_keeps_earlier_outputs(
    sample_files, trained_run, tmp_path, capsys, monkeypatch
):
    import errno

    out = tmp_path / "out"
    assert (
        main(["predict", "--weights", str(trained_run), "--input", str(sample_files.image_2d), "--out", str(out)]) == 0
    )
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    real_pwrite, written = os.pwrite, [0]

    def pwrite(fd, data, offset):  # the disk fills after the first slices
        if written[0] > 20_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    capsys.readouterr()
    volume = ["--input", str(sample_files.volume), "--out", str(out), "--probabilities"]
    assert main(["predict", "--weights", str(trained_run), *volume]) == 2
    line = last_error_line(capsys)
    assert f"schism: error: {out}: disk full (no space left on the device) writing " in line, line
    assert "_labels.tif" in line or "_probabilities.tif" in line, line
    assert re.search(r"it needs about \d+\.\d [KM]B", line), line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # nothing half-written under a final name
    assert _leftovers(out) == []


# A small real file system (tmpfs; needs root and mount): the kernel's ENOSPC, not a simulated one.


@pytest.fixture
def small_disk(tmp_path):
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of ``disk`` with one file (removed to free the space again)."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def test_training_fills_a_real_small_disk(small_disk, sample_files, trained_run, tmp_path, capsys):
    run = small_disk / "run"
    shutil.copytree(trained_run, run)
    before = _fingerprints(run)
    filler = _fill(small_disk, leave=48 * 1024)  # the small files fit, the weights do not
    data = _dataset(tmp_path, sample_files)
    resume = ["train", "--data", str(data), "--resume", str(run), "--epochs", "9"]
    capsys.readouterr()
    assert main(resume) == 2
    line = last_error_line(capsys)
    assert f"{run}: disk full (no space left on the device) writing " in line and "it needs about" in line, line
    assert _fingerprints(run) == before
    assert _leftovers(small_disk) == []

    new = small_disk / "new"  # the case: a new run on a nearly full disk
    assert main([*_train(tmp_path / "again", {"sample": sample_files})[:-1], str(new)]) == 2
    line = last_error_line(capsys)
    assert f"{new}: disk full" in line, line
    assert _leftovers(small_disk) == []
    for weights in new.glob("*.pth") if new.exists() else []:
        torch.load(weights, weights_only=True)  # whatever was kept is complete

    filler.unlink()
    assert main(resume) == 0


def test_prediction_fills_a_real_small_disk(small_disk, sample_files, trained_run, capsys, monkeypatch):
    from schism_napari.inference import files

    out = small_disk / "out"
    real_setitem = files.TiffSlices.__setitem__

    def setitem(self, index, value):  # another program takes the disk's space mid-prediction
        if not (small_disk / "filler").exists():
            _fill(small_disk, leave=4096)
        return real_setitem(self, index, value)

    monkeypatch.setattr(files.TiffSlices, "__setitem__", setitem)
    capsys.readouterr()
    arguments = ["--input", str(sample_files.volume), "--out", str(out), "--probabilities"]
    assert main(["predict", "--weights", str(trained_run), *arguments]) == 2
    line = last_error_line(capsys)
    assert f"{out}: disk full (no space left on the device) writing " in line and "it needs about" in line, line
    assert not out.exists()  # created by this command, and nothing in it was complete
    assert _leftovers(small_disk) == []


# ---- one folder, one process: claims ---------------------------------------------------------------

_HOLDER = """
import sys
from pathlib import Path
from schism_napari.plumbing.claims import claim
with claim(Path(sys.argv[1]), name=sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(folder: Path, name: str = ".schism.lock"):
    """Another live process holding ``folder`` (its lock file ``name``) until the block ends."""
    import subprocess
    import sys

    import schism_napari

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(schism_napari.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout.readline().strip() == b"held"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid names no process now
    return process.pid


def _write_lock(folder: Path, pid: int, host: str) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".schism.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01 00:00:00", "command": "schism train"}))
    return lock


def test_a_second_training_on_the_same_out_is_refused_at_once(sample_files, trained_run, tmp_path, capsys):
    import socket

    out = tmp_path / "out"
    train = _train(tmp_path, {"sample": sample_files})
    with held_elsewhere(out) as first:
        capsys.readouterr()
        assert main(train) == 2
        line = one_error_line(capsys)  # refused before reading the data: no progress lines either
        expected = (
            rf"schism: error: {re.escape(str(out))}: this run folder is in use by another schism run "
            rf"\(pid {first.pid} on {re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); "
            "wait for it to end or choose another run folder"
        )
        assert re.fullmatch(expected, line), line
        assert [p.name for p in out.iterdir()] == [".schism.lock"]  # nothing written beside the holder's lock

        run = tmp_path / "run"  # --resume of a run another process trains in: refused, its files untouched
        shutil.copytree(trained_run, run)
        live_temporary = run / ".model_best_loss.pth.w1r1t3.tmp"  # the other run, writing its best weights
        live_temporary.write_bytes(b"\0" * 64)
        with held_elsewhere(run):
            assert main(["train", "--data", str(tmp_path / "datasets"), "--resume", str(run), "--epochs", "9"]) == 2
            assert "this run folder is in use by another schism run" in one_error_line(capsys)
            assert live_temporary.exists()
    assert not (out / ".schism.lock").exists()  # released when the holder ended
    assert main(train) == 0  # the folder is free again


def test_a_stale_lock_of_a_dead_process_is_taken_over(sample_files, trained_run, tmp_path, capsys):
    import socket

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _write_lock(run, _dead_pid(), socket.gethostname())  # a run killed with SIGKILL left its lock
    data = _dataset(tmp_path, sample_files)
    assert main(["train", "--data", str(data), "--resume", str(run), "--epochs", "9"]) == 0
    assert not (run / ".schism.lock").exists()  # released at the end

    from schism_napari.plumbing.claims import FolderInUse, claim

    alive = _write_lock(tmp_path / "alive", os.getppid(), socket.gethostname())  # a live pid on this host
    with pytest.raises(FolderInUse, match=f"pid {os.getppid()} on "), claim(alive.parent):
        pass

    other = _write_lock(tmp_path / "elsewhere", _dead_pid(), "node17")  # another host: cannot be checked
    refused = rf"on node17, since .*; wait for it to end, or delete {re.escape(str(other))}"
    with pytest.raises(FolderInUse, match=refused), claim(other.parent):
        pass
    assert other.exists()


def test_claims_nest_in_a_thread_refuse_other_threads_and_end_on_ctrl_c(tmp_path):
    import threading

    from schism_napari.plumbing.claims import FolderInUse, claim

    folder = tmp_path / "run"
    with claim(folder), claim(folder):  # the CLI, then the Trainer, in one thread
        errors = []
        thread = threading.Thread(target=lambda: _claim_into(folder, errors))
        thread.start()
        thread.join()
        assert len(errors) == 1 and "in use by another run in this process" in str(errors[0])
        assert (folder / ".schism.lock").exists()
    assert not (folder / ".schism.lock").exists()
    with pytest.raises(KeyboardInterrupt), claim(folder):
        raise KeyboardInterrupt
    assert not (folder / ".schism.lock").exists()
    with pytest.raises(FolderInUse), held_elsewhere(folder), claim(folder):
        pass


def _claim_into(folder: Path, errors: list) -> None:
    from schism_napari.plumbing.claims import claim

    try:
        with claim(folder):
            pass
    except Exception as error:
        errors.append(error)


def test_the_trainer_claims_its_run_folder(sample_files, tiny_config, tmp_path):
    """The napari dock trains through the Trainer: it is refused like the CLI."""
    from schism_napari.data import load_dataset
    from schism_napari.plumbing.claims import FolderInUse
    from schism_napari.training.trainer import Trainer

    run = tmp_path / "run"
    data = load_dataset(sample_files.datasets, class_count=3)
    with held_elsewhere(run) as other, pytest.raises(FolderInUse, match=f"pid {other.pid}"):
        Trainer(tiny_config, data, run).run()
    assert list(run.iterdir()) == []


def test_predictions_claim_their_outputs_not_the_folder(sample_files, trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    image = sample_files.image_2d
    labels = out / f"{image.stem}_labels.tif"
    with held_elsewhere(out, f".{labels.name}.lock"):
        capsys.readouterr()
        assert main(["predict", "--weights", str(trained_run), "--input", str(image), "--out", str(out)]) == 2
        line = one_error_line(capsys)
        assert f"{labels}: this output is in use by another schism run" in line, line
        volume = ["--input", str(sample_files.volume), "--out", str(out)]  # a job array's other task
        assert main(["predict", "--weights", str(trained_run), *volume]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{sample_files.volume.stem}_labels.tif"]


def test_two_trainings_started_together_on_one_out(sample_files, tmp_path):
    """The issue's job array: the same command twice at once. One trains, the other is refused in one
    line (while the first holds the folder: "in use"; if it was slower than a whole run: "not empty")."""
    import subprocess
    import sys

    import schism_napari

    source = str(Path(schism_napari.__file__).parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "schism_napari.cli", *_train(tmp_path, {"sample": sample_files})]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, env=env, text=True) for _ in range(2)]
    results = sorted((process.wait(timeout=300), process.stderr.read()) for process in runs)
    assert [code for code, _ in results] == [0, 2], results
    refused = results[1][1].strip().splitlines()
    assert len(refused) == 1 and "Traceback" not in results[1][1], refused
    assert "this run folder is in use by another schism run" in refused[0] or "is not empty" in refused[0], refused
    out = tmp_path / "out"
    assert (out / "last_checkpoint.pth").is_file() and not (out / ".schism.lock").exists()


def test_the_dock_creates_its_run_folder_exclusively(tmp_path):
    """Two napari windows pressing Train within one second choose the same name: each gets its own."""
    from schism_napari.plumbing.atomic import create_unique_folder

    first = create_unique_folder(tmp_path / "runs" / "run_20260101_120000")
    second = create_unique_folder(tmp_path / "runs" / "run_20260101_120000")
    assert (first.name, second.name) == ("run_20260101_120000", "run_20260101_120000_2")
    assert first.is_dir() and second.is_dir()


_RACER = """
import sys
from pathlib import Path
from schism_napari.plumbing.claims import FolderInUse, claim
try:
    with claim(Path(sys.argv[1])):
        print("won", flush=True)
        sys.stdin.read()  # held until every racer has tried
except FolderInUse:
    print("refused", flush=True)
"""


@pytest.mark.parametrize("stale", [False, True], ids=["new folder", "stale lock"])
def test_processes_racing_for_one_folder_leave_one_winner(stale, tmp_path):
    import socket
    import subprocess
    import sys

    import schism_napari

    folder = tmp_path / "run"
    if stale:
        _write_lock(folder, _dead_pid(), socket.gethostname())
    source = str(Path(schism_napari.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", _RACER, str(folder)]
    racers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True) for _ in range(4)
    ]
    outcomes = sorted(racer.stdout.readline().strip() for racer in racers)
    for racer in racers:
        racer.communicate(timeout=60)
    assert outcomes == ["refused", "refused", "refused", "won"], outcomes
    assert not (folder / ".schism.lock").exists() and list(folder.iterdir()) == []


def test_a_missing_extra_is_named_in_one_line(sample_files, trained_run, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # dask.distributed not installed
    out = tmp_path / "out"
    arguments = ["--input", str(sample_files.volume), "--out", str(out), "--workers", "1"]
    capsys.readouterr()
    assert main(["predict", "--weights", str(trained_run), *arguments]) == 2
    line = last_error_line(capsys)
    assert line.endswith("need dask.distributed: pip install 'schism-napari[dask]'"), line
    assert _leftovers(tmp_path) == [] and not out.exists()


@pytest.mark.parametrize("wrapped", [False, True], ids=["OSError", "torch's RuntimeError"])
def test_a_full_disk_outside_atomic_writes_is_still_one_line(wrapped, monkeypatch, capsys):
    import errno

    from schism_napari.cli import stats

    def fills_the_disk(options):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            if wrapped:
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:672] . unexpected pos 36736 vs 36640"
                ) from None
            raise

    monkeypatch.setattr(stats, "run", fills_the_disk)
    assert main(["stats", "--data", "anywhere"]) == 2
    assert one_error_line(capsys) == (
        "schism: error: disk full (No space left on device) while writing an output; free some space and run it again"
    )
