"""SCHISM's own weight files: strict loading, SCHISM's forward, SCHISM's inference path.

tests/data/schism was written once by SCHISM's own code (see its README.md): tiny UnetSegmentor
and UnetVanilla run folders, an 8-bit image in SCHISM's inference layout, and the outputs of
SCHISM's classes (eval mode, its always-on dropout switched off) and of its inference pipeline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from schism_napari.config import ModelConfig
from schism_napari.errors import SchismError
from schism_napari.inference import Predictor
from schism_napari.models import build_model
from schism_napari.runs import load_trained_model, load_weights
from schism_napari.runs.schism import SchismInput, is_schism_run, locate_run

DATA = Path(__file__).parent / "data" / "schism"
STAMP = "01-12-26-22-50-00"
EXPECTED = np.load(DATA / "schism_expected.npz")


def run_folder(name: str) -> Path:
    return DATA / "runs" / name / f"{name}__{STAMP}"


def schism_image() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(DATA / "data" / "rock" / "images" / "slice_000.tif"))


@pytest.mark.parametrize(
    ("name", "num_classes", "out"),
    [("UnetSegmentor", 3, 3), ("UnetVanilla", 2, 1)],
)
def test_schism_weights_load_strictly_and_give_schism_forward(name, num_classes, out):
    state = load_weights(run_folder(name) / "model_best_Jaccard.pth")
    config = ModelConfig(model_type=name, num_classes=num_classes, n_block=2, channels=4)
    config.activation = "leakyrelu" if name == "UnetSegmentor" else "relu"
    model = build_model(config, 3)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(EXPECTED[f"{name}_input"]))
    assert logits.shape[1] == out
    np.testing.assert_allclose(logits.numpy(), EXPECTED[f"{name}_logits"], atol=1e-5)


def test_dropout_only_while_training():
    model = build_model(ModelConfig(model_type="UnetSegmentor", num_classes=3, n_block=2, channels=4, p=0.5), 1)
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # deterministic, and gray is replicated to 3 channels
        model.train()
        assert not torch.equal(model(x), model(x))


def test_gray_input_is_replicated_to_rgb():
    model = build_model(ModelConfig(model_type="UnetVanilla", num_classes=3, n_block=2, channels=4), 1).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("name", ["UnetSegmentor", "UnetVanilla"])
def test_schism_run_folder_predicts_what_schism_predicts(name):
    holder = DATA / "runs" / name  # the folder SCHISM was given, holding the timestamped run
    assert locate_run(holder) == run_folder(name)
    assert is_schism_run(run_folder(name))
    trained = load_trained_model(holder, "Jaccard", dataset="rock")
    assert isinstance(trained.model, SchismInput)
    predictor = Predictor.from_trained(trained, device="cpu")
    labels = predictor.predict(schism_image(), keep_probabilities=False).labels
    levels = np.round(np.linspace(0, 255, trained.class_count)).astype(np.uint8)
    np.testing.assert_array_equal(levels[labels], EXPECTED[f"{name}_prediction"])
    assert len(np.unique(labels)) == trained.class_count  # every class occurs: the test can fail


def test_folder_with_two_schism_runs_is_ambiguous(tmp_path):
    for stamp in ("01-12-26-22-50-00", "02-12-26-10-00-00"):
        shutil.copytree(run_folder("UnetVanilla"), tmp_path / f"UnetVanilla__{stamp}")
    with pytest.raises(SchismError, match="holds 2 SCHISM runs"):
        load_trained_model(tmp_path, "Jaccard")


def test_schism_weights_that_do_not_fit_are_one_line_errors(tmp_path):
    run = tmp_path / f"UnetSegmentor__{STAMP}"
    shutil.copytree(run_folder("UnetSegmentor"), run)
    ini = run / "Hyperparameters.ini"
    ini.write_text(ini.read_text().replace("channels = 4", "channels = 8"))
    with pytest.raises(SchismError, match="do not fit SCHISM's UnetSegmentor"):
        load_trained_model(run, "Jaccard")


def test_weights_written_here_have_schism_names_and_shapes():
    """A UnetSegmentor trained here saves exactly the keys and shapes SCHISM's class has."""
    state = load_weights(run_folder("UnetSegmentor") / "model_best_Jaccard.pth")
    config = ModelConfig(model_type="UnetSegmentor", num_classes=3, n_block=2, channels=4, activation="leakyrelu")
    ours = build_model(config, 1).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}


