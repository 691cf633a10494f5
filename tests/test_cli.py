"""The ``schism`` command line: exit codes, files written, messages, and what it refuses to do."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import TINY_INI
from schism_napari import runs
from schism_napari.cli import main
from schism_napari.inference import Predictor
from schism_napari.runs import load_trained_model

SCHISM = Path(sys.executable).with_name("schism")


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The captured stderr, checked to be one 'schism: error:' line."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("schism: error: ")
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` -> (size, mtime_ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def datasets(sample_files, trained_run, tmp_path_factory) -> Path:
    """A copy of the sample's SCHISM datasets folder, with the data_stats.json of the trained run
    (as a SCHISM user keeps one beside the datasets); keep it unchanged."""
    copy = tmp_path_factory.mktemp("cli_data") / "datasets"
    shutil.copytree(sample_files.datasets, copy)
    assert not (copy / "data_stats.json").exists()  # training never writes into the dataset folder
    shutil.copy2(trained_run / "data_stats.json", copy / "data_stats.json")
    return copy


@pytest.fixture(scope="module")
def inputs(sample_files, tmp_path_factory) -> Path:
    """A folder with a non-square 2D image and a 3D stack to predict."""
    folder = tmp_path_factory.mktemp("cli_inputs") / "in"
    folder.mkdir()
    shutil.copy2(sample_files.image_2d, folder / "test_image_2d.tif")
    shutil.copy2(sample_files.volume, folder / "test_volume.tif")
    return folder


def tiny_ini(folder: Path, epochs: int = 2, text: str = TINY_INI) -> Path:
    path = folder / "tiny.ini"
    path.write_text(text.replace("epochs = 4", f"epochs = {epochs}"), encoding="utf-8")
    return path


def metrics_epochs(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


# ---- sample ------------------------------------------------------------------------------------


def test_sample_writes_the_layout_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "sample"
    assert main(["sample", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    for dataset in ("rock_a", "rock_b"):
        images = sorted((out / "datasets" / dataset / "images").glob("*.tif"))
        masks = sorted((out / "datasets" / dataset / "masks").glob("*.tif"))
        assert len(images) == len(masks) > 0
    assert (out / "datasets" / "class_dict.csv").read_text().startswith("name,r,g,b")
    assert (out / "schism_sample.ini").is_file()
    assert tifffile.imread(out / "test_volume.tif").ndim == 3
    assert (out / "test_volume_labels.tif").is_file()
    assert (out / "test_image_2d.tif").is_file()
    before = snapshot(out)

    # again, through the real console script: exit code 2, one line, no traceback
    completed = subprocess.run(
        [str(SCHISM), "sample", "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("schism: error: "), completed.stderr
    assert str(out) in lines[0]
    assert "Traceback" not in completed.stderr
    assert snapshot(out) == before


# ---- train -------------------------------------------------------------------------------------


def test_train_then_resume(datasets, tmp_path, capsys):
    data = tmp_path / "datasets"
    shutil.copytree(datasets, data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--config", str(tiny_ini(tmp_path)), "--out", str(run)]) == 0
    for name in (
        "hyperparameters.ini",
        "model_best_loss.pth",
        "model_best_Jaccard.pth",
        "model_best_Dice.pth",
        "last_checkpoint.pth",
        "metrics.csv",
        "run_info.json",
        "data_stats.json",
        "learning_curves.png",
    ):
        assert (run / name).is_file(), name
    assert metrics_epochs(run) == [1, 2]
    err = capsys.readouterr().err
    assert "epoch 2/2" in err
    trained = load_trained_model(run)
    assert trained.class_names == ["pore", "matrix", "mineral"]
    # the forest, the network and their average scored on the validation images; predicting uses the best
    selection = json.loads((run / "selection.json").read_text(encoding="utf-8"))
    assert selection["held_out"] == "validation images" and selection["pixels"] > 0
    scores = selection["scores"]
    assert set(scores) == {"network", "average", "forest"} and all(0 <= v <= 1 for v in scores.values())
    assert scores[selection["choice"]] >= max(scores.values()) - 0.005  # the best, or a tie won on log loss
    assert f"chose {selection['summary']}" in err
    assert trained.forest_weight == {"network": 0.0, "average": 0.5, "forest": 1.0}[selection["choice"]]
    assert (run / "forest.npz").is_file() == (selection["choice"] != "network")

    assert main(["train", "--data", str(data), "--resume", str(run), "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "epoch 1/3" not in err and "epoch 2/3" not in err
    assert metrics_epochs(run) == [1, 2, 3]


def test_train_in_two_processes_with_torchrun(datasets, tmp_path):
    """Data-parallel training: two gloo processes, one run folder written by rank 0."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    data = tmp_path / "datasets"
    shutil.copytree(datasets, data)
    run = tmp_path / "run"
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "schism_napari.cli", "train"]
    command += ["--data", str(data), "--config", str(tiny_ini(tmp_path)), "--out", str(run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr
    assert metrics_epochs(run) == [1, 2]
    assert result.stderr.count("epoch 2/2") == 1  # only rank 0 reports
    trained = load_trained_model(run)
    assert trained.class_count == 3
    assert not list(run.glob(".*.tmp"))


def test_train_refuses_a_non_empty_out_folder(datasets, tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    code = main(["train", "--data", str(datasets), "--config", str(tiny_ini(tmp_path)), "--out", str(out)])
    assert code == 2
    assert str(out) in error_line(capsys)
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_train_reports_a_mistyped_key(datasets, tmp_path, capsys):
    ini = tiny_ini(tmp_path, text=TINY_INI.replace("batch_size = 8\nepochs = 4", "batch_size = 8\nepoch = 2"))
    run = tmp_path / "run"
    assert main(["train", "--data", str(datasets), "--config", str(ini), "--out", str(run)]) == 2
    line = error_line(capsys)
    assert "[Training] epoch" in line
    assert "did you mean 'epochs'" in line
    assert str(ini) in line
    assert not run.exists()


# ---- predict -----------------------------------------------------------------------------------


def test_predict_2d_image(trained_run, inputs, tmp_path):
    before = snapshot(inputs)
    out = tmp_path / "out"
    image = inputs / "test_image_2d.tif"
    arguments = ["predict", "--weights", str(trained_run), "--input", str(image), "--out", str(out)]
    assert main([*arguments, "--device", "cpu"]) == 0
    assert sorted(os.listdir(out)) == ["test_image_2d_labels.tif"]
    labels = tifffile.imread(out / "test_image_2d_labels.tif")
    assert labels.shape == tifffile.imread(image).shape == (141, 227)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2} and len(np.unique(labels)) > 1
    trained = load_trained_model(trained_run)
    expected = Predictor.from_trained(trained, device="cpu").predict(tifffile.imread(image)).labels
    np.testing.assert_array_equal(labels, expected)
    assert snapshot(inputs) == before  # nothing written beside the input


def test_predict_probabilities_tiff_and_zarr(trained_run, inputs, tmp_path):
    image = inputs / "test_image_2d.tif"
    tiff_out, zarr_out = tmp_path / "tiff", tmp_path / "zarr"
    base = ["predict", "--weights", str(trained_run), "--input", str(image)]
    assert main([*base, "--out", str(tiff_out), "--probabilities"]) == 0
    assert sorted(os.listdir(tiff_out)) == ["test_image_2d_labels.tif", "test_image_2d_probabilities.tif"]
    probabilities = tifffile.imread(tiff_out / "test_image_2d_probabilities.tif")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 141, 227)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    labels = tifffile.imread(tiff_out / "test_image_2d_labels.tif")
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=0))

    assert main([*base, "--out", str(zarr_out), "--probabilities", "--zarr"]) == 0
    assert sorted(os.listdir(zarr_out)) == ["test_image_2d_labels.tif", "test_image_2d_probabilities.zarr"]
    store = zarr.open_group(str(zarr_out / "test_image_2d_probabilities.zarr"), mode="r")["0"]  # OME-Zarr image
    assert store.dtype == np.float32
    stored = np.asarray(store[:]).reshape(-1, 3, 141, 227)
    assert stored.shape[0] == 1
    np.testing.assert_allclose(stored[0], probabilities, atol=1e-6)


