"""SCHISM's two U-Nets, rebuilt so that SCHISM's weight files load with ``strict=True``.

SCHISM (FloFive/SCHISM) ships ``UnetVanilla`` and ``UnetSegmentor``; a user's trained ``.pth``
files are bare state_dicts whose keys are SCHISM's module names, so these classes keep those
names and shapes exactly (``input_conv``, ``encoder_convs``, ``decoder_deconvs``, ...). Both
always take three input channels, as SCHISM does; a gray input is replicated to three channels
inside ``forward``, so the rest of this project can feed gray images as they are.

Two differences from the original, both deliberate: dropout is applied only while training
(SCHISM calls ``F.dropout`` with its default ``training=True``, so its predictions are random),
and convolution padding is ``k_size // 2`` (SCHISM pads by 1, which only matters for
``k_size != 3``, where its network cannot run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCHISM_INPUT_CHANNELS = 3


def _activation(name: str) -> nn.Module:
    """SCHISM's ActivationMixin (no in-place modules, LeakyReLU with torch's default slope), plus elu/gelu."""
    factories = {
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "elu": nn.ELU,  # not in SCHISM; accepted here as for the other networks
        "gelu": nn.GELU,
    }
    try:
        return factories[name.lower().replace("_", "")]()
    except KeyError:
        raise ValueError(f"SCHISM networks support {', '.join(factories)}, not {name!r}") from None


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    """SCHISM reads every image as RGB: replicate a gray channel."""
    if x.shape[1] == 1:
        return x.expand(-1, SCHISM_INPUT_CHANNELS, -1, -1)
    return x


class UnetSegmentor(nn.Module):
    """SCHISM's UnetSegmentor: biased 3x3 input conv, skips ADDED to 3x3 transposed-conv outputs.

    ``n_block`` poolings (one after the input conv, one after each encoder block), so input sides
    must divide ``2 ** n_block``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        n_block: int = 4,
        channels: int = 8,
        k_size: int = 3,
        activation: str = "relu",
        p: float = 0.5,
    ):
        super().__init__()
        self.n_block, self.p = n_block, p
        self.size_divisor = 2**n_block
        pad = k_size // 2
        self.input_conv = nn.Conv2d(SCHISM_INPUT_CHANNELS, channels, kernel_size=k_size, padding=pad)

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=k_size, padding=pad),
                nn.BatchNorm2d(c_out),
                _activation(activation),
                nn.Conv2d(c_out, c_out, kernel_size=k_size, padding=pad),
                nn.BatchNorm2d(c_out),
                _activation(activation),
            )

        self.encoder_convs = nn.ModuleList(
            [double(channels * 2**i, channels * 2 ** (i + 1)) for i in range(n_block - 1)]
        )
        self.mid_conv = double(channels * 2 ** (n_block - 1), channels * 2**n_block)
        widths = [channels * 2**i for i in reversed(range(n_block))]
        self.decoder_deconvs = nn.ModuleList(
            [nn.ConvTranspose2d(w * 2, w, kernel_size=3, stride=2, padding=1, output_padding=1) for w in widths]
        )
        self.decoder_convs = nn.ModuleList([double(w, w) for w in widths])
        self.seg_conv = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_conv(_as_rgb(x))
        features = [x]
        x = F.dropout(F.max_pool2d(x, kernel_size=2), p=self.p, training=self.training)
        for block in self.encoder_convs:
            x = block(x)
            features.append(x)
            x = F.dropout(F.max_pool2d(x, kernel_size=2), p=self.p, training=self.training)
        x = self.mid_conv(x)
        for deconv, block, skip in zip(self.decoder_deconvs, self.decoder_convs, reversed(features), strict=True):
            x = F.dropout(deconv(x), p=self.p, training=self.training)
            x = block(x + skip)
        return self.seg_conv(x)


class UnetVanilla(nn.Module):
    """SCHISM's UnetVanilla: single conv+BN+activation blocks, concatenated skips, 1x1 head.

    As in SCHISM, ``encoder_blocks[n_block - 1]`` exists (its weights are in the files) but the
    forward pass never uses it, and skips are resized to the decoder's size before concatenation.
    """

    def __init__(
        self, num_classes: int, *, n_block: int = 4, channels: int = 8, k_size: int = 3, activation: str = "relu"
    ):
        super().__init__()
        self.n_block = n_block
        self.size_divisor = 2**n_block
        pad = k_size // 2

        def conv(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=k_size, padding=pad)]
            if norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(_activation(activation))
            return nn.Sequential(*layers)

        self.encoder_blocks = nn.ModuleList(
            [conv(channels * 2**i, channels * 2 ** (i + 1), True) for i in range(n_block)]
        )
        self.decoder_blocks = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for i in range(n_block, 0, -1):
            width = channels * 2**i
            self.decoder_blocks.append(conv(width, width // 2, True))
            self.up_convs.append(
                nn.ConvTranspose2d(width, width // 2, kernel_size=3, stride=2, padding=1, output_padding=1)
            )
        self.output_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.bridge = conv(channels * 2**n_block // 2, channels * 2**n_block, False)
        self.start = conv(SCHISM_INPUT_CHANNELS, channels, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.start(_as_rgb(x))
        encodings = [x]
        for i in range(self.n_block):
            x = F.max_pool2d(x, kernel_size=2, ceil_mode=True)
            if i < self.n_block - 1:
                x = self.encoder_blocks[i](x)
                encodings.append(x)
        x = self.bridge(x)
        for up, block, skip in zip(self.up_convs, self.decoder_blocks, reversed(encodings), strict=True):
            x = up(x)
            skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], dim=1))
        return self.output_conv(x)


def is_schism_state_dict(state: dict) -> bool:
    """True for weights saved by SCHISM's (or these) networks, False for the concatenating UNet."""
    return "seg_conv.weight" in state or "output_conv.weight" in state
