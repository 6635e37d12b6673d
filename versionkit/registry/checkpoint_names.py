"""The step and metrics a checkpoint's file name encodes.

``step_00010000-val_loss_0.1234.ckpt`` (the seed's pattern, ``layout.CHECKPOINT_FILENAME``)
and Lightning's default ``epoch=3-step=100-val_loss=0.1234.ckpt`` both parse. Standard
library only: backends use it too.
"""

from __future__ import annotations

import functools
import re

from versionkit.layout import CHECKPOINT_SUFFIX

__all__ = ["metric_in_name", "parse_checkpoint_name", "step_in_name"]

_STEP_IN_NAME = re.compile(r"(?:^|[-_/])step[=_](\d+)")
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf))"
_ANY_METRIC = re.compile(rf"(?:^|-)([A-Za-z][\w./]*?)[=_]{_NUMBER}(?=$|-[A-Za-z])")


@functools.lru_cache(maxsize=64)
def _metric_pattern(metric: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[-/])({re.escape(metric)})[=_]{_NUMBER}(?=$|[-_]|\.ckpt$|\.)")


def _stem(name: str) -> str:
    return name[: -len(CHECKPOINT_SUFFIX)] if name.endswith(CHECKPOINT_SUFFIX) else name


def step_in_name(name: str) -> int | None:
    """The step in ``name`` (``step_00000100`` or ``step=100``), else ``None``."""
    match = _STEP_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def metric_in_name(name: str, metric: str) -> float | None:
    """The value of ``metric`` in ``name``, else ``None`` (cheap when it is absent)."""
    if metric not in name:
        return None
    match = _metric_pattern(metric).search(_stem(name))
    return float(match.group(2)) if match else None


def parse_checkpoint_name(
    name: str, metric: str | None = None
) -> tuple[int | None, dict[str, float]]:
    """The step and metric(s) encoded in a checkpoint file name.

    ``step_00010000-val_loss_0.1234.ckpt`` and ``epoch=3-step=100-val_loss=0.1234.ckpt``
    both work. With ``metric`` only that metric is looked for; without it every
    ``-name=value`` / ``-name_value`` part that parses as a number is returned.
    """
    stem = _stem(name)
    step = step_in_name(stem)
    metrics: dict[str, float] = {}
    if metric is not None:
        value = metric_in_name(stem, metric)
        if value is not None:
            metrics[metric] = value
        return step, metrics
    # One pass over the whole stem, not a split on "-": values such as 1.23e-04 or -1.25
    # hold a "-" of their own.
    for match in _ANY_METRIC.finditer(stem):
        if match.group(1) not in ("step", "epoch"):
            metrics[match.group(1)] = float(match.group(2))
    return step, metrics
