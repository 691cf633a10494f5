"""The workflows layer: one path from a training or prediction request to its result.

The command line, the napari dock and the demo build requests and call
:mod:`schism_napari.workflows`; none assembles a Trainer or a Predictor itself, and the same
training request gives the same run folder from both entry points.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import schism_napari
from conftest import TINY_INI
from schism_napari.cli import main
from schism_napari.config import SchismConfig
from schism_napari.errors import ConfigError, SchismError
from schism_napari.events import StopToken, ignore_events
from schism_napari.workflows import (
    DatasetFolder,
    InferenceOverrides,
    PredictRequest,
    TrainRequest,
    build_predictors,
    dataset_options,
    planar,
    train,
)

PACKAGE = Path(schism_napari.__file__).parent
FRONT_ENDS = [
    *sorted((PACKAGE / "cli").glob("*.py")),  # the commands, the demo and the main job
    *sorted((PACKAGE / "_widgets").glob("*.py")),
]
# what only the workflows (and the engines) may build
ENGINE_BUILDERS = {
    "Trainer",
    "Predictor",
    "EnsemblePredictor",
    "TriPlanarPredictor",
    "planar_predictor",
    "from_trained",
}


def _called_names(source: str) -> list[tuple[int, str]]:
    """(line, name) of every call whose callee is a name or attribute (``X(...)``, ``a.X(...)``)."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name is not None:
                calls.append((node.lineno, name))
    return calls


def test_front_ends_build_no_trainer_or_predictor_themselves():
    """Training and prediction are assembled in schism_napari.workflows only: a front end that
    builds a Trainer or a Predictor (or an ensemble, or tri-planar consensus) has its own copy again."""
    assert len(FRONT_ENDS) > 5
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}(...)"
        for path in FRONT_ENDS
        for line, name in _called_names(path.read_text(encoding="utf-8"))
        if name in ENGINE_BUILDERS
    ]
    assert not found, "build these through schism_napari.workflows:\n" + "\n".join(found)


# Engine internals that build their own parts, and why (the only places outside workflows/):
ENGINE_INTERNALS = {
    "training/per_class.py": "a per-class run trains one binary member per class and predicts with them",
    "inference/distributed.py": "each dask worker rebuilds the predictor from the run folder it is sent",
    "inference/ensemble.py": "comparing members also scores their ensemble, made of the predictors given",
    "inference/planes.py": "planar_predictor wraps the predictor it is given in tri-planar consensus",
}


def test_nothing_but_the_workflows_builds_a_trainer_or_predictor():
    """The whole package: outside workflows/, only the engine internals named above build a Trainer
    or a Predictor, and each still does so (an entry here that no longer builds anything goes)."""
    builders: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where.startswith("workflows/"):
            continue
        found = [f"{line}: {name}(...)" for line, name in _called_names(path.read_text(encoding="utf-8"))]
        found = [call for call in found if call.split(": ")[1][:-5] in ENGINE_BUILDERS]
        if found:
            builders[where] = found
    assert set(builders) == set(ENGINE_INTERNALS), builders


def test_the_grep_test_would_see_a_direct_construction():
    source = "def f(t):\n    Trainer(c, d, r).run()\n    return Predictor.from_trained(t)\n"
    assert {name for _, name in _called_names(source)} >= {"Trainer", "from_trained"}


def _normalized(value):
    """JSON without what depends on time, paths, weights or the machine's free cores (the dock leaves
    one to the GUI)."""
    if isinstance(value, dict):
        return {
            k: _normalized(v)
            for k, v in value.items()
            if not any(word in k for word in ("second", "time", "path", "run_dir", "score", "log_loss", "summary"))
            and k not in ("per_class", "threads")
        }
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def test_the_cli_and_the_dock_write_the_same_run_folder(sample_files, tmp_path):
    """One training request through ``schism train`` and through the dock's worker function: the
    same files (plan.json and selection.json included) with the same configuration, plan and split."""
    from schism_napari._widgets.session import TrainingSources
    from schism_napari._widgets.training import _train

    ini = tmp_path / "tiny.ini"
    ini.write_text(TINY_INI.replace("epochs = 4", "epochs = 1"), encoding="utf-8")
    cli_run, dock_run = tmp_path / "cli", tmp_path / "dock"
    assert main(["train", "--data", str(sample_files.datasets), "--config", str(ini), "--out", str(cli_run)]) == 0
    sources = TrainingSources(SchismConfig.from_ini(ini), sample_files.datasets, [], [], [], [], None, None)
    result, *_ = _train(sources, dock_run, None, None, callback=ignore_events, stop=StopToken())
    assert result.run_dir == dock_run

    files = sorted(p.name for p in cli_run.iterdir())
    assert files == sorted(p.name for p in dock_run.iterdir())
    assert {"plan.json", "selection.json", "hyperparameters.ini", "run_info.json", "model_best_loss.pth"} <= set(files)
    for name in files:
        if name.endswith(".json"):
            cli_json = json.loads((cli_run / name).read_text(encoding="utf-8"))
            dock_json = json.loads((dock_run / name).read_text(encoding="utf-8"))
            assert _normalized(cli_json) == _normalized(dock_json), name
        elif name.endswith((".ini", ".txt")) and name != "val_metrics_history.txt":
            assert (cli_run / name).read_text(encoding="utf-8") == (dock_run / name).read_text(encoding="utf-8"), name


