"""The typed configuration: SCHISM INI files load as they are, round trip, and bad values give clear errors."""

from __future__ import annotations

import pytest

from conftest import SCHISM_README_INI
from schism_napari.config import (
    ARCHITECTURES,
    SMP_ARCHITECTURES,
    SchismConfig,
    canonical_metric,
)
from schism_napari.errors import ConfigError
from schism_napari.plumbing.atomic import OutputExistsError


def load(text: str, source: str = "test.ini") -> SchismConfig:
    return SchismConfig.from_ini_string(text, source=source)


def config_error(text: str, source: str = "test.ini") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, source)
    return info.value


# ---- SCHISM's own INI ----------------------------------------------------------------------


def test_schism_readme_ini_loads_verbatim():
    config = load(SCHISM_README_INI, source="schism_readme.ini")
    assert config.model.model_type == "UnetSegmentor"
    assert config.model.n_block == 5
    assert config.model.channels == 8
    assert config.model.num_classes == 3
    assert config.model.k_size == 3
    assert config.model.activation == "leakyrelu"
    assert config.optimizer.optimizer == "Adam"
    assert config.optimizer.kwargs == {}
    assert config.scheduler.scheduler == "ConstantLR"
    assert config.scheduler.kwargs == {}
    assert config.training.batch_size == 4
    assert config.training.val_split == pytest.approx(0.8)
    assert config.training.epochs == 3
    assert config.training.metrics == ["DiceScore"]  # kept as the user spelled it
    assert canonical_metric(config.training.metrics[0]) == "Dice"
    assert config.training.score_metrics() == ["DiceScore"]
    assert config.data.crop_size == 128
    assert config.data.img_res == 560
    assert config.data.num_samples == 70
    assert config.scale == pytest.approx(560 / 128)
    assert config.warnings == []
    assert config.source == "schism_readme.ini"
    # typed, not strings
    assert isinstance(config.model.n_block, int)
    assert isinstance(config.training.val_split, float)


def test_schism_readme_ini_loads_from_file(tmp_path):
    path = tmp_path / "hyperparameters.ini"
    path.write_text(SCHISM_README_INI, encoding="utf-8")
    config = SchismConfig.from_ini(path)
    assert config == load(SCHISM_README_INI)
    assert config.source == str(path)


def test_metrics_comma_list():
    config = load("[Training]\nmetrics = Jaccard,F1,Accuracy\n")
    assert config.training.metrics == ["Jaccard", "F1", "Accuracy"]
    assert [canonical_metric(m) for m in config.training.metrics] == ["Jaccard", "Dice", "Accuracy"]


def test_metrics_confusion_matrix_is_not_a_score():
    config = load("[Training]\nmetrics = Jaccard, ConfusionMatrix\n")
    assert config.training.metrics == ["Jaccard", "ConfusionMatrix"]
    assert config.training.score_metrics() == ["Jaccard"]


def test_unknown_metric_suggests_nearest():
    error = config_error("[Training]\nmetrics = Jacard\n")
    assert (error.section, error.key, error.value) == ("Training", "metrics", "Jacard")
    assert "'Jaccard'" in str(error)


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("unetsegmentor", "UnetSegmentor"),
        ("UNETVANILLA", "UnetVanilla"),
        ("unet", "Unet"),
        ("deeplabv3plus", "DeepLabV3Plus"),
        ("Unet++", "UnetPlusPlus"),
        ("unet++", "UnetPlusPlus"),
        ("DeepLabV3+", "DeepLabV3Plus"),
    ],
)
def test_model_type_case_insensitive_and_aliases(spelled, canonical):
    assert load(f"[Model]\nmodel_type = {spelled}\n").model.model_type == canonical


def test_all_architectures_accepted():
    assert len(SMP_ARCHITECTURES) == 11
    assert {"UnetVanilla", "UnetSegmentor"} <= set(ARCHITECTURES)
    for name in (*SMP_ARCHITECTURES, "UnetVanilla", "UnetSegmentor"):
        assert load(f"[Model]\nmodel_type = {name}\n").model.model_type == name


