"""The training loop: SCHISM's run folder, events, stop and resume, schedulers, early stopping,
reproducibility, sparse labels, ignore_background, fine-tuning and binary models."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from schism_napari.config import SchismConfig
from schism_napari.data import load_dataset, samples_from_arrays
from schism_napari.data.dataset import Sample, SegmentationData
from schism_napari.data.io import IGNORE
from schism_napari.data.splits import Split
from schism_napari.errors import SchismError
from schism_napari.events import BatchEnded, EpochEnded, Message, StopToken, TrainingFinished, TrainingStarted
from schism_napari.models import build_model
from schism_napari.training.losses import class_weights_from_counts
from schism_napari.training.trainer import Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INDEX_LINE = re.compile(r"^(rock_a|rock_b), (\d+)$")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(sample_files) -> SegmentationData:
    return load_dataset(sample_files.datasets, class_count=3)


def _small(config: SchismConfig, *, epochs: int = 2, crops_per_image: int = 2, **training) -> SchismConfig:
    """The tiny config on the CPU (exact comparisons), with 2 batches an epoch unless told otherwise."""
    config.training.epochs = epochs
    config.training.device = "cpu"
    config.data.crops_per_image = crops_per_image
    for key, value in training.items():
        setattr(config.training, key, value)
    return config.validate()


class Recorder:
    """A callback that keeps every event, and can ask for a stop at a given batch."""

    def __init__(self, stop_at: tuple[int, int] | None = None, stop: StopToken | None = None):
        self.events: list = []
        self.stop_at, self.stop = stop_at, stop

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, BatchEnded) and (event.epoch, event.batch) == self.stop_at:
            self.stop.request()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _index_lines(run_dir: Path, part: str) -> list[tuple[str, int]]:
    lines = (run_dir / f"{part}_indices.txt").read_text(encoding="utf-8").splitlines()
    parsed = []
    for line in lines:
        match = INDEX_LINE.match(line)
        assert match, f"{part}_indices.txt: {line!r} is not '<dataset>, <index>'"
        parsed.append((match.group(1), int(match.group(2))))
    return parsed


def _assert_same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key].cpu(), second[key].cpu()), key


# ---- the run folder ----------------------------------------------------------------------------


def test_run_writes_every_schism_file(tiny_config, data, tmp_path) -> None:
    config = _small(tiny_config, metrics=["Jaccard", "DiceScore", "ConfusionMatrix"])
    run_dir = tmp_path / "run"
    result = Trainer(config, data, run_dir).run()
    assert result.epochs_completed == 2 and not result.stopped and result.reason == "completed"

    expected = {
        "model_best_loss.pth",
        "model_best_Jaccard.pth",
        "model_best_DiceScore.pth",  # as spelled in the config
        "hyperparameters.ini",
        "data_stats.json",
        "learning_curves.png",
        "confusion_matrix.png",
        "train_indices.txt",
        "val_indices.txt",
        "test_indices.txt",
        "metrics.csv",
        "val_metrics_history.txt",
        "last_checkpoint.pth",
    }
    names = {p.name for p in run_dir.iterdir()}
    assert expected <= names, expected - names
    assert "model_best_Dice.pth" not in names and "model_best_ConfusionMatrix.pth" not in names
    assert not list(run_dir.glob(".*.tmp")) and not [n for n in names if n.startswith(".")]

    # hyperparameters.ini loads back, with the input channels resolved from the data
    saved = SchismConfig.from_ini(run_dir / "hyperparameters.ini")
    assert saved.model.in_channels == 1
    assert saved.model.model_type == "UnetConcat" and saved.model.n_block == 2
    assert saved.training.metrics == ["Jaccard", "DiceScore", "ConfusionMatrix"]
    assert saved.training.epochs == 2 and saved.data.crop_size == 64
    assert result.config.model.in_channels == 1

    stats = json.loads((run_dir / "data_stats.json").read_text(encoding="utf-8"))
    assert {"rock_a", "rock_b", "default"} <= stats.keys()
    for mean, std in stats.values():
        assert len(mean) == len(std) and all(0 <= m <= 1 for m in mean) and all(s > 0 for s in std)

    for picture in ("learning_curves.png", "confusion_matrix.png"):
        content = (run_dir / picture).read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 1000, picture

    # SCHISM's index files: num_samples 8 with val_split 0.75 -> 6 train, 2 val; the other 4 are test
    parts = {part: _index_lines(run_dir, part) for part in ("train", "val", "test")}
    assert [len(parts[p]) for p in ("train", "val", "test")] == [6, 2, 4]
    everything = parts["train"] + parts["val"] + parts["test"]
    assert sorted(everything) == sorted((s.dataset, s.index) for s in data.samples)
    assert parts["train"] == [(data.samples[p].dataset, data.samples[p].index) for p in result.split.train]

    rows = _rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "lr", "Jaccard", "DiceScore", "Jaccard_class2"} <= rows[0].keys()
    assert all(math.isfinite(float(r["val_loss"])) for r in rows)
    history = (run_dir / "val_metrics_history.txt").read_text(encoding="utf-8").splitlines()
    assert len(history) == 2
    assert history[0].startswith("Epoch 1:") and "DiceScore=" in history[1] and "Jaccard=" in history[1]

    # every .pth loads without executing code; the best ones are bare state_dicts of the model
    for path in run_dir.glob("*.pth"):
        torch.load(path, map_location="cpu", weights_only=True)
    checkpoint = torch.load(run_dir / "last_checkpoint.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    for name in ("loss", "Jaccard", "DiceScore"):
        fresh = build_model(saved.model, 1)
        fresh.load_state_dict(torch.load(run_dir / f"model_best_{name}.pth", weights_only=True))
    best = torch.load(run_dir / "model_best_loss.pth", weights_only=True)
    _assert_same_state(result.model.state_dict(), best)  # the result holds the best-loss weights
    assert not result.model.training
    best_epoch = min(result.history, key=lambda r: r["val_loss"])
    assert result.best["loss"] == pytest.approx(best_epoch["val_loss"])


def test_no_confusion_matrix_unless_asked(tiny_config, data, tmp_path) -> None:
    config = _small(tiny_config, epochs=1, crops_per_image=1)
    Trainer(config, data, tmp_path / "run").run()
    assert not (tmp_path / "run" / "confusion_matrix.png").exists()
    assert {"model_best_Jaccard.pth", "model_best_Dice.pth"} <= {p.name for p in (tmp_path / "run").iterdir()}


def test_events_in_order(tiny_config, data, tmp_path) -> None:
    config = _small(tiny_config, metrics=["Jaccard", "DiceScore"])
    recorder = Recorder()
    result = Trainer(config, data, tmp_path / "run", callback=recorder).run()
    training_events = [e for e in recorder.events if not isinstance(e, Message)]
    started, finished = training_events[0], training_events[-1]
    assert isinstance(started, TrainingStarted) and isinstance(finished, TrainingFinished)
    assert len(recorder.of(TrainingStarted)) == 1 and len(recorder.of(TrainingFinished)) == 1
    assert started.first_epoch == 1 and started.epochs == 2
    assert started.batches_per_epoch == 2 and started.train_samples == 6 and started.val_samples == 2
    assert started.device == "cpu"

    batches = recorder.of(BatchEnded)
    assert [(b.epoch, b.batch) for b in batches] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(b.batches == 2 and math.isfinite(b.loss) and b.loss > 0 for b in batches)

    epochs = recorder.of(EpochEnded)
    assert [e.epoch for e in epochs] == [1, 2]
    for event in epochs:
        assert list(event.metrics) == ["Jaccard", "DiceScore"]
        assert all(0 <= v <= 1 for v in event.metrics.values())
        assert {k: len(v) for k, v in event.per_class.items()} == {"Jaccard": 3, "DiceScore": 3}
        assert event.epochs == 2 and math.isfinite(event.val_loss) and event.lr == pytest.approx(0.01)
    assert set(epochs[0].improved) == {"loss", "Jaccard", "DiceScore"}  # the first epoch is always the best so far
    # each epoch's event comes after its batches and before the next epoch's
    order = [(type(e).__name__, getattr(e, "epoch", None)) for e in training_events]
    assert order.index(("EpochEnded", 1)) == order.index(("BatchEnded", 1)) + 2
    assert order.index(("EpochEnded", 1)) < order.index(("BatchEnded", 2))

    assert finished.epochs_completed == 2 and not finished.stopped and finished.reason == "completed"
    assert finished.best == result.best and set(finished.best) == {"loss", "Jaccard", "DiceScore"}
    assert [r["train_loss"] for r in result.history] == pytest.approx(
        [np.mean([b.loss for b in batches if b.epoch == epoch]) for epoch in (1, 2)]
    )


def test_data_and_config_class_counts_must_agree(tiny_config, data, tmp_path) -> None:
    tiny_config.model.num_classes = 4
    with pytest.raises(SchismError, match="3 classes"):
        Trainer(tiny_config, data, tmp_path / "run")


# ---- stop and resume ---------------------------------------------------------------------------


def test_cooperative_stop_keeps_the_best_weights(tiny_config, data, tmp_path) -> None:
    config = _small(tiny_config, epochs=4)
    run_dir = tmp_path / "run"
    stop = StopToken()
    recorder = Recorder(stop_at=(2, 1), stop=stop)
    result = Trainer(config, data, run_dir, callback=recorder, stop=stop).run()

    assert result.stopped and "stop" in result.reason
    assert result.epochs_completed == 1  # the interrupted epoch does not count
    assert [(b.epoch, b.batch) for b in recorder.of(BatchEnded)] == [(1, 1), (1, 2), (2, 1)]
    assert [e.epoch for e in recorder.of(EpochEnded)] == [1]
    finished = recorder.events[-1]
    assert isinstance(finished, TrainingFinished) and finished.stopped and finished.epochs_completed == 1
    assert [r["epoch"] for r in result.history] == [1]

    best = torch.load(run_dir / "model_best_loss.pth", map_location="cpu", weights_only=True)
    fresh = build_model(result.config.model, 1)
    fresh.load_state_dict(best)  # strict: every tensor fits a freshly built model
    checkpoint = torch.load(run_dir / "last_checkpoint.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1
    _assert_same_state(checkpoint["model"], best)  # the best weights are those of epoch 1
    _assert_same_state(result.model.state_dict(), best)
    assert len(_rows(run_dir / "metrics.csv")) == 1
    assert not list(run_dir.glob(".*.tmp"))

    # --resume repeats the interrupted epoch
    recorder = Recorder()
    resumed = Trainer(_small(config, epochs=2), data, run_dir, resume=True, callback=recorder).run()
    assert recorder.of(TrainingStarted)[0].first_epoch == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2] and not resumed.stopped


def test_resume_continues_where_training_ended(tiny_config, data, tmp_path) -> None:
    run_dir = tmp_path / "run"
    Trainer(_small(tiny_config.copy(), epochs=2, crops_per_image=1), data, run_dir).run()
    indices = {p: (run_dir / f"{p}_indices.txt").read_bytes() for p in ("train", "val", "test")}

    recorder = Recorder()
    resumed = Trainer(
        _small(tiny_config.copy(), epochs=4, crops_per_image=1), data, run_dir, resume=True, callback=recorder
    ).run()
    assert recorder.of(TrainingStarted)[0].first_epoch == 3
    assert [e.epoch for e in recorder.of(EpochEnded)] == [3, 4]
    assert {b.epoch for b in recorder.of(BatchEnded)} == {3, 4}
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.epochs_completed == 4 and not resumed.stopped
    assert [int(r["epoch"]) for r in _rows(run_dir / "metrics.csv")] == [1, 2, 3, 4]
    assert {p: (run_dir / f"{p}_indices.txt").read_bytes() for p in indices} == indices
    assert SchismConfig.from_ini(run_dir / "hyperparameters.ini").training.epochs == 4

    # the same as training 4 epochs in one go: weights, optimizer, random streams all restored
    straight = Trainer(_small(tiny_config.copy(), epochs=4, crops_per_image=1), data, tmp_path / "straight").run()
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in resumed.history] == pytest.approx([r[key] for r in straight.history], rel=1e-5)

    # a finished run with no more epochs to train
    with pytest.raises(SchismError, match="already trained 4 of 4 epochs"):
        Trainer(_small(tiny_config.copy(), epochs=4, crops_per_image=1), data, run_dir, resume=True).run()


def test_resume_needs_a_run_folder_of_the_same_data(tiny_config, data, tmp_path) -> None:
    with pytest.raises(SchismError):
        Trainer(_small(tiny_config.copy()), data, tmp_path / "never_trained", resume=True).run()
    run_dir = tmp_path / "run"
    Trainer(_small(tiny_config.copy(), epochs=1, crops_per_image=1), data, run_dir).run()
    other = samples_from_arrays([_layer(data, 12)], [_truth(data, 12)], class_count=3, names=["other"])
    with pytest.raises(SchismError, match="names no image of this dataset"):
        Trainer(_small(tiny_config.copy(), epochs=2), other, run_dir, resume=True).run()


def test_without_validation_images_training_validates_on_the_training_images(tiny_config, data, tmp_path) -> None:
    config = _small(tiny_config, epochs=1, crops_per_image=1, val_split=1.0)
    recorder = Recorder()
    result = Trainer(config, data, tmp_path / "run", callback=recorder).run()
    assert len(result.split.train) == 8 and result.split.val == []
    warnings = [m for m in recorder.of(Message) if m.level == "warning"]
    assert any("validating on the training images" in m.text for m in warnings)
    assert math.isfinite(result.history[0]["val_loss"])
    assert (tmp_path / "run" / "val_indices.txt").read_text(encoding="utf-8") == ""


def test_resume_with_more_epochs_under_one_cycle_lr(tiny_config, data, tmp_path) -> None:
    """SCHISM's sample INI uses OneCycleLR; raising epochs and resuming (what the error message of
    a finished run recommends) must continue training, not crash in the scheduler."""
    tiny_config.scheduler.scheduler = "OneCycleLR"
    run_dir = tmp_path / "run"
    Trainer(_small(tiny_config.copy(), epochs=2, crops_per_image=1), data, run_dir).run()
    resumed = Trainer(_small(tiny_config.copy(), epochs=3, crops_per_image=1), data, run_dir, resume=True).run()
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert all(math.isfinite(r["lr"]) and r["lr"] > 0 for r in resumed.history)


# ---- schedulers --------------------------------------------------------------------------------


def _recording_step(monkeypatch, scheduler_class: type) -> list:
    """Wrap ``scheduler_class.step`` to record (argument, learning rate after the step) per call."""
    calls: list = []
    original = scheduler_class.step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((args[0] if args else None, self.optimizer.param_groups[0]["lr"]))
        return result

    monkeypatch.setattr(scheduler_class, "step", step)
    return calls


def test_one_cycle_lr_steps_every_batch(tiny_config, data, tmp_path, monkeypatch) -> None:
    tiny_config.scheduler.scheduler = "OneCycleLR"
    config = _small(tiny_config, epochs=2)  # 2 batches an epoch: 4 steps in all
    calls = _recording_step(monkeypatch, torch.optim.lr_scheduler.OneCycleLR)
    result = Trainer(config, data, tmp_path / "run").run()
    observed = [lr for _, lr in calls[1:]]  # calls[0] is the scheduler's own initial step
    monkeypatch.undo()

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.01)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=4)
    expected = []
    for _ in range(4):
        optimizer.step()
        reference.step()
        expected.append(optimizer.param_groups[0]["lr"])
    assert observed == pytest.approx(expected)
    assert observed[0] != pytest.approx(observed[1])  # the rate changes within an epoch
    # the history keeps the rate at the end of each epoch: after batches 2 and 4
    assert [r["lr"] for r in result.history] == pytest.approx([expected[1], expected[3]])


def test_step_lr_steps_every_epoch(tiny_config, data, tmp_path) -> None:
    tiny_config.scheduler.scheduler = "StepLR"
    tiny_config.scheduler.interval = "epoch"  # issue 10.5: per batch (SCHISM) unless asked
    tiny_config.scheduler.kwargs = {"step_size": 1, "gamma": 0.5}
    config = _small(tiny_config, epochs=3)  # 2 batches an epoch: stepping per batch would quarter the rate
    result = Trainer(config, data, tmp_path / "run").run()
    assert [r["lr"] for r in result.history] == pytest.approx([0.01, 0.005, 0.0025])


def test_schedulers_step_every_batch_by_default_as_schism(tiny_config, data, tmp_path) -> None:
    tiny_config.scheduler.scheduler = "StepLR"
    tiny_config.scheduler.kwargs = {"step_size": 1, "gamma": 0.5}
    config = _small(tiny_config, epochs=2)  # 2 batches an epoch: the rate is quartered each epoch
    assert config.scheduler.interval == "batch"
    result = Trainer(config, data, tmp_path / "run").run()
    assert [r["lr"] for r in result.history] == pytest.approx([0.01 * 0.25, 0.01 * 0.25**2])


def test_reduce_lr_on_plateau_steps_on_the_validation_loss(tiny_config, data, tmp_path, monkeypatch) -> None:
    tiny_config.scheduler.scheduler = "ReduceLROnPlateau"
    tiny_config.scheduler.kwargs = {"factor": 0.5, "patience": 0}
    config = _small(tiny_config, epochs=2, crops_per_image=1)
    calls = _recording_step(monkeypatch, torch.optim.lr_scheduler.ReduceLROnPlateau)
    result = Trainer(config, data, tmp_path / "run").run()
    assert result.epochs_completed == 2
    assert [value for value, _ in calls] == pytest.approx([r["val_loss"] for r in result.history])


def test_early_stopping_on_a_plateau(tiny_config, data, tmp_path, monkeypatch) -> None:
    """With a learning rate of 1e-12 nothing is learnt; batch-norm statistics still move the
    validation loss a little, so it is pinned to a plateau to make the test exact."""
    original = Trainer.validate

    def flat_validation(self, *args):
        _loss, matrix = original(self, *args)
        return 1.0, matrix

    monkeypatch.setattr(Trainer, "validate", flat_validation)
    tiny_config.optimizer.lr = 1e-12
    config = _small(tiny_config, epochs=4, crops_per_image=1, early_stopping=True, patience=1)
    recorder = Recorder()
    result = Trainer(config, data, tmp_path / "run", callback=recorder).run()
    assert result.stopped and "early stopping" in result.reason
    assert result.epochs_completed == 2 and [r["epoch"] for r in result.history] == [1, 2]
    finished = recorder.of(TrainingFinished)[0]
    assert finished.stopped and "early stopping" in finished.reason
    assert (tmp_path / "run" / "model_best_loss.pth").is_file()


def test_default_patience_is_schisms() -> None:
    config = SchismConfig()
    config.training.epochs = 10
    assert config.training.effective_patience() == 2
    config.training.epochs = 3
    assert config.training.effective_patience() == 1
    config.training.patience = 5
    assert config.training.effective_patience() == 5


# ---- reproducibility ---------------------------------------------------------------------------


def test_seeded_runs_are_reproducible(tiny_config, data, tmp_path) -> None:
    def losses(seed: int, name: str) -> list[tuple[float, float]]:
        config = _small(tiny_config.copy(), epochs=1, seed=seed)
        result = Trainer(config, data, tmp_path / name).run()
        return [(r["train_loss"], r["val_loss"]) for r in result.history]

    first, second = losses(7, "a"), losses(7, "b")
    assert first == second
    assert (tmp_path / "a" / "train_indices.txt").read_text() == (tmp_path / "b" / "train_indices.txt").read_text()
    assert losses(8, "c") != first


# ---- sparse labels, class weights, ignore_background -------------------------------------------


def _layer(data: SegmentationData, count: int = 4) -> np.ndarray:
    """A (Z, Y, X) stack, as a napari image layer, from the first sample slices."""
    return np.stack([s.image[..., 0] for s in data.samples[:count]])


def _truth(data: SegmentationData, count: int = 4) -> np.ndarray:
    return np.stack([s.mask for s in data.samples[:count]])


def test_training_on_unlabelled_images_learns_nothing(tiny_config, data, tmp_path) -> None:
    masks = _truth(data)
    masks[:2] = IGNORE  # the two training slices are not painted at all
    layer_data = samples_from_arrays([_layer(data)], [masks], class_count=3, names=["scan"])
    config = _small(tiny_config, epochs=1, crops_per_image=1, batch_size=4)
    recorder = Recorder()
    result = Trainer(config, layer_data, tmp_path / "run", split=Split([0, 1], [2, 3], []), callback=recorder).run()
    assert [b.loss for b in recorder.of(BatchEnded)] == [0.0]
    assert result.history[0]["train_loss"] == 0.0
    assert math.isfinite(result.history[0]["val_loss"]) and result.history[0]["val_loss"] > 0
    assert _index_lines_of(tmp_path / "run", "train") == ["scan, 0", "scan, 1"]


def _index_lines_of(run_dir: Path, part: str) -> list[str]:
    return (run_dir / f"{part}_indices.txt").read_text(encoding="utf-8").splitlines()


def test_sparse_scribbles_and_class_weights_from_the_training_split(tiny_config, data, tmp_path) -> None:
    truth = _truth(data)
    masks = np.full_like(truth, IGNORE)
    for row in (10, 40, 70):  # a few painted strokes on the training slices
        masks[:2, row : row + 2, 5:90] = truth[:2, row : row + 2, 5:90]
    masks[2:] = truth[2:]  # the validation slices are fully labelled
    layer_data = samples_from_arrays([_layer(data)], [masks], class_count=3, names=["scan"])
    assert layer_data.samples[0].labelled_fraction < 0.1

    tiny_config.loss.weights = True
    config = _small(tiny_config, epochs=1, crops_per_image=2, batch_size=4)
    recorder = Recorder()
    result = Trainer(config, layer_data, tmp_path / "run", split=Split([0, 1], [2, 3], []), callback=recorder).run()
    losses = [b.loss for b in recorder.of(BatchEnded)]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    assert math.isfinite(result.history[0]["val_loss"])

    train_counts = layer_data.class_pixel_counts([0, 1])
    assert int(train_counts.sum()) == int((masks[:2] != IGNORE).sum())
    expected = "class weights: " + ", ".join(f"{w:.3g}" for w in class_weights_from_counts(train_counts).tolist())
    all_counts = layer_data.class_pixel_counts([0, 1, 2, 3])
    from_everything = ", ".join(f"{w:.3g}" for w in class_weights_from_counts(all_counts).tolist())
    assert expected != "class weights: " + from_everything  # the test can tell the two apart
    messages = [m.text for m in recorder.of(Message) if "class weights" in m.text]
    assert messages == [expected]


def test_ignore_background_is_schisms_gray_zero_background(tiny_config, data, tmp_path) -> None:
    """SCHISM's meaning: num_classes counts the foreground classes, gray 0 is an unlabeled background
    (masks 0/85/170/255 for 3 classes); the classes themselves all count in loss and metrics."""
    import tifffile

    from schism_napari.data.io import gray_levels

    truth = _truth(data)
    stored = gray_levels(4)[truth.astype(np.int64) + 1].astype(np.uint8)
    stored[:2] = 0  # the training slices are all background
    folder = tmp_path / "datasets" / "scan"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for z, image in enumerate(_layer(data)):
        tifffile.imwrite(folder / "images" / f"{z:02d}.tif", image)
        tifffile.imwrite(folder / "masks" / f"{z:02d}.tif", stored[z])
    with pytest.raises(SchismError, match="ignore_background = True"):
        load_dataset(tmp_path / "datasets", class_count=3)  # four gray levels are not three classes
    read = load_dataset(tmp_path / "datasets", class_count=3, ignore_background=True)
    masks = np.stack([s.mask for s in read.samples])
    assert (masks[:2] == IGNORE).all()
    np.testing.assert_array_equal(masks[2:], truth[2:])

    config = _small(tiny_config.copy(), epochs=1, crops_per_image=1, batch_size=4)
    config.loss.ignore_background = True
    recorder = Recorder()
    Trainer(config, read, tmp_path / "run", split=Split([0, 1], [2, 3], []), callback=recorder).run()
    assert [b.loss for b in recorder.of(BatchEnded)] == [0.0]  # nothing but background to learn from
    epoch = recorder.of(EpochEnded)[0]
    for name in ("Jaccard", "Dice"):  # class 0 is a real class now: it counts in the mean
        per_class = [v for v in epoch.per_class[name] if math.isfinite(v)]
        assert len(per_class) == 3
        assert epoch.metrics[name] == pytest.approx(np.mean(per_class))


# ---- fine-tuning and binary models -------------------------------------------------------------


def test_fine_tuning_starts_from_the_given_weights(tiny_config, data, trained_run, tmp_path) -> None:
    weights = torch.load(trained_run / "model_best_loss.pth", map_location="cpu", weights_only=True)
    config = _small(tiny_config, epochs=1, crops_per_image=1)
    tuned = Trainer(config, data, tmp_path / "tuned", initial_weights=weights).run()
    scratch = Trainer(config, data, tmp_path / "scratch").run()
    assert tuned.history[0]["val_loss"] < 0.8 * scratch.history[0]["val_loss"]
    assert tuned.history[0]["Jaccard"] > scratch.history[0]["Jaccard"]


def test_fine_tuning_refuses_weights_of_another_architecture(tiny_config, data, trained_run, tmp_path) -> None:
    weights = torch.load(trained_run / "model_best_loss.pth", map_location="cpu", weights_only=True)
    deeper = _small(tiny_config.copy(), epochs=1)
    deeper.model.n_block = 3
    with pytest.raises(SchismError, match="do not fit"):
        Trainer(deeper, data, tmp_path / "deeper", initial_weights=weights).run()
    smp_config = _small(tiny_config.copy(), epochs=1)
    smp_config.model.model_type = "Unet"
    with pytest.raises(SchismError, match="do not fit"):
        Trainer(smp_config, data, tmp_path / "smp", initial_weights=weights).run()


def test_binary_training(tiny_config, data, tmp_path) -> None:
    binary = SegmentationData(
        [Sample(s.dataset, s.index, s.image, (s.mask == 2).astype(np.uint8), s.source) for s in data.samples],
        class_count=2,
        in_channels=1,
        stats=data.stats,
    )
    tiny_config.model.num_classes = 2
    config = _small(tiny_config, metrics=["Jaccard", "Dice", "AveragePrecision", "ConfusionMatrix"])
    run_dir = tmp_path / "run"
    result = Trainer(config, binary, run_dir).run()
    assert result.epochs_completed == 2

    with torch.no_grad():
        assert result.model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)  # one logit channel
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "model_best_loss.pth",
        "model_best_Jaccard.pth",
        "model_best_Dice.pth",
        "model_best_AveragePrecision.pth",
        "confusion_matrix.png",
    } <= names
    rows = _rows(run_dir / "metrics.csv")
    assert len(rows) == 2
    assert {"Jaccard_class0", "Jaccard_class1", "AveragePrecision_class1"} <= rows[0].keys()
    assert "Jaccard_class2" not in rows[0]
    for row in rows:
        assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
        for name in ("Jaccard", "Dice", "AveragePrecision"):
            assert 0 <= float(row[name]) <= 1
    assert SchismConfig.from_ini(run_dir / "hyperparameters.ini").model.num_classes == 2