def test_legacy_run_folder_with_schism_name_loads_the_concat_unet(tmp_path):
    """Run folders written before SCHISM's networks were rebuilt say UnetSegmentor but hold UnetConcat."""
    from schism_napari.config import SchismConfig
    from schism_napari.runs import HYPERPARAMETERS, save_weights

    config = SchismConfig()
    config.model = ModelConfig(model_type="UnetConcat", num_classes=3, n_block=2, channels=4)
    legacy = build_model(config.model, 1)
    save_weights(tmp_path / "model_best_loss.pth", legacy.state_dict())
    config.model.model_type = "UnetSegmentor"
    config.to_ini(tmp_path / HYPERPARAMETERS)
    (tmp_path / "data_stats.json").write_text('{"default": [[0.5], [0.2]]}')
    (tmp_path / "run_info.json").write_text('{"in_channels": 1}')
    trained = load_trained_model(tmp_path)
    assert type(trained.model).__name__ == "UNet"
    assert trained.config.model.model_type == "UnetConcat"


def test_augmented_hyperparameters_ini_loads_without_its_results_section():
    from schism_napari.config import SchismConfig

    path = run_folder("UnetSegmentor") / "Augmented_hyperparameters.ini"
    assert "[Results]" in path.read_text()
    config = SchismConfig.from_ini(path)
    assert config.model.model_type == "UnetSegmentor" and config.model.n_block == 2
    assert any("[Results]" in w and "Augmented_hyperparameters.ini" in w for w in config.warnings)


def test_cli_predicts_a_schism_inference_folder_in_schism_layout(tmp_path):
    """`schism predict --weights <SCHISM run> --input <data> --layout schism` writes what SCHISM writes,
    under --out instead of inside the input folder."""
    import tifffile

    from schism_napari.cli import main

    data = DATA / "data"
    before = sorted(p.name for p in (data / "rock").iterdir())
    for name in ("UnetSegmentor", "UnetVanilla"):
        out = tmp_path / name
        args = ["predict", "--weights", str(DATA / "runs" / name), "--input", str(data), "--out", str(out)]
        assert main([*args, "--metric", "Jaccard", "--layout", "schism", "--device", "cpu"]) == 0
        written = out / "rock" / "preds_Jaccard" / "slice_000_Jaccard.tif"
        np.testing.assert_array_equal(tifffile.imread(written), EXPECTED[f"{name}_prediction"])
        assert main([*args, "--metric", "Jaccard", "--layout", "schism", "--device", "cpu"]) == 2  # never replaced
    assert sorted(p.name for p in (data / "rock").iterdir()) == before  # nothing written into the input


