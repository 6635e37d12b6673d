"""The contract suite against the memory backend, plus its store naming."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from versionkit.backends import open_backend
from versionkit.backends.base import Backend
from versionkit.backends.memory import MemoryBackend
from versionkit.testing import BackendContractSuite
from versionkit.testing_curate import CurateContract


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    store = f"t{id(tmp_path)}"

    def make(name: str = "exp") -> Backend:
        return MemoryBackend(f"memory://{store}", tmp_path / name, name)

    yield make
    MemoryBackend.reset(store)


class TestMemoryBackend(BackendContractSuite):
    shares_across_processes = False

    def delete_record(self, b: Backend, number: int) -> None:
        assert isinstance(b, MemoryBackend)
        del b._store.records[number]


class TestMemoryCurate(CurateContract):
    shares_across_processes = False


def test_named_stores_are_separate(tmp_path: Path) -> None:
    a = open_backend("memory://one", tmp_path, "exp")
    b = open_backend("memory://two", tmp_path, "exp")
    again = open_backend("memory://one", tmp_path, "exp")
    try:
        assert isinstance(a, MemoryBackend)
        a.allocate(0, {})
        assert b.next_number() == 0
        assert again.next_number() == 1
    finally:
        MemoryBackend.reset("one")
        MemoryBackend.reset("two")


def test_reset_forgets(tmp_path: Path) -> None:
    a = open_backend("memory://gone", tmp_path, "exp")
    a.allocate(0, {})
    MemoryBackend.reset("gone")
    assert open_backend("memory://gone", tmp_path, "exp").next_number() == 0


def test_threads_never_share_a_number(tmp_path: Path) -> None:
    # The memory store claims thread safety (notebooks, threaded tests): a thread claim.
    import threading

    results: list[int] = []
    guard = threading.Lock()

    def work() -> None:
        b = MemoryBackend("memory://threads", tmp_path, "exp")
        got = [b.allocate(0, {}) for _ in range(200)]
        for n in got[:20]:
            b.append(n, "items", 1)
        with guard:
            results.extend(got)

    threads = [threading.Thread(target=work) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == list(range(1600))
        assert MemoryBackend("memory://threads", tmp_path, "exp").next_number() == 1600
    finally:
        MemoryBackend.reset("threads")
