"""``versionkit list`` on SQL: the ``summary`` column, not the records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from versionkit.backends.sql import direct
from versionkit.registry.summary import Fields, record_fields, split

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from versionkit.backends.sql.backend import SQLBackend

__all__ = ["iter_summary_fields"]

#: Rows per query: few first (``--limit 20`` reads one page), then a few thousand
#: (a summary is ~100 bytes).
FIRST_PAGE, PAGE = 32, 8192


def _pages(backend: SQLBackend, newest_first: bool) -> Iterator[list[Any]]:
    """``(number, summary, record)`` rows in keyset pages (the record only where the
    summary is NULL): through the driver alone while it can (:mod:`.direct`), else, from
    where it stopped, through SQLAlchemy's engine."""
    after: int | None = None
    page = FIRST_PAGE
    with backend._direct_reader() as reader:
        while True:
            rows: list[Any] | None = None
            if reader is not None:
                try:
                    rows = reader.summaries(backend.experiment, after, newest_first, page)
                except direct.Unusable:
                    reader = None
            if rows is None:
                rows = backend._run("list versions", _engine_page(backend, after, newest_first,
                                                                  page))
            yield rows
            if len(rows) < page:
                return
            after = int(rows[-1][0])
            page = min(4 * page, PAGE)


def _engine_page(backend: SQLBackend, after: int | None, newest_first: bool,
                 page: int) -> Any:
    sql, params = direct.summaries_query(backend.experiment, after, newest_first, page)
    if backend._dialect != "sqlite":
        sql = sql.replace("?", "%s")

    def body(engine: Engine) -> list[Any]:
        with backend._transaction(engine, write=False) as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    return body


def iter_summary_fields(
    backend: SQLBackend, *, newest_first: bool = False
) -> Iterator[tuple[int, Fields]]:
    """Every version's list summary fields, from the ``summary`` column; a row without
    one (or of another format) is summarised from its record."""
    for rows in _pages(backend, newest_first):
        for number, summary, text in rows:
            got = split(summary) if summary is not None else None
            if got is None:
                n = int(number)
                if text is None:  # a summary of another format: read the record
                    found = backend.get(n)
                    if found is None:
                        continue
                    got = record_fields(found)
                else:
                    got = record_fields(backend._decode(n, text))
            yield number, got
