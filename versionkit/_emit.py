"""Private canonical YAML writer used by :mod:`versionkit.config`.

One text per value: mappings in the given (schema) order as block YAML, lists of
scalars in flow style, strings plain only when every YAML reader (1.1 and 1.2) agrees
they are that string, floats written so they read back exactly. This is what makes a
config hash stable.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import PurePath
from typing import Any

import yaml
from pydantic import BaseModel

from versionkit._yaml import resolve_plain

__all__ = ["emit", "flow", "format_float", "format_scalar", "format_str", "to_plain"]

_TAG = "tag:yaml.org,2002:"
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./+-]*\Z")
_YAML11 = yaml.resolver.Resolver()
_ESCAPES = {
    "\0": "\\0",
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    "\x1b": "\\e",
    '"': '\\"',
    "\\": "\\\\",
}


def _escape_char(ch: str) -> str:
    known = _ESCAPES.get(ch)
    if known is not None:
        return known
    o = ord(ch)
    if 0x20 <= o <= 0x7E or (
        o >= 0xA0
        and not 0xD800 <= o <= 0xDFFF
        and o not in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF)
    ):
        return ch
    if o <= 0xFF:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}"


@lru_cache(maxsize=4096)
def format_str(text: str) -> str:
    """Write a string as a YAML scalar: plain when every YAML reader agrees it is that
    string (YAML 1.2 and 1.1 alike), double-quoted with escapes otherwise."""
    if (
        _PLAIN.match(text)
        and isinstance(resolve_plain(text), str)
        and _YAML11.resolve(yaml.ScalarNode, text, (True, False)) == _TAG + "str"  # type: ignore[no-untyped-call]
    ):
        return text
    return '"' + "".join(_escape_char(ch) for ch in text) + '"'


def format_float(value: float) -> str:
    """Shortest text that reads back as exactly this float, in every YAML version.

    ``repr`` round-trips exactly; a mantissa without a dot gets ``.0`` (``1.0e-05``)
    because YAML 1.1 readers need the dot to see a float.
    """
    if value != value:
        return ".nan"
    if value == math.inf:
        return ".inf"
    if value == -math.inf:
        return "-.inf"
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{exponent}"
    return text


def format_scalar(value: Any) -> str:
    """Canonical YAML text of None, a bool, an int, a float or a str."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return format_str(value)
    raise TypeError(f"cannot write {type(value).__name__} to YAML")


def _is_flow(value: Any) -> bool:
    if isinstance(value, dict):
        return not value
    if isinstance(value, list):
        return all(_is_flow(v) for v in value)
    return True


def flow(value: Any) -> str:
    """One-line (flow style) YAML text of a plain value: ``[1, 2]``, ``{a: 1}``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{format_str(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return format_scalar(value)


def _emit_map(value: dict[str, Any], indent: int, out: list[str]) -> None:
    pad = " " * indent
    for key, item in value.items():
        name = format_str(key)
        if _is_flow(item):
            out.append(f"{pad}{name}: {flow(item)}")
        else:
            out.append(f"{pad}{name}:")
            if isinstance(item, dict):
                _emit_map(item, indent + 2, out)
            else:
                _emit_seq(item, indent + 2, out)


def _emit_seq(value: list[Any], indent: int, out: list[str]) -> None:
    pad = " " * indent
    for item in value:
        if _is_flow(item):
            out.append(f"{pad}- {flow(item)}")
        elif isinstance(item, dict):
            start = len(out)
            _emit_map(item, indent + 2, out)
            out[start] = f"{pad}- {out[start][indent + 2 :]}"
        else:
            out.append(f"{pad}-")
            _emit_seq(item, indent + 2, out)


def emit(value: dict[str, Any], header: Sequence[str] = ()) -> str:
    """Canonical block-style YAML of a plain mapping (keys kept in the given order).

    Args:
        value: a mapping of str to plain values (dict, list, None, bool, int, float, str).
        header: lines written first as ``# `` comments (a line may hold newlines).

    Returns:
        The text, ending with a newline.
    """
    out: list[str] = []
    for line in header:
        for part in str(line).splitlines() or [""]:
            # a comment cannot hold control characters; show them escaped instead
            text = "".join(ch if ch == "\t" or ch in '"\\' else _escape_char(ch) for ch in part)
            out.append(f"# {text}".rstrip())
    if value:
        _emit_map(value, 0, out)
    else:
        out.append("{}")
    return "\n".join(out) + "\n"


def to_plain(value: Any) -> Any:
    """Turn a config (or any value in one) into plain YAML data: dicts in field order,
    lists, str, int, float, bool, None. Paths become strings, enums their values,
    tuples lists, sets sorted lists, dict keys sorted."""
    if isinstance(value, BaseModel):
        return {name: to_plain(getattr(value, name)) for name in type(value).model_fields}
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_plain(v) for v in value), key=flow)
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"config mapping keys must be strings, got {key!r}")
            items.append((key, to_plain(item)))
        return dict(sorted(items))
    raise TypeError(f"cannot write a {type(value).__name__} to a config: {value!r}")

