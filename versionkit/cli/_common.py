"""What every ``versionkit`` subcommand shares: opening the registry, references, output."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from versionkit.errors import EXIT_USAGE, ConfigError, VersionkitError

if TYPE_CHECKING:
    from versionkit.registry import Registry, VersionInfo

#: Commands that never create the experiment root (a missing root is a usage mistake).
READ_ONLY = {"list", "show", "best", "diff", "repair", "tag", "note", "status", "gc", "export"}


class UsageError(VersionkitError):
    """A command line that is wrong as written (exit status 2)."""

    exit_code = EXIT_USAGE


def version_arg(text: str) -> int:
    """argparse type: a version number (an integer >= 0)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0 or not text.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a version number (an integer >= 0), got {text!r}"
        )
    return value


def split_root(args: argparse.Namespace) -> None:
    """Split ``ROOT@REF`` into ``args.root`` and ``args.root_ref`` (``None`` without one).

    A folder that exists under the whole name (``runs@2``) stays a folder.
    """
    from versionkit.curate.refs import split_reference

    text: str = args.root
    root, ref = split_reference(text)
    if ref is not None and Path(text).is_dir() and not Path(root).is_dir():
        root, ref = text, None
    args.root, args.root_ref = root, ref


def one_ref(args: argparse.Namespace, given: str | None, what: str = "N") -> str:
    """The version reference of a command: ``ROOT@REF`` or a separate ``N`` (not both)."""
    if args.root_ref is not None and given is not None:
        raise UsageError(
            f"give the version once: either {args.root}@{args.root_ref} or {what} {given}"
        )
    ref = given if given is not None else args.root_ref
    if ref is None:
        raise UsageError(f"which version? give {what} (a number, latest, best or a tag) "
                         f"or ROOT@{what}")
    return ref


def open_registry(args: argparse.Namespace) -> Registry:
    """The registry of ``args.root`` through ``--backend`` / ``$VERSIONKIT_BACKEND``."""
    from versionkit.backends import ENV_VAR, scheme_of
    from versionkit.registry import Registry

    if not str(args.root).strip():
        raise UsageError("the experiment root is empty: expected a folder, e.g. outputs/exp")
    root = Path(args.root)
    uri = args.backend or os.environ.get(ENV_VAR) or "file"
    if args.command in READ_ONLY and scheme_of(uri) == "file" and not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UsageError(f"experiment root {root} {what}")
    return Registry(args.root, uri, experiment=args.experiment)


def resolve(reg: Registry, ref: str) -> int:
    """A version reference (N, latest, best, a tag) -> its number in ``reg``."""
    from versionkit.curate.refs import resolve_version

    return resolve_version(reg, ref)


def iter_versions(
    reg: Registry, *, limit: int | None = None, newest_first: bool = False
) -> Iterator[VersionInfo]:
    """``Registry.iter_versions``: streamed, so ``--limit`` reads only what it shows."""
    yield from reg.iter_versions(limit=limit, newest_first=newest_first)


def tags_by_version(reg: Registry) -> dict[int, list[str]]:
    """Tags per version, from the experiment's metadata."""
    from versionkit.curate.refs import tags_by_version as by_version

    return by_version(reg)


def comma_list(text: str, what: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; an empty item is a usage mistake."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


# -- output -----------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """NaN and infinities -> None: strict JSON parsers (jq, JavaScript) reject NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dump(value: Any, out: TextIO) -> None:
    """Pretty JSON, strict (no NaN), one document."""
    text = json.dumps(finite(value), indent=2, ensure_ascii=False, default=str, allow_nan=False)
    out.write(text + "\n")


def dump_stream(items: Iterable[Any], out: TextIO) -> None:
    """A JSON array written one element (one line) at a time, so memory stays bounded.

    Compact lines, not indented ones; an element is walked for NaN only when the
    strict encoder refuses it (a listing writes every version through here).
    """
    encode = json.JSONEncoder(ensure_ascii=False, default=str, allow_nan=False).encode
    out.write("[")
    sep = "\n"
    for item in items:
        try:
            text = encode(item)
        except ValueError:  # NaN or an infinity somewhere in it
            text = encode(finite(item))
        out.write(sep + text)
        sep = ",\n"
    out.write("]\n" if sep == "\n" else "\n]\n")


#: Joins a table row's cells while the table waits for its widths (no cell has it).
_SEP = "\x00"
_CHUNK = 1024  # rows whose widths Table.add_rows takes at once


def _line(cells: Sequence[str]) -> str:
    line = _SEP.join(cells)
    if line.count(_SEP) != len(cells) - 1:
        line = _SEP.join(cell.replace(_SEP, "\ufffd") for cell in cells)
    return line


class Table:
    """Left-aligned columns, two spaces apart, written once every row is known.

    Widths need every row, so rows are kept, each as one string (a few dozen bytes a
    version, not a list of cell objects).
    """

    def __init__(self, header: list[str]) -> None:
        self.widths = [len(cell) for cell in header]
        self.rows = [_SEP.join(header)]

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, cells: Sequence[str]) -> None:
        """Add one row (as many cells as the header; NUL in a cell shows as U+FFFD)."""
        self.widths = list(map(max, self.widths, map(len, cells)))
        self.rows.append(_line(cells))

    def add_rows(self, rows: Iterable[Sequence[str]]) -> None:
        """:meth:`add` every row, a chunk of rows at a time: the widths of a chunk's
        columns are taken column by column, and a chunk is checked for NUL at once."""
        chunk: list[Sequence[str]] = []
        for cells in rows:
            chunk.append(cells)
            if len(chunk) == _CHUNK:
                self._add_chunk(chunk)
                chunk = []
        if chunk:
            self._add_chunk(chunk)

    def _add_chunk(self, chunk: list[Sequence[str]]) -> None:
        self.widths = [max(w, max(map(len, column)))
                       for w, column in zip(self.widths, zip(*chunk, strict=True), strict=True)]
        lines = list(map(_SEP.join, chunk))
        if "".join(lines).count(_SEP) != (len(self.widths) - 1) * len(lines):
            lines = list(map(_line, chunk))
        self.rows += lines

    def write(self, out: TextIO) -> None:
        """Write every row, padded to the columns' widths (a thousand lines a write)."""
        fmt = "  ".join(f"{{:<{w}}}" for w in self.widths).format
        rows = self.rows
        for start in range(0, len(rows), 1000):
            out.write("".join(
                fmt(*line.split(_SEP)).rstrip() + "\n" for line in rows[start : start + 1000]
            ))


