"""The numbers in a folder's entry names (``version_N``, ``N.json``), read fast.

Listing these names is the part of a listing that grows with the history, so they are
read in batches and each batch is matched by one regular expression over its names
joined by NUL (which no name holds): no Python code runs per name, and memory holds the
numbers and one batch of names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from itertools import islice

__all__ = ["numbered", "numbers_in"]

_NUL = "\0"
_BATCH = 4096


def numbered(name: str) -> re.Pattern[str]:
    """The pattern of a whole entry name ``name`` (a regular expression whose one group
    is the number), for :func:`numbers_in`."""
    return re.compile(f"{_NUL}{name}(?={_NUL})")


def numbers_in(folder: str | int | os.PathLike[str], pattern: re.Pattern[str]) -> Iterator[int]:
    """The numbers of the entries of ``folder`` (a path or an open folder's descriptor)
    whose names ``pattern`` (from :func:`numbered`) matches, in the folder's order; the
    errors of :func:`os.scandir`."""
    with os.scandir(folder) as entries:
        while names := [entry.name for entry in islice(entries, _BATCH)]:
            yield from map(int, pattern.findall(_NUL + _NUL.join(names) + _NUL))
