"""Atomic, durable file replacement: readers see the old bytes or the new, never a mix."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from versionkit.errors import DiskFullError

__all__ = ["fsync_dir", "write_atomic"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_dir(folder: Path) -> None:
    """Make the renames inside ``folder`` durable (raises ``OSError`` where unsupported)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(exc: BaseException) -> bool:
    # torch.save reports a failed write as RuntimeError("unexpected pos ...") whose
    # context is the OSError, so look through the whole chain.
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _umask() -> int:
    # /proc says it without changing it; os.umask() can only be read by setting it.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_mode(fd: int, path: Path) -> None:
    # mkstemp creates the file 0600; give it the mode open() would: the replaced file's
    # mode when there is one (as writing it in place keeps it), else 0666 minus the umask.
    try:
        old = os.lstat(path)
    except OSError:
        old = None
    if old is not None and stat.S_ISREG(old.st_mode):
        wanted = stat.S_IMODE(old.st_mode)
    else:
        wanted = 0o666 & ~_umask()
    os.fchmod(fd, wanted)


def write_atomic(
    path: Path,
    data: bytes | Callable[[IO[bytes]], Any],
    *,
    sync: bool = True,
    sync_dir: bool = False,
) -> None:
    """Replace ``path`` by ``data`` (bytes, or a function that writes to the open file).

    The bytes go to a hidden temp file beside ``path``, are fsynced (``sync``) and then
    renamed over it, so a symlink at ``path`` is replaced, never followed. A new file gets
    the mode ``open()`` would give it (the umask applies); a replaced file keeps its mode.
    With ``sync_dir`` the folder is fsynced too (best effort), making the rename itself
    durable; callers that write several files fsync the folder once instead.

    Raises:
        DiskFullError: the disk (or quota) is full; ``path`` is unchanged.
        OSError: any other failure; ``path`` is unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _set_mode(fd, path)
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, Exception) and _disk_full(exc):
            raise DiskFullError(
                f"cannot write {path}: the disk is full (no space left on device); "
                "the file was not changed",
                filename=str(path),
            ) from None
        raise
    if sync_dir:
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)
