"""The list summary (issue 14): ``versionkit list`` on SQL reads one short column per
version, written with the record, instead of decoding every whole record.

Pinned here: the summary's row is exactly the record's row (odd records included); every
write path stores the summary of the record it stores; a database from before the
column lists the same (filled on upgrade, or read from the record while missing, and
refilled by ``repair``); the table reads no record on SQL.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from test_list_scale import _cells_through_the_view, _odd_records

from versionkit.backends.base import Backend
from versionkit.backends.sql import SCHEMA_VERSION, SQLBackend, schema
from versionkit.backends.sql import engine as engines
from versionkit.backends.sql.uri import parse_uri
from versionkit.cli import _query, main
from versionkit.registry import Registry, VersionInfo, provenance
from versionkit.registry.summary import (
    SEP,
    TAG,
    decode,
    display_status_of,
    encode,
    fields,
    item_of,
    list_item,
    listed_status,
    split,
    summary_of,
)
from versionkit.registry.views import display_status


def _more_odd_records() -> list[dict[str, Any]]:
    here, gone = provenance.host(), 2**22 + 12345
    return [
        *_odd_records(),
        {"version": 20, "status": "running", "pid": gone, "host": f"a{SEP}b"},  # no summary
        {"version": 21, "status": 3, "host": "", "pid": 5, "created_at": ""},
        {"version": 22, "status": "running", "pid": gone, "host": ""},
        {"version": 23, "status": "running", "pid": gone, "host": here, "created_at": "=x",
         "note": f"tab{SEP}sep\tand\nlines " * 10, "git_commit": f"abc{SEP}", "git_dirty": True},
        {"version": 24, "metrics": {"val_loss": 10**30}, "metrics_step": -5, "checkpoints": [
            {"path": "x", "step": 2**53 + 1, "metrics": {"val_loss": 1e-310}},
            {"path": "y", "step": -3, "metrics": {"val_loss": 1e-310}}]},
        {"version": 25, "status": "", "metrics": {"val_loss": -0.0}, "metrics_step": True,
         "checkpoints": [{"path": "z", "metrics": {"val_loss": 2}}]},
        {"version": 26, "status": f"odd{SEP}", "note": "é" * 50, "host": "ünï"},
        {"version": 27, "status": {"a": 1}, "pid": -1, "git_commit": ["x"], "note": "   "},
        {"version": 28, "status": "running", "pid": 2**63, "host": here},
    ]


def test_the_summary_row_is_the_record_row(tmp_path: Path) -> None:
    for record in _more_odd_records():
        n = record["version"]
        item = list_item(n, record)
        text = encode(item)
        assert display_status_of(item) == display_status(record), record
        assert item_of(n, fields(item)) == item, record
        # The table formats the fields: of the stored text, or of the record without one.
        got = fields(item)
        if text is None:
            assert any(isinstance(v, str) and SEP in v for v in record.values()), record
        else:
            assert text.startswith(TAG + SEP)
            assert decode(n, text) == item, record
            assert split(text) == got, record
        tags = {n: ["best", "x"]} if n % 2 else {}
        info = VersionInfo.from_record(record, tmp_path, tmp_path)
        summary = (n, listed_status(got), got)
        from_summary = list(next(_query._summary_cells(iter([summary]), tags)))
        from_record = _query._cells(_query._row(dict(record), []), tags, [])
        assert from_summary == from_record == _cells_through_the_view(info, tags.get(n, []))
        for key in ("version", "created", "status", "best", "last"):
            assert _query._summary_sort_value(summary, key) == _query._sort_value(
                _query._row(dict(record), []), key
            ), (key, record)
    assert [encode(list_item(r["version"], r)) is None for r in _more_odd_records()].count(
        True
    ) == 3  # 20's host, 23's commit, 26's status hold the separator (23's note folds it)


def test_a_summary_of_another_format_is_not_read() -> None:
    text = summary_of(1, {"status": "completed"})
    assert text is not None and decode(1, text) is not None
    assert decode(1, "s0" + text[2:]) is None
    assert decode(1, text + SEP) is None
    assert decode(1, "") is None


def _stored(uri: str, root: Path) -> dict[int, tuple[str, str | None]]:
    b = SQLBackend(uri, root, str(root.resolve()))
    try:
        v = schema.versions.c
        with b._engine().connect() as conn:
            rows = conn.execute(
                sa.select(v.number, v.record, v.summary).where(v.experiment == b.experiment)
            ).all()
    finally:
        b.close()
    return {int(n): (record, summary) for n, record, summary in rows}


def _check_summaries(uri: str, root: Path, count: int) -> None:
    stored = _stored(uri, root)
    assert len(stored) == count
    for n, (record, summary) in stored.items():
        assert summary is not None, n
        assert summary == schema.summary_text(n, record), (n, record, summary)


def test_every_write_stores_the_summary_of_its_record(uri: str, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    with Registry(root, uri) as reg:
        v = reg.allocate(config={"lr": 0.1}, command=["main.py"])  # PG: one statement
        _check_summaries(uri, root, 1)
        reg.log_metrics(0, {"val_loss": 0.5}, step=7)
        _check_summaries(uri, root, 1)
        ckpt = v.checkpoint_dir / "step_00000007-val_loss_0.5000.ckpt"
        ckpt.write_bytes(b"w")
        reg.add_checkpoint(0, ckpt, step=7, metrics={"val_loss": 0.5})
        _check_summaries(uri, root, 1)
        reg.set_status(0, "completed")
        reg.update(0, note="first  try\nworked", git_commit="0123456789abcdef", git_dirty=True)
        _check_summaries(uri, root, 1)
        reg.backend.append(0, "checkpoints", {"path": "x", "step": 9, "metrics": {"val_loss": 0.1}})
        reg.backend.allocate(0, {"status": "running", "pid": 1, "host": "h",  # in a transaction
                                 "checkpoints": [{"path": "y", "metrics": {"val_loss": 2.0}}]})
        _check_summaries(uri, root, 2)
        assert reg.backend.allocate(0, {"host": f"a{SEP}b"}) == 2  # no summary possible
        stored = _stored(uri, root)
        assert stored[2][1] is None
        reg.backend.update(2, {"host": "fine"})
        _check_summaries(uri, root, 3)
        from versionkit.curate.archive import export_version, import_version

        export_version(reg, 0, tmp_path / "v0.tar.gz")
        imported = import_version(tmp_path / "v0.tar.gz", reg)
        _check_summaries(uri, root, 4)
        assert decode(3, _stored(uri, root)[3][1] or "") == list_item(
            3, reg.get(imported.version).record
        )
        assert not any("summary" in a for a in reg.repair()["actions"]), "none to rewrite"
    with Registry(root, uri, lock_timeout=2.0) as reg:  # PG: the transaction path
        reg.allocate()
        _check_summaries(uri, root, 5)


def _list(root: Path, uri: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["list", str(root), "--backend", uri, *extra]) == 0
    return capsys.readouterr().out


def _fill(root: Path, uri: str) -> None:
    with Registry(root, uri) as reg:
        for i, record in enumerate(_more_odd_records()):
            n = reg.backend.allocate(0, {k: v for k, v in record.items() if k != "version"})
            assert n == i
        reg.allocate(config={"a": 1})
        reg.set_status(len(_more_odd_records()), "completed")
        (root / "logs" / "version_40").mkdir(parents=True)


_FLAGS: list[list[str]] = [[], ["--limit", "5"], ["--status", "dead,completed,untracked"],
                           ["--sort=-best"], ["--sort", "created"], ["--limit", "0"]]


def test_list_reads_summaries_not_records(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "exp"
    _fill(root, uri)
    # The reference: every row summarised from its whole record (the default of
    # backends that keep no summaries).
    with monkeypatch.context() as m:
        m.setattr(SQLBackend, "iter_summaries", Backend.iter_summaries)
        m.setattr(SQLBackend, "iter_summary_fields", Backend.iter_summary_fields)
        expected = {tuple(f): _list(root, uri, *f, capsys=capsys) for f in _FLAGS}
    assert "dead" in expected[()] and "untracked" in expected[()]
    decoded: list[int] = []
    real = SQLBackend._decode

    def counting(self: SQLBackend, number: int, text: str) -> Any:
        decoded.append(number)
        return real(self, number, text)

    monkeypatch.setattr(SQLBackend, "_decode", counting)
    for flags in _FLAGS:
        assert _list(root, uri, *flags, capsys=capsys) == expected[tuple(flags)], flags
    # Decoded: the records whose fields hold the separator (10, 13 and 16), in each of
    # the four listings of every version, and 16 once more in --limit 5 (16 to 19 and
    # the folder 40), which reads the newest summaries, not the newest records.
    assert Counter(decoded) == {10: 4, 13: 4, 16: 5}, decoded
    decoded.clear()
    _list(root, uri, "--json", capsys=capsys)
    assert sorted(decoded) == list(range(20)), "--json lists the whole records"


def test_a_database_from_before_the_column_lists_the_same(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "exp"
    _fill(root, uri)
    expected = {tuple(f): _list(root, uri, *f, capsys=capsys) for f in _FLAGS}
    # Back to layout 2: no summary column.
    engine = sa.create_engine(parse_uri(uri)[0], poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE versionkit_versions DROP COLUMN summary")
        conn.exec_driver_sql("UPDATE versionkit_meta SET value = '2'")
    monkeypatch.setattr(engines, "ready", set())
    for flags in _FLAGS:  # the first one upgrades it: the column is added and filled
        assert _list(root, uri, *flags, capsys=capsys) == expected[tuple(flags)], flags
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT value FROM versionkit_meta").scalar_one() == str(
            SCHEMA_VERSION
        )
        missing = conn.exec_driver_sql(
            "SELECT number FROM versionkit_versions WHERE summary IS NULL"
        ).scalars().all()
    assert missing == [10, 13, 16]
    # Rows without a summary (written by hand), or with one of another format, list
    # from their records.
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE versionkit_versions SET summary = NULL WHERE number < 10")
        conn.exec_driver_sql(
            "UPDATE versionkit_versions SET summary = "
            "'s0' || substr(replace(summary, 'running', 'bogus'), 3) WHERE number = 12"
        )
    for flags in _FLAGS:
        assert _list(root, uri, *flags, capsys=capsys) == expected[tuple(flags)], flags
    with Registry(root, uri) as reg:
        actions = reg.repair()["actions"]
    assert "rewrote the list summary of 11 version(s)" in actions, actions
    with engine.connect() as conn:
        missing = conn.exec_driver_sql(
            "SELECT number FROM versionkit_versions WHERE summary IS NULL"
        ).scalars().all()
    engine.dispose()
    assert missing == [10, 13, 16]
    for flags in _FLAGS:
        assert _list(root, uri, *flags, capsys=capsys) == expected[tuple(flags)], flags


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_other_backends_summarise_their_records(backend: str, tmp_path: Path) -> None:
    uri = "file" if backend == "file" else f"memory://{os.getpid()}-{tmp_path.name}"
    with Registry(tmp_path / "exp", uri) as reg:
        for record in _more_odd_records()[:12]:
            reg.backend.allocate(0, {k: v for k, v in record.items() if k != "version"})
        records = list(reg.iter_records(newest_first=True))
        items = list(reg.iter_summaries(newest_first=True))
        assert items == [list_item(r["version"], r) for r in records]
        assert list(reg.iter_summaries(limit=3)) == [list_item(r["version"], r)
                                                     for r in records[::-1][:3]]


def test_fill_summaries_walks_every_experiment_in_batches() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        good = json.dumps({"status": "completed"})
        conn.execute(sa.insert(schema.versions), [
            {"experiment": x, "number": n, "record": good if n % 7 else "{unreadable"}
            for x in ("a", "b", "c") for n in range(2500)
        ])
        assert schema.fill_summaries(conn, "b") == 2500 - 358
        assert schema.fill_summaries(conn) == 2 * (2500 - 358)
        assert schema.fill_summaries(conn) == 0  # the unreadable ones stay NULL
        v = schema.versions.c
        summaries = conn.execute(sa.select(v.summary).where(v.summary.is_not(None))).scalars()
        assert set(summaries) == {summary_of(0, {"status": "completed"})}
    engine.dispose()
