"""Private helpers of :func:`versionkit.config.diff_configs`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["MISSING", "diff_plain", "flatten"]


class _Missing:
    """The MISSING sentinel of :func:`diff_configs`: a key one side does not have."""

    _instance: ClassVar[_Missing | None] = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def flatten(value: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}`` (empty sections stay ``{}``)."""
    out: dict[str, Any] = {}
    _flatten(value, "", out)
    return out


def _flatten(value: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, item in value.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, Mapping) and item:
            _flatten(item, dotted, out)
        else:
            out[dotted] = item


def _same(x: Any, y: Any) -> bool:
    numbers = (int, float)
    if isinstance(x, numbers) and isinstance(y, numbers) and not isinstance(x, bool) \
            and not isinstance(y, bool):
        return bool(x == y) or (x != x and y != y)  # 1 == 1.0; NaN equals NaN here
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y, strict=True))
    if type(x) is not type(y):
        return False
    return bool(x == y)


def diff_plain(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs; MISSING for an absent side."""
    flat_a: dict[str, Any] = {}
    flat_b: dict[str, Any] = {}
    _flatten(a, "", flat_a)
    _flatten(b, "", flat_b)
    out: dict[str, tuple[Any, Any]] = {}
    for key in [*flat_a, *(k for k in flat_b if k not in flat_a)]:
        old = flat_a.get(key, MISSING)
        new = flat_b.get(key, MISSING)
        if not _same(old, new):
            out[key] = (old, new)
    return out
