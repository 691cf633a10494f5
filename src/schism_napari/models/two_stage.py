"""Stage 2 of a two-stage model: a network that corrects the forest's class probabilities.

See :mod:`schism_napari.forest.stages`. The input is ``(B, C + K, H, W)``: the normalised image, then
stage 1's K class probabilities (normalised with mean 0 and std 1, so they arrive as
probabilities, up to the intensity jitter of training). The output is the network's logits plus
``log p`` (for a binary model, one channel: ``log p1 - log p0``). The network's last convolution
starts at zero, so an untrained stage 2 predicts what the forest does; every optimizer step moves
it from there, never from nothing.
"""

from __future__ import annotations

import torch
from torch import nn

FLOOR = 1e-3  # the forest's probabilities are clipped here before the log: a bounded prior
MARKER = "stage_one_channels"  # (image channels, classes), a buffer


def is_two_stage_state(state: dict[str, torch.Tensor] | None) -> bool:
    """Whether a state dict is a :class:`ForestPrior`'s."""
    return state is not None and MARKER in state


class ForestPrior(nn.Module):
    """``network(x) + log p(stage 1)``; ``network`` takes all C + K channels."""

    def __init__(self, network: nn.Module, image_channels: int, classes: int, *, zero_start: bool = True):
        super().__init__()
        self.network = network
        self.image_channels, self.classes = image_channels, classes
        self.size_divisor = int(getattr(network, "size_divisor", 32))
        # in the state dict: what tells a two-stage model's weights from a plain network's
        self.register_buffer(MARKER, torch.tensor([image_channels, classes]))
        if zero_start:
            _zero_last_convolution(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        start = self.image_channels
        prior = torch.log(x[:, start : start + self.classes].float().clamp(FLOOR, 1.0))
        if logits.shape[1] == 1:  # binary: one foreground logit
            prior = prior[:, 1:2] - prior[:, 0:1]
        return logits + prior.to(logits.dtype)


def _zero_last_convolution(network: nn.Module) -> None:
    """The output layer (the last convolution registered) starts at zero."""
    last = None
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            last = module
    if last is None:
        return
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
