"""The SQL backend's tables, their layout version, and the upgrades between versions.

Tables (created, or upgraded, on first use; DDL is transactional on both databases)::

    versionkit_meta             key -> value; "schema_version" is the layout's version
    versionkit_experiments      experiment -> next_number (the counter; never lowered)
    versionkit_versions         (experiment, number) -> record (JSON text), unique key,
                                and summary: the list row of the record (nullable)
    versionkit_experiment_meta  experiment -> meta (JSON text): tags and other indexes
    versionkit_checkpoints      (experiment, number, path, metric) -> value, step: the
                                recorded checkpoint metrics, indexed for ``best``

``versionkit_checkpoints`` is derived from the records' ``checkpoints`` lists, written in
the same transaction as the record it comes from; so is ``versions.summary``
(:mod:`versionkit.registry.summary`; NULL: the listing decodes the record instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from versionkit.backends.base import checkpoint_metric, checkpoint_step
from versionkit.backends.sql.names import SCHEMA_VERSION, TABLE_PREFIX
from versionkit.errors import BackendError, CorruptStateError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLE_PREFIX",
    "checkpoint_rows",
    "checkpoints",
    "create_or_upgrade",
    "experiment_meta",
    "experiments",
    "fill_summaries",
    "meta",
    "read_schema_version",
    "summary_text",
    "versions",
]


metadata = sa.MetaData()
meta = sa.Table(
    f"{TABLE_PREFIX}meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
experiments = sa.Table(
    f"{TABLE_PREFIX}experiments",
    metadata,
    sa.Column("experiment", sa.Text, primary_key=True),
    sa.Column("next_number", sa.BigInteger, nullable=False),
)
versions = sa.Table(
    f"{TABLE_PREFIX}versions",
    metadata,
    sa.Column("experiment", sa.Text, primary_key=True),
    sa.Column("number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=True),
)
experiment_meta = sa.Table(
    f"{TABLE_PREFIX}experiment_meta",
    metadata,
    sa.Column("experiment", sa.Text, primary_key=True),
    sa.Column("meta", sa.Text, nullable=False),
)
checkpoints = sa.Table(
    f"{TABLE_PREFIX}checkpoints",
    metadata,
    sa.Column("experiment", sa.Text, primary_key=True),
    sa.Column("number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
)
#: ``best``'s index: the head of one metric's order is one index range scan.
BEST_INDEX = sa.Index(
    f"ix_{TABLE_PREFIX}checkpoints_best",
    checkpoints.c.experiment,
    checkpoints.c.metric,
    checkpoints.c.value,
)


def checkpoint_rows(experiment: str, number: int, items: Any) -> list[dict[str, Any]]:
    """The ``versionkit_checkpoints`` rows of one record's ``checkpoints`` list."""
    from versionkit.registry.checkpoint_names import parse_checkpoint_name

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        path = item["path"]
        names = set(item["metrics"]) if isinstance(item.get("metrics"), dict) else set()
        names |= set(parse_checkpoint_name(path.rsplit("/", 1)[-1])[1])
        for metric in names:
            value = checkpoint_metric(item, str(metric))
            if value is not None:
                rows[(path, str(metric))] = {
                    "experiment": experiment,
                    "number": number,
                    "path": path,
                    "metric": str(metric),
                    "value": value,
                    "step": checkpoint_step(item),
                }
    return list(rows.values())


def _to_v2(conn: Connection) -> None:
    """Version 1 -> 2: experiment metadata, and the checkpoint index filled from records."""
    metadata.create_all(conn, tables=[experiment_meta, checkpoints], checkfirst=True)
    rows = conn.execute(sa.select(versions.c.experiment, versions.c.number, versions.c.record))
    batch: list[dict[str, Any]] = []
    for experiment, number, text in rows:
        try:
            record = json.loads(text)
        except ValueError:
            continue  # repair turns it into a stub; it has no checkpoints to index
        if isinstance(record, dict):
            batch += checkpoint_rows(experiment, int(number), record.get("checkpoints"))
    if batch:
        conn.execute(sa.insert(checkpoints), batch)


def summary_text(number: int, text: str) -> str | None:
    """The ``summary`` column of a stored record text (``None`` when unreadable)."""
    from versionkit.registry.summary import summary_of

    try:
        record = json.loads(text)
    except ValueError:
        return None
    return summary_of(number, record) if isinstance(record, dict) else None


def fill_summaries(conn: Connection, experiment: str | None = None) -> int:
    """Write the summary of every row (of ``experiment``) that has none; their count.

    In batches of rows in key order, so memory holds one batch of records at a time."""
    v = versions.c
    update = (
        sa.update(versions)
        .where(v.experiment == sa.bindparam("p_experiment"), v.number == sa.bindparam("p_number"))
        .values(summary=sa.bindparam("p_summary"))
    )
    count, after = 0, None
    while True:
        query = sa.select(v.experiment, v.number, v.record).where(v.summary.is_(None))
        if experiment is not None:
            query = query.where(v.experiment == experiment)
        if after is not None:
            query = query.where(sa.tuple_(v.experiment, v.number) > sa.tuple_(*after))
        rows = conn.execute(query.order_by(v.experiment, v.number).limit(2000)).all()
        batch = [
            {"p_experiment": name, "p_number": number, "p_summary": summary}
            for name, number, text in rows
            if (summary := summary_text(int(number), text)) is not None
        ]
        if batch:
            conn.execute(update, batch)
            count += len(batch)
        if len(rows) < 2000:
            return count
        after = (rows[-1][0], rows[-1][1])


def _to_v3(conn: Connection) -> None:
    """Version 2 -> 3: the ``summary`` column, filled from the records."""
    conn.execute(sa.text(f"ALTER TABLE {versions.name} ADD COLUMN summary TEXT"))
    fill_summaries(conn)


#: Upgrades of the table layout: ``MIGRATIONS[k](conn)`` turns version k into k + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _to_v2, 2: _to_v3}


def read_schema_version(conn: Connection, where: str) -> int | None:
    """The layout version the database holds (``None``: no tables yet)."""
    if not sa.inspect(conn).has_table(meta.name):
        return None
    value = conn.execute(
        sa.select(meta.c.value).where(meta.c.key == "schema_version")
    ).scalar_one_or_none()
    if value is None:
        return None
    try:
        version = int(value)
    except ValueError:
        raise CorruptStateError(
            f"{where}: table {meta.name} holds schema_version {value!r}, not an integer; "
            f"nothing was changed"
        ) from None
    if version > SCHEMA_VERSION:
        from versionkit import __version__

        raise BackendError(
            f"{where} was set up by a newer versionkit (table schema version {version}; "
            f"this versionkit {__version__} knows up to {SCHEMA_VERSION}); upgrade versionkit "
            f"to use this registry"
        )
    return version


def create_or_upgrade(conn: Connection, where: str) -> None:
    """Inside a write transaction (serialised by the caller): create or upgrade the layout."""
    version = read_schema_version(conn, where)
    if version is None:
        metadata.create_all(conn, checkfirst=True)
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        return
    while version < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise CorruptStateError(
                f"{where}: table {meta.name} says schema version {version}, which no "
                f"versionkit ever wrote; nothing was changed"
            )
        migrate(conn)
        version += 1
    conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value=str(version)))
