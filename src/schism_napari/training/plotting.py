"""Figures written into the run folder, drawn with matplotlib's Agg canvas (no GUI, thread-safe)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..plumbing.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class LearningCurves:
    """Loss (train, validation) and validation metrics against epochs on a matplotlib figure.

    Lines are created once and only their data changes, so redrawing after each epoch is cheap
    enough for the napari dock's GUI thread; the run folder's PNG uses the same drawing.
    """

    def __init__(self, figure: Figure, metrics: list[str]):
        figure.clear()
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.88, wspace=0.25)
        self.figure, self.metrics = figure, list(metrics)
        self.loss_axes = figure.add_subplot(1, 2, 1)
        self.metric_axes = figure.add_subplot(1, 2, 2)
        self.loss_lines = {
            key: self.loss_axes.plot([], [], "o-", markersize=3, label=label)[0]
            for key, label in (("train_loss", "train"), ("val_loss", "validation"))
        }
        self.metric_lines = {m: self.metric_axes.plot([], [], "o-", markersize=3, label=m)[0] for m in self.metrics}
        for axes, title in ((self.loss_axes, "loss"), (self.metric_axes, "validation metrics")):
            axes.set_title(title, fontsize="medium")
            axes.set_xlabel("epoch", fontsize="small")
            axes.tick_params(labelsize="small")
        self.metric_axes.set_ylim(0, 1)
        self.loss_axes.legend(fontsize="small")
        if self.metrics:
            self.metric_axes.legend(fontsize="small", loc="lower right")

    def update(self, history: list[dict[str, Any]]) -> None:
        epochs = [h["epoch"] for h in history]
        for key, line in self.loss_lines.items():
            line.set_data(epochs, [h[key] for h in history])
        for metric, line in self.metric_lines.items():
            line.set_data(epochs, [h.get(metric, np.nan) for h in history])
        self.loss_axes.relim()
        self.loss_axes.autoscale_view()
        right = max(epochs[-1], 2) if epochs else 2
        for axes in (self.loss_axes, self.metric_axes):
            axes.set_xlim(0.8, right + 0.2)


def save_learning_curves(path: Path, history: list[dict[str, Any]], metrics: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=90)
    FigureCanvasAgg(figure)
    LearningCurves(figure, metrics).update(history)
    _save(figure, path)


def save_confusion_matrix(path: Path, matrix: np.ndarray, class_names: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    image = axes.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    for (i, j), value in np.ndenumerate(normalised):
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(Path(path), overwrite=True) as temporary:
        figure.savefig(temporary, format="png", pil_kwargs={"compress_level": 1})  # fast: less GIL held
