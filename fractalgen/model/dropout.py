"""Dropout that draws ``F.dropout``'s very masks on CPU, faster, also for parts of a tensor."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "keep_mask"]


# Elements of the random integers drawn at once for a dropout mask (512 KiB of int64).
_MASK_CHUNK = 1 << 16


def keep_mask(shape: tuple[int, ...], keep: float) -> Tensor:
    """The CPU dropout mask of ``F.dropout(x, 1 - keep)`` for ``x`` of ``shape``, as bools.

    ``F.dropout`` keeps an element where ``bernoulli_(keep)`` draws 1, and on CPU that draw
    is a float64 uniform ``m / 2**53`` (``m`` the low 53 bits of a 64-bit draw) compared with
    ``keep``. ``randint(0, 2**53)`` draws the same ``m`` (its range needs 64-bit draws) and
    ``m < ceil(keep * 2**53)`` is the same comparison, exactly, in integers. Drawing in
    chunks, in memory order, keeps the same stream with a small buffer; a large fresh
    buffer costs page faults on every call. The generator ends in the same state.
    """
    threshold = math.ceil(keep * 2.0**53)
    mask = torch.empty(shape, dtype=torch.bool)
    flat = mask.view(-1)
    for start in range(0, flat.numel(), _MASK_CHUNK):
        part = flat[start : start + _MASK_CHUNK]
        torch.lt(torch.randint(0, 1 << 53, part.shape), threshold, out=part)
    return mask


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws the very same mask from the same RNG state, faster on CPU.

    On CPU the mask comes from :func:`keep_mask`: the identical mask (and generator state)
    to ``F.dropout``'s in about half the time. Elsewhere ``F.dropout`` runs as usual.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Zero each element with probability ``p`` in training mode, scale the rest."""
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            out: Tensor = super().forward(x)
            return out
        keep = 1.0 - self.p
        if keep == 0.0:
            return x * 0.0
        noise = keep_mask(tuple(x.shape), keep).to(x.dtype).div_(keep)
        return x * noise

    def forward_part(
        self, x: Tensor, shape: tuple[int, ...], pick: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Dropout of a part of a tensor whose other elements are not computed.

        ``x`` is ``pick(full)`` for a full tensor of ``shape``. The mask is drawn for the
        whole ``shape``, as :meth:`forward` on the full tensor would draw it, and ``pick``
        takes its part: the same result and the same RNG use as ``pick(forward(full))``.
        """
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.inplace:
            return x * pick(F.dropout(x.new_ones(shape), self.p, training=True))
        keep = 1.0 - self.p
        if keep == 0.0:
            return x * 0.0
        return x * pick(keep_mask(shape, keep)).to(x.dtype).div_(keep)
