"""Every error versionkit raises on purpose.

A user's mistake (bad config, unknown version, bad backend URI) is a
``VersionkitError`` subclass whose ``str()`` is one clear, complete message; CLIs print
it on one line (or a few) and exit with ``exit_code`` instead of showing a traceback.
Each class also subclasses the builtin a caller would naturally catch, so
``except ValueError`` / ``except TimeoutError`` / ``except KeyError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigError",
    "CorruptStateError",
    "LockTimeout",
    "RegistryError",
    "UnknownBackendError",
    "VersionNotFoundError",
    "VersionkitError",
]


class VersionkitError(Exception):
    """Base class of every error raised on purpose by versionkit."""

    exit_code: int = 1

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

    exit_code = 2


class RegistryError(VersionkitError):
    """The version registry refused or failed an operation."""


class VersionNotFoundError(RegistryError, LookupError):
    """A version number that the registry does not know."""


class CorruptStateError(RegistryError):
    """Registry state on disk or in a database cannot be read; never silently reset."""


class LockTimeout(RegistryError, TimeoutError):
    """A registry lock was held by someone else for longer than the timeout."""


class BackendError(RegistryError):
    """A backend could not be reached or used (connection, permissions, schema)."""


class UnknownBackendError(BackendError, ValueError):
    """A backend URI whose scheme no installed backend handles."""

    exit_code = 2
