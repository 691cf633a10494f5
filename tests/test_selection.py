"""Never worse than the forest: held-out strokes, the choice between forest, network and their
average, the forest saved as numbers, and run folders that predict with their choice."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from schism_napari.cli import main
from schism_napari.data import load_dataset, samples_from_arrays
from schism_napari.data.io import IGNORE
from schism_napari.data.labels import labels_to_mask
from schism_napari.errors import SchismError
from schism_napari.forest import classifier as baseline
from schism_napari.forest.classifier import PixelClassifier
from schism_napari.forest.selection import (
    FOREST_FILE,
    SELECTION_FILE,
    Selection,
    choose,
    fit_forest,
    hold_out,
    read_selection,
)
from schism_napari.inference import Predictor
from schism_napari.runs import load_trained_model
from schism_napari.sample import make_rock, scribbles


@pytest.fixture(scope="module")
def rock():
    volume, truth = make_rock((4, 96, 96), seed=5)
    return volume, truth


@pytest.fixture(scope="module")
def painted(rock):
    """Scribbles on slices 0 and 2 as a SegmentationData (two samples), and the dense truth."""
    volume, truth = rock
    mask = labels_to_mask(scribbles(truth, slices=(0, 2), strokes_per_class=6), 3)
    data = samples_from_arrays([volume], [mask], class_count=3, skip_unlabeled=True)
    return data, [truth[0], truth[2]]


def one_hot(classes: np.ndarray, count: int = 3) -> np.ndarray:
    return np.eye(count, dtype=np.float32)[classes].transpose(2, 0, 1)


# ---- held-out strokes ---------------------------------------------------------------------------


def test_held_out_strokes_are_whole_strokes_kept_from_training(painted):
    data, _ = painted
    training, held = hold_out(data, [0, 1])
    assert held.mode == "strokes" and held.pixels > 0
    _, again = hold_out(data, [0, 1])  # a resumed run holds out the same pixels
    assert all(np.array_equal(held.targets[p], again.targets[p]) for p in held.targets)
    for k in range(3):
        painted_k = sum(np.count_nonzero(s.mask == k) for s in data.samples)
        held_k = sum(np.count_nonzero(m == k) for m in held.targets.values())
        assert 0.1 * painted_k <= held_k <= 0.35 * painted_k, (k, held_k, painted_k)
    for position, sample in enumerate(data.samples):
        before, after = sample.mask, training.samples[position].mask
        target = held.targets.get(position, np.full_like(before, IGNORE))
        assert not ((after != IGNORE) & (target != IGNORE)).any()  # never both trained on and scored
        np.testing.assert_array_equal(np.where(target != IGNORE, target, after), before)  # nothing else lost
        assert (after != IGNORE).any()  # no image loses all its labels
        for k in range(3):  # whole strokes: no held-out pixel touches a training pixel of its class
            grown = ndimage.binary_dilation(target == k, structure=np.ones((3, 3), bool))
            assert not (grown & (after == k)).any()


def test_a_class_painted_in_one_stroke_is_split_in_blocks():
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 1), dtype=np.uint8)
    mask = np.full((128, 128), IGNORE, np.uint8)
    mask[10:20, 5:120] = 0  # one long stroke of class 0
    for x in range(5, 120, 12):  # many short ones of class 1
        mask[100:104, x : x + 6] = 1
    data = samples_from_arrays([image[..., 0]], [mask], class_count=2)
    training, held = hold_out(data, [0])
    target = held.targets[0]
    held_0 = np.count_nonzero(target == 0)
    assert 0.1 * np.count_nonzero(mask == 0) <= held_0 <= 0.35 * np.count_nonzero(mask == 0)
    assert np.count_nonzero(training.samples[0].mask == 0) > 0


def test_dense_masks_score_their_validation_images(rock):
    volume, truth = rock
    data = samples_from_arrays([volume], [truth.astype(np.uint8)], class_count=3)
    training, held = hold_out(data, [0, 1, 2, 3], [3])
    assert training is data  # dense masks lose nothing
    assert held.mode == "validation images" and list(held.targets) == [3]
    assert held.forest_positions == [0, 1, 2]


# ---- the choice ---------------------------------------------------------------------------------


def test_the_choice_is_the_best_on_held_out_labels(painted, rock):
    data, truths = painted
    training, held = hold_out(data, [0, 1])
    forest = fit_forest(training, held)
    truth_of = {s.image.tobytes(): t for s, t in zip(data.samples, truths, strict=True)}

    def perfect(image):
        return one_hot(truth_of[image.tobytes()])

    def useless(image):
        return one_hot(np.zeros(image.shape[:2], np.int64))

    class Shifted:  # a forest that errs: only evidence on the strokes makes the network replace it
        def predict_proba(self, image):
            return np.roll(forest.predict_proba(image), 12, axis=(1, 2))

    best = choose(perfect, Shifted(), data, held)
    assert best.scores["forest"] < 0.9 and best.choice == "network" and best.scores["network"] == 1.0
    assert best.pixels == held.pixels and best.images == len(held.targets)
    worst = choose(useless, forest, data, held)
    assert worst.choice == "forest" and worst.scores["forest"] > worst.scores["network"]
    assert worst.describe().startswith("forest: held-out mean IoU ")
    assert "network " in worst.describe() and "network+forest average " in worst.describe()
    same = choose(lambda image: forest.predict_proba(image), forest, data, held)
    assert same.choice == "forest"  # a tie keeps the preview the user has seen
    unsure = choose(lambda image: 0.5 * forest.predict_proba(image) + 0.5 / 3, forest, data, held)
    assert unsure.scores["network"] == unsure.scores["forest"]  # the same classes, less sure of them
    assert unsure.choice == "forest" and unsure.log_loss["forest"] < unsure.log_loss["average"]

    def surer(image):  # the forest's classes, sure where they are right
        probabilities = forest.predict_proba(image)
        right = probabilities.argmax(0) == truth_of[image.tobytes()]
        return np.where(right[None], one_hot(probabilities.argmax(0)), probabilities)

    sure = choose(surer, forest, data, held)
    assert sure.scores["network"] == sure.scores["forest"] and sure.log_loss["network"] < sure.log_loss["forest"]
    assert sure.choice == "forest"  # surer inside the strokes is no evidence between them

    nothing = choose(useless, forest, data, dataclasses.replace(held, targets={}))
    assert nothing.choice == "network" and nothing.pixels == 0
    assert "no held-out labels" in nothing.describe()


def test_the_average_mixes_probabilities():
    network = np.array([[[0.9]], [[0.1]]], np.float32)
    forest = np.array([[[0.3]], [[0.7]]], np.float32)
    scores = {"network": 0.5, "average": 0.6, "forest": 0.4}
    average = Selection("average", scores, {}, "strokes", 10, 1)
    np.testing.assert_allclose(average.probabilities(network, forest), [[[0.6]], [[0.4]]])
    assert Selection("forest", scores, {}, "strokes", 10, 1).probabilities(None, forest) is forest
    assert Selection("network", scores, {}, "strokes", 10, 1).probabilities(network, forest) is network


# ---- the forest as numbers ----------------------------------------------------------------------


def test_a_saved_forest_loads_without_pickle_and_predicts_the_same(painted, tmp_path):
    data, _ = painted
    training, held = hold_out(data, [0, 1])
    forest = fit_forest(training, held)
    path = forest.save(tmp_path / "forest.npz")
    with np.load(path, allow_pickle=False) as saved:  # numbers and text: nothing to unpickle
        assert sorted(saved.files) == ["classes", "features", "settings"]
        assert all(saved[name].dtype != object for name in saved.files)
    loaded = PixelClassifier.load(path)
    assert loaded.model is None  # fitted on first use (a worker), not when a run folder is opened
    image = data.samples[0].image
    np.testing.assert_array_equal(loaded.predict_proba(image), forest.predict_proba(image))

    (tmp_path / "broken.npz").write_bytes(b"not a forest")
    with pytest.raises(SchismError, match=r"broken\.npz: not a saved pixel classifier"):
        PixelClassifier.load(tmp_path / "broken.npz")


def test_large_slices_are_predicted_in_bands_that_agree_with_one_pass(painted, monkeypatch):
    data, _ = painted
    forest = PixelClassifier("forest", class_count=3, trees=10).fit(
        [s.image for s in data.samples], [s.mask for s in data.samples]
    )
    image = np.concatenate([data.samples[0].image] * 3, axis=0)  # 288 x 96
    whole = forest.predict_proba(image)
    monkeypatch.setattr(baseline, "BAND_PIXELS", 64 * 96)  # bands of 64 rows, margins of 64
    banded = forest.predict_proba(image)
    assert np.mean(banded.argmax(0) == whole.argmax(0)) > 0.99
    np.testing.assert_allclose(banded, whole, atol=0.15)


# ---- run folders -------------------------------------------------------------------------------


@pytest.fixture
def run_with_choice(trained_run, sample_files, tmp_path):
    """A copy of the trained run, a forest fitted on the sample, and a function writing a choice."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = load_dataset(sample_files.datasets, class_count=3, write_stats=False)
    training, held = hold_out(data, [0, 1, 2, 3], [4])
    forest = fit_forest(training, held)

    def write(choice: str, checkpoint: str = "loss") -> None:
        scores = {"network": 0.5, "average": 0.6, "forest": 0.55}
        Selection(choice, scores, {}, held.mode, 100, 1, checkpoint).write(run, forest)

    return run, forest, write