def test_predict_stack_and_folder(trained_run, inputs, tmp_path):
    before = snapshot(inputs)
    out = tmp_path / "out"
    stack_out = tmp_path / "stack"
    base = ["predict", "--weights", str(trained_run)]
    assert (
        main([*base, "--input", str(inputs / "test_volume.tif"), "--out", str(stack_out), "--zarr", "--probabilities"])
        == 0
    )
    stack_labels = tifffile.imread(stack_out / "test_volume_labels.tif")
    assert stack_labels.shape == (6, 96, 96) and stack_labels.dtype == np.uint8
    store = zarr.open_group(str(stack_out / "test_volume_probabilities.zarr"), mode="r")["0"]  # OME-Zarr image
    assert store.shape == (3, 6, 96, 96)  # OME-NGFF order: classes (channel axis) before z
    np.testing.assert_array_equal(np.asarray(store[:]).argmax(axis=0), stack_labels)

    assert main([*base, "--input", str(inputs), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["test_image_2d_labels.tif", "test_volume_labels.tif"]
    assert tifffile.imread(out / "test_image_2d_labels.tif").shape == (141, 227)
    np.testing.assert_array_equal(tifffile.imread(out / "test_volume_labels.tif"), stack_labels)
    assert snapshot(inputs) == before  # never writes into the input folder


def test_predict_gray_levels(trained_run, inputs, tmp_path):
    image = inputs / "test_image_2d.tif"
    base = ["predict", "--weights", str(trained_run), "--input", str(image)]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "gray"), "--gray-levels"]) == 0
    plain = tifffile.imread(tmp_path / "plain" / "test_image_2d_labels.tif")
    gray = tifffile.imread(tmp_path / "gray" / "test_image_2d_labels.tif")
    assert gray.dtype == np.uint8
    assert set(np.unique(gray)) <= {0, 128, 255} and len(np.unique(gray)) > 1
    np.testing.assert_array_equal(gray, np.array([0, 128, 255], dtype=np.uint8)[plain])


