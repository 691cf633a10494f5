"""Ensembles of runs (averaged probabilities) and per-class one-vs-rest runs with a stacker."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from conftest import TINY_INI, PointwiseModel
from schism_napari.cli import build_parser, main
from schism_napari.config import InferenceConfig
from schism_napari.data.normalization import Normalization
from schism_napari.errors import SchismError
from schism_napari.inference import Predictor
from schism_napari.inference.ensemble import EnsemblePredictor, compare_members
from schism_napari.inference.planes import TriPlanarPredictor
from schism_napari.runs import load_trained_model, load_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def predictor(seed: int, classes: int = 3, tile_size: int = 32) -> Predictor:
    return Predictor(
        PointwiseModel(classes=classes, seed=seed), class_count=max(2, classes), in_channels=1,
        normalization=Normalization((0.4,), (0.2,)), settings=InferenceConfig(tile_size=tile_size), device="cpu",
    )  # fmt: skip


def stack(shape=(4, 40, 36)) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 60000, size=shape).astype(np.uint16)


def test_ensemble_is_the_mean_of_its_members():
    members = [predictor(0), predictor(1), predictor(2, tile_size=24)]
    image = stack()
    each = [m.predict(image).probabilities for m in members]
    result = EnsemblePredictor(members).predict(image)
    expected = sum(each) / 3
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.argmax(axis=1))
    assert not np.array_equal(result.labels, members[0].predict(image).labels)


def test_weighted_ensemble_and_single_member():
    members = [predictor(0), predictor(1)]
    image = stack()[0]
    a, b = (m.predict(image).probabilities for m in members)
    weighted = EnsemblePredictor(members, weights=[3, 1]).predict(image)
    np.testing.assert_allclose(weighted.probabilities, 0.75 * a + 0.25 * b, atol=1e-6)
    np.testing.assert_array_equal(
        EnsemblePredictor(members[:1]).predict(image).labels, members[0].predict(image).labels
    )


def test_ensemble_refuses_members_with_other_classes():
    with pytest.raises(SchismError, match="disagree on the number of classes"):
        EnsemblePredictor([predictor(0, classes=3), predictor(1, classes=4)])


def test_ensemble_streams_into_outputs_and_combines_with_planes():
    members = [predictor(0), predictor(1)]
    image = stack()
    labels = np.zeros(image.shape, np.uint8)
    EnsemblePredictor(members).predict(image, keep_probabilities=False, labels_out=labels)
    np.testing.assert_array_equal(labels, EnsemblePredictor(members).predict(image).labels)
    # pointwise members: tri-planar consensus of the ensemble equals the ensemble
    tri = TriPlanarPredictor(EnsemblePredictor(members)).predict(image)
    np.testing.assert_array_equal(tri.labels, labels)


@pytest.fixture(scope="module")
def second_run(sample_files, tmp_path_factory):
    """Another tiny run: other seed, so its mistakes differ from trained_run's."""
    from schism_napari.config import SchismConfig
    from schism_napari.data import load_dataset
    from schism_napari.training.trainer import Trainer

    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.epochs, config.training.seed = 4, 1
    run_dir = tmp_path_factory.mktemp("runs") / "second"
    Trainer(config, load_dataset(sample_files.datasets, class_count=3), run_dir).run()
    return run_dir


def test_cli_predict_with_several_runs_averages_their_probabilities(trained_run, second_run, sample_files, tmp_path):
    volume = str(sample_files.volume)
    name = sample_files.volume.stem
    for run, out in ((trained_run, "a"), (second_run, "b")):
        assert main(["predict", "--weights", str(run), "--input", volume, "--out", str(tmp_path / out),
                     "--probabilities"]) == 0  # fmt: skip
    assert main(["predict", "--weights", str(trained_run), str(second_run), "--input", volume,
                 "--out", str(tmp_path / "both"), "--probabilities"]) == 0  # fmt: skip
    a, b, both = (tifffile.imread(tmp_path / o / f"{name}_probabilities.tif") for o in ("a", "b", "both"))
    np.testing.assert_allclose(both, (a + b) / 2, atol=1e-5)
    labels = tifffile.imread(tmp_path / "both" / f"{name}_labels.tif")
    np.testing.assert_array_equal(labels, ((a + b) / 2).argmax(axis=1))


