"""Atomic, durable file replacement: readers see the old bytes or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["fsync_dir", "write_atomic"]


def fsync_dir(folder: Path) -> None:
    """Make the renames inside ``folder`` durable (raises ``OSError`` where unsupported)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes | Callable[[IO[bytes]], Any],
    *,
    sync: bool = True,
    sync_dir: bool = False,
) -> None:
    """Replace ``path`` by ``data`` (bytes, or a function that writes to the open file).

    The bytes go to a hidden temp file beside ``path``, are fsynced (``sync``) and then
    renamed over it. With ``sync_dir`` the folder is fsynced too (best effort), making the
    rename itself durable; callers that write several files fsync the folder once instead.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)
