"""The SQL backend on SQLite and PostgreSQL: the contract suite, then SQL specifics.

PostgreSQL tests need ``VERSIONKIT_TEST_POSTGRES`` (``.ci/run`` sets it, e.g.
``postgresql://postgres@127.0.0.1:5432/test``) and skip with that reason when it is
unset. Each test works in its own freshly created PostgreSQL schema, dropped at the
end, and on its own experiment keys, so runs never collide.
Heavier multi-process behaviour (16 writers, SIGKILL, fork, concurrent first use) is in
``tests/test_sql_processes.py``.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.pool import NullPool

from versionkit.backends import open_backend, resolve_backend_class
from versionkit.backends.base import Backend
from versionkit.backends.sql import SCHEMA_VERSION, SQLBackend, SQLURIError, schema
from versionkit.backends.sql import engine as engines
from versionkit.backends.sql.uri import parse_uri
from versionkit.errors import (
    BackendError,
    CorruptStateError,
    LockTimeout,
    VersionNotFoundError,
)
from versionkit.registry.summary import summary_of
from versionkit.testing import BackendContractSuite
from versionkit.testing_curate import CurateContract


@pytest.fixture
def store(uri: str, tmp_path: Path) -> Iterator[SQLBackend]:
    """One SQL backend on a fresh experiment key."""
    b = SQLBackend(uri, tmp_path, f"exp-{uuid.uuid4().hex}")
    yield b
    b.close()


@pytest.fixture
def backend(uri: str, tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """The contract suite's factory: same name, same experiment key in the database."""
    prefix = uuid.uuid4().hex[:8]
    made: list[Backend] = []

    def make(name: str = "exp") -> Backend:
        made.append(SQLBackend(uri, tmp_path / name, f"{prefix}-{name}"))
        return made[-1]

    yield make
    for b in made:
        b.close()


class TestSQLCurate(CurateContract):
    """Tags, gc's record updates and imports, on SQLite and on PostgreSQL."""


class TestSQLBackendContract(BackendContractSuite):
    """The whole backend contract, on SQLite and on PostgreSQL (the ``uri`` parameter)."""

    processes = 8

    def delete_record(self, b: Backend, number: int) -> None:
        assert isinstance(b, SQLBackend)
        with raw_engine(b).begin() as conn:
            conn.execute(
                sa.delete(schema.versions).where(
                    schema.versions.c.experiment == b.experiment,
                    schema.versions.c.number == number,
                )
            )


def raw_engine(b: SQLBackend) -> sa.Engine:
    """A separate engine on the backend's database, for poking at the tables directly."""
    return sa.create_engine(parse_uri(b.uri)[0], poolclass=NullPool)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert isinstance(port, int)
        return port


# -- numbers -------------------------------------------------------------------------


def test_allocate_counts_from_zero_and_respects_the_floor(store: SQLBackend) -> None:
    assert store.next_number() == 0
    assert store.allocate(0, {"a": 1}) == 0
    assert store.allocate(0, {"a": 2}) == 1
    assert store.allocate(7, {"a": 3}) == 7
    assert store.allocate(2, {"a": 4}) == 8
    assert store.next_number() == 9
    assert [r["version"] for r in store.list()] == [0, 1, 7, 8]
    assert store.get(7) == {"a": 3, "version": 7}
    assert store.get(3) is None


ops = st.lists(
    st.tuples(st.sampled_from(["allocate", "raise"]), st.integers(min_value=0, max_value=40)),
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops)
def test_numbers_follow_the_contract_model(uri: str, tmp_path: Path, ops: list[Any]) -> None:
    b = SQLBackend(uri, tmp_path, f"exp-{uuid.uuid4().hex}")
    model_next, taken = 0, []
    for op, value in ops:
        if op == "allocate":
            n = b.allocate(value, {"floor": value})
            assert n == max(model_next, value)
            taken.append(n)
            model_next = n + 1
        else:
            assert b.raise_next_number(value) == max(model_next, value)
            model_next = max(model_next, value)
        assert b.next_number() == model_next
    assert [r["version"] for r in b.list()] == taken == sorted(set(taken))


