"""``versionkit tag``, ``note`` and ``status``: marking versions."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from versionkit.cli._common import UsageError, dump, one_ref, resolve, table
from versionkit.errors import ConfigError

if TYPE_CHECKING:
    from versionkit.registry import Registry

Adder = Callable[[str, str], argparse.ArgumentParser]
_CLOSING = ("completed", "failed", "interrupted")
_MAX_NOTE = 10_000


def register(add: Adder) -> None:
    """Add the curation subcommands to the parser."""
    p = add("tag", "name a version (one version per tag; moving a tag is one atomic step)")
    p.add_argument("items", nargs="*", metavar="[N] NAME",
                   help="N NAME tags version N (a number, latest, best or a tag); "
                   "no arguments lists the tags")
    p.add_argument("--remove", metavar="NAME", nargs="?", const=True, default=None,
                   help="drop a tag: ROOT --remove NAME, or ROOT [N] NAME --remove")
    p = add("note", "attach a free-text note to a version (an empty text clears it)")
    p.add_argument("items", nargs="+", metavar="[N] TEXT")
    p = add("status", "close a version allocated from a shell script")
    p.add_argument("items", nargs="+", metavar="[N] STATUS",
                   help=f"STATUS is one of {', '.join(_CLOSING)}")
    p.add_argument("--error", default=None, metavar="TEXT", help="why it failed")
    p.add_argument("--force", action="store_true",
                   help="also change a finished version, or one a live process still runs")


def _ref_and_value(args: argparse.Namespace, what: str) -> tuple[str, str]:
    items: list[str] = list(args.items)
    if len(items) == 1:
        return one_ref(args, None), items[0]
    if len(items) == 2:
        return one_ref(args, items[0]), items[1]
    raise UsageError(f"expected ROOT N {what} or ROOT@N {what}, got {len(items)} arguments "
                     f"after ROOT")


def cmd_tag(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit tag``."""
    from versionkit.curate import refs

    items: list[str] = list(args.items)
    if args.remove is not None:
        return _untag(reg, args, out)
    if not items and args.root_ref is None:
        tags = refs.tags(reg)
        if args.json:
            dump(tags, out)
        elif not tags:
            out.write(f"no tags in {reg.root}\n")
        else:
            table([["TAG", "VERSION"], *[[k, str(v)] for k, v in tags.items()]], out)
        return 0
    ref, name = _ref_and_value(args, "NAME")
    refs.check_tag_name(name)  # before resolving: a bad name is the first thing to say
    n = resolve(reg, ref)
    previous = refs.set_tag(reg, name, n)
    if args.json:
        dump({"tag": name, "version": n, "previous": previous}, out)
    elif previous is None or previous == n:
        out.write(f"tagged version {n} as {name}\n")
    else:
        out.write(f"moved tag {name} from version {previous} to version {n}\n")
    return 0


def _untag(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    from versionkit.curate import refs

    items: list[str] = list(args.items)
    if isinstance(args.remove, str):
        if items or args.root_ref is not None:
            raise UsageError("expected ROOT --remove NAME, or ROOT [N] NAME --remove")
        name, expected = args.remove, None
    elif len(items) == 1 and args.root_ref is None:
        name, expected = items[0], None
    else:
        ref, name = _ref_and_value(args, "NAME")
        expected = resolve(reg, ref)
    if expected is not None:
        held = refs.lookup_tag(reg, name)
        if held is not None and held != expected:
            raise UsageError(f"tag {name} names version {held}, not {expected}; nothing removed")
    n = refs.remove_tag(reg, name)
    if args.json:
        dump({"tag": name, "version": n, "removed": True}, out)
    else:
        out.write(f"removed tag {name} (it named version {n})\n")
    return 0


def cmd_note(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit note``."""
    ref, text = _ref_and_value(args, "TEXT")
    if len(text) > _MAX_NOTE:
        raise ConfigError(f"a note is at most {_MAX_NOTE} characters, got {len(text)}")
    bad = next((c for c in text if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"a note cannot contain control characters (found {bad!r}); "
                          f"newlines and tabs are fine")
    undecoded = next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF), None)
    if undecoded is not None:
        raise ConfigError(f"a note must be UTF-8 text; it holds {undecoded!r}, a byte that "
                          f"is not UTF-8 (check the terminal's or the script's encoding)")
    n = resolve(reg, ref)
    reg.update(n, note=text or None)
    if args.json:
        dump({"version": n, "note": text or None}, out)
    else:
        out.write(f"noted version {n}\n" if text else f"cleared the note of version {n}\n")
    return 0


def cmd_status(reg: Registry, args: argparse.Namespace, out: TextIO) -> int:
    """``versionkit status``: close a shell-allocated version."""
    ref, status = _ref_and_value(args, "STATUS")
    if status not in _CLOSING:
        raise ConfigError(f"status {status!r}: expected one of {', '.join(_CLOSING)}")
    n = resolve(reg, ref)
    info = reg.get(n)
    if info.status == "untracked":
        raise UsageError(f"version {n} has no record (an untracked folder); nothing to close")
    if not args.force:
        if info.status != "running":
            raise UsageError(
                f"version {n} is already {info.status}; use --force to change it to {status}"
            )
        # A shell script's version records the shell's pid (our parent); any other live
        # process running it (a training run) must not be closed under its feet.
        here = info.host == socket.gethostname()
        own = here and info.pid == os.getppid()
        if not own and not info.is_dead:
            where = f"live process {info.pid} on {info.host}" if here else \
                f"process {info.pid} on another host ({info.host})"
            raise UsageError(
                f"version {n} is running in {where}; use --force to close it anyway"
            )
    reg.set_status(n, status, error=args.error)
    if args.json:
        dump({"version": n, "status": status}, out)
    else:
        out.write(f"version {n}: {status}\n")
    return 0
