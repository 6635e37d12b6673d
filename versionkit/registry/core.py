"""The experiment-version registry: atomic ``version_N`` allocation and record updates.

An experiment root holds ``checkpoints/version_N`` and ``logs/version_N`` for every
version N. :class:`Registry` hands out N through a backend (``file`` by default, see
``versionkit.backends``) whose ``allocate`` is atomic across processes, so two runs
started at once never share a number, and the counter never goes back, so a deleted
version's number is never handed out again. ``version_N`` folders made by other tools
(a plain TensorBoardLogger) are respected: the next number is above them, and they show
up in listings with status ``untracked`` (see :mod:`versionkit.registry.folders`).

This module imports neither torch nor pydantic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from versionkit.backends import open_backend
from versionkit.backends.base import Backend, Change, Record, check_number
from versionkit.errors import RegistryError, VersionNotFoundError
from versionkit.layout import CHECKPOINTS, LOGS, STATE_DIR, Layout
from versionkit.registry import records
from versionkit.registry.folders import Folders
from versionkit.registry.queries import Queries
from versionkit.registry.views import VersionInfo

__all__ = ["Registry", "RootError"]


class RootError(RegistryError, ValueError):
    """An experiment root that cannot be one (empty, a file, a symlink loop): a usage
    mistake, so CLIs exit 2."""

    exit_code = 2


def _checked_root(root: str | Path) -> Path:
    if isinstance(root, str) and not root.strip():
        raise RootError("the experiment root is empty; give a folder such as outputs/my_experiment")
    path = Path(root)
    try:
        path.resolve(strict=False)
        is_dir, exists = path.is_dir(), os.path.lexists(path)
    except (RuntimeError, OSError) as exc:  # RuntimeError: "Symlink loop" (Python < 3.13)
        raise RootError(
            f"experiment root {root} cannot be used: it is (or goes through) a symlink loop "
            f"or an unreadable path ({exc})"
        ) from None
    if exists and not is_dir:
        if os.path.islink(path) and not os.path.exists(path):
            try:
                os.stat(path)
            except OSError as exc:
                raise RootError(
                    f"experiment root {root} is a symlink that leads nowhere usable "
                    f"({exc.strerror or exc})"
                ) from None
        raise RootError(f"experiment root {root} exists but is not a folder")
    return path


class Registry(Queries):
    """The versions of one experiment root.

    Args:
        root: the experiment folder (``outputs/fractalgen``); created on first ``allocate``.
        backend: a URI (``file``, ``memory://name``, ``sqlite:///r.db``, ...) or a
            ``Backend``; ``None`` uses ``$VERSIONKIT_BACKEND``, else ``file``.
        experiment: the key naming this experiment in a shared backend; defaults to
            the resolved root path.
        lock_timeout: seconds to wait for a backend lock before ``LockTimeout`` (applied
            to a backend built from a URI; a ``Backend`` object keeps its own).

    Raises:
        RegistryError: the root is empty, not a folder, or a symlink loop.

    Example:
        >>> reg = Registry("outputs/fractalgen")               # doctest: +SKIP
        >>> v = reg.allocate(config={"lr": 1e-4}, seed=0)      # doctest: +SKIP
        >>> v.version, v.checkpoint_dir                        # doctest: +SKIP
        (0, PosixPath('outputs/fractalgen/checkpoints/version_0'))
    """

    def __init__(
        self,
        root: str | Path,
        backend: str | Backend | None = None,
        *,
        experiment: str | None = None,
        lock_timeout: float = 60.0,
    ) -> None:
        self.root = _checked_root(root)
        self.layout = Layout(self.root)
        self.folders = Folders(self.layout)
        self._resolved_root = self.root.resolve()
        self.experiment = experiment if experiment is not None else str(self._resolved_root)
        if isinstance(backend, Backend):
            self.backend = backend  # configured by its maker, lock timeout included
        else:
            self.backend = open_backend(backend, self.root, self.experiment)
            if hasattr(self.backend, "lock_timeout"):
                self.backend.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}, backend={self.backend.describe()!r})"

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's connections or handles."""
        self.backend.close()

    # -- allocation ---------------------------------------------------------------------

    def allocate(
        self,
        *,
        config: Mapping[str, Any] | None = None,
        config_hash: str | None = None,
        command: Sequence[str] | None = None,
        seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> VersionInfo:
        """Take a new version number atomically and create both of its folders.

        The number is above every number handed out before (by any process) and above
        the ``version_N`` folders on disk. The record starts with status ``running``
        and holds the config and its hash, command line, host, user, pid, git commit
        and dirty flag, Python/torch/Lightning/versionkit versions and seed. The cost
        does not grow with the number of versions (see ``Folders.floor``).

        Args:
            config: the resolved config (a mapping, or a pydantic model).
            config_hash: its hash; default: ``versionkit.config.config_hash`` for a
                ``ConfigModel``, else the sha256 of the mapping's canonical JSON.
            command: the command line; default ``sys.argv``.
            seed: the run's seed.
            extra: more JSON-able top-level keys for the record.

        Raises:
            LockTimeout: another process held the registry lock too long.
            RegistryError: the root cannot be created or written, or holds a folder
                whose number is too large.
        """
        record = records.new_record(config, config_hash, command, seed, extra)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(
                f"cannot create experiment root {self.root}: {exc.strerror or exc}"
            ) from exc
        number = self._take_number(record)
        for folder in (self.layout.checkpoint_dir(number), self.layout.log_dir(number)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(
                    f"version {number} was allocated but its folder {folder} could not be "
                    f"created: {exc.strerror or exc}"
                ) from exc
        record["version"] = number
        return self._info(record)

    def _take_number(self, record: Record) -> int:
        while True:
            floor = self.folders.floor(self.backend.next_number())
            number = self.backend.allocate(floor, record)
            # Another process may have moved the counter past the numbers probed above;
            # a number above them is checked now. A folder there is another tool's: the
            # number stays used (numbers are never reused) and lists as untracked.
            if number == floor or not self.folders.exists(number):
                return number
            self.backend.update(
                number,
                {
                    "status": "untracked",
                    "error": "another tool made this version's folder "
                    "while the number was being handed out; versionkit took the next one",
                },
            )

    # -- updates ------------------------------------------------------------------------

    def modify(self, n: int, change: Change) -> Record:
        """Atomically merge ``change(copy of version n's record)`` into it.

        ``change`` returns the patch (top-level keys; may be called more than once);
        returns the record as stored afterwards. ``VersionNotFoundError`` for a version
        without a record (``RegistryError`` for an untracked folder).
        """
        check_number(n)
        try:
            return self.backend.modify(n, change)
        except VersionNotFoundError:
            if self.folders.exists(n):
                raise RegistryError(
                    f"version {n} in {self.root} was not made by versionkit (an untracked "
                    f"folder); it has no record to update"
                ) from None
            raise VersionNotFoundError(
                f"version {n} does not exist in {self.root}{self._known_range()}"
            ) from None

    def update(self, n: int, **fields: Any) -> None:
        """Set top-level record keys, e.g. ``config=..., config_file=..., flags=...``."""
        check_number(n)
        if "version" in fields:
            raise RegistryError("cannot change a record's 'version'")
        patch = {key: records.jsonable(value, key) for key, value in fields.items()}
        if "config" in patch and "config_hash" not in patch and isinstance(patch["config"], dict):
            patch["config_hash"] = records.hash_config(fields["config"], patch["config"])
        self.modify(n, lambda _record: patch)

    def set_status(self, n: int, status: str, *, error: str | None = None) -> None:
        """Set ``status``; terminal ones set ``ended_at``, ``running`` claims the version.

        Statuses: ``running, completed, failed, interrupted, pruned``. ``running`` (a
        resumed run) records this process's host and pid, so that the dead-run check
        follows the process that now owns the version.
        """
        patch = records.status_patch(status, error)
        self.modify(n, lambda _record: patch)

    def log_metrics(self, n: int, metrics: Mapping[str, float], *, step: int) -> None:
        """Merge the latest values of ``metrics`` (at ``step``) into the record."""
        clean = records.clean_metrics(metrics)

        def change(record: Record) -> Mapping[str, Any]:
            current = record.get("metrics")
            if not isinstance(current, dict):
                current = {}
            return {"metrics": {**current, **clean}, "metrics_step": int(step)}

        self.modify(n, change)

    def add_checkpoint(
        self, n: int, path: str | Path, *, step: int, metrics: Mapping[str, float] | None = None
    ) -> None:
        """Record checkpoint ``path`` (under the root) of version ``n`` with its metrics.

        ``checkpoints/`` may be a symlink to another disk: the path is taken relative to
        the root as spelt. Recording the same path again replaces its entry
        (``last.ckpt`` saved often).
        """
        rel = self.folders.relative(path)
        item = {"path": rel, "step": int(step), "metrics": records.clean_metrics(metrics)}

        def change(record: Record) -> Mapping[str, Any]:
            items = [c for c in record.get("checkpoints") or [] if c.get("path") != rel]
            return {"checkpoints": [*items, item]}

        self.modify(n, change)

    def remove_checkpoint(self, n: int, path: str | Path) -> None:
        """Forget checkpoint ``path`` of version ``n`` (the file itself is not touched)."""
        rel = self.folders.relative(path)

        def change(record: Record) -> Mapping[str, Any]:
            items = record.get("checkpoints") or []
            kept = [c for c in items if c.get("path") != rel]
            return {"checkpoints": kept} if len(kept) != len(items) else {}

        self.modify(n, change)

    # -- maintenance ----------------------------------------------------------------------

    def repair(self) -> dict[str, Any]:
        """Rebuild the backend's state from disk; never lowers the next number.

        Returns a JSON-able report: ``next_number``, ``actions`` and
        ``untracked_folders`` (version folders that have no record).
        """
        if not self.root.is_dir():
            raise RegistryError(f"experiment root {self.root} does not exist")
        floor = self.folders.floor(0)
        report = dict(self.backend.repair(floor))
        report["untracked_folders"] = sorted(self.folders.numbers() - self.backend.numbers())
        return report

    @staticmethod
    def locate(path: str | Path) -> tuple[Path, int | None]:
        """``(experiment root, N)`` of a checkpoint, a file in a version folder or the folder.

        A root itself gives ``(root, None)``. Raises ``RegistryError`` for a path that is
        none of these.
        """
        found = Layout.locate(path)
        if found is not None and found[1] is not None:
            return found
        p = Path(os.path.normpath(path))  # lexical: keeps a relative path relative
        if p.is_dir() and any((p / sub).is_dir() for sub in (CHECKPOINTS, LOGS, STATE_DIR)):
            return p, None
        if found is not None and p.is_dir():
            return found
        raise RegistryError(
            f"{path} is not an experiment root, a version folder "
            f"(<root>/checkpoints/version_N) or a file inside one"
        )