def test_numbers_are_not_reused_after_rows_are_deleted(store: SQLBackend) -> None:
    for _ in range(3):
        store.allocate(0, {})
    engine = raw_engine(store)
    with engine.begin() as conn:
        conn.execute(
            sa.delete(schema.versions).where(schema.versions.c.experiment == store.experiment)
        )
    engine.dispose()
    assert store.list() == []
    assert store.allocate(0, {}) == 3


def test_rows_written_behind_the_counter_are_stepped_over(store: SQLBackend) -> None:
    assert store.allocate(0, {}) == 0
    engine = raw_engine(store)
    with engine.begin() as conn:
        for n in (1, 2):
            conn.execute(
                sa.insert(schema.versions).values(
                    experiment=store.experiment, number=n, record=json.dumps({"version": n})
                )
            )
    engine.dispose()
    assert store.allocate(0, {"mine": True}) == 3
    assert store.get(3) == {"mine": True, "version": 3}
    assert store.next_number() == 4


def test_endless_conflicts_give_up_after_a_few_tries_with_a_clear_error(store: SQLBackend) -> None:
    store.allocate(0, {})
    engine = raw_engine(store)
    with engine.begin() as conn:
        # Every insert of a version now fails as if another writer had taken the number.
        if store._dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER always_taken BEFORE INSERT ON versionkit_versions "
                "BEGIN SELECT RAISE(ABORT, 'number taken'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION always_taken() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'number taken' USING ERRCODE = 'unique_violation'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER always_taken BEFORE INSERT ON versionkit_versions "
                "FOR EACH ROW EXECUTE FUNCTION always_taken()"
            )
    with pytest.raises(BackendError, match=r"after 5 attempts, each one conflicting") as info:
        store.allocate(0, {})
    assert "number taken" in str(info.value) and "\n" not in str(info.value)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER always_taken"
            + ("" if store._dialect == "sqlite" else " ON versionkit_versions")
        )
    engine.dispose()
    assert store.next_number() == 1, "a failed allocation must not use up a number"
    assert store.allocate(0, {}) == 1


def test_experiments_in_one_database_count_separately(uri: str, tmp_path: Path) -> None:
    a = SQLBackend(uri, tmp_path / "a", f"a-{uuid.uuid4().hex}")
    b = SQLBackend(uri, tmp_path / "b", f"b-{uuid.uuid4().hex}")
    assert [a.allocate(0, {}), a.allocate(0, {}), b.allocate(0, {})] == [0, 1, 0]
    assert [r["version"] for r in b.list()] == [0]
    assert (a.next_number(), b.next_number()) == (2, 1)


def test_experiment_query_parameter_shares_one_experiment(uri: str, tmp_path: Path) -> None:
    name = f"shared-{uuid.uuid4().hex}"
    sep = "&" if "?" in uri else "?"
    # Two machines mounting the same filesystem at different paths.
    one = SQLBackend(f"{uri}{sep}experiment={name}", tmp_path / "mnt1", "/mnt1/outputs/x")
    two = SQLBackend(f"{uri}{sep}experiment={name}", tmp_path / "mnt2", "/nfs/outputs/x")
    assert one.experiment == two.experiment == name
    assert one.allocate(0, {"host": "one"}) == 0
    assert two.allocate(0, {"host": "two"}) == 1
    assert [r["host"] for r in one.list()] == ["one", "two"]
    other = SQLBackend(uri, tmp_path / "mnt1", "/mnt1/outputs/x")
    assert other.next_number() == 0


# -- records -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    record=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k != "version"), json_values, max_size=6
    )
)
def test_records_round_trip_exactly(store: SQLBackend, record: dict[str, Any]) -> None:
    n = store.allocate(0, record)
    assert store.get(n) == {**record, "version": n}
    assert store.list()[-1] == {**record, "version": n}


def test_nan_and_infinite_metrics_survive(store: SQLBackend) -> None:
    n = store.allocate(0, {"metrics": {"val_loss": float("nan"), "best": float("inf")}})
    got = store.get(n)
    assert got is not None
    assert math.isnan(got["metrics"]["val_loss"]) and got["metrics"]["best"] == math.inf


