"""The SQL backend: one registry in SQLite (one machine) or PostgreSQL (many machines).

Every write is one transaction that first locks what it changes: the row (``SELECT ...
FOR UPDATE``, or the upsert's own row lock) on PostgreSQL, the database's one write lock
(``BEGIN IMMEDIATE``, waited for with a busy timeout) on SQLite. Allocation bumps the
experiment's counter to ``max(counter, floor) + 1`` and inserts the record on the unique
key in that one transaction (on PostgreSQL, one autocommitted statement), so a number is
handed out once, even when rows are deleted later or a client dies mid-way. A conflict
(a row already at that number, a serialization failure) is retried a few times, then
reported. The ``version`` inside a stored record always comes from the number column.
URIs: :mod:`versionkit.backends.sql.uri`; tables: :mod:`versionkit.backends.sql.schema`.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from versionkit._faults import pause_point
from versionkit.backends.base import MAX_NUMBER, Backend, Change, Record, encode_json, redact_uri
from versionkit.backends.sql import direct
from versionkit.backends.sql.names import LOCK_TIMEOUT_S
from versionkit.errors import BackendError, CorruptStateError, VersionkitError, VersionNotFoundError

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy import exc
    from sqlalchemy.engine import URL, Connection, Engine

    from versionkit.registry.summary import Fields, ListItem

__all__ = ["SQLBackend"]

_ATTEMPTS = 5  # tries of one write before giving up on conflicts
_ADVISORY_KEY = 0x766B5F73636865  # pg_advisory_xact_lock key serialising table setup
# Rows per query when streaming records or best candidates: small first (a caller that
# wants the latest 20, or the first existing best file, reads little), then doubling.
_FIRST_PAGE, _PAGE = 32, 1000
_T = TypeVar("_T")


def _check_floor(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_NUMBER:
        raise BackendError(f"{what} must be an integer in [0, 2**62), got {value!r}")


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
    pages_summaries: ClassVar[bool] = True

    def __init__(
        self, uri: str, root: Path, experiment: str, *, lock_timeout: float = LOCK_TIMEOUT_S
    ) -> None:
        #: Where reads may go through the driver alone (see :mod:`.direct`), until this
        #: backend uses SQLAlchemy's engine; None: always through the engine.
        self._direct = direct.target(uri)
        self._sa_url: URL | None = None
        if self._direct is None:
            from versionkit.backends.sql.uri import parse_uri

            self._sa_url, override = parse_uri(uri)
            self._dialect = self._sa_url.get_backend_name()
        else:  # a URI parse_uri takes as it is: parsed by SQLAlchemy when first needed
            override, self._dialect = self._direct.experiment, self._direct.dialect
        super().__init__(uri, root, override if override is not None else experiment)
        self._closed = False
        #: Seconds a write waits for another writer's lock before ``LockTimeout``
        #: (``Registry(lock_timeout=...)`` sets it); negative: wait forever.
        self.lock_timeout = lock_timeout
        #: Whether the experiment metadata and the list summaries may be read through the
        #: driver alone (:mod:`.direct`), without importing SQLAlchemy, while this backend
        #: has not used its engine. For a process that reads nothing else (``versionkit
        #: list``, which sets it): another one would open a second connection for nothing.
        self.read_directly = False

    def describe(self) -> str:
        return f"SQL registry {redact_uri(self.uri)}"

    @property
    def _url(self) -> URL:
        """The SQLAlchemy URL of the database (parsed on first use)."""
        if self._sa_url is None:
            from versionkit.backends.sql.uri import parse_uri

            self._sa_url = parse_uri(self.uri)[0]
        return self._sa_url

    # -- connection plumbing ---------------------------------------------------------

    def _engine(self) -> Engine:
        from versionkit.backends.sql import engine as engines

        self._check_open()
        self._direct = None  # from now on this backend reads through the engine too
        key, engine = engines.engine_for(self._url)
        if key not in engines.ready:
            self._setup(engine)
            engines.ready.add(key)
        return engine

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.describe()} was closed; open a new Registry to use it")

    @contextmanager
    def _direct_reader(self) -> Iterator[direct.Connection | None]:
        """A connection through the driver alone, or ``None``: read through the engine.

        Only with :attr:`read_directly`, and only while this backend has not used its
        engine (one that writes keeps one pool of connections); a URI, database or
        failure that the direct way does not take switches it to the engine for good."""
        self._check_open()
        where = self._direct if self.read_directly else None
        if where is None:
            yield None
            return
        stack = ExitStack()
        try:
            conn = stack.enter_context(direct.connect(where, self.describe()))
        except direct.Unusable:
            conn = None
        if conn is None:
            self._direct = None
        with stack:
            yield conn

    @contextmanager
    def _transaction(self, engine: Engine, *, write: bool) -> Iterator[Connection]:
        import sqlalchemy as sa

        # Negative or huge (inf): wait as long as the database allows.
        default = self.lock_timeout == LOCK_TIMEOUT_S
        wait_ms = int(self.lock_timeout * 1000) if 0 <= self.lock_timeout < 1e6 else None
        with engine.connect() as conn:
            if write:
                conn.execution_options(versionkit_write=True)
                if self._dialect == "sqlite" and not default:
                    # 2**31 - 1: SQLite's largest busy timeout, as good as forever here.
                    conn.execution_options(
                        versionkit_busy_ms=2**31 - 1 if wait_ms is None else wait_ms
                    )
            with conn.begin():
                if write and self._dialect == "postgresql" and not default:
                    # 0 means "no limit" to PostgreSQL, so a zero wait becomes 1 ms.
                    setting = "0" if wait_ms is None else f"{max(wait_ms, 1)}ms"
                    conn.execute(sa.select(sa.func.set_config("lock_timeout", setting, True)))
                yield conn

    def _error(self, err: exc.SQLAlchemyError, action: str) -> VersionkitError:
        from versionkit.backends.sql.errors import translate

        return translate(
            err,
            dialect=self._dialect,
            where=self.describe(),
            action=action,
            lock_timeout=self.lock_timeout,
            password=self._url.password,
        )

    def _run(self, action: str, body: Callable[[Engine], _T], *, retry: bool = False) -> _T:
        """Run ``body``, retrying database conflicts when ``retry``; map errors to ours."""
        from sqlalchemy import exc

        from versionkit.backends.sql.errors import RETRY_SQLSTATES, driver_message, sqlstate

        last: exc.SQLAlchemyError | None = None
        for attempt in range(_ATTEMPTS if retry else 1):
            try:
                return body(self._engine())
            except VersionkitError:
                raise
            except exc.SQLAlchemyError as err:
                conflict = isinstance(err, exc.IntegrityError) or sqlstate(err) in RETRY_SQLSTATES
                if not (retry and conflict):
                    raise self._error(err, action) from err
                last = err
                time.sleep(random.uniform(0.0, 0.01 * 2**attempt))
        assert last is not None
        raise BackendError(
            f"{self.describe()}: could not {action} after {_ATTEMPTS} attempts, each one "
            f"conflicting with another writer (last: {driver_message(last, self._url.password)})"
        ) from last

    def _setup(self, engine: Engine) -> None:
        """Create or upgrade the tables once per process; safe when many processes race."""
        import sqlalchemy as sa
        from sqlalchemy import exc

        from versionkit.backends.sql import schema

        try:
            with self._transaction(engine, write=False) as conn:
                if schema.read_schema_version(conn, self.describe()) == schema.SCHEMA_VERSION:
                    return
            with self._transaction(engine, write=True) as conn:
                if self._dialect == "postgresql":
                    # CREATE TABLE IF NOT EXISTS still races in PostgreSQL's catalog;
                    # a transaction-scoped advisory lock serialises the setup instead.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_KEY)))
                schema.create_or_upgrade(conn, self.describe())
        except exc.SQLAlchemyError as err:
            raise self._error(err, "set up the registry tables") from err

    # -- helpers inside a transaction ------------------------------------------------

    def _insert_ignore(self, conn: Connection, table: sa.Table, row: Mapping[str, Any]) -> None:
        # Dialect modules imported here: the other one costs 20-55 ms to import.
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(table).values(dict(row)).on_conflict_do_nothing())
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(table).values(dict(row)).on_conflict_do_nothing())

    def _lock_counter(self, conn: Connection) -> int:
        """Lock this experiment's counter row (creating it at 0) and return its value."""
        from versionkit.backends.sql import schema, statements

        select, params = statements.hot().lock_counter, {"p_experiment": self.experiment}
        value = conn.execute(select, params).scalar_one_or_none()
        if value is None:
            row = {"experiment": self.experiment, "next_number": 0}
            self._insert_ignore(conn, schema.experiments, row)
            value = conn.execute(select, params).scalar_one()
        return int(value)

    def _set_counter(self, conn: Connection, value: int) -> None:
        from versionkit.backends.sql import statements

        conn.execute(
            statements.hot().set_counter, {"p_experiment": self.experiment, "p_value": value}
        )

    def _index_checkpoints(self, conn: Connection, number: int, items: Any, *, fresh: bool) -> None:
        """Make this version's ``versionkit_checkpoints`` rows match ``items``."""
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        c = schema.checkpoints.c
        if not fresh:
            conn.execute(
                sa.delete(schema.checkpoints).where(
                    c.experiment == self.experiment, c.number == number
                )
            )
        rows = schema.checkpoint_rows(self.experiment, number, items)
        if rows:
            conn.execute(sa.insert(schema.checkpoints), rows)

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

    def _where(self, number: int) -> tuple[Any, ...]:
        from versionkit.backends.sql import schema

        v = schema.versions.c
        return (v.experiment == self.experiment, v.number == number)

    # -- the primitives --------------------------------------------------------------

    def allocate(self, floor: int, record: Mapping[str, Any]) -> int:
        import sqlalchemy as sa
        from sqlalchemy import exc

        from versionkit.backends.sql import schema, statements

        _check_floor(floor, "allocate's floor")
        payload = dict(record)
        payload.pop("version", None)  # the number column is the truth; reads add it back
        text = encode_json(payload, "record")
        summary = schema.summary_text(0, text)  # of the record as stored; no number in it
        items = payload.get("checkpoints")
        skip_to = 0  # set when a row already sits where the counter points

        def body(engine: Engine) -> int:
            nonlocal skip_to
            default = self.lock_timeout == LOCK_TIMEOUT_S
            try:
                if self._dialect == "postgresql" and default and not items:
                    return self._allocate_in_one_statement(
                        engine, max(floor, skip_to), text, summary
                    )
                with self._transaction(engine, write=True) as conn:
                    number = max(self._lock_counter(conn), floor, skip_to)
                    conn.execute(
                        statements.hot().insert_version,
                        {
                            "p_experiment": self.experiment,
                            "p_number": number,
                            "p_record": text,
                            "p_summary": summary,
                        },
                    )
                    self._set_counter(conn, number + 1)
                    if items:
                        self._index_checkpoints(conn, number, items, fresh=True)
                    pause_point("allocate:in-transaction")
                    return number
            except exc.IntegrityError:
                # Only rows written behind the counter's back (by hand, by a restore)
                # get here; step over them rather than fail forever.
                with self._transaction(engine, write=False) as conn:
                    top = conn.execute(
                        sa.select(sa.func.max(schema.versions.c.number)).where(
                            schema.versions.c.experiment == self.experiment
                        )
                    ).scalar_one_or_none()
                skip_to = int(top) + 1 if top is not None else 0
                raise

        return self._run("allocate a version", body, retry=True)

    def _allocate_in_one_statement(
        self, engine: Engine, floor: int, text: str, summary: str | None
    ) -> int:
        """PostgreSQL: bump the counter and insert the record in one autocommitted statement.

        The counter row stays locked only while the server runs the statement and
        commits, never across a client round trip: with 16 writers queueing on that
        one row, this is what sets the throughput.
        """
        from versionkit.backends.sql import statements

        params = {
            "p_experiment": self.experiment,
            "p_floor": floor,
            "p_record": text,
            "p_summary": summary,
        }
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            return int(conn.execute(statements.pg_allocate(), params).scalar_one())

    def get(self, number: int) -> Record | None:
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        self.check_number(number)

        def body(engine: Engine) -> Record | None:
            with self._transaction(engine, write=False) as conn:
                text = conn.execute(
                    sa.select(schema.versions.c.record).where(*self._where(number))
                ).scalar_one_or_none()
            return None if text is None else self._decode(number, text)

        return self._run(f"read version {number}", body)

    def list(self) -> list[Record]:
        return list(self.iter_records())

    def iter_records(self, *, newest_first: bool = False) -> Iterator[Record]:
        """Every record in growing pages of rows (keyset pagination: each page is one
        index range scan), so memory stays bounded however long the history is."""
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        v = schema.versions.c
        after: int | None = None
        page = _FIRST_PAGE
        while True:

            def body(engine: Engine, after: int | None = after, page: int = page) -> list[Any]:
                query = sa.select(v.number, v.record).where(v.experiment == self.experiment)
                if after is not None:
                    query = query.where(v.number < after if newest_first else v.number > after)
                order = v.number.desc() if newest_first else v.number.asc()
                with self._transaction(engine, write=False) as conn:
                    return list(conn.execute(query.order_by(order).limit(page)).all())

            rows = self._run("list versions", body)
            for number, text in rows:
                yield self._decode(int(number), text)
            if len(rows) < page:
                return
            after = int(rows[-1][0])
            page = min(2 * page, _PAGE)

    def iter_summaries(self, *, newest_first: bool = False) -> Iterator[ListItem]:
        """Every version's list summary from the ``summary`` column (see
        :func:`versionkit.backends.sql.listing.iter_summary_fields`)."""
        from versionkit.registry.summary import item_of

        for n, got in self.iter_summary_fields(newest_first=newest_first):
            yield item_of(n, got)

    def iter_summary_fields(self, *, newest_first: bool = False) -> Iterator[tuple[int, Fields]]:
        """:meth:`iter_summaries` as the fields of each summary."""
        from versionkit.backends.sql.listing import iter_summary_fields

        return iter_summary_fields(self, newest_first=newest_first)

    def numbers(self) -> set[int]:
        from versionkit.backends.sql import schema

        def body(engine: Engine) -> set[int]:
            with self._transaction(engine, write=False) as conn:
                # The driver's cursor: SQLAlchemy's per-row work would be most of the cost.
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                mark = "?" if self._dialect == "sqlite" else "%s"
                cursor.execute(
                    f"SELECT number FROM {schema.versions.name} WHERE experiment = {mark}",
                    (self.experiment,),
                )
                return {int(n) for (n,) in cursor.fetchall()}

        return self._run("list version numbers", body)

    def modify(self, number: int, change: Change) -> Record:
        """Read-modify-write one record under its row lock (one transaction)."""
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        self.check_number(number)

        from versionkit.registry.summary import summary_of

        def body(engine: Engine) -> Record:
            with self._transaction(engine, write=True) as conn:
                text = conn.execute(
                    sa.select(schema.versions.c.record)
                    .where(*self._where(number))
                    .with_for_update()
                ).scalar_one_or_none()
                if text is None:
                    raise self._not_found(number)
                record = self._decode(number, text)
                new = self._merge(number, record, change)
                if new is None:
                    return record
                stored = dict(new)
                stored.pop("version", None)
                conn.execute(
                    sa.update(schema.versions)
                    .where(*self._where(number))
                    .values(
                        record=encode_json(stored, f"update of version {number}"),
                        summary=summary_of(number, new),
                    )
                )
                if new.get("checkpoints") != record.get("checkpoints"):
                    self._index_checkpoints(conn, number, new.get("checkpoints"), fresh=False)
                pause_point("modify:in-transaction")
                return new

        return self._run(f"update version {number}", body, retry=True)

    def next_number(self) -> int:
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        def body(engine: Engine) -> int:
            e = schema.experiments.c
            with self._transaction(engine, write=False) as conn:
                value = conn.execute(
                    sa.select(e.next_number).where(e.experiment == self.experiment)
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

    def _read_meta(self, conn: Connection, *, lock: bool) -> Record:
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        m = schema.experiment_meta.c
        query = sa.select(m.meta).where(m.experiment == self.experiment)
        text = conn.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        return self._meta_of(text)

    def _meta_of(self, text: str | None) -> Record:
        if text is None:
            return {}
        try:
            value = json.loads(text)
        except ValueError as err:
            raise CorruptStateError(
                f"{self.describe()}: the metadata of experiment {self.experiment!r} is not "
                f"valid JSON ({err}); nothing was changed"
            ) from err
        if not isinstance(value, dict):
            raise CorruptStateError(
                f"{self.describe()}: the metadata of experiment {self.experiment!r} is not a "
                f"JSON object; nothing was changed"
            )
        return value

    def get_meta(self) -> Record:
        with self._direct_reader() as reader:
            if reader is not None:
                try:
                    return self._meta_of(reader.meta(self.experiment))
                except direct.Unusable:
                    self._direct = None

        def body(engine: Engine) -> Record:
            with self._transaction(engine, write=False) as conn:
                return self._read_meta(conn, lock=False)

        return self._run("read the experiment metadata", body)

    def modify_meta(self, change: Change) -> Record:
        import sqlalchemy as sa

        from versionkit.backends.sql import schema

        def body(engine: Engine) -> Record:
            with self._transaction(engine, write=True) as conn:
                row = {"experiment": self.experiment, "meta": "{}"}
                self._insert_ignore(conn, schema.experiment_meta, row)
                meta = self._read_meta(conn, lock=True)
                new = self._merge_meta(meta, change)
                if new is None:
                    return meta
                m = schema.experiment_meta.c
                conn.execute(
                    sa.update(schema.experiment_meta)
                    .where(m.experiment == self.experiment)
                    .values(meta=encode_json(new, "experiment metadata"))
                )
                return new

        return self._run("update the experiment metadata", body, retry=True)

    def best_candidates(self, metric: str, mode: str) -> Iterator[tuple[int, Record]]:
        """Best first, straight from the checkpoint index (one index range scan per page)."""
        from versionkit.backends.sql import statements

        offset, page = 0, _FIRST_PAGE
        while True:

            def body(engine: Engine, offset: int = offset, page: int = page) -> list[Any]:
                query = (
                    statements.best_query(self.experiment, metric, mode).offset(offset).limit(page)
                )
                with self._transaction(engine, write=False) as conn:
                    return list(conn.execute(query).all())

            rows = self._run("find the best checkpoint", body)
            for number, path, value, step in rows:
                yield int(number), {"path": path, "step": int(step), "metrics": {metric: value}}
            if len(rows) < page:
                return
            offset += page
            page = min(2 * page, _PAGE)

    def repair(self, floor: int) -> dict[str, Any]:
        """Replace unreadable records by stubs, lift the counter, rebuild the index
        (see :func:`versionkit.backends.sql.repair.repair`); never lowers the counter."""
        from versionkit.backends.sql.repair import repair

        return repair(self, floor)

    def close(self) -> None:
        """Dispose this URL's pooled connections in this process; later calls fail."""
        if not self._closed:
            self._closed = True
            # A backend that never parsed its URL for SQLAlchemy never used an engine.
            engines = sys.modules.get("versionkit.backends.sql.engine")
            if engines is not None and self._sa_url is not None:
                engines.dispose_engine(self._sa_url.render_as_string(hide_password=False))
