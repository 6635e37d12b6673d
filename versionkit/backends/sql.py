"""The SQL backend: one registry in SQLite (one machine) or PostgreSQL (many machines).

URIs::

    sqlite:///relative/registry.db          relative to the working directory
    sqlite:////abs/path/registry.db         absolute path (four slashes)
    postgresql://user[:password]@host[:port]/dbname
    postgres://...                          the same; both use psycopg 3

Any URI may end in ``?experiment=NAME``: the registry then files this experiment's
versions under ``NAME`` instead of the experiment folder's resolved path, so machines
that mount the shared filesystem at different paths still share one experiment.
Other query parameters go to the driver (``?options=-csearch_path%3Dmyschema`` puts
the tables in schema ``myschema``; ``?connect_timeout=5`` shortens the connect wait).

Tables (created, or upgraded, on first use; DDL is transactional on both databases)::

    versionkit_meta         key -> value; "schema_version" is the table layout's version
    versionkit_experiments  experiment -> next_number (the counter; never lowered)
    versionkit_versions     (experiment, number) -> record (JSON text), unique key

Every write is one transaction that first locks what it changes: the row (``SELECT ...
FOR UPDATE``, or the upsert's own row lock) on PostgreSQL, the database's one write lock
(``BEGIN IMMEDIATE``, waited for with a busy timeout) on SQLite. Allocation bumps the
experiment's counter to ``max(counter, floor) + 1`` and inserts the record on the unique
key in that one transaction (on PostgreSQL, one autocommitted statement), so a number is
handed out once, even when rows are deleted later or a client dies mid-way. A conflict
(a row already at that number, a serialization failure) is retried a few times, then
reported. The ``version`` inside a stored record always comes from the number column.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, NoReturn, TypeVar
from urllib.parse import parse_qsl

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from versionkit.backends.base import Backend, Record, redact_uri
from versionkit.errors import (
    BackendError,
    CorruptStateError,
    LockTimeout,
    VersionkitError,
    VersionNotFoundError,
)

__all__ = ["SCHEMA_VERSION", "TABLE_PREFIX", "SQLBackend", "SQLURIError"]

#: Version of the table layout this code writes; a database at a higher one is refused.
SCHEMA_VERSION = 1
#: Every table this backend owns starts with this.
TABLE_PREFIX = "versionkit_"

#: Upgrades of the table layout: ``_MIGRATIONS[k](conn)`` turns version k into k + 1.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

_ATTEMPTS = 5  # tries of one write before giving up on conflicts
_LOCK_TIMEOUT_S = 60.0  # default wait for SQLite's write lock or a PostgreSQL row lock
_CONNECT_TIMEOUT_S = 10  # PostgreSQL: how long a connection attempt may take
_MAX_NUMBER = 2**62  # far below BIGINT's limit, so number + 1 never overflows
_ADVISORY_KEY = 0x766B5F73636865  # pg_advisory_xact_lock key serialising table setup
# SQLSTATEs worth retrying: serialization_failure, deadlock_detected, unique_violation.
_RETRY_SQLSTATES = frozenset({"40001", "40P01", "23505"})

_metadata = sa.MetaData()
_meta = sa.Table(
    f"{TABLE_PREFIX}meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
_experiments = sa.Table(
    f"{TABLE_PREFIX}experiments",
    _metadata,
    sa.Column("experiment", sa.Text, primary_key=True),
    sa.Column("next_number", sa.BigInteger, nullable=False),
)
_versions = sa.Table(
    f"{TABLE_PREFIX}versions",
    _metadata,
    sa.Column("experiment", sa.Text, primary_key=True),
    sa.Column("number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("record", sa.Text, nullable=False),
)

# Engines are cached per URL per process: a backend per Registry object is cheap, and
# a forked child must never talk over its parent's sockets (see ``_engine_for``).
_engines: dict[str, tuple[Engine, int]] = {}
_ready: set[str] = set()  # engine keys whose table layout this process has checked
# Pools inherited through fork(), kept referenced so their connections are never closed
# (nor garbage-collected) in the child: that would end the parent's PostgreSQL sessions
# or let SQLite tidy up a WAL file that the parent is still using.
_inherited_pools: list[Any] = []
_engines_lock = threading.Lock()

_T = TypeVar("_T")


class SQLURIError(BackendError, ValueError):
    """A registry URI that cannot name a SQL registry (a usage mistake: CLIs exit 2)."""

    exit_code = 2


# -- URIs -------------------------------------------------------------------------------


def _parse_uri(uri: str) -> tuple[URL, str | None]:
    """Turn a registry URI into the SQLAlchemy URL to connect to and the experiment override."""
    shown = redact_uri(uri)
    expected = "expected sqlite:///path/registry.db or postgresql://user@host:port/dbname"
    try:
        url = make_url(uri)
    except (exc.ArgumentError, ValueError) as err:
        raise SQLURIError(f"invalid registry URI {shown!r}: {expected}") from err
    backend, _, driver = url.drivername.partition("+")
    backend = backend.lower()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in ("sqlite", "postgresql"):
        raise SQLURIError(f"invalid registry URI {shown!r}: {expected}")
    driver = driver or ("pysqlite" if backend == "sqlite" else "psycopg")
    url = url.set(drivername=f"{backend}+{driver}")

    experiment = url.query.get("experiment")
    raw_query = parse_qsl(uri.partition("?")[2], keep_blank_values=True)
    if experiment is None and any(key == "experiment" for key, _ in raw_query):
        experiment = ""  # SQLAlchemy drops blank values; an empty name is still a mistake
    if isinstance(experiment, tuple):
        raise SQLURIError(f"registry URI {shown!r} gives ?experiment= more than once")
    if experiment is not None and not experiment.strip():
        raise SQLURIError(f"registry URI {shown!r} has an empty ?experiment= name")
    url = url.difference_update_query(["experiment"])

    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise SQLURIError(
                f"registry URI {shown!r} names no SQLite file (an in-memory database is not "
                f"shared between processes); use sqlite:///path/registry.db, or memory:// "
                f"for a registry that lives only in this process"
            )
        path = Path(database).expanduser()
        if path.is_dir():
            raise SQLURIError(
                f"SQLite registry {shown!r}: {path} is a folder; name a file such as "
                f"{path / 'registry.db'}"
            )
        if not path.parent.is_dir():
            folder = path.parent.absolute()
            raise SQLURIError(
                f"SQLite registry {shown!r}: folder {folder} does not exist; create it "
                f"first (mkdir -p {folder})"
            )
        url = url.set(database=str(path))
    elif not url.database:
        raise SQLURIError(f"registry URI {shown!r} names no database: {expected}")
    try:
        url.get_dialect().import_dbapi()
    except exc.NoSuchModuleError:
        raise SQLURIError(
            f"registry URI {shown!r}: SQLAlchemy knows no driver {url.drivername!r} "
            f"(use {backend}:// for the default driver)"
        ) from None
    except ImportError as err:
        raise BackendError(
            f"registry {shown!r} needs the Python package {err.name or driver!r}, which is "
            f"not installed; install it with: pip install 'versionkit-fractalgen[sql]'"
        ) from err
    return url, experiment


# -- engines ----------------------------------------------------------------------------


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
    query = dict(url.query)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    if "application_name" not in query:
        connect_args["application_name"] = "versionkit"
    # A stuck row lock (a client hung mid-transaction) becomes LockTimeout, not a hang.
    options = query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    if "lock_timeout" not in options:
        lock_ms = int(_LOCK_TIMEOUT_S * 1000)
        connect_args["options"] = f"{options} -c lock_timeout={lock_ms}".strip()
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=2, max_overflow=8, connect_args=connect_args
    )


def _engine_for(url: URL) -> tuple[str, Engine]:
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


def _dispose_engine(key: str) -> None:
    with _engines_lock:
        cached = _engines.pop(key, None)
    if cached is None:
        return
    engine, pid = cached
    if pid != os.getpid():
        _inherited_pools.append(engine.pool)
    engine.dispose(close=pid == os.getpid())


# -- errors -----------------------------------------------------------------------------


def _sqlstate(err: BaseException) -> str | None:
    orig = getattr(err, "orig", None)
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _driver_message(err: exc.SQLAlchemyError, password: str | None) -> str:
    """The driver's own words on one line, without SQLAlchemy's SQL dump or a password."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else str(err)
    message = " ".join(text.split()) or type(err).__name__
    if password:
        message = message.replace(password, "***")
    return message


