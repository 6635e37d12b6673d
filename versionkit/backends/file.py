"""The default backend: registry state in files under ``<root>/.versionkit/``.

Layout::

    <root>/.versionkit/next.json          {"next": N}: the number the next allocation gets
    <root>/.versionkit/versions/N.json    the record of version N
    <root>/.versionkit/lock               the filelock taken by every write
    <root>/.versionkit/lock.holder        "host pid time" of the current (or last) holder

Every write happens under the lock and every state file is replaced atomically (temp
file in the same folder, ``os.replace``), so a reader never sees half a file and a crash
(even SIGKILL) never loses a number that was handed out. The lock is an OS lock
(``flock``): it dies with its holder, so a killed process never leaves the registry
locked.

Durability (power loss) costs two fsyncs per allocation: the record file and its folder.
The record files are the truth: the next number is one above the highest record, or
``next.json`` when that is higher (it is written, durably, when the registry is created,
by ``raise_next_number`` and by ``repair``). Nothing is rewritten in place on the hot path:
on ext4, replacing or truncating an existing file forces a flush of its data, which
costs as much as an fsync.
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
from typing import Any, ClassVar

import filelock

from versionkit._atomic import fsync_dir, write_atomic
from versionkit.backends.base import Backend, Record
from versionkit.errors import BackendError, CorruptStateError, LockTimeout, VersionNotFoundError

__all__ = ["STATE_DIR", "FileBackend"]

#: Name of the state folder inside the experiment root.
STATE_DIR = ".versionkit"
_COUNTER = "next.json"
_RECORDS = "versions"
_LOCK = "lock"
_HOLDER = "lock.holder"
_HOLDER_WIDTH = 160
# filelock waits by polling a non-blocking flock; its 50 ms default turns 16 contending
# processes into ~20 allocations/s. A hold lasts ~1 ms, so poll at about that scale.
_POLL_INTERVAL = 0.002


def _encode(record: Mapping[str, Any], what: str) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BackendError(f"{what} is not JSON-able: {exc}") from exc


class FileBackend(Backend):
    """Registry state in JSON files under the experiment root, allocation under a file lock.

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
        self.lock_path = self.state_dir / _LOCK
        self.holder_path = self.state_dir / _HOLDER
        self._filelock: filelock.FileLock | None = None
        self._host = socket.gethostname()

    # -- helpers -----------------------------------------------------------------------

    def describe(self) -> str:
        return f"file registry {self.state_dir}"

    def _record_path(self, number: int) -> Path:
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise VersionNotFoundError(
                f"version {number!r} is not a valid version number (expected an integer >= 0)"
            )
        return self.records_dir / f"{number}.json"

    def _corrupt(self, path: Path | str, why: str) -> CorruptStateError:
        return CorruptStateError(
            f"registry state file {path} is corrupt ({why}); nothing was changed. Run "
            f"'versionkit repair {self.root}' to rebuild the state from what is on disk"
        )

    def _read_json(self, path: Path | str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise self._corrupt(path, "it is a folder") from exc
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            value = json.loads(data.decode("utf-8"))
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
            text = self.holder_path.read_text(encoding="utf-8").split()
        except OSError:
            return "holder unknown"
        if len(text) >= 2:
            since = ""
            if len(text) >= 3:
                with contextlib.suppress(ValueError):
                    since = time.strftime(" since %H:%M:%S", time.localtime(float(text[2])))
            return f"held by pid {text[1]} on host {text[0]}{since}"
        return "holder unknown"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
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
        line = f"{self._host} {os.getpid()} {time.time():.3f}"[: _HOLDER_WIDTH - 1]
        with contextlib.suppress(OSError):
            fd = os.open(self.holder_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, (line.ljust(_HOLDER_WIDTH - 1) + "\n").encode(), 0)
            finally:
                os.close(fd)

    def _counter(self) -> int | None:
        counter = self._read_json(self.counter_path)
        if counter is None:
            return None
        value = counter.get("next")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._corrupt(self.counter_path, f"'next' is {value!r}, not an int >= 0")
        return value

    def _next_unlocked(self) -> tuple[int, bool]:
        """(the next number, whether ``next.json`` exists)."""
        numbers = self._record_numbers()
        counter = self._counter()
        if counter is None and numbers:
            raise self._corrupt(self.counter_path, "missing while version records exist")
        return max(counter or 0, numbers[-1] + 1 if numbers else 0), counter is not None

    def _record_numbers(self) -> list[int]:
        try:
            entries = os.listdir(self.records_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {self.records_dir}: {exc.strerror or exc}") from exc
        numbers = [
            int(stem)
            for stem in (name[:-5] for name in entries if name.endswith(".json"))
            if stem.isdigit() and stem.isascii()
        ]
        numbers.sort()
        return numbers

    def _write_counter(self, number: int) -> None:
        write_atomic(self.counter_path, _encode({"next": number}, "counter"))
        fsync_dir(self.state_dir)

    def _write_record(self, number: int, record: Mapping[str, Any]) -> None:
        write_atomic(self._record_path(number), _encode(record, f"record of version {number}"))

    def _wrap_os(self, exc: OSError) -> BackendError:
        where = exc.filename or self.state_dir
        return BackendError(f"cannot write registry state {where}: {exc.strerror or exc}")

    # -- the primitives ----------------------------------------------------------------

    def allocate(self, floor: int, record: Mapping[str, Any]) -> int:
        data = dict(record)
        _encode(data, "record")
        with self._locked():
            current, has_counter = self._next_unlocked()
            number = max(current, floor)
            data["version"] = number
            try:
                if not has_counter:  # a new registry: from now on a missing counter is damage
                    self._write_counter(0)
                self._write_record(number, data)
                fsync_dir(self.records_dir)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
        return number

    def _read_record(self, path: Path | str, number: int) -> Record | None:
        record = self._read_json(path)
        if record is not None and record.get("version") != number:
            raise self._corrupt(
                Path(path), f"it holds version {record.get('version')!r}, not {number}"
            )
        return record

    def get(self, number: int) -> Record | None:
        return self._read_record(self._record_path(number), number)

    def list(self) -> list[Record]:
        records = []
        folder = str(self.records_dir)
        for number in self._record_numbers():
            # Plain string paths: this runs once per version for every listing and best().
            record = self._read_record(os.path.join(folder, f"{number}.json"), number)
            if record is not None:
                records.append(record)
        return records

    def update(self, number: int, patch: Mapping[str, Any]) -> None:
        patch = dict(patch)
        self.modify(number, lambda _record: patch)

    def modify(self, number: int, change: Callable[[Record], Mapping[str, Any]]) -> None:
        path = self._record_path(number)
        with self._locked():
            record = self._read_record(path, number)
            if record is None:
                raise VersionNotFoundError(f"version {number} does not exist in {self.describe()}")
            patch = change(dict(record))
            if not patch:
                return
            record.update(patch)
            record["version"] = number
            data = _encode(record, f"record of version {number}")
            try:
                write_atomic(path, data)
                fsync_dir(self.records_dir)
            except OSError as exc:
                raise self._wrap_os(exc) from exc

    def append(self, number: int, key: str, item: Any) -> None:
        self.modify(number, lambda record: {key: [*(record.get(key) or []), item]})

    def next_number(self) -> int:
        return self._next_unlocked()[0]

    def raise_next_number(self, at_least: int) -> int:
        with self._locked():
            current = self._next_unlocked()[0]
            if at_least <= current:
                return current
            try:
                self._write_counter(at_least)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
            return at_least

    # -- repair ----------------------------------------------------------------------

    def _set_aside(self, path: Path) -> Path:
        target = path.with_name(path.name + ".corrupt")
        index = 1
        while target.exists():
            index += 1
            target = path.with_name(f"{path.name}.corrupt{index}")
        os.replace(path, target)
        return target

    def repair(self, floor: int) -> dict[str, Any]:
        """Rebuild the counter and unreadable records; never lowers the next number.

        Unreadable files are kept under ``<name>.corrupt`` and replaced: a record by a
        stub with status ``unknown``, the counter by one above everything known (the
        records, the set-aside files' numbers, the folders, the old counter if readable).
        """
        actions: list[str] = []
        with self._locked():
            try:
                for folder in (self.state_dir, self.records_dir):
                    for name in os.listdir(folder):
                        if name.startswith(".") and name.endswith(".tmp"):
                            os.unlink(folder / name)
                            actions.append(f"removed unfinished write {folder / name}")
                highest = -1
                for number in self._record_numbers():
                    path = self._record_path(number)
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
                    match = re.match(r"^(\d+)\.json\.corrupt\d*$", name)
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
                fsync_dir(self.records_dir)
                fsync_dir(self.state_dir)
            except OSError as exc:
                raise self._wrap_os(exc) from exc
        return {"next_number": target, "previous_next_number": previous, "actions": actions}
