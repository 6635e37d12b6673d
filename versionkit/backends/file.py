"""The default backend: registry state in files under ``<root>/.versionkit/``.

Layout::

    <root>/.versionkit/next.json          {"next": N}: one above the highest number ever
                                          handed out; never lowered
    <root>/.versionkit/versions/N.json    the record of version N
    <root>/.versionkit/meta.json          the experiment's metadata dict (tags, ...)
    <root>/.versionkit/best.json          the best-checkpoint index (a cache, see below)
    <root>/.versionkit/lock               the filelock taken by every write
    <root>/.versionkit/lock.holder        "host pid time" of the current (or last) holder
    <root>/.versionkit/list.cache         list summaries by record stat: a reader's cache,
                                          written without the lock (see _list_cache)
    <root>/.versionkit/list.journal       list summaries as each record's writer made them,
                                          appended under the lock (see _list_journal)

Every write happens under the lock and every state file is replaced atomically (temp
file in the same folder, ``os.replace``, which replaces a symlink rather than writing
through it), so a reader never sees half a file and a crash (even SIGKILL) never loses
a number that was handed out. The lock is an OS lock (``flock``): it dies with its
holder, so a killed process never leaves the registry locked.

Allocation reads the counter, writes it one higher and then writes the record: O(1)
in the number of versions, and a crash between the two only burns a number. Deleting
records or folders never brings a number back. A counter found behind an existing
record (state written by an older versionkit, or edited by hand) is lifted above every
record once, by listing them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from versionkit._atomic import fsync_dir, write_atomic
from versionkit._faults import pause_point
from versionkit.backends._best_index import BestIndex
from versionkit.backends.base import Backend, Change, Record, encode_json
from versionkit.errors import BackendError, CorruptStateError, LockTimeout, VersionNotFoundError
from versionkit.layout import LIST_JOURNAL, STATE_DIR

if TYPE_CHECKING:
    import filelock

    from versionkit.registry.summary import Fields, ListItem

__all__ = ["STATE_DIR", "FileBackend"]

_List = list  # ``FileBackend.list`` shadows the builtin inside the class body

_COUNTER = "next.json"
_RECORDS = "versions"
_META = "meta.json"
_BEST = "best.json"
_LOCK = "lock"
_HOLDER = "lock.holder"
_HOLDER_WIDTH = 160
# filelock waits by polling a non-blocking flock; its 50 ms default turns 16 contending
# processes into ~20 allocations/s. A hold lasts ~1 ms, so poll at about that scale.
_POLL_INTERVAL = 0.002


def _record_number(name: str) -> int | None:
    """N of a record file name ``N.json`` written as this backend writes it, else None."""
    stem = name[:-5]
    if (
        name.endswith(".json")
        and stem.isdigit()
        and stem.isascii()
        and len(stem) <= 19
        and (stem[0] != "0" or stem == "0")
    ):
        return int(stem)
    return None


# What json.loads runs, without its checks around it.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"


def _loads(text: str) -> Any:
    """``json.loads(text)``: the same value, or the same error. A text that starts with
    its value goes to the decoder's scanner directly (a listing decodes every record,
    and ``loads`` spends ~15 % of a record's time matching whitespace around it)."""
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)  # says what is wrong (or takes leading whitespace)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        return json.loads(text)  # extra data: its error
    return value


def _read_fd(fd: int) -> bytes:
    chunks = [os.read(fd, 65536)]
    while chunks[-1]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks)