def _check_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < _MAX_NUMBER:
        raise VersionNotFoundError(
            f"version {number!r} is not a valid version number (expected an integer >= 0)"
        )


def _check_floor(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_NUMBER:
        raise BackendError(f"{what} must be an integer in [0, 2**62), got {value!r}")


def _encode(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(dict(value), separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise BackendError(f"{what} is not JSON-able: {err}") from err


class _Statements(NamedTuple):
    lock_counter: sa.Select[Any]
    set_counter: sa.Update
    insert_version: sa.Insert


@functools.cache
def _statements() -> _Statements:
    """The hot statements, built once with bind parameters (saves client CPU per call)."""
    experiment = sa.bindparam("p_experiment", type_=sa.Text)
    return _Statements(
        lock_counter=sa.select(_experiments.c.next_number)
        .where(_experiments.c.experiment == experiment)
        .with_for_update(),
        set_counter=sa.update(_experiments)
        .where(_experiments.c.experiment == experiment)
        .values(next_number=sa.bindparam("p_value", type_=sa.BigInteger)),
        insert_version=sa.insert(_versions).values(
            experiment=experiment,
            number=sa.bindparam("p_number", type_=sa.BigInteger),
            record=sa.bindparam("p_record", type_=sa.Text),
        ),
    )


@functools.cache
def _pg_allocate_statement() -> sa.Insert:
    """``INSERT`` the record at the number an upsert takes from the counter (built once)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    experiment = sa.bindparam("p_experiment", type_=sa.Text)
    floor = sa.bindparam("p_floor", type_=sa.BigInteger)
    counter = (
        pg_insert(_experiments)
        .values(experiment=experiment, next_number=floor + 1)
        .on_conflict_do_update(
            index_elements=[_experiments.c.experiment],
            set_={"next_number": sa.func.greatest(_experiments.c.next_number, floor) + 1},
        )
        .returning((_experiments.c.next_number - 1).label("number"))
        .cte("counter")
    )
    record = sa.bindparam("p_record", type_=sa.Text)
    return (
        sa.insert(_versions)
        .from_select(
            ["experiment", "number", "record"], sa.select(experiment, counter.c.number, record)
        )
        .returning(_versions.c.number)
    )


# -- the backend ------------------------------------------------------------------------


class SQLBackend(Backend):
    """Version records in SQLite or PostgreSQL, through SQLAlchemy 2 Core.

    Args:
        uri: ``sqlite:///path/registry.db`` or ``postgresql://user@host:port/dbname``,
            optionally ending in ``?experiment=NAME`` (overrides ``experiment``).
        root: the experiment folder (checkpoints and logs stay there, not in the database).
        experiment: the key of this experiment in the database (``Registry`` passes the
            experiment folder's resolved path).

    Raises:
        SQLURIError: the URI is malformed, names no database, or a SQLite file whose
            folder does not exist. Connection problems (``BackendError``) surface on
            first use.
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite", "postgresql", "postgres")

    def __init__(
        self, uri: str, root: Path, experiment: str, *, lock_timeout: float = _LOCK_TIMEOUT_S
    ) -> None:
        url, override = _parse_uri(uri)
        super().__init__(uri, root, override if override is not None else experiment)
        self._url = url
        self._dialect = url.get_backend_name()
        self._closed = False
        #: Seconds a write waits for another writer's lock before ``LockTimeout``
        #: (``Registry(lock_timeout=...)`` sets it); negative: wait forever.
        self.lock_timeout = lock_timeout

    def describe(self) -> str:
        return f"SQL registry {redact_uri(self.uri)}"

    # -- connection plumbing ---------------------------------------------------------

    def _engine(self) -> Engine:
        if self._closed:
            raise BackendError(f"{self.describe()} was closed; open a new Registry to use it")
        key, engine = _engine_for(self._url)
        if key not in _ready:
            self._setup(engine)
            _ready.add(key)
        return engine

    @contextmanager
    def _transaction(self, engine: Engine, *, write: bool) -> Iterator[Connection]:
        # Negative or huge (inf): wait as long as the database allows.
        wait_ms = int(self.lock_timeout * 1000) if 0 <= self.lock_timeout < 1e6 else None
        with engine.connect() as conn:
            if write:
                conn.execution_options(versionkit_write=True)
                if self._dialect == "sqlite" and self.lock_timeout != _LOCK_TIMEOUT_S:
                    # 2**31 - 1: SQLite's largest busy timeout, as good as forever here.
                    conn.execution_options(
                        versionkit_busy_ms=2**31 - 1 if wait_ms is None else wait_ms
                    )
            with conn.begin():
                if write and self._dialect == "postgresql" and self.lock_timeout != _LOCK_TIMEOUT_S:
                    # 0 means "no limit" to PostgreSQL, so a zero wait becomes 1 ms.
                    setting = "0" if wait_ms is None else f"{max(wait_ms, 1)}ms"
                    conn.execute(sa.select(sa.func.set_config("lock_timeout", setting, True)))
                yield conn

    def _fail(self, err: exc.SQLAlchemyError, action: str) -> NoReturn:
        """Raise the one-line ``VersionkitError`` that ``err`` means for the user."""
        where = self.describe()
        message = _driver_message(err, self._url.password)
        lowered = message.lower()
        state = _sqlstate(err)
        if self._dialect == "sqlite":
            if "locked" in lowered or "busy" in lowered:
                raise LockTimeout(
                    f"{where}: the database stayed locked by another writer for more than "
                    f"{self.lock_timeout:g} s while trying to {action}"
                ) from err
            if "not a database" in lowered or "malformed" in lowered:
                raise CorruptStateError(
                    f"{where}: the file is not a readable SQLite database ({message}); "
                    f"nothing was changed"
                ) from err
            if "unable to open" in lowered:
                raise BackendError(
                    f"cannot open {where}: {message} (check that the file and its folder "
                    f"exist and are readable and writable)"
                ) from err
        else:
            if state == "55P03":
                raise LockTimeout(
                    f"{where}: a row stayed locked by another client for more than "
                    f"{self.lock_timeout:g} s while trying to {action}"
                ) from err
            connecting = state is None or state[:2] in ("08", "28", "3D")
            if connecting and isinstance(err, (exc.OperationalError, exc.InterfaceError)):
                raise BackendError(f"cannot connect to {where}: {message}") from err
        raise BackendError(f"{where}: could not {action}: {message}") from err

    def _run(self, action: str, body: Callable[[Engine], _T], *, retry: bool = False) -> _T:
        """Run ``body``, retrying database conflicts when ``retry``; map errors to ours."""
        last: exc.SQLAlchemyError | None = None
        for attempt in range(_ATTEMPTS if retry else 1):
            try:
                return body(self._engine())
            except VersionkitError:
                raise
            except exc.SQLAlchemyError as err:
                conflict = isinstance(err, exc.IntegrityError) or _sqlstate(err) in _RETRY_SQLSTATES
                if not (retry and conflict):
                    self._fail(err, action)
                last = err
                time.sleep(random.uniform(0.0, 0.01 * 2**attempt))
        assert last is not None
        raise BackendError(
            f"{self.describe()}: could not {action} after {_ATTEMPTS} attempts, each one "
            f"conflicting with another writer (last: {_driver_message(last, self._url.password)})"
        ) from last

    # -- table layout ----------------------------------------------------------------

    def _read_schema_version(self, conn: Connection) -> int | None:
        if not sa.inspect(conn).has_table(_meta.name):
            return None
        value = conn.execute(
            sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
        ).scalar_one_or_none()
        if value is None:
            return None
        try:
            version = int(value)
        except ValueError:
            raise CorruptStateError(
                f"{self.describe()}: table {_meta.name} holds schema_version {value!r}, "
                f"not an integer; nothing was changed"
            ) from None
        if version > SCHEMA_VERSION:
            from versionkit import __version__

            raise BackendError(
                f"{self.describe()} was set up by a newer versionkit (table schema version "
                f"{version}; this versionkit {__version__} knows up to {SCHEMA_VERSION}); "
                f"upgrade versionkit to use this registry"
            )
        return version

    def _setup(self, engine: Engine) -> None:
        """Create or upgrade the tables once per process; safe when many processes race."""
        try:
            with self._transaction(engine, write=False) as conn:
                if self._read_schema_version(conn) == SCHEMA_VERSION:
                    return
            with self._transaction(engine, write=True) as conn:
                if self._dialect == "postgresql":
                    # CREATE TABLE IF NOT EXISTS still races in PostgreSQL's catalog;
                    # a transaction-scoped advisory lock serialises the setup instead.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_KEY)))
                version = self._read_schema_version(conn)
                if version is None:
                    _metadata.create_all(conn, checkfirst=True)
                    conn.execute(
                        sa.insert(_meta).values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
                    return
                while version < SCHEMA_VERSION:
                    migrate = _MIGRATIONS.get(version)
                    if migrate is None:
                        raise CorruptStateError(
                            f"{self.describe()}: table {_meta.name} says schema version "
                            f"{version}, which no versionkit ever wrote; nothing was changed"
                        )
                    migrate(conn)
                    version += 1
                conn.execute(
                    sa.update(_meta)
                    .where(_meta.c.key == "schema_version")
                    .values(value=str(version))
                )
        except exc.SQLAlchemyError as err:
            self._fail(err, "set up the registry tables")

    # -- helpers inside a transaction ------------------------------------------------

    def _lock_counter(self, conn: Connection) -> int:
        """Lock this experiment's counter row (creating it at 0) and return its value."""
        select, params = _statements().lock_counter, {"p_experiment": self.experiment}
        value = conn.execute(select, params).scalar_one_or_none()
        if value is None:
            # Dialect modules imported here: the other one costs 20-55 ms to import.
            row = {"experiment": self.experiment, "next_number": 0}
            if self._dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                conn.execute(pg_insert(_experiments).values(row).on_conflict_do_nothing())
            else:
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                conn.execute(sqlite_insert(_experiments).values(row).on_conflict_do_nothing())
            value = conn.execute(select, params).scalar_one()
        return int(value)

    def _set_counter(self, conn: Connection, value: int) -> None:
        conn.execute(_statements().set_counter, {"p_experiment": self.experiment, "p_value": value})

    def _decode(self, number: int, text: str) -> Record:
        try:
            record = json.loads(text)
        except ValueError as err:
            raise CorruptStateError(
                f"{self.describe()}: the record of version {number} is not valid JSON "
                f"({err}); nothing was changed"
            ) from err
        if not isinstance(record, dict):
            raise CorruptStateError(
                f"{self.describe()}: the record of version {number} is a JSON "
                f"{type(record).__name__}, not an object; nothing was changed"
            )
        record["version"] = number
        return record

    def _not_found(self, number: int) -> VersionNotFoundError:
        return VersionNotFoundError(
            f"version {number} does not exist in {self.describe()} (experiment {self.experiment!r})"
        )

    # -- the primitives --------------------------------------------------------------

    def allocate(self, floor: int, record: Mapping[str, Any]) -> int:
        _check_floor(floor, "allocate's floor")
        payload = dict(record)
        payload.pop("version", None)  # the number column is the truth; reads add it back
        text = _encode(payload, "record")
        skip_to = 0  # set when a row already sits where the counter points

        def body(engine: Engine) -> int:
            nonlocal skip_to
            try:
                if self._dialect == "postgresql" and self.lock_timeout == _LOCK_TIMEOUT_S:
                    return self._allocate_in_one_statement(engine, max(floor, skip_to), text)
                with self._transaction(engine, write=True) as conn:
                    number = max(self._lock_counter(conn), floor, skip_to)
                    conn.execute(
                        _statements().insert_version,
                        {"p_experiment": self.experiment, "p_number": number, "p_record": text},
                    )
                    self._set_counter(conn, number + 1)
                    return number
            except exc.IntegrityError:
                # Only rows written behind the counter's back (by hand, by a restore)
                # get here; step over them rather than fail forever.
                with self._transaction(engine, write=False) as conn:
                    top = conn.execute(
                        sa.select(sa.func.max(_versions.c.number)).where(
                            _versions.c.experiment == self.experiment
                        )
                    ).scalar_one_or_none()
                skip_to = int(top) + 1 if top is not None else 0
                raise

        return self._run("allocate a version", body, retry=True)

    def _allocate_in_one_statement(self, engine: Engine, floor: int, text: str) -> int:
        """PostgreSQL: bump the counter and insert the record in one autocommitted statement.

        The counter row stays locked only while the server runs the statement and
        commits, never across a client round trip: with 16 writers queueing on that
        one row, this is what sets the throughput.
        """
        params = {"p_experiment": self.experiment, "p_floor": floor, "p_record": text}
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            return int(conn.execute(_pg_allocate_statement(), params).scalar_one())

    def get(self, number: int) -> Record | None:
        _check_number(number)

        def body(engine: Engine) -> Record | None:
            with self._transaction(engine, write=False) as conn:
                text = conn.execute(
                    sa.select(_versions.c.record).where(
                        _versions.c.experiment == self.experiment,
                        _versions.c.number == number,
                    )
                ).scalar_one_or_none()
            return None if text is None else self._decode(number, text)

        return self._run(f"read version {number}", body)

    def list(self) -> list[Record]:
        def body(engine: Engine) -> list[Record]:
            with self._transaction(engine, write=False) as conn:
                rows = conn.execute(
                    sa.select(_versions.c.number, _versions.c.record)
                    .where(_versions.c.experiment == self.experiment)
                    .order_by(_versions.c.number)
                ).all()
            return [self._decode(int(number), text) for number, text in rows]

        return self._run("list versions", body)

    def update(self, number: int, patch: Mapping[str, Any]) -> None:
        patch = dict(patch)
        _encode(patch, f"update of version {number}")
        self.modify(number, lambda _record: patch)

    def modify(self, number: int, change: Callable[[Record], Mapping[str, Any]]) -> None:
        """Read-modify-write one record under its row lock (one transaction)."""
        _check_number(number)

        def body(engine: Engine) -> None:
            with self._transaction(engine, write=True) as conn:
                text = conn.execute(
                    sa.select(_versions.c.record)
                    .where(
                        _versions.c.experiment == self.experiment,
                        _versions.c.number == number,
                    )
                    .with_for_update()
                ).scalar_one_or_none()
                if text is None:
                    raise self._not_found(number)
                record = self._decode(number, text)
                patch = change(self._decode(number, text))
                if not patch:
                    return
                record.update(patch)
                record["version"] = number
                conn.execute(
                    sa.update(_versions)
                    .where(
                        _versions.c.experiment == self.experiment,
                        _versions.c.number == number,
                    )
                    .values(record=_encode(record, f"update of version {number}"))
                )

        self._run(f"update version {number}", body, retry=True)

    def append(self, number: int, key: str, item: Any) -> None:
        _encode({key: item}, f"item appended to version {number}")

        def change(record: Record) -> dict[str, Any]:
            items = record.get(key)
            return {key: [*(items if isinstance(items, list) else []), item]}

        self.modify(number, change)

    def next_number(self) -> int:
        def body(engine: Engine) -> int:
            with self._transaction(engine, write=False) as conn:
                value = conn.execute(
                    sa.select(_experiments.c.next_number).where(
                        _experiments.c.experiment == self.experiment
                    )
                ).scalar_one_or_none()
            return 0 if value is None else int(value)

        return self._run("read the next version number", body)

    def raise_next_number(self, at_least: int) -> int:
        _check_floor(at_least, "raise_next_number's argument")

        def body(engine: Engine) -> int:
            with self._transaction(engine, write=True) as conn:
                current = self._lock_counter(conn)
                if at_least > current:
                    self._set_counter(conn, at_least)
                return max(current, at_least)

        return self._run("raise the next version number", body, retry=True)

    def repair(self, floor: int) -> dict[str, Any]:
        """Replace unreadable records by stubs and lift the counter above every row.

        An unreadable record becomes ``{"status": "unknown", ...}`` with the original
        text kept under ``"unreadable_record"``; the counter becomes at least one above
        the highest row and at least ``floor``. Never lowers the next number.
        """
        _check_floor(floor, "repair's floor")

        def body(engine: Engine) -> dict[str, Any]:
            actions: list[str] = []
            with self._transaction(engine, write=True) as conn:
                previous = self._lock_counter(conn)
                rows = conn.execute(
                    sa.select(_versions.c.number, _versions.c.record)
                    .where(_versions.c.experiment == self.experiment)
                    .order_by(_versions.c.number)
                    .with_for_update()
                ).all()
                for number, text in rows:
                    try:
                        self._decode(int(number), text)
                        continue
                    except CorruptStateError:
                        pass
                    stub = {
                        "status": "unknown",
                        "error": "record was unreadable; the original text is kept under "
                        "'unreadable_record'",
                        "unreadable_record": text,
                        "metrics": {},
                        "checkpoints": [],
                    }
                    conn.execute(
                        sa.update(_versions)
                        .where(
                            _versions.c.experiment == self.experiment,
                            _versions.c.number == number,
                        )
                        .values(record=_encode(stub, "repair stub"))
                    )
                    actions.append(f"replaced unreadable record of version {number} by a stub")
                highest = max((int(number) for number, _ in rows), default=-1)
                target = max(previous, highest + 1, floor)
                if target != previous:
                    self._set_counter(conn, target)
                    actions.append(f"next number set to {target} (was {previous})")
            return {"next_number": target, "previous_next_number": previous, "actions": actions}

        return self._run("repair the registry", body, retry=True)

    def close(self) -> None:
        """Dispose this URL's pooled connections in this process; later calls fail."""
        if not self._closed:
            self._closed = True
            _dispose_engine(self._url.render_as_string(hide_password=False))
