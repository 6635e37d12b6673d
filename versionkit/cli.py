"""The ``versionkit`` command: allocate, list, show, best, diff, repair, schema.

Every subcommand takes ``--backend URI`` (default ``$VERSIONKIT_BACKEND``, else
``file``) and ``--json`` (machine-readable output on stdout). Errors print one line,
``error: ...``, on stderr and exit non-zero: 2 for usage and config mistakes, 1 for
the rest. Imports stay lazy so ``versionkit list`` starts fast (no pydantic, no torch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from versionkit.errors import ConfigError, RegistryError, VersionkitError

if TYPE_CHECKING:
    from versionkit.registry import CheckpointInfo, Registry, VersionInfo

__all__ = ["main"]

_READ_ONLY = {"list", "show", "best", "diff", "repair"}


class UsageError(VersionkitError):
    """A command line that names something that is not there (exit status 2)."""

    exit_code = 2


def _version_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0 or not text.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a version number (an integer >= 0), got {text!r}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="versionkit",
        description="Atomic experiment versions: allocate and query checkpoints/logs version_N.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend",
        metavar="URI",
        default=None,
        help="registry backend: file (default), memory://name, sqlite:///path.db, "
        "postgresql://...; default $VERSIONKIT_BACKEND, else file",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument(
        "--experiment",
        metavar="KEY",
        default=None,
        help="experiment key in a shared backend (default: the resolved ROOT path)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name != "schema":
            p.add_argument(
                "root", metavar="ROOT", help="experiment folder, e.g. outputs/fractalgen"
            )
        return p

    p = add("allocate", "allocate a new version and create its checkpoint and log folders")
    p.add_argument("--seed", type=int, default=None, help="seed to record")
    p = add("list", "list the versions of an experiment (dead runs are marked 'dead')")
    p.add_argument("--sweep", metavar="STUDY", default=None,
                   help="only the versions that the trials of sweep STUDY made")
    p = add("show", "show everything recorded about one version")
    p.add_argument("version", metavar="N", type=_version_arg)
    p = add("best", "the best checkpoint by a metric, over every version")
    p.add_argument("--metric", default="val_loss", help="metric name (default: val_loss)")
    p.add_argument("--mode", choices=("min", "max"), default="min", help="min (default) or max")
    p.add_argument(
        "--version",
        dest="only",
        type=_version_arg,
        default=None,
        metavar="N",
        help="only look at version N",
    )
    p = add("diff", "what changed between two versions' configs")
    p.add_argument("a", metavar="A", type=_version_arg)
    p.add_argument("b", metavar="B", type=_version_arg)
    add("repair", "rebuild the registry state from what is on disk (never lowers numbers)")
    p = add("schema", "print the JSON Schema of a config class")
    p.add_argument("target", metavar="MODULE:Class", help="e.g. fractalgen.config:TrainConfig")
    return parser


# -- output helpers -------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """NaN and infinities -> None: strict JSON parsers (jq, JavaScript) reject NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dump(value: Any, out: TextIO) -> None:
    text = json.dumps(_finite(value), indent=2, ensure_ascii=False, default=str, allow_nan=False)
    out.write(text + "\n")


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def _when(stamp: str | None) -> str:
    if not stamp:
        return "-"
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return stamp


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value, default=str)


def _metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    items = [f"{k}={_number(v)}" for k, v in sorted(metrics.items())[:limit]]
    if len(metrics) > limit:
        items.append(f"(+{len(metrics) - limit})")
    return " ".join(items) or "-"


def _git(info: VersionInfo) -> str:
    if not info.git_commit:
        return "-"
    return info.git_commit[:8] + ("*" if info.git_dirty else "")


# -- commands -------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Registry:
    from versionkit.backends import ENV_VAR, scheme_of
    from versionkit.registry import Registry

    root = Path(args.root)
    uri = args.backend or os.environ.get(ENV_VAR) or "file"
    if args.command in _READ_ONLY and scheme_of(uri) == "file" and not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UsageError(f"experiment root {root} {what}")
    return Registry(args.root, uri, experiment=args.experiment)  # str: Registry refuses ""


