"""The merged core features as the napari tabs offer them: planned values in the Training form, one core
left to the GUI, Export model…, tri-planar (xyz) prediction of volumes and ensembles of runs.

Driven as a user would, under Xvfb (pytest-xvfb); trainings are tiny, the model is the fixtures' run.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from schism_napari._widgets import model_export
from schism_napari.plumbing import resources
from test_widgets import add_scribble_pair, click_and_wait, dock, errors, notifications, rock, small_training

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
__all__ = ["dock", "notifications", "rock"]  # the fixtures, shared with test_widgets


def load_run(prediction, run_dir, metric: str = "loss") -> None:
    prediction.run_folder.value = run_dir
    prediction.metric.value = metric
    prediction.load_button.clicked.emit()


def predict(qtbot, viewer, prediction, image) -> np.ndarray:
    prediction.reset_choices()
    prediction.image.value = image
    click_and_wait(qtbot, prediction, prediction.predict_button)
    return np.array(viewer.layers[f"{image.name} probabilities"].data, copy=True)  # (C, Z, Y, X)


# ---- the Training form: only the user's edits are given ------------------------------------------


def test_form_counts_only_the_fields_the_user_edited_as_given(qtbot):
    from schism_napari._widgets.config_form import ConfigForm
    from schism_napari.training.planning import interactive_config

    start = interactive_config()
    form = ConfigForm()
    form.set_config(start)
    assert form.config().given == start.given  # shown, not edited: the planner may still choose them
    form.widget("Training", "epochs").value = 3
    form.widget("Optimizer", "kwargs").value = "weight_decay=0.01"
    config = form.config()
    assert config.is_given("Training", "epochs") and config.training.epochs == 3
    assert config.is_given("Optimizer", "weight_decay")
    assert not config.is_given("Data", "crop_size") and not config.is_given("Model", "encoder")
    form.widget("Training", "epochs").value = start.training.epochs  # typed back: not an edit any more
    assert not form.config().is_given("Training", "epochs")
    form.set_config(start, {"Data.crop_size": "96 px crops because"})
    assert "Planned: 96 px crops because" in form.widget("Data", "crop_size").tooltip
    form.set_config(start)
    assert "Planned" not in form.widget("Data", "crop_size").tooltip


def test_train_plans_untouched_keys_from_the_data_and_yields_to_the_gui(qtbot, dock, rock, monkeypatch):
    viewer, dock = dock
    training = dock.training
    volume, _, painted = rock
    add_scribble_pair(viewer, dock, viewer.add_image(volume, name="scan"), viewer.add_labels(painted))
    shown = {key: training.form.widget("Data", key).value for key in ("crop_size", "img_res")}
    assert shown["crop_size"] > 96  # the starting plan, made without data
    small_training(training, epochs=1)
    for key, value in shown.items():  # the user leaves the crop size to the plan
        training.form.widget("Data", key).value = value
    training.preview.value = False
    calls = []
    real_apply = resources.apply_threads

    def recording(requested=None, *, leave_for_gui=False):
        threads = real_apply(requested, leave_for_gui=leave_for_gui)
        calls.append((requested, leave_for_gui, threads, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return threads

    monkeypatch.setattr(resources, "apply_threads", recording)
    monkeypatch.setattr(resources, "allowed_cores", lambda: 3)
    monkeypatch.setattr(resources, "busy_cores", lambda: 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import torch

    threads = torch.get_num_threads()
    try:
        click_and_wait(qtbot, training, training.train_button)
    finally:
        torch.set_num_threads(threads)
    gui_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    # 3 cores, none busy: all three, in a worker thread reniced below the GUI thread's priority
    assert calls == [(None, True, 3, gui_nice + resources.WORKER_NICE)]

    result = training.last_result
    assert result.config.data.crop_size == 96 and result.config.data.img_res == 96  # the 96 px images
    assert result.config.training.epochs == 1 and result.config.model.model_type == "UnetSegmentor"  # the user's
    crop = training.form.widget("Data", "crop_size")
    assert crop.value == 96  # the form shows what was planned
    assert "Planned:" in crop.tooltip and "96 px" in crop.tooltip
    assert "Planned:" not in training.form.widget("Training", "epochs").tooltip
    config = training.session.config
    assert config.is_given("Training", "epochs") and not config.is_given("Data", "crop_size")
    assert training.session.model.config.data.crop_size == 96
    _, reopened = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")  # a second dock, same session
    assert "Planned:" in reopened.training.form.widget("Data", "crop_size").tooltip

    # the model trained in this session exports too (ONNX, checked in onnxruntime by the export)
    import onnxruntime

    out = dock.training.runs_folder.value.parent / "session_model.onnx"
    with qtbot.waitSignal(dock.prediction.export_relay.finished, timeout=180_000):
        assert dock.prediction.export_model(out, "onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (probabilities,) = session.run(None, {name: np.random.default_rng(0).random((1, 1, 96, 96), np.float32)})
    assert probabilities.shape == (1, 3, 96, 96)


# ---- Export model… ------------------------------------------------------------------------------


def test_export_model_writes_a_checked_torchscript_file(qtbot, dock, trained_run, tmp_path, monkeypatch, notifications):
    import torch

    _, dock = dock
    prediction = dock.prediction
    assert not prediction.export_button.enabled  # no model yet
    load_run(prediction, trained_run)
    assert prediction.export_button.enabled
    out = tmp_path / "exported" / "rock.pt"
    monkeypatch.setattr(model_export.QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    prediction.export_format.value = "torchscript"
    with qtbot.waitSignal(prediction.export_relay.finished, timeout=180_000):
        prediction.export_button.clicked.emit()
    assert out.is_file() and (out.parent / "rock.pt.json").is_file()
    assert any(str(out) in str(n.message) for n in notifications)
    module = torch.jit.load(str(out))
    with torch.no_grad():
        probabilities = module(torch.rand(1, 1, 64, 64))
    assert probabilities.shape == (1, 3, 64, 64)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 64, 64), atol=1e-4, rtol=0)

    before = out.read_bytes()
    prediction.export_button.clicked.emit()  # the same name again: refused, the file stays
    assert not prediction.export_job.busy and out.read_bytes() == before
    assert any("already exists" in m for m in errors(notifications))


# ---- tri-planar prediction and ensembles ---------------------------------------------------------


def test_xyz_is_offered_for_volumes_only_and_predicts_as_the_core(qtbot, dock, trained_run, rock):
    from schism_napari.inference import Predictor
    from schism_napari.inference.planes import planar_predictor
    from schism_napari.runs import load_trained_model

    viewer, dock = dock
    prediction = dock.prediction
    load_run(prediction, trained_run)
    volume, _, _ = rock
    photo = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    prediction.reset_choices()
    prediction.image.value = photo
    assert not prediction.planes.enabled and prediction.planes.value == "xy"
    assert "volumes only" in prediction.planes.tooltip
    image = viewer.add_image(volume, name="scan", scale=(2.0, 1.0, 1.0))
    prediction.reset_choices()
    prediction.image.value = image
    assert prediction.planes.enabled and "layer's scale" in prediction.voxel_ratio.tooltip
    slice_by_slice = predict(qtbot, viewer, prediction, image)
    prediction.planes.value = "xyz"
    triplanar = predict(qtbot, viewer, prediction, image)

    trained = load_trained_model(trained_run)
    base = Predictor.from_trained(trained, settings=trained.config.inference, device="cpu")
    expected = planar_predictor(base, "xyz", voxel_ratio=2.0).predict(volume).probabilities  # (Z, C, Y, X)
    np.testing.assert_allclose(triplanar, np.moveaxis(expected, 1, 0), atol=1e-5)
    assert not np.allclose(triplanar, slice_by_slice, atol=1e-3)


def other_run(trained_run, folder):
    """A copy of the fixtures' run whose best-loss weights are perturbed: a second, different member."""
    import shutil

    import torch

    from schism_napari.runs import load_weights, save_weights

    copy = shutil.copytree(trained_run, folder / "other_run")
    path = copy / "model_best_loss.pth"
    state = load_weights(path)
    generator = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if torch.is_floating_point(value) and "weight" in key:
            state[key] = value + 0.05 * torch.randn(value.shape, generator=generator)
    save_weights(path, state)
    return copy