def test_a_run_folder_predicts_with_its_choice(run_with_choice, sample_files):
    run, forest, write = run_with_choice
    image = tifffile.imread(sample_files.image_2d)
    assert read_selection(run) is None  # the copied run had made no choice
    network = Predictor.from_trained(load_trained_model(run), device="cpu").predict(image)

    write("average")
    trained = load_trained_model(run)
    assert trained.selection.choice == "average" and trained.forest_weight == 0.5 and "average" in trained.source
    mixed = Predictor.from_trained(trained, device="cpu").predict(image)
    expected = 0.5 * network.probabilities + 0.5 * forest.predict_proba(image[..., None])
    np.testing.assert_allclose(mixed.probabilities, expected, atol=1e-5)

    write("forest")
    only_forest = Predictor.from_trained(load_trained_model(run), device="cpu").predict(image)
    np.testing.assert_array_equal(only_forest.labels, forest.predict(image[..., None]))

    write("forest", checkpoint="Jaccard")  # made with other weights: the best-loss network predicts alone
    assert load_trained_model(run).forest is None

    write("network")  # a resumed run choosing again: the earlier forest goes
    assert not (run / FOREST_FILE).exists() and load_trained_model(run).forest_weight == 0.0


def test_predict_from_a_run_folder_uses_its_choice(run_with_choice, sample_files, tmp_path):
    run, forest, write = run_with_choice
    write("forest")
    out = tmp_path / "out"
    arguments = ["predict", "--weights", str(run), "--input", str(sample_files.image_2d), "--out", str(out)]
    assert main([*arguments, "--device", "cpu"]) == 0
    (written,) = [p for p in out.rglob("*.tif")]
    image = tifffile.imread(sample_files.image_2d)
    np.testing.assert_array_equal(tifffile.imread(written), forest.predict(image[..., None]))


