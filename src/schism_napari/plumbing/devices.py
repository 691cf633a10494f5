"""Choosing the torch device: one rule for training and prediction.

A low module (torch and the error types only) so that inference does not import training for it.
"""

from __future__ import annotations

import torch

from ..errors import SchismError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; a named device must exist on this machine."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SchismError(f"[Training] device = {name}: CUDA is not available on this machine")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise SchismError(f"[Training] device = {name}: MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