def test_dinov2_rejected_because_it_needs_downloads():
    error = config_error("[Model]\nmodel_type = DINOv2\n")
    assert (error.section, error.key, error.value) == ("Model", "model_type", "DINOv2")
    assert "download" in str(error).lower()
    assert "UnetSegmentor" in str(error)  # says what is allowed instead


def test_unknown_model_type_suggests_nearest():
    error = config_error("[Model]\nmodel_type = UnetSegmentr\n")
    assert "did you mean 'UnetSegmentor'" in str(error)


# ---- round trip ----------------------------------------------------------------------------

FULL_INI = """\
[Model]
model_type = Unet
num_classes = 4
in_channels = 3
encoder = resnet34
n_block = 3
channels = 16
k_size = 5
activation = gelu
p = 0.2

[Optimizer]
optimizer = AdamW
lr = 0.0005
weight_decay = 0.01
betas = (0.9, 0.99)

[Scheduler]
scheduler = ReduceLROnPlateau
factor = 0.5
mode = min

[Loss]
loss = CrossEntropyLoss + 0.5*DiceLoss
ignore_background = True
weights = True
label_smoothing = 0.1

[Training]
batch_size = 2
epochs = 7
val_split = 0.75
early_stopping = True
patience = 3
metrics = Jaccard, F1, Accuracy, ConfusionMatrix
seed = 42
device = cpu
amp = False
grad_clip = 1.5

[Data]
crop_size = 96
img_res = 128
num_samples = 33
crops_per_image = 3
ignore_index = 200
augment = False
intensity_jitter = 0.25

[Inference]
tile_size = 160
overlap = 0.5
batch_size = 2
blending = constant
tta = True
threshold = 0.3
"""


def test_round_trip_keeps_every_value_and_kwargs():
    config = load(FULL_INI)
    assert config.optimizer.kwargs == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert config.scheduler.kwargs == {"factor": 0.5, "mode": "min"}
    assert config.loss.kwargs == {"label_smoothing": 0.1}
    assert config.loss.terms() == [(1.0, "CrossEntropyLoss"), (0.5, "DiceLoss")]
    text = config.to_ini_string()
    again = load(text)
    assert again == config
    assert again.optimizer.kwargs == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert isinstance(again.optimizer.kwargs["betas"], tuple)
    assert again.scheduler.kwargs["mode"] == "min"
    assert again.loss.loss == "CrossEntropyLoss + 0.5*DiceLoss"
    assert again.training.metrics == ["Jaccard", "F1", "Accuracy", "ConfusionMatrix"]
    assert again.inference.tile_size == 160
    # and a second trip is stable text
    assert again.to_ini_string() == text


def test_round_trip_of_defaults_and_of_schism_readme():
    for config in (SchismConfig().validate(), load(SCHISM_README_INI)):
        assert load(config.to_ini_string()) == config


def test_round_trip_detects_a_change():
    config = load(FULL_INI)
    changed = load(config.to_ini_string())
    changed.optimizer.kwargs["weight_decay"] = 0.02
    assert changed != config


def test_to_ini_writes_atomically_and_refuses_to_overwrite(tmp_path):
    config = load(FULL_INI)
    target = tmp_path / "hyperparameters.ini"
    assert config.to_ini(target) == target
    assert SchismConfig.from_ini(target) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyperparameters.ini"]  # no temporary files left

    other = load(SCHISM_README_INI)
    with pytest.raises(OutputExistsError):
        other.to_ini(target)
    assert SchismConfig.from_ini(target) == config  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyperparameters.ini"]

    other.to_ini(target, overwrite=True)
    assert SchismConfig.from_ini(target) == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyperparameters.ini"]


# ---- errors --------------------------------------------------------------------------------


def test_typo_key_suggests_nearest():
    error = config_error("[Training]\nbatch_sise = 4\n")
    assert (error.section, error.key, error.value) == ("Training", "batch_sise", 4)
    message = str(error)
    assert message.startswith("test.ini: ")
    assert "[Training]" in message and "batch_sise" in message and "4" in message
    assert "did you mean 'batch_size'" in message


