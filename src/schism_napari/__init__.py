"""schism-napari: interactive deep-learning semantic segmentation of scanned materials.

The core (config, data, models, training, inference) never imports Qt or napari, so it can run
headless on a cluster through the ``schism`` command line; the napari widgets are thin layers on top.
"""

__version__ = "0.1.0"

from .errors import SchismError

__all__ = ["SchismError", "__version__"]