def test_returned_records_are_copies(store: SQLBackend) -> None:
    store.allocate(0, {"tags": ["a"]})
    got = store.get(0)
    assert got is not None
    got["tags"].append("b")
    store.list()[0]["tags"].append("c")
    assert store.get(0) == {"tags": ["a"], "version": 0}


def test_update_merges_top_level_keys(store: SQLBackend) -> None:
    store.allocate(0, {"status": "running", "metrics": {"a": 1.0}})
    store.update(0, {"status": "completed", "ended_at": "t"})
    assert store.get(0) == {
        "status": "completed",
        "metrics": {"a": 1.0},
        "ended_at": "t",
        "version": 0,
    }


def test_modify_gets_a_copy_and_merges_its_patch(store: SQLBackend) -> None:
    store.allocate(0, {"metrics": {"a": 1.0}})
    seen: list[dict[str, Any]] = []

    def change(record: dict[str, Any]) -> dict[str, Any]:
        seen.append(record)
        return {"metrics": {**record["metrics"], "b": 2.0}}

    store.modify(0, change)
    assert store.get(0) == {"metrics": {"a": 1.0, "b": 2.0}, "version": 0}
    store.modify(0, lambda record: {})
    assert store.get(0) == {"metrics": {"a": 1.0, "b": 2.0}, "version": 0}
    assert seen == [{"metrics": {"a": 1.0}, "version": 0}]


