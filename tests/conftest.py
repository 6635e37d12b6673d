"""Fixtures shared across test modules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The PostgreSQL server for tests (``.ci/run`` sets it); without it those tests skip.
PG_ENV = "VERSIONKIT_TEST_POSTGRES"


@pytest.fixture
def pg_uri() -> Iterator[str]:
    """A PostgreSQL registry URI whose tables live in a schema of this test's own."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need ${PG_ENV} (e.g. postgresql://postgres@127.0.0.1/test)")
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    from versionkit.backends.sql import engine as sqlmod
    from versionkit.backends.sql.uri import parse_uri

    schema = f"vk_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(parse_uri(base)[0], poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        # Backends a test left open still pool connections into the schema: end them.
        for key in [k for k in sqlmod._engines if schema in k]:
            sqlmod.dispose_engine(key)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQL registry URI: a fresh SQLite file, then PostgreSQL (skipped when not set up)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    value = request.getfixturevalue("pg_uri")
    assert isinstance(value, str)
    return value


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a module of tiny models: faster, and quick on a busy
    CPU (several threads spin-wait on each other's tiny ops)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
