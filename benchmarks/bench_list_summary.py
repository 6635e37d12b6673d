"""A whole ``versionkit list`` process on SQL: read from the ``summary`` column, against
the same listing with every summary NULL (each row summarised from its decoded record,
as every listing did before the column), in the same run, alternating.

    python benchmarks/bench_list_summary.py --versions 10000,100000 \
        --backends sqlite,postgresql --runs 3

One JSON line per figure (median of ``--runs`` processes); experiments are built as
``bench_registry.py --versions`` builds them. PostgreSQL uses ``$VERSIONKIT_TEST_POSTGRES``
in a schema of its own; without it, that backend is left out.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _registry_scale as scale  # noqa: E402
from _common import drop_pg_schemas, emit, machine, registry_uri  # noqa: E402

MACHINE = machine()


def _set_summaries(root: Path, uri: str, on: bool) -> None:
    """Fill every summary (``on``) or make them all NULL (the listing reads records)."""
    import sqlalchemy as sa

    from versionkit.backends.sql import SQLBackend, schema

    backend = SQLBackend(uri, root, str(root.resolve()))
    backend.next_number()
    with backend._engine().begin() as conn:
        if on:
            schema.fill_summaries(conn, backend.experiment)
        else:
            conn.execute(sa.update(schema.versions).values(summary=None))
    if backend._dialect == "postgresql":  # the updates above left dead row versions
        with backend._engine().connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(f"VACUUM ANALYZE {schema.versions.name}")
    backend.close()


def _timed(root: Path, uri: str, lines: int) -> float:
    started = time.perf_counter()
    scale._cli_list(root, uri, lines=lines)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", default="10000,100000", help="comma-separated sizes")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql")
    parser.add_argument("--runs", type=int, default=3, help="processes per figure (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as name:
        tmp = Path(name)
        try:
            for size in [int(s) for s in args.versions.split(",") if s.strip()]:
                root = tmp / f"scale_{size}"
                records = scale._records(size)
                scale.build_folders(root, records)
                for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
                    uri = registry_uri(backend, tmp / f"{backend}_{size}")
                    if uri is None:
                        continue
                    (tmp / f"{backend}_{size}").mkdir()
                    scale.build_sql(root, uri, records)
                    times: dict[str, list[float]] = {"summary": [], "record": []}
                    for _ in range(args.runs):  # alternating, so drift hits both alike
                        for kind in ("summary", "record"):
                            _set_summaries(root, uri, kind == "summary")
                            times[kind].append(_timed(root, uri, size + 1))
                    for kind, values in times.items():
                        emit("list_summary", f"{backend} list_cli from {kind} @ {size} versions",
                             statistics.median(values), "s", "<= 1 s at 100,000", MACHINE,
                             versions=size, backend=backend, runs=[round(v, 3) for v in values])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            drop_pg_schemas()


if __name__ == "__main__":
    main()
