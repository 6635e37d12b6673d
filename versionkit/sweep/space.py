"""Search spaces: ``FIELD=uniform(a,b)``, ``loguniform(a,b)``, ``int(a,b)``, ``choice(...)``.

A space is parsed and checked against the config schema before anything starts: the field
must exist (a misspelt one gets "did you mean"), and every value the space can produce
(both ends of a range, every choice) must make a valid config together with the base
flags. Choice values are read exactly like the field's flag (``[64,32,16]`` for a list).

Optuna's categorical choices must be plain scalars, so list or mapping choices are stored
in the study as their compact JSON text and decoded again before they reach a config.
This module imports neither optuna nor torch.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from versionkit._flags import _flag_text
from versionkit._types import _union_args, convert_flag, describe_type, leaf_index, strip
from versionkit.config import ConfigModel
from versionkit.errors import ConfigError

__all__ = ["KINDS", "Dimension", "SearchSpace", "parse_dimension"]

Kind = Literal["uniform", "loguniform", "int", "choice"]
KINDS: tuple[Kind, ...] = ("uniform", "loguniform", "int", "choice")
_FORM = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*=\s*([A-Za-z_]+)\s*\((.*)\)\s*\Z", re.S)
_EXPECTED = (
    "expected FIELD=uniform(a,b), FIELD=loguniform(a,b), FIELD=int(a,b) or "
    "FIELD=choice(v1,v2,...)"
)


class _Suggests(Protocol):
    """The part of ``optuna.Trial`` a space uses."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Dimension:
    """One searched field.

    Attributes:
        field: the dotted config field (``optim.lr``).
        kind: ``uniform``, ``loguniform``, ``int`` or ``choice``.
        low: the range's low end (ranges only).
        high: the range's high end, inclusive (ranges only).
        choices: the values (``choice`` only), typed as the field's flag reads them.
        source: how the user wrote it, for messages.
    """

    field: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    source: str = ""

    @property
    def _encoded(self) -> bool:
        return any(not _is_scalar(c) for c in self.choices)

    def optuna_choices(self) -> list[Any]:
        """The choices as Optuna stores them (JSON text for non-scalars)."""
        if self._encoded:
            return [json.dumps(c, separators=(",", ":")) for c in self.choices]
        return list(self.choices)

    def decode(self, value: Any) -> Any:
        """A value as stored in Optuna -> the config value."""
        if self.kind == "choice" and self._encoded and isinstance(value, str):
            return json.loads(value)
        return value

    def suggest(self, trial: _Suggests) -> Any:
        """Ask ``trial`` (an ``optuna.Trial``) for this field's value."""
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.field, self.optuna_choices()))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high))
        return trial.suggest_float(
            self.field, float(self.low), float(self.high), log=self.kind == "loguniform"
        )

    def extremes(self) -> list[Any]:
        """Values that must each make a valid config: both ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _split_args(text: str) -> list[str]:
    """Split at top-level commas (not inside brackets or quotes)."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _suggest_field(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not close:
        tail = name.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == tail][:3]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _scalar_types(annotation: Any) -> set[Any]:
    """The non-None types a field takes (``float | None`` -> {float})."""
    tp = strip(annotation)
    union = _union_args(tp)
    return {strip(a) for a in union[0]} if union is not None else {tp}


def _check_range_field(kind: str, field: str, annotation: Any, shown: str) -> None:
    """A range needs a number field; uniform/loguniform a float one."""
    found = _scalar_types(annotation)
    numbers = {t for t in found if t in (int, float)}
    if not numbers or bool in found:
        raise ConfigError(
            f"--space {shown}: {field} is not a number field ({describe_type(annotation)}); "
            "list its values with choice(...)"
        )
    if kind != "int" and numbers == {int}:
        raise ConfigError(
            f"--space {shown}: {field} takes integers; {kind}() samples floats: use int(a,b) "
            "or choice(...)"
        )


def _number(raw: str, what: str, source: str, *, integer: bool) -> float:
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"--space {source}: {what} {raw!r} is not {kind}") from None
    if not math.isfinite(value):
        raise ConfigError(f"--space {source}: {what} must be finite, given {raw}")
    return float(value)


