"""What ``versionkit list`` and ``diff`` show per version: best and last metric, config columns.

Everything here reads only the version's record (no folder listing), so a listing of
thousands of versions costs one record read each.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from versionkit._diff import flatten
from versionkit.errors import ConfigError

__all__ = ["MetricAt", "best_of", "config_columns", "last_of", "sort_key", "unknown_columns"]

#: (value, step) of a metric; the step is ``None`` when the record does not say.
MetricAt = tuple[float, int | None]


def _finite(value: Any) -> float | None:
    if type(value) is float:  # the common case, without the ABC machinery
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def best_of(
    record: Mapping[str, Any], metric: str = "val_loss", mode: str = "min"
) -> MetricAt | None:
    """The best recorded checkpoint value of ``metric`` and its step (ties: the later step).

    Records are JSON (plain dicts and lists); this runs once per listed version.
    """
    best: MetricAt | None = None
    sign = 1.0 if mode == "min" else -1.0
    items = record.get("checkpoints")
    if type(items) is not list:
        return None
    isfinite = math.isfinite
    for item in items:
        metrics = item.get("metrics") if type(item) is dict else None
        if type(metrics) is not dict:
            continue
        value = metrics.get(metric)
        if type(value) is float:  # the common case, inline
            if not isfinite(value):
                continue
        else:
            value = _finite(value)
            if value is None:
                continue
        step = item.get("step")
        if type(step) is not int:
            step = None
        if best is None or sign * value < sign * best[0] or (
            value == best[0] and (step or -1) > (best[1] or -1)
        ):
            best = (value, step)
    return best


def last_of(record: Mapping[str, Any], metric: str = "val_loss") -> MetricAt | None:
    """The latest logged value of ``metric`` and the step it was logged at."""
    metrics = record.get("metrics")
    if type(metrics) is not dict and not isinstance(metrics, Mapping):  # dict: no ABC check
        return None
    value = _finite(metrics.get(metric))
    if value is None:
        return None
    step = record.get("metrics_step")
    return value, step if type(step) is int or (
        isinstance(step, int) and not isinstance(step, bool)) else None


def config_columns(record: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``{key: value}`` of the record's config for each dotted key (``None`` when absent)."""
    config = record.get("config")
    flat = flatten(config) if isinstance(config, Mapping) else {}
    return {key: flat.get(key) for key in keys}


def unknown_columns(records: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> None:
    """``ConfigError`` naming a column no version's config has (with a close match)."""
    missing = set(keys)
    known: set[str] = set()
    for record in records:
        config = record.get("config")
        if isinstance(config, Mapping):
            flat = flatten(config)
            known.update(flat)
            missing -= flat.keys()
        if not missing:
            return
    if missing and known:
        key = sorted(missing)[0]
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"--columns: no version's config has {key!r}{hint}")


def sort_key(value: Any) -> tuple[int, Any]:
    """Orders numbers, then strings, then missing values (``None`` last)."""
    if value is None:
        return (2, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))
