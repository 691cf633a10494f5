"""Moving crops to the training device: resize to img_res, then augment there.

Flips and 90-degree rotations apply to image and mask alike; intensity jitter (brightness and
contrast, in normalised units) to the image only. Running this on the GPU keeps the data
pipeline a small fraction of the step time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_device(
    images: np.ndarray,
    masks: np.ndarray,
    device: torch.device,
    size: int,
    *,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S, S) float32 + (B, S, S) uint8 crops -> network input and long targets at ``size``."""
    non_blocking = device.type == "cuda"
    x = torch.from_numpy(images).to(device, non_blocking=non_blocking)
    y = torch.from_numpy(masks).to(device, non_blocking=non_blocking)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
        y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.long()


def augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, jitter: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random dihedral transform per sample and brightness/contrast jitter."""
    batch = x.shape[0]
    choices = torch.randint(0, 8, (batch,), generator=generator).tolist()
    xs, ys = [], []
    for i, choice in enumerate(choices):
        xi, yi = x[i], y[i]
        if choice & 1:
            xi, yi = xi.flip(-1), yi.flip(-1)
        rotations = choice >> 1
        if rotations:
            xi, yi = torch.rot90(xi, rotations, (-2, -1)), torch.rot90(yi, rotations, (-2, -1))
        xs.append(xi)
        ys.append(yi)
    x, y = torch.stack(xs), torch.stack(ys)
    if jitter > 0:
        params = (torch.rand(2, batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        x = x * (1 + params[0].to(x.device)) + params[1].to(x.device)
    return x, y
