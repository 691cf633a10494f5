"""The napari loop as a new user meets it: a dock closed mid-training, the viewer closed, the weights
choice, result layers, class names, corrections that count, the next slice to correct, stalls.

Driven as a user would, under Xvfb (pytest-xvfb); trainings are tiny.
"""

from __future__ import annotations

import numpy as np
import pytest

from schism_napari import events
from schism_napari._widgets.jobs import RunState
from schism_napari.data.io import IGNORE
from schism_napari.sample import make_rock, scribbles
from test_widgets import (
    WAIT_MS,
    add_scribble_pair,
    assert_no_stall,
    click_and_wait,
    errors,
    layer_adds,
    longest_gap,
    notifications,
    quiet_collector,
    set_fields,
    small_training,
    ticking,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
__all__ = ["layer_adds", "notifications"]  # the fixtures, shared with test_widgets


@pytest.fixture
def rock():
    volume, truth = make_rock((4, 96, 96), seed=5)
    return volume, truth, scribbles(truth, slices=(0, 2), strokes_per_class=5)


def open_dock(viewer, tmp_path):
    dock_widget, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    dock.training.runs_folder.value = tmp_path / "runs"
    return dock_widget, dock


def start_and_wait_for_epoch(qtbot, training) -> None:
    with qtbot.waitSignal(
        training.relay.event, timeout=WAIT_MS, check_params_cb=lambda e: isinstance(e, events.EpochEnded)
    ):
        training.train_button.clicked.emit()


def test_closing_the_dock_mid_training_and_reopening_it_reattaches(qtbot, make_napari_viewer, tmp_path, rock):
    viewer = make_napari_viewer()
    dock_widget, dock = open_dock(viewer, tmp_path)
    volume, _, painted = rock
    add_scribble_pair(viewer, dock, viewer.add_image(volume, name="scan"), viewer.add_labels(painted))
    small_training(dock.training, epochs=60)
    dock.training.preview.value = False
    start_and_wait_for_epoch(qtbot, dock.training)
    viewer.window.remove_dock_widget(dock_widget)  # the user closes the dock; training goes on
    job = dock.training.session.job("training")
    assert job.state is RunState.RUNNING and job.worker is not None

    _, reopened = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    training = reopened.training
    assert training is not dock.training and training.job is job
    assert not training.train_button.enabled and training.stop_button.enabled  # Stop works, Train waits
    assert "a training is running" in training.train_button.tooltip
    assert len(training.curves.history) >= 1  # the curves so far, replayed
    assert 0 < training.progress.value < training.progress.max
    assert "epoch" in training.status.value and "left" in training.status.value
    assert not reopened.prediction.predict_button.enabled
    assert "no model yet" in reopened.prediction.predict_button.tooltip

    worker = job.worker
    training.train_button.clicked.emit()  # a second training in the same viewer is refused
    assert job.worker is worker

    with qtbot.waitSignal(training.relay.finished, timeout=WAIT_MS):
        training.stop_button.clicked.emit()
    assert job.state is RunState.CANCELLED
    assert training.last_result.stopped and training.last_result.epochs_completed < 60
    assert training.train_button.enabled and not training.stop_button.enabled
    assert "stopped" in training.status.value
    assert training.session.model is not None and reopened.prediction.predict_button.enabled


def test_a_closed_dock_stops_following_the_session(make_napari_viewer, tmp_path, notifications):
    """napari takes a closed dock out of the window without deleting it: its widgets must stop
    reacting, or every training message is shown once per dock ever opened."""
    viewer = make_napari_viewer()
    dock_widget, closed = open_dock(viewer, tmp_path)
    viewer.window.remove_dock_widget(dock_widget)
    _, reopened = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    job = reopened.training.job
    assert closed.training.job is job

    job.event.emit(events.Message("two stages: a message from the trainer"))
    job.event.emit(events.TrainingFinished(tmp_path, epochs_completed=3, stopped=False, reason="finished"))
    shown = [str(n.message) for n in notifications if "a message from the trainer" in str(n.message)]
    assert shown == ["two stages: a message from the trainer"]
    assert "after 3 epochs" in reopened.training.status.value
    assert "after 3 epochs" not in closed.training.status.value


def test_keep_improving_trains_rounds_while_the_user_paints(qtbot, make_napari_viewer, tmp_path, rock, monkeypatch):
    """ "Keep improving": after Train, rounds fine-tune the model in the background. A round starts
    at once while the last one improved, else after the next stroke; it keeps the best model so far
    in the preview (no forest in between) until its own choice replaces it; Stop ends the rounds."""
    from schism_napari._widgets import training as training_module

    improved = iter([True])  # the first Train improved; the round after it did not
    monkeypatch.setattr(training_module, "_improved", lambda *_: next(improved, False))
    monkeypatch.setattr(training_module, "ROUND_DELAY_MS", 50)
    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    volume, _, painted = rock
    image, labels = viewer.add_image(volume, name="scan"), viewer.add_labels(painted)
    add_scribble_pair(viewer, dock, image, labels)
    training = dock.training
    small_training(training, epochs=1)
    training.keep_improving.value = True
    job = training.job
    runs = tmp_path / "runs"

    click_and_wait(qtbot, training, training.train_button)  # the first Train, with the forest preview
    preview = viewer.layers["scan preview"]
    updates: list = []
    preview.events.data.connect(updates.append)
    qtbot.waitUntil(lambda: job.busy, timeout=WAIT_MS)  # a round follows at once
    with qtbot.waitSignal(training.relay.finished, timeout=WAIT_MS):
        pass
    assert len(updates) == 1  # the round's choice only: the forest of the round was not shown
    assert preview.metadata["schism_preview"] in ("forest", "network", "average")
    assert len(list(runs.glob("run_*"))) == 2
    qtbot.wait(300)
    assert not job.busy and "waiting for new strokes" in training.status.value

    labels.paint((0, 5, 5), 1)  # a new stroke: a round starts once the user stops painting
    qtbot.waitUntil(lambda: job.busy, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: len(list(runs.glob("run_*"))) == 3, timeout=WAIT_MS)  # made in the worker
    with qtbot.waitSignal(training.relay.finished, timeout=WAIT_MS):
        training.stop_button.clicked.emit()
    assert not training.keep_improving.value and job.state in (RunState.CANCELLED, RunState.DONE)
    labels.paint((0, 6, 6), 1)
    qtbot.wait(300)
    assert not job.busy and len(list(runs.glob("run_*"))) == 3


def test_closing_the_viewer_stops_training(qtbot, make_napari_viewer, tmp_path, rock):
    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    volume, _, painted = rock
    add_scribble_pair(viewer, dock, viewer.add_image(volume), viewer.add_labels(painted))
    small_training(dock.training, epochs=60)
    dock.training.preview.value = False
    start_and_wait_for_epoch(qtbot, dock.training)
    job = dock.training.session.job("training")
    viewer.close()
    assert job.worker is None  # the worker ended before the window went
    assert job.state is RunState.CANCELLED
    assert job.result[0].stopped and job.result[0].epochs_completed < 60


def test_class_names_colours_preview_and_label_counts(qtbot, make_napari_viewer, tmp_path, rock):
    """Name the classes and pick colours in the dock; they reach the legend, the layers and the run folder.
    Train shows the forest's preview of the current slice first, then the network's."""
    from schism_napari.runs import load_trained_model

    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    volume, _, painted = rock
    image = viewer.add_image(volume, name="scan")
    scribble_layer = viewer.add_labels(painted, name="strokes")
    add_scribble_pair(viewer, dock, image, scribble_layer)
    assert "&#9632;" in dock.dataset.legend.value  # swatches even without a class_dict.csv
    dock.dataset.class_names.value = "pore, rock, ore"
    dock.dataset.class_colors.value = "#ff0000, #00ff00, #0000ff"
    dock.dataset.apply_classes_button.clicked.emit()
    legend = dock.dataset.legend.value
    assert "2 = rock" in legend and "rgb(255,0,0)" in legend and "rgb(0,0,255)" in legend
    np.testing.assert_allclose(scribble_layer.colormap.map(np.array([1]))[0][:3], [1, 0, 0])
    counts = dock.training.label_counts.value
    assert "pore:" in counts and "on slices 0, 2" in counts

    small_training(dock.training, epochs=1)
    set_fields(dock.training, Model__model_type="UnetConcat")  # takes any channels: a two-stage model
    viewer.dims.set_current_step(0, 2)
    previews: list = []
    dock.training.relay.event.connect(lambda e: previews.append(e) if type(e).__name__ == "ForestPreview" else None)
    click_and_wait(qtbot, dock.training, dock.training.train_button)
    assert len(previews) == 1 and previews[0].z == 2 and previews[0].probabilities.shape == (3, 96, 96)
    preview = viewer.layers["scan preview"]
    # the held-out strokes' choice (network, forest or their average) replaced the forest's preview
    assert preview.metadata["schism_preview"] == dock.training.session.model.selection.choice
    assert np.count_nonzero(preview.data[2]) == 96 * 96 and np.count_nonzero(preview.data[[0, 1, 3]]) == 0
    assert dock.training.status.value.startswith("completed after 1 epoch ")  # not "1 epochs"

    run_dir = dock.training.last_result.run_dir
    reloaded = load_trained_model(run_dir)
    assert reloaded.class_names == ["pore", "rock", "ore"]
    assert (run_dir / "plan.json").is_file()  # planned as from the CLI, and written down the same way
    assert reloaded.stage_one is not None and (run_dir / "stage_one.npz").is_file()  # scribbles: two stages
    assert dock.training.session.model.stage_one is not None  # and the session predicts with both
    assert [tuple(c) for c in reloaded.class_colors] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    prediction = dock.prediction
    prediction.reset_choices()
    prediction.image.value = image
    click_and_wait(qtbot, prediction, prediction.predict_button)
    labels = viewer.layers["scan prediction"]
    assert labels.metadata["schism_classes"] == ["pore", "rock", "ore"]
    np.testing.assert_allclose(labels.colormap.map(np.array([3]))[0][:3], [0, 0, 1])


def test_weights_choice_survives_new_layers_and_results_keep_the_view(
    qtbot, make_napari_viewer, tmp_path, trained_run, rock
):
    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    prediction = dock.prediction
    assert not prediction.predict_button.enabled and "no model" in prediction.predict_button.tooltip
    prediction.run_folder.value = trained_run
    prediction.metric.value = "Jaccard"
    volume, _, _ = rock
    image = viewer.add_image(volume, name="scan")  # adding a layer must not reset the choice
    assert prediction.metric.value == "Jaccard"
    prediction.load_button.clicked.emit()
    assert "Jaccard" in prediction.model_label.tooltip
    prediction.reset_choices()
    prediction.image.value = image
    viewer.camera.zoom = 3.3
    viewer.camera.center = (0, 30, 40)
    viewer.dims.set_current_step(0, 1)
    click_and_wait(qtbot, prediction, prediction.predict_button)
    assert prediction.metric.value == "Jaccard"  # Predict added layers; the choice stayed
    assert viewer.camera.zoom == pytest.approx(3.3) and tuple(viewer.camera.center)[1:] == pytest.approx((30, 40))
    assert viewer.dims.current_step[viewer.dims.ndim - 3] == 1
    probabilities = viewer.layers["scan probabilities"]
    assert not probabilities.visible and probabilities.opacity < 1  # the image stays visible under the labels
    assert "class" in viewer.dims.axis_labels and "-4" not in viewer.dims.axis_labels
    uncertainty = viewer.layers["scan uncertainty"]
    assert not uncertainty.visible and uncertainty.data.shape == volume.shape
    assert viewer.layers[-1] is viewer.layers["scan prediction"]  # the labels on top, to correct

    means = uncertainty.data.reshape(4, -1).mean(axis=1)
    first = prediction.next_uncertain_slice()
    assert first == int(np.argmax(means)) and viewer.dims.current_step[viewer.dims.ndim - 3] == first
    prediction.review_button.clicked.emit()  # this slice is fine: next time go elsewhere
    second = prediction.next_uncertain_slice()
    assert second != first and second == int(np.argsort(-means)[1])


def predict_and_correct(qtbot, viewer, dock, trained_run, rock):
    """Pair the scribbles, predict the stack with the trained run, change every pixel of a 10x10 block
    on slice 1 and mark slice 3 reviewed: (image, labels layer, as predicted, as corrected)."""
    volume, _, painted = rock
    image = viewer.add_image(volume, name="scan")
    add_scribble_pair(viewer, dock, image, viewer.add_labels(painted, name="strokes"))
    prediction = dock.prediction
    prediction.run_folder.value = trained_run
    prediction.load_button.clicked.emit()
    prediction.reset_choices()
    prediction.image.value = image
    click_and_wait(qtbot, prediction, prediction.predict_button)
    labels = viewer.layers["scan prediction"]
    predicted = labels.data.copy()
    corrected = predicted.copy()
    corrected[1, 10:20, 10:20] = np.where(predicted[1, 10:20, 10:20] == 2, 3, 2)  # every pixel changed
    labels.data = corrected  # "painted" with the brush
    viewer.dims.set_current_step(viewer.dims.ndim - 3, 3)  # z (the probabilities add a class axis first)
    prediction.review_button.clicked.emit()
    return image, labels, predicted, corrected


def capture_training_sources(monkeypatch) -> list:
    """What the next Train would train on: its sources are captured and the run ends there."""
    from schism_napari._widgets import session as session_module

    trained_on: list = []

    def capture(sources):
        trained_on.append(sources)
        raise RuntimeError("captured")

    monkeypatch.setattr(session_module.TrainingSources, "load", capture)
    return trained_on


def test_corrections_count_not_the_uncorrected_prediction(
    qtbot, make_napari_viewer, tmp_path, trained_run, rock, monkeypatch, notifications
):
    """Correct a block on one slice, mark another reviewed, Add to training set, press Train: what the
    worker trains on is the scribbles plus exactly those pixels, IGNORE elsewhere."""
    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    _, _, predicted, corrected = predict_and_correct(qtbot, viewer, dock, trained_run, rock)
    prediction = dock.prediction
    prediction.add_button.clicked.emit()
    trained_on = capture_training_sources(monkeypatch)
    click_and_wait(qtbot, dock.training, dock.training.train_button)
    (sources,) = trained_on
    mask = sources.masks[sources.names.index("scan (2)")] if "scan (2)" in sources.names else sources.masks[1]
    labelled = mask != IGNORE
    assert labelled[1, 10:20, 10:20].all() and labelled[1].sum() == 100  # the corrections on slice 1
    assert labelled[3].all()  # the reviewed slice, whole
    assert not labelled[[0, 2]].any()  # the uncorrected prediction is not ground truth
    np.testing.assert_array_equal(mask[1, 10:20, 10:20], corrected[1, 10:20, 10:20] - 1)
    np.testing.assert_array_equal(mask[3], predicted[3] - 1)
    assert any("captured" in m for m in errors(notifications))


def test_corrections_survive_predictions_and_a_reopened_dock(
    qtbot, make_napari_viewer, tmp_path, trained_run, rock, monkeypatch
):
    """One user's session: predict, correct a block, mark a slice reviewed, add to the training set,
    predict twice more (once from a reopened dock): the corrected and reviewed pixels stay, and the
    training mask is exactly the user's labels. Clearing the review hands the slice back."""
    viewer = make_napari_viewer()
    dock_widget, dock = open_dock(viewer, tmp_path)
    volume = rock[0]
    image, labels, _, corrected = predict_and_correct(qtbot, viewer, dock, trained_run, rock)
    prediction = dock.prediction
    assert prediction.review_button.text == "Clear slice review" and "3" in prediction.status.value
    reviewed = labels.data[3].copy()
    prediction.add_button.clicked.emit()
    labels.data[3, :5, :5] = 0  # the user erases a corner of the reviewed slice: still theirs
    labels.refresh()
    reviewed[:5, :5] = 0
    click_and_wait(qtbot, prediction, prediction.predict_button)

    viewer.window.remove_dock_widget(dock_widget)  # the dock is closed and opened again
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    prediction = dock.prediction
    assert dock.training.runs_folder.value == tmp_path / "runs"  # the user's runs folder, not ~/
    assert prediction.labels_layer is labels and prediction.source_layer is image
    prediction.reset_choices()
    prediction.image.value = image
    click_and_wait(qtbot, prediction, prediction.predict_button)
    assert [layer.name for layer in viewer.layers].count("scan prediction") == 1  # one family per image
    np.testing.assert_array_equal(labels.data[1, 10:20, 10:20], corrected[1, 10:20, 10:20])
    np.testing.assert_array_equal(labels.data[3], reviewed)
    assert prediction.review_button.text == "Clear slice review"  # still on slice 3, still reviewed

    trained_on = capture_training_sources(monkeypatch)
    click_and_wait(qtbot, dock.training, dock.training.train_button)
    mask = trained_on[0].masks[1]
    expected = np.full(volume.shape, IGNORE, np.uint8)
    expected[1, 10:20, 10:20] = corrected[1, 10:20, 10:20] - 1
    expected[3] = np.where(reviewed == 0, IGNORE, reviewed.astype(np.int64) - 1)
    np.testing.assert_array_equal(mask, expected)  # exactly the user's labels, nothing of the model's

    prediction.review_button.clicked.emit()  # clear the review of slice 3: only its edits stay the user's
    assert prediction.review_button.text == "Mark slice reviewed"
    click_and_wait(qtbot, dock.training, dock.training.train_button)
    mask = trained_on[1].masks[1]
    assert np.count_nonzero(mask[3] != IGNORE) == 0 and np.count_nonzero(mask != IGNORE) == 100


def test_class_colours_recolour_every_result_layer(qtbot, make_napari_viewer, tmp_path, trained_run, rock):
    """Class names and colours set in the dock reach the preview, the prediction and the per-class
    probability layers of every image, and survive a reopened dock."""
    from schism_napari._widgets.layer_turns import run_in_turns
    from schism_napari._widgets.training import show_preview

    viewer = make_napari_viewer()
    dock_widget, dock = open_dock(viewer, tmp_path)
    volume, _, painted = rock
    first = viewer.add_image(volume, name="first")
    second = viewer.add_image(volume[:, ::-1].copy(), name="second")
    strokes = viewer.add_labels(painted, name="strokes")
    add_scribble_pair(viewer, dock, first, strokes)
    session = dock.training.session
    probabilities = np.zeros((3, 96, 96), np.float32)
    probabilities[1] = 1
    run_in_turns(show_preview(viewer, session, first, probabilities, 2, "forest"), done=lambda: None, failed=print)
    qtbot.waitUntil(lambda: "first preview" in viewer.layers, timeout=5000)
    layers = list(viewer.layers)
    assert layers.index(viewer.layers["first preview"]) < layers.index(strokes)  # never over the scribbles
    prediction = dock.prediction
    prediction.run_folder.value = trained_run
    prediction.load_button.clicked.emit()
    prediction.layout_choice.value = "one layer per class"
    prediction.reset_choices()
    for image in (first, second):
        prediction.image.value = image
        click_and_wait(qtbot, prediction, prediction.predict_button)
    assert not viewer.layers["first preview"].visible  # the prediction took over

    viewer.window.remove_dock_widget(dock_widget)
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    assert dock.prediction.layout_choice.value == "one layer per class"
    dock.dataset.class_names.value = "pore, rock, ore"
    dock.dataset.class_colors.value = "#ff0000, #00ff00, #0000ff"
    dock.dataset.apply_classes_button.clicked.emit()
    for name in ("first preview", "first prediction", "second prediction", "strokes"):
        np.testing.assert_allclose(viewer.layers[name].colormap.map(np.array([3]))[0][:3], [0, 0, 1])
        assert viewer.layers[name].metadata["schism_classes"] == ["pore", "rock", "ore"]
    assert "second P(ore)" in viewer.layers and "first P(rock)" in viewer.layers


def test_results_do_not_stall_the_event_loop(qtbot, make_napari_viewer, tmp_path, trained_run, rock, layer_adds):
    """The first prediction of an image adds its three layers one per event-loop turn; predicting
    again updates them in place. A 10 ms QTimer measures the longest gap each time."""
    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    prediction = dock.prediction
    prediction.run_folder.value = trained_run
    prediction.load_button.clicked.emit()
    volume, _, _ = rock
    prediction.reset_choices()
    prediction.image.value = viewer.add_image(volume, name="scan")
    layer_adds.clear()
    quiet_collector()
    timer, ticks = ticking()
    click_and_wait(qtbot, prediction, prediction.predict_button)  # first: napari creates 3 layers
    first = longest_gap(ticks)
    first_adds = list(layer_adds)
    timer.stop()
    layer_adds.clear()
    quiet_collector()
    timer, ticks = ticking()
    click_and_wait(qtbot, prediction, prediction.predict_button)
    again = longest_gap(ticks)
    timer.stop()
    assert len(first_adds) == 3 and not layer_adds
    assert viewer.layers.selection.active is viewer.layers["scan prediction"]  # the layer to correct
    assert_no_stall(again, layer_adds, "prediction again (layers updated)")
    assert_no_stall(first, first_adds, "first prediction (3 new layers)")


def test_closing_the_viewer_while_results_arrive(qtbot, make_napari_viewer, tmp_path, trained_run, rock, notifications):
    """The result layers are added over several event-loop turns; closing the viewer in between
    drops the rest quietly and the prediction still settles."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    _, dock = open_dock(viewer, tmp_path)
    prediction = dock.prediction
    prediction.run_folder.value = trained_run
    prediction.load_button.clicked.emit()
    prediction.reset_choices()
    prediction.image.value = viewer.add_image(rock[0], name="scan")
    job = prediction.job
    with qtbot.waitSignal(prediction.relay.finished, timeout=WAIT_MS):
        prediction.predict_button.clicked.emit()
        # right after the result is taken in (its first piece), before the layers' turns
        job.worker.returned.connect(lambda _value: QTimer.singleShot(0, viewer.close))
    assert job.state is RunState.DONE
    assert not errors(notifications)


def test_the_dock_fits_its_panel(make_napari_viewer):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    scrolls = [dock.widget(i) for i in range(dock.count())]
    assert all(isinstance(s, QScrollArea) for s in scrolls)
    assert all(s.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff for s in scrolls)


# ---- opening the dock: no torch on the GUI thread ---------------------------------------------------

OPEN_THE_DOCK = """
import importlib.abc, sys, threading, time
imported_on = {}

class WatchTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            imported_on.setdefault("main", threading.current_thread() is threading.main_thread())
        return None

sys.meta_path.insert(0, WatchTorch())
from schism_napari.cli.launch import load_triton_before_opengl

load_triton_before_opengl()  # CUDA torch builds: triton after Mesa's llvmpipe segfaults (not torch)
import napari
from qtpy.QtWidgets import QApplication
from schism_napari._widgets.session import session_for

viewer = napari.Viewer(show=False)
viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
opened_without_torch = "torch" not in sys.modules  # printed: the worker starts after WARM_UP_DELAY_MS
job = session_for(viewer).job("warm-up")
deadline = time.monotonic() + 120
while job.state.value != "done" and time.monotonic() < deadline:
    QApplication.processEvents()
    time.sleep(0.01)
ok = imported_on == {"main": False} and job.state.value == "done"
print(opened_without_torch, imported_on, job.state.value, job.error, flush=True)
viewer.close()
sys.exit(0 if ok else 1)
"""


def test_the_dock_opens_without_torch_and_a_worker_imports_it():
    """Plugins -> SCHISM builds the dock without importing torch (3-7 s on the GUI thread before);
    a worker imports it afterwards, so a form edit or Train finds it loaded."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", OPEN_THE_DOCK], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_the_form_shows_the_cpu_plan_at_once_and_an_accelerator_replans_untouched_keys(
    qtbot, make_napari_viewer, tmp_path, monkeypatch
):
    from schism_napari._widgets import session as session_module
    from schism_napari.training.planning import interactive_config

    viewer = make_napari_viewer()
    monkeypatch.setattr(session_module, "_import_the_core", lambda: "cuda")  # a machine with a GPU
    _, dock = open_dock(viewer, tmp_path)
    form = dock.training.form
    cpu_plan = interactive_config("cpu")
    assert form.config().model.encoder == cpu_plan.model.encoder == "resnet18"
    assert form.config() == cpu_plan  # the unchecked starting values are what validation gives
    form.widget("Data", "crop_size").value = 128  # edited before the device is known: kept
    with qtbot.waitSignal(dock.training.session.job("warm-up").relay.finished, timeout=WAIT_MS):
        pass
    planned = form.config()
    assert planned.model.encoder == interactive_config("cuda").model.encoder == "resnet34"
    assert planned.data.crop_size == 128 and planned.is_given("Data", "crop_size")
    assert planned.training.batch_size == 32  # 16 per 256 px crop on an accelerator, for 128 px crops (at most 32)
    assert "Planned: resnet34: a mid-size encoder for an accelerator" in form.widget("Model", "encoder").tooltip


def test_a_finished_job_keeps_nothing_of_its_run(qtbot, make_napari_viewer):
    """napari's task list keeps every worker for the window's life; the worker must not keep the
    run's arguments or its handlers' closures (the images, masks and models of every Train)."""
    import gc
    import weakref

    from schism_napari._widgets.jobs import Job

    class Payload:
        pass

    make_napari_viewer()  # a current viewer: napari registers each worker in its window's task list
    job = Job("soak")
    argument, captured = Payload(), Payload()
    watched = [weakref.ref(argument), weakref.ref(captured)]
    returned: list = []
    with qtbot.waitSignal(job.relay.finished, timeout=WAIT_MS):
        job.start(lambda data: 7, argument, on_returned=lambda value, kept=captured: returned.append(value))
    del argument, captured
    gc.collect()
    assert returned == [7] and job.state is RunState.DONE
    assert [ref() for ref in watched] == [None, None]
