"""Registry URIs for the SQL backend: what to connect to, and an experiment override.

URIs::

    sqlite:///relative/registry.db          relative to the working directory
    sqlite:////abs/path/registry.db         absolute path (four slashes)
    postgresql://user[:password]@host[:port]/dbname
    postgres://...                          the same; both use psycopg 3

Any URI may end in ``?experiment=NAME``: the registry then files this experiment's
versions under ``NAME`` instead of the experiment folder's resolved path, so machines
that mount the shared filesystem at different paths still share one experiment.
Other query parameters go to the driver (``?options=-csearch_path%3Dmyschema`` puts
the tables in schema ``myschema``; ``?connect_timeout=5`` shortens the connect wait).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from versionkit.backends.base import redact_uri
from versionkit.errors import BackendError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["SQLURIError", "parse_uri"]


class SQLURIError(BackendError, ValueError):
    """A registry URI that cannot name a SQL registry (a usage mistake: CLIs exit 2)."""

    exit_code = 2


def parse_uri(uri: str) -> tuple[URL, str | None]:
    """Turn a registry URI into the SQLAlchemy URL to connect to and the experiment override."""
    from sqlalchemy import exc
    from sqlalchemy.engine import make_url

    shown = redact_uri(uri)
    expected = "expected sqlite:///path/registry.db or postgresql://user@host:port/dbname"
    try:
        url = make_url(uri)
    except (exc.ArgumentError, ValueError) as err:
        raise SQLURIError(f"invalid registry URI {shown!r}: {expected}") from err
    backend, _, driver = url.drivername.partition("+")
    backend = backend.lower()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in ("sqlite", "postgresql"):
        raise SQLURIError(f"invalid registry URI {shown!r}: {expected}")
    driver = driver or ("pysqlite" if backend == "sqlite" else "psycopg")
    url = url.set(drivername=f"{backend}+{driver}")

    experiment = url.query.get("experiment")
    raw_query = parse_qsl(uri.partition("?")[2], keep_blank_values=True)
    if experiment is None and any(key == "experiment" for key, _ in raw_query):
        experiment = ""  # SQLAlchemy drops blank values; an empty name is still a mistake
    if isinstance(experiment, tuple):
        raise SQLURIError(f"registry URI {shown!r} gives ?experiment= more than once")
    if experiment is not None and not experiment.strip():
        raise SQLURIError(f"registry URI {shown!r} has an empty ?experiment= name")
    url = url.difference_update_query(["experiment"])

    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise SQLURIError(
                f"registry URI {shown!r} names no SQLite file (an in-memory database is not "
                f"shared between processes); use sqlite:///path/registry.db, or memory:// "
                f"for a registry that lives only in this process"
            )
        path = Path(database).expanduser()
        if path.is_dir():
            raise SQLURIError(
                f"SQLite registry {shown!r}: {path} is a folder; name a file such as "
                f"{path / 'registry.db'}"
            )
        if not path.parent.is_dir():
            folder = path.parent.absolute()
            raise SQLURIError(
                f"SQLite registry {shown!r}: folder {folder} does not exist; create it "
                f"first (mkdir -p {folder})"
            )
        url = url.set(database=str(path))
    elif not url.database:
        raise SQLURIError(f"registry URI {shown!r} names no database: {expected}")
    try:
        url.get_dialect().import_dbapi()
    except exc.NoSuchModuleError:
        raise SQLURIError(
            f"registry URI {shown!r}: SQLAlchemy knows no driver {url.drivername!r} "
            f"(use {backend}:// for the default driver)"
        ) from None
    except ImportError as err:
        raise BackendError(
            f"registry {shown!r} needs the Python package {err.name or driver!r}, which is "
            f"not installed; install it with: pip install 'versionkit-fractalgen[sql]'"
        ) from err
    return url, experiment
