"""The experiment folder as the registry sees it: ``version_N`` folders and relative paths.

Folders made by other tools (a plain ``TensorBoardLogger``) count: a new number is
above them, and they list as ``untracked``. Finding them must not cost a listing of
``checkpoints/`` per allocation (an experiment may hold 100,000 versions), so
:meth:`Folders.floor` lists the folders once, when the registry is new, and afterwards
only probes the numbers at and just above the backend's counter. That is where another
tool puts its next folder: each one takes one above the highest folder there is, and
the counter is never below that highest folder once a full scan has been done.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from versionkit._names import numbered, numbers_in
from versionkit.backends.base import MAX_NUMBER
from versionkit.errors import RegistryError
from versionkit.layout import CHECKPOINTS, LOGS, VERSION_PREFIX, Layout, version_dir_name

__all__ = ["Folders"]

_MAX_DIGITS = 19  # 2**62 has 19 digits; longer names are refused, never parsed
#: ``version_N`` (N: 1 to 19 ASCII digits): a name ``numbers`` counts.
_NUMBERED = numbered(f"{re.escape(VERSION_PREFIX)}([0-9]{{1,{_MAX_DIGITS}}})")


class Folders:
    """The ``version_N`` folders under one experiment root."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def _names(self) -> list[tuple[Path, str]]:
        found: list[tuple[Path, str]] = []
        for folder in (self.layout.checkpoints, self.layout.logs):
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise RegistryError(f"cannot list {folder}: {exc.strerror or exc}") from exc
            found += [(folder, name) for name in names if name.startswith(VERSION_PREFIX)]
        return found

    def numbers(self) -> set[int]:
        """Numbers N of every ``version_N`` entry in ``checkpoints/`` and ``logs/``."""
        found: set[int] = set()
        for folder in (self.layout.checkpoints, self.layout.logs):
            try:
                found.update(numbers_in(folder, _NUMBERED))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise RegistryError(f"cannot list {folder}: {exc.strerror or exc}") from exc
        return found

    def stamp(self) -> list[int | None]:
        """The mtimes (ns) of ``checkpoints/`` and ``logs/``: they change whenever a
        ``version_N`` folder is made, renamed or removed in them."""
        out: list[int | None] = []
        for folder in (self.layout.checkpoints, self.layout.logs):
            try:
                out.append(os.stat(folder).st_mtime_ns)
            except OSError:
                out.append(None)
        return out

    def exists(self, n: int) -> bool:
        """Whether ``checkpoints/version_n`` or ``logs/version_n`` exists (O(1))."""
        name = version_dir_name(n)
        return os.path.lexists(self.layout.checkpoints / name) or os.path.lexists(
            self.layout.logs / name
        )

    def floor(self, next_number: int) -> int:
        """The lowest number a new version may take given the folders on disk.

        A new registry (``next_number == 0``) lists both folders once; otherwise the
        numbers from ``next_number`` up are probed until one has no folder.
        """
        if next_number > 0:
            n = next_number
            while self.exists(n):
                n += 1
            return n
        highest = -1
        skip = len(VERSION_PREFIX)
        for folder, name in self._names():
            digits = name[skip:]
            if not (digits.isdigit() and digits.isascii()):
                continue
            if len(digits) > _MAX_DIGITS or int(digits) >= MAX_NUMBER - 1:
                raise RegistryError(
                    f"folder {folder / name} has a version number too large for a registry "
                    f"(the largest is {MAX_NUMBER - 2}); rename or remove it"
                )
            highest = max(highest, int(digits))
        return highest + 1

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the root, '/'-separated; ``RegistryError`` when outside.

        Lexical first, so ``checkpoints/`` and ``logs/`` may be symlinks to another disk;
        a path spelt through another route to the same place (resolved symlinks) is
        matched against the resolved root and its two folders.
        """
        root = os.path.abspath(self.layout.root)
        rel = os.path.relpath(os.path.abspath(path), root)
        if rel not in (".", "..") and not rel.startswith("../"):
            return Path(rel).as_posix()
        real = os.path.realpath(path)
        for base, prefix in (
            (self.layout.checkpoints, CHECKPOINTS),
            (self.layout.logs, LOGS),
            (self.layout.root, ""),
        ):
            inside = os.path.relpath(real, os.path.realpath(base))
            if inside not in (".", "..") and not inside.startswith("../"):
                return Path(prefix, inside).as_posix()
        raise RegistryError(
            f"checkpoint {path} is outside the experiment root {self.layout.root}; "
            f"checkpoints must live under it"
        )
