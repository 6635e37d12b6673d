"""``versionkit list`` on SQL: the ``summary`` column, not the records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

from versionkit.backends.sql import schema
from versionkit.backends.sql.backend import SQLBackend
from versionkit.registry.summary import fields, list_item, split

__all__ = ["iter_summary_fields"]

#: Rows per query: few first (``--limit 20`` reads one page), then a few thousand
#: (a summary is ~100 bytes).
FIRST_PAGE, PAGE = 32, 8192


def iter_summary_fields(
    backend: SQLBackend, *, newest_first: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """Every version's list summary fields, from the ``summary`` column in keyset pages
    through the driver's cursor; a row without one (or of another format) is
    summarised from its record."""
    table, mark = schema.versions.name, "?" if backend._dialect == "sqlite" else "%s"
    # The record travels only for a row without a summary.
    head = (
        f"SELECT number, summary, CASE WHEN summary IS NULL THEN record END "
        f"FROM {table} WHERE experiment = {mark}"
    )
    tail = f" ORDER BY number {'DESC' if newest_first else 'ASC'} LIMIT {mark}"
    after: int | None = None
    page = FIRST_PAGE
    while True:

        def body(engine: Engine, after: int | None = after, page: int = page) -> list[Any]:
            sql, params = head, list[Any]([backend.experiment])
            if after is not None:
                sql += f" AND number {'<' if newest_first else '>'} {mark}"
                params.append(after)
            params.append(page)
            with backend._transaction(engine, write=False) as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                cursor.execute(sql + tail, params)
                return list(cursor.fetchall())

        rows = backend._run("list versions", body)
        for number, summary, text in rows:
            got = split(summary) if summary is not None else None
            if got is None:
                n = int(number)
                if text is None:  # a summary of another format: read the record
                    found = backend.get(n)
                    if found is None:
                        continue
                    got = fields(list_item(n, found))
                else:
                    got = fields(list_item(n, backend._decode(n, text)))
            yield number, got
        if len(rows) < page:
            return
        after = int(rows[-1][0])
        page = min(4 * page, PAGE)