def test_unknown_optimizer_kwarg():
    error = config_error("[Optimizer]\noptimizer = Adam\nlearnig_rate = 0.1\n")
    assert (error.section, error.key, error.value) == ("Optimizer", "learnig_rate", 0.1)
    assert "[Optimizer]" in str(error) and "learnig_rate" in str(error) and "0.1" in str(error)
    assert "weight_decay" in str(error)  # lists what Adam takes


def test_unknown_scheduler_kwarg():
    error = config_error("[Scheduler]\nscheduler = StepLR\nstep_size = 2\ngama = 0.5\n")
    assert (error.section, error.key) == ("Scheduler", "gama")
    assert "did you mean 'gamma'" in str(error)


def test_unknown_loss_kwarg():
    error = config_error("[Loss]\nloss = CrossEntropyLoss\nlabel_smothing = 0.1\n")
    assert (error.section, error.key) == ("Loss", "label_smothing")
    assert "label_smoothing" in str(error)


@pytest.mark.parametrize(
    ("text", "section", "key", "value", "expected"),
    [
        ("[Training]\nepochs = ten\n", "Training", "epochs", "ten", "whole number"),
        ("[Training]\nepochs = 2.5\n", "Training", "epochs", 2.5, "whole number"),
        ("[Training]\nval_split = high\n", "Training", "val_split", "high", "number"),
        ("[Data]\naugment = maybe\n", "Data", "augment", "maybe", "True or False"),
        ("[Training]\nval_split = 1.5\n", "Training", "val_split", 1.5, "between"),
        ("[Training]\nval_split = 0\n", "Training", "val_split", 0, "between"),
        ("[Inference]\noverlap = 0.95\n", "Inference", "overlap", 0.95, "between 0.0 and 0.9"),
        ("[Training]\nbatch_size = 0\n", "Training", "batch_size", 0, ">= 1"),
        ("[Model]\nk_size = 4\n", "Model", "k_size", 4, "odd"),
        ("[Model]\nactivation = swish\n", "Model", "activation", "swish", "relu"),
        ("[Inference]\nblending = linear\n", "Inference", "blending", "linear", "gaussian"),
        ("[Training]\ndevice = gpu\n", "Training", "device", "gpu", "cuda"),
    ],
)
def test_bad_values_name_section_key_and_value(text, section, key, value, expected):
    error = config_error(text)
    assert (error.section, error.key, error.value) == (section, key, value)
    message = str(error)
    assert f"[{section}] {key} = {value!r}" in message
    assert expected in message


def test_unknown_section_suggests_nearest():
    error = config_error("[Trainng]\nepochs = 3\n")
    assert error.section == "Trainng"
    assert "[Trainng]" in str(error)
    assert "did you mean 'Training'" in str(error)


def test_unknown_loss_suggests_nearest():
    error = config_error("[Loss]\nloss = CrossEntropyLos\n")
    assert (error.section, error.key, error.value) == ("Loss", "loss", "CrossEntropyLos")
    assert "did you mean 'CrossEntropyLoss'" in str(error)


def test_loss_aliases_and_weighted_sum():
    config = load("[Loss]\nloss = ce + 0.25*dice\n")
    assert config.loss.loss == "CrossEntropyLoss + 0.25*DiceLoss"
    assert config.loss.terms() == [(1.0, "CrossEntropyLoss"), (0.25, "DiceLoss")]


def test_loss_term_weight_must_be_positive():
    error = config_error("[Loss]\nloss = CrossEntropyLoss + 0*DiceLoss\n")
    assert (error.section, error.key) == ("Loss", "loss")
    assert "> 0" in str(error)


@pytest.mark.parametrize("name", ["LambdaLR", "lambdalr", "SequentialLR"])
def test_scheduler_needing_a_callable_is_rejected(name):
    error = config_error(f"[Scheduler]\nscheduler = {name}\n")
    assert (error.section, error.key, error.value) == ("Scheduler", "scheduler", name)
    message = str(error)
    assert "callable" in message
    assert "StepLR" in message  # names what is allowed
    assert message.count("allowed:") == 1, message  # one clean list, not "allowed: allowed: ..."