def test_predict_twice_into_the_same_folder(trained_run, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["predict", "--weights", str(trained_run), "--input", str(inputs), "--out", str(out)]
    arguments += ["--probabilities"]
    assert main(arguments) == 0
    first = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert len(first) == 4
    before = snapshot(out)
    capsys.readouterr()
    assert main(arguments) == 2
    line = error_line(capsys)
    assert "already exists" in line and str(out) in line
    assert snapshot(out) == before
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == first


def test_predict_metric_selects_the_checkpoint(trained_run, inputs, tmp_path, monkeypatch, capsys):
    loaded: list[Path] = []
    original = runs.load_weights

    def recording(path):
        loaded.append(Path(path))
        return original(path)

    monkeypatch.setattr(runs, "load_weights", recording)
    image = inputs / "test_image_2d.tif"
    base = ["predict", "--weights", str(trained_run), "--input", str(image)]
    assert main([*base, "--out", str(tmp_path / "jaccard"), "--metric", "Jaccard"]) == 0
    assert [p.name for p in loaded] == ["model_best_Jaccard.pth"]
    assert loaded[0].parent == trained_run
    assert (tmp_path / "jaccard" / "test_image_2d_labels.tif").is_file()

    loaded.clear()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "nosuch"), "--metric", "nosuch"]) == 2
    line = error_line(capsys)
    assert "nosuch" in line
    for name in ("loss", "Jaccard", "Dice"):
        assert name in line
    assert loaded == []
    assert not (tmp_path / "nosuch").exists()


