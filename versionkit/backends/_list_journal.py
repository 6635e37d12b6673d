"""The file backend's list journal: each record's list summary, as its writer made it.

The list cache (:mod:`versionkit.backends._list_cache`) is the reader's: a record a
listing has not seen yet (every record of a sweep that just ran) costs that listing a
read, a JSON decode and a summary. So the writer keeps the summaries too. Whenever the
file backend writes a record (``allocate``, ``modify``), it then appends one line, under
the registry lock, to ``<root>/.versionkit/list.journal``
(:data:`versionkit.layout.LIST_JOURNAL`)::

    N DIGEST SUMMARY

SUMMARY is the record's list summary text (:func:`versionkit.registry.summary.join`) and
DIGEST the BLAKE2b-128 of the record file's bytes followed by SUMMARY's. A listing
uses the last line for N only when the record file as it reads it, hashed with that
line's SUMMARY, gives DIGEST: SUMMARY is then the one computed from exactly those bytes,
so the record need not be decoded. The check reads the record (a hash instead of a
decode and a summary, about half the time), because a stat cannot vouch for a line
written in its record's own clock tick: a later change in that tick would keep the
stat (see the list cache's racy rule). So any line only saves time, never shows a
wrong row: a record changed by anything else (by hand, another tool, a versionkit
before this one) does not match its line, and a line cut by a crash, or merged with
the next one by it, matches no record.

The first line is a header, ``versionkit list journal 1 BASE NONCE``: BASE is the
file's size when it was last rewritten, NONCE tells that file from a later one (the
list cache remembers the header and how far it has read, and reads only the lines
after that). Bounded: when an append takes the file past :data:`COMPACT_AT` bytes and
twice BASE, the writer rewrites it with the last line per version (under the same
lock), so it holds about one line per version and each line is copied a bounded number
of times; a file whose header is not one (another format, a damaged start) is started
anew by the next append, since no listing reads it. Best effort: the journal is a
cache, so failing to append or rewrite it (a full disk, a read-only folder, a symlink
planted in its place, a summary that raises) never fails the write and says nothing;
the listing then reads those records.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from versionkit._atomic import write_atomic
from versionkit.backends.file import _read_fd

__all__ = ["COMPACT_AT", "PREFIX", "Journal", "append", "digest", "header", "line", "load"]

#: Every header starts so; a file that does not is ignored whole.
PREFIX = "versionkit list journal 1 "
#: The size past which an append may rewrite the file (and twice its size after the
#: last rewrite).
COMPACT_AT = 4 << 20
_DIGEST_LEN = 32  # hex characters of a 16-byte BLAKE2b digest
#: The lines read by :func:`load`: N -> (DIGEST, SUMMARY).
Journal = dict[int, tuple[str, str]]


def digest(data: bytes, summary: str) -> str:
    """The DIGEST of a record file's bytes and its summary text."""
    h = hashlib.blake2b(data, digest_size=16)
    h.update(summary.encode("utf-8"))
    return h.hexdigest()


def header(base: int) -> bytes:
    """A header line for a file of ``base`` bytes after it, with a new NONCE."""
    return f"{PREFIX}{base} {os.urandom(8).hex()}\n".encode()


def line(number: int, data: bytes, record: Mapping[str, Any]) -> bytes | None:
    """The journal line of record ``number`` whose file holds ``data`` (``None``: the
    record has no summary, or one with a line break, and lists from its record)."""
    from versionkit.registry.summary import join, record_fields

    summary = join(record_fields(record))
    if summary is None or "\n" in summary:
        return None
    return f"{number} {digest(data, summary)} {summary}\n".encode()


def append(path: Path, number: int, data: bytes, record: Mapping[str, Any]) -> None:
    """Journal record ``number`` as just written (``data``, its file's bytes): called
    under the registry lock, after the record is in place. Best effort (see above)."""
    try:
        entry = line(number, data, record)
    except Exception:  # a summary that fails must not fail the write; a listing decodes it
        return
    if entry is None:
        return
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        fd = os.open(path, flags, 0o644)
        try:
            size = os.fstat(fd).st_size
            base = _base(os.pread(fd, 256, 0)) if size else 0
            if base is None:
                # Another format, or a damaged header: no listing reads it, so start anew.
                write_atomic(path, header(len(entry)) + entry, sync=False)
                return
            os.write(fd, entry if size else header(0) + entry)
            size += len(entry)
            if size > COMPACT_AT and size > 2 * base:
                _compact(path, fd)
        finally:
            os.close(fd)


def _base(head: bytes) -> int | None:
    """BASE of a header (``None``: not a header of this format)."""
    first = head.partition(b"\n")[0].decode("ascii", "replace")
    if not first.startswith(PREFIX):
        return None
    base = first[len(PREFIX) :].partition(" ")[0]
    return int(base) if base.isdigit() and base.isascii() else None


def _lines(text: str) -> Iterator[tuple[str, str, str]]:
    """(N, DIGEST, SUMMARY) of each whole line of ``text`` that parses as one."""
    for text_line in text.split("\n")[:-1]:
        n, _, rest = text_line.partition(" ")
        if len(rest) > _DIGEST_LEN and rest[_DIGEST_LEN] == " " and n.isdigit() and n.isascii():
            yield n, rest[:_DIGEST_LEN], rest[_DIGEST_LEN + 1 :]


def _read_from(fd: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return _read_fd(fd)


def _compact(path: Path, fd: int) -> None:
    """Rewrite the journal with the last line per version (lines that do not parse go)."""
    text = _read_from(fd, 0).decode("utf-8", "replace").partition("\n")[2]
    last = {n: f"{n} {digest} {summary}\n" for n, digest, summary in _lines(text)}
    body = "".join(last.values()).encode("utf-8")
    write_atomic(path, header(len(body)) + body, sync=False)


def load(path: Path, mark: str) -> tuple[Journal, str]:
    """The journal's lines after ``mark`` (where a list cache's reading stopped; ``""``:
    from the start), the last line per version, and the mark after them. A missing or
    unreadable file, or one of another format, gives ``({}, "")``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}, ""
    try:
        head = os.pread(fd, 256, 0)
        header_bytes, newline, _ = head.partition(b"\n")
        if not newline or _base(head) is None:
            return {}, ""
        head_text = header_bytes.decode("ascii", "replace")
        start = len(header_bytes) + 1
        marked, _, end = mark.rpartition(" ")
        if marked == head_text and end.isdigit() and end.isascii():
            start = max(start, int(end))
            if start > os.fstat(fd).st_size:  # cut shorter since: read it whole
                start = len(header_bytes) + 1
        data = _read_from(fd, start)
    except OSError:
        return {}, ""
    finally:
        os.close(fd)
    whole = data.rfind(b"\n") + 1  # a line still being written waits for the next listing
    text = data[:whole].decode("utf-8", "replace")
    journal: Journal = {int(n): (digest, summary) for n, digest, summary in _lines(text)}
    return journal, f"{head_text} {start + whole}"
