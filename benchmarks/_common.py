"""What every benchmark script shares: the machine line and the one-JSON-line-per-figure output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine(extra: str = "") -> str:
    """CPU model, core count, Python, OS and the load average when the benchmark started."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = (
        f"{cpu}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load {load:.1f} at start"
    )
    return f"{text}, {extra}" if extra else text


def emit(
    bench: str,
    figure: str,
    value: float | int,
    unit: str,
    target: str | None,
    machine: str,
    digits: int = 4,
    **extra: Any,
) -> None:
    """Print one figure as one JSON line (floats rounded to ``digits`` decimals)."""
    row = {
        "bench": bench,
        "figure": figure,
        "value": round(value, digits) if isinstance(value, float) else value,
        "unit": unit,
        "target": target,
        "machine": machine,
        **extra,
    }
    print(json.dumps(row), flush=True)


#: PostgreSQL schemas that ``registry_uri`` made, for ``drop_pg_schemas``.
_PG_SCHEMAS: list[tuple[str, str]] = []


def registry_uri(name: str, tmp: Path) -> str | None:
    """The registry URI a benchmark uses for backend ``name`` (None: PostgreSQL is not set
    up through ``$VERSIONKIT_TEST_POSTGRES``). PostgreSQL runs in a schema of its own."""
    if name == "file":
        return "file"
    if name == "memory":
        return "memory://bench"
    if name == "sqlite":
        return f"sqlite:///{tmp / 'registry.db'}"
    if name in ("postgresql", "postgres"):
        base = os.environ.get("VERSIONKIT_TEST_POSTGRES")
        return _pg_schema_uri(base) if base else None
    return name  # any other URI, e.g. a third-party scheme


def _pg_schema_uri(base: str) -> str | None:
    """``base`` in a schema of its own (dropped by ``drop_pg_schemas``), so runs leave
    nothing behind."""
    import uuid

    try:
        import sqlalchemy as sa
    except ImportError:
        return None
    schema = f"vk_bench_{uuid.uuid4().hex[:12]}"
    url = base.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "postgres://", "postgresql+psycopg://", 1
    )
    try:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception:  # unreachable: the benchmark reports it through Registry's error
        return base
    _PG_SCHEMAS.append((url, schema))
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schemas() -> None:
    """Drop every schema ``registry_uri`` made."""
    if not _PG_SCHEMAS:
        return
    import sqlalchemy as sa

    while _PG_SCHEMAS:
        url, schema = _PG_SCHEMAS.pop()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