def test_an_exception_in_modify_changes_nothing(store: SQLBackend) -> None:
    store.allocate(0, {"x": 1})

    def boom(record: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.modify(0, boom)
    assert store.get(0) == {"x": 1, "version": 0}
    store.update(0, {"x": 2})  # the row lock was released
    assert store.get(0) == {"x": 2, "version": 0}


def test_append_creates_then_extends_a_list(store: SQLBackend) -> None:
    store.allocate(0, {})
    store.append(0, "checkpoints", {"path": "a.ckpt"})
    store.append(0, "checkpoints", {"path": "b.ckpt"})
    assert store.get(0) == {"checkpoints": [{"path": "a.ckpt"}, {"path": "b.ckpt"}], "version": 0}


@pytest.mark.parametrize("number", [1, -1, True, 2**70])
def test_writes_to_unknown_versions_raise(store: SQLBackend, number: Any) -> None:
    store.allocate(0, {})
    with pytest.raises(VersionNotFoundError, match="version"):
        store.update(number, {"a": 1})
    with pytest.raises(VersionNotFoundError):
        store.append(number, "k", 1)
    assert store.next_number() == 1


def test_records_that_are_not_json_are_refused(store: SQLBackend) -> None:
    with pytest.raises(BackendError, match="not JSON-able"):
        store.allocate(0, {"path": Path("x")})
    assert store.next_number() == 0
    store.allocate(0, {})
    with pytest.raises(BackendError, match="not JSON-able"):
        store.update(0, {"s": {1, 2}})
    with pytest.raises(BackendError, match="not JSON-able"):
        store.append(0, "k", object())


@pytest.mark.parametrize("floor", [-1, 2**63, 1.5])
def test_bad_floors_are_refused(store: SQLBackend, floor: Any) -> None:
    with pytest.raises(BackendError, match="floor"):
        store.allocate(floor, {})


def test_an_unreadable_record_is_corrupt_state_not_a_reset(store: SQLBackend) -> None:
    store.allocate(0, {})
    engine = raw_engine(store)
    with engine.begin() as conn:
        conn.execute(
            sa.update(schema.versions)
            .where(schema.versions.c.experiment == store.experiment)
            .values(record="{not json")
        )
    engine.dispose()
    with pytest.raises(CorruptStateError, match="version 0"):
        store.get(0)
    with pytest.raises(CorruptStateError):
        store.list()
    with pytest.raises(CorruptStateError):
        store.update(0, {"a": 1})
    assert store.allocate(0, {}) == 1


def test_repair_replaces_unreadable_records_and_lifts_the_counter(store: SQLBackend) -> None:
    for _ in range(3):
        store.allocate(0, {"status": "completed"})
    engine = raw_engine(store)
    with engine.begin() as conn:
        conn.execute(
            sa.update(schema.versions)
            .where(schema.versions.c.experiment == store.experiment, schema.versions.c.number == 1)
            .values(record="[1, 2")
        )
        conn.execute(
            sa.insert(schema.versions).values(
                experiment=store.experiment, number=6, record='{"status": "completed"}'
            )
        )
    engine.dispose()
    with pytest.raises(CorruptStateError):
        store.list()
    report = store.repair(4)
    assert report["next_number"] == 7 and report["previous_next_number"] == 3
    # The stub, the summary of the row written by hand without one, the counter.
    assert len(report["actions"]) == 3
    assert "rewrote the list summary of 1 version(s)" in report["actions"]
    stub = store.get(1)
    assert stub is not None and stub["status"] == "unknown"
    assert stub["unreadable_record"] == "[1, 2"
    assert [r["version"] for r in store.list()] == [0, 1, 2, 6]
    assert store.repair(0) == {"next_number": 7, "previous_next_number": 7, "actions": []}
    assert store.allocate(0, {}) == 7


# -- the table layout ----------------------------------------------------------------


def set_schema_version(b: SQLBackend, value: str) -> None:
    engine = raw_engine(b)
    with engine.begin() as conn:
        conn.execute(
            sa.update(schema.meta).where(schema.meta.c.key == "schema_version").values(value=value)
        )
    engine.dispose()


def test_tables_are_created_on_first_use_with_the_schema_version(store: SQLBackend) -> None:
    store.next_number()
    engine = raw_engine(store)
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
        version = conn.execute(sa.select(schema.meta.c.value)).scalar_one()
    engine.dispose()
    assert {"versionkit_meta", "versionkit_experiments", "versionkit_versions"} <= names
    assert version == str(SCHEMA_VERSION)


def test_a_database_from_a_newer_versionkit_is_refused(
    store: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.allocate(0, {})
    set_schema_version(store, str(SCHEMA_VERSION + 1))
    monkeypatch.setattr(engines, "ready", set())  # as a fresh process would see it
    fresh = SQLBackend(store.uri, store.root, store.experiment)
    with pytest.raises(BackendError, match=r"newer versionkit .*upgrade versionkit") as info:
        fresh.list()
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="newer versionkit"):
        fresh.allocate(0, {})


def test_a_garbled_schema_version_is_corrupt_state(
    store: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.allocate(0, {})
    set_schema_version(store, "banana")
    monkeypatch.setattr(engines, "ready", set())
    with pytest.raises(CorruptStateError, match="banana"):
        SQLBackend(store.uri, store.root, store.experiment).list()


def test_an_unknown_older_schema_version_is_corrupt_state(
    store: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.allocate(0, {})
    set_schema_version(store, "0")
    monkeypatch.setattr(engines, "ready", set())
    with pytest.raises(CorruptStateError, match="schema version 0, which no versionkit"):
        SQLBackend(store.uri, store.root, store.experiment).list()


def test_an_older_layout_is_upgraded_once(
    store: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.allocate(0, {"kept": True})
    calls: list[int] = []

    def to_v2(conn: sa.Connection) -> None:
        calls.append(1)
        conn.execute(sa.insert(schema.meta).values(key="upgraded", value="yes"))

    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr(schema, "MIGRATIONS", {SCHEMA_VERSION: to_v2})
    for _ in range(2):  # two fresh processes: the second finds it done
        monkeypatch.setattr(engines, "ready", set())
        upgraded = SQLBackend(store.uri, store.root, store.experiment)
        assert upgraded.get(0) == {"kept": True, "version": 0}
    assert calls == [1]
    engine = raw_engine(store)
    with engine.connect() as conn:
        meta = dict(conn.execute(sa.select(schema.meta.c.key, schema.meta.c.value)).all())
    engine.dispose()
    assert meta == {"schema_version": str(SCHEMA_VERSION + 1), "upgraded": "yes"}


# -- URIs and connection errors ------------------------------------------------------


def test_the_scheme_table_picks_this_backend(tmp_path: Path) -> None:
    for scheme in ("sqlite", "postgresql", "postgres"):
        assert resolve_backend_class(f"{scheme}://x/y") is SQLBackend
    b = open_backend(f"sqlite:///{tmp_path}/r.db", tmp_path, "exp")
    assert isinstance(b, SQLBackend)
    assert b.allocate(0, {}) == 0


def test_postgres_scheme_is_an_alias_that_uses_psycopg(tmp_path: Path) -> None:
    b = SQLBackend("postgres://u:pw@db.example:5433/reg?experiment=e1", tmp_path, "root")
    assert b._url.drivername == "postgresql+psycopg"
    assert b.experiment == "e1"
    assert "experiment" not in b._url.query
    assert b.describe() == "SQL registry postgres://u:***@db.example:5433/reg?experiment=e1"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite://", "names no SQLite file"),
        ("sqlite:///:memory:", "names no SQLite file"),
        ("postgresql://user@host", "names no database"),
        ("mysql://user@host/db", "expected sqlite:///"),
        ("sqlite:///{tmp}/r.db?experiment=", "empty ?experiment="),
        ("sqlite:///{tmp}/r.db?experiment=a&experiment=b", "more than once"),
        ("sqlite:///{tmp}/no/such/folder/r.db", "does not exist; create it first"),
        ("sqlite:///{tmp}", "is a folder"),
    ],
)
def test_bad_uris_say_what_was_expected(tmp_path: Path, uri: str, expected: str) -> None:
    uri = uri.replace("{tmp}", str(tmp_path))
    with pytest.raises(SQLURIError, match="registry") as info:
        SQLBackend(uri, tmp_path, "exp")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, (BackendError, ValueError)) and info.value.exit_code == 2


def test_a_missing_driver_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(BackendError, match=r"needs the Python package 'psycopg'.*\[sql\]"):
        SQLBackend("postgresql://u:pw@localhost/db", tmp_path, "exp")
    with pytest.raises(SQLURIError, match=r"knows no driver 'postgresql\+nosuch'"):
        SQLBackend("postgresql+nosuch://u@localhost/db", tmp_path, "exp")


def test_a_sqlite_file_that_is_not_a_database_is_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not sqlite, just some text that is long enough" * 100)
    with pytest.raises(CorruptStateError, match="not a readable SQLite database"):
        SQLBackend(f"sqlite:///{path}", tmp_path, "exp").next_number()
    assert path.read_bytes().startswith(b"this is not sqlite")


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    uri = f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{free_port()}/test"
    b = SQLBackend(uri, tmp_path, "exp")
    with pytest.raises(BackendError) as info:
        b.allocate(0, {})
    message = str(info.value)
    assert message.startswith("cannot connect to SQL registry postgresql://postgres:***@127.0.0.1:")
    assert "refused" in message.lower()
    assert "s3cr3t-pw" not in message and "\n" not in message
    assert info.value.exit_code == 1  # not a usage mistake: the server is down


@pytest.mark.postgres
def test_a_missing_database_is_named_clearly(pg_uri: str, tmp_path: Path) -> None:
    wrong = pg_uri.split("?")[0].rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:8]}"
    with pytest.raises(
        BackendError, match=r"cannot connect to SQL registry .*no_such_db_.* does not exist"
    ):
        SQLBackend(wrong, tmp_path, "exp").list()


