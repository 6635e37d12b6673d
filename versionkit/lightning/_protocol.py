"""What the adapter needs from a run (``versionkit.run.Run`` provides it).

The adapter depends on this small protocol, not on the run's implementation: the run
owns the version's life (lease, status, records); the adapter turns Lightning's events
into calls on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from versionkit.registry import Registry

__all__ = ["RunLike"]


class RunLike(Protocol):
    """One version's run, as ``versionkit.run.start_run`` returns it."""

    registry: Registry
    version: int
    resume_from: Path | None

    @property
    def checkpoint_dir(self) -> Path:
        """``<root>/checkpoints/version_N``."""

    @property
    def log_dir(self) -> Path:
        """``<root>/logs/version_N``."""

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes (global rank 0)."""

    def display(self, path: Path) -> str:
        """``path`` spelt from the root as the user gave it."""

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Record the latest metrics."""

    def record_checkpoint(self, path: Path, *, step: int, metrics: Mapping[str, float]) -> None:
        """Record a checkpoint file with its step and metrics."""

    def forget_checkpoint(self, path: Path) -> None:
        """Forget a checkpoint file (deleted, or never to be used)."""

    def heartbeat(self) -> None:
        """Refresh the run's lease (cheap; rate-limited inside)."""

    def finish(self, status: str, *, error: str | None = None) -> None:
        """End the run with ``status`` (first call wins)."""


def config_of(run: RunLike) -> Mapping[str, Any]:
    """The config the run trains with: ``run.config``, else the version's recorded one."""
    config: Any = getattr(run, "config", None)
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        config = run.registry.get(run.version).record.get("config")
    return config if isinstance(config, Mapping) else {}
