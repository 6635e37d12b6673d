"""A version's list summary: exactly what a ``versionkit list`` table row needs.

:func:`list_item` computes it from a record; this is the one definition of what a
row shows. The SQL backend keeps :func:`encode`'s text of it in the ``summary`` column,
written in the same statement as the record, so a listing splits one short string per
version instead of decoding the whole record (config, checkpoints, provenance ...).

The text is the fields joined by ``SEP`` behind a format tag. A record whose fields
hold ``SEP`` gets no summary (``None``) and lists from its record, as does a row whose
summary is missing (written before the column existed) or carries another tag.

A listing works on the fields themselves (:func:`fields`, :func:`split`: a list of
strings, the tag first, at the positions ``F_*``), not on a :class:`ListItem` per
version: a table row is a few of those strings as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from versionkit.curate.listing import MetricAt, best_of, last_of
from versionkit.registry.views import dead_candidate, process_gone

__all__ = ["SEP", "TAG", "Fields", "ListItem", "decode", "display_status_of", "encode", "fields",
           "item_of", "join", "list_item", "listed_status", "metric_cell", "record_fields", "split",
           "summary_of"]

#: Between fields; a text field holding it means "no summary, read the record".
SEP = "\x1f"
#: The format of the text; another one (or none) reads the record instead.
TAG = "s1"
_FIELDS = 12  # the tag and 11 fields
#: Where each value sits in :func:`fields` (0 is the tag): the recorded status, the pid
#: and host of the ``dead`` check ("" when it cannot be dead), the stamp behind "="
#: ("": none), the HOST, GIT, NOTE, BEST and LAST cells, and ``repr`` of the values
#: ``--sort best|last`` orders by ("": none).
F_STATUS, F_PID, F_PID_HOST, F_CREATED, F_HOST, F_GIT, F_NOTE, F_BEST, F_LAST = range(1, 10)
F_BEST_VALUE, F_LAST_VALUE = 10, 11
#: A summary as :func:`fields` gives it.
Fields = list[str]


class ListItem(NamedTuple):
    """One version as the listing sees it (cells that depend on the reader, such as the
    local time or ``dead``, are derived at listing time from the raw values here)."""

    version: int
    status: str  # as recorded (``unknown`` when none)
    pid: int | None  # set only when the record could be dead: running, on a named host
    pid_host: str  # the host of that pid ("" otherwise)
    created_at: str | None  # the stamp, when a string
    host: str  # the HOST cell
    git: str  # the GIT cell
    note: str  # the NOTE cell
    best: str  # the BEST VAL_LOSS@STEP cell: best recorded checkpoint val_loss
    last: str  # the LAST VAL_LOSS@STEP cell: last logged val_loss
    best_value: float | None  # what --sort best orders by
    last_value: float | None  # what --sort last orders by


def metric_cell(at: MetricAt | None) -> str:
    """``0.25@40``: a value and its step as a listing shows them (``-``: none)."""
    if at is None:
        return "-"
    value, step = at
    if type(value) is float:  # the common case, in one formatting step
        return f"{value:.6g}" if step is None else f"{value:.6g}@{step}"
    return _number(value) + (f"@{step}" if step is not None else "")


def _number(value: Any) -> str:
    from versionkit.cli._common import number

    return number(value)


def record_fields(record: Mapping[str, Any]) -> Fields:
    """The list summary of a record, as :func:`fields` (the one definition of what a
    listing shows of a record; :func:`list_item` is this as a :class:`ListItem`)."""
    get = record.get
    status, host, created, commit, note = (
        get("status"), get("host"), get("created_at"), get("git_commit"), get("note"))
    candidate = dead_candidate(record)
    note_text = " ".join(note.split()) if isinstance(note, str) and note else "-"
    best, last = best_of(record), last_of(record)
    return [
        TAG,
        str(status or "unknown"),
        "" if candidate is None else str(candidate[0]),
        "" if candidate is None else candidate[1],
        "=" + created if isinstance(created, str) else "",
        host if isinstance(host, str) and host else "-",
        commit[:8] + ("*" if get("git_dirty") is True else "")
        if commit and isinstance(commit, str) else "-",
        note_text if len(note_text) <= 40 else note_text[:37] + "...",
        metric_cell(best),
        metric_cell(last),
        "" if best is None else repr(best[0]),
        "" if last is None else repr(last[0]),
    ]


def list_item(number: int, record: Mapping[str, Any]) -> ListItem:
    """The list summary of version ``number``'s record."""
    return item_of(number, record_fields(record))


def listed_status(got: Fields) -> str:
    """``dead`` for a running version whose process on this host is gone, else the
    recorded status: :func:`versionkit.registry.views.display_status` of the record,
    from its summary :func:`fields`."""
    pid = got[F_PID]
    if pid and process_gone(int(pid), got[F_PID_HOST]):
        return "dead"
    return got[F_STATUS]


def display_status_of(item: ListItem) -> str:
    """:func:`listed_status` of an item."""
    return listed_status(fields(item))


def fields(item: ListItem) -> list[str]:
    """The stored fields of ``item`` (its version is not one of them), tag first."""
    return [TAG, item.status, "" if item.pid is None else str(item.pid), item.pid_host,
            "" if item.created_at is None else "=" + item.created_at, item.host, item.git,
            item.note, item.best, item.last,
            "" if item.best_value is None else repr(item.best_value),
            "" if item.last_value is None else repr(item.last_value)]


def join(got: Fields) -> str | None:
    """The stored text of summary fields, or ``None`` when a field holds ``SEP``."""
    text = SEP.join(got)
    return text if text.count(SEP) == _FIELDS - 1 else None


def encode(item: ListItem) -> str | None:
    """The stored text of ``item`` (its version is the row's number), or ``None`` when
    a field holds ``SEP``."""
    return join(fields(item))


def summary_of(number: int, record: Mapping[str, Any]) -> str | None:
    """The stored summary text of a record (``None``: the listing reads the record)."""
    return join(record_fields(record))


def split(text: str) -> list[str] | None:
    """The fields of a stored summary, or ``None`` when it is of another format."""
    got = text.split(SEP)
    return got if len(got) == _FIELDS and got[0] == TAG else None


def item_of(number: int, got: list[str]) -> ListItem:
    """The item of version ``number`` from its :func:`fields`."""
    _tag, status, pid, pid_host, created, host, git, note, best, last, bv, lv = got
    return ListItem(number, status, int(pid) if pid else None, pid_host,
                    created[1:] if created else None, host, git, note, best, last,
                    float(bv) if bv else None, float(lv) if lv else None)


def decode(number: int, text: str) -> ListItem | None:
    """The item of a stored summary, or ``None`` when it is of another format."""
    got = split(text)
    return None if got is None else item_of(number, got)
