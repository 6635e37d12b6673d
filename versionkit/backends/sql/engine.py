"""One SQLAlchemy engine per database URL per process, and SQLite's connection setup.

Engines are cached per URL per process: a backend per ``Registry`` object is cheap,
and a forked child must never talk over its parent's sockets (see :func:`engine_for`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from versionkit.backends.sql.names import CONNECT_TIMEOUT_S, LOCK_TIMEOUT_S, pg_connect_args

__all__ = ["CONNECT_TIMEOUT_S", "LOCK_TIMEOUT_S", "dispose_engine", "engine_for", "ready"]

_LOCK_TIMEOUT_S = LOCK_TIMEOUT_S

_engines: dict[str, tuple[Engine, int]] = {}
#: Engine keys whose table layout this process has checked.
ready: set[str] = set()
# Pools inherited through fork(), kept referenced so their connections are never closed
# (nor garbage-collected) in the child: that would end the parent's PostgreSQL sessions
# or let SQLite tidy up a WAL file that the parent is still using.
_inherited_pools: list[Any] = []
_engines_lock = threading.Lock()


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _on_sqlite_begin): the sqlite3 module's own
    # implicit transactions would start deferred ones, which fail with "database is
    # locked" instead of waiting when they later need to write.
    if sys.version_info >= (3, 12):
        # Legacy control, where isolation_level=None means "BEGIN is ours" but commit()
        # still commits (with autocommit=True it would silently do nothing).
        dbapi_connection.autocommit = sqlite3.LEGACY_TRANSACTION_CONTROL
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(_LOCK_TIMEOUT_S * 1000)}")
        # WAL: readers (versionkit list, a dashboard) never block the writers. Best
        # effort: a read-only file or folder keeps its rollback journal and still works.
        with contextlib.suppress(sqlite3.OperationalError):
            cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: every commit is fsynced, so a number handed out survives power loss.
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    busy_ms = options.get("versionkit_busy_ms")
    if busy_ms is not None:
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_ms)}")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("versionkit_write") else "BEGIN")


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        # Pooled (QueuePool): reopening the file for every call costs ~5x per allocation,
        # as the last close of a WAL database checkpoints it.
        engine = sa.create_engine(url, connect_args={"timeout": _LOCK_TIMEOUT_S})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    connect_args = pg_connect_args(url.query, _LOCK_TIMEOUT_S)
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=2, max_overflow=8, connect_args=connect_args
    )


def engine_for(url: URL) -> tuple[str, Engine]:
    """The process-wide engine of ``url`` (made on first use, renewed after fork)."""
    key = url.render_as_string(hide_password=False)
    pid = os.getpid()
    with _engines_lock:
        cached = _engines.get(key)
        if cached is not None and cached[1] == pid:
            return key, cached[0]
        if cached is not None:
            # Forked child: set the parent's pooled connections aside untouched; this
            # process opens its own.
            _inherited_pools.append(cached[0].pool)
            cached[0].dispose(close=False)
            engine = cached[0]
        else:
            engine = _create_engine(url)
        _engines[key] = (engine, pid)
        return key, engine


def dispose_engine(key: str) -> None:
    with _engines_lock:
        cached = _engines.pop(key, None)
    if cached is None:
        return
    engine, pid = cached
    if pid != os.getpid():
        _inherited_pools.append(engine.pool)
    engine.dispose(close=pid == os.getpid())