def test_a_run_folder_with_an_unreadable_choice_is_one_clear_error(run_with_choice):
    run, _, write = run_with_choice
    (run / SELECTION_FILE).write_text(json.dumps({"choice": "magic"}), encoding="utf-8")
    with pytest.raises(SchismError, match=r"selection.json: choice 'magic' is none of network, average, forest"):
        load_trained_model(run)
    write("average")
    (run / FOREST_FILE).unlink()
    with pytest.raises(SchismError, match=r"forest\.npz: pixel classifier file not found"):
        load_trained_model(run)


def test_an_export_says_it_holds_the_network_alone(run_with_choice, tmp_path, capsys):
    run, _, write = run_with_choice
    write("average")
    assert main(["export", "--weights", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert "predicts with the network+forest average (selection.json); the export holds the network alone" in (
        capsys.readouterr().err
    )


def test_a_corrected_slice_does_not_take_the_other_slices_strokes_nor_outweigh_them(rock):
    """A fully labelled (corrected, reviewed) slice beside scribbled ones: each slice keeps most of its
    own strokes for training, and each slice's held-out pixels weigh the same in the choice."""
    volume, truth = rock
    scribbled = labels_to_mask(scribbles(truth, slices=(1,), strokes_per_class=6), 3)[1]
    data = samples_from_arrays([volume[0], volume[1]], [truth[0].astype(np.uint8), scribbled], class_count=3)
    training, held = hold_out(data, [0, 1])
    for k in range(3):
        painted = np.count_nonzero(scribbled == k)
        kept = np.count_nonzero(training.samples[1].mask == k)
        assert kept >= 0.6 * painted, (k, kept, painted)  # a fifth of the total would have taken them all
    assert set(held.targets) == {0, 1} and np.count_nonzero(held.targets[0] != IGNORE) > 3 * np.count_nonzero(
        held.targets[1] != IGNORE
    )

    def right_on(position):
        """Probabilities right on one slice and wrong (a shifted class) on the other."""

        def predict(image):
            classes = truth[0] if image.tobytes() == data.samples[0].image.tobytes() else truth[1]
            own = image.tobytes() == data.samples[position].image.tobytes()
            return one_hot(classes if own else (classes + 1) % 3)

        return predict

    class Forest:
        predict_proba = staticmethod(right_on(1))

    choice = choose(right_on(0), Forest(), data, held)  # the network: right on the large corrected slice only
    # the slices weigh the same: right on one each, the two score alike (pooled pixels: the network, by far)
    assert abs(choice.scores["network"] - choice.scores["forest"]) < 0.05
    assert choice.choice != "network"  # right on the corrected slice alone is not enough
