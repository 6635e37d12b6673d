"""``versionkit gc``, ``export`` and ``import``: freeing disk and sharing versions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from versionkit.cli._common import UsageError, dump, human_bytes, one_ref, resolve
from versionkit.errors import ConfigError

if TYPE_CHECKING:
    from versionkit.curate.gc import GcPlan
    from versionkit.registry import Registry

Adder = Callable[[str, str], argparse.ArgumentParser]


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def register(add: Adder) -> None:
    """Add ``gc``, ``export`` and ``import``."""
    p = add("gc", "delete checkpoints beyond a retention policy (never a running version, a "
                  "tagged version's best and last, or the experiment's best)")
    p.add_argument("--keep-best", type=_count, default=1, metavar="K",
                   help="per version, keep the K best checkpoints by --metric (default 1)")
    p.add_argument("--keep-last", type=_count, default=1, metavar="K",
                   help="per version, keep the K most recent checkpoints, last.ckpt first "
                   "(default 1)")
    p.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                   help="only delete checkpoints not modified for DAYS days")
    p.add_argument("--metric", default="val_loss", help="metric ranking checkpoints")
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--versions", action="store_true",
                   help="also remove whole folders (checkpoints and logs) of failed and "
                   "interrupted versions")
    p.add_argument("--yes", action="store_true", help="do not ask before removing versions")
    p.add_argument("--dry-run", action="store_true", help="only print what would go")
    p = add("export", "write one version to a .tar.gz (config, checkpoints, logs, record)")
    p.add_argument("items", nargs="+", metavar="[N] FILE.tar.gz")
    p.add_argument("--checkpoints", default="best,last", metavar="WHICH",
                   help="best, last, all, or best,last (default)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p = add("import", "import an exported version into ROOT2 as a new version")
    p.add_argument("archive", metavar="FILE.tar.gz")
    p.add_argument("root", metavar="ROOT2", help="experiment folder to import into")


def _print_plan(done: GcPlan, reg: Registry, dry_run: bool, out: TextIO) -> None:
    verb = "would remove" if dry_run else "removed"
    for r in done.checkpoints:
        out.write(f"{verb} {os.path.join(r.folder, r.name)} ({human_bytes(r.bytes)})\n")
    for n, size in sorted(done.versions.items()):
        out.write(f"{verb} version {n}: {reg.checkpoint_dir(n)} and {reg.log_dir(n)} "
                  f"({human_bytes(size)})\n")
    running = done.skipped.get("running")
    if running:
        out.write(f"left running versions alone: {', '.join(map(str, sorted(running)))}\n")
    what = f"{len(done.checkpoints)} checkpoint(s)"
    if done.versions:
        what += f" and {len(done.versions)} version folder(s)"
    freed = "would free" if dry_run else "freed"
    out.write(f"{verb} {what}; {freed} {human_bytes(done.bytes)}\n")


def cmd_gc(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit gc``."""
    from versionkit.curate import gc

    todo = gc.plan(reg, keep_best=args.keep_best, keep_last=args.keep_last,
                   older_than_days=args.older_than, metric=args.metric, mode=args.mode,
                   versions=args.versions)
    if todo.versions and not args.dry_run and not args.yes:
        numbers = ", ".join(map(str, sorted(todo.versions)))
        if not sys.stdin.isatty():
            raise UsageError(f"gc --versions would remove whole versions {numbers}; "
                             f"pass --yes to confirm (or --dry-run to look first)")
        sys.stderr.write(f"remove the folders of versions {numbers} "
                         f"({human_bytes(sum(todo.versions.values()))})? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            sys.stderr.write("nothing removed\n")
            return 1
    done = todo if args.dry_run else gc.apply(reg, todo)
    if args.json:
        # Thousands of entries, and no float among them: plain compact JSON.
        out.write(json.dumps({"dry_run": bool(args.dry_run), **done.to_json()}) + "\n")
    else:
        _print_plan(done, reg, args.dry_run, out)
    return 0


def cmd_export(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit export ROOT N FILE.tar.gz``."""
    from versionkit.curate.archive import export_version

    items: list[str] = list(args.items)
    if len(items) == 1:
        ref, dest = one_ref(args, None), items[0]
    elif len(items) == 2:
        ref, dest = one_ref(args, items[0]), items[1]
    else:
        raise UsageError("expected ROOT N FILE.tar.gz or ROOT@N FILE.tar.gz")
    if not dest.strip():
        raise ConfigError("the archive's file name is empty")
    n = resolve(reg, ref)
    summary = export_version(reg, n, Path(dest), checkpoints=args.checkpoints,
                             overwrite=args.force)
    if args.json:
        dump(summary, out)
    else:
        out.write(f"exported version {n} to {dest}: {summary['files']} files, "
                  f"{human_bytes(summary['bytes'])}\n")
    return 0


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit import FILE.tar.gz ROOT2``: validated fully before the first write."""
    from versionkit.backends import ENV_VAR
    from versionkit.curate.archive import import_version
    from versionkit.registry import Registry

    if not str(args.root).strip():
        raise UsageError("the target root is empty: expected a folder, e.g. outputs/exp")
    uri = args.backend or os.environ.get(ENV_VAR) or "file"
    with Registry(Path(args.root), uri, experiment=args.experiment) as reg:
        result = import_version(Path(args.archive), reg)
    if args.json:
        dump({"version": result.version, "checkpoint_dir": str(result.checkpoint_dir),
              "log_dir": str(result.log_dir), "files": result.files, "bytes": result.bytes,
              "imported_from": result.source}, out)
    else:
        src = result.source
        out.write(f"✓ Imported {src.get('host')}:{src.get('root')} version {src.get('version')} "
                  f"as version {result.version}\n")
        out.write(f"✓ Checkpoint dir: {result.checkpoint_dir}\n")
        out.write(f"✓ Log dir: {result.log_dir}\n")
    return 0
