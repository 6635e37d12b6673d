"""The backend contract suite: pytest mixin classes any backend can run against itself.

Every rule in ``versionkit.backends.base`` has a test here. A backend's test module
provides one fixture, ``backend``: a factory ``make(name="exp") -> Backend``. Calls
with the same ``name`` in one test return new handles on the SAME store (as two
processes would open it); different names give independent stores (for a file-like
backend, a different experiment folder; for a shared database, a different
experiment key). Then it composes the mixins::

    # tests/test_my_backend.py (a third-party package)
    import pytest
    from versionkit.testing import BackendContractSuite
    from mypkg.registry import S3Backend

    @pytest.fixture
    def backend(tmp_path):
        def make(name="exp"):
            return S3Backend("s3://bucket/prefix", tmp_path / name, name)
        return make

    class TestS3Backend(BackendContractSuite):
        shares_across_processes = True   # handles in other processes see the same store

        def delete_record(self, b, number):  # how a user would delete one by hand
            ...                              # (without it, the deletion tests skip)

The suite covers allocation, records (``modify`` is atomic; ``update``/``append`` come
from the base class), the counter (never lowered, not even by deleting records), the
experiment metadata (``get_meta``/``modify_meta``) and sharing between handles.

When ``shares_across_processes`` is true the suite also allocates and modifies from
several real processes at once (started with ``fork``); a child rebuilds its handle as
``type(b)(b.uri, b.root, b.experiment)``, so the class must be constructible from
those three arguments alone. Set it false for a process-local store (``memory``).

The suite needs pytest and hypothesis (``pip install 'versionkit-fractalgen[test]'``).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from versionkit.backends.base import Backend, Record
from versionkit.errors import BackendError, VersionNotFoundError

__all__ = [
    "AllocateContract",
    "BackendContractSuite",
    "BackendFactory",
    "ContractBase",
    "CounterContract",
    "MetaContract",
    "ProcessContract",
    "RecordContract",
    "SharingContract",
    "run_in_processes",
]

#: The ``backend`` fixture's type: ``make(name="exp") -> Backend``.
BackendFactory = Callable[..., Backend]

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    # The fixture is a factory and each example makes its own store; the same test
    # function runs from many subclasses (one per backend) and keeps no state on self.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.differing_executors,
    ],
)


class ContractBase:
    """What every contract mixin shares: the flag for multi-process stores."""

    #: Whether handles opened in other processes share the store (``memory``: False).
    shares_across_processes: ClassVar[bool] = True


class AllocateContract(ContractBase):
    """``allocate``: ``max(next, floor)``, stored with ``version``, next becomes N + 1."""

    def test_new_store_is_empty(self, backend: BackendFactory) -> None:
        b = backend()
        assert b.next_number() == 0
        assert b.list() == []
        assert b.get(0) is None

    def test_allocate_counts_from_zero(self, backend: BackendFactory) -> None:
        b = backend()
        assert [b.allocate(0, {"status": "running"}) for _ in range(3)] == [0, 1, 2]
        assert b.next_number() == 3

    def test_floor_above_next_is_taken(self, backend: BackendFactory) -> None:
        b = backend()
        assert b.allocate(5, {}) == 5
        assert b.allocate(0, {}) == 6
        assert b.next_number() == 7

    def test_floor_below_next_is_ignored(self, backend: BackendFactory) -> None:
        b = backend()
        for _ in range(4):
            b.allocate(0, {})
        assert b.allocate(2, {}) == 4

    def test_record_is_stored_with_its_version(self, backend: BackendFactory) -> None:
        b = backend()
        record = {"status": "running", "config": {"lr": 0.001, "layers": [1, 2]}, "version": 99}
        n = b.allocate(0, record)
        stored = b.get(n)
        assert stored is not None
        assert stored["version"] == n == 0
        assert stored["config"] == {"lr": 0.001, "layers": [1, 2]}
        assert record["version"] == 99, "allocate must not mutate the caller's record"

    def test_number_never_returned_twice(self, backend: BackendFactory) -> None:
        b = backend()
        seen = [b.allocate(0, {}) for _ in range(5)]
        b.raise_next_number(2)  # lower than next: no effect
        seen += [b.allocate(1, {}) for _ in range(5)]
        assert len(set(seen)) == len(seen) == 10
        assert seen == sorted(seen)

    @_SETTINGS
    @given(floors=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12))
    def test_allocation_matches_model(self, backend: BackendFactory, floors: list[int]) -> None:
        b = backend(f"h{os.urandom(6).hex()}")
        expected_next = 0
        for floor in floors:
            n = b.allocate(floor, {"floor": floor})
            assert n == max(expected_next, floor)
            expected_next = n + 1
            assert b.next_number() == expected_next
        assert [r["version"] for r in b.list()] == sorted(r["version"] for r in b.list())
        assert len(b.list()) == len(floors)


class RecordContract(ContractBase):
    """Records are JSON-able dicts; ``get``/``list`` copy; ``update`` merges, never creates."""

    def test_get_and_list_return_copies(self, backend: BackendFactory) -> None:
        b = backend()
        n = b.allocate(0, {"metrics": {"a": 1.0}, "tags": ["x"]})
        got = b.get(n)
        assert got is not None
        got["metrics"]["a"] = 2.0
        got["tags"].append("y")
        b.list()[0]["metrics"]["a"] = 3.0
        again = b.get(n)
        assert again is not None
        assert again["metrics"] == {"a": 1.0}
        assert again["tags"] == ["x"]

    def test_list_is_in_increasing_order(self, backend: BackendFactory) -> None:
        b = backend()
        for floor in (0, 10, 3, 0, 20):
            b.allocate(floor, {"floor": floor})
        assert [r["version"] for r in b.list()] == [0, 10, 11, 12, 20]

    def test_update_merges_top_level_keys(self, backend: BackendFactory) -> None:
        b = backend()
        n = b.allocate(0, {"status": "running", "metrics": {"a": 1.0}, "seed": 3})
        b.update(n, {"status": "completed", "metrics": {"b": 2.0}})
        record = b.get(n)
        assert record is not None
        assert record["status"] == "completed"
        assert record["metrics"] == {"b": 2.0}, "update is a shallow merge"
        assert record["seed"] == 3
        assert record["version"] == n

    def test_update_of_unknown_version_never_creates_it(self, backend: BackendFactory) -> None:
        b = backend()
        b.allocate(0, {})
        with pytest.raises(VersionNotFoundError):
            b.update(7, {"status": "completed"})
        assert b.get(7) is None
        assert [r["version"] for r in b.list()] == [0]
        assert b.next_number() == 1

    def test_modify_sees_the_current_record(self, backend: BackendFactory) -> None:
        b = backend()
        n = b.allocate(0, {"count": 1})
        seen: list[Record] = []

        def change(record: Record) -> dict[str, Any]:
            seen.append(record)
            return {"count": record["count"] + 1}

        b.modify(n, change)
        b.modify(n, lambda record: {})
        assert seen[-1]["count"] == 1
        record = b.get(n)
        assert record is not None and record["count"] == 2
        with pytest.raises(VersionNotFoundError):
            b.modify(5, change)

    def test_append_creates_then_extends(self, backend: BackendFactory) -> None:
        b = backend()
        n = b.allocate(0, {})
        b.append(n, "checkpoints", {"path": "a.ckpt"})
        b.append(n, "checkpoints", {"path": "b.ckpt"})
        record = b.get(n)
        assert record is not None
        assert record["checkpoints"] == [{"path": "a.ckpt"}, {"path": "b.ckpt"}]
        with pytest.raises(VersionNotFoundError):
            b.append(3, "checkpoints", {})

    def test_non_json_record_is_refused(self, backend: BackendFactory) -> None:
        b = backend()
        with pytest.raises(BackendError, match="not JSON-able"):
            b.allocate(0, {"bad": object()})
        assert b.next_number() == 0, "a refused record takes no number"
        n = b.allocate(0, {"ok": 1})
        with pytest.raises(BackendError, match="not JSON-able"):
            b.update(n, {"bad": {1, 2}})
        with pytest.raises(BackendError, match="not JSON-able"):
            b.modify(n, lambda record: {"bad": object()})
        with pytest.raises(BackendError, match="not JSON-able"):
            b.append(n, "items", object())
        with pytest.raises(BackendError, match="must be a mapping"):
            b.modify(n, lambda record: [("bad", 1)])  # type: ignore[arg-type,return-value]
        assert b.get(n) == {"ok": 1, "version": n}, "a refused patch changes nothing"

    def test_modify_returns_the_stored_record(self, backend: BackendFactory) -> None:
        b = backend()
        n = b.allocate(0, {"a": 1})
        assert b.modify(n, lambda record: {"b": record["a"] + 1}) == {"a": 1, "b": 2, "version": n}
        assert b.modify(n, lambda record: {}) == b.get(n)
        assert b.update(n, {"a": 5})["a"] == 5

    @_SETTINGS
    @given(value=_JSON, key=st.text(min_size=1, max_size=12))
    def test_json_values_round_trip(self, backend: BackendFactory, value: Any, key: str) -> None:
        b = backend(f"h{os.urandom(6).hex()}")
        if key == "version":
            key = "version_"
        n = b.allocate(0, {key: value})
        record = b.get(n)
        assert record is not None and record[key] == value
        b.update(n, {key: [value]})
        record = b.get(n)
        assert record is not None and record[key] == [value]


class CounterContract(ContractBase):
    """``raise_next_number`` only ever raises the next number; deleting never lowers it."""

    def delete_record(self, b: Backend, number: int) -> None:
        """Remove version ``number``'s record behind the backend's back (as a user or a
        restore would); a backend's test class overrides it to run the deletion tests."""
        pytest.skip(f"{type(self).__name__} does not say how to delete a record by hand")

    def test_numbers_are_never_reused_after_records_are_deleted(
        self, backend: BackendFactory
    ) -> None:
        b = backend()
        for _ in range(6):
            b.allocate(0, {})
        self.delete_record(b, 5)
        self.delete_record(b, 4)
        assert b.get(5) is None
        assert b.next_number() == 6
        assert backend().allocate(0, {}) == 6, "a deleted record's number came back"
        for n in range(7):
            if b.get(n) is not None:
                self.delete_record(b, n)
        assert b.list() == []
        assert b.allocate(0, {}) == 7, "deleting every record restarted the count"

    def test_raise_next_number(self, backend: BackendFactory) -> None:
        b = backend()
        assert b.raise_next_number(4) == 4
        assert b.next_number() == 4
        assert b.raise_next_number(2) == 4
        assert b.allocate(0, {}) == 4
        assert b.raise_next_number(0) == 5

    def test_repair_never_lowers_next(self, backend: BackendFactory) -> None:
        b = backend()
        for _ in range(3):
            b.allocate(0, {})
        report = b.repair(1)
        assert report["next_number"] == 3 == b.next_number()
        assert b.repair(8)["next_number"] == 8
        assert b.allocate(0, {}) == 8


