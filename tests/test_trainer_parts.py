"""The Trainer's parts that stand alone: the time budget's arithmetic and clock, and the weight
files of a run folder (issue 21: the Trainer's budget and checkpoints in modules of their own)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from schism_napari.runs import LAST_CHECKPOINT, load_weights
from schism_napari.training.budget import TimeBudget
from schism_napari.training.checkpoints import Checkpoints, TrainingState

CPU = torch.device("cpu")


def test_no_budget_is_never_spent_and_an_empty_one_is() -> None:
    assert not TimeBudget(None, CPU).spent()
    assert TimeBudget(0.0, CPU).spent()


def test_the_budget_buys_epochs_and_steps_from_measured_times() -> None:
    budget = TimeBudget(1.0, CPU)  # 57 s after the reserve, 55 s after the final steps
    epochs, steps = budget.fit(step_seconds=0.1, epoch_end_seconds=1.0, max_epochs=100)
    assert epochs == 5  # epoch ends take at most a tenth of the time
    assert 98 <= steps <= 100  # the rest: (55 / 5 - 1) s of 0.1 s steps
    assert budget.fit(step_seconds=0.1, epoch_end_seconds=1.0, max_epochs=3)[0] == 3
    # slow steps: fewer, longer epochs rather than epochs of too few steps
    assert TimeBudget(1.0, CPU).fit(step_seconds=5.0, epoch_end_seconds=1.0, max_epochs=100) == (2, 5)


def test_measuring_a_save_leaves_no_file(tmp_path) -> None:
    budget = TimeBudget(1.0, CPU)
    assert budget.measure_save(nn.Linear(2, 2), None) == 0.0  # a process that writes nothing
    assert budget.measure_save(nn.Linear(2, 2), tmp_path) > 0
    assert not any(tmp_path.iterdir())


def test_checkpoints_write_only_on_the_writing_process(tmp_path) -> None:
    model = nn.Linear(2, 2)
    Checkpoints(tmp_path, write=False).save_best(["loss", "Dice"], model)
    assert not any(tmp_path.iterdir())
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save_best(["loss", "Dice"], model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_best_Dice.pth", "model_best_loss.pth"]
    other = nn.Linear(2, 2)
    checkpoints.load_best_loss(other)
    assert torch.equal(other.weight, model.weight)


def test_the_last_checkpoint_restores_the_training_state(tmp_path) -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    rng, generator = np.random.default_rng(1), torch.Generator().manual_seed(1)
    state = TrainingState(epoch=3, history=[{"epoch": 3, "val_loss": 0.5}], best={"loss": 0.5}, stale_epochs=1)
    state.capture_rng(rng, generator)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save_last(state, model, optimizer, None, None)
    assert list(load_weights(tmp_path / LAST_CHECKPOINT)) == [
        *("model", "optimizer", "scheduler", "scaler", "epoch", "history", "best", "stale_epochs"),
        *("numpy_rng", "torch_rng", "global_torch_rng", "cuda_rng"),
    ]
    expected = rng.random(), float(torch.rand(1, generator=generator))
    again = nn.Linear(2, 2)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    restored = Checkpoints.restore(checkpoints.load_last(), again, torch.optim.AdamW(again.parameters()), scaler)
    assert (restored.epoch, restored.best, restored.stale_epochs) == (3, {"loss": 0.5}, 1)
    assert torch.equal(again.weight, model.weight)
    restored.restore_rng(rng, generator)
    assert (rng.random(), float(torch.rand(1, generator=generator))) == expected
