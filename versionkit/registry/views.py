"""Typed views of registry records: :class:`VersionInfo` and :class:`CheckpointInfo`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from versionkit.registry import provenance

__all__ = ["CheckpointInfo", "VersionInfo", "display_status", "record_json"]


def dead_candidate(record: Mapping[str, Any]) -> tuple[int, str] | None:
    """``(pid, host)`` of a record that could be dead (recorded as running, with a pid and
    a host), else None: what a listing keeps of it to decide ``dead`` later."""
    if record.get("status") != "running":
        return None
    pid, host = record.get("pid"), record.get("host")
    if type(pid) is not int or pid <= 0 or not isinstance(host, str):
        return None
    return pid, host


def process_gone(pid: int, host: str) -> bool:
    """The process ``pid`` was on this host and no longer exists."""
    return host == provenance.host() and not provenance.pid_alive(pid)


def _is_dead(record: Mapping[str, Any]) -> bool:
    """Recorded as running on this host, but its process no longer exists."""
    candidate = dead_candidate(record)
    return candidate is not None and process_gone(*candidate)


def display_status(record: Mapping[str, Any]) -> str:
    """A record's status as listings show it: ``dead`` for a running version whose
    process is gone, ``unknown`` when none was recorded. The same as
    :attr:`VersionInfo.display_status`, without building the view (listings call it
    once per version)."""
    return "dead" if _is_dead(record) else str(record.get("status") or "unknown")


def record_json(record: Mapping[str, Any], checkpoint_dir: str, log_dir: str) -> dict[str, Any]:
    """:meth:`VersionInfo.to_json` of a raw record, without building the view."""
    dead = _is_dead(record)
    status = str(record.get("status") or "unknown")
    out: dict[str, Any] = {"version": int(record["version"]), "status": "dead" if dead else status}
    out.update((k, v) for k, v in record.items() if k not in ("version", "status"))
    out["recorded_status"] = status
    out["dead"] = dead
    out["checkpoint_dir"] = checkpoint_dir
    out["log_dir"] = log_dir
    return out


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file of a version: recorded metrics, else those in its name."""

    path: Path
    version: int
    step: int | None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: ``path`` (str), ``version``, ``step``, ``metrics``."""
        return {
            "path": str(self.path),
            "version": self.version,
            "step": self.step,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class VersionInfo:
    """A version's record, typed. ``record`` is the raw backend record (a copy)."""

    version: int
    status: str
    created_at: str | None
    ended_at: str | None
    config_hash: str | None
    command: list[str]
    host: str | None
    user: str | None
    pid: int | None
    git_commit: str | None
    git_dirty: bool | None
    python: str | None
    torch: str | None
    lightning: str | None
    versionkit: str | None
    seed: int | None
    metrics: dict[str, float]
    error: str | None
    checkpoint_dir: Path
    log_dir: Path
    record: dict[str, Any]

    @property
    def is_dead(self) -> bool:
        """Recorded as running on this host, but its process no longer exists."""
        return _is_dead(self.record)

    @property
    def display_status(self) -> str:
        """``status``, or ``dead`` for a running version whose process is gone."""
        return "dead" if self.is_dead else self.status

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], checkpoint_dir: Path, log_dir: Path
    ) -> VersionInfo:
        """Build one from a backend record (missing keys become ``None``/empty)."""

        def opt(key: str, kind: type | tuple[type, ...]) -> Any:
            value = record.get(key)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        metrics = record.get("metrics")
        command = record.get("command")
        dirty = record.get("git_dirty")
        return cls(
            version=int(record["version"]),
            status=str(record.get("status") or "unknown"),
            created_at=opt("created_at", str),
            ended_at=opt("ended_at", str),
            config_hash=opt("config_hash", str),
            command=[str(c) for c in command] if isinstance(command, list) else [],
            host=opt("host", str),
            user=opt("user", str),
            pid=opt("pid", int),
            git_commit=opt("git_commit", str),
            git_dirty=dirty if isinstance(dirty, bool) else None,
            python=opt("python", str),
            torch=opt("torch", str),
            lightning=opt("lightning", str),
            versionkit=opt("versionkit", str),
            seed=opt("seed", int),
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
            error=opt("error", str),
            checkpoint_dir=checkpoint_dir,
            log_dir=log_dir,
            record=dict(record),
        )

    def to_json(self) -> dict[str, Any]:
        """The record plus ``display_status``, ``dead`` and the two folders, JSON-able."""
        return record_json(self.record, str(self.checkpoint_dir), str(self.log_dir))
