"""What goes into a version's record: statuses, JSON cleaning, the new record itself."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from versionkit.backends.base import Record
from versionkit.errors import RegistryError
from versionkit.registry import provenance

__all__ = [
    "STATUSES",
    "TERMINAL",
    "clean_metrics",
    "hash_config",
    "jsonable",
    "new_record",
    "status_patch",
]

#: Statuses a version can be set to; all but ``running`` are terminal (set ``ended_at``).
STATUSES = ("running", "completed", "failed", "interrupted", "pruned")
TERMINAL = frozenset(STATUSES[1:])


def jsonable(value: Any, where: str) -> Any:
    """Plain JSON types from Paths, tuples, pydantic models, datetimes and mappings."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise RegistryError(
        f"cannot record {where}: {type(value).__name__} values are not JSON-able "
        f"(expected str, int, float, bool, None, list or dict)"
    )


def hash_config(config: Any, plain: dict[str, Any]) -> str:
    """``versionkit.config.config_hash`` for a ConfigModel, else sha256 of canonical JSON."""
    if callable(getattr(config, "model_dump", None)):
        from versionkit.config import ConfigModel, config_hash

        if isinstance(config, ConfigModel):
            return config_hash(config)
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def clean_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """``{str: float}`` from a mapping of numbers; ``RegistryError`` names a bad value."""
    clean: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            clean[str(key)] = float(value)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"metric {key!r} is {value!r}, not a number") from exc
    return clean


def status_patch(status: str, error: str | None) -> dict[str, Any]:
    """The record keys ``set_status`` writes (``running`` claims it for this process)."""
    if status not in STATUSES:
        raise RegistryError(f"unknown status {status!r}: expected one of {', '.join(STATUSES)}")
    patch: dict[str, Any] = {"status": status}
    if status in TERMINAL:
        patch["ended_at"] = provenance.now()
        if error is not None:
            patch["error"] = str(error)
    else:
        patch.update(ended_at=None, error=error, host=provenance.host(), pid=os.getpid())
    return patch


def new_record(
    config: Mapping[str, Any] | None,
    config_hash: str | None,
    command: Sequence[str] | None,
    seed: int | None,
    extra: Mapping[str, Any] | None,
) -> Record:
    """A new version's record: status ``running`` plus everything about how it was made."""
    config_dict = jsonable(config, "config") if config is not None else None
    if config_dict is not None and not isinstance(config_dict, dict):
        raise RegistryError(f"config must be a mapping, got {type(config).__name__}")
    if config_hash is None and config_dict is not None:
        config_hash = hash_config(config, config_dict)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RegistryError(f"seed must be an int, got {seed!r}")
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the working directory was deleted under us
        cwd = None
    commit, dirty = provenance.git_info(cwd) if cwd is not None else (None, None)
    record: Record = {
        "status": "running",
        "created_at": provenance.now(),
        "ended_at": None,
        "config": config_dict,
        "config_hash": config_hash,
        "command": [str(c) for c in (sys.argv if command is None else command)],
        "cwd": cwd,
        "host": provenance.host(),
        "user": provenance.user(),
        "pid": os.getpid(),
        "git_commit": commit,
        "git_dirty": dirty,
        **provenance.package_versions(),
        "seed": seed,
        "metrics": {},
        "metrics_step": None,
        "checkpoints": [],
        "error": None,
    }
    if extra:
        for key, value in extra.items():
            if key == "version":
                raise RegistryError("extra cannot set 'version': the registry assigns it")
            record[str(key)] = jsonable(value, f"extra[{key!r}]")
    return record
