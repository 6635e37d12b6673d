"""The backend contract: the few primitives every registry backend implements.

A backend stores the version records of ONE experiment (the ``experiment`` key it was
built with). ``Registry`` (``versionkit.registry``) owns the experiment folder, scans
it for ``version_N`` folders, creates the folders and turns records into typed
objects; a backend only hands out numbers and keeps JSON-able records.

Rules every backend obeys (``versionkit.testing`` checks them all):

- ``allocate`` is the one primitive that must be atomic across processes (and, for a
  shared backend, across machines). It returns ``max(next_number, floor)``, stores
  the record under that number and sets the next number one above it, all or nothing.
  A number is never returned twice, whatever happens to folders or records later.
- Records are plain JSON-able dicts (str keys; str, int, float, bool, None, list,
  dict values). ``get`` and ``list`` return copies that the caller may mutate.
- ``update`` merges top-level keys (a shallow ``dict.update``); it never creates a
  version that was not allocated (``VersionNotFoundError``).
- Every method that changes state is durable when it returns.
- State that cannot be read raises ``CorruptStateError``; it is never silently reset.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Backend", "Record"]

#: A version's record: ``{"version": N, "status": ..., "metrics": {...}, ...}``.
Record = dict[str, Any]


class Backend(abc.ABC):
    """Abstract storage for one experiment's version records.

    Args:
        uri: the URI the backend was chosen by (``file``, ``memory://name``,
            ``sqlite:///path.db``, ``postgresql://user@host/db`` ...).
        root: the experiment folder (checkpoints and logs live under it).
        experiment: the key that names this experiment inside a shared store.
    """

    #: URI schemes this class serves, e.g. ``("sqlite", "postgresql")``.
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, uri: str, root: Path, experiment: str) -> None:
        self.uri = uri
        self.root = root
        self.experiment = experiment

    # -- the primitives -------------------------------------------------------------

    @abc.abstractmethod
    def allocate(self, floor: int, record: Mapping[str, Any]) -> int:
        """Atomically take the next number ``N = max(next_number, floor)``.

        Stores ``record`` (with ``"version": N`` set) and makes ``next_number``
        ``N + 1``. Raises ``LockTimeout`` when another holder blocks it too long.
        """

    @abc.abstractmethod
    def get(self, number: int) -> Record | None:
        """The record of version ``number``, or ``None`` when it was never allocated."""

    @abc.abstractmethod
    def list(self) -> list[Record]:
        """Every record, in increasing version order."""

    @abc.abstractmethod
    def update(self, number: int, patch: Mapping[str, Any]) -> None:
        """Merge ``patch`` into the record's top-level keys (``VersionNotFoundError``)."""

    @abc.abstractmethod
    def next_number(self) -> int:
        """The number the next ``allocate`` would return with ``floor=0`` (0 when new)."""

    @abc.abstractmethod
    def raise_next_number(self, at_least: int) -> int:
        """Make ``next_number`` at least ``at_least`` (never lower it); return it."""

    # -- conveniences built on the primitives (backends may override for speed) ------

    def append(self, number: int, key: str, item: Any) -> None:
        """Append ``item`` to the list held at ``record[key]`` (created when missing).

        The default is read-modify-write; backends whose records are written by more
        than one process at once should override it with an atomic version.
        """
        record = self.get(number)
        if record is None:
            from versionkit.errors import VersionNotFoundError

            raise VersionNotFoundError(f"version {number} does not exist in {self.describe()}")
        items = list(record.get(key) or [])
        items.append(item)
        self.update(number, {key: items})

    def modify(self, number: int, change: Callable[[Record], Mapping[str, Any]]) -> None:
        """Read-modify-write one record: merge ``change(record)`` into its top-level keys.

        ``change`` gets a copy of the current record and returns the patch to merge
        (it may be called more than once by a backend that retries). The default is
        ``get`` + ``update`` and is NOT atomic; a backend whose records are written by
        more than one process at once overrides it to run under its lock or in one
        transaction, so two writers changing the same key (merging metrics, editing
        the checkpoint list) never lose each other's writes.
        """
        record = self.get(number)
        if record is None:
            from versionkit.errors import VersionNotFoundError

            raise VersionNotFoundError(f"version {number} does not exist in {self.describe()}")
        patch = change(record)
        if patch:
            self.update(number, patch)

    def repair(self, floor: int) -> dict[str, Any]:
        """Rebuild unreadable state where the backend can; never lowers ``next_number``.

        ``floor`` is one above the highest ``version_N`` folder on disk. The default
        only raises ``next_number`` to ``floor``; backends that keep state in files
        override it to rebuild what they can and set aside what they cannot read.
        Returns a JSON-able report (``{"next_number": N, ...}``).
        """
        return {"next_number": self.raise_next_number(floor), "actions": []}

    def describe(self) -> str:
        """A short human name for messages: the URI without any password."""
        return redact_uri(self.uri)

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or handles; the backend is unusable afterwards."""


def redact_uri(uri: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest:
        return uri
    creds, _at, host = rest.rpartition("@")
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri
