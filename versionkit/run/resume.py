"""The config a resumed run uses: the version's saved config, with allowed changes only.

The saved ``config.yaml`` is authoritative: it says what the checkpoint was trained
with. A resume may change only the fields its program lists as mutable (the step
budget, validation and logging cadence, devices, workers, ...); every other difference,
whether from a flag or from a ``--config`` file, is refused with one line naming it.
Nothing here writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from versionkit._flags import parse_args
from versionkit.config import ConfigModel, LoadedConfig, diff_configs, load_yaml_config
from versionkit.errors import ConfigError
from versionkit.layout import Layout

__all__ = ["ResumeConfig", "change_lines", "load_saved_config", "resume_config"]


@dataclass(frozen=True)
class ResumeConfig:
    """The effective config of a resumed run and what it changes from the saved one.

    Attributes:
        config: the saved config with the allowed changes applied.
        saved: the saved config as it is on disk.
        changes: dotted key -> (saved value, value for this run).
        source: where the saved config was read (``config.yaml`` or the registry).
    """

    config: Any
    saved: Any
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    source: str = ""


def _covers(prefixes: Sequence[str], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for part in parts[:-1]:
        child = cur.get(part)
        if not isinstance(child, dict):
            child = {}
            cur[part] = child
        cur = child
    cur[parts[-1]] = value


def load_saved_config(
    schema: type[ConfigModel], root: Path, version: int, record_config: Any = None
) -> tuple[Any, str]:
    """The saved config of ``version``: its ``config.yaml``, else the registry's copy.

    Raises:
        ConfigError: neither exists or neither is a valid config of ``schema``.
    """
    path = Layout(root).config_path(version)
    if path.is_file():
        return load_yaml_config(schema, path), str(path)
    if isinstance(record_config, dict):
        try:
            return schema.model_validate(record_config), "the registry record"
        except ValidationError as exc:
            raise ConfigError(
                f"version {version}: {path} is missing and the config in its registry "
                f"record is not valid: {exc.errors()[0].get('msg', exc)}"
            ) from None
    raise ConfigError(
        f"version {version}: {path} is missing (and the registry has no copy), so the config "
        "it was trained with is unknown"
    )


def resume_config(
    loaded: LoadedConfig[Any],
    saved: Any,
    *,
    mutable: Sequence[str],
    source: str = "",
) -> ResumeConfig:
    """Merge what the user gave for a resume into the saved config.

    With ``--config FILE`` every field where that file (plus flags) differs from the
    saved config is a requested change; without one, only the fields given as flags
    are (the rest of ``loaded.config`` is schema defaults, not the user's intent).

    Args:
        loaded: this invocation's parsed config (file, flags).
        saved: the version's saved config (a ``ConfigModel``).
        mutable: dotted keys or prefixes that a resume may change.
        source: where ``saved`` came from, for messages.

    Raises:
        ConfigError: a requested change to a field that is not mutable, naming the flag
            (or the file), the saved and the given value.
    """
    schema = type(saved)
    saved_plain = saved.model_dump(mode="json")
    differences = diff_configs(saved_plain, loaded.config.model_dump(mode="json"))
    flag_of = _flag_paths(schema, loaded.flags)
    requested: dict[str, tuple[Any, Any]] = {}
    for key in sorted(differences):
        flag = next((f for p, f in flag_of.items() if key == p or key.startswith(p + ".")), None)
        if loaded.config_file is None and flag is None:
            continue
        old, new = differences[key]
        if not _covers(mutable, key):
            given = flag if flag is not None else f"--config {loaded.config_file}"
            raise ConfigError(
                f"{given}: cannot change {key} when resuming (saved {old!r}, given {new!r}); "
                f"the saved config{f' ({source})' if source else ''} is what the checkpoint "
                "was trained with. Drop it, or start a new version from the saved "
                "config.yaml with your change"
            )
        requested[key] = (old, new)
    merged: dict[str, Any] = dict(saved_plain)
    for key, (_old, new) in requested.items():
        _set_dotted(merged, key, new)
    try:
        config = schema.model_validate(merged) if requested else saved
    except ValidationError as exc:
        raise ConfigError(
            f"the resumed config is not valid: {exc.errors()[0].get('msg', exc)}"
        ) from None
    return ResumeConfig(config=config, saved=saved, changes=requested, source=source)


def _flag_paths(schema: type[ConfigModel], flags: Sequence[str]) -> dict[str, str]:
    """Dotted field path -> the flag (as typed) that set it."""
    if not flags:
        return {}
    parsed = parse_args(schema, list(flags), ())
    return {
        ".".join(path): flag.split("=", 1)[0].split(" ", 1)[0]
        for path, _value, flag in parsed.overrides
    }


def change_lines(mapping: Mapping[str, tuple[Any, Any]]) -> list[str]:
    """``key: old -> new`` lines for the console and the resume history."""
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(mapping.items())]
