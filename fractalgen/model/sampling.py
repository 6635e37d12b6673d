"""The sampling recursion of :class:`~fractalgen.model.FractalGen` and its argument checks.

Sampling is depth first: level ``i`` asks level ``i + 1`` (finally the pixel head) for the
patches it generates at each of its steps, handing down their conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fractalgen.model.common import NextLevel

if TYPE_CHECKING:
    from fractalgen.model.ar import ARLevel
    from fractalgen.model.mar import MARLevel
    from fractalgen.model.pixel import PixelHead

__all__ = [
    "SamplingPlan",
    "check_labels",
    "check_sample_args",
    "conds_handed_down",
    "run_levels",
]

CFG_SCHEDULES = ("linear", "constant")


def _error(message: str) -> ValueError:
    # ModelError lives with the model, which imports this module: look it up at call time.
    from fractalgen.model.fractalgen import ModelError

    return ModelError(message)


def check_sample_args(
    n_levels: int,
    batch_size: int,
    num_iter_list: Sequence[int],
    cfg_schedule: str,
    temperature: float,
    filter_threshold: float,
    opening_steps: int = 0,
    opening_temperature: float = 1.0,
) -> list[int]:
    """Validate ``FractalGen.sample``'s settings; returns the steps per level.

    Raises:
        ModelError: naming the setting and what was expected.
    """
    if batch_size < 1:
        raise _error(f"batch_size must be >= 1, got {batch_size}")
    iters = [int(i) for i in num_iter_list]
    if len(iters) != n_levels or any(i < 1 for i in iters):
        raise _error(
            f"num_iter_list needs {n_levels} positive entries (one per level above the "
            f"pixel head), got {list(num_iter_list)}"
        )
    if cfg_schedule not in CFG_SCHEDULES:
        raise _error(f"cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
    if not temperature > 0:
        raise _error(f"temperature must be > 0 (logits are divided by it), got {temperature}")
    if not 0.0 <= filter_threshold <= 1.0:
        raise _error(f"filter_threshold must be in [0, 1], got {filter_threshold}")
    if isinstance(opening_steps, bool) or not isinstance(opening_steps, int) or opening_steps < 0:
        raise _error(f"opening_steps must be an integer >= 0, got {opening_steps!r}")
    if not opening_temperature > 0:
        raise _error(
            f"opening_temperature must be > 0 (logits are divided by it), got {opening_temperature}"
        )
    return iters


def check_labels(labels: Tensor, batch_size: int, num_classes: int, device: torch.device) -> Tensor:
    """Labels as a long tensor on ``device``, shape (batch_size,), values in range."""
    if num_classes == 0:
        raise _error("this model is unconditional (num_classes=0): sample with labels=None")
    labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
    if labels.shape != (batch_size,):
        raise _error(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise _error(f"labels must be in 0..{num_classes - 1}, got values {lo}..{hi}")
    return labels


def conds_handed_down(levels: Iterable[nn.Module]) -> list[int]:
    """How many conditions each level hands down: what the level below reads (the pixel
    head and AR levels one, a MAR level up to five: its ``num_conds``)."""
    counts = []
    for below in [*list(levels)[1:], None]:
        num_conds = getattr(below, "num_conds", None) if below is not None else None
        counts.append(min(5, int(num_conds)) if isinstance(num_conds, int) else 1)
    return counts


@dataclass(frozen=True)
class SamplingPlan:
    """What every level of one sampling call shares.

    Attributes:
        iters: Steps per level.
        out_conds: How many conditions each level hands down.
        cfg_schedule: Guidance schedule of the top level (lower levels: constant).
        guided: Whether the batch is doubled for classifier-free guidance.
        temperature: Divides the pixel logits.
        filter_threshold: The guidance filter of the pixel heads.
        generator: Optional RNG on the model's device.
        opening_steps: The top level's first this many steps use ``opening_temperature``.
        opening_temperature: See ``opening_steps``.
    """

    iters: list[int]
    out_conds: list[int]
    cfg_schedule: str
    guided: bool
    temperature: float
    filter_threshold: float
    generator: torch.Generator | None
    opening_steps: int = 0
    opening_temperature: float = 1.0


def run_levels(levels: list[nn.Module], pixel_head: PixelHead, plan: SamplingPlan) -> NextLevel:
    """The sampler of the top level: (conditions, guidance scale, temperature) -> images
    in [0, 1]. Each level hands its temperature down; only the top level opens with
    ``plan.opening_temperature``."""
    channels = pixel_head.in_channels

    def pixel(c: Tensor, cfg_i: float, temp: float) -> Tensor:
        px = pixel_head.sample(
            c,
            cfg=cfg_i,
            guided=plan.guided,
            temperature=temp,
            filter_threshold=plan.filter_threshold,
            generator=plan.generator,
        )
        return px.reshape(-1, channels, 1, 1)

    def make(i: int) -> NextLevel:
        if i == len(levels):
            return pixel
        below = make(i + 1)
        level: ARLevel | MARLevel = levels[i]  # type: ignore[assignment]

        def run(c: Tensor, cfg_i: float, temp: float) -> Tensor:
            out: Tensor = level.sample(
                c,
                num_iter=plan.iters[i],
                cfg=cfg_i,
                cfg_schedule=plan.cfg_schedule if i == 0 else "constant",
                guided=plan.guided,
                temperature=temp,
                generator=plan.generator,
                next_level=below,
                filter_threshold=plan.filter_threshold,
                out_conds=plan.out_conds[i],
                opening_steps=plan.opening_steps if i == 0 else 0,
                opening_temperature=plan.opening_temperature,
            )
            return out

        return run

    return make(0)
