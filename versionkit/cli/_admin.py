"""``versionkit allocate``, ``repair`` and ``schema``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from versionkit.cli._common import dump
from versionkit.errors import ConfigError

if TYPE_CHECKING:
    from versionkit.registry import Registry

Adder = Callable[[str, str], argparse.ArgumentParser]


def register_allocate(add: Adder) -> None:
    """``allocate`` comes first in ``--help``."""
    p = add("allocate", "allocate a new version and create its checkpoint and log folders")
    p.add_argument("--seed", type=int, default=None, help="seed to record")


def register_rest(add: Adder) -> None:
    """``repair`` and ``schema`` come last in ``--help``."""
    add("repair", "rebuild the registry state from what is on disk (never lowers numbers)")
    p = add("schema", "print the JSON Schema of a config class")
    p.add_argument("target", metavar="MODULE:Class", help="e.g. fractalgen.config:TrainConfig")


def cmd_allocate(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit allocate``."""
    # This process ends at once; the run that uses the number is the caller (a shell
    # script), so its pid is the one the dead-run check should follow.
    info = reg.allocate(
        seed=args.seed,
        command=["versionkit", *sys.argv[1:]],
        extra={"pid": os.getppid(), "allocated_by": "versionkit allocate"},
    )
    if args.json:
        dump(
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


def cmd_repair(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit repair``."""
    report = reg.repair()
    if args.json:
        dump(report, out)
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


def cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit schema MODULE:Class``."""
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
    dump(json_schema(cls), out)
    return 0
