"""Helpers shared by the AR and MAR levels: patch layout, random draws, the level contract."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["NextLevel", "host_uniform", "patchify", "unpatchify"]

# Samples the next level: (conditions (M, k, d), guidance scale, temperature) -> patches
# (M', C, p, p) in [0, 1], where M' = M / 2 when the batch carries classifier-free guidance,
# else M. The temperature divides the pixel logits of everything sampled below.
NextLevel = Callable[[Tensor, float, float], Tensor]


def patchify(imgs: Tensor, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, (H/p)(W/p), C p p), patches in raster order, channel-major inside."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(x: Tensor, patch: int, channels: int) -> Tensor:
    """Inverse of :func:`patchify` for a square grid of patches."""
    n, seq, _ = x.shape
    g = round(seq**0.5)
    x = x.reshape(n, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels, g * patch, g * patch)


def host_uniform(n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` uniform [0, 1) draws as a float64 CPU tensor.

    Drawn on the host so that data-dependent sizes (how many patches go down a level) are
    known without a device synchronisation; from ``generator`` when it is a CPU generator,
    from the default CPU RNG when it is None, and on the generator's device (one small
    copy back) otherwise.
    """
    if generator is None or generator.device.type == "cpu":
        return torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()
