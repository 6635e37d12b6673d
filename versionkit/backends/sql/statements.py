"""The SQL statements the backend runs most, built once with bind parameters.

Building a statement costs client CPU on every call; these are made once per process.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import sqlalchemy as sa

from versionkit.backends.sql import schema

__all__ = ["Statements", "best_query", "hot", "pg_allocate"]


class Statements(NamedTuple):
    lock_counter: sa.Select[Any]
    set_counter: sa.Update
    insert_version: sa.Insert


@functools.cache
def hot() -> Statements:
    """The hot statements, built once with bind parameters (saves client CPU per call)."""
    experiment = sa.bindparam("p_experiment", type_=sa.Text)
    experiments, versions = schema.experiments, schema.versions
    return Statements(
        lock_counter=sa.select(experiments.c.next_number)
        .where(experiments.c.experiment == experiment)
        .with_for_update(),
        set_counter=sa.update(experiments)
        .where(experiments.c.experiment == experiment)
        .values(next_number=sa.bindparam("p_value", type_=sa.BigInteger)),
        insert_version=sa.insert(versions).values(
            experiment=experiment,
            number=sa.bindparam("p_number", type_=sa.BigInteger),
            record=sa.bindparam("p_record", type_=sa.Text),
            summary=sa.bindparam("p_summary", type_=sa.Text),
        ),
    )


@functools.cache
def pg_allocate() -> sa.Insert:
    """``INSERT`` the record at the number an upsert takes from the counter (built once)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    experiments, versions = schema.experiments, schema.versions
    experiment = sa.bindparam("p_experiment", type_=sa.Text)
    floor = sa.bindparam("p_floor", type_=sa.BigInteger)
    counter = (
        pg_insert(experiments)
        .values(experiment=experiment, next_number=floor + 1)
        .on_conflict_do_update(
            index_elements=[experiments.c.experiment],
            set_={"next_number": sa.func.greatest(experiments.c.next_number, floor) + 1},
        )
        .returning((experiments.c.next_number - 1).label("number"))
        .cte("counter")
    )
    record = sa.bindparam("p_record", type_=sa.Text)
    summary = sa.bindparam("p_summary", type_=sa.Text)
    return (
        sa.insert(versions)
        .from_select(
            ["experiment", "number", "record", "summary"],
            sa.select(experiment, counter.c.number, record, summary),
        )
        .returning(versions.c.number)
    )


def best_query(experiment: str, metric: str, mode: str) -> sa.Select[Any]:
    """``best``'s one indexed query: this metric's rows, best first (ties: later step,
    then higher version). Served by ``ix_versionkit_checkpoints_best``."""
    c = schema.checkpoints.c
    value = c.value.asc() if mode == "min" else c.value.desc()
    return (
        sa.select(c.number, c.path, c.value, c.step)
        .where(c.experiment == experiment, c.metric == metric)
        .order_by(value, c.step.desc(), c.number.desc(), c.path)
    )
