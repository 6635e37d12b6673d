"""The file backend's list cache: ``versionkit list`` without reading unchanged records.

``<root>/.versionkit/list.cache`` (:data:`versionkit.layout.LIST_CACHE`) maps each
record file to the stat it had when it was read and its list summary
(:mod:`versionkit.registry.summary`), like git's index. A listing stats every record
file (named by the folder listing it makes anyway) and uses the cached summary only
where the stat matches; any other record is read, and summarised from its bytes: by
the list journal's line for it (:mod:`versionkit.backends._list_journal`, the
summaries the writers made) or a digest entry (below) where one matches those bytes,
else by decoding it. So a stale, corrupt or missing cache costs time, never a wrong
row: nothing else trusts it, ``repair`` need not know it, and deleting it is harmless.

Why the stat is a safe key: records are only ever replaced by a rename of a new file
(``write_atomic``), which gives the record a new inode, and any change of the file
(content, rename, ``utime``) sets its ctime to the current time, which no one can set
back. The key is (mtime_ns, ctime_ns, size, inode): to match a cached entry a changed
record would need the inode number reused, the same size and the same ctime tick. File
times come from a coarse clock (a kernel tick on ext4 and tmpfs, whole seconds on some
file systems), so, as git does for "racily clean" entries, a summary is keyed by the
stat only when its record's ctime is at least :data:`RACY_NS` older than the listing: a
later change then has a later ctime. A younger record's entry is keyed by its bytes
instead (``#`` and the journal's digest of them and the summary), which the next
listing checks by reading the record, and keys by the stat once it is old enough.
(Not covered: a clock stepped back by more than that, or a file server whose clock
runs that far behind this host's.)

The file, in columns so that loading it and writing it are a few calls on whole
strings rather than Python code per version: a header line (format and summary tag;
another header: the whole file is ignored), the journal mark (how far the journal was
read into it), the count N of entries, then N version numbers, N keys
(``mtime_ns:ctime_ns:size:ino`` or ``#DIGEST``) and N summaries, one a line, the k-th
of each column being one entry. A file whose line count is not that is ignored whole
(a short write, an edit); so is one whose numbers do not parse. The two layouts before
(without the mark; one line per entry) are read too, and rewritten. After a listing
that found misses or new journal lines the file is rewritten (temp file + rename) as
best effort, without the registry lock: a read-only folder, a full disk or a concurrent
listing never makes ``list`` fail or print.

The records are read relative to their folder's descriptor, each file once (its stat
taken on the open file), and the record numbers come from one regular expression per
batch of names, so what a listing costs per version is a stat (a read and a digest
when it misses, and a decode when the journal has no line for those bytes either).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from versionkit._atomic import write_atomic
from versionkit._names import numbered, numbers_in
from versionkit.backends import _list_journal
from versionkit.backends.base import Record
from versionkit.backends.file import FileBackend, _read_fd
from versionkit.errors import BackendError
from versionkit.layout import LIST_CACHE, LIST_JOURNAL
from versionkit.registry.summary import TAG, Fields, join, record_fields, split

__all__ = ["HEADER", "RACY_NS", "iter_summary_fields", "load"]

#: The first line; a file that starts with anything else is ignored.
HEADER = f"versionkit list cache 3 {TAG}"
_HEADER_2 = f"versionkit list cache 2 {TAG}"  # the layout before: no journal mark
_HEADER_1 = f"versionkit list cache 1 {TAG}"  # the one before it (see _load_1)
#: A record changed less than this before a listing is not cached by it (see above).
RACY_NS = 3_000_000_000

_Entry = tuple[str, str]  # the key, the summary
#: ``N.json`` as the file backend writes it (``file._record_number``: 1 to 19 ASCII
#: digits, no leading zero).
_RECORD = numbered(r"(0|[1-9][0-9]{0,18})\.json")


def _key(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}:{st.st_ino}"


def load(path: Path) -> dict[int, _Entry]:
    """The cached entries by version number; ``{}`` when the file is missing, unreadable,
    of another format or not whole."""
    return _load(path)[0]


def _load(path: Path) -> tuple[dict[int, _Entry], bool, str]:
    """:func:`load`, whether the file is in a layout before (to be rewritten), and the
    journal mark it holds (``""``: none)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}, False, ""
    head, _, rest = text.partition("\n")
    if head == _HEADER_1:
        return _load_1(rest), True, ""
    mark = ""
    if head == HEADER:
        mark, _, rest = rest.partition("\n")
    elif head != _HEADER_2:
        return {}, False, ""
    count, _, rest = rest.partition("\n")
    if not (count.isdigit() and count.isascii()):
        return {}, False, ""
    n = int(count)
    lines = rest.split("\n")
    if len(lines) != 3 * n + 1 or lines[-1]:
        return {}, False, ""
    try:
        numbers = list(map(int, lines[:n]))
    except ValueError:
        return {}, False, ""
    entries = zip(lines[n : 2 * n], lines[2 * n : 3 * n], strict=True)
    return dict(zip(numbers, entries, strict=True)), head != HEADER, mark


def _load_1(text: str) -> dict[int, _Entry]:
    """The entries of a cache the versionkit before wrote (one line each,
    ``N<TAB>mtime_ns<TAB>ctime_ns<TAB>size<TAB>ino<TAB>summary``; a bad line is
    skipped), so that its first listing after an upgrade needs no record read."""
    cache: dict[int, _Entry] = {}
    for line in text.split("\n"):
        parts = line.split("\t", 5)
        if len(parts) != 6:
            continue
        try:
            n, mtime, ctime, size, ino = map(int, parts[:5])
        except ValueError:
            continue
        cache[n] = (f"{mtime}:{ctime}:{size}:{ino}", parts[5])
    return cache


