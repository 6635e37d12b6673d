"""Reading a registry: versions, checkpoints, the best checkpoint, configs, diffs.

The cost of each query does not grow with the experiment's history where the question
does not need it: ``get``, ``show`` and ``diff`` read one or two records;
``iter_versions`` streams records (a page at a time on SQL) instead of loading them;
``best`` over every version reads the head of an index (SQL: one indexed query; file:
``best.json``) and then checks only as many files as it takes to find one that exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from versionkit.backends.base import (
    Backend,
    Record,
    check_number,
    checkpoint_metric,
    checkpoint_step,
)
from versionkit.errors import RegistryError, VersionkitError, VersionNotFoundError
from versionkit.layout import CHECKPOINT_SUFFIX, CHECKPOINTS, Layout, version_dir_name
from versionkit.registry.checkpoint_names import metric_in_name, parse_checkpoint_name, step_in_name
from versionkit.registry.folders import Folders
from versionkit.registry.views import CheckpointInfo, VersionInfo

if TYPE_CHECKING:
    from versionkit.config import ConfigModel
    from versionkit.registry.summary import ListItem

__all__ = ["Queries", "untracked_record"]

C = TypeVar("C", bound="ConfigModel")
_T = TypeVar("_T")
_List = list  # ``Queries.list`` shadows the builtin inside the class body
_UNTRACKED_KEY = "untracked_folders"
_UNTRACKED_CACHE_MAX = 1000
_WALK_LIMIT = 1000  # newest-first queries up to this many read number by number
_WALK_GAPS = 256  # numbers without a version in a row before listing instead


def untracked_record(n: int) -> Record:
    """What a ``version_N`` folder without a record lists as."""
    return {"version": n, "status": "untracked", "metrics": {}, "checkpoints": []}


def _with_untracked(
    records: Iterator[_T],
    folders: _List[int],
    newest_first: bool,
    number: Callable[[_T], int],
    stand_in: Callable[[int], _T],
) -> Iterator[_T]:
    """``records`` (in order) with a ``stand_in(n)`` for each folder number that has none.

    ``folders`` is sorted in the same order; a plain walk along it, since this runs
    once per version of a listing.
    """
    i, end = 0, len(folders)
    for record in records:
        n = number(record)
        while i < end and (folders[i] > n if newest_first else folders[i] < n):
            yield stand_in(folders[i])
            i += 1
        if i < end and folders[i] == n:
            i += 1
        yield record
    for k in range(i, end):
        yield stand_in(folders[k])


def _check_limit(limit: Any) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise RegistryError(f"limit must be an integer >= 0, got {limit!r}")


#: The summary fields of an untracked folder (they do not depend on its number).
_UNTRACKED_FIELDS: _List[str] = []


def _untracked_row(n: int) -> tuple[int, _List[str]]:
    if not _UNTRACKED_FIELDS:
        from versionkit.registry.summary import record_fields

        _UNTRACKED_FIELDS[:] = record_fields(untracked_record(0))
    return n, _UNTRACKED_FIELDS.copy()


def _safe(path: str) -> bool:
    # A hand-edited record must not point us outside the root.
    return not path.startswith("/") and ".." not in path.split("/")


class Queries:
    """The read side of :class:`~versionkit.registry.Registry` (a mixin)."""

    root: Path
    layout: Layout
    folders: Folders
    backend: Backend

    # -- versions -----------------------------------------------------------------------

    def checkpoint_dir(self, n: int) -> Path:
        """``root/checkpoints/version_n``."""
        return self.layout.checkpoint_dir(check_number(n))

    def log_dir(self, n: int) -> Path:
        """``root/logs/version_n``."""
        return self.layout.log_dir(check_number(n))

    def folder_versions(self) -> set[int]:
        """Numbers N of every ``version_N`` entry in ``checkpoints/`` and ``logs/``."""
        return self.folders.numbers()

    def _info(self, record: Mapping[str, Any]) -> VersionInfo:
        n = int(record["version"])
        return VersionInfo.from_record(
            record, self.layout.checkpoint_dir(n), self.layout.log_dir(n)
        )

    def _record(self, n: int) -> Record:
        check_number(n)
        record = self.backend.get(n)
        if record is not None:
            return record
        if self.folders.exists(n):
            return untracked_record(n)
        raise VersionNotFoundError(
            f"version {n} does not exist in {self.root}{self._known_range()}"
        )

    def _known_range(self) -> str:
        with contextlib.suppress(RegistryError):
            numbers = sorted(self.backend.numbers() | self.folders.numbers())
            if not numbers:
                return " (it has no versions yet)"
            if len(numbers) <= 8:
                return f" (known versions: {', '.join(map(str, numbers))})"
            return f" (known versions: {numbers[0]}..{numbers[-1]}, {len(numbers)} in all)"
        return ""

    def get(self, n: int) -> VersionInfo:
        """Version ``n`` (``VersionNotFoundError`` when it was never allocated)."""
        return self._info(self._record(n))

    def iter_versions(
        self, *, limit: int | None = None, newest_first: bool = False, status: str | None = None
    ) -> Iterator[VersionInfo]:
        """Versions in order (folder-only ones as ``untracked``), streamed.

        Args:
            limit: stop after this many (after the ``status`` filter).
            newest_first: highest number first (``--limit N`` shows the latest N).
            status: only versions whose recorded status is this (``untracked`` works).
        """
        for record in self.iter_records(limit=limit, newest_first=newest_first, status=status):
            yield self._info(record)

    def iter_records(
        self, *, limit: int | None = None, newest_first: bool = False, status: str | None = None
    ) -> Iterator[Record]:
        """:meth:`iter_versions` as the raw records (``{"version": N, ...}``), for
        listings that format many versions and need no typed view of each."""
        _check_limit(limit)
        if limit == 0:
            return
        if newest_first and status is None and limit is not None and limit <= _WALK_LIMIT:
            yield from self._walk_down(limit)
            return
        # Folders and records merge in order; a folder whose number has a record is that
        # version's, the others list as untracked. No set of record numbers is built.
        folders = sorted(self.folders.numbers(), reverse=newest_first)
        records = self.backend.iter_records(newest_first=newest_first)
        if folders:
            records = _with_untracked(
                records, folders, newest_first, itemgetter("version"), untracked_record
            )
        count = 0
        for record in records:
            if status is not None and record.get("status", "unknown") != status:
                continue
            yield record
            count += 1
            if limit is not None and count >= limit:
                return

    def iter_summaries(
        self, *, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[ListItem]:
        """:meth:`iter_records` as list summaries (:mod:`versionkit.registry.summary`):
        what a ``versionkit list`` table shows, without decoding whole records where the
        backend keeps summaries (SQL, and the file backend's list cache)."""
        from versionkit.registry.summary import item_of

        for n, got in self.iter_summary_fields(limit=limit, newest_first=newest_first):
            yield item_of(n, got)

    def iter_summary_fields(
        self, *, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[tuple[int, _List[str]]]:
        """:meth:`iter_summaries` as ``(number, fields)``
        (:func:`versionkit.registry.summary.fields`), the form ``versionkit list`` formats."""
        from versionkit.registry.summary import record_fields

        _check_limit(limit)
        # A backend that keeps summaries in pages reads the newest ones in a few pages;
        # the others read the newest records one number at a time (:meth:`_walk_down`).
        keeps = self.backend.pages_summaries
        if newest_first and limit is not None and limit <= _WALK_LIMIT and not keeps:
            for record in self.iter_records(limit=limit, newest_first=True):
                n = int(record["version"])
                yield n, record_fields(record)
            return
        if limit == 0:
            return
        folders = sorted(self.folders.numbers(), reverse=newest_first)
        rows = self.backend.iter_summary_fields(newest_first=newest_first)
        if folders:
            rows = _with_untracked(rows, folders, newest_first, itemgetter(0), _untracked_row)
        yield from rows if limit is None else islice(rows, limit)

    def _walk_down(self, limit: int) -> Iterator[Record]:
        """The latest ``limit`` versions, read one number at a time from the top.

        One listing of the folders (cheap: names only) and ``limit`` record reads,
        instead of a listing of every record, while gaps (deleted versions) stay few;
        after ``_WALK_GAPS`` numbers in a row without a version it lists instead.
        """
        folders = self.folders.numbers()
        n = max(max(folders, default=-1), self.backend.next_number() - 1)
        count = misses = 0
        while n >= 0 and count < limit:
            record = self.backend.get(n)
            if record is None and n in folders:
                record = untracked_record(n)
            if record is None:
                misses += 1
                if misses > _WALK_GAPS:
                    below = (r for r in self.iter_records(newest_first=True) if r["version"] < n)
                    for found in below:
                        yield found
                        count += 1
                        if count >= limit:
                            return
                    return
            else:
                misses = 0
                yield record
                count += 1
            n -= 1

    def list(self) -> _List[VersionInfo]:
        """Every version in increasing order, folder-only ones as ``untracked``."""
        return _List(self.iter_versions())

    def latest(self) -> VersionInfo | None:
        """The highest-numbered version, or ``None`` when there are none."""
        return next(self.iter_versions(limit=1, newest_first=True), None)

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

        One ``listdir`` of the version's folder decides what exists there, so a recorded
        file that was deleted costs nothing.
        """
        prefix = f"{CHECKPOINTS}/{version_dir_name(n)}/"
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
        found = [
            (prefix, name, in_folder.get(name))
            for name in names
            if name.endswith(CHECKPOINT_SUFFIX)
        ]
        for path, item in elsewhere:
            if _safe(path) and os.path.exists(os.path.join(self.root, path)):
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
        self,
        metric: str = "val_loss",
        mode: str = "min",
        *,
        version: int | None = None,
        include_pruned: bool = False,
    ) -> CheckpointInfo | None:
        """The existing checkpoint with the lowest (``min``) or highest (``max``) ``metric``.

        With ``version``: every checkpoint file of that version (recorded values win over
        the value in the file name). Without: the recorded checkpoints of every version,
        read best first from the backend's index, plus the files of ``untracked``
        version folders (by their names). NaN and infinite values never win; ties go to
        the later step, then the higher version. Versions with status ``pruned`` (a
        sweep stopped them early) are skipped unless ``include_pruned``.
        """
        if mode not in ("min", "max"):
            raise RegistryError(f"mode must be 'min' or 'max', got {mode!r}")
        sign = 1.0 if mode == "min" else -1.0
        hits: _List[tuple[tuple[float, int, int], str, int, Mapping[str, Any] | None, float]] = []
        if version is not None:
            record = self._record(version)
            hits += self._scan(version, record, metric, sign)
        else:
            hits += self._best_recorded(metric, mode, sign, include_pruned)
            for n in self._untracked_numbers():
                hits += self._scan(n, untracked_record(n), metric, sign)
        if not hits:
            return None
        _key, rel, n, item, value = min(hits, key=lambda h: h[0])
        info = self._checkpoint_info(rel, n, item)
        if info.metrics.get(metric) == value:
            return info
        # Found by a pattern the generic name parser does not know: report what won.
        return dataclasses.replace(info, metrics={**info.metrics, metric: value})

    def _untracked_numbers(self) -> _List[int]:
        """Version folders without a record, remembered in the experiment's metadata
        with the two parent folders' mtimes: while neither folder changed (no version
        folder made or removed), ``best`` lists neither them nor the records."""
        stamp = self.folders.stamp()
        cached = self.backend.get_meta().get(_UNTRACKED_KEY)
        if isinstance(cached, dict) and cached.get("stamp") == stamp:
            numbers = cached.get("numbers")
            if isinstance(numbers, list) and all(isinstance(n, int) for n in numbers):
                return numbers
        found = sorted(self.folders.numbers() - self.backend.numbers())
        if len(found) <= _UNTRACKED_CACHE_MAX:
            entry = {"stamp": stamp, "numbers": found}
            with contextlib.suppress(VersionkitError):  # a cache: a read-only store is fine
                self.backend.modify_meta(lambda _meta: {_UNTRACKED_KEY: entry})
        return found

    def _scan(
        self, n: int, record: Mapping[str, Any], metric: str, sign: float
    ) -> _List[tuple[tuple[float, int, int], str, int, Mapping[str, Any] | None, float]]:
        hits = []
        for folder, name, item in self._existing_checkpoints(n, record):
            value: Any = None
            if item is not None and isinstance(item.get("metrics"), dict):
                value = item["metrics"].get(metric)
            if value is None:
                value = metric_in_name(name, metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value != value or value in (float("inf"), float("-inf")):
                continue
            step: Any = item.get("step") if item is not None else None
            if not isinstance(step, int):
                found = step_in_name(name)
                step = -1 if found is None else found
            hits.append(((sign * float(value), -step, -n), folder + name, n, item, float(value)))
        return hits

    def _best_recorded(
        self, metric: str, mode: str, sign: float, include_pruned: bool
    ) -> _List[tuple[tuple[float, int, int], str, int, Mapping[str, Any] | None, float]]:
        statuses: dict[int, str] = {}
        for n, item in self.backend.best_candidates(metric, mode):
            path = item["path"]
            if not _safe(path) or not os.path.exists(os.path.join(self.root, path)):
                continue
            if not include_pruned:
                if n not in statuses:
                    record = self.backend.get(n)
                    statuses[n] = str((record or {}).get("status"))
                if statuses[n] == "pruned":
                    continue
            value = checkpoint_metric(item, metric)
            if value is None:
                continue
            step = checkpoint_step(item)
            return [((sign * value, -step, -n), path, n, item, value)]
        return []

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
        saved = self.layout.config_path(n)
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