def test_predict_missing_input(trained_run, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "scan.tif"
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(trained_run), "--input", str(missing), "--out", str(out)]) == 2
    assert str(missing) in error_line(capsys)
    assert not out.exists()

    completed = subprocess.run(
        [str(SCHISM), "predict", "--weights", str(trained_run), "--input", str(missing), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("schism: error: ") and str(missing) in lines[0]
    assert not out.exists()


# ---- evaluate ----------------------------------------------------------------------------------


def table_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}


def test_evaluate_prints_a_table_per_class(trained_run, datasets, capsys):
    assert main(["evaluate", "--weights", str(trained_run), "--data", str(datasets)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test split: 4 images")
    rows = table_rows(out)
    assert rows["class"] == ["pixels", "Jaccard", "Dice", "Precision", "Recall", "Accuracy"]
    for name in ("pore", "matrix", "mineral", "mean"):
        assert name in rows and len(rows[name]) == 6, out
    assert int(rows["mean"][0]) == 4 * 96 * 96
    assert sum(int(rows[name][0]) for name in ("pore", "matrix", "mineral")) == 4 * 96 * 96
    assert 0.0 <= float(rows["mean"][1]) <= 1.0

    assert main(["evaluate", "--weights", str(trained_run), "--data", str(datasets), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("val split: 2 images")
    assert int(table_rows(out)["mean"][0]) == 2 * 96 * 96


def test_evaluate_writes_csv(trained_run, datasets, tmp_path, capsys):
    target = tmp_path / "scores.csv"
    assert main(["evaluate", "--weights", str(trained_run), "--data", str(datasets), "--csv", str(target)]) == 0
    printed = table_rows(capsys.readouterr().out)
    with open(target, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == ["pore", "matrix", "mineral", "mean"]
    assert list(rows[0]) == ["class", "pixels", "Jaccard", "Dice", "Precision", "Recall", "Accuracy"]
    for row in rows:
        assert int(row["pixels"]) == int(printed[row["class"]][0])
        assert float(row["Jaccard"]) == pytest.approx(float(printed[row["class"]][1]), abs=1e-4)
    assert main(["evaluate", "--weights", str(trained_run), "--data", str(datasets), "--csv", str(target)]) == 2


# ---- stats -------------------------------------------------------------------------------------


def test_stats_writes_schism_format_and_refuses_to_overwrite(sample_files, trained_run, tmp_path, capsys):
    data = tmp_path / "datasets"
    shutil.copytree(sample_files.datasets, data, ignore=shutil.ignore_patterns("data_stats.json"))
    assert main(["stats", "--data", str(data)]) == 0
    target = data / "data_stats.json"
    assert str(target) in capsys.readouterr().out
    stats = json.loads(target.read_text(encoding="utf-8"))
    assert set(stats) == {"rock_a", "rock_b", "default"}
    for mean, std in stats.values():
        assert len(mean) == len(std) == 3  # SCHISM writes three values even for gray images
        assert all(0 < v < 1 for v in mean) and all(0 < v < 1 for v in std)
    # the same numbers as training computed for the same images
    training = json.loads((trained_run / "data_stats.json").read_text(encoding="utf-8"))
    for name, (mean, std) in stats.items():
        np.testing.assert_allclose(mean, training[name][0], atol=1e-6)
        np.testing.assert_allclose(std, training[name][1], atol=1e-6)

    before = target.read_bytes()
    assert main(["stats", "--data", str(data)]) == 2
    assert str(target) in error_line(capsys)
    assert target.read_bytes() == before


# ---- demo --------------------------------------------------------------------------------------


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2"]) == 0
    labels = tifffile.imread(out / "predictions" / "test_volume_labels.tif")
    volume = tifffile.imread(out / "sample" / "test_volume.tif")
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert (out / "predictions" / "test_volume_probabilities.tif").is_file()
    assert (out / "predictions" / "test_image_2d_labels.tif").is_file()
    assert metrics_epochs(out / "run") == [1, 2]
