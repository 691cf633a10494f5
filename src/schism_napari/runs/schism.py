"""Run folders written by the original SCHISM, loaded for prediction as SCHISM would run them.

SCHISM saves each training run as ``<out>/<model_type>__<dd-mm-yy-HH-MM-SS>/`` holding
``Hyperparameters.ini`` (its inference reads ``hyperparameters.ini``), bare state_dicts
``model_best_<name>.pth`` and ``data_stats.json``. A user may point at that folder or at the
folder SCHISM was given, which holds it.

SCHISM's input path differs from this project's, and its weights only give SCHISM's results on
SCHISM's input: images are read as 8-bit RGB and divided by 255, normalised with the run's
``data_stats.json`` (the dataset's own entry, else ``default``), cut into ``crop_size`` tiles,
each resized (bicubic) to ``img_res``; the predicted classes are resized back (nearest).
:class:`SchismInput` does the resizing around the network, and the returned
:class:`~schism_napari.runs.TrainedModel` is set up for non-overlapping ``crop_size`` tiles with
constant blending, so the predictor reproduces SCHISM's segmentation on images whose sides are
multiples of ``crop_size`` (and covers other sizes with shifted edge tiles, where SCHISM pads).
16-bit images are scaled by their range instead of clipped at 255.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SCHISM_ARCHITECTURES, SchismConfig
from ..data.normalization import Normalization, read_stats_file
from ..errors import SchismError

RUN_NAME = re.compile(r"^(?P<model>\w+?)__(?P<stamp>\d\d-\d\d-\d\d-\d\d-\d\d-\d\d)$")
INI_NAMES = ("hyperparameters.ini", "Hyperparameters.ini")
RUN_INFO = "run_info.json"  # written by this project only
# SCHISM's normalisation when a run has no usable data_stats entry (tools/constants.py)
NEUTRAL = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def has_ini(folder: Path) -> bool:
    return any((folder / name).is_file() for name in INI_NAMES)


def locate_run(path: Path) -> Path:
    """The run folder itself, or the single timestamped SCHISM run inside the folder given."""
    path = Path(path)
    if not path.is_dir() or has_ini(path):
        return path
    runs = sorted(p for p in path.iterdir() if p.is_dir() and RUN_NAME.match(p.name) and has_ini(p))
    if len(runs) == 1:
        return runs[0]
    if len(runs) > 1:
        names = ", ".join(p.name for p in runs)
        raise SchismError(f"{path}: holds {len(runs)} SCHISM runs ({names}); give the one to use")
    return path


def is_schism_run(run_dir: Path) -> bool:
    """Written by SCHISM: neither ``run_info.json`` nor ``last_checkpoint.pth`` (this project writes
    both) and a SCHISM network."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_INFO).is_file() or (run_dir / "last_checkpoint.pth").is_file() or not has_ini(run_dir):
        return False
    ini = next(run_dir / name for name in INI_NAMES if (run_dir / name).is_file())
    return SchismConfig.from_ini(ini).model.model_type in SCHISM_ARCHITECTURES


def run_normalization(run_dir: Path, dataset: str | None = None) -> Normalization:
    """SCHISM's choice of stats: the dataset's entry, then ``default``, then the only entry, then 0.5/0.5."""
    path = Path(run_dir) / "data_stats.json"
    if not path.is_file():
        return NEUTRAL
    stats = read_stats_file(path)
    for name in (dataset, "default"):
        if name is not None and name in stats:
            return stats[name]
    if len(stats) == 1:
        return next(iter(stats.values()))
    return NEUTRAL


class SchismInput(nn.Module):
    """SCHISM's tile path around a network: ``crop_size`` tiles resized (bicubic) to ``img_res``,
    the logits resized back with nearest-exact (SCHISM resizes its class map that way)."""

    def __init__(self, network: nn.Module, crop_size: int, img_res: int):
        super().__init__()
        self.network, self.crop_size, self.img_res = network, crop_size, img_res
        self.size_divisor = 1  # any tile size: the resizing meets the network's divisor
        self.inner_divisor = int(getattr(network, "size_divisor", 1))

    def _network_size(self, side: int) -> int:
        size = max(1, round(side * self.img_res / self.crop_size))
        return -(-size // self.inner_divisor) * self.inner_divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        size = (self._network_size(height), self._network_size(width))
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        logits = self.network(x)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="nearest-exact")
        return logits


def schism_inference_config(config: SchismConfig) -> SchismConfig:
    """The run's config set up for SCHISM's tiling: the model wrapper resizes, so the predictor
    works at image scale (img_res = crop_size) on non-overlapping crop_size tiles."""
    run_config = config.copy()
    run_config.data.img_res = config.data.crop_size
    run_config.inference.tile_size = config.data.crop_size
    run_config.inference.overlap = 0.0
    run_config.inference.blending = "constant"
    run_config.inference.tta = False
    run_config.warnings.append(
        f"SCHISM run: {config.data.crop_size} px tiles resized to {config.data.img_res} px, no overlap, as SCHISM does"
    )
    return run_config
