"""Terminal progress for the command line and the headless demo: core events -> tqdm bars.

Its own module so that ``cli`` and ``launch`` both use it without importing each other.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import events


class TqdmProgress:
    """Turns core events into tqdm bars and one summary line per epoch."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        if isinstance(event, events.TrainingStarted):
            self.write(
                f"training on {event.device}: {event.train_samples} training / {event.val_samples} validation images, "
                f"{event.batches_per_epoch} batches per epoch -> {event.run_dir}"
            )
        elif isinstance(event, events.BatchEnded):
            if self.bar is None:
                self.bar = self._tqdm(
                    total=event.batches, desc=f"epoch {event.epoch}", unit="batch", leave=False, disable=None
                )
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.loss:.4f}")
        elif isinstance(event, events.EpochEnded):
            self._close()
            metrics = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            saved = f"  saved best: {', '.join(event.improved)}" if event.improved else ""
            self.write(
                f"epoch {event.epoch}/{event.epochs}  train_loss={event.train_loss:.4f}  "
                f"val_loss={event.val_loss:.4f}  {metrics}  ({event.seconds:.1f}s){saved}"
            )
        elif isinstance(event, events.TrainingFinished):
            self._close()
            self.write(f"{event.reason} after {event.epochs_completed} epochs; run folder: {event.run_dir}")
        elif isinstance(event, events.PredictionProgress):
            if self.bar is None:
                self.bar = self._tqdm(total=event.total, desc="predicting", unit="tile", leave=False, disable=None)
            self.bar.update(event.done - self.bar.n)
            if event.done >= event.total:
                self._close()
        elif isinstance(event, events.Message):
            self.write(("warning: " if event.level == "warning" else "") + event.text)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, text: str) -> None:
        """One line above the bar (tqdm keeps the bar intact), on stderr."""
        self._tqdm.write(text, file=sys.stderr)
