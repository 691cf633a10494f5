"""Figures written into the run folder, drawn with matplotlib's Agg canvas (no GUI, thread-safe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path


def draw_learning_curves(figure: Any, history: list[dict[str, Any]], metrics: list[str]) -> None:
    """Loss (train, validation) and validation metrics against epochs, on ``figure``.

    Shared with the napari dock, which draws the same figure live on a Qt canvas.
    """
    figure.clear()
    loss_axes = figure.add_subplot(1, 2, 1)
    metric_axes = figure.add_subplot(1, 2, 2)
    epochs = [h["epoch"] for h in history]
    loss_axes.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_axes.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_title("loss")
    loss_axes.legend(fontsize="small")
    for metric in metrics:
        metric_axes.plot(epochs, [h.get(metric, np.nan) for h in history], "o-", label=metric)
    metric_axes.set_xlabel("epoch")
    metric_axes.set_title("validation metrics")
    metric_axes.set_ylim(0, 1)
    if metrics:
        metric_axes.legend(fontsize="small")
    figure.tight_layout()


def save_learning_curves(path: Path, history: list[dict[str, Any]], metrics: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    draw_learning_curves(figure, history, metrics)
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


def _save(figure: Any, path: Path) -> None:
    with atomic_path(Path(path), overwrite=True) as temporary:
        figure.savefig(temporary, format="png")
