"""Reads through the database driver alone, without SQLAlchemy: what ``versionkit list``
needs (the experiment's metadata for its tags, and the list summaries).

Importing SQLAlchemy and its dialect costs ~0.2 s of a process that lists; the
driver alone (``sqlite3``, psycopg) is enough to run three plain queries. This module
is an optimisation that says no whenever it is unsure, and the caller then does what it
did before, through SQLAlchemy (:class:`~versionkit.backends.sql.backend.SQLBackend`):

- :func:`target` takes only URIs whose connection it can make exactly as SQLAlchemy
  would (checked against SQLAlchemy's own parsing in the tests), else ``None``;
- :func:`connect` returns ``None`` when the tables are missing or at another layout
  version (SQLAlchemy then creates, upgrades or refuses them) or a SQLite file cannot be
  opened; it raises only when PostgreSQL refuses the connection, with the message the
  SQLAlchemy path gives for it, so an unreachable server is not waited for twice;
- a query that fails raises :class:`Unusable`, and the caller carries on through
  SQLAlchemy from where it was.

Each read opens its own connection (autocommit: every query reads committed data) and
closes it, so nothing is left open when a ``Registry`` is not closed, or across a fork.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote

from versionkit.backends.sql.names import (
    EXPERIMENT_META_TABLE,
    LOCK_TIMEOUT_S,
    META_TABLE,
    SCHEMA_VERSION,
    VERSIONS_TABLE,
    pg_connect_args,
)
from versionkit.errors import BackendError

__all__ = ["Target", "Unusable", "connect", "target"]

_POSTGRES = ("postgresql", "postgres", "postgresql+psycopg", "postgres+psycopg")
_SQLITE = ("sqlite", "sqlite+pysqlite")


class Unusable(Exception):
    """The direct read cannot go on; read through SQLAlchemy instead."""


class _Parts(NamedTuple):
    name: str
    username: str | None
    password: str | None
    host: str | None
    port: str | None
    database: str
    query: str


def _split(uri: str) -> _Parts | None:
    """``scheme://[user[:password]@][host][:port]/database[?query]``, or ``None`` for
    anything less plain (no database part, IPv6 brackets, two ``@``, a ``?`` before the
    path, control characters), which this module then leaves to SQLAlchemy. The tests
    check the split against SQLAlchemy's ``make_url`` on the URIs it accepts."""
    if any(ord(c) < 32 for c in uri):
        return None
    name, sep, rest = uri.partition("://")
    if not sep or not name or not all(c.isalnum() or c in "_+" for c in name):
        return None
    netloc, slash, path = rest.partition("/")
    if not slash or "?" in netloc or "[" in netloc or netloc.count("@") > 1:
        return None
    userinfo, at, hostport = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        username, colon, secret = userinfo.partition(":")
        password = secret if colon else None
    host, colon, port = hostport.partition(":")
    if ":" in port:
        return None
    database, _, query = path.partition("?")
    return _Parts(name, username, password, host or None, port if colon else None, database,
                  query)


class Target(NamedTuple):
    """Where a direct read connects."""

    dialect: str  # "sqlite" or "postgresql"
    #: SQLite: the database file; PostgreSQL: psycopg's connection keywords.
    connect: Any
    experiment: str | None  # the URI's ?experiment= override
    password: str | None  # to keep out of messages


def target(uri: str) -> Target | None:
    """Where ``uri`` connects, or ``None`` when this module does not take it (a URI
    SQLAlchemy reads in a way not repeated here, or one that would be refused)."""
    m = _split(uri)
    if m is None:
        return None
    backend, _, driver = m.name.partition("+")
    name = f"{backend.lower()}+{driver}" if driver else backend.lower()
    pairs = parse_qsl(m.query, keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs) or ("experiment" in query and not query["experiment"].strip()):
        return None  # a key given twice, or an empty experiment: SQLAlchemy's path says so
    experiment = query.pop("experiment", None)
    if any(not value for value in query.values()):
        return None  # SQLAlchemy drops blank values
    username, password, database = (
        None if v is None else unquote(v) for v in (m.username, m.password, m.database)
    )
    if name in _SQLITE:
        if query or not database or database == ":memory:" or database.startswith("file:"):
            return None
        if m.host or m.port or username is not None:
            return None
        path = Path(database).expanduser()
        if path.is_dir() or not path.parent.is_dir():
            return None
        return Target("sqlite", path, experiment, None)
    if name not in _POSTGRES or not database or "host" in query or "port" in query:
        return None
    port = m.port
    if port is not None and not (port.isdigit() and port.isascii()):
        return None
    if find_spec("psycopg") is None:
        return None
    # As SQLAlchemy's psycopg dialect builds them: the URL's parts that are set, its
    # query, then what every versionkit connection adds.
    args: dict[str, Any] = {}
    for key, value in (("host", m.host), ("dbname", database), ("user", username),
                       ("password", password), ("port", int(port) if port else None)):
        if value:
            args[key] = value
    args.update(query)
    args.update(pg_connect_args(query))
    return Target("postgresql", args, experiment, password or None)