class MetaContract(ContractBase):
    """``get_meta``/``modify_meta``: one JSON-able dict per experiment, changed atomically."""

    def test_meta_starts_empty_and_merges(self, backend: BackendFactory) -> None:
        b = backend()
        assert b.get_meta() == {}
        assert b.modify_meta(lambda meta: {"tags": {"best": 3}}) == {"tags": {"best": 3}}
        new = b.modify_meta(lambda meta: {"tags": {**meta["tags"], "old": 1}, "x": None})
        assert new == {"tags": {"best": 3, "old": 1}, "x": None}
        assert b.modify_meta(lambda meta: {}) == new
        assert backend().get_meta() == new, "another handle sees the same dict"
        assert backend("other").get_meta() == {}, "each experiment has its own"

    def test_meta_is_a_copy_and_refuses_non_json(self, backend: BackendFactory) -> None:
        b = backend()
        b.modify_meta(lambda meta: {"tags": {"a": 1}})
        got = b.get_meta()
        got["tags"]["a"] = 99
        assert b.get_meta() == {"tags": {"a": 1}}
        with pytest.raises(BackendError, match="not JSON-able"):
            b.modify_meta(lambda meta: {"bad": object()})
        assert b.get_meta() == {"tags": {"a": 1}}

    def test_meta_is_apart_from_the_records(self, backend: BackendFactory) -> None:
        b = backend()
        b.modify_meta(lambda meta: {"k": 1})
        assert b.list() == [] and b.next_number() == 0
        n = b.allocate(0, {"k": 2})
        assert b.get_meta() == {"k": 1} and b.get(n) == {"k": 2, "version": n}


