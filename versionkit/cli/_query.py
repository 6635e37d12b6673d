"""``versionkit list``, ``show``, ``best`` and ``diff``: reading an experiment."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO, TypeVar

from versionkit.cli._common import (
    Table,
    UsageError,
    comma_list,
    dump,
    dump_stream,
    metrics_text,
    number,
    one_ref,
    resolve,
    table,
    tags_by_version,
    when,
)
from versionkit.curate.listing import (
    MetricAt,
    best_of,
    config_columns,
    last_of,
    sort_key,
    unknown_columns,
)
from versionkit.errors import ConfigError, VersionNotFoundError
from versionkit.registry.summary import (
    F_BEST,
    F_BEST_VALUE,
    F_CREATED,
    F_GIT,
    F_HOST,
    F_LAST,
    F_LAST_VALUE,
    F_NOTE,
    F_PID,
    F_STATUS,
    Fields,
    ListItem,
    list_item,
    listed_status,
    metric_cell,
    record_fields,
)
from versionkit.registry.views import display_status, record_json
from versionkit.sweep.records import record_in_sweep

if TYPE_CHECKING:
    from versionkit.backends.base import Record
    from versionkit.registry import CheckpointInfo, Registry

Adder = Callable[[str, str], argparse.ArgumentParser]
_SORTS = ("version", "created", "status", "best", "last")


def register(add: Adder) -> None:
    """Add the query subcommands to the parser."""
    p = add("list", "list the versions of an experiment (dead runs are marked 'dead')")
    p.add_argument("--limit", type=int, metavar="N", default=None,
                   help="only the N newest versions, newest first")
    p.add_argument("--columns", metavar="KEYS", default=None,
                   help="config values to show, e.g. optim.lr,trainer.max_steps")
    p.add_argument("--status", metavar="S[,S]", default=None,
                   help="only versions with these statuses (running, completed, dead, ...)")
    p.add_argument("--tag", metavar="NAME", default=None, help="only the version tagged NAME")
    p.add_argument("--sweep", metavar="STUDY", default=None,
                   help="only the versions that the trials of sweep STUDY made")
    p.add_argument("--sort", metavar="KEY", default=None,
                   help="order by version, created, status, best, last or a --columns key; "
                   "--sort=-KEY reverses")
    p = add("show", "show everything recorded about one version")
    p.add_argument("ref", metavar="N", nargs="?", default=None,
                   help="a version number, latest, best or a tag (or write ROOT@N)")
    p = add("best", "the best checkpoint by a metric, over every version")
    p.add_argument("--metric", default="val_loss", help="metric name (default: val_loss)")
    p.add_argument("--mode", choices=("min", "max"), default="min", help="min (default) or max")
    p.add_argument("--version", dest="only", default=None, metavar="N",
                   help="only look at version N (a number, latest or a tag)")
    p = add("diff", "what changed between versions' configs (two, or a table for more)")
    p.add_argument("refs", metavar="A B [C ...]", nargs="*",
                   help="versions: numbers, latest, best or tags")


# -- list -------------------------------------------------------------------------------
#
# A listing formats every version, so it works on the raw records (no typed view per
# version) and derives each cell once: this is the part of ``versionkit list`` that
# grows with the history. The table without ``--columns`` or ``--sweep`` goes further:
# it formats each version's list summary fields (registry.summary) as they come.


class _Row(NamedTuple):
    item: ListItem  # the cells that come from the record alone
    status: str  # as listed: dead for a running version whose process is gone
    columns: dict[str, Any]
    record: Record


def _row(record: Record, columns: list[str]) -> _Row:
    return _Row(list_item(record["version"], record), display_status(record),
                config_columns(record, columns) if columns else {}, record)


def _metric(at: MetricAt | None) -> dict[str, Any] | None:
    return None if at is None else {"val_loss": at[0], "step": at[1]}


def _sort_value(row: _Row, key: str) -> Any:
    item = row.item
    if key == "version":
        return item.version
    if key == "created":
        return item.created_at
    if key == "status":
        return row.status
    if key in ("best", "last"):
        return item.best_value if key == "best" else item.last_value
    return row.columns.get(key)


class _Flags(NamedTuple):
    columns: list[str]
    statuses: set[str] | None
    only: int | None  # the version --tag names


def _list_flags(reg: Registry, args: argparse.Namespace,
                tags: dict[int, list[str]]) -> _Flags:
    """Checks every flag first: nothing is printed before a refusal."""
    columns = comma_list(args.columns, "--columns") if args.columns is not None else []
    statuses = set(comma_list(args.status, "--status")) if args.status is not None else None
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    only: int | None = None
    if args.tag is not None:
        from versionkit.curate.refs import lookup_tag

        only = lookup_tag(reg, args.tag)
        if only is None:
            names = ", ".join(sorted({t for ts in tags.values() for t in ts})) or "none"
            raise VersionNotFoundError(f"no tag {args.tag!r} in {reg.root} (tags: {names})")
    sort = args.sort
    if sort is not None:
        key = sort.lstrip("-")
        if key not in _SORTS and key not in columns:
            raise ConfigError(
                f"--sort {sort!r}: expected one of {', '.join(_SORTS)} or a --columns key"
            )
    return _Flags(columns, statuses, only)


_T = TypeVar("_T")


def _sorted(rows: Iterator[_T], sort: str | None, value: Callable[[_T, str], Any]) -> Iterator[_T]:
    """``--sort KEY`` (``-KEY``: reversed, versions without a value still last)."""
    if sort is None:
        return rows
    key = sort.lstrip("-")
    ordered = sorted(rows, key=lambda r: sort_key(value(r, key)))
    if sort.startswith("-"):
        ordered = [r for r in ordered if value(r, key) is not None][::-1] + [
            r for r in ordered if value(r, key) is None
        ]
    return iter(ordered)


def _record_rows(reg: Registry, args: argparse.Namespace, flags: _Flags) -> Iterator[_Row]:
    """The versions listed, each from its whole record (``--json``, ``--columns``,
    ``--sweep``)."""
    only, statuses = flags.only, flags.statuses
    filtered = statuses is not None or only is not None or args.sweep is not None
    records = (iter([reg.get(only).record]) if only is not None else
               reg.iter_records(limit=None if filtered else args.limit,
                                newest_first=args.limit is not None))
    count = 0
    for record in records:
        row = _row(record, flags.columns)
        if only is not None and row.item.version != only:
            continue
        if statuses is not None and row.status not in statuses and (
            row.item.status not in statuses
        ):
            continue
        if args.sweep is not None and not record_in_sweep(record, args.sweep):
            continue
        if args.limit is not None and count >= args.limit:
            break
        count += 1
        yield row


#: A version of the summary table: (number, status as listed, summary fields).
_Summary = tuple[int, str, Fields]


def _summary_rows(reg: Registry, args: argparse.Namespace, flags: _Flags) -> Iterator[_Summary]:
    """The versions listed, each from its list summary (the table without ``--columns``
    or ``--sweep``: on SQL one short column, not the whole record)."""
    only, statuses, limit = flags.only, flags.statuses, args.limit
    if only is not None:
        sources = iter([(only, record_fields(reg.get(only).record))])
    else:
        sources = reg.iter_summary_fields(limit=None if statuses is not None else limit,
                                          newest_first=limit is not None)
    count = 0
    for n, got in sources:
        status = recorded = got[F_STATUS]
        if got[F_PID]:
            status = listed_status(got)
        if statuses is not None and status not in statuses and recorded not in statuses:
            continue
        if limit is not None and count >= limit:
            break
        count += 1
        yield n, status, got


def _summary_sort_value(row: _Summary, key: str) -> Any:
    n, status, got = row
    if key == "version":
        return n
    if key == "created":
        return got[F_CREATED][1:] if got[F_CREATED] else None
    if key == "status":
        return status
    value = got[F_BEST_VALUE if key == "best" else F_LAST_VALUE]
    return float(value) if value else None


def _summary_cells(rows: Iterator[_Summary],
                   tags: dict[int, list[str]]) -> Iterator[tuple[str, ...]]:
    for n, status, got in rows:
        created, named = got[F_CREATED], tags.get(n)
        yield (str(n), status, when(created[1:]) if created else "-", got[F_HOST], got[F_GIT],
               (",".join(named) or "-") if named else "-", got[F_BEST], got[F_LAST],
               got[F_NOTE])


def _json_rows(reg: Registry, rows: Iterator[_Row],
               tags: dict[int, list[str]]) -> Iterator[dict[str, Any]]:
    # The folders as VersionInfo spells them, without a Path per version.
    checkpoints = str(reg.checkpoint_dir(0))[:-1]
    logs = str(reg.log_dir(0))[:-1]
    for row in rows:
        record = row.record
        n = record["version"]
        data = record_json(record, f"{checkpoints}{n}", f"{logs}{n}")
        data.update(tags=tags.get(n, []), note=record.get("note"), best=_metric(best_of(record)),
                    last=_metric(last_of(record)), columns=row.columns)
        yield data


_at = metric_cell


def _cells(row: _Row, tags: dict[int, list[str]], columns: list[str]) -> list[str]:
    item = row.item
    n = item.version
    return [
        str(n), row.status, when(item.created_at), item.host, item.git,
        ",".join(tags.get(n, ())) or "-", item.best, item.last,
        *["-" if row.columns[c] is None else number(row.columns[c]) for c in columns],
        item.note,
    ]


def cmd_list(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit list``."""
    if args.root_ref is not None:
        raise UsageError("list takes an experiment root, not ROOT@version")
    if not (args.json or args.columns is not None or args.sweep is not None
            or args.tag is not None) and hasattr(reg.backend, "read_directly"):
        # The table reads the metadata and the summaries alone: on SQL, through the
        # driver, without importing SQLAlchemy (see backends.sql.direct).
        reg.backend.read_directly = True
    tags = tags_by_version(reg)
    flags = _list_flags(reg, args, tags)
    columns = flags.columns
    header = ["VERSION", "STATUS", "CREATED", "HOST", "GIT", "TAGS", "BEST VAL_LOSS@STEP",
              "LAST VAL_LOSS@STEP", *[c.upper() for c in columns], "NOTE"]
    lines = Table(header)
    if args.json or columns or args.sweep is not None:
        rows = _sorted(_record_rows(reg, args, flags), args.sort, _sort_value)
        if columns:
            rows_list = list(rows)
            unknown_columns((r.record for r in rows_list), columns)
            rows = iter(rows_list)
        if args.json:
            dump_stream(_json_rows(reg, rows, tags), out)
            return 0
        lines.add_rows(_cells(r, tags, columns) for r in rows)
    else:
        summaries = _sorted(_summary_rows(reg, args, flags), args.sort, _summary_sort_value)
        lines.add_rows(_summary_cells(summaries, tags))
    if len(lines) == 1:
        if args.sweep is not None:
            out.write(f"no versions of sweep {args.sweep} in {reg.root}\n")
        else:
            out.write(f"no versions in {reg.root}\n" if not (args.status or args.tag)
                      else "no version matches\n")
        return 0
    lines.write(out)
    return 0


