"""The backend contract: the few primitives every registry backend implements.

A backend stores the version records of ONE experiment (the ``experiment`` key it was
built with), and one small metadata dict for the experiment itself. ``Registry``
(``versionkit.registry``) owns the experiment folder, creates the folders and turns
records into typed objects; a backend only hands out numbers and keeps JSON-able dicts.

A backend implements the primitives (the abstract methods); everything else here
(``update``, ``append``, the number check, the JSON encoding) is built on them once.

Rules every backend obeys (``versionkit.testing`` checks them all):

- ``allocate`` is atomic across processes (and, for a shared backend, across machines).
  It returns ``max(next_number, floor)``, stores the record under that number and sets
  the next number one above it, all or nothing. A number is never returned twice,
  whatever happens to folders or records later (a deleted record's number stays used).
- ``modify`` is an atomic read-modify-write of one record (under the backend's lock or
  in one transaction): two writers changing the same key never lose each other's writes.
  ``modify_meta`` is the same for the experiment's metadata dict.
- Records are plain JSON-able dicts (str keys; str, int, float, bool, None, list,
  dict values); anything else is refused with ``BackendError`` before a write. ``get``,
  ``list`` and ``get_meta`` return copies that the caller may mutate.
- A write never creates a version that was not allocated (``VersionNotFoundError``).
- Every method that changes state is durable when it returns.
- State that cannot be read raises ``CorruptStateError``; it is never silently reset.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from versionkit.errors import BackendError, VersionNotFoundError

if TYPE_CHECKING:
    from versionkit.registry.summary import Fields, ListItem

__all__ = [
    "MAX_NUMBER",
    "Backend",
    "Change",
    "Record",
    "apply_patch",
    "check_number",
    "checkpoint_metric",
    "checkpoint_step",
    "decode_json",
    "encode_json",
    "redact_uri",
]

#: A version's record: ``{"version": N, "status": ..., "metrics": {...}, ...}``.
Record = dict[str, Any]
#: ``change(current copy) -> patch``: the argument of ``modify`` and ``modify_meta``.
Change = Callable[[Record], Mapping[str, Any]]
#: Version numbers are below this (far below BIGINT's limit, so N + 1 never overflows).
MAX_NUMBER = 2**62


def check_number(number: Any) -> int:
    """``number`` when it is a valid version number, else ``VersionNotFoundError``."""
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < MAX_NUMBER:
        raise VersionNotFoundError(
            f"version {number!r} is not a valid version number (expected an integer in [0, 2**62))"
        )
    return number


def encode_json(value: Mapping[str, Any], what: str) -> str:
    """Compact JSON text of a record, patch or meta dict; ``BackendError`` when not JSON-able.

    NaN and infinities are kept (as JSON's common ``NaN``/``Infinity`` extension): a
    metric that diverged is recorded as it was, not refused.
    """
    try:
        text = json.dumps(dict(value), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise BackendError(f"{what} is not JSON-able: {exc}") from exc
    if not text.isascii():
        try:  # a lone surrogate (bytes that were not UTF-8, e.g. from argv) cannot be stored
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BackendError(
                f"{what} holds text that cannot be stored as UTF-8: "
                f"{text[exc.start : exc.end]!r}, a lone surrogate (a byte that was not "
                f"UTF-8, e.g. on a command line); nothing was written"
            ) from exc
    return text


def decode_json(text: str | bytes) -> Any:
    """The value of JSON text (``ValueError``/``UnicodeDecodeError`` when unreadable)."""
    return json.loads(text)


def apply_patch(record: Record, patch: Mapping[str, Any], number: int | None, what: str) -> Record:
    """``record`` with ``patch`` merged into its top-level keys (``version`` kept).

    The patch goes through JSON first, so what is stored is exactly what a later read
    returns, and a non-JSON-able patch is refused before anything is written.
    """
    if not isinstance(patch, Mapping) or not all(isinstance(k, str) for k in patch):
        raise BackendError(
            f"{what} must be a mapping with str keys, got {type(patch).__name__}: {patch!r:.80}"
        )
    merged = dict(record)
    merged.update(json.loads(encode_json(patch, what)))
    if number is not None:
        merged["version"] = number
    return merged


class Backend(abc.ABC):
    """Abstract storage for one experiment's version records and metadata.

    Args:
        uri: the URI the backend was chosen by (``file``, ``memory://name``,
            ``sqlite:///path.db``, ``postgresql://user@host/db`` ...).
        root: the experiment folder (checkpoints and logs live under it).
        experiment: the key that names this experiment inside a shared store.
    """

    #: URI schemes this class serves, e.g. ``("sqlite", "postgresql")``.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`iter_summaries` reads the newest versions first in a few pages
    #: (SQL): a short newest-first listing then asks it rather than walking the records
    #: down one number at a time.
    pages_summaries: ClassVar[bool] = False

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
        """The record of version ``number``, or ``None`` when it has none."""

    @abc.abstractmethod
    def list(self) -> list[Record]:
        """Every record, in increasing version order."""

    @abc.abstractmethod
    def modify(self, number: int, change: Change) -> Record:
        """Atomically merge ``change(copy of the record)`` into the record's top-level keys.

        ``change`` may be called more than once (by a backend that retries a conflict);
        an empty patch writes nothing. Returns the record as stored afterwards. Raises
        ``VersionNotFoundError`` (and calls nothing) when the version has no record.
        Implementations call :meth:`_merge` to build the new record.
        """

    @abc.abstractmethod
    def next_number(self) -> int:
        """The number the next ``allocate`` would return with ``floor=0`` (0 when new)."""

    @abc.abstractmethod
    def raise_next_number(self, at_least: int) -> int:
        """Make ``next_number`` at least ``at_least`` (never lower it); return it."""

    @abc.abstractmethod
    def get_meta(self) -> Record:
        """A copy of the experiment's metadata dict (``{}`` when nothing was stored)."""

    @abc.abstractmethod
    def modify_meta(self, change: Change) -> Record:
        """Atomically merge ``change(copy of the meta dict)`` into it; return the new dict."""

    # -- built once on the primitives -------------------------------------------------

    #: Largest number + 1 this backend can store (``Registry`` checks folders against it).
    max_number: ClassVar[int] = MAX_NUMBER

    def check_number(self, number: Any) -> int:
        """``number`` when valid, else ``VersionNotFoundError`` (before any I/O)."""
        return check_number(number)

    def _merge(self, number: int, record: Record, change: Change) -> Record | None:
        """The new record after ``change``, or ``None`` when its patch is empty."""
        patch = change(dict(record))
        if not patch:
            return None
        return apply_patch(record, patch, number, f"update of version {number}")

    @staticmethod
    def _merge_meta(meta: Record, change: Change) -> Record | None:
        patch = change(dict(meta))
        if not patch:
            return None
        return apply_patch(meta, patch, None, "experiment metadata")

    def update(self, number: int, patch: Mapping[str, Any]) -> Record:
        """Merge ``patch`` into the record's top-level keys (``VersionNotFoundError``)."""
        self.check_number(number)
        frozen = dict(patch)
        encode_json(frozen, f"update of version {number}")  # refuse before locking
        return self.modify(number, lambda _record: frozen)

    def append(self, number: int, key: str, item: Any) -> Record:
        """Atomically append ``item`` to the list at ``record[key]`` (created when missing)."""
        self.check_number(number)
        encode_json({key: item}, f"item appended to version {number}")

        def change(record: Record) -> Mapping[str, Any]:
            items = record.get(key)
            return {key: [*(items if isinstance(items, list) else []), item]}

        return self.modify(number, change)

    def iter_records(self, *, newest_first: bool = False) -> Iterator[Record]:
        """Every record in version order; backends override it to stream in pages."""
        records = self.list()
        yield from (reversed(records) if newest_first else records)

    def iter_summaries(self, *, newest_first: bool = False) -> Iterator[ListItem]:
        """Every version's list summary (:mod:`versionkit.registry.summary`), in version
        order; this default summarises the records, SQL reads a column kept with them."""
        from versionkit.registry.summary import list_item

        for record in self.iter_records(newest_first=newest_first):
            yield list_item(int(record["version"]), record)

    def iter_summary_fields(self, *, newest_first: bool = False) -> Iterator[tuple[int, Fields]]:
        """:meth:`iter_summaries` as ``(number, fields)``
        (:func:`versionkit.registry.summary.fields`): what ``versionkit list`` formats,
        without a ``ListItem`` per version. This default takes :meth:`iter_summaries`;
        backends that keep summaries as text override it (and derive
        :meth:`iter_summaries` from it)."""
        from versionkit.registry.summary import fields

        for item in self.iter_summaries(newest_first=newest_first):
            yield item.version, fields(item)

    def numbers(self) -> set[int]:
        """The numbers that have a record (backends override it to skip the records)."""
        return {int(r["version"]) for r in self.list()}

    def best_candidates(self, metric: str, mode: str) -> Iterator[tuple[int, Record]]:
        """Recorded checkpoint entries with a finite ``metric``, best first.

        Yields ``(version, checkpoint entry)``; ties go to the later step, then the
        higher version. The default scans every record; backends with an index
        (SQL, the file backend's best index) override it to read only the head.
        """
        sign = 1.0 if mode == "min" else -1.0
        found: list[tuple[float, int, int, int, Record]] = []
        for record in self.iter_records():
            number = int(record["version"])
            for order, item in enumerate(record.get("checkpoints") or ()):
                value = checkpoint_metric(item, metric)
                if value is not None:
                    found.append((sign * value, -checkpoint_step(item), -number, order, item))
        found.sort(key=lambda t: t[:4])
        for _scaled, _step, neg_number, _order, item in found:
            yield -neg_number, dict(item)

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


def checkpoint_metric(item: Any, metric: str) -> float | None:
    """The value of ``metric`` of a recorded checkpoint entry, if finite, else ``None``.

    The recorded value wins; without one, the value in the file name counts.
    """
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        return None
    metrics = item.get("metrics")
    value = metrics.get(metric) if isinstance(metrics, dict) else None
    if value is None:
        from versionkit.registry.checkpoint_names import metric_in_name

        value = metric_in_name(item["path"].rsplit("/", 1)[-1], metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def checkpoint_step(item: Mapping[str, Any]) -> int:
    """The recorded step of a checkpoint entry, else the one in its name, else -1."""
    step = item.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    from versionkit.registry.checkpoint_names import step_in_name

    path = item.get("path")
    found = step_in_name(path.rsplit("/", 1)[-1]) if isinstance(path, str) else None
    return -1 if found is None else found


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
