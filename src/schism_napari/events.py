"""One progress interface for training and prediction: events passed to a callback, and a stop token.

The CLI turns events into tqdm bars, the napari widgets into progress bars and live curves.
Both run the same core loop, which checks the token between batches and stops cooperatively.

Events are frozen dataclasses rather than strings or dicts so that every consumer reads the same
typed fields, a renamed field fails at type-check time, and an event can cross from the worker
thread to the GUI thread without being mutated on the way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainingStarted:
    """Sent once the data, split and model are ready, before the first batch: consumers size their
    progress bars from it and show where the run folder is."""

    run_dir: Path
    device: str
    first_epoch: int  # 1-based; > 1 when resuming
    epochs: int
    batches_per_epoch: int
    train_samples: int
    val_samples: int


@dataclass(frozen=True)
class BatchEnded:
    """After each optimisation step: drives the per-batch progress bar and the time-left estimate."""

    epoch: int
    batch: int  # 1-based
    batches: int
    loss: float


@dataclass(frozen=True)
class EpochEnded:
    """After validation of each epoch: the numbers for the live curves and the per-epoch summary,
    and which best checkpoints were just written."""

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
    """The last event of a run, whatever ended it (all epochs, early stopping, a stop request), so a
    consumer can always close its bars and report the run folder."""

    run_dir: Path
    epochs_completed: int
    stopped: bool  # True when a stop request or early stopping ended the run
    reason: str
    best: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionProgress:
    """Tiles done out of the whole prediction (all slices), for one progress bar across a stack."""

    done: int  # tiles processed so far
    total: int
    slices_done: int
    slices: int


@dataclass(frozen=True)
class SlicesStored:
    """Slices ``start`` to ``stop - 1`` of a stack streamed to disk are written (napari refreshes
    its layers from the store): the current slice first, then runs of slices as they finish."""

    start: int
    stop: int
    slices_done: int  # slices written so far, this one included
    slices: int  # slices this run writes


@dataclass(frozen=True)
class Message:
    """Something the user should read (a warning about the data, a fallback taken); the core never
    prints, so the CLI and napari each show it their own way."""

    text: str
    level: str = "info"  # "info" or "warning"


Event = TrainingStarted | BatchEnded | EpochEnded | TrainingFinished | PredictionProgress | SlicesStored | Message
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
