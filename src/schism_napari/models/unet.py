"""``UnetConcat``: this project's own U-Net (double conv blocks, concatenated skips, 2x2 up-convolutions).

It was called UnetVanilla/UnetSegmentor before SCHISM's own networks were rebuilt in
:mod:`.schism`; run folders of that time still load (see ``models.legacy_architecture``).

Unlike the original, dropout is an ``nn.Dropout2d`` module, so ``model.eval()`` turns it off and
predictions are deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


class ConvBlock(nn.Sequential):
    """Two (conv, batch norm, activation) layers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: str):
        padding = kernel_size // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            _ACTIVATIONS[activation](),
            nn.Conv2d(out_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            _ACTIVATIONS[activation](),
        )


class UNet(nn.Module):
    """Encoder of ``n_block`` down-sampling blocks, a bottleneck, and a mirrored decoder with skips."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        n_block: int = 4,
        channels: int = 8,
        k_size: int = 3,
        activation: str = "relu",
        p: float = 0.0,
    ):
        super().__init__()
        widths = [channels * 2**i for i in range(n_block + 1)]
        self.size_divisor = 2**n_block
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock(previous, width, k_size, activation))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], k_size, activation)
        self.dropout = nn.Dropout2d(p) if p > 0 else nn.Identity()
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(width * 2, width, kernel_size=2, stride=2))
            self.decoders.append(ConvBlock(width * 2, width, k_size, activation))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