class SharingContract(ContractBase):
    """Handles on the same store agree; stores of different names are independent."""

    def test_two_handles_share_the_store(self, backend: BackendFactory) -> None:
        first, second = backend(), backend()
        assert first.allocate(0, {"by": "first"}) == 0
        assert second.allocate(0, {"by": "second"}) == 1
        assert [r["by"] for r in first.list()] == ["first", "second"]
        second.update(0, {"status": "completed"})
        record = first.get(0)
        assert record is not None and record["status"] == "completed"
        assert first.next_number() == second.next_number() == 2

    def test_different_names_are_independent(self, backend: BackendFactory) -> None:
        a, b = backend("exp_a"), backend("exp_b")
        a.allocate(0, {})
        a.allocate(0, {})
        assert b.next_number() == 0
        assert b.allocate(0, {}) == 0
        assert len(a.list()) == 2

    def test_describe_is_a_string(self, backend: BackendFactory) -> None:
        text = backend().describe()
        assert isinstance(text, str) and text


def _allocate_in_child(
    spec: tuple[type[Backend], str, Any, str], count: int, start: Any, out: Any
) -> None:
    cls, uri, root, experiment = spec
    try:
        b = cls(uri, root, experiment)
        start.wait(30)
        numbers = [b.allocate(0, {"pid": os.getpid()}) for _ in range(count)]
        b.close()
        out.put(("ok", numbers))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put(("error", repr(exc)))
    finally:
        sys.stdout.flush()


