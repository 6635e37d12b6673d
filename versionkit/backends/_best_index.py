"""The file backend's best-checkpoint index: ``best`` without reading every record.

``best.json`` keeps, per metric and per direction, the head of the sorted order of all
recorded checkpoint entries (at most ``KEEP`` of them) and whether that head is the
whole order. Invariant: every recorded entry better than the head's last one is in
the head. Adding an entry keeps it (insert, then cut the tail); removing one keeps it.
Entries may be stale (a crash between the index write and the record write, a record
deleted by hand): a query checks each against its record before trusting it, so the
index only ever saves work. It is written under the backend's lock, additions before
the record and removals after it, and rebuilt by ``repair`` or when it is missing.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from versionkit._atomic import write_atomic
from versionkit.backends.base import (
    Backend,
    Record,
    checkpoint_metric,
    checkpoint_step,
    encode_json,
)
from versionkit.errors import CorruptStateError

__all__ = ["KEEP", "BestIndex"]

#: Entries kept per metric and direction.
KEEP = 64
_MODES = ("min", "max")
# One entry: [value, step, version, path]; sorted by _key.
Entry = list[Any]


def _key(entry: Entry, mode: str) -> tuple[float, int, int, str]:
    value, step, number, path = entry
    return (value if mode == "min" else -value, -step, -number, path)


def _entries(number: int, items: Any) -> dict[str, dict[str, Entry]]:
    """metric -> path -> entry, for the recorded checkpoint entries of one version."""
    out: dict[str, dict[str, Entry]] = {}
    if not isinstance(items, list):
        return out
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        names = set(item["metrics"]) if isinstance(item.get("metrics"), dict) else set()
        for metric in names | _name_metrics(item["path"]):
            value = checkpoint_metric(item, metric)
            if value is not None:
                entry = [value, checkpoint_step(item), number, item["path"]]
                out.setdefault(metric, {})[item["path"]] = entry
    return out


def _name_metrics(path: str) -> set[str]:
    from versionkit.registry.checkpoint_names import parse_checkpoint_name

    return set(parse_checkpoint_name(path.rsplit("/", 1)[-1])[1])


class BestIndex:
    """``best.json`` of one file registry; every write runs under the backend's lock."""

    def __init__(self, path: Path, read_json: Callable[[Path], dict[str, Any] | None]) -> None:
        self.path = path
        self._read_json = read_json

    def _load(self) -> dict[str, Any] | None:
        try:
            data = self._read_json(self.path)
        except CorruptStateError:
            return None
        if data is None or not isinstance(data.get("metrics"), dict):
            return None
        return data

    def _write(self, data: dict[str, Any], *, sync: bool) -> None:
        write_atomic(self.path, encode_json(data, "best index").encode(), sync=sync)

    def create_empty(self) -> None:
        """A new registry: an empty index that is complete (nothing is recorded yet)."""
        if self._load() is None:
            self._write({"metrics": {}}, sync=True)

    def change(
        self,
        number: int,
        old_items: Any,
        new_items: Any,
        *,
        additions: bool = True,
        removals: bool = True,
    ) -> None:
        """Apply one version's checkpoint list change (nothing when there is no index)."""
        data = self._load()
        if data is None:
            return
        old, new = _entries(number, old_items), _entries(number, new_items)
        changed = False
        for metric in set(old) | set(new):
            slot = data["metrics"].setdefault(
                metric, {"min": [], "min_full": True, "max": [], "max_full": True}
            )
            gone = {
                path
                for path, entry in old.get(metric, {}).items()
                if new.get(metric, {}).get(path) != entry
            }
            for mode in _MODES:
                head: list[Entry] = slot[mode]
                if removals and gone:
                    kept = [e for e in head if not (e[2] == number and e[3] in gone)]
                    changed |= len(kept) != len(head)
                    head = kept
                if additions:
                    for entry in new.get(metric, {}).values():
                        if entry in head:
                            continue
                        key = _key(entry, mode)
                        keys = [_key(e, mode) for e in head]
                        if not slot[f"{mode}_full"] and head and key > keys[-1]:
                            continue  # below the head: the invariant holds without it
                        head.insert(bisect.bisect(keys, key), entry)
                        changed = True
                    if len(head) > KEEP:
                        del head[KEEP:]
                        slot[f"{mode}_full"] = False
                slot[mode] = head
        if changed:
            # Removals need no fsync: losing one only leaves a stale entry behind.
            self._write(data, sync=additions)

    def rebuild(self, records: Iterable[Record]) -> None:
        """Build the index from every record (``repair``, or a missing index)."""
        all_entries: dict[str, list[Entry]] = {}
        for record in records:
            for metric, by_path in _entries(
                int(record["version"]), record.get("checkpoints")
            ).items():
                all_entries.setdefault(metric, []).extend(by_path.values())
        metrics: dict[str, Any] = {}
        for metric, entries in all_entries.items():
            slot: dict[str, Any] = {}
            for mode in _MODES:
                entries.sort(key=lambda e, m=mode: _key(e, m))  # type: ignore[misc]
                slot[mode] = entries[:KEEP]
                slot[f"{mode}_full"] = len(entries) <= KEEP
            metrics[metric] = slot
        self._write({"metrics": metrics}, sync=True)

    def candidates(
        self, metric: str, mode: str, backend: Backend, rebuild: Callable[[], None]
    ) -> Iterator[tuple[int, Record]]:
        """Best first: the head's entries that their records confirm, then (when the head
        is not the whole order, or there is no index) a scan of every record."""
        data = self._load()
        if data is None:
            rebuild()
            data = self._load()
        if data is None:
            yield from Backend.best_candidates(backend, metric, mode)
            return
        slot = data["metrics"].get(metric)
        if slot is None:
            return
        seen: set[tuple[int, str]] = set()
        for value, _step, number, path in slot[mode]:
            record = None
            with contextlib.suppress(CorruptStateError):
                record = backend.get(number)
            for item in (record or {}).get("checkpoints") or ():
                if isinstance(item, dict) and item.get("path") == path:
                    if checkpoint_metric(item, metric) == value:
                        seen.add((number, path))
                        yield number, dict(item)
                    break
        if not slot[f"{mode}_full"]:
            for number, item in Backend.best_candidates(backend, metric, mode):
                if (number, item["path"]) not in seen:
                    yield number, item