def test_scheduler_missing_required_kwarg_is_rejected():
    error = config_error("[Scheduler]\nscheduler = StepLR\n")
    assert (error.section, error.key) == ("Scheduler", "step_size")
    assert "StepLR" in str(error)
    config = load("[Scheduler]\nscheduler = StepLR\nstep_size = 2\ngamma = 0.5\n")
    assert config.scheduler.kwargs == {"step_size": 2, "gamma": 0.5}


def test_one_cycle_without_max_lr_is_accepted():
    config = load("[Scheduler]\nscheduler = onecyclelr\n")
    assert config.scheduler.scheduler == "OneCycleLR"
    assert config.scheduler.kwargs == {}


def test_scheduler_none_keeps_rate_constant_and_refuses_kwargs():
    assert load("[Scheduler]\nscheduler = None\n").scheduler.scheduler is None
    error = config_error("[Scheduler]\nscheduler = None\nfactor = 0.5\n")
    assert (error.section, error.key) == ("Scheduler", "factor")


def test_encoder_weights_a_local_file_or_a_name_smp_downloads():
    # issue 7 point 7 changed this: imagenet (any name smp accepts) goes through smp's download cache
    assert load("[Model]\nmodel_type = Unet\nencoder_weights = imagenet\n").model.encoder_weights == "imagenet"
    error = config_error("[Model]\nmodel_type = Unet\nencoder_weights = imagenett\n")
    assert (error.section, error.key, error.value) == ("Model", "encoder_weights", "imagenett")
    assert "download" in str(error)
    config = load("[Model]\nmodel_type = Unet\nencoder_weights = /weights/encoder.pth\n")
    assert config.model.encoder_weights == "/weights/encoder.pth"


def test_ignore_index_must_not_be_a_class():
    error = config_error("[Model]\nnum_classes = 3\n[Data]\nignore_index = 2\n")
    assert (error.section, error.key, error.value) == ("Data", "ignore_index", 2)
    assert "3" in str(error)
    assert load("[Model]\nnum_classes = 3\n[Data]\nignore_index = 3\n").data.ignore_index == 3


@pytest.mark.parametrize(
    "text",
    [
        "[Training]\nepochs = 3\nepochs = 4\n",
        "epochs = 3\n[Training]\nbatch_size = 2\n",
        "[Training]\nepochs = 3\n[Training]\nbatch_size = 2\n",
        "[Training\nepochs = 3\n",
    ],
    ids=["duplicate-key", "no-section-header", "duplicate-section", "broken-header"],
)
def test_malformed_ini_gives_config_error(text):
    error = config_error(text, source="broken.ini")
    assert "broken.ini" in str(error)
    assert "not a valid INI file" in str(error)
    assert "Traceback" not in str(error)


def test_missing_ini_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "settings.ini"
    with pytest.raises(ConfigError) as info:
        SchismConfig.from_ini(missing)
    assert str(missing) in str(info.value)


def test_data_augmentation_section_is_ignored_with_a_warning():
    config = load(SCHISM_README_INI + "\n[Data_augmentation]\nflip = True\nrotation = 90\n")
    assert len(config.warnings) == 1
    assert "Data_augmentation" in config.warnings[0]
    assert config == load(SCHISM_README_INI)  # nothing else changes


@pytest.mark.parametrize("num_classes", [1, 2])
def test_binary_models(num_classes):
    config = load(f"[Model]\nnum_classes = {num_classes}\n")
    assert config.model.binary is True
    assert config.model.class_count == 2


def test_multiclass_model_is_not_binary():
    config = load("[Model]\nnum_classes = 3\n")
    assert config.model.binary is False
    assert config.model.class_count == 3


def test_copy_is_independent():
    config = load(FULL_INI)
    clone = config.copy()
    assert clone == config
    clone.optimizer.kwargs["weight_decay"] = 0.5
    clone.training.metrics.append("Recall")
    assert config.optimizer.kwargs["weight_decay"] == 0.01
    assert "Recall" not in config.training.metrics
