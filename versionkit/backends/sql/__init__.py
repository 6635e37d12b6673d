"""The SQL backend (SQLite and PostgreSQL), in one module per concern.

- :mod:`~versionkit.backends.sql.uri`: registry URIs and the ``?experiment=`` override;
- :mod:`~versionkit.backends.sql.engine`: one engine per database per process;
- :mod:`~versionkit.backends.sql.errors`: driver failures as one-line errors;
- :mod:`~versionkit.backends.sql.schema`: the tables and their upgrades;
- :mod:`~versionkit.backends.sql.backend`: :class:`SQLBackend`, the primitives;
- :mod:`~versionkit.backends.sql.direct`: the reads of ``versionkit list`` through the
  driver alone (importing this package, and opening a backend whose URI it takes,
  imports no SQLAlchemy: what needs it imports it).
"""

from __future__ import annotations

from versionkit.backends.sql.backend import SQLBackend
from versionkit.backends.sql.names import SCHEMA_VERSION, TABLE_PREFIX
from versionkit.backends.sql.uri import SQLURIError

__all__ = ["SCHEMA_VERSION", "TABLE_PREFIX", "SQLBackend", "SQLURIError"]
