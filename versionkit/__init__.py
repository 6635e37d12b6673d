"""versionkit: typed config schemas and atomic experiment versions.

Everything public is re-exported here, lazily: ``import versionkit`` stays cheap (no
pydantic, no torch) until a name is used. Add new public names to ``_EXPORTS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from versionkit.errors import (
    BackendError,
    ConfigError,
    CorruptStateError,
    LockTimeout,
    RegistryError,
    UnknownBackendError,
    VersionkitError,
    VersionNotFoundError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "ConfigModel": "versionkit.config",
    "LoadedConfig": "versionkit.config",
    "load_config": "versionkit.config",
    "dump_config": "versionkit.config",
    "config_hash": "versionkit.config",
    "register_migration": "versionkit.config",
    "ConfigSection": "versionkit.config",
    "ControlFlag": "versionkit.config",
    "FieldError": "versionkit.config",
    "MISSING": "versionkit.config",
    "load_yaml_config": "versionkit.config",
    "diff_configs": "versionkit.config",
    "config_to_flags": "versionkit.config",
    "json_schema": "versionkit.config",
    "Registry": "versionkit.registry",
    "VersionInfo": "versionkit.registry",
    "CheckpointInfo": "versionkit.registry",
    "Backend": "versionkit.backends.base",
    "register_backend": "versionkit.backends",
}

__all__ = [
    "BackendError",
    "ConfigError",
    "CorruptStateError",
    "LockTimeout",
    "RegistryError",
    "UnknownBackendError",
    "VersionNotFoundError",
    "VersionkitError",
    "__version__",
    *_EXPORTS,
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from versionkit.backends import register_backend
    from versionkit.backends.base import Backend
    from versionkit.config import (
        MISSING,
        ConfigModel,
        ConfigSection,
        ControlFlag,
        FieldError,
        LoadedConfig,
        config_hash,
        config_to_flags,
        diff_configs,
        dump_config,
        json_schema,
        load_config,
        load_yaml_config,
        register_migration,
    )
    from versionkit.registry import CheckpointInfo, Registry, VersionInfo


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'versionkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
