"""Packaging and entry points: the npe2 manifest, the main job's viewer set-up, dask input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_registered_manifest_is_the_package_napari_yaml_and_validates():
    """The manifest napari loads is the package's own napari.yaml (a real file, no root copy), and its
    commands import."""
    from importlib.metadata import entry_points

    from npe2 import PluginManifest

    (entry,) = [e for e in entry_points(group="napari.manifest") if e.name == "schism-napari"]
    manifest = PluginManifest.from_distribution("schism-napari")
    assert manifest.name == "schism-napari"
    module, _, resource = entry.value.partition(":")
    from importlib.resources import files

    registered = files(module).joinpath(resource).read_text()
    package_file = ROOT / "src" / "schism_napari" / "napari.yaml"
    assert not package_file.is_symlink() and not (ROOT / "napari.yaml").exists()
    assert registered == package_file.read_text()
    manifest.validate_imports()  # every python_name resolves
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {"SCHISM", "Dataset", "Training", "Prediction"}
    assert {s.key for s in contributions.sample_data} == {"rock_ct", "rock_ct_scribbles"}
    assert contributions.readers and contributions.writers


def test_reader_claims_folders_only(tmp_path, sample_files):
    """A .tif or .png dropped on napari goes to napari's own reader, without SCHISM offered; a
    SCHISM dataset folder is offered to SCHISM."""
    import tifffile
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "schism-napari" in pm._manifests
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint8))
    for path in (image, tmp_path / "photo.png"):
        assert "schism-napari" not in [r.plugin_name for r in pm.iter_compatible_readers([str(path)])]
    assert "schism-napari" in [r.plugin_name for r in pm.iter_compatible_readers([str(sample_files.datasets)])]


def test_dropping_a_tif_opens_with_napari_without_a_prompt(make_napari_viewer, tmp_path, monkeypatch):
    """With the plugin installed, opening a .tif as a user does (no plugin named) never asks which reader."""
    import tifffile
    from napari._qt import qt_viewer

    def no_prompt(*args, **kwargs):
        raise AssertionError("napari asked which reader to use")

    monkeypatch.setattr(qt_viewer, "handle_gui_reading", no_prompt)
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, np.arange(64, dtype=np.uint8).reshape(8, 8))
    viewer = make_napari_viewer()
    viewer.window._qt_viewer._qt_open([str(image)], stack=False)
    assert [layer.name for layer in viewer.layers] == ["scan"]
    np.testing.assert_array_equal(viewer.layers["scan"].data, np.arange(64).reshape(8, 8))


def test_dock_opens_without_importing_torch():
    """The dock's modules import in well under a second: torch, smp and the trainer wait for a worker."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "import schism_napari._widgets.dock, schism_napari._napari\n"
        "elapsed = time.perf_counter() - started\n"
        "heavy = [m for m in ('torch', 'segmentation_models_pytorch', 'timm') if m in sys.modules]\n"
        "print(heavy, elapsed); sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_without_qt_or_napari():
    """The core (CLI, training, inference) never imports Qt or napari."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import schism_napari.cli, schism_napari.training.trainer, schism_napari.inference, schism_napari.cli.demo\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_launch_sets_up_napari_with_the_sample_and_the_dock(make_napari_viewer):
    from schism_napari.cli.launch import setup_viewer

    viewer = make_napari_viewer()
    dock = setup_viewer(viewer)
    assert [layer.name for layer in viewer.layers] == ["rock CT", "rock CT scribbles"]
    assert dock.currentIndex() == 1
    session = dock.training.session
    assert len(session.pairs) == 1 and session.pairs[0].labels is viewer.layers["rock CT scribbles"]
    assert session.names() == ["pore", "matrix", "mineral"]
    assert dock.training.train_button.enabled


def test_dask_volume_is_predicted_slice_by_slice(trained_run):
    """A dask array (a huge volume on disk, say) predicts like the same data in memory."""
    da = pytest.importorskip("dask.array")
    from schism_napari.inference import Predictor
    from schism_napari.runs import load_trained_model
    from schism_napari.sample import make_rock

    volume, _ = make_rock((3, 80, 72), seed=4)
    predictor = Predictor.from_trained(load_trained_model(trained_run), device="cpu")
    expected = predictor.predict(volume)
    lazy = predictor.predict(da.from_array(volume, chunks=(1, 80, 72)))
    np.testing.assert_array_equal(lazy.labels, expected.labels)
    np.testing.assert_allclose(lazy.probabilities, expected.probabilities, atol=1e-6)