@pytest.mark.postgres
def test_an_unknown_user_is_named_clearly(pg_uri: str, tmp_path: Path) -> None:
    scheme, _, rest = pg_uri.partition("://")
    wrong = f"{scheme}://nobody_{uuid.uuid4().hex[:6]}:pw@{rest.split('@', 1)[1]}"
    with pytest.raises(BackendError, match="cannot connect") as info:
        SQLBackend(wrong, tmp_path, "exp").list()
    assert "nobody_" in str(info.value) and ":pw@" not in str(info.value)


def test_a_held_write_lock_times_out_clearly(store: SQLBackend, uri: str) -> None:
    store.allocate(0, {})
    engine = raw_engine(store)
    with engine.connect() as conn:
        if store._dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.execute(
                sa.select(schema.versions.c.number)
                .where(schema.versions.c.experiment == store.experiment)
                .with_for_update()
            )
        store.lock_timeout = 0.2
        with pytest.raises(LockTimeout, match=r"more than 0.2 s while trying to update version 0"):
            store.update(0, {"a": 1})
        conn.rollback()
    engine.dispose()
    store.update(0, {"a": 1})
    assert store.get(0) == {"a": 1, "version": 0}


def test_close_ends_this_backend_but_not_others_on_the_same_database(store: SQLBackend) -> None:
    other = SQLBackend(store.uri, store.root, store.experiment)
    store.allocate(0, {})
    store.close()
    store.close()  # twice is harmless
    with pytest.raises(BackendError, match="was closed"):
        store.list()
    assert other.allocate(0, {}) == 1
    other.close()


