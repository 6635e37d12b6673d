"""``repair`` of a SQL registry: stubs for unreadable records, the counter, the index,
the list summaries."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from versionkit.backends.base import encode_json
from versionkit.backends.sql import schema
from versionkit.backends.sql.backend import SQLBackend, _check_floor
from versionkit.errors import CorruptStateError
from versionkit.registry.summary import summary_of

__all__ = ["repair"]


def repair(backend: SQLBackend, floor: int) -> dict[str, Any]:
    """Replace unreadable records by stubs, lift the counter, rebuild the index and
    the list summaries that are missing or do not match their record.

    An unreadable record becomes ``{"status": "unknown", ...}`` with the original
    text kept under ``"unreadable_record"``; the counter becomes at least one above
    the highest row and at least ``floor``. Never lowers the next number.
    """
    _check_floor(floor, "repair's floor")

    def body(engine: Engine) -> dict[str, Any]:
        actions: list[str] = []
        v = schema.versions.c
        with backend._transaction(engine, write=True) as conn:
            previous = backend._lock_counter(conn)
            rows = conn.execute(
                sa.select(v.number, v.record, v.summary)
                .where(v.experiment == backend.experiment)
                .order_by(v.number)
                .with_for_update()
            ).all()
            conn.execute(
                sa.delete(schema.checkpoints).where(
                    schema.checkpoints.c.experiment == backend.experiment
                )
            )
            summaries = 0
            for number, text, summary in rows:
                try:
                    record = backend._decode(int(number), text)
                except CorruptStateError:
                    record = None
                if record is not None:
                    backend._index_checkpoints(
                        conn, int(number), record.get("checkpoints"), fresh=True
                    )
                    wanted = summary_of(int(number), record)
                    if wanted != summary:  # missing (an older row), or edited by hand
                        conn.execute(
                            sa.update(schema.versions)
                            .where(*backend._where(int(number)))
                            .values(summary=wanted)
                        )
                        summaries += 1
                    continue
                stub = {
                    "status": "unknown",
                    "error": "record was unreadable; the original text is kept under "
                    "'unreadable_record'",
                    "unreadable_record": text,
                    "metrics": {},
                    "checkpoints": [],
                }
                conn.execute(
                    sa.update(schema.versions)
                    .where(*backend._where(int(number)))
                    .values(
                        record=encode_json(stub, "repair stub"),
                        summary=summary_of(int(number), stub),
                    )
                )
                actions.append(f"replaced unreadable record of version {number} by a stub")
            if summaries:
                actions.append(f"rewrote the list summary of {summaries} version(s)")
            highest = max((int(number) for number, _, _ in rows), default=-1)
            target = max(previous, highest + 1, floor)
            if target != previous:
                backend._set_counter(conn, target)
                actions.append(f"next number set to {target} (was {previous})")
        return {"next_number": target, "previous_next_number": previous, "actions": actions}

    return backend._run("repair the registry", body, retry=True)
