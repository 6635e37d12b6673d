"""``versionkit list`` on SQL reads through the driver alone (``backends.sql.direct``):
no SQLAlchemy in the process, the same connection SQLAlchemy would make, and
SQLAlchemy's path (its tables, upgrades, refusals and messages) wherever the direct
way is unsure or fails, from where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from test_sql import free_port, raw_engine

from versionkit.backends.sql import SCHEMA_VERSION, SQLBackend, direct, listing, schema
from versionkit.backends.sql import engine as engines
from versionkit.backends.sql.uri import parse_uri
from versionkit.cli import main
from versionkit.errors import BackendError
from versionkit.registry import Registry

_ROOT = Path(__file__).resolve().parents[2]


def _sa_connect(uri: str) -> tuple[list[Any], dict[str, Any]]:
    """What SQLAlchemy's engine passes to the driver's ``connect`` for ``uri``."""
    url, _ = parse_uri(uri)
    engine = engines._create_engine(url)
    seen: list[tuple[list[Any], dict[str, Any]]] = []

    @event.listens_for(engine, "do_connect")
    def capture(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        seen.append((list(cargs), dict(cparams)))
        raise RuntimeError("captured")

    with pytest.raises(Exception, match="captured"):
        engine.connect()
    engine.dispose()
    cargs, cparams = seen[0]
    cparams.pop("context", None)  # SQLAlchemy's own type adapters
    return cargs, cparams


_PG_TAKEN = [
    "postgresql://u@h:5432/db",
    "postgresql://u:p%40ss%3Aw0rd@h/db",
    "postgres://h/db",
    "postgresql+psycopg://u@h/db?sslmode=disable&application_name=mine",
    "postgresql://u@h/db?options=-csearch_path%3Ds&experiment=e%20x",
    "postgresql://u@h/db?options=-c%20lock_timeout%3D5",
    "postgresql://%2Fodd@h/db",
    "postgresql:///db",
    "postgresql://u@h/d%20b?connect_timeout=3",
    "postgresql://u:@h:0/db",
    "postgresql://u:p%3Fw%40x@h:5/d%2Fb",
    "postgresql://:pw@h/db",
]
_PG_LEFT = [  # SQLAlchemy's path reads (or refuses) these
    "postgresql://u@[::1]:5432/db",
    "postgresql://u@h/db?host=/tmp",
    "postgresql://u@h/db?port=5",
    "postgresql://u@h/db?a=1&a=2",
    "postgresql://u@h/db?experiment=",
    "postgresql://u@h/db?experiment=%20",
    "postgresql://u@h/db?x=",
    "postgresql://u@h/",
    "postgresql://u@h",
    "postgresql+asyncpg://u@h/db",
    "postgresql+PSYCOPG://u@h/db",
    "postgresql://u@h:abc/db",
    "postgresql://u@h:/db",
    "mysql://u@h/db",
    "postgresql://u@x@h/db",
    "postgresql://u:p?w@h/db",
    "postgresql://u@h/db?x=1\n",
    "postgresql://u@h:1:2/db",
    "postgresql+psycopg2+x://u@h/db",
]


@pytest.mark.parametrize("uri", _PG_TAKEN)
def test_a_postgres_uri_connects_as_sqlalchemy_would(uri: str) -> None:
    where = direct.target(uri)
    assert where is not None and where.dialect == "postgresql"
    cargs, cparams = _sa_connect(uri)
    assert cargs == [] and where.connect == cparams
    assert where.experiment == parse_uri(uri)[1]


@pytest.mark.parametrize("uri", _PG_LEFT)
def test_postgres_uris_it_does_not_repeat_are_left_to_sqlalchemy(uri: str) -> None:
    assert direct.target(uri) is None


def test_a_sqlite_uri_opens_the_file_sqlalchemy_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a b").mkdir()
    for uri in (f"sqlite:///{tmp_path}/r.db", f"sqlite:////{tmp_path}/r.db", "sqlite:///rel.db",
                f"sqlite:///{tmp_path}/a%20b/r.db?experiment=x", "sqlite+pysqlite:///r.db"):
        where = direct.target(uri)
        assert where is not None and where.dialect == "sqlite", uri
        assert [str(where.connect.absolute())] == _sa_connect(uri)[0], uri
        assert where.experiment == parse_uri(uri)[1]
    for uri in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x.db", f"sqlite:///{tmp_path}",
                f"sqlite:///{tmp_path}/no/r.db", f"sqlite:///{tmp_path}/r.db?timeout=5",
                "sqlite://host/r.db", "sqlite+pysqlcipher:///r.db"):
        assert direct.target(uri) is None, uri


def _fill(root: Path, uri: str, count: int = 100) -> None:
    with Registry(root, uri) as reg:
        for i in range(count):
            reg.allocate(config={"i": i})
            reg.set_status(i, "completed" if i % 3 else "failed")
        (root / "logs" / f"version_{count + 5}").mkdir()


def _list(root: Path, uri: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["list", str(root), "--backend", uri, *extra]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_a_list_process_imports_no_sqlalchemy(uri: str, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    _fill(root, uri, 5)
    with Registry(root, uri) as reg:  # a tag: the metadata is read too
        reg.backend.modify_meta(lambda _meta: {"tags": {"good": 3}})
    code = ("import sys\nfrom versionkit.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "print('sqlalchemy' in sys.modules, file=sys.stderr)\nsys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    done = subprocess.run([sys.executable, "-c", code, "list", str(root), "--backend", uri],
                          capture_output=True, text=True, env=env, check=True)
    assert done.stderr == "False\n"
    assert "good" in done.stdout and "untracked" in done.stdout
    assert len(done.stdout.splitlines()) == 7


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the pages read each way."""
    calls = {"direct": 0, "engine": 0}
    real_direct, real_engine = direct.Connection.summaries, listing._engine_page

    def through_driver(self: direct.Connection, *args: Any) -> Any:
        calls["direct"] += 1
        return real_direct(self, *args)

    def through_engine(*args: Any) -> Any:
        calls["engine"] += 1
        return real_engine(*args)

    monkeypatch.setattr(direct.Connection, "summaries", through_driver)
    monkeypatch.setattr(listing, "_engine_page", through_engine)
    return calls


