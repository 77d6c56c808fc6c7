"""On-device batch transforms a task may give (``TaskSource.transform``).

A transform takes a training batch on the device and a generator, and returns a batch of the
same size. lrsearch applies it once per batch, before the population's forward pass, so every
member sees the same draw and two trials stay paired; the generator is the population's own,
seeded from its data seed, so the draws do not depend on the population's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrsearch.errors import LrsearchError
from lrsearch.tasks import BatchTransform

__all__ = ["random_crop_flip"]


def random_crop_flip(pad: int, flip: bool = True) -> BatchTransform:
    """Random crops of ``[B, C, H, W]`` images padded by ``pad`` zeros, and random left-right
    flips, as airbench's ``batch_crop`` and ``batch_flip_lr``: each image its own shift and
    coin, drawn for the whole batch at once; one masked copy per possible shift, so the cost
    does not grow with the batch."""
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise LrsearchError(f"random_crop_flip: pad must be an int >= 0, got {pad!r}")

    def transform(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dim() != 4:
            raise LrsearchError(
                f"random_crop_flip takes [B, C, H, W] images, got shape {tuple(images.shape)}"
            )
        batch, _, height, width = images.shape
        out = images
        if pad:
            padded = F.pad(images, (pad, pad, pad, pad))
            shifts = torch.randint(
                0, 2 * pad + 1, (2, batch), device=images.device, generator=generator
            )
            out = torch.empty_like(images)
            for dy in range(2 * pad + 1):
                for dx in range(2 * pad + 1):
                    mask = (shifts[0] == dy) & (shifts[1] == dx)
                    out[mask] = padded[mask, :, dy : dy + height, dx : dx + width]
        if flip:
            coins = torch.rand(batch, device=images.device, generator=generator) < 0.5
            out = torch.where(coins.view(-1, 1, 1, 1), out.flip(-1), out)
        return out

    return transform