# -- show / best / diff -----------------------------------------------------------------


def _checkpoint_rows(checkpoints: list[CheckpointInfo]) -> list[list[str]]:
    rows = [["STEP", "METRICS", "PATH"]]
    for c in checkpoints:
        rows.append([str(c.step) if c.step is not None else "-", metrics_text(c.metrics),
                     str(c.path)])
    return rows


def cmd_show(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit show``."""
    n = resolve(reg, one_ref(args, args.ref))
    info = reg.get(n)
    checkpoints = reg.checkpoints(n)
    tags = tags_by_version(reg).get(n, [])
    note = info.record.get("note")
    if args.json:
        data = info.to_json()
        data["tags"] = tags
        data["note"] = note
        data["checkpoint_files"] = [c.to_json() for c in checkpoints]
        dump(data, out)
        return 0
    best = best_of(info.record)
    fields = [
        ("version", str(info.version)),
        ("status", info.display_status),
        ("tags", ", ".join(tags) or "-"),
        ("note", note if isinstance(note, str) and note else "-"),
        ("created", when(info.created_at)),
        ("ended", when(info.ended_at)),
        ("host", info.host or "-"),
        ("user", info.user or "-"),
        ("pid", str(info.pid) if info.pid is not None else "-"),
        ("command", " ".join(info.command) or "-"),
        ("git", (info.git_commit or "-") + (" (dirty)" if info.git_dirty else "")),
        ("seed", str(info.seed) if info.seed is not None else "-"),
        ("config hash", info.config_hash or "-"),
        ("versions", f"python {info.python or '-'}, torch {info.torch or '-'}, "
                     f"lightning {info.lightning or '-'}, versionkit {info.versionkit or '-'}"),
        ("checkpoint dir", str(info.checkpoint_dir)),
        ("log dir", str(info.log_dir)),
        ("metrics", metrics_text(info.metrics, limit=20)),
        ("best val_loss", _at(best)),
    ]
    origin = info.record.get("imported_from")
    if isinstance(origin, dict):
        fields.append(("imported from", f"{origin.get('host')}:{origin.get('root')} version "
                                        f"{origin.get('version')}"))
    if info.error:
        fields.append(("error", info.error))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        out.write(f"{key.ljust(width)}  {value}\n")
    config = info.record.get("config")
    if isinstance(config, dict) and config:
        from versionkit._diff import flatten  # light: no pydantic, no yaml

        out.write("\nconfig:\n")
        for key, value in flatten(config).items():
            out.write(f"  {key}: {json.dumps(value, default=str)}\n")
    if checkpoints:
        out.write("\n")
        table(_checkpoint_rows(checkpoints), out)
    return 0


def cmd_best(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit best``."""
    if args.root_ref is not None and args.only is not None:
        raise UsageError("give the version once: ROOT@N or --version N")
    ref = args.only if args.only is not None else args.root_ref
    only = resolve(reg, ref) if ref is not None else None
    best = reg.best(args.metric, args.mode, version=only)
    if best is None:
        scope = f"version {only}" if only is not None else str(reg.root)
        raise VersionNotFoundError(f"no existing checkpoint in {scope} has a {args.metric!r} value")
    value = best.metrics[args.metric]
    if args.json:
        dump({"path": str(best.path), "version": best.version, "step": best.step,
              args.metric: value, "metric": args.metric, "mode": args.mode,
              "metrics": best.metrics}, out)
    else:
        out.write(f"best {args.metric} ({args.mode}): {number(value)}\n")
        out.write(f"version: {best.version}\nstep: {best.step if best.step is not None else '-'}\n")
        out.write(f"path: {best.path}\n")
    return 0


def _show_value(value: Any) -> str:
    from versionkit.config import MISSING

    return "(missing)" if value is MISSING else json.dumps(value, default=str)


def cmd_diff(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit diff``: two versions as ``key: old -> new``, more as one table."""
    refs = ([args.root_ref] if args.root_ref is not None else []) + list(args.refs)
    if len(refs) < 2:
        raise UsageError(f"diff needs at least two versions, got {len(refs)}")
    numbers = [resolve(reg, r) for r in refs]
    if len(numbers) == 2:
        return _diff_two(reg, numbers[0], numbers[1], args, out)
    from versionkit._diff import MISSING, _same, flatten

    flats = [flatten(reg.config(n)) for n in numbers]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    differing = [k for k in keys if not all(
        _same(flats[0].get(k, MISSING), f.get(k, MISSING)) for f in flats[1:])]
    bests = [best_of(reg.get(n).record) for n in numbers]
    if args.json:
        dump({
            "versions": numbers,
            "keys": {k: [f.get(k) for f in flats] for k in differing},
            "missing": {k: [k not in f for f in flats] for k in differing},
            "best": [None if b is None else {"val_loss": b[0], "step": b[1]} for b in bests],
        }, out)
        return 0
    rows = [["KEY", *[f"version {n}" for n in numbers]]]
    for k in differing:
        rows.append([k, *[_show_value(f.get(k, MISSING)) for f in flats]])
    rows.append(["best val_loss", *[_at(b) for b in bests]])
    if not differing:
        out.write(f"versions {', '.join(map(str, numbers))} have the same config\n")
    table(rows, out)
    return 0


def _diff_two(reg: Registry, a: int, b: int, args: argparse.Namespace, out: TextIO) -> int:
    changes = reg.diff(a, b)
    from versionkit.config import MISSING

    if args.json:
        data: dict[str, dict[str, Any]] = {}
        for key, (old, new) in changes.items():
            entry: dict[str, Any] = {}
            if old is not MISSING:
                entry["old"] = old
            if new is not MISSING:
                entry["new"] = new
            data[key] = entry
        dump(data, out)
        return 0
    if not changes:
        out.write(f"versions {a} and {b} have the same config\n")
        return 0
    for key, (old, new) in changes.items():
        out.write(f"{key}: {_show_value(old)} -> {_show_value(new)}\n")
    return 0