def test_cli_evaluate_reports_each_member_and_the_ensemble(trained_run, second_run, sample_files, tmp_path, capsys):
    table = tmp_path / "table.csv"
    assert main(["evaluate", "--weights", str(trained_run), str(second_run), "--data", str(sample_files.datasets),
                 "--split", "all", "--csv", str(table)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"== {trained_run}" in printed and f"== {second_run}" in printed and "== ensemble" in printed
    rows = table.read_text().splitlines()
    assert rows[0].startswith("model,class,pixels,Jaccard")
    assert len(rows) == 1 + 3 * 4  # (3 classes + mean) for two members and the ensemble
    # the member rows are what evaluate gives for that run alone
    assert (
        main(["evaluate", "--weights", str(trained_run), "--data", str(sample_files.datasets), "--split", "all"]) == 0
    )
    single = capsys.readouterr().out.splitlines()
    mean_single = float(next(line for line in single if line.startswith("mean")).split()[2])
    mean_row = next(r for r in rows if r.startswith(f"{trained_run},mean,"))
    assert float(mean_row.split(",")[3]) == pytest.approx(mean_single, abs=1e-4)
    # the ensemble handler returns its exit status itself (main's `or 0` hid the None it returned)
    arguments = build_parser().parse_args(["evaluate", "--weights", str(trained_run), str(second_run),
                                           "--data", str(sample_files.datasets), "--split", "all"])  # fmt: skip
    assert arguments.handler(arguments) == 0


def test_compare_members_times_and_scores(trained_run, sample_files):
    from schism_napari.data import load_dataset

    trained = load_trained_model(trained_run)
    member = Predictor.from_trained(trained, device="cpu")
    data = load_dataset(sample_files.datasets, class_count=3, write_stats=False)
    comparison = compare_members([member, member], ["a", "b"], data, [0, 1], trained.class_names)
    assert comparison.names == ["a", "b", "ensemble"]
    same = [e.matrix.mean("Jaccard") for e in comparison.evaluations]
    assert same[0] == pytest.approx(same[1]) == pytest.approx(same[2])  # identical members: same scores
    assert all(s > 0 for s in comparison.seconds)


def test_per_class_run_loads_and_predicts_like_any_run(sample_files, tmp_path):
    from schism_napari.config import SchismConfig
    from schism_napari.models.per_class import PerClassModel

    ini = tmp_path / "tiny.ini"
    ini.write_text(TINY_INI.replace("epochs = 4", "epochs = 2"))
    run = tmp_path / "per_class"
    assert main(["train", "--data", str(sample_files.datasets), "--config", str(ini), "--out", str(run),
                 "--per-class"]) == 0  # fmt: skip
    info = json.loads((run / "run_info.json").read_text())
    assert info["kind"] == "per_class" and len(info["members"]) == 3
    assert all((run / m / "model_best_loss.pth").is_file() for m in info["members"])
    state = load_weights(run / "model_best_loss.pth")  # weights_only
    assert any(k.startswith("stacker.") for k in state) and any(k.startswith("members.2.") for k in state)
    trained = load_trained_model(run)
    assert isinstance(trained.model, PerClassModel) and trained.class_count == 3
    image = tifffile.imread(sample_files.volume)
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(run), "--input", str(sample_files.volume), "--out", str(out)]) == 0
    labels = tifffile.imread(out / f"{sample_files.volume.stem}_labels.tif")
    expected = Predictor.from_trained(trained, device="cpu").predict(image).labels
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) <= {0, 1, 2}
    ground_truth = tifffile.imread(sample_files.volume_labels)
    assert (labels == ground_truth).mean() > 0.5
    config = SchismConfig.from_ini(run / "hyperparameters.ini")
    assert config.model.num_classes == 3
