"""The ``versionkit`` command: allocate, list, show, best, diff, tag, note, status, gc,
export, import, repair, schema.

Every subcommand takes ``--backend URI`` (default ``$VERSIONKIT_BACKEND``, else
``file``) and ``--json`` (machine-readable output on stdout). Wherever a version is
expected, ``N``, ``latest``, ``best`` or a tag work, and ``ROOT@REF`` names one too.
Errors print one line, ``error: ...``, on stderr, with the exit codes of
``versionkit.errors``: 2 for usage and input mistakes, 3 when something named is not
there, 1 for the rest. Imports stay lazy so ``versionkit list`` starts fast (no
pydantic, no torch).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from versionkit.cli import _admin, _curate, _query, _share
from versionkit.cli._common import UsageError, open_registry, split_root
from versionkit.errors import VersionkitError

if TYPE_CHECKING:
    from versionkit.registry import Registry

__all__ = ["UsageError", "main"]

Command = Callable[["Registry", argparse.Namespace, TextIO], int]

_COMMANDS: dict[str, Command] = {
    "allocate": _admin.cmd_allocate,
    "list": _query.cmd_list,
    "show": _query.cmd_show,
    "best": _query.cmd_best,
    "diff": _query.cmd_diff,
    "tag": _curate.cmd_tag,
    "note": _curate.cmd_note,
    "status": _curate.cmd_status,
    "gc": _share.cmd_gc,
    "export": _share.cmd_export,
    "repair": _admin.cmd_repair,
}
#: Commands whose ROOT may carry ``@REF``.
_TAKES_REF = {"show", "best", "diff", "tag", "note", "status", "export"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="versionkit",
        description="Atomic experiment versions: allocate, compare and curate "
        "checkpoints/logs version_N.",
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
        if name not in ("schema", "import"):
            p.add_argument(
                "root", metavar="ROOT", help="experiment folder, e.g. outputs/fractalgen"
                + (" (ROOT@N, ROOT@latest, ROOT@best, ROOT@TAG name a version)"
                   if name in _TAKES_REF else "")
            )
        return p

    _admin.register_allocate(add)
    _query.register(add)
    _curate.register(add)
    _share.register(add)
    _admin.register_rest(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``versionkit`` command line; returns the exit status.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for usage and input mistakes, 3 when a version, tag or
        checkpoint is not found, 1 for other errors, 130 when interrupted.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out = sys.stdout
    try:
        if args.command == "schema":
            return _admin.cmd_schema(args, out)
        if args.command == "import":
            return _share.cmd_import(args, out)
        if args.command in _TAKES_REF:
            split_root(args)
        else:
            args.root_ref = None
        with open_registry(args) as reg:
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
