"""napari widgets: thin translators between napari layers and the Qt-free core."""

from .dataset import DatasetWidget
from .dock import SchismDock
from .prediction import PredictionWidget
from .training import TrainingWidget

__all__ = ["DatasetWidget", "PredictionWidget", "SchismDock", "TrainingWidget"]
