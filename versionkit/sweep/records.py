"""The sweep side of a version's record: ``record["sweep"] = {"study", "trial", "params"}``.

Torch- and optuna-free, for ``versionkit list ROOT --sweep NAME``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from versionkit.registry import VersionInfo

__all__ = ["SWEEP_KEY", "sweep_of", "sweep_versions"]

#: the record key that holds a trial's study, number and sampled values
SWEEP_KEY = "sweep"


def sweep_of(info: VersionInfo) -> Mapping[str, Any] | None:
    """The version's ``{"study", "trial", "params"}``, or None if no sweep made it."""
    value = info.record.get(SWEEP_KEY)
    return value if isinstance(value, Mapping) else None


def sweep_versions(infos: Iterable[VersionInfo], study: str) -> list[VersionInfo]:
    """The versions that trials of ``study`` made, in the given order."""
    out = []
    for info in infos:
        sweep = sweep_of(info)
        if sweep is not None and sweep.get("study") == study:
            out.append(info)
    return out
