"""Typed config schemas: load from YAML and flags, validate, dump, hash, diff, migrate.

A schema is a :class:`ConfigModel` (pydantic v2) whose nested sections are
:class:`ConfigSection` subclasses. Values come from the schema's defaults, then a YAML
file (``--config FILE``), then command-line flags, and every user mistake is one
:class:`~versionkit.errors.ConfigError` naming the field, where the value came from,
what was expected and what was given.

Example::

    class Train(ConfigModel):
        lr: float = Field(1e-3, gt=0, description="learning rate")

    loaded = load_config(Train, ["--config", "run.yaml", "--lr", "3e-4"])
    text = dump_config(loaded.config)        # canonical YAML; config_hash() hashes it
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from versionkit._diff import MISSING, diff_plain
from versionkit._emit import emit, to_plain
from versionkit._flags import ControlFlag, config_flags, format_help, parse_args
from versionkit._migrate import migrate, register_migration
from versionkit._report import Sources, validate
from versionkit._types import Coercer, make_coercer, strip
from versionkit._yaml import Loc, Mark, parse_yaml, read_text_file
from versionkit.errors import ConfigError

__all__ = [
    "MISSING",
    "ConfigModel",
    "ConfigSection",
    "ControlFlag",
    "FieldError",
    "LoadedConfig",
    "config_hash",
    "config_to_flags",
    "diff_configs",
    "dump_config",
    "json_schema",
    "load_config",
    "load_yaml_config",
    "load_yaml_text",
    "register_migration",
    "to_plain",
]

C = TypeVar("C", bound="ConfigModel")


class FieldError(ValueError):
    """A cross-field validation error that names the fields at fault.

    Raise it from a model validator so that the error message can say where each
    named field's value came from (file line or flag).

    Args:
        message: what is wrong and what was expected.
        *fields: dotted field paths relative to the model that raised it.
    """

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields


_COERCERS: dict[type[BaseModel], dict[str, Coercer]] = {}


def _coercers(cls: type[BaseModel]) -> dict[str, Coercer]:
    found = _COERCERS.get(cls)
    if found is None:
        found = {}
        for name, info in cls.model_fields.items():
            coercer = make_coercer(info.annotation)
            if coercer is not None:
                found[name] = coercer
        _COERCERS[cls] = found
    return found


def _coerce(cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] | None = None
    for name, coercer in _coercers(cls).items():
        if name in data:
            old = data[name]
            new = coercer(old)
            if new is not old:
                if changed is None:
                    changed = dict(data)
                changed[name] = new
    return data if changed is None else changed


def _loose_types_in(tp: Any) -> list[type]:
    # models and dataclasses inside an annotation that would silently accept unknown keys
    tp = strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [] if tp.model_config.get("extra") == "forbid" else [tp]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        config = getattr(tp, "__pydantic_config__", None) or {}
        return [] if config.get("extra") == "forbid" else [tp]
    found: list[type] = []
    for arg in get_args(tp):
        found += _loose_types_in(arg)
    return found


class ConfigSection(BaseModel):
    """Base of a nested config section: rejects unknown keys, validates strictly.

    Strict means YAML ``yes`` is not a boolean and ``"5"`` is not an int; lists are
    still accepted for tuple fields, strings for paths and values for enums. Float
    fields refuse infinity and nan (a learning rate of ``1e999`` trains to nan); a field
    that means them says so with ``Field(allow_inf_nan=True)``.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, protected_namespaces=(), allow_inf_nan=False
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        extra = cls.model_config.get("extra")
        if extra != "forbid":
            raise TypeError(
                f"{cls.__name__}: config models must reject unknown keys; "
                f"remove extra={extra!r} from its model_config"
            )
        if not cls.__pydantic_complete__:
            return
        for name, info in cls.model_fields.items():
            for loose in _loose_types_in(info.annotation):
                raise TypeError(
                    f"{cls.__name__}.{name}: {loose.__name__} accepts unknown keys; "
                    "derive it from versionkit.config.ConfigSection"
                )

    @model_validator(mode="before")
    @classmethod
    def _vk_before(cls, data: Any) -> Any:
        return _coerce(cls, data) if isinstance(data, dict) else data


class ConfigModel(ConfigSection):
    """Base of a top-level config schema: a :class:`ConfigSection` plus ``schema_version``.

    Raise ``SCHEMA_VERSION`` in a subclass when fields are renamed or change meaning,
    and register a migration (:func:`register_migration`) from the old version; older
    saved configs are then migrated on load, newer ones are refused.
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = Field(
        default=1,
        ge=1,
        description="Version of this config's schema; older files are migrated on load.",
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        info = cls.model_fields["schema_version"]
        if info.default != cls.SCHEMA_VERSION:
            info = copy.copy(info)
            info.default = cls.SCHEMA_VERSION
            cls.__pydantic_fields__["schema_version"] = info
            cls.model_rebuild(force=True)

    @model_validator(mode="before")
    @classmethod
    def _vk_before(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("schema_version", cls.SCHEMA_VERSION) != cls.SCHEMA_VERSION:
            data = migrate(cls, data, cls.__name__)
        return _coerce(cls, data)


# ---------------------------------------------------------------- plain values, dump


def dump_config(config: ConfigModel, *, header: Sequence[str] = ()) -> str:
    """The canonical YAML text of a config: every field in schema order, numbers
    written so that they read back exactly (``5.0e-05``, ``-0.0``, ``.inf``).

    Args:
        config: the config.
        header: lines written first as ``# `` comments (not part of the hash).
    """
    return emit(to_plain(config), header)


def config_hash(config: ConfigModel) -> str:
    """sha256 hex digest of the canonical dump (without header).

    Equal configs always hash equal, whatever the order or spelling of their source:
    the dump writes fields in schema order and numbers in one canonical form.
    """
    import hashlib

    return hashlib.sha256(dump_config(config).encode("utf-8", "surrogatepass")).hexdigest()


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What changed between two configs, as ``{dotted key: (old, new)}``.

    Nested mappings are compared leaf by leaf; a key one side lacks shows
    :data:`MISSING` on that side. Configs (models) are accepted too.
    """
    return diff_plain(
        to_plain(a) if isinstance(a, BaseModel) else a,
        to_plain(b) if isinstance(b, BaseModel) else b,
    )