# ---- training ----------------------------------------------------------------------------------


def test_dataset_options_are_the_configs():
    config = SchismConfig.from_ini_string(
        TINY_INI.replace("loss = CrossEntropyLoss", "loss = CrossEntropyLoss\nignore_background = True"), source="t.ini"
    )
    config.data.planes = "xyz"
    options = dataset_options(config)
    assert options == {"class_count": 3, "ignore_index": 255, "in_channels": None, "ignore_background": True}
    assert dataset_options(config, in_channels=2, planes=True) == {**options, "in_channels": 2, "planes": "xyz"}


def test_a_request_without_plan_or_choice_trains_the_config_as_given(sample_files, tmp_path):
    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.epochs = 1
    source = DatasetFolder(sample_files.datasets, config, planes=False)
    outcome = train(TrainRequest(config, source, tmp_path / "run", planned=False, held_out=False))
    assert outcome.plan is None and outcome.selection is None and outcome.model is None
    assert outcome.result is not None and outcome.result.epochs_completed == 1
    assert not (tmp_path / "run" / "plan.json").exists() and not (tmp_path / "run" / "selection.json").exists()
    assert outcome.data.class_count == 3


def test_a_request_with_held_out_labels_chooses_and_returns_the_model(sample_files, tmp_path):
    from schism_napari.data import load_dataset

    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.set_given("Training", "epochs", 1)
    data = load_dataset(sample_files.datasets, **dataset_options(config))
    outcome = train(TrainRequest(config, data, tmp_path / "run", interactive=True))
    assert outcome.run_dir == tmp_path / "run" and outcome.plan is not None
    assert outcome.selection is not None and outcome.model is not None and outcome.predictor is not None
    assert outcome.model.selection is outcome.selection
    assert (outcome.run_dir / "selection.json").is_file() and (outcome.run_dir / "plan.json").is_file()


# ---- prediction --------------------------------------------------------------------------------


def test_inference_overrides_set_and_validate_the_given_values(tiny_config):
    settings = tiny_config.inference
    InferenceOverrides(tile_size=48, tta=True, planes="xyz", voxel_ratio=2.0).apply(settings)
    assert (settings.tile_size, settings.tta, settings.planes, settings.voxel_ratio) == (48, True, "xyz", 2.0)
    assert settings.overlap == 0.25  # not given: the run's
    with pytest.raises(ConfigError, match="command line"):
        InferenceOverrides(overlap=2.0).apply(tiny_config.inference)


def test_one_run_predicts_alone_several_as_an_ensemble(trained_run):
    from schism_napari.inference import Predictor
    from schism_napari.inference.ensemble import EnsemblePredictor

    one = build_predictors(PredictRequest(runs=[trained_run], device="cpu", set_threads=False))
    assert isinstance(one.predictor, Predictor) and one.each == [one.predictor]
    assert one.first.class_count == 3 and one.names == [str(trained_run)]
    both = build_predictors(PredictRequest(runs=[trained_run], model=one.first, device="cpu", set_threads=False))
    assert isinstance(both.predictor, EnsemblePredictor) and len(both.each) == 2
    assert both.names == [one.first.source, str(trained_run)]
    with pytest.raises(SchismError, match="nothing to predict with"):
        build_predictors(PredictRequest())


def test_planar_wraps_only_for_xyz(trained_run, tmp_path):
    from schism_napari.inference.planes import TriPlanarPredictor

    built = build_predictors(PredictRequest(runs=[trained_run], device="cpu", set_threads=False))
    settings = built.first.config.inference
    assert planar(built.predictor, settings) is built.predictor
    settings.planes, settings.voxel_ratio = "xyz", 1.0
    assert isinstance(planar(built.predictor, settings, slab_depth=4), TriPlanarPredictor)
    with pytest.raises(SchismError, match="video"):
        planar(built.predictor, settings, source=tmp_path / "clip.mp4")
