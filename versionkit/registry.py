"""The experiment-version registry: atomic ``version_N`` allocation and queries.

An experiment root holds ``checkpoints/version_N`` and ``logs/version_N`` for every
version N. :class:`Registry` hands out N through a backend (``file`` by default, see
``versionkit.backends``) whose ``allocate`` is atomic across processes, so two runs
started at once never share a number, and the counter never goes back, so a deleted
version's number is never handed out again. ``version_N`` folders made by other tools
(a plain TensorBoardLogger) are respected: the next number is above them, and they show
up in listings with status ``untracked``.

This module imports neither torch nor pydantic; the versions of torch and Lightning
are read from package metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import getpass
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from versionkit.backends import open_backend
from versionkit.backends.base import Backend, Record
from versionkit.errors import RegistryError, VersionNotFoundError

if TYPE_CHECKING:
    from versionkit.config import ConfigModel

__all__ = ["STATUSES", "CheckpointInfo", "Registry", "VersionInfo"]

C = TypeVar("C", bound="ConfigModel")
_List = list  # ``Registry.list`` shadows the builtin inside the class body

#: Statuses a version can be set to; the last three are terminal (they set ``ended_at``).
STATUSES = ("running", "completed", "failed", "interrupted")
_TERMINAL = frozenset(STATUSES[1:])
_VERSION_DIR = re.compile(r"^version_(\d+)$")
_STEP_IN_NAME = re.compile(r"(?:^|[-_/])step[=_](\d+)")
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf))"
_ANY_METRIC = re.compile(rf"(?:^|-)([A-Za-z][\w./]*?)[=_]{_NUMBER}(?=$|-[A-Za-z])")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _check_version(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise VersionNotFoundError(
            f"{n!r} is not a valid version number (expected an integer >= 0)"
        )
    return n


# cwd -> (time.monotonic() when read, (commit, dirty)). A short time-to-live: repeated
# allocations in one process (a sweep, a benchmark) skip two git processes each, while a
# notebook that edits code between runs still records the new commit and dirty flag.
_GIT_TTL_S = 10.0
_git_cache: dict[str, tuple[float, tuple[str | None, bool | None]]] = {}


def _git_info(cwd: str) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree at ``cwd``; (None, None) without git."""
    now = time.monotonic()
    hit = _git_cache.get(cwd)
    if hit is not None and now - hit[0] < _GIT_TTL_S:
        return hit[1]
    result = _read_git(cwd)
    _git_cache[cwd] = (now, result)
    return result


