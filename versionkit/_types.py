"""Private helpers that read a config schema's type annotations.

They answer three questions for :mod:`versionkit.config`: which fields are leaves that a
flag can set (:func:`leaf_index`), how a flag's text becomes a value of the leaf's type
(:func:`convert_flag`), and how plain YAML data (lists, strings) becomes the exact Python
type a strict pydantic field wants (tuples, paths, enum members: :func:`make_coercer`).
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from versionkit._yaml import Loc, parse_yaml, resolve_plain
from versionkit.errors import ConfigError

__all__ = [
    "Coercer",
    "Leaf",
    "LeafIndex",
    "convert_flag",
    "describe_constraints",
    "describe_type",
    "is_bool",
    "item_type",
    "leaf_index",
    "loc_text",
    "make_coercer",
    "model_of",
    "strip",
]

Coercer = Callable[[Any], Any]
_NONE = type(None)
_UNIONS: tuple[Any, ...] = (Union, types.UnionType)
_SEQS: tuple[Any, ...] = (list, tuple, set, frozenset)
_NULL_WORDS = frozenset({"null", "Null", "NULL", "~"})


def strip(tp: Any) -> Any:
    """Remove ``Annotated[...]`` wrappers."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_args(tp: Any) -> tuple[list[Any], bool] | None:
    if get_origin(tp) in _UNIONS:
        args = [strip(a) for a in get_args(tp)]
        return [a for a in args if a is not _NONE], _NONE in args
    return None


def model_of(tp: Any) -> type[BaseModel] | None:
    """The pydantic model class of ``tp`` or ``Optional[tp]``, else None."""
    tp = strip(tp)
    union = _union_args(tp)
    if union is not None:
        args, _ = union
        if len(args) != 1:
            return None
        tp = args[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def is_bool(tp: Any) -> bool:
    """Whether ``tp`` is ``bool`` or ``Optional[bool]``."""
    tp = strip(tp)
    union = _union_args(tp)
    if union is not None:
        args, _ = union
        return args == [bool]
    return tp is bool


def item_type(tp: Any, index: int) -> Any:
    """The type of item ``index`` of a list/tuple/set type (``Any`` when unknown)."""
    tp = strip(tp)
    union = _union_args(tp)
    if union is not None and len(union[0]) == 1:
        tp = union[0][0]
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[index] if 0 <= index < len(args) else Any
    if origin in _SEQS and args:
        return args[0]
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return Any


def _is_str_like(tp: Any) -> bool:
    if tp is str:
        return True
    if isinstance(tp, type):
        if issubclass(tp, PurePath):
            return True
        if issubclass(tp, enum.Enum):
            return all(isinstance(m.value, str) for m in tp)
    return False


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="),
           ("min_length", "length >="), ("max_length", "length <="))


def describe_constraints(metadata: Sequence[Any]) -> str:
    """``"> 0, <= 1"`` from pydantic/annotated-types constraint objects."""
    parts = []
    for item in metadata:
        for attr, symbol in _BOUNDS:
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    return ", ".join(parts)


def describe_type(tp: Any) -> str:
    """Short human-readable type name: ``int``, ``list[int > 0]``, ``'ar' | 'mar'``."""
    if get_origin(tp) is Annotated:
        bounds = describe_constraints(get_args(tp)[1:])
        inner = describe_type(get_args(tp)[0])
        return f"{inner} {bounds}" if bounds else inner
    union = _union_args(tp)
    if union is not None:
        args, nullable = union
        text = " | ".join(describe_type(a) for a in args)
        return f"{text} | null" if nullable else text
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(v) if isinstance(v, str) else str(v) for v in get_args(tp))
    if origin is not None:
        targs = get_args(tp)
        name = getattr(origin, "__name__", str(origin))
        if origin is tuple and len(targs) == 2 and targs[1] is Ellipsis:
            return f"tuple[{describe_type(targs[0])}, ...]"
        return f"{name}[{', '.join(describe_type(a) for a in targs)}]" if targs else name
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return " | ".join(repr(m.value) for m in tp)
        if issubclass(tp, PurePath):
            return "path"
        return tp.__name__
    return str(tp)


# ---------------------------------------------------------------- coercion


def _coerce_enum(tp: type[enum.Enum]) -> Coercer:
    def coerce(value: Any) -> Any:
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except (ValueError, TypeError):
            return value  # pydantic reports it with the allowed values

    return coerce


def make_coercer(tp: Any) -> Coercer | None:
    """A function that turns plain data into the Python type a strict field expects
    (list -> tuple/set, str -> Path, value -> Enum member), or None when the type
    needs nothing. Values it cannot convert are returned unchanged for pydantic to
    reject with its own message."""
    tp = strip(tp)
    union = _union_args(tp)
    if union is not None:
        subs = [c for c in (make_coercer(a) for a in union[0]) if c is not None]
        if not subs:
            return None
        if len(subs) == 1:
            only = subs[0]
            return lambda v: v if v is None else only(v)

        def first_change(value: Any) -> Any:
            for sub in subs:
                new = sub(value)
                if new is not value:
                    return new
            return value

        return first_change
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            each = make_coercer(args[0])
            return lambda v: (
                tuple(v if each is None else [each(x) for x in v])
                if isinstance(v, (list, tuple))
                else v
            )
        subs_at = [make_coercer(a) for a in args]
        return lambda v: (
            tuple(
                x if i >= len(subs_at) or subs_at[i] is None else subs_at[i](x)  # type: ignore[misc]
                for i, x in enumerate(v)
            )
            if isinstance(v, (list, tuple))
            else v
        )
    if origin in (list, set, frozenset):
        each = make_coercer(args[0]) if args else None
        target = origin

        def seq(value: Any) -> Any:
            if not isinstance(value, (list, tuple, set, frozenset)):
                return value
            if each is None and type(value) is target:
                return value
            items = value if each is None else [each(x) for x in value]
            return target(items)

        return seq
    if origin in (dict, Mapping) and len(args) == 2:
        each = make_coercer(args[1])
        if each is None:
            return None
        return lambda v: {k: each(x) for k, x in v.items()} if isinstance(v, dict) else v
    if isinstance(tp, type):
        if issubclass(tp, PurePath):
            path_type = tp
            return lambda v: path_type(v) if isinstance(v, str) else v
        if issubclass(tp, enum.Enum):
            return _coerce_enum(tp)
    return None


