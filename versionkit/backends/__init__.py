"""Backend lookup by URI scheme: built-ins, then the ``versionkit.backends`` entry points.

Built-ins are named lazily (``"module:Class"``) so choosing the file backend never
imports SQLAlchemy. Third-party packages register a scheme with an entry point::

    [project.entry-points."versionkit.backends"]
    s3 = "mypkg.registry:S3Backend"

or at run time with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from versionkit.backends.base import Backend, Record, redact_uri
from versionkit.errors import BackendError, UnknownBackendError

__all__ = [
    "ENV_VAR",
    "Backend",
    "Record",
    "known_schemes",
    "open_backend",
    "redact_uri",
    "register_backend",
    "resolve_backend_class",
]

#: Environment variable naming the backend URI when none is passed explicitly.
ENV_VAR = "VERSIONKIT_BACKEND"

# scheme -> ("module:Class", extra to install when the import fails)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "file": ("versionkit.backends.file:FileBackend", None),
    "memory": ("versionkit.backends.memory:MemoryBackend", None),
    "sqlite": ("versionkit.backends.sql:SQLBackend", "sql"),
    "postgresql": ("versionkit.backends.sql:SQLBackend", "sql"),
    "postgres": ("versionkit.backends.sql:SQLBackend", "sql"),
}
_REGISTERED: dict[str, type[Backend]] = {}


def register_backend(scheme: str, cls: type[Backend], *, clobber: bool = False) -> None:
    """Make ``cls`` serve ``scheme://`` URIs; refuses to replace one unless ``clobber``."""
    scheme = scheme.lower()
    if not clobber and (scheme in _REGISTERED or scheme in _BUILTIN):
        raise ValueError(f"a backend for scheme {scheme!r} is already registered")
    _REGISTERED[scheme] = cls


def _entry_points() -> dict[str, str]:
    # Imported here: importlib.metadata costs ~18 ms, and the built-in schemes need none.
    from importlib.metadata import entry_points

    return {ep.name.lower(): ep.value for ep in entry_points(group="versionkit.backends")}


def known_schemes() -> list[str]:
    """Every scheme that can be used now, sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def scheme_of(uri: str) -> str:
    """``"sqlite:///x.db"`` -> ``"sqlite"``; ``"postgresql+psycopg://"`` -> ``"postgresql"``."""
    scheme = uri.split("://", 1)[0] if "://" in uri else uri.split(":", 1)[0]
    return scheme.split("+", 1)[0].lower()


def _load(target: str, scheme: str, extra: str | None) -> type[Backend]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (install it with: pip install 'versionkit-fractalgen[{extra}]')" if extra else ""
        raise BackendError(f"backend {scheme!r} needs {exc.name or module_name}{hint}") from exc
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"{target} (backend {scheme!r}) is not a versionkit Backend subclass")
    return cls


def resolve_backend_class(uri: str) -> type[Backend]:
    """The class serving ``uri``; ``UnknownBackendError`` lists the known schemes."""
    scheme = scheme_of(uri)
    if scheme in _REGISTERED:
        return _REGISTERED[scheme]
    if scheme in _BUILTIN:
        return _load(*_BUILTIN[scheme][:1], scheme, _BUILTIN[scheme][1])
    eps = _entry_points()
    if scheme in eps:
        return _load(eps[scheme], scheme, None)
    raise UnknownBackendError(
        f"unknown registry backend {redact_uri(uri)!r}: scheme {scheme!r} is not one of "
        f"{', '.join(known_schemes())}"
    )


def open_backend(uri: str | None, root: Path, experiment: str) -> Backend:
    """Build the backend for ``uri`` (``None``: ``$VERSIONKIT_BACKEND``, else ``file``)."""
    uri = uri or os.environ.get(ENV_VAR) or "file"
    return resolve_backend_class(uri)(uri, root, experiment)