def test_the_direct_listing_is_the_engine_listing(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "exp"
    _fill(root, uri)
    flags = [[], ["--limit", "40"], ["--status", "failed"], ["--sort=-created"]]
    with monkeypatch.context() as m:
        m.setattr(direct, "target", lambda _uri: None)
        expected = [_list(root, uri, *f, capsys=capsys) for f in flags]
    calls = _counting(monkeypatch)
    assert [_list(root, uri, *f, capsys=capsys) for f in flags] == expected
    assert calls == {"direct": 4 * 2, "engine": 0}, calls  # each: a page of 32, one of 128


def test_a_failed_direct_page_goes_on_through_the_engine_from_there(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "exp"
    _fill(root, uri)
    expected = _list(root, uri, capsys=capsys)
    calls = _counting(monkeypatch)
    real = direct.Connection.summaries

    def second_fails(self: direct.Connection, *args: Any) -> Any:
        if calls["direct"] == 1:
            raise direct.Unusable("gone")
        return real(self, *args)

    monkeypatch.setattr(direct.Connection, "summaries", second_fails)
    assert _list(root, uri, capsys=capsys) == expected
    assert calls == {"direct": 1, "engine": 1}, calls  # 32 rows directly, then the rest


def test_tables_missing_or_at_another_layout_are_sqlalchemys(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "exp"
    root.mkdir()
    calls = _counting(monkeypatch)
    # No tables yet (a new SQLite file, or an empty PostgreSQL schema): created.
    assert _list(root, uri, capsys=capsys) == f"no versions in {root}\n"
    assert calls == {"direct": 0, "engine": 1}
    store = SQLBackend(uri, root, str(root.resolve()))
    engine = raw_engine(store)
    store.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.meta.c.value)).scalar_one() == str(SCHEMA_VERSION)
    # A newer layout: refused, with SQLAlchemy's path's message.
    with engine.begin() as conn:
        conn.execute(sa.update(schema.meta).values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    monkeypatch.setattr(engines, "ready", set())
    assert main(["list", str(root), "--backend", uri]) == 1
    assert "set up by a newer versionkit" in capsys.readouterr().err


def test_a_sqlite_file_that_is_not_a_database_gets_the_usual_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "exp").mkdir()
    path = tmp_path / "registry.db"
    path.write_bytes(b"not sqlite at all" * 500)
    assert main(["list", str(tmp_path / "exp"), "--backend", f"sqlite:///{path}"]) == 1
    assert "not a readable SQLite database" in capsys.readouterr().err
    assert path.read_bytes() == b"not sqlite at all" * 500


def test_an_unreachable_server_is_tried_once_with_the_usual_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg")
    import psycopg

    uri = f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{free_port()}/test"
    (tmp_path / "exp").mkdir()
    with monkeypatch.context() as m:
        m.setattr(direct, "target", lambda _uri: None)
        assert main(["list", str(tmp_path / "exp"), "--backend", uri]) == 1
        expected = capsys.readouterr().err
    attempts: list[dict[str, Any]] = []
    real = psycopg.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", connect)
    assert main(["list", str(tmp_path / "exp"), "--backend", uri]) == 1
    err = capsys.readouterr().err
    assert err == expected and err.startswith("error: cannot connect to SQL registry")
    assert "s3cr3t-pw" not in err and len(attempts) == 1


def test_only_a_listing_reads_directly_until_its_backend_uses_its_engine(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "exp"
    _fill(root, uri, 3)
    calls = _counting(monkeypatch)
    reg = Registry(root, uri)
    assert len(list(reg.iter_summaries())) == 4
    assert calls == {"direct": 0, "engine": 1}, "only when asked"
    reg.close()
    reg = Registry(root, uri)
    reg.backend.read_directly = True  # type: ignore[attr-defined]
    assert len(list(reg.iter_summaries())) == 4
    assert calls == {"direct": 1, "engine": 1}
    reg.allocate()
    assert len(list(reg.iter_summaries())) == 5
    assert calls == {"direct": 1, "engine": 2}
    reg.close()
    fresh = Registry(root, uri)
    fresh.backend.read_directly = True  # type: ignore[attr-defined]
    fresh.close()
    with pytest.raises(BackendError, match="was closed"):
        fresh.backend.get_meta()
    with pytest.raises(BackendError, match="was closed"):
        list(fresh.iter_summaries())


def test_a_driver_that_breaks_after_the_uri_was_taken_gets_the_usual_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg")
    (tmp_path / "exp").mkdir()
    uri = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    backend = SQLBackend(uri, tmp_path / "exp", "exp")
    backend.read_directly = True
    assert backend._direct is not None
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it could not be imported now
    with pytest.raises(BackendError, match=r"needs the Python package 'psycopg'"):
        backend.get_meta()
    backend.close()


def test_commands_that_read_more_than_summaries_open_no_direct_connection(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "exp"
    _fill(root, uri, 3)
    opened: list[str] = []
    real = direct.connect

    def connect(where: direct.Target, describe: str) -> Any:
        opened.append(where.dialect)
        return real(where, describe)

    monkeypatch.setattr(direct, "connect", connect)
    for argv in (["list", "--json"], ["list", "--columns", "i"], ["list", "--tag", "nope"],
                 ["show", "@1"], ["best"], ["status", "@1"]):
        command, *rest = argv
        target = f"{root}{rest.pop(0)}" if rest and rest[0].startswith("@") else str(root)
        main([command, target, "--backend", uri, *rest])
        capsys.readouterr()
    assert opened == []
    assert _list(root, uri, capsys=capsys).count("\n") == 5
    assert len(opened) == 2  # the metadata (tags), then the summaries