# ---------------------------------------------------------------- leaves


@dataclass(frozen=True)
class Leaf:
    """A field that a flag can set."""

    path: tuple[str, ...]
    dotted: str
    annotation: Any
    info: FieldInfo


@dataclass
class LeafIndex:
    """Every settable leaf of a schema, by dotted name and by bare name."""

    leaves: dict[str, Leaf] = field(default_factory=dict)
    bare: dict[str, list[Leaf]] = field(default_factory=dict)
    sections: dict[str, type[BaseModel]] = field(default_factory=dict)
    nullable: set[str] = field(default_factory=set)


_INDEX_CACHE: dict[type[BaseModel], LeafIndex] = {}


def leaf_index(schema: type[BaseModel]) -> LeafIndex:
    """Index the leaves of ``schema`` (cached per class).

    Nested models (and ``Optional`` nested models) are sections, everything else is a
    leaf; the top-level ``schema_version`` is not a flag.
    """
    cached = _INDEX_CACHE.get(schema)
    if cached is not None:
        return cached
    index = LeafIndex()

    def walk(model: type[BaseModel], prefix: tuple[str, ...], seen: tuple[type, ...]) -> None:
        for name, info in model.model_fields.items():
            if not prefix and name == "schema_version":
                continue
            path = (*prefix, name)
            dotted = ".".join(path)
            sub = model_of(info.annotation)
            if sub is not None and sub not in seen:
                index.sections[dotted] = sub
                if _union_args(strip(info.annotation)) is not None:
                    index.nullable.add(dotted)
                walk(sub, path, (*seen, sub))
                continue
            leaf = Leaf(path, dotted, info.annotation, info)
            index.leaves[dotted] = leaf
            index.bare.setdefault(name, []).append(leaf)

    walk(schema, (), (schema,))
    _INDEX_CACHE[schema] = index
    return index


# ---------------------------------------------------------------- flag values


def _unquote(raw: str, flag: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        value, _, _ = parse_yaml(raw, f"flag {flag}")
        if isinstance(value, str):
            return value
    return raw


def _scalar(raw: str, flag: str) -> Any:
    if raw and raw[0] in "\"'":
        return _unquote(raw, flag)
    if raw == "":
        return raw
    try:
        return resolve_plain(raw)
    except ValueError as exc:
        raise ConfigError(f"flag {flag}: {exc}") from None


def _yaml_value(raw: str, flag: str) -> Any:
    value, _, empty = parse_yaml(raw, f"flag {flag}")
    return raw if empty else value


def _sequence(tp: Any, raw: str, flag: str) -> Any:
    text = raw.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            return _yaml_value(text, flag)  # reports the unclosed bracket
        inner = text[1:-1]
    else:
        inner = text
    if not inner.strip():
        return []
    if any(c in inner for c in "\"'[]{}"):
        return _yaml_value(f"[{inner}]", flag)
    return [convert_flag(item_type(tp, i), part.strip(), flag)
            for i, part in enumerate(inner.split(","))]


def convert_flag(tp: Any, raw: str, flag: str) -> Any:
    """Turn a flag's text into a value for a field of type ``tp``.

    Strings, paths and string enums take the text verbatim (quote it, YAML style, to
    force a string such as ``"null"``); lists accept ``1,2,3`` and ``[1, 2, 3]``;
    ``null`` is None where the type allows it; everything else is read as a YAML 1.2
    scalar, so ``1e-4`` is a float and only ``true``/``false`` are booleans.

    Args:
        tp: the field's annotation.
        raw: the flag's value text.
        flag: the flag as the user wrote it, for error messages.
    """
    tp = strip(tp)
    union = _union_args(tp)
    if union is not None:
        args, nullable = union
        if nullable and raw in _NULL_WORDS:
            return None
        if len(args) == 1:
            return convert_flag(args[0], raw, flag)
        if all(get_origin(strip(a)) in _SEQS for a in args):
            return _sequence(args[0], raw, flag)
        return _scalar(raw, flag)
    origin = get_origin(tp)
    if origin in _SEQS or tp in _SEQS:
        return _sequence(tp, raw, flag)
    if origin in (dict, Mapping) or tp in (dict, Mapping) or (
        isinstance(tp, type) and issubclass(tp, BaseModel)
    ):
        return _yaml_value(raw, flag)
    if _is_str_like(tp):
        return _unquote(raw, flag)
    if origin is Literal:
        if raw in {v for v in get_args(tp) if isinstance(v, str)}:
            return raw
        return _scalar(raw, flag)
    return _scalar(raw, flag)


def loc_text(loc: Loc) -> str:
    """``('model', 'sizes', 2)`` -> ``model.sizes[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out

