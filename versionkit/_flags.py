"""Private command-line parsing for :func:`versionkit.config.load_config`.

The flags are generated from the schema rather than declared one by one: every leaf
field is ``--a.b.c VALUE`` (or ``--a.b.c=VALUE``), a leaf's bare name works when it is
unique, booleans also take ``--flag`` / ``--no-flag``, and a few program flags that are
not config fields (:class:`ControlFlag`) are declared by the caller.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from versionkit._emit import flow, format_str, to_plain
from versionkit._types import (
    Leaf,
    LeafIndex,
    convert_flag,
    describe_constraints,
    describe_type,
    is_bool,
    leaf_index,
    make_coercer,
)
from versionkit.errors import ConfigError

__all__ = ["ControlFlag", "ParsedArgs", "config_flags", "format_help", "parse_args"]

_TRUE_WORDS = frozenset({"true", "True", "TRUE"})
_FALSE_WORDS = frozenset({"false", "False", "FALSE"})
_NULL_WORDS = frozenset({"null", "Null", "NULL", "~"})


@dataclass(frozen=True)
class ControlFlag:
    """A program flag that is not a config field.

    Attributes:
        name: ``"resume"`` gives ``--resume VALUE``; with ``takes_value=False``,
            ``"print_config"`` gives the switch ``--print_config``.
        help: one line for ``--help``.
        takes_value: False for a switch (value True when given, or ``=true|false``).
        default: the value when the flag is absent.
    """

    name: str
    help: str
    takes_value: bool = True
    default: Any = None


@dataclass
class ParsedArgs:
    """What the command line said, before any file is read."""

    config_file: str | None = None
    config_flag: str | None = None
    overrides: list[tuple[tuple[str, ...], Any, str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    controls: dict[str, Any] = field(default_factory=dict)
    help: bool = False


def _suggest(name: str, index: LeafIndex, controls: Sequence[ControlFlag]) -> str:
    names = [*index.leaves, *(n for n, ls in index.bare.items() if len(ls) == 1)]
    names += [c.name for c in controls] + ["config", "help"]
    if "." in name:
        head = name.rsplit(".", 1)[0]
        if head in index.sections:
            names += [f"{head}.{f}" for f in index.sections[head].model_fields]
    close = difflib.get_close_matches(name, list(dict.fromkeys(names)), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"--{c}" for c in close) + "?"


def _resolve(name: str, index: LeafIndex) -> Leaf | None:
    for candidate in (name, name.replace("-", "_")):
        leaf = index.leaves.get(candidate)
        if leaf is not None:
            return leaf
        bare = index.bare.get(candidate)
        if bare:
            if len(bare) > 1:
                full = ", ".join(f"--{leaf.dotted}" for leaf in bare)
                raise ConfigError(
                    f"flag --{name} is ambiguous: it names {len(bare)} fields; "
                    f"use the full name: {full}"
                )
            return bare[0]
    return None


def _bool_word(raw: str, flag: str) -> bool:
    if raw in _TRUE_WORDS:
        return True
    if raw in _FALSE_WORDS:
        return False
    raise ConfigError(f"flag {flag}: expected true or false, given {raw!r}")


def parse_args(
    schema: type[BaseModel], argv: Sequence[str], controls: Sequence[ControlFlag]
) -> ParsedArgs:
    """Split ``argv`` into the config file, field overrides and control values.

    A field given twice (``--max_steps 5 --trainer.max_steps 7``) takes its last value,
    as argparse does, so an alias or wrapper script can append overrides.

    Raises:
        ConfigError: an unknown or ambiguous flag, ``--config`` given twice, a missing
            value, a stray positional argument, or a value that cannot be read.
    """
    index = leaf_index(schema)
    by_name = {c.name: c for c in controls}
    out = ParsedArgs(controls={c.name: c.default for c in controls})
    args = list(argv)
    if "-h" in args or "--help" in args:  # help wins over any mistake elsewhere on the line
        out.help = True
        return out
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--") or token == "--":
            if token.startswith("-") and len(token) > 1 and not token[1].isdigit():
                raise ConfigError(
                    f"unknown flag {token}{_suggest(token.lstrip('-'), index, controls)} "
                    "(flags start with two dashes; --help lists them)"
                )
            raise ConfigError(
                f"unexpected argument {token!r}: config values are given as --name VALUE "
                "(e.g. --max_steps 7); --help lists them"
            )
        name, eq, inline = token[2:].partition("=")
        has_inline = bool(eq)

        def value(what: Callable[[], str], name: str = name, has_inline: bool = has_inline,
                  inline: str = inline, token: str = token) -> tuple[str, str]:
            nonlocal i
            if has_inline:
                return inline, token
            if i < len(args) and not args[i].startswith("--"):
                i += 1
                return args[i - 1], f"{token} {args[i - 1]}"
            raise ConfigError(f"flag --{name} needs a value ({what()}), e.g. --{name}=VALUE")

        if name == "config":
            path, _ = value(partial(str, "a YAML file path"))
            if not path:
                raise ConfigError("flag --config needs a value (a YAML file path), not ''")
            if out.config_file is not None:
                raise ConfigError(
                    f"--config given twice ({out.config_file!r} and {path!r}); give one file"
                )
            out.config_file = path
            out.config_flag = token
            continue
        control = by_name.get(name) or by_name.get(name.replace("-", "_"))
        negated_switch = None
        if control is None and name[:3] in ("no-", "no_"):
            negated_switch = by_name.get(name[3:]) or by_name.get(name[3:].replace("-", "_"))
            if negated_switch is not None and not negated_switch.takes_value:
                if has_inline:
                    raise ConfigError(f"flag {token}: --no-... takes no value")
                out.controls[negated_switch.name] = False
                continue
        if control is not None:
            if control.takes_value:
                out.controls[control.name], _ = value(partial(str, control.help))
            elif has_inline:
                out.controls[control.name] = _bool_word(inline, token)
            elif i < len(args) and (args[i] in _TRUE_WORDS or args[i] in _FALSE_WORDS):
                out.controls[control.name] = _bool_word(args[i], f"{token} {args[i]}")
                i += 1
            else:
                out.controls[control.name] = True
            continue
        leaf = _resolve(name, index)
        negated = False
        if leaf is None and name[:3] in ("no-", "no_"):
            target = _resolve(name[3:], index)
            if target is not None and is_bool(target.annotation):
                leaf, negated = target, True
        if leaf is None:
            dotted = name if name in index.sections else name.replace("-", "_")
            if dotted in index.sections:
                section = index.sections[dotted]
                if dotted in index.nullable and has_inline and inline in _NULL_WORDS:
                    out.overrides.append((tuple(dotted.split(".")), None, token))
                    out.flags.append(token)
                    continue
                first = next(iter(section.model_fields), "FIELD")
                raise ConfigError(
                    f"flag --{name} names a group of fields, not a value; set one of its "
                    f"fields, e.g. --{name}.{first} VALUE"
                )
            raise ConfigError(
                f"unknown flag --{name}{_suggest(name, index, controls)} "
                "(--help lists every flag)"
            )
        used = [token]
        if negated:
            if has_inline:
                raise ConfigError(f"flag {token}: --no-... takes no value")
            raw, text = "false", token
        elif has_inline:
            raw, text = inline, token
        elif is_bool(leaf.annotation):
            # there are no positional arguments, so a following non-flag is the value
            if i < len(args) and not args[i].startswith("--"):
                raw, text = args[i], f"{token} {args[i]}"
                used.append(args[i])
                i += 1
            else:
                raw, text = "true", token
        else:
            raw, text = value(partial(describe_type, leaf.annotation))
            if text != token:
                used.append(raw)
        out.overrides.append((leaf.path, convert_flag(leaf.annotation, raw, text), text))
        out.flags.extend(used)
    return out


def _default_text(leaf: Leaf) -> str:
    info = leaf.info
    if info.default is PydanticUndefined and info.default_factory is None:
        return "(required)"
    try:
        default = info.get_default(call_default_factory=True, validated_data={})
        return flow(to_plain(default))
    except Exception:  # a factory that needs other fields, or an odd value: still show help
        return "(computed)"


def format_help(
    schema: type[BaseModel],
    *,
    prog: str,
    description: str | None,
    controls: Sequence[ControlFlag],
    width: int = 100,
) -> str:
    """The ``--help`` text: usage, program flags, then every config field with its type,
    default and description, grouped by section."""
    index = leaf_index(schema)
    lines = [f"usage: {prog} [--config FILE] [--FIELD VALUE ...]", ""]
    if description:
        lines += [*textwrap.wrap(description, width), ""]
    lines += [
        "Values come from the schema defaults, then --config FILE, then flags (flags win,",
        "in any order). Each field is --a.b VALUE or --a.b=VALUE; a field's bare name works",
        "when it is unique. Booleans: --flag, --no-flag, --flag true|false. Lists: 1,2,3 or",
        "'[1, 2, 3]'. null sets None.",
        "",
        "program flags:",
    ]
    indent = " " * 8
    programs = [("--config FILE", "YAML config file."), ("-h, --help", "Show this help and exit.")]
    programs += [(f"--{c.name}" + (" VALUE" if c.takes_value else ""), c.help) for c in controls]
    for head, text in programs:
        lines.append(f"  {head}")
        lines += textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)
    for dotted in sorted(index.nullable):
        lines.append(f"  --{dotted}=null")
        lines.append(f"{indent}Leave the optional section {dotted} out (set its fields to use it).")
    section: str | None = "\0"  # no section yet
    for leaf in index.leaves.values():
        parent = ".".join(leaf.path[:-1]) or None
        if parent != section:
            section = parent
            lines += ["", f"{parent}:" if parent else "fields:"]
        names = f"--{leaf.dotted}"
        if len(leaf.path) > 1 and len(index.bare.get(leaf.path[-1], ())) == 1:
            names += f" (or --{leaf.path[-1]})"
        kind = describe_type(leaf.annotation)
        bounds = describe_constraints(leaf.info.metadata)
        kind = f"{kind} {bounds}" if bounds else kind
        lines.append(f"  {names}  {kind}, default {_default_text(leaf)}")
        if leaf.info.description:
            lines += textwrap.wrap(leaf.info.description, width, initial_indent=indent,
                                   subsequent_indent=indent)
    return "\n".join(lines) + "\n"


_UNREADABLE = object()


def _flag_text(tp: Any, value: Any) -> str:
    if value is None:
        return "null"
    plain = to_plain(value)
    if isinstance(plain, str):
        try:
            back = convert_flag(tp, plain, "--x")
        except ConfigError:
            back = _UNREADABLE
        coercer = make_coercer(tp)
        if coercer is not None:
            back = coercer(back)
        if type(back) is type(value) and back == value:
            return plain  # raw text reads back as itself (str, path, enum, literal)
    if isinstance(plain, str):
        return format_str(plain) if format_str(plain).startswith('"') else f'"{plain}"'
    return flow(plain)


def config_flags(config: BaseModel) -> list[str]:
    """Flags (``--a.b=VALUE``) that :func:`parse_args` reads back into ``config``."""
    index = leaf_index(type(config))
    flags: list[str] = []
    nulled: list[tuple[str, ...]] = []
    for dotted, section in index.sections.items():
        del section
        value: Any = config
        path = tuple(dotted.split("."))
        for part in path:
            value = None if value is None else getattr(value, part)
        if value is None and not any(path[: len(p)] == p for p in nulled):
            nulled.append(path)
            flags.append(f"--{dotted}=null")
    for leaf in index.leaves.values():
        if any(leaf.path[: len(p)] == p for p in nulled):
            continue
        value = config
        for part in leaf.path:
            value = getattr(value, part)
        flags.append(f"--{leaf.dotted}={_flag_text(leaf.annotation, value)}")
    return flags
