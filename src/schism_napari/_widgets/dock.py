"""The single "SCHISM" dock: Dataset, Training and Prediction as tabs sharing one session.

Opening it imports no torch (the widgets import it inside their workers), so Plugins → SCHISM
appears at once; closing it leaves a running training to the session, and opening it again
reattaches to that training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QScrollArea, QSizePolicy, QTabWidget

from .dataset import DatasetWidget
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
        self.dataset = DatasetWidget(viewer, session)
        self.training = TrainingWidget(viewer, session)
        self.prediction = PredictionWidget(viewer, session)
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
        # the training tab can show the prediction tab once a model exists
        session.model_changed.connect(self._on_model_changed)

    def _on_model_changed(self, model: object) -> None:
        if model is not None:
            self.prediction.reset_choices()