def _message(err: BaseException, password: str | None) -> str:
    """The driver's words on one line, without the password (as SQLAlchemy's path)."""
    message = " ".join(str(err).split()) or type(err).__name__
    return message.replace(password, "***") if password else message


def summaries_query(experiment: str, after: int | None, newest_first: bool,
                    page: int) -> tuple[str, tuple[Any, ...]]:
    """The query of one keyset page of ``(number, summary, record)`` after number
    ``after`` (the record only where the summary is NULL); ``?`` marks parameters."""
    sql = (f"SELECT number, summary, CASE WHEN summary IS NULL THEN record END "
           f"FROM {VERSIONS_TABLE} WHERE experiment = ?")
    params: tuple[Any, ...] = (experiment,)
    if after is not None:
        sql += f" AND number {'<' if newest_first else '>'} ?"
        params += (after,)
    sql += f" ORDER BY number {'DESC' if newest_first else 'ASC'} LIMIT ?"
    return sql, (*params, page)


class Connection:
    """One open driver connection, at the layout version this code reads."""

    def __init__(self, dialect: str, raw: Any, errors: type[BaseException]) -> None:
        self.dialect = dialect
        self._raw = raw
        self._errors = errors
        self._mark = "?" if dialect == "sqlite" else "%s"

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Every row of ``sql`` (``?`` marks parameters); :class:`Unusable` on failure."""
        try:
            cursor = self._raw.cursor()
            try:
                cursor.execute(sql.replace("?", self._mark), params)
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except self._errors as err:
            raise Unusable(str(err)) from err

    def meta(self, experiment: str) -> str | None:
        """The experiment's metadata text (``None``: none yet)."""
        rows = self.rows(f"SELECT meta FROM {EXPERIMENT_META_TABLE} WHERE experiment = ?",
                         (experiment,))
        return rows[0][0] if rows else None

    def summaries(self, experiment: str, after: int | None, newest_first: bool,
                  page: int) -> list[tuple[int, str | None, str | None]]:
        """One keyset page of :func:`summaries_query`."""
        return self.rows(*summaries_query(experiment, after, newest_first, page))


def _open_sqlite(path: Path) -> Connection | None:
    import sqlite3

    # mode=rw: an existing file only (SQLAlchemy's path creates a new one and its
    # tables); a write-protected file opens read-only.
    uri = f"file:{quote(str(path.absolute()))}?mode=rw"
    try:
        raw = sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error:
        return None
    return Connection("sqlite", raw, sqlite3.Error)


def _open_postgres(args: dict[str, Any], where: str, password: str | None) -> Connection:
    try:
        import psycopg
    except ImportError:  # installed but broken: SQLAlchemy's path says so
        raise Unusable("psycopg") from None

    try:
        raw = psycopg.connect(autocommit=True, **args)
    except psycopg.Error as err:
        state = err.sqlstate
        if isinstance(err, psycopg.OperationalError) and (
            state is None or state[:2] in ("08", "28", "3D")
        ):
            # What SQLAlchemy's path says (errors.translate) when it cannot connect;
            # trying the server a second time there would only say it later.
            raise BackendError(f"cannot connect to {where}: {_message(err, password)}") from err
        raise Unusable("connect") from err
    return Connection("postgresql", raw, psycopg.Error)


@contextmanager
def connect(where: Target, describe: str) -> Iterator[Connection | None]:
    """A connection at this code's layout version, closed afterwards; ``None`` when
    SQLAlchemy's path must take over (no tables yet, another layout, SQLite's file
    missing or unreadable)."""
    conn = (_open_sqlite(where.connect) if where.dialect == "sqlite"
            else _open_postgres(where.connect, describe, where.password))
    if conn is None:
        yield None
        return
    pid = os.getpid()
    try:
        try:
            rows = conn.rows(f"SELECT value FROM {META_TABLE} WHERE key = ?", ("schema_version",))
        except Unusable:
            rows = []
        yield conn if rows == [(str(SCHEMA_VERSION),)] else None
    finally:
        if os.getpid() == pid:
            conn._raw.close()
