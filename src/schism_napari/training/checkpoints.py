"""The weight files a training run keeps in its folder, and the state a resume reads back.

``model_best_<name>.pth`` holds the weights of the best epoch for the validation loss and for each
score; ``last_checkpoint.pth`` holds the last completed epoch: weights, optimizer, scheduler and
scaler states and the :class:`TrainingState`, random states included, so ``--resume`` draws what the
uninterrupted run would have drawn. Every file is written atomically (a full disk leaves the previous
file intact) and read with ``torch.load(weights_only=True)``, so loading never runs code
(:func:`schism_napari.runs.save_weights` and :func:`~schism_napari.runs.load_weights`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..runs import BEST_LOSS, LAST_CHECKPOINT, best_weights_file, load_weights, save_weights

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler


@dataclass
class TrainingState:
    """What a run has reached, and all a checkpoint needs to continue it exactly.

    ``last_checkpoint.pth`` is this state plus the model, optimizer, scheduler and scaler
    states. The random states are taken at the end of each epoch: crop positions (numpy),
    augmentation (a torch generator) and dropout (torch's global generator, and CUDA's), so
    a resumed run draws what the uninterrupted one would have drawn.
    """

    epoch: int = 0  # last completed epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    stale_epochs: int = 0
    numpy_rng: dict[str, Any] | None = None
    torch_rng: torch.Tensor | None = None  # the augmentation generator
    global_torch_rng: torch.Tensor | None = None  # dropout and other torch.rand* calls
    cuda_rng: list[torch.Tensor] | None = None

    def capture_rng(self, rng: np.random.Generator, generator: torch.Generator) -> None:
        """Take the random states: ``rng`` draws crop positions, ``generator`` augmentations."""
        self.numpy_rng = dict(rng.bit_generator.state)
        self.torch_rng = generator.get_state()
        self.global_torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore_rng(self, rng: np.random.Generator, generator: torch.Generator) -> None:
        if self.numpy_rng is not None:
            rng.bit_generator.state = self.numpy_rng
        if self.torch_rng is not None:
            generator.set_state(self.torch_rng)
        if self.global_torch_rng is not None:
            torch.set_rng_state(self.global_torch_rng)
        if self.cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda_rng)

    def checkpoint(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler | None,
        scaler: torch.amp.GradScaler | None,
    ) -> dict[str, Any]:
        """``last_checkpoint.pth``'s contents (``scaler`` None when mixed precision is off)."""
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "stale_epochs": self.stale_epochs,
            "numpy_rng": self.numpy_rng,
            "torch_rng": self.torch_rng,
            "global_torch_rng": self.global_torch_rng,
            "cuda_rng": self.cuda_rng,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainingState:
        return cls(
            epoch=saved["epoch"],
            history=saved["history"],
            best=saved["best"],
            stale_epochs=saved.get("stale_epochs", 0),
            numpy_rng=saved.get("numpy_rng"),
            torch_rng=saved.get("torch_rng"),
            global_torch_rng=saved.get("global_torch_rng"),  # absent in older checkpoints
            cuda_rng=saved.get("cuda_rng"),
        )


class Checkpoints:
    """The weight files of one run folder. ``write`` False (a torchrun process other than rank 0)
    saves nothing: rank 0 alone writes the run folder; every process can read it."""

    def __init__(self, run_dir: Path, *, write: bool = True):
        self.run_dir = Path(run_dir)
        self.write = write

    @property
    def last(self) -> Path:
        return self.run_dir / LAST_CHECKPOINT

    def best_path(self, name: str) -> Path:
        return self.run_dir / best_weights_file(name)

    def save_best(self, names: Iterable[str], model: nn.Module) -> None:
        """The model's weights as the best for each of ``names`` (the loss or score names)."""
        for name in names:
            self._save(self.best_path(name), model.state_dict())

    def save_last(
        self,
        state: TrainingState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler | None,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        self._save(self.last, state.checkpoint(model, optimizer, scheduler, scaler))

    def load_last(self) -> dict[str, Any]:
        """``last_checkpoint.pth`` as saved (restore with :meth:`restore` and the scheduler's state)."""
        return load_weights(self.last)

    @staticmethod
    def restore(
        saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> TrainingState:
        """Weights, optimizer and scaler from a loaded last checkpoint; returns its state (random
        states not yet applied)."""
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler") is not None:
            scaler.load_state_dict(saved["scaler"])
        return TrainingState.from_checkpoint(saved)

    def load_best_loss(self, model: nn.Module) -> None:
        """The best-validation-loss weights into ``model``, if they were written."""
        path = self.best_path(BEST_LOSS)
        if path.is_file():
            model.load_state_dict(load_weights(path))

    def disk_full_hint(self) -> str:
        """What a full disk left usable: files are replaced only when complete, so the last checkpoint
        and the best weights written before are intact."""
        if self.last.is_file():
            return (
                f"the weights and {LAST_CHECKPOINT} saved before are intact: free some space, then continue "
                f"with schism train --resume {self.run_dir}"
            )
        return "free some space there and train again"

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        if self.write:
            save_weights(path, state)
