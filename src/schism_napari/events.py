"""One progress interface for training and prediction: events passed to a callback, and a stop token.

The CLI turns events into tqdm bars, the napari widgets into progress bars and live curves.
Both run the same core loop, which checks the token between batches and stops cooperatively.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainingStarted:
    run_dir: Path
    device: str
    first_epoch: int  # 1-based; > 1 when resuming
    epochs: int
    batches_per_epoch: int
    train_samples: int
    val_samples: int


@dataclass(frozen=True)
class BatchEnded:
    epoch: int
    batch: int  # 1-based
    batches: int
    loss: float


@dataclass(frozen=True)
class EpochEnded:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    metrics: dict[str, float]  # validation metrics, mean over classes, by the names in the config
    per_class: dict[str, list[float]]
    lr: float
    seconds: float
    improved: tuple[str, ...] = ()  # names of the checkpoints written this epoch ("loss", metric names)


@dataclass(frozen=True)
class TrainingFinished:
    run_dir: Path
    epochs_completed: int
    stopped: bool  # True when a stop request or early stopping ended the run
    reason: str
    best: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionProgress:
    done: int  # tiles processed so far
    total: int
    slices_done: int
    slices: int


@dataclass(frozen=True)
class Message:
    text: str
    level: str = "info"  # "info" or "warning"


Event = TrainingStarted | BatchEnded | EpochEnded | TrainingFinished | PredictionProgress | Message
ProgressCallback = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """Default callback."""


class StopToken:
    """A thread-safe flag the UI sets and the core loop polls between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        self._event.clear()