def config_to_flags(config: ConfigModel) -> list[str]:
    """Flags (``--a.b=VALUE``, one per leaf) that :func:`load_config` parses back into
    exactly ``config``; a ``None`` optional section is ``--section=null``."""
    return config_flags(config)


def json_schema(schema: type[ConfigModel]) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a config schema, for editors and validators.

    Point an editor at it (e.g. ``# yaml-language-server: $schema=train.schema.json``)
    for completion and checks; ``versionkit schema MODULE:Class`` prints it.
    """
    body = schema.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **body}


# ---------------------------------------------------------------- loading


@dataclass
class LoadedConfig(Generic[C]):
    """A validated config and where it came from.

    Attributes:
        config: the validated config.
        config_file: the file the config came from (None: defaults and flags only).
        config_text: that file's verbatim text.
        flags: the config-override flags exactly as given (program flags excluded).
        controls: each :class:`ControlFlag`'s value by name.
    """

    config: C
    config_file: Path | None
    config_text: str | None
    flags: list[str]
    controls: dict[str, Any]


def _parse_text(
    schema: type[ConfigModel], text: str, source: str
) -> tuple[dict[str, Any], dict[Loc, Mark]]:
    value, locs, empty = parse_yaml(text, source)
    if empty:
        raise ConfigError(
            f"{source}: the file is empty; expected a mapping of config fields "
            "(key: value lines)"
        )
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        kind = {"list": "list", "str": "string"}.get(kind, kind)
        mark = locs.get((), (1, 1))
        raise ConfigError(
            f"{source}:{mark[0]}:{mark[1]}: the top level is a {kind}; expected a mapping "
            "of config fields (key: value lines)"
        )
    if value.get("schema_version", schema.SCHEMA_VERSION) != schema.SCHEMA_VERSION:
        value = migrate(schema, value, source)
        locs = {k: v for k, v in locs.items() if len(k) <= 1}
    return value, locs


def load_yaml_text(schema: type[C], text: str, *, source: str = "<config>") -> C:
    """Validate YAML text against ``schema`` (migrations applied).

    Args:
        schema: the :class:`ConfigModel` subclass.
        text: the YAML text of one mapping.
        source: what error messages call the text (a path, "version 3 record", ...).

    Raises:
        ConfigError: the text is not valid YAML or not a valid config.
    """
    data, locs = _parse_text(schema, text, source)
    return validate(schema, data, Sources(source, locs, {}))


def load_yaml_config(schema: type[C], path: str | Path) -> C:
    """Load and validate a YAML config file (migrations applied).

    Raises:
        ConfigError: the file is missing, not valid YAML, or not a valid config.
    """
    path = Path(path)
    return load_yaml_text(schema, read_text_file(path), source=str(path))


def _set_in(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    # copy-on-write: YAML aliases may share dicts, so never mutate what the file gave
    top = dict(data)
    cur = top
    for key in path[:-1]:
        child = cur.get(key)
        child = dict(child) if isinstance(child, dict) else {}
        cur[key] = child
        cur = child
    cur[path[-1]] = value
    return top


def load_config(
    schema: type[C],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    controls: Sequence[ControlFlag] = (),
    default_config_file: Callable[[dict[str, Any]], Path | None] | None = None,
) -> LoadedConfig[C]:
    """Build a config from defaults < ``--config FILE`` < flags.

    Args:
        schema: the :class:`ConfigModel` subclass.
        argv: the arguments (default ``sys.argv[1:]``).
        prog: program name for ``--help`` (default: ``sys.argv[0]``'s name).
        description: a paragraph for ``--help``.
        controls: program flags that are not config fields.
        default_config_file: called with the control values when no ``--config`` is
            given; the file it returns (if any) is used as the config file.

    Returns:
        The validated config, its file and text, the override flags and control values.

    Raises:
        ConfigError: any mistake in the flags, the file or the values.
        SystemExit: ``--help`` was given (code 0, after printing the help).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    parsed = parse_args(schema, args, controls)
    if parsed.help:
        name = prog or Path(sys.argv[0] or "prog").name
        sys.stdout.write(format_help(schema, prog=name, description=description,
                                     controls=controls))
        sys.stdout.flush()
        raise SystemExit(0)
    # '--config=~/run.yaml' reaches us unexpanded (the shell only expands a word's start)
    config_file = None
    if parsed.config_file is not None:
        config_file = Path(parsed.config_file).expanduser()
    if config_file is None and default_config_file is not None:
        found = default_config_file(dict(parsed.controls))
        config_file = Path(found) if found is not None else None
    data: dict[str, Any] = {}
    locs: dict[Loc, Mark] = {}
    text = None
    if config_file is not None:
        text = read_text_file(config_file)
        data, locs = _parse_text(schema, text, str(config_file))
    flag_src: dict[tuple[str, ...], str] = {}
    for path, value, flag in parsed.overrides:
        data = _set_in(data, path, value)
        flag_src[path] = flag
    config = validate(schema, data, Sources(
        str(config_file) if config_file is not None else None, locs, flag_src))
    return LoadedConfig(config, config_file, text, parsed.flags, parsed.controls)

