"""Private translation of pydantic's ValidationError into one clear ConfigError.

Each problem becomes one line: the dotted field path, what was expected and what was
given, where the value came from (``file:line:col``, the flag, or the schema default),
and for unknown keys a "did you mean ...?".
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, ValidationError

from versionkit._emit import flow, to_plain
from versionkit._types import item_type, leaf_index, loc_text, model_of, strip
from versionkit._yaml import Loc, Mark
from versionkit.errors import ConfigError

__all__ = ["Sources", "validate"]

M = TypeVar("M", bound=BaseModel)
MAX_SHOWN = 10  # problems listed in one error; the count says how many there are

@dataclass
class Sources:
    """Where each value came from: the file's positions and the flags."""

    file: str | None
    locs: dict[Loc, Mark]
    flags: dict[tuple[str, ...], str]

    def where(self, loc: Loc, *, leaf_len: int) -> str:
        for k in range(len(loc), 0, -1):
            flag = self.flags.get(loc[:k])  # type: ignore[arg-type]
            if flag is not None:
                return f"from flag {flag}"
        for k in range(len(loc), -1, -1):
            mark = self.locs.get(loc[:k])
            if mark is not None and (k >= leaf_len or k == len(loc)):
                return f"at {self.file}:{mark[0]}:{mark[1]}"
            if mark is not None:
                break
        if self.file is not None and not self.locs:
            return f"in {self.file}"
        return "schema default"


def _clean_loc(schema: type[BaseModel], raw: tuple[Any, ...]) -> tuple[Loc, type[BaseModel]]:
    # pydantic's loc also names union members ('int', 'list[int]'); keep only the path.
    out: list[str | int] = []
    tp: Any = schema
    owner: type[BaseModel] = schema
    for part in raw:
        model = model_of(tp) if tp is not None else None
        if model is not None and isinstance(part, str):
            owner = model
            out.append(part)
            info = model.model_fields.get(part)
            tp = info.annotation if info is not None else None
        elif isinstance(part, int):
            out.append(part)
            tp = item_type(tp, part) if tp is not None else None
        elif tp is None or isinstance(strip(tp), type) or get_origin(strip(tp)) is dict:
            out.append(part)
            tp = item_type(tp, 0) if tp is not None else None
    return tuple(out), owner


def _given(value: Any) -> str:
    if isinstance(value, (dict, BaseModel)):
        return ""
    try:
        text = repr(value) if isinstance(value, str) else flow(to_plain(value))
    except TypeError:
        text = repr(value)
    return f", given {text[:77] + '...' if len(text) > 80 else text}"


def _expected(msg: str) -> str:
    if msg.startswith("Input should be "):
        return "expected " + msg[len("Input should be ") :]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    return msg[:1].lower() + msg[1:] if msg[:2] != msg[:2].upper() else msg


