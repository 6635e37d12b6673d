"""Every error versionkit raises on purpose.

A user's mistake (bad config, unknown version, bad backend URI) is a
``VersionkitError`` subclass whose ``str()`` is one clear, complete message; CLIs print
it on one line (or a few) and exit with ``exit_code`` instead of showing a traceback.
Each class also subclasses the builtin a caller would naturally catch, so
``except ValueError`` / ``except LookupError`` / ``except OSError`` keep working.

Exit codes, one table for every CLI (``versionkit``, ``main.py``, ``inference.py``):

====  ==========================================================================
0     success
1     anything else: a failed write, a full disk, a lock timeout, a crash
2     usage or bad input: a flag, a config value, a file that is not what it should be
3     not found: a version, experiment or checkpoint that the command asks for
====  ==========================================================================
"""

from __future__ import annotations

import errno

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "BackendError",
    "ConfigError",
    "CorruptStateError",
    "DiskFullError",
    "LockTimeout",
    "RegistryError",
    "UnknownBackendError",
    "VersionNotFoundError",
    "VersionkitError",
]


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3


class VersionkitError(Exception):
    """Base class of every error raised on purpose by versionkit."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[VersionkitError], tuple[str]]:
        # Pickles across processes (multiprocessing, DDP) with its message intact.
        return (type(self), (self.message,))


class ConfigError(VersionkitError, ValueError):
    """A config could not be loaded or validated (file, flag or value)."""

    exit_code = EXIT_USAGE


class RegistryError(VersionkitError):
    """The version registry refused or failed an operation."""


class VersionNotFoundError(RegistryError, LookupError):
    """A version number that the registry does not know."""

    exit_code = EXIT_NOT_FOUND


class CorruptStateError(RegistryError):
    """Registry state on disk or in a database cannot be read; never silently reset."""


class LockTimeout(RegistryError, TimeoutError):
    """A registry lock was held by someone else for longer than the timeout."""


class BackendError(RegistryError):
    """A backend could not be reached or used (connection, permissions, schema)."""


class UnknownBackendError(BackendError, ValueError):
    """A backend URI whose scheme no installed backend handles."""

    exit_code = EXIT_USAGE


class DiskFullError(VersionkitError, OSError):
    """A write failed because the disk or the user's quota is full; nothing was changed.

    It is an ``OSError`` (``errno`` ENOSPC) too, so code that handles failed writes
    keeps handling it; ``filename`` names the file that could not be written.
    """

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.strerror = "the disk is full (no space left on device)"
        self.filename = filename

    def __reduce__(self) -> tuple[type[DiskFullError], tuple[str, str | None]]:  # type: ignore[override]
        return (type(self), (self.message, self.filename))