def test_several_runs_average_their_probabilities(qtbot, dock, trained_run, rock, tmp_path, notifications):
    viewer, dock = dock
    prediction = dock.prediction
    volume, _, _ = rock
    image = viewer.add_image(volume, name="scan")
    second = other_run(trained_run, tmp_path)
    load_run(prediction, second)
    other = predict(qtbot, viewer, prediction, image)
    load_run(prediction, trained_run)
    first = predict(qtbot, viewer, prediction, image)
    assert not np.allclose(first, other, atol=1e-3)  # two different members

    assert not prediction.add_run(tmp_path)  # not a run folder
    assert prediction.ensemble_runs == [] and any("not a run folder" in m for m in errors(notifications))
    assert prediction.add_run(second)  # its best-loss weights
    assert "+ 1 run" in prediction.ensemble_label.value
    ensemble = predict(qtbot, viewer, prediction, image)
    np.testing.assert_allclose(ensemble, (first + other) / 2, atol=1e-5)
    prediction.clear_runs_button.clicked.emit()
    assert prediction.ensemble_runs == [] and "one run" in prediction.ensemble_label.value
    assert np.allclose(predict(qtbot, viewer, prediction, image), first, atol=1e-6)  # the current model alone


def test_labelled_slices_are_written_as_ranges():
    from schism_napari._widgets.training import _ranges

    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert _ranges([3]) == "3" and _ranges([]) == ""
