"""``versionkit gc``: free disk by deleting checkpoints beyond a retention policy.

Per version it keeps the ``keep_best`` best checkpoints by a metric and the
``keep_last`` most recent ones (``last.ckpt`` counts as the most recent), and, with
``older_than_days``, anything younger than that. Whatever the policy, it never touches:

- a version whose run is alive: its lease's holder lives (this host: the process
  exists; another host: a recent heartbeat), or, without a lease, it is ``running`` and
  not a dead process of this host; nor a folder without a record;
- the best and the last checkpoint of a tagged version;
- the experiment's best checkpoint (by the metric, and by ``val_loss`` too).

With ``versions=True`` it also removes the whole folders (checkpoints and logs) of
``failed`` and ``interrupted`` versions that hold no tag and not the experiment's best;
their records stay (marked ``removed_at``), and their numbers are never handed out again.
Removed checkpoints are forgotten by the registry in one atomic step per version, so
``best`` never returns a deleted file.

:func:`plan` reads only; :func:`apply` deletes what a plan lists, re-checking each
version's status just before touching it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from versionkit.errors import ConfigError
from versionkit.layout import (
    CHECKPOINT_SUFFIX,
    CHECKPOINTS,
    LAST_CHECKPOINT,
    Layout,
    version_dir_name,
)

if TYPE_CHECKING:
    from versionkit.registry import Registry, VersionInfo

__all__ = ["GcPlan", "Removal", "apply", "plan"]

_WHOLE = ("failed", "interrupted")


class Removal(NamedTuple):
    """One checkpoint file (or sharded checkpoint folder) to delete."""

    version: int
    folder: Path
    name: str
    bytes: int

    @property
    def path(self) -> Path:
        """``folder / name``."""
        return self.folder / self.name

    def to_json(self) -> dict[str, Any]:
        """``{"version", "path", "bytes"}``."""
        return {"version": self.version, "path": os.path.join(self.folder, self.name),
                "bytes": self.bytes}


@dataclass
class GcPlan:
    """What :func:`apply` would delete, and what was left alone and why."""

    checkpoints: list[Removal] = field(default_factory=list)
    versions: dict[int, int] = field(default_factory=dict)  # whole version -> bytes
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> versions
    protected: list[Path] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes the plan frees."""
        return sum(r.bytes for r in self.checkpoints) + sum(self.versions.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "removed": [r.to_json() for r in self.checkpoints],
            "removed_versions": sorted(self.versions),
            "bytes_freed": self.bytes,
            "skipped": {k: sorted(v) for k, v in self.skipped.items()},
            "protected": [str(p) for p in self.protected],
        }


class _Ckpt(NamedTuple):
    name: str
    step: int
    value: float | None  # the metric; None when unknown or NaN
    default_value: float | None  # val_loss, for the experiment's default best
    bytes: int
    mtime: float


