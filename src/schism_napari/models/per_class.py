"""The network of a ``train --per-class`` run: sem-style one-vs-rest binary members and a stacker.

It lives with the other networks (not with the training code that fits it) so that loading a
run folder, which prediction does, never reaches into training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from . import build_model, size_divisor

if TYPE_CHECKING:
    from ..config import SchismConfig

PER_CLASS_KIND = "per_class"  # run_info.json "kind" of such a run folder
STACKER_WIDTH = 16


class PerClassModel(nn.Module):
    """Binary members (one logit each) and a stacker turning their probabilities into C logits."""

    def __init__(self, members: list[nn.Module], class_count: int, width: int = STACKER_WIDTH):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.stacker = nn.Sequential(
            nn.Conv2d(len(members), width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, class_count, 1)
        )
        self.size_divisor = max(size_divisor(member) for member in members)

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, members, H, W): each member's foreground probability."""
        return torch.cat([torch.sigmoid(member(x)) for member in self.members], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stacker(self.member_probabilities(x))


def member_config(config: SchismConfig) -> SchismConfig:
    """The configuration of a one-vs-rest member: the same network and training, one output."""
    member = config.copy()
    member.model.num_classes = 1
    member.training.metrics = [m for m in member.training.metrics if m.lower() != "confusionmatrix"] or ["Jaccard"]
    return member


def build_per_class_model(config: SchismConfig, in_channels: int) -> PerClassModel:
    """An untrained PerClassModel of the run's shape (what ``load_trained_model`` fills with weights)."""
    single = member_config(config).model
    classes = config.model.class_count
    members = [build_model(single, in_channels) for _ in range(classes)]
    return PerClassModel(members, classes)