def _did_you_mean(key: str, owner: type[BaseModel], schema: type[BaseModel]) -> str:
    names = [n for n in owner.model_fields if not (owner is schema and n == "schema_version")]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    index = leaf_index(schema)
    elsewhere = [leaf.dotted for leaf in index.bare.get(key, [])]
    elsewhere += [s for s in index.sections if s.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean '{elsewhere[0]}'?"
    return f"; valid fields here: {', '.join(names)}"


_BOOLISH = frozenset({"yes", "no", "on", "off", "y", "n", "0", "1"})


def _allows_inf_nan(schema: type[BaseModel], loc: Loc) -> bool:
    leaf = leaf_index(schema).leaves.get(".".join(p for p in loc if isinstance(p, str)))
    if leaf is None:
        return False
    return any(getattr(m, "allow_inf_nan", None) is True for m in leaf.info.metadata)


def _hint(kind: str, given: Any, inf_nan_ok: bool) -> str:
    # the usual YAML surprises, explained where they happen
    if kind == "finite_number":
        if isinstance(given, float) and math.isnan(given):
            return "; nan is not allowed here; give a finite number"
        return ("; infinity is not allowed here; give a finite number (a number beyond "
                "about 1.8e308 reads as infinity)")
    if kind == "float_type" and isinstance(given, str):
        try:
            number = float(given)
        except ValueError:
            number = 0.0
        if not math.isfinite(number):
            if inf_nan_ok:
                return "; YAML writes infinity as .inf or -.inf, and nan as .nan"
            return "; infinity and nan are not allowed here; give a finite number"
    if kind == "string_type" and isinstance(given, (bool, int, float)):
        return "; quote it to make it a string"
    if kind == "bool_type" and isinstance(given, str) and given.lower() in _BOOLISH:
        return "; only true and false are booleans"
    if kind == "int_type" and isinstance(given, float) and given.is_integer():
        return f"; write {int(given)}"
    if kind in ("int_type", "float_type", "bool_type") and isinstance(given, str):
        try:
            float(given)
        except ValueError:
            return ""
        return "; remove the quotes to make it a number"
    return ""


def _map_errors(exc: ValidationError, schema: type[BaseModel], src: Sources) -> ConfigError:
    lines: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc, owner = _clean_loc(schema, err["loc"])
        kind = err["type"]
        dotted = loc_text(loc)
        leaf_len = max((i + 1 for i, p in enumerate(loc) if isinstance(p, str)), default=0)
        if kind == "extra_forbidden":
            text = (f"unknown field ({src.where(loc, leaf_len=leaf_len)})"
                    f"{_did_you_mean(str(loc[-1]), owner, schema)}")
        elif kind == "missing":
            flag = ".".join(str(p) for p in loc if isinstance(p, str))
            place = ""
            mark = src.locs.get(loc[:-1]) if loc[:-1] else None
            if mark is not None:
                place = f" (the section at {src.file}:{mark[0]}:{mark[1]})"
            elif src.file is not None:
                place = f" ({src.file})"
            text = (f"required field is missing; set it in the config file{place} "
                    f"or with --{flag} VALUE")
        else:
            text = _expected(str(err["msg"]))
            if kind not in ("value_error", "assertion_error") or not isinstance(
                err.get("input"), (dict, BaseModel)
            ):
                text += _given(err.get("input"))
            cause = (err.get("ctx") or {}).get("error")
            fields = getattr(cause, "fields", ())
            if fields:
                parts = []
                for f in fields:
                    sub: Loc = (*loc, *f.split("."))
                    parts.append(f"{loc_text(sub)}: {src.where(sub, leaf_len=len(sub))}")
                text += f" ({'; '.join(parts)})"
            else:
                text += f" ({src.where(loc, leaf_len=leaf_len)})"
            text += _hint(kind, err.get("input"), _allows_inf_nan(schema, loc))
        lines.setdefault(dotted, []).append(text)
    out = []
    for dotted, texts in lines.items():
        if len(texts) > 1 and all(t.startswith("expected ") for t in texts):
            # one value that matched none of a union's members
            heads = [t.split(", given", 1)[0].split(" (", 1)[0] for t in texts]
            tail = texts[0][len(heads[0]) :]
            texts = [heads[0] + "".join(" or " + h[len("expected ") :] for h in heads[1:]) + tail]
        out += [f"{dotted}: {t}" if dotted else t for t in texts]
    if len(out) == 1:
        return ConfigError(out[0])
    shown = out[:MAX_SHOWN]
    if len(out) > MAX_SHOWN:  # a file that is not a config at all: do not echo all of it
        shown.append(f"... and {len(out) - MAX_SHOWN} more")
    return ConfigError(f"{len(out)} problems in the config:\n  " + "\n  ".join(shown))


def validate(schema: type[M], data: dict[str, Any], src: Sources) -> M:
    """``schema.model_validate(data)``, with errors turned into one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _map_errors(exc, schema, src) from None