def _cmd_allocate(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    # This process ends at once; the run that uses the number is the caller (a shell
    # script), so its pid is the one the dead-run check should follow.
    info = reg.allocate(
        seed=args.seed,
        command=["versionkit", *sys.argv[1:]],
        extra={"pid": os.getppid(), "allocated_by": "versionkit allocate"},
    )
    if args.json:
        _dump(
            {
                "version": info.version,
                "status": info.status,
                "checkpoint_dir": str(info.checkpoint_dir),
                "log_dir": str(info.log_dir),
            },
            out,
        )
    else:
        out.write(f"✓ Experiment version: {info.version}\n")
        out.write(f"✓ Checkpoint dir: {info.checkpoint_dir}\n")
        out.write(f"✓ Log dir: {info.log_dir}\n")
    return 0


def _cmd_list(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    versions = reg.list()
    if args.sweep is not None:
        from versionkit.sweep.records import sweep_versions

        versions = sweep_versions(versions, args.sweep)
    if args.json:
        _dump([v.to_json() for v in versions], out)
        return 0
    if not versions:
        of = f" of sweep {args.sweep}" if args.sweep is not None else ""
        out.write(f"no versions{of} in {reg.root}\n")
        return 0
    rows = [["VERSION", "STATUS", "CREATED", "ENDED", "HOST", "PID", "GIT", "CONFIG", "METRICS"]]
    for v in versions:
        rows.append(
            [
                str(v.version),
                v.display_status,
                _when(v.created_at),
                _when(v.ended_at),
                v.host or "-",
                str(v.pid) if v.pid is not None else "-",
                _git(v),
                (v.config_hash or "-")[:8],
                _metrics(v.metrics),
            ]
        )
    _table(rows, out)
    return 0


def _checkpoint_rows(checkpoints: list[CheckpointInfo]) -> list[list[str]]:
    rows = [["STEP", "METRICS", "PATH"]]
    for c in checkpoints:
        rows.append([str(c.step) if c.step is not None else "-", _metrics(c.metrics), str(c.path)])
    return rows


def _cmd_show(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    info = reg.get(args.version)
    checkpoints = reg.checkpoints(args.version)
    if args.json:
        data = info.to_json()
        data["checkpoint_files"] = [c.to_json() for c in checkpoints]
        _dump(data, out)
        return 0
    fields = [
        ("version", str(info.version)),
        ("status", info.display_status),
        ("created", _when(info.created_at)),
        ("ended", _when(info.ended_at)),
        ("host", info.host or "-"),
        ("user", info.user or "-"),
        ("pid", str(info.pid) if info.pid is not None else "-"),
        ("command", " ".join(info.command) or "-"),
        ("git", (info.git_commit or "-") + (" (dirty)" if info.git_dirty else "")),
        ("seed", str(info.seed) if info.seed is not None else "-"),
        ("config hash", info.config_hash or "-"),
        (
            "versions",
            f"python {info.python or '-'}, torch {info.torch or '-'}, "
            f"lightning {info.lightning or '-'}, versionkit {info.versionkit or '-'}",
        ),
        ("checkpoint dir", str(info.checkpoint_dir)),
        ("log dir", str(info.log_dir)),
        ("metrics", _metrics(info.metrics, limit=20)),
    ]
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
        _table(_checkpoint_rows(checkpoints), out)
    return 0


def _cmd_best(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    best = reg.best(args.metric, args.mode, version=args.only)
    if best is None:
        scope = f"version {args.only}" if args.only is not None else str(reg.root)
        raise RegistryError(f"no existing checkpoint in {scope} has a {args.metric!r} value")
    value = best.metrics[args.metric]
    if args.json:
        data: dict[str, Any] = {
            "path": str(best.path),
            "version": best.version,
            "step": best.step,
            args.metric: value,
            "metric": args.metric,
            "mode": args.mode,
            "metrics": best.metrics,
        }
        _dump(data, out)
    else:
        out.write(f"best {args.metric} ({args.mode}): {_number(value)}\n")
        out.write(f"version: {best.version}\nstep: {best.step if best.step is not None else '-'}\n")
        out.write(f"path: {best.path}\n")
    return 0


def _cmd_diff(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    changes = reg.diff(args.a, args.b)
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
        _dump(data, out)
        return 0
    if not changes:
        out.write(f"versions {args.a} and {args.b} have the same config\n")
        return 0

    def show(value: Any) -> str:
        return "(missing)" if value is MISSING else json.dumps(value, default=str)

    for key, (old, new) in changes.items():
        out.write(f"{key}: {show(old)} -> {show(new)}\n")
    return 0


def _cmd_repair(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    report = reg.repair()
    if args.json:
        _dump(report, out)
        return 0
    for action in report.get("actions", []):
        out.write(f"- {action}\n")
    if not report.get("actions"):
        out.write("registry state is consistent; nothing to repair\n")
    untracked = report.get("untracked_folders") or []
    if untracked:
        out.write(f"untracked version folders (no record): {', '.join(map(str, untracked))}\n")
    out.write(f"next version number: {report['next_number']}\n")
    return 0


def _cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    import importlib

    module_name, sep, attr = args.target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"expected MODULE:Class (e.g. fractalgen.config:TrainConfig), got {args.target!r}"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing (a SyntaxError...)
        raise ConfigError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    cls = module
    for part in attr.split("."):
        if not hasattr(cls, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
        cls = getattr(cls, part)
    from versionkit.config import ConfigModel, json_schema

    if not (isinstance(cls, type) and issubclass(cls, ConfigModel)):
        raise ConfigError(f"{args.target} is not a versionkit ConfigModel subclass")
    _dump(json_schema(cls), out)
    return 0


_COMMANDS = {
    "allocate": _cmd_allocate,
    "list": _cmd_list,
    "show": _cmd_show,
    "best": _cmd_best,
    "diff": _cmd_diff,
    "repair": _cmd_repair,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``versionkit`` command line; returns the exit status.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for usage and config errors, 1 for other registry errors.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out = sys.stdout
    try:
        if args.command == "schema":
            return _cmd_schema(args, out)
        with _open(args) as reg:
            return _COMMANDS[args.command](reg, args, out)
    except VersionkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:  # `versionkit list ROOT | head`
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
