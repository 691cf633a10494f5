"""The single "SCHISM" dock: Dataset, Training and Prediction as tabs sharing one session.

Opening it imports no torch (the widgets import it inside their workers), so Plugins → SCHISM
appears at once; closing it leaves a running training to the session, and opening it again
reattaches to that training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QLabel, QScrollArea, QSizePolicy, QTabWidget

from .dataset import DatasetWidget
from .jobs import collect_follows, follow
from .prediction import PredictionWidget
from .session import session_for
from .training import TrainingWidget

if TYPE_CHECKING:
    import napari


class SchismDock(QTabWidget):
    """Three tabs, one session: the dock is only a frame, so it can be closed and reopened freely."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.setUsesScrollButtons(True)
        session = session_for(viewer)
        with collect_follows() as self._follows:  # ended when the dock is closed
            self.dataset = DatasetWidget(viewer, session)
            self.training = TrainingWidget(viewer, session)
            self.prediction = PredictionWidget(viewer, session)
            # the training tab can show the prediction tab once a model exists
            follow(self, session.model_changed, self._on_model_changed)
        for title, widget in (("Dataset", self.dataset), ("Training", self.training), ("Prediction", self.prediction)):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            # fit the panel's width: long labels wrap instead of a horizontal scrollbar cutting them
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            widget.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            for label in widget.native.findChildren(QLabel):
                label.setWordWrap(True)
            scroll.setWidget(widget.native)
            self.addTab(scroll, title)
        for status in (self.dataset.status, self.prediction.status):  # one line, updated often
            status.native.setWordWrap(False)

    def event(self, event: QEvent | None) -> bool:
        """A dock closed in napari is taken out of the window (its parent becomes None), not deleted:
        from then on it and its tabs stop following the session, so only the open dock reacts."""
        if event is not None and event.type() == QEvent.Type.ParentChange and self.parent() is None:
            for disconnect in getattr(self, "_follows", ()):
                disconnect()
            self._follows = []
        return super().event(event)

    def _on_model_changed(self, model: object) -> None:
        if model is not None:
            self.prediction.reset_choices()
