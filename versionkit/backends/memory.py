"""An in-process backend for tests and notebooks: ``memory`` or ``memory://name``.

Every ``MemoryBackend`` with the same store name and experiment key shares one store
(a class-level dict), so two ``Registry`` objects in one process see each other's
versions. Nothing is shared with other processes and nothing survives the process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from versionkit.backends.base import Backend, Change, Record, encode_json

__all__ = ["MemoryBackend"]


@dataclass
class _Store:
    next: int = 0
    # Records are kept as JSON text: parsing it is a cheap deep copy (much faster than
    # copy.deepcopy) and it enforces the contract's JSON-able records, so a test that
    # passes here does not fail later on a file or SQL backend.
    records: dict[int, str] = field(default_factory=dict)
    meta: str = "{}"
    lock: threading.RLock = field(default_factory=threading.RLock)


def _load(text: str) -> Record:
    record: Record = json.loads(text)
    return record


class MemoryBackend(Backend):
    """Process-local, thread-safe registry store; ``memory://name`` picks a named store."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    _stores: ClassVar[dict[tuple[str, str], _Store]] = {}
    _stores_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, uri: str, root: Path, experiment: str) -> None:
        super().__init__(uri, root, experiment)
        self.name = uri.split("://", 1)[1].strip("/") if "://" in uri else ""
        key = (self.name, experiment)
        with MemoryBackend._stores_lock:
            store = MemoryBackend._stores.get(key)
            if store is None:
                store = MemoryBackend._stores[key] = _Store()
        self._store = store

    @classmethod
    def reset(cls, name: str | None = None) -> None:
        """Forget every store (or only those of store ``name``); for test isolation."""
        with cls._stores_lock:
            for key in [k for k in cls._stores if name is None or k[0] == name]:
                del cls._stores[key]

    def allocate(self, floor: int, record: Mapping[str, Any]) -> int:
        data = dict(record)
        encode_json(data, "record")
        with self._store.lock:
            number = max(self._store.next, floor)
            data["version"] = number
            self._store.records[number] = encode_json(data, "record")
            self._store.next = number + 1
        return number

    def get(self, number: int) -> Record | None:
        self.check_number(number)
        with self._store.lock:
            text = self._store.records.get(number)
        return _load(text) if text is not None else None

    def list(self) -> list[Record]:
        with self._store.lock:
            texts = [self._store.records[n] for n in sorted(self._store.records)]
        return [_load(text) for text in texts]

    def numbers(self) -> set[int]:
        with self._store.lock:
            return set(self._store.records)

    def modify(self, number: int, change: Change) -> Record:
        self.check_number(number)
        with self._store.lock:
            text = self._store.records.get(number)
            if text is None:
                raise self._not_found(number)
            record = self._merge(number, _load(text), change)
            if record is None:
                return _load(text)
            self._store.records[number] = encode_json(record, f"record of version {number}")
            return record

    def _not_found(self, number: int) -> Exception:
        from versionkit.errors import VersionNotFoundError

        return VersionNotFoundError(f"version {number} does not exist in {self.describe()}")

    def next_number(self) -> int:
        with self._store.lock:
            return self._store.next

    def raise_next_number(self, at_least: int) -> int:
        with self._store.lock:
            self._store.next = max(self._store.next, at_least)
            return self._store.next

    def get_meta(self) -> Record:
        with self._store.lock:
            return _load(self._store.meta)

    def modify_meta(self, change: Change) -> Record:
        with self._store.lock:
            meta = self._merge_meta(_load(self._store.meta), change)
            if meta is None:
                return _load(self._store.meta)
            self._store.meta = encode_json(meta, "experiment metadata")
            return meta

    def describe(self) -> str:
        return f"memory registry {self.name or 'default'!r}"
