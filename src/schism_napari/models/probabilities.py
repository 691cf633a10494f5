"""From network outputs to class probabilities and classes: one rule for training, validation and
inference.

A low module (torch only) that the trainer, the metrics and the predictor all import, so that
inference does not depend on training.
"""

from __future__ import annotations

import torch


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1 or C, H, W) logits -> (B, C >= 2, H, W) class probabilities."""
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        return torch.cat([1 - foreground, foreground], dim=1)
    return torch.softmax(logits, dim=1)


def predicted_classes(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Argmax; for two classes, foreground when its probability exceeds ``threshold`` (one rule
    for training, validation and inference, unlike SCHISM's logits > 0.5 vs sigmoid > 0.5)."""
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] > threshold).long()
    return probabilities.argmax(dim=1)