def _read_git(cwd: str) -> tuple[str | None, bool | None]:
    """Ask git (two short-lived processes, 3 s timeout each); tolerate no git at all."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=3, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = run("status", "--porcelain", "--untracked-files=no")
    return commit.strip() or None, (bool(status.strip()) if status is not None else None)


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def find(*names: str) -> str | None:
        for name in names:
            with contextlib.suppress(PackageNotFoundError):
                return version(name)
        return None

    from versionkit import __version__

    return {
        "python": platform.python_version(),
        "torch": find("torch"),
        "lightning": find("pytorch-lightning", "lightning"),
        "versionkit": __version__,
    }


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no $USER in a container
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types from Paths, tuples, pydantic models, datetimes and mappings."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise RegistryError(
        f"cannot record {where}: {type(value).__name__} values are not JSON-able "
        f"(expected str, int, float, bool, None, list or dict)"
    )


def _hash_config(config: Any, plain: dict[str, Any]) -> str:
    """``versionkit.config.config_hash`` for a ConfigModel, else sha256 of canonical JSON."""
    if callable(getattr(config, "model_dump", None)):
        from versionkit.config import ConfigModel, config_hash

        if isinstance(config, ConfigModel):
            return config_hash(config)
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=64)
def _metric_pattern(metric: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[-/])({re.escape(metric)})[=_]{_NUMBER}(?=$|[-_]|\.ckpt$|\.)")


def parse_checkpoint_name(
    name: str, metric: str | None = None
) -> tuple[int | None, dict[str, float]]:
    """The step and metric(s) encoded in a checkpoint file name.

    ``step_00010000-val_loss_0.1234.ckpt`` and ``epoch=3-step=100-val_loss=0.1234.ckpt``
    both work. With ``metric`` only that metric is looked for; without it every
    ``-name=value`` / ``-name_value`` part that parses as a number is returned.
    """
    stem = name[:-5] if name.endswith(".ckpt") else name
    step_match = _STEP_IN_NAME.search(stem)
    step = int(step_match.group(1)) if step_match else None
    metrics: dict[str, float] = {}
    if metric is not None:
        match = _metric_pattern(metric).search(stem)
        if match:
            metrics[metric] = float(match.group(2))
        return step, metrics
    # One pass over the whole stem, not a split on "-": values such as 1.23e-04 or -1.25
    # hold a "-" of their own.
    for match in _ANY_METRIC.finditer(stem):
        if match.group(1) not in ("step", "epoch"):
            metrics[match.group(1)] = float(match.group(2))
    return step, metrics


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
        if self.host != socket.gethostname():
            return False
        return not _pid_alive(self.pid)

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


class Registry:
    """The versions of one experiment root.

    Args:
        root: the experiment folder (``outputs/fractalgen``); created on first ``allocate``.
        backend: a URI (``file``, ``memory://name``, ``sqlite:///r.db``, ...) or a
            ``Backend``; ``None`` uses ``$VERSIONKIT_BACKEND``, else ``file``.
        experiment: the key naming this experiment in a shared backend; defaults to
            the resolved root path.
        lock_timeout: seconds to wait for a backend lock before ``LockTimeout`` (applied
            to a backend built from a URI; a ``Backend`` object keeps its own).

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
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"experiment root {self.root} exists but is not a folder")
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

    # -- folders ------------------------------------------------------------------------

    def checkpoint_dir(self, n: int) -> Path:
        """``root/checkpoints/version_n``."""
        return self.root / "checkpoints" / f"version_{_check_version(n)}"

    def log_dir(self, n: int) -> Path:
        """``root/logs/version_n``."""
        return self.root / "logs" / f"version_{_check_version(n)}"

    def folder_versions(self) -> set[int]:
        """Numbers N of every ``version_N`` entry in ``checkpoints/`` and ``logs/``."""
        numbers: set[int] = set()
        for sub in ("checkpoints", "logs"):
            try:
                names = os.listdir(self.root / sub)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise RegistryError(
                    f"cannot list {self.root / sub}: {exc.strerror or exc}"
                ) from exc
            # Same as _VERSION_DIR, without a regex per entry (this runs per allocation).
            numbers.update(
                int(name[8:])
                for name in names
                if name.startswith("version_") and name[8:].isdigit() and name[8:].isascii()
            )
        return numbers

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
        every ``version_N`` folder on disk. The record starts with status ``running``
        and holds the config and its hash, command line, host, user, pid, git commit
        and dirty flag, Python/torch/Lightning/versionkit versions and seed.

        Args:
            config: the resolved config (a mapping, or a pydantic model).
            config_hash: its hash; default: ``versionkit.config.config_hash`` for a
                ``ConfigModel``, else the sha256 of the mapping's canonical JSON.
            command: the command line; default ``sys.argv``.
            seed: the run's seed.
            extra: more JSON-able top-level keys for the record.

        Raises:
            LockTimeout: another process held the registry lock too long.
            RegistryError: the root cannot be created or written.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(
                f"cannot create experiment root {self.root}: {exc.strerror or exc}"
            ) from exc
        floor = max(self.folder_versions(), default=-1) + 1
        record = self._new_record(config, config_hash, command, seed, extra)
        number = self.backend.allocate(floor, record)
        for folder in (self.checkpoint_dir(number), self.log_dir(number)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(
                    f"version {number} was allocated but its folder {folder} could not be "
                    f"created: {exc.strerror or exc}"
                ) from exc
        record["version"] = number
        return self._info(record)

    def _new_record(
        self,
        config: Mapping[str, Any] | None,
        config_hash: str | None,
        command: Sequence[str] | None,
        seed: int | None,
        extra: Mapping[str, Any] | None,
    ) -> Record:
        config_dict = _jsonable(config, "config") if config is not None else None
        if config_dict is not None and not isinstance(config_dict, dict):
            raise RegistryError(f"config must be a mapping, got {type(config).__name__}")
        if config_hash is None and config_dict is not None:
            config_hash = _hash_config(config, config_dict)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RegistryError(f"seed must be an int, got {seed!r}")
        try:
            cwd: str | None = os.getcwd()
        except OSError:  # the working directory was deleted under us
            cwd = None
        commit, dirty = _git_info(cwd) if cwd is not None else (None, None)
        record: Record = {
            "status": "running",
            "created_at": _now(),
            "ended_at": None,
            "config": config_dict,
            "config_hash": config_hash,
            "command": [str(c) for c in (sys.argv if command is None else command)],
            "cwd": cwd,
            "host": socket.gethostname(),
            "user": _user(),
            "pid": os.getpid(),
            "git_commit": commit,
            "git_dirty": dirty,
            **_package_versions(),
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
                record[str(key)] = _jsonable(value, f"extra[{key!r}]")
        return record

    # -- queries ------------------------------------------------------------------------

    def _info(self, record: Mapping[str, Any]) -> VersionInfo:
        n = int(record["version"])
        return VersionInfo.from_record(record, self.checkpoint_dir(n), self.log_dir(n))

    def _untracked(self, n: int) -> Record:
        return {"version": n, "status": "untracked", "metrics": {}, "checkpoints": []}

    def _record(self, n: int) -> Record:
        _check_version(n)
        record = self.backend.get(n)
        if record is not None:
            return record
        if n in self.folder_versions():
            return self._untracked(n)
        known = self._known_range()
        raise VersionNotFoundError(f"version {n} does not exist in {self.root}{known}")

    def _known_range(self) -> str:
        with contextlib.suppress(RegistryError):
            numbers = sorted(
                {int(r["version"]) for r in self.backend.list()} | self.folder_versions()
            )
            if not numbers:
                return " (it has no versions yet)"
            if len(numbers) <= 8:
                return f" (known versions: {', '.join(map(str, numbers))})"
            return f" (known versions: {numbers[0]}..{numbers[-1]}, {len(numbers)} in all)"
        return ""

    def get(self, n: int) -> VersionInfo:
        """Version ``n`` (``VersionNotFoundError`` when it was never allocated)."""
        return self._info(self._record(n))

    def _all_records(self) -> dict[int, Record]:
        records = {int(r["version"]): r for r in self.backend.list()}
        for n in self.folder_versions() - records.keys():
            records[n] = self._untracked(n)
        return dict(sorted(records.items()))

    def list(self) -> _List[VersionInfo]:
        """Every version in increasing order, folder-only ones as ``untracked``."""
        return [self._info(r) for r in self._all_records().values()]

    def latest(self) -> VersionInfo | None:
        """The highest-numbered version, or ``None`` when there are none."""
        versions = self.list()
        return versions[-1] if versions else None

    # -- updates ------------------------------------------------------------------------

    def update(self, n: int, **fields: Any) -> None:
        """Set top-level record keys, e.g. ``config=..., config_file=..., flags=...``."""
        _check_version(n)
        if "version" in fields:
            raise RegistryError("cannot change a record's 'version'")
        patch = {key: _jsonable(value, key) for key, value in fields.items()}
        if "config" in patch and "config_hash" not in patch and isinstance(patch["config"], dict):
            patch["config_hash"] = _hash_config(fields["config"], patch["config"])
        self._modify(n, lambda _record: patch)

    def _modify(self, n: int, change: Callable[[Record], Mapping[str, Any]]) -> None:
        _check_version(n)
        try:
            self.backend.modify(n, change)
        except VersionNotFoundError:
            if n in self.folder_versions():
                raise RegistryError(
                    f"version {n} in {self.root} was not made by versionkit (an untracked "
                    f"folder); it has no record to update"
                ) from None
            raise VersionNotFoundError(
                f"version {n} does not exist in {self.root}{self._known_range()}"
            ) from None

    def set_status(self, n: int, status: str, *, error: str | None = None) -> None:
        """Set ``status``; terminal ones set ``ended_at``, ``running`` claims the version.

        ``running`` (a resumed run) records this process's host and pid, so that the
        dead-run check follows the process that now owns the version.
        """
        if status not in STATUSES:
            raise RegistryError(f"unknown status {status!r}: expected one of {', '.join(STATUSES)}")
        patch: dict[str, Any] = {"status": status}
        if status in _TERMINAL:
            patch["ended_at"] = _now()
            if error is not None:
                patch["error"] = str(error)
        else:
            patch.update(ended_at=None, error=error, host=socket.gethostname(), pid=os.getpid())
        self._modify(n, lambda _record: patch)

    def log_metrics(self, n: int, metrics: Mapping[str, float], *, step: int) -> None:
        """Merge the latest values of ``metrics`` (at ``step``) into the record."""
        clean = self._clean_metrics(metrics)

        def change(record: Record) -> Mapping[str, Any]:
            current = record.get("metrics")
            if not isinstance(current, dict):
                current = {}
            return {"metrics": {**current, **clean}, "metrics_step": int(step)}

        self._modify(n, change)

    @staticmethod
    def _clean_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
        clean: dict[str, float] = {}
        for key, value in (metrics or {}).items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError) as exc:
                raise RegistryError(f"metric {key!r} is {value!r}, not a number") from exc
        return clean

    def _relative(self, path: str | Path) -> str:
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self._resolved_root).as_posix()
        except ValueError:
            raise RegistryError(
                f"checkpoint {path} is outside the experiment root {self.root}; "
                f"checkpoints must live under it"
            ) from None

    def add_checkpoint(
        self, n: int, path: str | Path, *, step: int, metrics: Mapping[str, float] | None = None
    ) -> None:
        """Record checkpoint ``path`` (inside the root) of version ``n`` with its metrics.

        Recording the same path again replaces its entry (``last.ckpt`` saved often).
        """
        rel = self._relative(path)
        item = {"path": rel, "step": int(step), "metrics": self._clean_metrics(metrics)}

        def change(record: Record) -> Mapping[str, Any]:
            items = [c for c in record.get("checkpoints") or [] if c.get("path") != rel]
            return {"checkpoints": [*items, item]}

        self._modify(n, change)

    def remove_checkpoint(self, n: int, path: str | Path) -> None:
        """Forget checkpoint ``path`` of version ``n`` (the file itself is not touched)."""
        rel = self._relative(path)

        def change(record: Record) -> Mapping[str, Any]:
            items = record.get("checkpoints") or []
            kept = [c for c in items if c.get("path") != rel]
            return {"checkpoints": kept} if len(kept) != len(items) else {}

        self._modify(n, change)

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoints(self, n: int) -> _List[CheckpointInfo]:
        """Checkpoint files of version ``n`` that exist, ordered by step then name.

        Every ``*.ckpt`` in its checkpoint folder, plus recorded ones elsewhere under
        the root; metrics and step come from the record, else from the file name.
        """
        found = [
            self._checkpoint_info(folder + name, n, item)
            for folder, name, item in self._existing_checkpoints(n, self._record(n))
        ]
        found.sort(key=lambda c: (c.step is None, c.step or 0, c.path.name))
        return found

    def _existing_checkpoints(
        self, n: int, record: Mapping[str, Any]
    ) -> _List[tuple[str, str, Mapping[str, Any] | None]]:
        """(folder relative to the root + "/", file name, recorded entry or None) per file.

        Strings, not Paths, and one ``listdir`` per version: ``best`` runs this over every
        checkpoint there is. The folder listing decides what exists, so a recorded file
        that was deleted costs nothing.
        """
        prefix = f"checkpoints/version_{n}/"
        in_folder: dict[str, Mapping[str, Any]] = {}
        elsewhere: _List[tuple[str, Mapping[str, Any]]] = []
        for item in record.get("checkpoints") or ():
            path = item.get("path") if isinstance(item, dict) else None
            if not isinstance(path, str):
                continue
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                in_folder[path[len(prefix) :]] = item
            else:
                elsewhere.append((path, item))
        try:
            # A "*.ckpt" folder counts too: sharded (DeepSpeed / FSDP) checkpoints are folders.
            names = os.listdir(os.path.join(self.root, prefix))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        found = [(prefix, name, in_folder.get(name)) for name in names if name.endswith(".ckpt")]
        for path, item in elsewhere:
            # A hand-edited record must not point us outside the root.
            if path.startswith("/") or ".." in path.split("/"):
                continue
            if os.path.exists(os.path.join(self.root, path)):
                folder, _, name = path.rpartition("/")
                found.append((folder + "/" if folder else "", name, item))
        return found

    def _checkpoint_info(self, rel: str, n: int, item: Mapping[str, Any] | None) -> CheckpointInfo:
        step, metrics = parse_checkpoint_name(rel.rsplit("/", 1)[-1])
        if item is not None:
            if isinstance(item.get("step"), int):
                step = item["step"]
            recorded = item.get("metrics")
            if isinstance(recorded, dict):
                metrics = {**metrics, **recorded}
        return CheckpointInfo(path=self.root / rel, version=n, step=step, metrics=metrics)

    def best(
        self, metric: str = "val_loss", mode: str = "min", *, version: int | None = None
    ) -> CheckpointInfo | None:
        """The existing checkpoint with the lowest (``min``) or highest (``max``) ``metric``.

        Over every version, or only ``version``. Recorded metrics win over the value in
        the file name; NaN values never win; ties go to the later step, then version.
        """
        if mode not in ("min", "max"):
            raise RegistryError(f"mode must be 'min' or 'max', got {mode!r}")
        records = self._all_records() if version is None else {version: self._record(version)}
        sign = 1.0 if mode == "min" else -1.0
        pattern = _metric_pattern(metric)
        best_key: tuple[float, int, int] | None = None
        best_hit: tuple[str, int, Mapping[str, Any] | None] | None = None
        best_value = 0.0
        for n, record in records.items():
            for folder, name, item in self._existing_checkpoints(n, record):
                value: Any = None
                if item is not None and isinstance(item.get("metrics"), dict):
                    value = item["metrics"].get(metric)
                if value is None and metric in name:
                    match = pattern.search(name[:-5] if name.endswith(".ckpt") else name)
                    if match:
                        value = float(match.group(2))
                if not isinstance(value, (int, float)) or value != value:  # None, NaN
                    continue
                scaled = sign * float(value)
                if best_key is not None and scaled > best_key[0]:
                    continue  # cheap reject before parsing the step
                step: Any = item.get("step") if item is not None else None
                if not isinstance(step, int):
                    step_match = _STEP_IN_NAME.search(name)
                    step = int(step_match.group(1)) if step_match else -1
                key = (scaled, -step, -n)
                if best_key is None or key < best_key:
                    best_key, best_hit, best_value = key, (folder + name, n, item), float(value)
        if best_hit is None:
            return None
        info = self._checkpoint_info(*best_hit)
        if metric in info.metrics:
            return info
        # Found by a pattern the generic name parser does not know: report what won.
        return dataclasses.replace(info, metrics={**info.metrics, metric: best_value})

    # -- configs ------------------------------------------------------------------------

    @overload
    def config(self, n: int, schema: None = None) -> dict[str, Any]: ...

    @overload
    def config(self, n: int, schema: type[C]) -> C: ...

    def config(self, n: int, schema: type[C] | None = None) -> C | dict[str, Any]:
        """The config of version ``n``: the recorded dict, or typed by ``schema``.

        Falls back to ``checkpoints/version_n/config.yaml`` when none was recorded. With
        a ``schema`` the saved YAML is loaded through ``load_yaml_config`` (so migrations
        apply) when it exists, else the recorded dict is validated.
        """
        record = self._record(n)
        saved = self.checkpoint_dir(n) / "config.yaml"
        if schema is not None:
            from versionkit.config import load_yaml_config, load_yaml_text

            if saved.is_file():
                typed: C = load_yaml_config(schema, saved)
                return typed
            data = record.get("config")
            if not isinstance(data, dict):
                raise RegistryError(f"version {n} in {self.root} has no recorded config")
            import yaml

            # Through the YAML loader so that migrations and the usual error messages apply.
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
            validated: C = load_yaml_text(schema, text, source=f"{self.root} version {n} record")
            return validated
        data = record.get("config")
        if isinstance(data, dict):
            return data
        if saved.is_file():
            import yaml

            try:
                loaded = yaml.safe_load(saved.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise RegistryError(f"cannot read {saved}: {exc}") from exc
            if isinstance(loaded, dict):
                return loaded
        raise RegistryError(
            f"version {n} in {self.root} has no recorded config and no readable {saved}"
        )

    def diff(self, a: int, b: int) -> dict[str, tuple[Any, Any]]:
        """What changed from version ``a``'s config to ``b``'s: dotted key -> (old, new)."""
        from versionkit.config import diff_configs

        changes: dict[str, tuple[Any, Any]] = diff_configs(self.config(a), self.config(b))
        return changes

    # -- maintenance ----------------------------------------------------------------------

    def repair(self) -> dict[str, Any]:
        """Rebuild the backend's state from disk; never lowers the next number.

        Returns a JSON-able report: ``next_number``, ``actions`` and
        ``untracked_folders`` (version folders that have no record).
        """
        if not self.root.is_dir():
            raise RegistryError(f"experiment root {self.root} does not exist")
        folders = self.folder_versions()
        report = dict(self.backend.repair(max(folders, default=-1) + 1))
        known = {int(r["version"]) for r in self.backend.list()}
        report["untracked_folders"] = sorted(folders - known)
        return report

    @staticmethod
    def locate(path: str | Path) -> tuple[Path, int | None]:
        """``(experiment root, N)`` of a checkpoint, a file in a version folder or the folder.

        A root itself gives ``(root, None)``. Raises ``RegistryError`` for a path that is
        none of these.
        """
        p = Path(os.path.normpath(path))  # lexical: keeps a relative path relative
        for candidate in (p, p.parent):
            match = _VERSION_DIR.match(candidate.name)
            if match and candidate.parent.name in ("checkpoints", "logs"):
                return candidate.parent.parent, int(match.group(1))
        if p.is_dir() and any((p / sub).is_dir() for sub in ("checkpoints", "logs", ".versionkit")):
            return p, None
        if p.name in ("checkpoints", "logs") and p.is_dir():
            return p.parent, None
        raise RegistryError(
            f"{path} is not an experiment root, a version folder "
            f"(<root>/checkpoints/version_N) or a file inside one"
        )