def test_schism_sample_is_readable_by_both_programs(tmp_path):
    import tifffile

    from schism_napari.config import SchismConfig
    from schism_napari.data import load_dataset
    from schism_napari.sample import write_sample

    ours = write_sample(tmp_path / "ours", slices=2, size=64)
    theirs = write_sample(tmp_path / "theirs", slices=2, size=64, schism=True)
    images = sorted(theirs.datasets.glob("*/images/*.tif"))
    masks = sorted(theirs.datasets.glob("*/masks/*.tif"))
    assert images and all(tifffile.imread(p).dtype == np.uint8 for p in images)
    assert set(np.unique(np.concatenate([tifffile.imread(p).ravel() for p in masks]))) <= {0, 128, 255}
    assert tifffile.imread(ours.datasets / "rock_a" / "images" / "slice_000.tif").dtype == np.uint16
    # the same classes, read back by this project
    a, b = (load_dataset(f.datasets, class_count=3, write_stats=False) for f in (ours, theirs))
    for left, right in zip(a.samples, b.samples, strict=True):
        np.testing.assert_array_equal(left.mask, right.mask)
    config = SchismConfig.from_ini(theirs.config)
    assert config.model.model_type == "UnetSegmentor" and config.loss.loss == "CrossEntropyLoss"
    assert "[Inference]" not in theirs.config.read_text()  # only SCHISM's sections
    test_images = sorted((theirs.schism_test / "rock_test" / "images").glob("*.tif"))
    assert len(test_images) == 2 and tifffile.imread(test_images[0]).shape == (64, 64)


def test_cli_evaluates_a_schism_run_folder(tmp_path, capsys):
    """`schism evaluate` on SCHISM's run (the folder holding it) and index files: masks equal to
    SCHISM's own prediction score 1 on every class."""
    import tifffile

    from schism_napari.cli import main

    holder = tmp_path / "schism_out"
    shutil.copytree(DATA / "runs" / "UnetSegmentor", holder)
    run = locate_run(holder)
    for part, line in (("train", ""), ("val", ""), ("test", "rock, 0\n")):
        (run / f"{part}_indices.txt").write_text(line)
    dataset = tmp_path / "data" / "rock"
    shutil.copytree(DATA / "data" / "rock" / "images", dataset / "images")
    (dataset / "masks").mkdir()
    tifffile.imwrite(dataset / "masks" / "slice_000.tif", EXPECTED["UnetSegmentor_prediction"])
    code = main(["evaluate", "--weights", str(holder), "--data", str(tmp_path / "data"), "--metric", "Jaccard"])
    assert code == 0
    report = capsys.readouterr().out
    assert "test split: 1 images" in report
    rows = {line.split()[0] + line.split()[1]: line.split()[-5:] for line in report.splitlines() if "class" in line}
    for name, pixels in (("class0", 954), ("class1", 1499), ("class2", 1643)):  # SCHISM's own class counts
        line = next(line for line in report.splitlines() if line.replace(" ", "").startswith(name))
        assert int(line.split()[2]) == pixels
        assert rows[name] == ["1.0000"] * 5


@pytest.mark.parametrize("name", ["UnetSegmentor", "UnetVanilla"])
def test_schism_networks_train_here_and_save_schism_files(name, tiny_config, sample_files, tmp_path):
    """Trained by this project, SCHISM's networks learn and their best weights keep SCHISM's keys,
    so they load strictly into the networks SCHISM builds from the same hyperparameters."""
    from schism_napari.data import load_dataset
    from schism_napari.training.trainer import Trainer

    config = tiny_config.copy()
    config.model.model_type, config.model.p = name, 0.1
    config.training.epochs, config.training.device = 3, "cpu"
    config.validate()
    data = load_dataset(sample_files.datasets, class_count=3)
    result = Trainer(config, data, tmp_path / "run").run()
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < losses[0]
    state = load_weights(tmp_path / "run" / "model_best_loss.pth")
    schism_like = build_model(config.model, 3)  # SCHISM builds from hyperparameters, 3 input channels
    schism_like.load_state_dict(state, strict=True)
    trained = load_trained_model(tmp_path / "run")  # this project's run folder: its own input path
    assert not isinstance(trained.model, SchismInput) and trained.in_channels == 1


def test_checkpoints_of_the_folder_holding_a_schism_run_are_listed():
    """What the napari Prediction tab lists when pointed at the folder SCHISM was given."""
    from schism_napari.runs import available_weights

    assert set(available_weights(DATA / "runs" / "UnetSegmentor")) == {"Jaccard", "loss"}
    assert set(available_weights(DATA / "runs" / "UnetVanilla")) == {"Jaccard"}