def _save(
    path: Path, mark: str, numbers: list[int], keys: list[str], summaries: list[str]
) -> None:
    """Best effort: any failure leaves the old file (or none) and says nothing."""
    body = "\n".join(
        [HEADER, mark, str(len(numbers)), *map(str, numbers), *keys, *summaries, ""]
    )
    with contextlib.suppress(OSError):  # DiskFullError is an OSError too
        # No fsync: a crash may leave a short or empty file, which only costs time.
        write_atomic(path, body.encode(), sync=False)


def _read_sized(fd: int, size: int) -> bytes:
    """The whole file, ``size`` long when it has not changed since its stat: then one
    read, without the read that finds the end."""
    data = os.read(fd, size + 1)
    return data if len(data) == size else data + _read_fd(fd)


def _read_record(
    backend: FileBackend, folder: int, n: int
) -> tuple[bytes, os.stat_result] | None:
    """Record ``n``'s file bytes and the stat of the very file read (``None``: no record);
    the errors of :meth:`FileBackend.get`."""
    name = f"{n}.json"
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder)
        try:
            st = os.fstat(fd)
            data = _read_sized(fd, st.st_size)
        finally:
            os.close(fd)
    except OSError as exc:
        backend._unreadable(os.path.join(backend.records_dir, name), exc)
        return None
    return data, st


def _decode(backend: FileBackend, n: int, data: bytes) -> Record:
    """Record ``n`` from its file's bytes; the errors of :meth:`FileBackend.get`."""
    path = f"{backend.records_dir}{os.sep}{n}.json"  # for messages; as os.path.join spells it
    record = backend._parse_json(path, data)
    backend._check_version(path, n, record)
    return record


def _numbers(folder: int) -> list[int]:
    """The record numbers in the folder (open as ``folder``), in increasing order."""
    return sorted(numbers_in(folder, _RECORD))


def iter_summary_fields(
    backend: FileBackend, *, newest_first: bool = False
) -> Iterator[tuple[int, Fields]]:
    """Every version's list summary fields in version order: cached where the record
    file's stat matches, else from the record (its journal line or cached digest where
    the file's bytes match it, else decoded), and the cache rewritten at the end."""
    start = time.time_ns()
    path = backend.state_dir / LIST_CACHE
    cache, old_layout, mark = _load(path)
    journal, new_mark = _list_journal.load(backend.state_dir / LIST_JOURNAL, mark)
    try:
        folder = os.open(backend.records_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        folder = -1
    except OSError as exc:
        raise BackendError(f"cannot list {backend.records_dir}: {exc.strerror or exc}") from exc
    numbers_out: list[int] = []
    keys_out: list[str] = []
    summaries_out: list[str] = []
    added = 0
    try:
        try:
            numbers = _numbers(folder) if folder >= 0 else []
        except OSError as exc:
            raise BackendError(
                f"cannot list {backend.records_dir}: {exc.strerror or exc}"
            ) from exc
        if newest_first:
            numbers.reverse()
        stat = os.stat
        for n in numbers:
            entry = cache.get(n)
            if entry is not None and entry[0][:1] != "#":
                try:
                    st = stat(f"{n}.json", dir_fd=folder)
                except FileNotFoundError:  # removed since the folder was listed
                    continue
                except OSError:
                    st = None  # reading it says what is wrong
                if st is not None and _key(st) == entry[0]:
                    got = split(entry[1])
                    if got is not None:
                        numbers_out.append(n)
                        keys_out.append(entry[0])
                        summaries_out.append(entry[1])
                        yield n, got
                        continue
            read = _read_record(backend, folder, n)
            if read is None:  # removed since the folder was listed
                continue
            data, st = read
            got, text, digest = _vouched(data, journal.get(n), entry)
            if got is None:
                got = record_fields(_decode(backend, n, data))
                text = join(got)
            # No summary (a field holds the separator) or a line break in it: listed
            # from the record every time, as SQL does.
            if text is not None and "\n" not in text:
                # A stat vouches for a record only once its ctime is RACY_NS old; until
                # then its bytes do (a digest, checked by reading it).
                if st.st_ctime_ns < start - RACY_NS:
                    key = _key(st)
                else:
                    key = "#" + (digest or _list_journal.digest(data, text))
                numbers_out.append(n)
                keys_out.append(key)
                summaries_out.append(text)
                if entry is None or entry[0] != key:
                    added += 1
            yield n, got
    finally:
        if folder >= 0:
            os.close(folder)
    if added or old_layout or len(numbers_out) != len(cache) or new_mark != mark:
        if newest_first:
            for column in (numbers_out, keys_out, summaries_out):
                column.reverse()
        _save(path, new_mark, numbers_out, keys_out, summaries_out)


def _vouched(
    data: bytes, line: tuple[str, str] | None, entry: _Entry | None
) -> tuple[Fields | None, str | None, str | None]:
    """The summary (fields, text) and digest that the journal's line or a digest entry of
    the cache gives for a record file's bytes, where one matches them; else Nones."""
    candidates = [line] if line is not None else []
    if entry is not None and entry[0][:1] == "#":
        candidates.append((entry[0][1:], entry[1]))
    for digest, text in candidates:
        if _list_journal.digest(data, text) == digest:
            got = split(text)
            if got is not None:
                return got, text, digest
    return None, None, None
