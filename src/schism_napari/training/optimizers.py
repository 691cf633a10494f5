"""The optimizer and the learning-rate scheduler an INI names, built for one model.

``[Optimizer]`` and ``[Scheduler]`` name any ``torch.optim`` class and any
``torch.optim.lr_scheduler`` class, their other keys passed on; what the INI leaves out of the
schedules that need a length (OneCycleLR's total_steps, CosineAnnealingLR's T_max, ...) is sized
here from the run's epochs and batches. A class that refuses its arguments is a
:class:`~schism_napari.config.ConfigError` naming the section.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ConfigError, SchismConfig


def build_optimizer(config: SchismConfig, model: nn.Module) -> torch.optim.Optimizer:
    settings = config.optimizer
    cls = getattr(torch.optim, settings.optimizer)
    try:
        return cls(model.parameters(), lr=settings.lr, **settings.kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError("Optimizer", None, None, f"{settings.optimizer}: {error}", config.source) from None


def build_scheduler(config: SchismConfig, optimizer: torch.optim.Optimizer, batches: int, **overrides: Any) -> Any:
    """The scheduler for ``config.training.epochs`` epochs of ``batches`` optimizer steps, or None;
    ``overrides`` replace the INI's keys (a resume passes ``last_epoch``)."""
    settings = config.scheduler
    if settings.scheduler is None:
        return None
    kwargs = {**settings.kwargs, **overrides}
    lr, epochs = config.optimizer.lr, config.training.epochs
    name = settings.scheduler
    length = epochs * batches if settings.per_batch() else epochs  # in scheduler steps
    if name == "OneCycleLR":
        kwargs.setdefault("max_lr", lr)
        if not {"total_steps", "epochs", "steps_per_epoch"} & kwargs.keys():
            kwargs["total_steps"] = length
    elif name == "CyclicLR":
        kwargs.setdefault("base_lr", lr / 10)
        kwargs.setdefault("max_lr", lr)
        if "momentum" not in optimizer.defaults:
            kwargs.setdefault("cycle_momentum", False)
    elif name == "CosineAnnealingLR":
        kwargs.setdefault("T_max", length)
    elif name == "CosineAnnealingWarmRestarts":
        kwargs.setdefault("T_0", max(1, length // 3))
    cls = getattr(torch.optim.lr_scheduler, name)
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError("Scheduler", None, None, f"{name}: {error}", config.source) from None