def table(rows: list[list[str]], out: TextIO) -> None:
    """Left-aligned columns, two spaces apart."""
    lines = Table(rows[0])
    for row in rows[1:]:
        lines.add(row)
    lines.write(out)


#: (year, month, day, hour, UTC offset) of a stamp -> what turns it into local time
#: (None: the local offset changes within that hour). A listing formats one stamp per
#: version and ``astimezone`` asks the C library each time; one hour asks it twice.
#: Also "YYYY-MM-DDTHH+hh:mm" (the hour of a plain stamp and its offset) -> that hour in
#: local time, "YYYY-MM-DD HH" (None: the slow way), so such a stamp is not parsed.
_LOCAL_SHIFTS: dict[Any, Any] = {}
#: A stamp as ``datetime.isoformat`` writes it with an offset: its minutes and seconds
#: stay as written when the shift to local time is whole hours.
_PLAIN_STAMP = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:[0-5]\d:[0-5]\d(?:\.\d{3}|\.\d{6})?[+-]\d\d:\d\d", re.ASCII
)


def _shift(d: Any) -> Any:
    """What turns aware datetime ``d`` into local time, or None (the slow way)."""
    import datetime as dt

    offset = d.utcoffset()
    if offset is None or not 1000 <= d.year <= 9998:
        return None
    key = (d.year, d.month, d.day, d.hour, offset)
    shift = _LOCAL_SHIFTS.get(key, False)
    if shift is False:
        hour = d.replace(minute=0, second=0, microsecond=0)
        local = hour.astimezone().utcoffset()
        same = local == (hour + dt.timedelta(hours=1)).astimezone().utcoffset()
        shift = _LOCAL_SHIFTS[key] = local - offset if same and local is not None else None
    return shift


def _local_hour(hour_stamp: str) -> str | None:
    """"YYYY-MM-DD HH" of a whole-hour stamp in local time, when every stamp of that hour
    moves by whole hours (else None)."""
    import datetime as dt

    try:
        d = dt.datetime.fromisoformat(hour_stamp)
    except ValueError:
        return None
    shift = _shift(d)
    if shift is None or shift % dt.timedelta(hours=1):
        return None
    t = d + shift
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}"


def when(stamp: str | None) -> str:
    """An ISO time stamp in local time, seconds precision."""
    if not stamp:
        return "-"
    if _PLAIN_STAMP.fullmatch(stamp):
        key = stamp[:13] + stamp[-6:]
        head = _LOCAL_SHIFTS.get(key, False)
        if head is False:
            head = _LOCAL_SHIFTS[key] = _local_hour(stamp[:13] + ":00:00" + stamp[-6:])
        if isinstance(head, str):
            return head + stamp[13:19]
    import datetime as dt

    try:
        d = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    shift = _shift(d)
    if shift is not None:
        t = d + shift
        return (f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
                f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}")
    try:
        return d.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a year the C library cannot place
        return stamp


def number(value: Any) -> str:
    """A metric or config value, short."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def metrics_text(metrics: dict[str, Any], limit: int = 3) -> str:
    """``a=1 b=2 (+3)``."""
    items = [f"{k}={number(v)}" for k, v in sorted(metrics.items())[:limit]]
    if len(metrics) > limit:
        items.append(f"(+{len(metrics) - limit})")
    return " ".join(items) or "-"


def git_text(info: VersionInfo) -> str:
    """Short commit, ``*`` when the tree was dirty."""
    if not info.git_commit:
        return "-"
    return info.git_commit[:8] + ("*" if info.git_dirty else "")


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
