"""What keeps the registry's cost flat as an experiment grows (issue: 100,000 versions).

No timings here (they live in benchmarks/bench_registry.py): these tests pin the
mechanisms. Allocation reads no listing when the counter is ahead of the folders;
``best`` over every version reads an index (SQL: one query that uses its index, seen
through EXPLAIN; file: best.json) and opens one record per candidate it checks;
``iter_versions`` streams, newest first when asked, and stops at ``limit``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from versionkit.backends.base import Backend
from versionkit.registry import Registry


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every folder that ``os.listdir`` or ``os.scandir`` is asked for, in order."""
    seen: list[str] = []
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path: Any = ".") -> list[str]:
        seen.append(os.fspath(path))
        return real_listdir(path)

    def scandir(path: Any = ".") -> Any:
        seen.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)
    yield seen


def _count_gets(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The version numbers ``reg``'s backend is asked for with ``get``, from now on."""
    reads: list[int] = []
    real_get = reg.backend.get

    def get(number: int) -> Any:
        reads.append(number)
        return real_get(number)

    monkeypatch.setattr(reg.backend, "get", get)
    return reads


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_allocate_lists_no_folder_once_the_counter_is_ahead(
    tmp_path: Path, backend: str, listings: list[str]
) -> None:
    uri = "file" if backend == "file" else f"sqlite:///{tmp_path}/r.db"
    root = tmp_path / "exp"
    touch(root / "logs" / "version_4" / "events")  # another tool's folder
    reg = Registry(root, uri)
    assert reg.allocate().version == 5, "a new registry starts above every folder"
    assert any(p.endswith("logs") for p in listings), "the first allocation lists them once"
    for n in range(6, 9):
        touch(root / "logs" / f"version_{n}" / "events") if n == 7 else None
    listings.clear()
    numbers = [reg.allocate().version for _ in range(3)]
    assert numbers == [6, 8, 9], "a folder made at the counter is stepped over"
    assert listings == [], f"allocation listed {listings}"


def test_a_folder_far_above_the_counter_is_stepped_over_when_reached(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    reg.allocate()
    touch(reg.log_dir(3) / "events")
    assert [reg.allocate().version for _ in range(3)] == [1, 2, 4]
    assert reg.get(3).status == "untracked"


def _best_index_names(conn: sa.Connection, sql: str) -> str:
    return " ".join(str(row) for row in conn.exec_driver_sql(sql).all())


def test_sql_best_is_one_query_that_uses_its_index(uri: str, tmp_path: Path) -> None:
    from versionkit.backends.sql import SQLBackend, statements
    from versionkit.backends.sql.uri import parse_uri

    b = SQLBackend(uri, tmp_path, "exp")
    try:
        for n in range(40):
            b.allocate(
                0,
                {
                    "checkpoints": [
                        {
                            "path": f"checkpoints/version_{n}/{i}.ckpt",
                            "step": i,
                            "metrics": {"val_loss": (n * 7 + i) % 23 / 10},
                        }
                        for i in range(3)
                    ]
                },
            )
        engine = sa.create_engine(parse_uri(uri)[0])
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # tiny table: ask for the plan
                conn.exec_driver_sql("ANALYZE versionkit_checkpoints")
            for mode in ("min", "max"):
                query = statements.best_query(b.experiment, "val_loss", mode).limit(1000)
                sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
                plan = _best_index_names(
                    conn, f"EXPLAIN {'QUERY PLAN ' if conn.dialect.name == 'sqlite' else ''}{sql}"
                )
                assert "ix_versionkit_checkpoints_best" in plan, plan
        engine.dispose()
        first = next(b.best_candidates("val_loss", "min"))
        assert first[1]["metrics"]["val_loss"] == 0.0
    finally:
        b.close()


def test_file_best_reads_the_index_not_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(tmp_path / "exp")
    for n in range(30):
        reg.allocate()
        path = touch(reg.checkpoint_dir(n) / "a.ckpt")
        reg.add_checkpoint(n, path, step=n, metrics={"val_loss": abs(n - 17) / 10})
    reads = _count_gets(reg, monkeypatch)
    monkeypatch.setattr(reg.backend, "list", lambda: pytest.fail("best listed every record"))
    best = reg.best()
    assert best is not None and best.version == 17
    assert set(reads) == {17}, "only the winner's record is read (to confirm it, and its status)"
    # The winning file is deleted: the next entry of the index wins, still without a scan.
    (reg.checkpoint_dir(17) / "a.ckpt").unlink()
    best = reg.best()
    assert best is not None and best.version in (16, 18) and best.version == 18


def test_file_best_index_is_rebuilt_when_missing_and_by_repair(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    for n in range(3):
        reg.allocate()
        reg.add_checkpoint(
            n, touch(reg.checkpoint_dir(n) / "a.ckpt"), step=1, metrics={"val_loss": 1.0 - n / 10}
        )
    index = tmp_path / "exp" / ".versionkit" / "best.json"
    index.unlink()
    assert reg.best().version == 2  # type: ignore[union-attr]
    assert index.exists(), "a missing index is rebuilt by the query that needs it"
    index.write_text("{garbage")
    reg.repair()
    assert reg.best().version == 2  # type: ignore[union-attr]


def test_iter_versions_streams_newest_first_with_limit_and_status(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp", f"memory://scale-{tmp_path.name}")
    for _ in range(6):
        reg.allocate()
    reg.set_status(4, "pruned")
    reg.set_status(1, "completed")
    touch(reg.log_dir(9) / "events")  # untracked, merged in order
    assert [v.version for v in reg.iter_versions(newest_first=True, limit=3)] == [9, 5, 4]
    assert [v.version for v in reg.iter_versions(limit=2)] == [0, 1]
    assert [v.version for v in reg.iter_versions(status="pruned")] == [4]
    assert [v.version for v in reg.iter_versions(status="untracked")] == [9]
    assert list(reg.iter_versions(limit=0)) == []
    assert reg.latest().version == 9  # type: ignore[union-attr]
    stream = reg.iter_versions()
    assert next(stream).version == 0, "a generator: nothing is read before it is asked"


def test_best_skips_pruned_versions_unless_asked(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    for n, loss in enumerate([0.5, 0.1]):
        reg.allocate()
        reg.add_checkpoint(
            n, touch(reg.checkpoint_dir(n) / "last.ckpt"), step=5, metrics={"val_loss": loss}
        )
    reg.set_status(1, "pruned")
    assert reg.get(1).ended_at is not None, "pruned is a terminal status"
    assert reg.best().version == 0  # type: ignore[union-attr]
    assert reg.best(include_pruned=True).version == 1  # type: ignore[union-attr]
    assert reg.best(version=1).version == 1  # type: ignore[union-attr]


def test_public_modify_is_atomic_read_modify_write(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    n = reg.allocate().version
    stored = reg.modify(n, lambda record: {"count": record.get("count", 0) + 1})
    assert stored["count"] == 1 and reg.get(n).record["count"] == 1
    backend: Backend = reg.backend
    assert backend.get(n) == stored


def test_best_remembers_untracked_folders_until_a_folder_changes(
    tmp_path: Path, listings: list[str]
) -> None:
    root = tmp_path / "exp"
    touch(root / "checkpoints" / "version_0" / "step_00000001-val_loss_0.9000.ckpt")
    reg = Registry(root)
    reg.allocate()
    reg.add_checkpoint(
        1, touch(reg.checkpoint_dir(1) / "a.ckpt"), step=1, metrics={"val_loss": 0.5}
    )
    assert reg.best().version == 1  # type: ignore[union-attr]
    listings.clear()
    assert reg.best().version == 1  # type: ignore[union-attr]
    parents = {
        str(root / "checkpoints"),
        str(root / "logs"),
        str(root / ".versionkit" / "versions"),
    }
    assert not parents & set(listings), f"the second best listed {listings}"
    # A new foreign folder changes checkpoints/' mtime: it is found at once.
    touch(root / "checkpoints" / "version_7" / "step_00000001-val_loss_0.1000.ckpt")
    assert reg.best().version == 7  # type: ignore[union-attr]


def test_the_latest_few_read_a_few_records_not_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(tmp_path / "exp")
    for _ in range(12):
        reg.allocate()
    for n in (10, 9):
        (tmp_path / "exp" / ".versionkit" / "versions" / f"{n}.json").unlink()
    reg.checkpoint_dir(9).rmdir()
    reg.log_dir(9).rmdir()  # 9: deleted entirely; 10: folders left, so untracked
    touch(reg.log_dir(15) / "events")  # another tool's, above the counter
    reads = _count_gets(reg, monkeypatch)
    monkeypatch.setattr(reg.backend, "iter_records", lambda **kw: pytest.fail("listed records"))
    got = [(v.version, v.status) for v in reg.iter_versions(limit=4, newest_first=True)]
    assert got == [(15, "untracked"), (11, "running"), (10, "untracked"), (8, "running")]
    assert len(reads) <= 9
    monkeypatch.undo()
    full = [(v.version, v.status) for v in reg.iter_versions(newest_first=True)][:4]
    assert full == got, "the walk and the listing agree"


def test_the_walk_gives_way_to_the_listing_after_a_long_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from versionkit.registry import queries

    monkeypatch.setattr(queries, "_WALK_GAPS", 3)
    reg = Registry(tmp_path / "exp", f"memory://walk-{tmp_path.name}")
    for _ in range(10):
        reg.allocate()
    for n in range(2, 9):
        del reg.backend._store.records[n]  # type: ignore[attr-defined]
        reg.checkpoint_dir(n).rmdir()
        reg.log_dir(n).rmdir()
    assert [v.version for v in reg.iter_versions(limit=3, newest_first=True)] == [9, 1, 0]
