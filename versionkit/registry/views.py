"""Typed views of registry records: :class:`VersionInfo` and :class:`CheckpointInfo`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from versionkit.registry import provenance

__all__ = ["CheckpointInfo", "VersionInfo"]


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
        if self.status != "running" or not isinstance(self.pid, int) or self.pid <= 0:
            return False
        if self.host != provenance.host():
            return False
        return not provenance.pid_alive(self.pid)

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
        out: dict[str, Any] = {"version": self.version, "status": self.display_status}
        out.update((k, v) for k, v in self.record.items() if k not in ("version", "status"))
        out["recorded_status"] = self.status
        out["dead"] = self.is_dead
        out["checkpoint_dir"] = str(self.checkpoint_dir)
        out["log_dir"] = str(self.log_dir)
        return out
