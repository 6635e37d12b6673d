"""Private registry of config migrations (see :func:`versionkit.config.register_migration`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from versionkit.errors import ConfigError

if TYPE_CHECKING:
    from versionkit.config import ConfigModel

__all__ = ["migrate", "register_migration"]

F = TypeVar("F", bound=Callable[[dict[str, Any]], dict[str, Any]])

_MIGRATIONS: dict[type[ConfigModel], dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


def register_migration(schema: type[ConfigModel], from_version: int) -> Callable[[F], F]:
    """Register ``fn(data) -> data`` that turns a ``from_version`` config of ``schema``
    into a ``from_version + 1`` one (it receives a deep copy of the plain dict).

    Example::

        @register_migration(TrainConfig, 1)
        def rename_lr(data):
            data["optim"]["base_lr"] = data["optim"].pop("blr")
            return data
    """
    if from_version < 1:
        raise ValueError(f"from_version must be >= 1, given {from_version}")

    def decorate(fn: F) -> F:
        table = _MIGRATIONS.setdefault(schema, {})
        if from_version in table:
            raise ValueError(
                f"a migration of {schema.__name__} from version {from_version} is already "
                f"registered ({table[from_version].__name__})"
            )
        table[from_version] = fn
        return fn

    return decorate


def migrate(schema: type[ConfigModel], data: dict[str, Any], source: str) -> dict[str, Any]:
    current = schema.SCHEMA_VERSION
    version = data.get("schema_version", current)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(
            f"{source}: schema_version: expected a positive integer, given {version!r}"
        )
    if version > current:
        raise ConfigError(
            f"{source}: schema_version {version} is newer than this program's "
            f"{schema.__name__} (version {current}); upgrade the program or use a config "
            f"written for version {current}"
        )
    table = _MIGRATIONS.get(schema, {})
    while version < current:
        fn = table.get(version)
        if fn is None:
            raise ConfigError(
                f"{source}: this config has schema_version {version} but {schema.__name__} "
                f"is at version {current}, and no migration from version {version} is "
                "registered"
            )
        data = fn(copy.deepcopy(data))
        if not isinstance(data, dict):
            raise TypeError(f"migration {fn.__name__} returned {type(data).__name__}, not dict")
        version += 1
        data["schema_version"] = version
    return data