def _size(path: str, st: os.stat_result) -> int:
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for folder, _dirs, files in os.walk(path):  # never follows symlinked folders
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _value(metrics: Mapping[str, Any], metric: str) -> float | None:
    value = metrics.get(metric)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _scan(layout: Layout, n: int, record: Mapping[str, Any], metric: str) -> list[_Ckpt]:
    """Every ``*.ckpt`` in version n's folder: step and metrics as ``Registry.best`` reads
    them (the record's entry wins over the file name), size and modification time."""
    from versionkit.registry import parse_checkpoint_name

    prefix = f"{CHECKPOINTS}/{version_dir_name(n)}/"
    recorded: dict[str, Mapping[str, Any]] = {}
    for item in record.get("checkpoints") or ():
        path = item.get("path") if isinstance(item, Mapping) else None
        if isinstance(path, str) and path.startswith(prefix):
            recorded[path[len(prefix):]] = item
    found: list[_Ckpt] = []
    try:
        entries = list(os.scandir(layout.checkpoint_dir(n)))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        name = entry.name
        if not name.endswith(CHECKPOINT_SUFFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        item = recorded.get(name)
        step = item.get("step") if item is not None else None
        metrics = item.get("metrics") if item is not None else None
        if not isinstance(metrics, Mapping):
            metrics = {}
        if not isinstance(step, int) or metric not in metrics or "val_loss" not in metrics:
            # Only what the record does not say is read from the name (the slow part).
            named_step, named = parse_checkpoint_name(name)
            metrics = {**named, **metrics}
            if not isinstance(step, int):
                step = named_step if named_step is not None else -1
        size = st.st_size if stat.S_ISREG(st.st_mode) else _size(entry.path, st)
        found.append(_Ckpt(name, step, _value(metrics, metric), _value(metrics, "val_loss"),
                           size, st.st_mtime))
    return found


def _best(ckpts: list[_Ckpt], sign: float, default: bool = False) -> list[_Ckpt]:
    """Checkpoints with a value, best first (ties: the later step)."""
    scored = [c for c in ckpts if (c.default_value if default else c.value) is not None]
    return sorted(scored, key=lambda c: (sign * ((c.default_value if default else c.value)
                                                 or 0.0), -c.step, c.name))


def _recent(ckpts: list[_Ckpt]) -> list[_Ckpt]:
    """Most recent first: ``last.ckpt``, then by step, then by modification time."""
    return sorted(ckpts, key=lambda c: (c.name != LAST_CHECKPOINT, -c.step, -c.mtime, c.name))


def _is_live(info: VersionInfo) -> bool:
    """A run's lease says whether its holder lives (a heartbeat for other hosts); without
    one, ``running`` counts as live unless its process is gone from this host."""
    lease = info.record.get("lease")
    if isinstance(lease, dict):
        # Imported only here: versionkit.run pulls in the config machinery.
        from versionkit.run.lease import DEFAULT_TIMEOUT_S, holder_alive

        return holder_alive(lease, now=time.time(), timeout=DEFAULT_TIMEOUT_S)
    return info.status == "running" and not info.is_dead


def _check(keep_best: int, keep_last: int, older_than_days: float | None, mode: str,
           metric: str) -> None:
    for flag, value in (("--keep-best", keep_best), ("--keep-last", keep_last)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{flag} must be an integer >= 0, got {value!r}")
    if older_than_days is not None and not (
        math.isfinite(older_than_days) and older_than_days >= 0
    ):
        raise ConfigError(f"--older-than must be a number of days >= 0, got {older_than_days!r}")
    if mode not in ("min", "max"):
        raise ConfigError(f"--mode must be min or max, got {mode!r}")
    if not metric or not metric.strip():
        raise ConfigError("--metric cannot be empty (e.g. val_loss)")


def plan(
    registry: Registry,
    *,
    keep_best: int = 1,
    keep_last: int = 1,
    older_than_days: float | None = None,
    metric: str = "val_loss",
    mode: str = "min",
    versions: bool = False,
    now: float | None = None,
) -> GcPlan:
    """What gc would delete under this policy (reads only).

    Args:
        registry: the experiment.
        keep_best: per version, how many of the best checkpoints by ``metric`` to keep.
        keep_last: per version, how many of the most recent checkpoints to keep.
        older_than_days: only delete checkpoints last modified longer ago than this.
        metric: the metric ranking checkpoints (default ``val_loss``).
        mode: ``min`` or ``max``.
        versions: also remove whole ``failed``/``interrupted`` version folders.
        now: the current time (seconds since the epoch); for tests.
    """
    _check(keep_best, keep_last, older_than_days, mode, metric)
    from versionkit.curate.refs import tags_by_version

    layout = Layout(registry.root)
    sign = 1.0 if mode == "min" else -1.0
    cutoff = None if older_than_days is None else (
        (time.time() if now is None else now) - older_than_days * 86400.0)
    tagged = tags_by_version(registry)
    result = GcPlan()
    scanned: dict[int, list[_Ckpt]] = {}
    infos: dict[int, VersionInfo] = {}
    best_hits: list[tuple[float, int, int, str]] = []
    default_hits: list[tuple[float, int, int, str]] = []
    for info in registry.list():
        n = info.version
        ckpts = _scan(layout, n, info.record, metric)
        infos[n], scanned[n] = info, ckpts
        for hits, ranked, s in ((best_hits, _best(ckpts, sign), sign),
                                (default_hits, _best(ckpts, 1.0, default=True), 1.0)):
            if ranked:
                c = ranked[0]
                v = c.value if hits is best_hits else c.default_value
                hits.append((s * (v or 0.0), -c.step, -n, c.name))
    protected: set[tuple[int, str]] = set()
    for hits in (best_hits, default_hits):
        if hits:
            _, _, neg_n, name = min(hits)
            protected.add((-neg_n, name))
    result.protected = [layout.checkpoint_dir(n) / name for n, name in sorted(protected)]
    for n, info in infos.items():
        reason = ("untracked" if info.status == "untracked" else
                  "removed" if info.record.get("removed_at") else
                  "running" if _is_live(info) else None)
        if reason is not None:
            if reason != "removed":
                result.skipped.setdefault(reason, []).append(n)
            continue
        ckpts = scanned[n]
        holds_best = any(p[0] == n for p in protected)
        if (versions and info.status in _WHOLE and n not in tagged and not holds_best):
            result.versions[n] = _folder_bytes(layout, n)
            continue
        keep = {c.name for c in _best(ckpts, sign)[:keep_best]}
        keep |= {c.name for c in _recent(ckpts)[:keep_last]}
        if n in tagged:
            keep |= {c.name for c in _best(ckpts, sign)[:1]} | {c.name for c in _recent(ckpts)[:1]}
        keep |= {name for m, name in protected if m == n}
        folder = layout.checkpoint_dir(n)
        for c in sorted(ckpts, key=lambda c: (c.step, c.name)):
            if c.name in keep or (cutoff is not None and c.mtime >= cutoff):
                continue
            result.checkpoints.append(Removal(n, folder, c.name, c.bytes))
    return result


def _folder_bytes(layout: Layout, n: int) -> int:
    total = 0
    for folder in (layout.checkpoint_dir(n), layout.log_dir(n)):
        try:
            st = os.lstat(folder)
        except OSError:
            continue
        total += _size(str(folder), st) if stat.S_ISDIR(st.st_mode) else st.st_size
    return total


def _delete(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # does not follow symlinks inside
    else:
        os.unlink(path)  # a symlink: the link itself, never its target


def apply(registry: Registry, todo: GcPlan) -> GcPlan:
    """Delete what ``todo`` lists; returns what was actually deleted.

    Each version is re-read just before its files go: one that became live in the
    meantime is skipped. The registry forgets each version's removed checkpoints in
    one atomic step.
    """
    layout = Layout(registry.root)
    done = GcPlan(skipped={k: list(v) for k, v in todo.skipped.items()},
                  protected=list(todo.protected))
    by_version: dict[int, list[Removal]] = {}
    for r in todo.checkpoints:
        by_version.setdefault(r.version, []).append(r)
    for n in sorted(set(by_version) | set(todo.versions)):
        if _is_live(registry.get(n)):
            done.skipped.setdefault("running", []).append(n)
            continue
        if n in todo.versions:
            for folder in (layout.checkpoint_dir(n), layout.log_dir(n)):
                if os.path.lexists(folder):
                    _delete(folder)
            stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
            registry.modify(n, _patcher({"removed_at": stamp, "checkpoints": []}))
            done.versions[n] = todo.versions[n]
            continue
        gone: list[Removal] = []
        for r in by_version[n]:
            try:
                _delete(r.path)
            except FileNotFoundError:
                continue
            gone.append(r)
        _forget(registry, layout, n, gone)
        done.checkpoints += gone
    return done


def _patcher(patch: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(_record: dict[str, Any]) -> dict[str, Any]:
        return patch

    return change


def _forget(registry: Registry, layout: Layout, n: int, gone: list[Removal]) -> None:
    prefix = f"{CHECKPOINTS}/{version_dir_name(n)}/"
    rels = {prefix + r.name for r in gone}

    def change(record: dict[str, Any]) -> dict[str, Any]:
        items = record.get("checkpoints") or []
        kept = [c for c in items if not (isinstance(c, dict) and c.get("path") in rels)]
        return {"checkpoints": kept} if len(kept) != len(items) else {}

    if rels:
        registry.modify(n, change)
