"""Live learning curves in the dock, painted with QPainter.

matplotlib's text rendering takes 100-200 ms per redraw in the GUI thread while training
competes for the GIL, which would freeze the viewer at every epoch; these few lines and labels
take about a millisecond. The run folder's learning_curves.png is still drawn by matplotlib.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


class CurvesCanvas(QWidget):
    """Two panels: loss (train, validation) and validation metrics (0..1), against epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.history: list[dict[str, Any]] = []
        self.metrics: list[str] = []

    def reset(self, metrics: list[str]) -> None:
        self.history, self.metrics = [], list(metrics)
        self.update()

    def add_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.update()

    def series(self) -> tuple[list[tuple[str, list[float]]], list[tuple[str, list[float]]]]:
        losses = [
            (label, [h[key] for h in self.history])
            for key, label in (("train_loss", "train"), ("val_loss", "validation"))
        ]
        metrics = [(m, [h.get(m, math.nan) for h in self.history]) for m in self.metrics]
        return losses, metrics

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("white"))
        losses, metrics = self.series()
        half = self.width() / 2
        self._panel(painter, QRectF(0, 0, half, self.height()), "loss", losses, None)
        self._panel(painter, QRectF(half, 0, half, self.height()), "validation metrics", metrics, (0.0, 1.0))
        painter.end()

    def _panel(
        self,
        painter: QPainter,
        area: QRectF,
        title: str,
        series: list[tuple[str, list[float]]],
        y_range: tuple[float, float] | None,
    ) -> None:
        metrics = painter.fontMetrics()
        line = metrics.height()
        plot = QRectF(area.left() + 42, area.top() + line + 6, area.width() - 52, area.height() - 2 * line - 16)
        painter.setPen(QColor("black"))
        painter.drawText(QRectF(area.left(), area.top() + 2, area.width(), line), Qt.AlignmentFlag.AlignHCenter, title)
        painter.setPen(QPen(QColor("#888888"), 1))
        painter.drawRect(plot)
        values = [v for _, ys in series for v in ys if math.isfinite(v)]
        if y_range is None:
            low, high = (min(values), max(values)) if values else (0.0, 1.0)
            if high - low < 1e-12:
                low, high = low - 0.5, high + 0.5
        else:
            low, high = y_range
        epochs = len(self.history)
        right = max(epochs, 2)

        def point(epoch: int, value: float) -> QPointF:
            x = plot.left() + (epoch - 1) / (right - 1) * plot.width()
            y = plot.bottom() - (value - low) / (high - low) * plot.height()
            return QPointF(x, y)

        painter.setPen(QColor("black"))
        for value, align in ((high, plot.top()), (low, plot.bottom() - line)):
            painter.drawText(QRectF(area.left(), align, 38, line), Qt.AlignmentFlag.AlignRight, f"{value:.3g}")
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, 40, line), Qt.AlignmentFlag.AlignLeft, "1")
        painter.drawText(
            QRectF(plot.right() - 60, plot.bottom() + 2, 60, line), Qt.AlignmentFlag.AlignRight, f"epoch {right}"
        )
        for index, (label, ys) in enumerate(series):
            color = QColor(PALETTE[index % len(PALETTE)])
            painter.setPen(QPen(color, 2))
            points = [point(e, v) for e, v in enumerate(ys, start=1) if math.isfinite(v)]
            for start, end in itertools.pairwise(points):
                painter.drawLine(start, end)
            for p in points:
                painter.drawEllipse(p, 2.5, 2.5)
            painter.drawText(QRectF(plot.left() + 6, plot.top() + 4 + index * line, plot.width() - 12, line), 0, label)
