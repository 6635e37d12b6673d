"""Bounds on every size-like value of fractalgen's config and command lines.

Each limit says why it exists, so that a typo (100000 workers, a 20-digit seed, a width
of 10**9) is one clear error before anything is allocated instead of a dead machine.
The argparse ``type=`` functions here give ``inference.py`` the same checks.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import TypeVar

__all__ = [
    "MAX_BATCH",
    "MAX_GRID_IMAGES",
    "MAX_NAME_LENGTH",
    "MAX_SAMPLE_IMAGES",
    "MAX_STEPS",
    "SEED_LIMIT",
    "WHY_STEPS",
    "WORKERS_PER_CPU",
    "at_most",
    "cpu_count",
    "estimate_parameters",
    "finite_float",
    "host_memory_bytes",
    "image_count",
    "max_workers",
    "seed",
]

MAX_NAME_LENGTH = 128  # experiment names are folder names (file systems allow 255 bytes)
SEED_LIMIT = 2**32  # numpy, DataLoader workers and CUDA take 32-bit seeds
WORKERS_PER_CPU = 4
#: allowed on any machine, so a config saved on a large machine (the paper's recipes use
#: 8) still loads on a laptop for inference
MIN_WORKER_LIMIT = 32
MAX_STEPS = 10**12
WHY_STEPS = "a step count beyond 10**12 is a typo"
MAX_BATCH = 2**16
MAX_GRID_IMAGES = 1024
#: inference.py keeps every image in memory before writing: 100,000 images of 256x256 RGB
#: are about 20 GB.
MAX_SAMPLE_IMAGES = 100_000

T = TypeVar("T")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """DataLoader workers allowed here: 4 per CPU, and never fewer than 32."""
    return max(MIN_WORKER_LIMIT, WORKERS_PER_CPU * cpu_count())


def host_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None when it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def estimate_parameters(embed_dim_list: Sequence[int], num_blocks_list: Sequence[int]) -> int:
    """A lower bound on the model's parameter count: 12 * width**2 per transformer block
    (attention 4 d**2, MLP 8 d**2); embeddings and heads only add to it."""
    return sum(12 * int(b) * int(d) ** 2
               for d, b in zip(embed_dim_list, num_blocks_list, strict=False))


def at_most(value: T, limit: int, why: str) -> T:
    """``value`` (an int, or a list of ints) when no int in it exceeds ``limit``.

    Raises:
        ValueError: ``expected at most LIMIT (WHY)``; the config's error names the field,
            the value given and where it came from.
    """
    items = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(v, int) and v > limit for v in items):
        each = "each " if isinstance(value, list | tuple) else ""
        raise ValueError(f"expected {each}at most {limit} ({why})")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan``, ``inf`` and ``1e999`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, given {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"expected a finite number, given {text!r} (infinity and nan are not allowed)"
        )
    return value


def seed(text: str) -> int:
    """argparse type: a seed in [0, 2**32)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, given {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected a seed in [0, 2**32) (random generators take 32-bit seeds), given "
            f"{text[:30]}{'...' if len(text) > 30 else ''}"
        )
    return value


def image_count(text: str) -> int:
    """argparse type: a number of images in [1, MAX_SAMPLE_IMAGES]."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, given {text!r}") from None
    if not 1 <= value <= MAX_SAMPLE_IMAGES:
        raise argparse.ArgumentTypeError(
            f"expected 1 to {MAX_SAMPLE_IMAGES} images (they are all held in memory before "
            f"they are written; run several times with other --seed values for more), given "
            f"{text[:30]}{'...' if len(text) > 30 else ''}"
        )
    return value
