"""Live learning curves in the dock: the run folder's figure, drawn on a Qt canvas."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

from ..plotting import draw_learning_curves


class CurvesCanvas(FigureCanvasQTAgg):
    def __init__(self) -> None:
        self.figure = Figure(figsize=(5, 2.4), dpi=80)
        super().__init__(self.figure)
        self.setMinimumHeight(180)
        self.history: list[dict[str, Any]] = []
        self.metrics: list[str] = []

    def reset(self, metrics: list[str]) -> None:
        self.history, self.metrics = [], list(metrics)
        self.figure.clear()
        self.draw_idle()

    def add_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        draw_learning_curves(self.figure, self.history, self.metrics)
        self.draw_idle()
