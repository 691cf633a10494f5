"""Issue 7: the plan from the data, steps per epoch and the time budget, class-aware and scribble
crops, exact resume with dropout, and the classical yardstick (``evaluate --baseline``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from conftest import SCHISM_README_INI, TINY_INI
from schism_napari.cli import main
from schism_napari.config import ConfigError, SchismConfig
from schism_napari.data import load_dataset, samples_from_arrays
from schism_napari.data.crops import CropSampler
from schism_napari.data.io import IGNORE
from schism_napari.events import BatchEnded
from schism_napari.runs import load_weights
from schism_napari.training.budget import TimeBudget
from schism_napari.training.planning import PLAN_FILE, infer_class_count, interactive_config, plan_config
from schism_napari.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(sample_files):
    return load_dataset(sample_files.datasets, class_count=3)


def _tiny(**training) -> SchismConfig:
    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.device = "cpu"
    for key, value in training.items():
        setattr(config.training, key, value)
    return config.validate()


# ---- the plan ------------------------------------------------------------------------------------


def test_plan_without_an_ini_chooses_every_key_with_a_reason(data) -> None:
    plan = plan_config(SchismConfig(), data, "cpu")
    config = plan.config
    assert (config.model.model_type, config.model.encoder) == ("Unet", "resnet18")
    assert config.data.crop_size == 96 == config.data.img_res  # the sample's 96 px slices, no resize
    assert config.loss.loss == "CrossEntropyLoss + DiceLoss"
    assert (config.optimizer.optimizer, config.scheduler.scheduler) == ("AdamW", "OneCycleLR")
    assert config.training.time_budget == 4.0 and config.data.class_crops > 0
    for key in ("Model.model_type", "Data.crop_size", "Training.batch_size", "Loss.loss", "Training.time_budget"):
        assert plan.reasons[key]
    assert plan.fingerprint is not None and plan.fingerprint.images == len(data.samples)
    assert len(plan.fingerprint.class_fractions) == 3 and not plan.fingerprint.sparse
    # the widgets wait less; on an accelerator the crops grow (capped by the image side here)
    assert plan_config(SchismConfig(), data, "cpu", interactive=True).config.training.time_budget == 1.5
    assert plan_config(SchismConfig(), data, "cuda").config.model.encoder == "resnet34"


def test_plan_keeps_what_the_user_set() -> None:
    text = "[Model]\nnum_classes = 3\n[Optimizer]\noptimizer = Adam\n[Data]\ncrop_size = 64\n"
    plan = plan_config(SchismConfig.from_ini_string(text), None, "cpu")
    config = plan.config
    assert config.data.crop_size == 64 and config.data.img_res == 64  # no resize unless asked
    assert config.optimizer.optimizer == "Adam" and config.optimizer.lr == 1e-3  # SCHISM's lr for a named optimizer
    assert "Data.crop_size" not in plan.reasons and "Optimizer.lr" not in plan.reasons


def test_schism_readme_ini_keeps_its_meaning() -> None:
    readme = SchismConfig.from_ini_string(SCHISM_README_INI)
    planned = plan_config(readme, None, "cpu").config
    for section, key in [tuple(k.split(".")) for k in readme.given]:
        assert getattr(planned.section(section), key) == getattr(readme.section(section), key), key
    # epochs are set: a SCHISM run (one crop per image per epoch, no time budget, resized to 560)
    assert planned.training.time_budget is None and planned.data.crops_per_image == 1
    assert planned.data.img_res == 560 and planned.training.steps_per_epoch is None
    literal = SchismConfig.from_ini_string(SCHISM_README_INI.replace("epochs=3", "epochs=3\nschism_defaults=True"))
    assert plan_config(literal, None, "cpu").config == literal  # the switch: SCHISM's literal defaults


def test_interactive_config_is_the_plan_with_a_short_budget() -> None:
    config = interactive_config()
    assert config.model.model_type == "Unet" and config.training.time_budget == 1.5
    assert config.data.img_res == config.data.crop_size
    assert config.training.metrics == ["Jaccard", "Dice"]


def test_the_docks_first_values_need_no_torch_and_equal_the_checked_plan() -> None:
    from schism_napari.config import STARTING_SCHEDULERS, scheduler_names

    assert interactive_config("cpu", check=False) == interactive_config("cpu")
    assert set(STARTING_SCHEDULERS) <= set(scheduler_names())  # the form's choices before torch is imported


def test_new_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"\[Scheduler\] interval = .hourly.: batch or epoch"):
        SchismConfig.from_ini_string("[Scheduler]\ninterval = hourly\n")
    with pytest.raises(ConfigError, match=r"time_budget"):
        SchismConfig.from_ini_string("[Training]\ntime_budget = 0\n")
    with pytest.raises(ConfigError, match=r"encoder_weights = .?weights.bin"):
        SchismConfig.from_ini_string("[Model]\nencoder_weights = weights.bin\n")
    assert SchismConfig.from_ini_string("[Model]\nencoder_weights = imagenet\n").model.encoder_weights == "imagenet"


def test_classes_come_from_the_masks(sample_files) -> None:
    assert infer_class_count(sample_files.datasets) == 3


# ---- steps and budget ----------------------------------------------------------------------------


def test_an_epoch_is_a_number_of_steps(data, tmp_path) -> None:
    events: list = []
    config = _tiny(epochs=2, steps_per_epoch=3)
    Trainer(config, data, tmp_path / "run", callback=events.append).run()
    batches = [e for e in events if isinstance(e, BatchEnded)]
    assert [(e.epoch, e.batch, e.batches) for e in batches] == [
        (1, 1, 3),
        (1, 2, 3),
        (1, 3, 3),
        (2, 1, 3),
        (2, 2, 3),
        (2, 3, 3),
    ]


def test_the_time_budget_plans_the_steps_and_ends_in_time(data, tmp_path) -> None:
    budget = 0.1  # minutes
    config = _tiny(epochs=3, time_budget=budget)
    plan = plan_config(config, data, "cpu")
    started = time.perf_counter()
    result = Trainer(plan.config, data, tmp_path / "run", plan=plan).run()
    elapsed = time.perf_counter() - started
    assert elapsed < budget * 60 + 5  # ends near its budget (a few seconds for the last validation)
    assert elapsed > budget * 60 * 0.4  # and uses it: the steps were sized to the measured step time
    steps = result.config.training.steps_per_epoch
    assert steps is not None and steps >= 1 and result.epochs_completed >= 1
    saved = SchismConfig.from_ini(tmp_path / "run" / "hyperparameters.ini")
    assert saved.training.steps_per_epoch == steps  # the run can be repeated
    written = json.loads((tmp_path / "run" / PLAN_FILE).read_text(encoding="utf-8"))
    assert "measured" in written["planned"]["Training.steps_per_epoch"]["reason"]


# ---- crops ---------------------------------------------------------------------------------------


def _rare_class_data():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (4, 128, 128)).astype(np.float32)
    mask = np.zeros((4, 128, 128), dtype=np.uint8)
    mask[:, 64:, :] = 1
    mask[:, 10:14, 100:104] = 2  # 16 pixels of 16384: a rare phase
    return samples_from_arrays([image], [mask], class_count=3)


def _share_with(data, value: int, class_share: float, sparse: bool = False) -> float:
    sampler = CropSampler(data, range(len(data.samples)), 32, np.random.default_rng(1), class_share)
    hits = [bool((sampler.crop(p % len(data.samples))[1] == value).any()) for p in range(400)]
    return float(np.mean(hits))


def test_class_aware_crops_find_rare_classes() -> None:
    data = _rare_class_data()
    uniform, aware = _share_with(data, 2, 0.0), _share_with(data, 2, 1.0)
    assert uniform < 0.1
    assert aware > 0.25 and aware > uniform + 0.2


def test_scribble_crops_cover_painted_pixels() -> None:
    data = _rare_class_data()
    for sample in data.samples:  # three short strokes instead of a dense mask
        sparse = np.full(sample.mask.shape, IGNORE, dtype=np.uint8)
        sparse[5, 5:25], sparse[100, 40:60], sparse[12, 100:104] = 0, 1, 2
        sample.mask = sparse
    sampler = CropSampler(data, range(4), 32, np.random.default_rng(1))
    covered = np.mean([(sampler.crop(p % 4)[1] != IGNORE).any() for p in range(200)])
    assert covered >= 0.75


# ---- resume --------------------------------------------------------------------------------------


def test_resume_with_dropout_equals_an_uninterrupted_run(data, tmp_path) -> None:
    def config(epochs: int) -> SchismConfig:
        c = _tiny(epochs=epochs, steps_per_epoch=2)
        c.model.p = 0.5  # dropout draws from torch's global generator
        return c

    Trainer(config(2), data, tmp_path / "whole").run()
    Trainer(config(1), data, tmp_path / "parts").run()
    Trainer(config(2), data, tmp_path / "parts", resume=True).run()
    whole = load_weights(tmp_path / "whole" / "last_checkpoint.pth")["model"]
    parts = load_weights(tmp_path / "parts" / "last_checkpoint.pth")["model"]
    for key, tensor in whole.items():
        assert torch.equal(tensor, parts[key]), key


# ---- CLI -----------------------------------------------------------------------------------------


def test_train_without_num_classes_plans_and_writes_plan_json(sample_files, tmp_path, capsys) -> None:
    ini = tmp_path / "no_classes.ini"
    ini.write_text(TINY_INI.replace("num_classes = 3\n", "").replace("epochs = 4\n", ""), encoding="utf-8")
    run = tmp_path / "run"
    code = main(
        ["train", "--data", str(sample_files.datasets), "--config", str(ini), "--out", str(run), "--minutes", "0.05"]
    )
    assert code == 0
    saved = SchismConfig.from_ini(run / "hyperparameters.ini")
    assert saved.model.num_classes == 3 and saved.training.time_budget == 0.05
    assert saved.model.model_type == "UnetConcat" and saved.data.crop_size == 64  # the INI's keys
    plan = json.loads((run / PLAN_FILE).read_text(encoding="utf-8"))
    assert "masks" in plan["planned"]["Model.num_classes"]["reason"]
    assert "Model.model_type" in plan["given"]


def test_evaluate_baseline_prints_lda_and_forest_beside_the_network(trained_run, sample_files, capsys) -> None:
    code = main(
        [
            "evaluate",
            "--weights",
            str(trained_run),
            "--data",
            str(sample_files.datasets),
            "--split",
            "val",
            "--baseline",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    table = out.split("pixel classifiers")[1].splitlines()
    header = table[1].split()
    assert header == ["IoU", "network", "lda", "forest"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in table[2:] if line.strip()}
    assert set(rows) >= {"mean"} and len(rows) == 4  # three classes and the mean
    assert all(0.0 <= v <= 1.0 for values in rows.values() for v in values)
    assert rows["mean"][2] > 0.3  # the forest learns the synthetic phases


def test_imagenet_weights_offline_is_one_clear_error(monkeypatch) -> None:
    """encoder_weights = imagenet goes through smp's download; offline that is one line naming the key."""
    from schism_napari.errors import SchismError
    from schism_napari.models import build_model
    from schism_napari.plumbing.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import segmentation_models_pytorch as smp

    asked = {}

    def offline(*args, **kwargs):
        asked.update(kwargs)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(smp, "create_model", offline)
    config = SchismConfig.from_ini_string("[Model]\nmodel_type = Unet\nencoder_weights = imagenet\n").model
    with pytest.raises(SchismError, match=r"\[Model\] encoder_weights = imagenet: .*local"):
        build_model(config, 1)
    assert asked["encoder_weights"] == "imagenet"  # smp's own download cache, not ours


def test_slow_epoch_ends_mean_fewer_epochs_not_fewer_steps(data, tmp_path, monkeypatch) -> None:
    """Validation and saving the weights take seconds on a CPU: a short budget spends at most a tenth
    of its time on epoch ends, so it plans fewer epochs (validation points) and keeps its steps."""
    monkeypatch.setattr(TimeBudget, "measure_save", lambda self, model, folder: 0.5)  # a slow disk
    config = _tiny(epochs=3, time_budget=0.1)
    plan = plan_config(config, data, "cpu")
    result = Trainer(plan.config, data, tmp_path / "run", plan=plan).run()
    assert result.config.training.epochs == 1 and result.epochs_completed == 1
    assert "per epoch end" in plan.reasons["Training.steps_per_epoch"]
    assert not (tmp_path / "run" / ".save_probe.pth").exists()
