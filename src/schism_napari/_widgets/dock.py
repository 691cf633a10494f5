"""The single "SCHISM" dock: Dataset, Training and Prediction as tabs sharing one session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QScrollArea, QTabWidget

from .dataset import DatasetWidget
from .prediction import PredictionWidget
from .session import session_for
from .training import TrainingWidget

if TYPE_CHECKING:
    import napari


class SchismDock(QTabWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        session = session_for(viewer)
        self.dataset = DatasetWidget(viewer, session)
        self.training = TrainingWidget(viewer, session)
        self.prediction = PredictionWidget(viewer, session)
        for title, widget in (("Dataset", self.dataset), ("Training", self.training), ("Prediction", self.prediction)):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(widget.native)
            self.addTab(scroll, title)
        # the training tab can show the prediction tab once a model exists
        session.model_changed.connect(self._on_model_changed)

    def _on_model_changed(self, model: object) -> None:
        if model is not None:
            self.prediction.reset_choices()
