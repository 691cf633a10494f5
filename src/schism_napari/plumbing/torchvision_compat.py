"""Let the CUDA-built PyPI torchvision import on a CPU-only torch (pytorch/vision#9085).

timm and segmentation-models-pytorch import torchvision. The PyPI torchvision wheel links its
compiled ops (``_C.so``) against ``libtorch_cuda.so``; on CPU torch loading them fails, and
torchvision's meta registrations then die with ``operator torchvision::nms does not exist``.
Declaring the two operator schemas it registers fakes for lets it import. Segmentation needs
none of torchvision's compiled ops (nms, image decoding), which stay unavailable.

This does nothing when ``_C.so`` loads (CUDA torch, or a torchvision built for this torch),
when torchvision is absent, or when it is already imported. It is thread-safe: the napari dock's
worker imports smp while a form edit on the GUI thread may validate the config (which imports it
too); defining the schemas twice raises.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

_library = None  # keeps the schema definitions alive for the life of the process
_checked = False  # the check ran (whatever it found): it runs once per process
_lock = threading.Lock()


def ensure_torchvision_importable() -> bool:
    """Return True if the shim had to declare the missing operator schemas."""
    global _checked
    with _lock:
        if _checked:
            return False
        declared = _declare_missing_schemas()
        _checked = True
        return declared


def _declare_missing_schemas() -> bool:
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    compiled_ops = Path(next(iter(spec.submodule_search_locations))) / "_C.so"
    if not compiled_ops.exists():
        return False
    try:
        torch.ops.load_library(str(compiled_ops))
        return False  # torchvision's own ops load: nothing to do
    except (OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "FRAGMENT")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _library = library
    return True