def _read_bytes(path: Path | str) -> bytes:
    """The whole file, with bare syscalls: a listing reads one record file per version."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


class FileBackend(Backend):
    """Registry state in JSON files under the experiment root, writes under a file lock.

    Args:
        uri: ``"file"`` (or ``"file://"``); the state always lives in the experiment root.
        root: the experiment folder.
        experiment: unused (the folder is the experiment), kept for the contract.
        lock_timeout: seconds to wait for the lock before ``LockTimeout``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(
        self, uri: str, root: Path, experiment: str, *, lock_timeout: float = 60.0
    ) -> None:
        super().__init__(uri, root, experiment)
        rest = uri.split("://", 1)[1] if "://" in uri else uri.partition(":")[2]
        if rest.strip("/"):
            raise BackendError(
                f"file backend URI {uri!r} names a path, but the file backend keeps its state "
                f"inside the experiment folder; use 'file'"
            )
        self.lock_timeout = lock_timeout
        self.state_dir = Path(root) / STATE_DIR
        self.records_dir = self.state_dir / _RECORDS
        self.counter_path = self.state_dir / _COUNTER
        self.meta_path = self.state_dir / _META
        self.lock_path = self.state_dir / _LOCK
        self.holder_path = self.state_dir / _HOLDER
        self.best_index = BestIndex(self.state_dir / _BEST, self._read_json)
        self._filelock: filelock.FileLock | None = None
        self._host = socket.gethostname()

    # -- helpers -----------------------------------------------------------------------

    def describe(self) -> str:
        return f"file registry {self.state_dir}"

    def _record_path(self, number: int) -> str:
        # Plain strings: this runs once per version for every listing.
        return os.path.join(self.records_dir, f"{self.check_number(number)}.json")

    def _corrupt(self, path: Path | str, why: str) -> CorruptStateError:
        return CorruptStateError(
            f"registry state file {path} is corrupt ({why}); nothing was changed. Run "
            f"'versionkit repair {self.root}' to rebuild the state from what is on disk"
        )

    def _read_json(self, path: Path | str) -> dict[str, Any] | None:
        try:
            data = _read_bytes(path)
        except OSError as exc:
            self._unreadable(path, exc)
            return None
        return self._parse_json(path, data)

    def _unreadable(self, path: Path | str, exc: OSError) -> None:
        """Returns for a missing file (no record), else raises the error to show."""
        if isinstance(exc, FileNotFoundError):
            return None
        if isinstance(exc, IsADirectoryError):
            raise self._corrupt(path, "it is a folder") from exc
        raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _parse_json(self, path: Path | str, data: bytes) -> dict[str, Any]:
        try:
            value = _loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._corrupt(path, f"not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise self._corrupt(path, f"expected a JSON object, found {type(value).__name__}")
        return value

    def _ensure_dirs(self) -> None:
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the registry state folder {self.records_dir}: {exc.strerror or exc}"
            ) from exc

    def _holder(self) -> str:
        try:
            fd = os.open(self.holder_path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                text = f.read(_HOLDER_WIDTH).decode("utf-8", "replace").split()
        except OSError:
            return "holder unknown"
        if len(text) >= 2:
            since = ""
            if len(text) >= 3:
                with contextlib.suppress(ValueError, OverflowError, OSError):
                    since = time.strftime(" since %H:%M:%S", time.localtime(float(text[2])))
            return f"held by pid {text[1]} on host {text[0]}{since}"
        return "holder unknown"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import filelock  # here: reads (versionkit list) take no lock, and it costs ~12 ms

        self._ensure_dirs()
        if self._filelock is None:
            self._filelock = filelock.FileLock(str(self.lock_path), timeout=self.lock_timeout)
        lock = self._filelock
        try:
            lock.acquire(timeout=self.lock_timeout, poll_interval=_POLL_INTERVAL)
        except filelock.Timeout as exc:
            raise LockTimeout(
                f"timed out after {self.lock_timeout:g} s waiting for the registry lock "
                f"{self.lock_path} ({self._holder()}); another process is allocating or "
                f"writing, or is stuck while holding it"
            ) from exc
        except OSError as exc:
            raise BackendError(
                f"cannot take the registry lock {self.lock_path}: {exc.strerror or exc}"
            ) from exc
        try:
            self._mark_holder()
            yield
        finally:
            lock.release()

    def _mark_holder(self) -> None:
        # Diagnostic only (for the timeout message), so not fsynced; written in place at a
        # fixed width because truncating or replacing the file would force a flush.
        # O_NOFOLLOW: a symlink planted here is removed, never written through.
        line = f"{self._host} {os.getpid()} {time.time():.3f}"[: _HOLDER_WIDTH - 1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
        for _attempt in range(2):
            try:
                fd = os.open(self.holder_path, flags, 0o644)
            except OSError:
                if not os.path.islink(self.holder_path):
                    return
                with contextlib.suppress(OSError):
                    os.unlink(self.holder_path)
                continue
            try:
                os.pwrite(fd, (line.ljust(_HOLDER_WIDTH - 1) + "\n").encode(), 0)
            except OSError:
                pass
            finally:
                os.close(fd)
            return

    def _counter(self) -> int | None:
        counter = self._read_json(self.counter_path)
        if counter is None:
            return None
        value = counter.get("next")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._corrupt(self.counter_path, f"'next' is {value!r}, not an int >= 0")
        return value

    def _any_record(self) -> bool:
        try:
            with os.scandir(self.records_dir) as entries:
                return any(_record_number(e.name) is not None for e in entries)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def _next_unlocked(self) -> tuple[int, bool]:
        """(the next number, whether ``next.json`` exists); O(1) unless the counter is behind.

        The counter is the truth. A record at (or above) it means the counter is stale
        (an older versionkit did not advance it on every allocation): then, and only
        then, the records are listed and the number goes above all of them.
        """
        counter = self._counter()
        if counter is None:
            if self._any_record():
                raise self._corrupt(self.counter_path, "missing while version records exist")
            return 0, False
        if os.path.lexists(os.path.join(self.records_dir, f"{counter}.json")):
            numbers = self._record_numbers()
            return max(counter, numbers[-1] + 1), True
        return counter, True

    def _record_numbers(self) -> list[int]:
        try:
            # Streamed: the memory of a listing holds the numbers, not every file name.
            with os.scandir(self.records_dir) as entries:
                names = (entry.name for entry in entries)
                numbers = [n for n in map(_record_number, names) if n is not None]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {self.records_dir}: {exc.strerror or exc}") from exc
        numbers.sort()
        return numbers

    def _write_counter(self, number: int) -> None:
        write_atomic(self.counter_path, encode_json({"next": number}, "counter").encode())

    def _write_record(self, number: int, record: Mapping[str, Any]) -> bytes:
        data = encode_json(record, f"record of version {number}").encode("utf-8")
        write_atomic(Path(self._record_path(number)), data)
        return data

    def _journal(self, number: int, data: bytes, record: Mapping[str, Any]) -> None:
        """The record's list summary into the list journal (see _list_journal): under the
        lock, once the record is in place; best effort."""
        from versionkit.backends import _list_journal

        pause_point("journal:before-append")
        _list_journal.append(self.state_dir / LIST_JOURNAL, number, data, record)

    def _wrap_os(self, exc: OSError) -> BackendError:
        where = exc.filename or self.state_dir
        return BackendError(f"cannot write registry state {where}: {exc.strerror or exc}")

    # -- the primitives ----------------------------------------------------------------

    def allocate(self, floor: int, record: Mapping[str, Any]) -> int:
        data = dict(record)
        encode_json(data, "record")
        with self._locked():
            current, has_counter = self._next_unlocked()
            number = max(current, floor)
            data["version"] = number
            try:
                # The counter first: a crash before the record only burns the number.
                self._write_counter(number + 1)
                fsync_dir(self.state_dir)
                pause_point("allocate:after-counter")
                if not has_counter:
                    self.best_index.create_empty()
                written = self._write_record(number, data)
                fsync_dir(self.records_dir)
                self._journal(number, written, data)
                if data.get("checkpoints"):
                    self.best_index.change(number, [], data["checkpoints"])
            except OSError as exc:
                raise self._wrap_os(exc) from exc
        return number

    def _read_record(self, path: str, number: int) -> Record | None:
        record = self._read_json(path)
        if record is not None:
            self._check_version(path, number, record)
        return record

    def _check_version(self, path: str, number: int, record: Record) -> None:
        if record.get("version") != number:
            raise self._corrupt(path, f"it holds version {record.get('version')!r}, not {number}")

    def get(self, number: int) -> Record | None:
        return self._read_record(self._record_path(number), number)

    def list(self) -> list[Record]:
        return list(self.iter_records())

    def iter_records(self, *, newest_first: bool = False) -> Iterator[Record]:
        numbers = self._record_numbers()
        if newest_first:
            numbers.reverse()
        folder = os.path.join(self.records_dir, "")
        for number in numbers:
            record = self._read_record(f"{folder}{number}.json", number)
            if record is not None:
                yield record

    def iter_summaries(self, *, newest_first: bool = False) -> Iterator[ListItem]:
        """Every version's list summary, from the list cache where a record's stat
        matches it (:mod:`versionkit.backends._list_cache`), else from the record."""
        from versionkit.registry.summary import item_of

        for n, got in self.iter_summary_fields(newest_first=newest_first):
            yield item_of(n, got)

    def iter_summary_fields(self, *, newest_first: bool = False) -> Iterator[tuple[int, Fields]]:
        """:meth:`iter_summaries` as the fields of each summary."""
        from versionkit.backends._list_cache import iter_summary_fields

        return iter_summary_fields(self, newest_first=newest_first)

    def numbers(self) -> set[int]:
        return set(self._record_numbers())

    def modify(self, number: int, change: Change) -> Record:
        path = self._record_path(number)
        with self._locked():
            record = self._read_record(path, number)
            if record is None:
                raise VersionNotFoundError(f"version {number} does not exist in {self.describe()}")
            new = self._merge(number, record, change)
            if new is None:
                return record
            data = encode_json(new, f"record of version {number}").encode("utf-8")
            old_items, new_items = record.get("checkpoints"), new.get("checkpoints")
            try:
                if old_items != new_items:
                    # Additions reach the index before the record, removals after it: a
                    # crash in between leaves extra entries, which queries check anyway.
                    self.best_index.change(number, old_items, new_items, removals=False)
                write_atomic(Path(path), data)
                fsync_dir(self.records_dir)
                self._journal(number, data, new)
                pause_point("modify:after-record")
                if old_items != new_items:
                    self.best_index.change(number, old_items, new_items, additions=False)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
            return new

    def next_number(self) -> int:
        return self._next_unlocked()[0]

    def raise_next_number(self, at_least: int) -> int:
        with self._locked():
            current = self._next_unlocked()[0]
            if at_least <= current:
                return current
            try:
                self._write_counter(at_least)
                fsync_dir(self.state_dir)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
            return at_least

    def get_meta(self) -> Record:
        return self._read_json(self.meta_path) or {}

    def modify_meta(self, change: Change) -> Record:
        with self._locked():
            meta = self._read_json(self.meta_path) or {}
            new = self._merge_meta(meta, change)
            if new is None:
                return meta
            try:
                write_atomic(self.meta_path, encode_json(new, "experiment metadata").encode())
                fsync_dir(self.state_dir)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
            return new

    def best_candidates(self, metric: str, mode: str) -> Iterator[tuple[int, Record]]:
        """Best first from the index, each checked against its record; else a scan."""
        yield from self.best_index.candidates(metric, mode, self, self._rebuild_index)

    def _rebuild_index(self) -> None:
        with contextlib.suppress(OSError, BackendError), self._locked():
            self.best_index.rebuild(self.iter_records())

    # -- repair ----------------------------------------------------------------------

    def _set_aside(self, path: Path) -> Path:
        target = path.with_name(path.name + ".corrupt")
        index = 1
        while target.exists():
            index += 1
            target = path.with_name(f"{path.name}.corrupt{index}")
        os.replace(path, target)
        return target

    def _canonical_names(self, actions: _List[str]) -> None:
        """``007.json`` -> ``7.json`` (set aside when ``7.json`` exists too)."""
        for name in sorted(os.listdir(self.records_dir)):
            match = re.match(r"^(\d+)\.json$", name)
            if not match or _record_number(name) is not None:
                continue
            path = self.records_dir / name
            canonical = self.records_dir / f"{int(match.group(1))}.json"
            if len(match.group(1)) > 19 or canonical.exists():
                kept = self._set_aside(path)
                actions.append(f"set aside {name} (kept as {kept.name})")
            else:
                os.replace(path, canonical)
                actions.append(f"renamed {name} to {canonical.name}")

    def repair(self, floor: int) -> dict[str, Any]:
        """Rebuild the counter and unreadable records; never lowers the next number.

        Unreadable files are kept under ``<name>.corrupt`` and replaced: a record by a
        stub with status ``unknown``, the counter by one above everything known (the
        records, the set-aside files' numbers, the folders, the old counter if readable).
        The best-checkpoint index is rebuilt from the records.
        """
        actions: _List[str] = []
        with self._locked():
            try:
                for folder in (self.state_dir, self.records_dir):
                    for name in os.listdir(folder):
                        if name.startswith(".") and name.endswith(".tmp"):
                            os.unlink(folder / name)
                            actions.append(f"removed unfinished write {folder / name}")
                self._canonical_names(actions)
                highest = -1
                for number in self._record_numbers():
                    path = self.records_dir / f"{number}.json"
                    highest = max(highest, number)
                    try:
                        record = self._read_json(path)
                    except CorruptStateError:
                        record = None
                    if record is not None and record.get("version") == number:
                        continue
                    kept = self._set_aside(path)
                    self._write_record(
                        number,
                        {
                            "version": number,
                            "status": "unknown",
                            "error": f"record was unreadable; the original is kept as {kept}",
                            "metrics": {},
                            "checkpoints": [],
                        },
                    )
                    actions.append(f"replaced unreadable record {path} (kept as {kept.name})")
                for name in os.listdir(self.records_dir):
                    match = re.match(r"^(\d{1,19})\.json\.corrupt\d*$", name)
                    if match:
                        highest = max(highest, int(match.group(1)))
                previous: int | None
                try:
                    counter = self._counter()
                    previous = max(counter or 0, highest + 1)
                    if counter is None and highest >= 0:
                        actions.append(f"recreated the missing counter {self.counter_path.name}")
                except CorruptStateError:
                    kept = self._set_aside(self.counter_path)
                    actions.append(f"set aside unreadable counter (kept as {kept.name})")
                    counter = previous = None
                target = max(highest + 1, floor, counter or 0)
                if counter != target:
                    self._write_counter(target)
                if previous != target:
                    actions.append(f"next number set to {target} (was {previous})")
                try:
                    self._read_json(self.meta_path)
                except CorruptStateError:
                    kept = self._set_aside(self.meta_path)
                    actions.append(f"set aside unreadable metadata (kept as {kept.name})")
                self.best_index.rebuild(self.iter_records())
                fsync_dir(self.records_dir)
                fsync_dir(self.state_dir)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
        return {"next_number": target, "previous_next_number": previous, "actions": actions}
