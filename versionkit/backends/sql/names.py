"""What the SQL backend's light parts share without importing SQLAlchemy: the table
names, the layout version, the default waits and PostgreSQL's connection arguments.

``versionkit list`` reads through the driver alone (:mod:`versionkit.backends.sql.direct`)
and must not pay for importing SQLAlchemy (~0.2 s), so these live apart from
:mod:`~versionkit.backends.sql.schema` and :mod:`~versionkit.backends.sql.engine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LOCK_TIMEOUT_S",
    "SCHEMA_VERSION",
    "TABLE_PREFIX",
    "pg_connect_args",
]

#: Version of the table layout this code writes; a database at a higher one is refused.
SCHEMA_VERSION = 3
#: Every table this backend owns starts with this.
TABLE_PREFIX = "versionkit_"
META_TABLE = f"{TABLE_PREFIX}meta"
VERSIONS_TABLE = f"{TABLE_PREFIX}versions"
EXPERIMENT_META_TABLE = f"{TABLE_PREFIX}experiment_meta"

LOCK_TIMEOUT_S = 60.0  # default wait for SQLite's write lock or a PostgreSQL row lock
CONNECT_TIMEOUT_S = 10  # PostgreSQL: how long a connection attempt may take


def pg_connect_args(
    query: Mapping[str, Any], lock_timeout_s: float = LOCK_TIMEOUT_S
) -> dict[str, Any]:
    """What every PostgreSQL connection adds to the URI's own query parameters: a
    connect timeout, an application name, and a lock timeout (a stuck row lock becomes
    ``LockTimeout``, not a hang), each unless the URI sets it."""
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in query:
        args["application_name"] = "versionkit"
    options = query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    if "lock_timeout" not in options:
        args["options"] = f"{options} -c lock_timeout={int(lock_timeout_s * 1000)}".strip()
    return args