@pytest.mark.parametrize("timeout", [-1.0, 0.0, 0.5, float("inf")])
def test_any_lock_timeout_works_without_contention(store: SQLBackend, timeout: float) -> None:
    store.lock_timeout = timeout
    assert store.allocate(0, {}) == 0
    store.update(0, {"status": "completed"})
    assert store.raise_next_number(5) == 5
    assert store.get(0) == {"status": "completed", "version": 0}


def test_records_and_best_candidates_stream_across_pages(
    store: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from versionkit.backends.sql import backend as backend_module

    monkeypatch.setattr(backend_module, "_FIRST_PAGE", 2)
    monkeypatch.setattr(backend_module, "_PAGE", 5)
    for n in range(13):
        item = {"path": f"c/{n}.ckpt", "step": n, "metrics": {"val_loss": (n * 5) % 13}}
        store.allocate(0, {"checkpoints": [item]})
    assert [r["version"] for r in store.iter_records()] == list(range(13))
    assert [r["version"] for r in store.iter_records(newest_first=True)] == list(range(12, -1, -1))
    values = [item["metrics"]["val_loss"] for _n, item in store.best_candidates("val_loss", "min")]
    assert values == sorted(values) and len(values) == 13
    top = [n for n, _item in store.best_candidates("val_loss", "max")]
    assert top[0] == 5 and len(top) == 13  # (5 * 5) % 13 == 12 is the highest


def test_a_version_1_database_is_upgraded_with_its_checkpoints_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The layout versionkit wrote before the checkpoint index and experiment metadata.
    path = tmp_path / "v1.db"
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
    item = {"path": "checkpoints/version_0/a.ckpt", "step": 7, "metrics": {"val_loss": 0.25}}
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE versionkit_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE versionkit_experiments "
            "(experiment TEXT PRIMARY KEY, next_number BIGINT NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE versionkit_versions (experiment TEXT, number BIGINT, "
            "record TEXT NOT NULL, PRIMARY KEY (experiment, number))"
        )
        conn.exec_driver_sql("INSERT INTO versionkit_meta VALUES ('schema_version', '1')")
        conn.exec_driver_sql("INSERT INTO versionkit_experiments VALUES ('old', 2)")
        conn.exec_driver_sql(
            "INSERT INTO versionkit_versions VALUES ('old', 0, ?), ('old', 1, '{broken')",
            (json.dumps({"status": "completed", "checkpoints": [item]}),),
        )
    engine.dispose()
    monkeypatch.setattr(engines, "ready", set())
    b = SQLBackend(f"sqlite:///{path}", tmp_path, "old")
    try:
        assert [(n, c["path"]) for n, c in b.best_candidates("val_loss", "min")] == [
            (0, item["path"])
        ]
        assert b.get_meta() == {}
        assert b.allocate(0, {}) == 2
    finally:
        b.close()
    with sa.create_engine(f"sqlite:///{path}", poolclass=NullPool).connect() as conn:
        assert conn.execute(sa.select(schema.meta.c.value)).scalar_one() == str(SCHEMA_VERSION)
        v = schema.versions.c
        summaries = dict(conn.execute(sa.select(v.number, v.summary).order_by(v.number)).all())
    # Filled on the way through version 3; the unreadable record has none (it lists
    # from its record, and repair turns it into a stub with one).
    assert summaries[0] == summary_of(0, {"status": "completed", "checkpoints": [item]})
    assert summaries[0] is not None and summaries[1] is None
