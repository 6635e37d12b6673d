"""The file backend's list cache: ``versionkit list`` without reading unchanged records.

``<root>/.versionkit/list.cache`` (:data:`versionkit.layout.LIST_CACHE`) maps each
record file to the stat it had when it was read and its list summary
(:mod:`versionkit.registry.summary`), like git's index. A listing stats every record
file (from the folder listing it makes anyway) and uses the cached summary only where
the stat matches; any other record is read and summarised. So a stale, corrupt or
missing cache costs time, never a wrong row: nothing else trusts it, ``repair`` need
not know it, and deleting it is harmless.

Why the stat is a safe key: records are only ever replaced by a rename of a new file
(``write_atomic``), which gives the record a new inode, and any change of the file
(content, rename, ``utime``) sets its ctime to the current time, which no one can set
back. The key is (mtime_ns, ctime_ns, size, inode): to match a cached entry a changed
record would need the inode number reused, the same size and the same ctime tick. File
times come from a coarse clock (a kernel tick on ext4 and tmpfs, whole seconds on some
file systems), so, as git does for "racily clean" entries, a summary is cached only when
its record's ctime is at least :data:`RACY_NS` older than the listing: a later change
then has a later ctime. (Not covered: a clock stepped back by more than that, or a file
server whose clock runs that far behind this host's.)

The file: a header line (format and summary tag; another header: the whole file is
ignored), then one line per version, ``N<TAB>mtime_ns<TAB>ctime_ns<TAB>size<TAB>ino
<TAB>summary``; a bad line is ignored. After a listing that found misses the file is
rewritten (temp file + rename) as best effort, without the registry lock: a read-only
folder, a full disk or a concurrent listing never makes ``list`` fail or print.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

from versionkit._atomic import write_atomic
from versionkit.backends.base import Record
from versionkit.backends.file import FileBackend, _read_fd, _record_number
from versionkit.errors import BackendError
from versionkit.layout import LIST_CACHE
from versionkit.registry.summary import SEP, TAG, fields, list_item, split

__all__ = ["HEADER", "RACY_NS", "iter_summary_fields", "load"]

#: The first line; a file that starts with anything else is ignored.
HEADER = f"versionkit list cache 1 {TAG}"
#: A record changed less than this before a listing is not cached by it (see above).
RACY_NS = 3_000_000_000

_Key = tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode
_Entry = tuple[_Key, str]


def _key(st: os.stat_result) -> _Key:
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def load(path: Path) -> dict[int, _Entry]:
    """The cached entries by version number; ``{}`` when the file is missing, unreadable
    or of another format."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    lines = text.split("\n")
    if lines[0] != HEADER:
        return {}
    cache: dict[int, _Entry] = {}
    for line in lines[1:]:
        parts = line.split("\t", 5)
        if len(parts) != 6:
            continue
        try:
            n, mtime, ctime, size, ino = map(int, parts[:5])
        except ValueError:
            continue
        cache[n] = ((mtime, ctime, size, ino), parts[5])
    return cache


def _save(path: Path, entries: dict[int, _Entry]) -> None:
    """Best effort: any failure leaves the old file (or none) and says nothing."""
    body = "".join(
        f"{n}\t{k[0]}\t{k[1]}\t{k[2]}\t{k[3]}\t{text}\n" for n, (k, text) in entries.items()
    )
    with contextlib.suppress(OSError):  # DiskFullError is an OSError too
        # No fsync: a crash may leave a short or empty file, which only costs time.
        write_atomic(path, f"{HEADER}\n{body}".encode(), sync=False)


def _read_stat(path: str) -> tuple[bytes, os.stat_result]:
    """The whole file and the stat of the very file read (taken before reading it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        return _read_fd(fd), st
    finally:
        os.close(fd)


def _read_record(backend: FileBackend, path: str, n: int) -> tuple[Record, os.stat_result] | None:
    """Record ``n`` and the stat of the file it was read from (``None``: no record); the
    errors of :meth:`FileBackend.get`."""
    try:
        data, st = _read_stat(path)
    except OSError as exc:
        backend._unreadable(path, exc)
        return None
    record = backend._parse_json(path, data)
    backend._check_version(path, n, record)
    return record, st


def _stat_records(backend: FileBackend, stat: bool) -> list[tuple[int, os.stat_result | None]]:
    """The record numbers and, with ``stat``, each record file's stat."""
    found: list[tuple[int, os.stat_result | None]] = []
    try:
        with os.scandir(backend.records_dir) as entries:
            for entry in entries:
                n = _record_number(entry.name)
                if n is None:
                    continue
                try:
                    found.append((n, entry.stat() if stat else None))
                except FileNotFoundError:  # removed since the folder was listed
                    continue
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BackendError(f"cannot list {backend.records_dir}: {exc.strerror or exc}") from exc
    found.sort(key=itemgetter(0))
    return found


def iter_summary_fields(
    backend: FileBackend, *, newest_first: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """Every version's list summary fields in version order: cached where the record
    file's stat matches, else read from the record (and the cache rewritten at the end)."""
    start = time.time_ns()
    path = backend.state_dir / LIST_CACHE
    cache = load(path)
    records = _stat_records(backend, stat=bool(cache))  # no cache: every record is read
    if newest_first:
        records.reverse()
    folder = os.path.join(backend.records_dir, "")
    kept: dict[int, _Entry] = {}
    added = 0
    for n, st in records:
        entry = cache.get(n)
        if entry is not None and st is not None and entry[0] == _key(st):
            got = split(entry[1])
            if got is not None:
                kept[n] = entry
                yield n, got
                continue
        read = _read_record(backend, f"{folder}{n}.json", n)
        if read is None:  # removed since the folder was listed
            continue
        record, st = read
        got = fields(list_item(n, record))
        text = SEP.join(got)
        # No summary (a field holds the separator), a line break in it, or a record too
        # recent to trust its stat: listed from the record every time, as SQL does.
        if (text.count(SEP) == len(got) - 1 and "\n" not in text
                and st.st_ctime_ns < start - RACY_NS):
            kept[n] = (_key(st), text)
            added += 1
        yield n, got
    if added or len(kept) != len(cache):
        if newest_first:
            kept = dict(sorted(kept.items()))
        _save(path, kept)
