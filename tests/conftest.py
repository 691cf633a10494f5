"""Shared fixtures: a small synthetic rock-CT dataset and one tiny trained run, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")

# Copied verbatim from the SCHISM README (seed 000), "INI File Setup".
SCHISM_README_INI = """\
[Model]
n_block=5
channels=8
num_classes=3
model_type=UnetSegmentor
k_size=3
activation=leakyrelu
 
[Optimizer]
optimizer=Adam
 
[Scheduler]
scheduler=ConstantLR
 
[Training]
batch_size=4
val_split=0.8
epochs=3
metrics=DiceScore
 
[Data]
crop_size=128
img_res=560
num_samples=70
"""  # noqa: W293 (the README has blank lines holding one space; kept verbatim)


# UnetConcat: the U-Net the training tests' margins were measured with (formerly built for UnetSegmentor).
TINY_INI = """\
[Model]
model_type = UnetConcat
num_classes = 3
n_block = 2
channels = 8
activation = relu
p = 0.0

[Optimizer]
optimizer = AdamW
lr = 0.01

[Scheduler]
scheduler = None

[Loss]
loss = CrossEntropyLoss

[Training]
batch_size = 8
epochs = 4
val_split = 0.75
metrics = Jaccard, Dice

[Data]
crop_size = 64
img_res = 64
num_samples = 8
crops_per_image = 2

[Inference]
tile_size = 64
overlap = 0.25
batch_size = 8
"""


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory: pytest.TempPathFactory):
    """The synthetic sample (two SCHISM datasets of 6 slices, 96 px), written once."""
    from schism_napari.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("sample") / "sample", seed=0, slices=6, size=96)


@pytest.fixture
def tiny_config():
    """A fresh, small configuration (UnetConcat, 4 epochs of 64 px crops) for each test."""
    from schism_napari.config import SchismConfig

    return SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")


@pytest.fixture(scope="session")
def trained_run(sample_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained once on the sample (a few seconds on CPU). Treat it as read-only."""
    from schism_napari.config import SchismConfig
    from schism_napari.data import load_dataset
    from schism_napari.training.trainer import Trainer

    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.epochs = 8
    data = load_dataset(sample_files.datasets, class_count=3)
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    Trainer(config, data, run_dir).run()
    return run_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machines are small and shared: one intra-op thread is faster than two contending.
    Modules that train or run many small models use it through ``pytestmark``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PointwiseModel(nn.Module):
    """Logits that depend on each pixel alone (1x1 convolutions): any tiling must reproduce them exactly."""

    def __init__(self, in_channels: int = 1, classes: int = 3, divisor: int = 8, seed: int = 0):
        super().__init__()
        self.first = nn.Conv2d(in_channels, 6, 1)
        self.second = nn.Conv2d(6, classes, 1)
        self.size_divisor = divisor
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x))) * 2
