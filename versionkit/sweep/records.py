"""The sweep side of a version's record: ``record["sweep"] = {"study", "trial", "params"}``.

Torch- and optuna-free, for ``versionkit list ROOT --sweep NAME``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from versionkit.registry import VersionInfo

__all__ = ["SWEEP_KEY", "in_sweep", "record_in_sweep", "sweep_of", "sweep_versions"]

#: the record key that holds a trial's study, number and sampled values
SWEEP_KEY = "sweep"


def sweep_of(info: VersionInfo) -> Mapping[str, Any] | None:
    """The version's ``{"study", "trial", "params"}``, or None if no sweep made it."""
    value = info.record.get(SWEEP_KEY)
    return value if isinstance(value, Mapping) else None


def in_sweep(info: VersionInfo, study: str) -> bool:
    """Whether a trial of ``study`` made this version."""
    return record_in_sweep(info.record, study)


def record_in_sweep(record: Mapping[str, Any], study: str) -> bool:
    """:func:`in_sweep` of a raw record (``versionkit list`` reads records)."""
    sweep = record.get(SWEEP_KEY)
    return isinstance(sweep, Mapping) and sweep.get("study") == study


def sweep_versions(infos: Iterable[VersionInfo], study: str) -> list[VersionInfo]:
    """The versions that trials of ``study`` made, in the given order."""
    return [info for info in infos if in_sweep(info, study)]
