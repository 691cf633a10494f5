"""The first minutes in napari (issue #18): the classes are the ones painted, and what replaces the
forest preview is the best of forest, network and their average on strokes neither saw.

Driven as a user would, under Xvfb (pytest-xvfb); trainings are tiny.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from schism_napari.data.labels import mask_to_labels
from schism_napari.errors import DataError
from schism_napari.forest import selection as selection_module
from schism_napari.runs import load_trained_model
from schism_napari.sample import make_rock, scribbles
from test_widgets import WAIT_MS, click_and_wait, errors, notifications, set_fields

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
__all__ = ["notifications"]  # the fixture, shared with test_widgets


@pytest.fixture
def two_classes():
    """A stack whose truth has two classes (pores vs the rest), and strokes of both on slices 0 and 2."""
    volume, truth = make_rock((4, 96, 96), seed=5)
    binary = (truth > 0).astype(np.uint8)
    return volume, binary, scribbles(binary, slices=(0, 2), strokes_per_class=6)


def open_dock(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    dock.training.runs_folder.value = tmp_path / "runs"
    return viewer, dock


def paint_in_a_new_scribble_layer(viewer, dock, image, painted):
    """Dataset tab: choose the image, 'New scribble layer for image', then paint (the strokes are set
    at once; the last one goes through the brush so napari's paint event fires as for a user)."""
    dock.dataset.reset_choices()
    dock.dataset.image_layer.value = image
    dock.dataset.new_labels_button.clicked.emit()
    layer = viewer.layers[f"{image.name} scribbles"]
    z, y, x = np.argwhere(painted == painted.max())[0]
    strokes = painted.copy()
    strokes[z, y, x] = 0
    layer.data = strokes
    layer.paint((z, y, x), int(painted.max()))
    return layer


def tiny_budget(training) -> None:
    """A small network and a few seconds of training, sized by the time budget as napari's default is."""
    set_fields(
        training,
        Model__model_type="UnetSegmentor",
        Model__n_block=2,
        Model__channels=8,
        Model__p=0.0,
        Data__crop_size=48,
        Data__img_res=48,
        Training__batch_size=8,
        Training__time_budget=0.08,
    )


def test_two_painted_classes_train_a_two_class_model(qtbot, make_napari_viewer, tmp_path, two_classes, notifications):
    viewer, dock = open_dock(make_napari_viewer, tmp_path)
    session, training = dock.training.session, dock.training
    assert training.form.widget("Model", "num_classes").value == 3  # the starting value, before any data
    volume, _, painted = two_classes
    image = viewer.add_image(volume, name="scan")
    layer = paint_in_a_new_scribble_layer(viewer, dock, image, painted)
    assert set(np.unique(layer.data)) == {0, 1, 2}

    # the form, the legend, the label counts and the class names follow the two painted classes
    assert training.form.widget("Model", "num_classes").value == 2
    assert session.config.model.num_classes == 2 and not session.config.is_given("Model", "num_classes")
    legend = dock.dataset.legend.value
    assert "1 = class 0" in legend and "2 = class 1" in legend and "3 =" not in legend
    assert training.label_counts.value.count(" px") == 2
    dock.dataset.class_names.value = "pore, rock"
    dock.dataset.apply_classes_button.clicked.emit()
    assert not errors(notifications)
    assert "1 = pore" in dock.dataset.legend.value and "2 = rock" in dock.dataset.legend.value

    tiny_budget(training)
    click_and_wait(qtbot, training, training.train_button)
    assert not errors(notifications)
    model = session.model
    assert model.class_count == 2 and model.class_names == ["pore", "rock"]
    run_dir = training.last_result.run_dir
    reloaded = load_trained_model(run_dir)
    assert reloaded.config.model.num_classes == 2 and reloaded.class_names == ["pore", "rock"]
    tooltip = training.form.widget("Model", "num_classes").tooltip
    assert "Planned: 2 classes in the masks/labels" in tooltip and "not labelled" not in tooltip
    preview = viewer.layers["scan preview"]
    assert set(np.unique(preview.data)) <= {0, 1, 2}  # no phantom label 3

    # the choice: three scores on held-out strokes, the best shown and said
    saved = json.loads((run_dir / "selection.json").read_text(encoding="utf-8"))
    assert saved["held_out"] == "strokes" and saved["pixels"] > 0
    assert saved["choice"] == model.selection.choice == preview.metadata["schism_preview"]
    assert saved["scores"][saved["choice"]] >= max(saved["scores"].values()) - 0.005
    infos = [str(n.message) for n in notifications]
    assert any(m.startswith("showing the ") and "held-out mean IoU" in m for m in infos)
    assert training.choice.value.startswith("predicting with the ")

    session.set_classes(["pores", "solid"])  # two names for two classes
    with pytest.raises(DataError, match="3 given for 2 classes"):
        session.set_classes(["a", "b", "c"])


def test_a_typed_num_classes_is_kept_and_labels_beyond_it_are_reported(
    make_napari_viewer, tmp_path, two_classes, notifications
):
    viewer, dock = open_dock(make_napari_viewer, tmp_path)
    training = dock.training
    volume, _, painted = two_classes
    image = viewer.add_image(volume, name="scan")
    set_fields(training, Model__num_classes=4)  # typed: the painted labels no longer decide
    layer = paint_in_a_new_scribble_layer(viewer, dock, image, painted)
    assert training.form.widget("Model", "num_classes").value == 4
    assert "4 = class 3" in dock.dataset.legend.value
    layer.paint((1, 5, 5), 6)
    assert training.session.config.model.num_classes == 4
    training.train_button.clicked.emit()
    assert training.worker is None
    assert any("up to 6" in m and "4 classes" in m for m in errors(notifications))


def test_the_chosen_combination_replaces_the_preview_and_predicts(
    qtbot, make_napari_viewer, tmp_path, two_classes, monkeypatch
):
    """Whatever the held-out strokes choose is what the preview and later predictions show: here the
    forest is made to win, so both must be exactly the forest's."""
    real_choose = selection_module.choose

    def forest_wins(*args, **kwargs):
        return dataclasses.replace(real_choose(*args, **kwargs), choice="forest")

    monkeypatch.setattr(selection_module, "choose", forest_wins)
    viewer, dock = open_dock(make_napari_viewer, tmp_path)
    volume, _, painted = two_classes
    image = viewer.add_image(volume, name="scan")
    paint_in_a_new_scribble_layer(viewer, dock, image, painted)
    tiny_budget(dock.training)
    viewer.dims.set_current_step(0, 2)
    previews: list = []
    dock.training.relay.event.connect(lambda e: previews.append(e) if type(e).__name__ == "ForestPreview" else None)
    click_and_wait(qtbot, dock.training, dock.training.train_button)

    (forest_preview,) = previews
    shown = viewer.layers["scan preview"]
    assert shown.metadata["schism_preview"] == "forest"
    np.testing.assert_array_equal(
        shown.data[2], mask_to_labels(forest_preview.probabilities.argmax(0).astype(np.uint8))
    )
    model = dock.training.session.model
    assert model.forest_weight == 1.0 and (dock.training.last_result.run_dir / "forest.npz").is_file()

    prediction = dock.prediction
    prediction.reset_choices()
    prediction.image.value = image
    with qtbot.waitSignal(prediction.relay.finished, timeout=WAIT_MS):
        prediction.predict_button.clicked.emit()
    labels = viewer.layers["scan prediction"].data
    expected = np.stack([model.forest.predict(plane[..., None]) for plane in volume]) + 1
    np.testing.assert_array_equal(labels, expected)
