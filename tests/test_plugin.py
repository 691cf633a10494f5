"""Packaging and entry points: the npe2 manifest, the main job's viewer set-up, dask input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_registered_manifest_is_the_root_napari_yaml_and_validates():
    """The manifest napari loads is the repository's napari.yaml, and its commands import."""
    from importlib.metadata import entry_points

    from npe2 import PluginManifest

    (entry,) = [e for e in entry_points(group="napari.manifest") if e.name == "schism-napari"]
    manifest = PluginManifest.from_distribution("schism-napari")
    assert manifest.name == "schism-napari"
    module, _, resource = entry.value.partition(":")
    from importlib.resources import files

    registered = files(module).joinpath(resource).read_text()
    assert registered == (ROOT / "napari.yaml").read_text()
    manifest.validate_imports()  # every python_name resolves
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {"SCHISM", "Dataset", "Training", "Prediction"}
    assert {s.key for s in contributions.sample_data} == {"rock_ct", "rock_ct_scribbles"}
    assert contributions.readers and contributions.writers


def test_core_imports_without_qt_or_napari():
    """The core (CLI, training, inference) never imports Qt or napari."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import schism_napari.cli, schism_napari.training.trainer, schism_napari.inference, schism_napari.demo\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_launch_sets_up_napari_with_the_sample_and_the_dock(make_napari_viewer):
    from schism_napari.launch import setup_viewer

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