def _append_in_child(
    spec: tuple[type[Backend], str, Any, str], number: int, count: int, start: Any, out: Any
) -> None:
    cls, uri, root, experiment = spec
    try:
        b = cls(uri, root, experiment)
        start.wait(30)
        for i in range(count):
            b.append(number, "items", [os.getpid(), i])
        b.close()
        out.put(("ok", count))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def _count_meta_in_child(
    spec: tuple[type[Backend], str, Any, str], count: int, start: Any, out: Any
) -> None:
    cls, uri, root, experiment = spec
    try:
        b = cls(uri, root, experiment)
        start.wait(30)
        for _ in range(count):
            b.modify_meta(
                lambda meta: {
                    "count": meta.get("count", 0) + 1,
                    "pids": [*meta.get("pids", []), os.getpid()],
                }
            )
        b.close()
        out.put(("ok", count))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def run_in_processes(target: Callable[..., None], arg_lists: list[tuple[Any, ...]]) -> list[Any]:
    """Fork one process per ``arg_lists`` entry, release them together, and return what
    each put on the queue (every process must exit 0).

    ``target(*args, start, out)`` waits on ``start`` and puts ``("ok", value)`` or
    ``("error", text)`` on ``out``; any error fails the calling test.
    """
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for args in arg_lists]
    with warnings.catch_warnings():
        # Python >= 3.12 warns when forking a process that has threads (other test
        # modules may have started torch's); the children only run the code above.
        warnings.filterwarnings(
            "ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning
        )
        for p in procs:
            p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"a writer process ended with exit code {p.exitcode}"
    errors = [r[1] for r in results if r[0] != "ok"]
    assert not errors, errors
    return [r[1] for r in results]


class ProcessContract(ContractBase):
    """Atomicity across real processes (skipped when the store is process-local)."""

    processes: ClassVar[int] = 6
    per_process: ClassVar[int] = 15

    def _run(self, target: Callable[..., None], args: tuple[Any, ...]) -> list[Any]:
        if not self.shares_across_processes:
            pytest.skip("this backend's store is local to one process")
        return run_in_processes(target, [args] * self.processes)

    @staticmethod
    def _spec(b: Backend) -> tuple[type[Backend], str, Any, str]:
        return (type(b), b.uri, b.root, b.experiment)

    def test_concurrent_allocations_are_unique(self, backend: BackendFactory) -> None:
        b = backend()
        b.allocate(0, {})
        results = self._run(_allocate_in_child, (self._spec(b), self.per_process))
        numbers = [n for chunk in results for n in chunk]
        total = self.processes * self.per_process
        assert len(numbers) == total
        assert len(set(numbers)) == total, "a number was handed out twice"
        assert sorted(numbers) == list(range(1, total + 1))
        for chunk in results:
            assert chunk == sorted(chunk), "numbers go up within one process"
        assert b.next_number() == total + 1
        assert len(b.list()) == total + 1

    def test_concurrent_appends_lose_nothing(self, backend: BackendFactory) -> None:
        b = backend()
        n = b.allocate(0, {"items": []})
        self._run(_append_in_child, (self._spec(b), n, 8))
        record = b.get(n)
        assert record is not None
        assert len(record["items"]) == self.processes * 8
        assert len({tuple(item) for item in record["items"]}) == self.processes * 8

    def test_concurrent_meta_changes_lose_nothing(self, backend: BackendFactory) -> None:
        b = backend()
        self._run(_count_meta_in_child, (self._spec(b), 8))
        meta = b.get_meta()
        assert meta["count"] == self.processes * 8, "a concurrent modify_meta was lost"
        assert len(meta["pids"]) == self.processes * 8


class BackendContractSuite(
    AllocateContract,
    RecordContract,
    CounterContract,
    MetaContract,
    SharingContract,
    ProcessContract,
):
    """Every contract test; subclass it in a ``Test...`` class next to a ``backend`` fixture."""