def parse_dimension(
    text: str, schema: type[ConfigModel], *, values: Sequence[Any] | None = None,
    kind: str | None = None,
) -> Dimension:
    """Parse ``FIELD=kind(args)`` (or, from a space file, a field with typed ``values``).

    Args:
        text: ``FIELD=kind(args)``; with ``kind`` and ``values`` given, just ``FIELD``.
        schema: the config schema whose field is searched.
        values: the arguments already read as YAML values (space files in mapping form).
        kind: the kind, when ``values`` is given.

    Raises:
        ConfigError: malformed text, an unknown kind or field, or bad bounds.
    """
    shown = text.strip()
    if kind is None:
        match = _FORM.match(text)
        if match is None:
            raise ConfigError(f"--space {shown!r}: {_EXPECTED}")
        field, kind, inner = match.group(1), match.group(2), match.group(3)
        raw_args: list[str] | None = _split_args(inner) if inner.strip() else []
    else:
        field, raw_args = text.strip(), None
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"--space {shown}: unknown kind {kind!r}{hint} ({_EXPECTED})")
    index = leaf_index(schema)
    leaf = index.leaves.get(field)
    if leaf is None:
        bare = index.bare.get(field, [])
        if len(bare) == 1:
            leaf = bare[0]
        else:
            hint = _suggest_field(field, list(index.leaves))
            if field in index.sections:
                hint = f"; {field} is a section, search one of its fields{hint}"
            raise ConfigError(f"--space {shown}: unknown config field {field!r}{hint}")
    count = len(raw_args) if raw_args is not None else len(values or ())
    if kind == "choice":
        if count == 0 or raw_args == [""]:
            raise ConfigError(f"--space {shown}: choice() needs at least one value")
        if raw_args is not None:
            choices = [convert_flag(leaf.annotation, raw, f"--space {shown}") for raw in raw_args]
        else:
            choices = list(values or ())
        for a, b in itertools.combinations(range(len(choices)), 2):
            if choices[a] == choices[b] and type(choices[a]) is type(choices[b]):
                raise ConfigError(f"--space {shown}: value {choices[a]!r} is given twice")
        return Dimension(leaf.dotted, "choice", choices=tuple(choices), source=shown)
    if count != 2:
        raise ConfigError(f"--space {shown}: {kind}() takes two numbers (low, high), given {count}")
    _check_range_field(kind, leaf.dotted, leaf.annotation, shown)
    integer = kind == "int"
    texts = raw_args if raw_args is not None else [str(v) for v in values or ()]
    low = _number(texts[0], "low", shown, integer=integer)
    high = _number(texts[1], "high", shown, integer=integer)
    if not low < high:
        raise ConfigError(f"--space {shown}: low must be below high, given {texts[0]}, {texts[1]}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"--space {shown}: loguniform needs low > 0, given {texts[0]}")
    return Dimension(leaf.dotted, kind, low=low, high=high, source=shown)


def _file_entries(path: Path) -> Iterator[tuple[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--space-file {path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--space-file {path}: not valid YAML: {first}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"--space-file {path}: expected a mapping of FIELD: kind(args) lines, "
            "e.g. 'optim.lr: loguniform(1e-4, 3e-3)'"
        )
    yield from data.items()


@dataclass(frozen=True)
class SearchSpace:
    """The searched fields, in the order given.

    Build one with :meth:`parse`; :meth:`check` validates it against the base flags.
    """

    dimensions: tuple[Dimension, ...]

    @classmethod
    def parse(
        cls, texts: Sequence[str], schema: type[ConfigModel], *, files: Sequence[str | Path] = ()
    ) -> SearchSpace:
        """Parse ``--space`` texts and ``--space-file`` files (files first).

        A file maps each field to ``kind(args)`` text or to ``{kind: [args]}``.

        Raises:
            ConfigError: anything malformed, unknown, or given twice.
        """
        dims: list[Dimension] = []
        for file in files:
            path = Path(file)
            for key, value in _file_entries(path):
                where = f"{path}: {key}"
                if isinstance(value, str):
                    try:
                        dims.append(parse_dimension(f"{key}={value}", schema))
                    except ConfigError as exc:
                        raise ConfigError(f"--space-file {where}: {_strip_prefix(exc)}") from None
                elif isinstance(value, dict) and len(value) == 1:
                    (kind, args), = value.items()
                    args = args if isinstance(args, list) else [args]
                    try:
                        dims.append(parse_dimension(str(key), schema, values=args, kind=str(kind)))
                    except ConfigError as exc:
                        raise ConfigError(f"--space-file {where}: {_strip_prefix(exc)}") from None
                else:
                    raise ConfigError(
                        f"--space-file {where}: expected 'kind(args)' text or a one-key "
                        "mapping such as {loguniform: [1.0e-4, 3.0e-3]}"
                    )
        dims += [parse_dimension(text, schema) for text in texts]
        if not dims:
            raise ConfigError("nothing to search: give --space FIELD=kind(args) or --space-file")
        seen: dict[str, Dimension] = {}
        for dim in dims:
            if dim.field in seen:
                raise ConfigError(
                    f"--space: field {dim.field} is searched twice ({seen[dim.field].source} "
                    f"and {dim.source})"
                )
            seen[dim.field] = dim
        return cls(tuple(dims))

    @property
    def fields(self) -> list[str]:
        """The dotted fields, in order."""
        return [d.field for d in self.dimensions]

    def grid(self) -> dict[str, list[Any]]:
        """Optuna's ``GridSampler`` search space.

        Raises:
            ConfigError: a dimension is not a ``choice``.
        """
        ranges = [d.source for d in self.dimensions if d.kind != "choice"]
        if ranges:
            raise ConfigError(
                f"--sampler grid takes choice(...) only; {', '.join(ranges)} is a range "
                "(use tpe or random, or list the values with choice)"
            )
        return {d.field: d.optuna_choices() for d in self.dimensions}

    def grid_size(self) -> int:
        """The number of combinations of a choice-only space."""
        return math.prod(len(d.choices) for d in self.dimensions)

    def suggest(self, trial: _Suggests) -> dict[str, Any]:
        """Sample every field from ``trial``; returns ``{field: config value}``."""
        return {d.field: d.suggest(trial) for d in self.dimensions}

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """An Optuna trial's ``params`` -> config values (JSON-text choices decoded)."""
        by_field = {d.field: d for d in self.dimensions}
        return {k: by_field[k].decode(v) if k in by_field else v for k, v in params.items()}

    def flags(self, schema: type[ConfigModel], values: Mapping[str, Any]) -> list[str]:
        """``--field=value`` flags that set ``values`` (read back exactly by the flag parser)."""
        leaves = leaf_index(schema).leaves
        return [f"--{k}={_flag_text(leaves[k].annotation, v)}" for k, v in values.items()]

    def check(
        self, schema: type[ConfigModel], parse: Callable[[list[str]], Any],
        base_args: Sequence[str], *, grid: bool = False,
    ) -> None:
        """Make sure every value the space can produce gives a valid config.

        Each end of every range and every choice is tried with the base flags (the other
        fields at their base values); with ``grid``, every combination (up to 4096).

        Raises:
            ConfigError: naming the space entry and the value that does not fit.
        """
        def attempt(values: Mapping[str, Any], source: str) -> None:
            try:
                parse([*base_args, *self.flags(schema, values)])
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                raise ConfigError(f"--space {source}: {shown} is not valid: {exc}") from None

        for dim in self.dimensions:
            for value in dim.extremes():
                attempt({dim.field: value}, dim.source)
        if grid and len(self.dimensions) > 1 and self.grid_size() <= 4096:
            names = self.fields
            for combo in itertools.product(*(d.choices for d in self.dimensions)):
                attempt(dict(zip(names, combo, strict=True)), "(grid)")


def _strip_prefix(exc: ConfigError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("--space ") and ": " in text else text
