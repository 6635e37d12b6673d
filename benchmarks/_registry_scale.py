"""``bench_registry.py --versions 100,1000,...``: what the registry costs as it grows.

Per size and backend: one ``Registry.allocate`` (median of 20); ``get(N)``;
``iter_versions(limit=20, newest_first=True)`` and a whole ``versionkit list --json
--limit 20`` process; streaming every version (``iter_versions()``); a whole
``versionkit list`` process (the table) and a whole ``versionkit list --json`` process
over every version (median of 3 each, the output read through a pipe and its lines
counted); ``Registry.best()`` over every version (5 checkpoints each; the first call,
then the median of 5); and the peak Python memory of ``best`` and of streaming the
whole list. Each figure comes with its ratio to the smallest size's. What is timed is
the public API and the CLI.

At the end, a whole ``versionkit list`` process on an experiment with no version, per
backend (``list_cli_empty``: the fixed part of every listing), then ``allocate`` again on
every size and backend in turn (30 rounds), so that the sizes' medians come from the same
minutes (``allocate_interleaved``).

Building the experiments is not timed and goes around the API (the bulk path below,
for benchmarks only): records, counter and best index written directly for the file
backend, rows inserted in batches for SQL, every ``version_N`` folder and every
checkpoint file created. One experiment folder per size serves every backend (the
SQL records are keyed by that folder).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from versionkit.backends import _list_journal
from versionkit.backends.file import FileBackend
from versionkit.layout import LIST_CACHE, LIST_JOURNAL, STATE_DIR, Layout
from versionkit.registry import Registry
from versionkit.registry.records import new_record

CHECKPOINTS_PER_VERSION = 5


def _records(n: int) -> list[tuple[int, dict[str, Any]]]:
    base = new_record({"lr": 1e-4, "layers": [8, 2, 1]}, None, ["main.py"], 0, None)
    out = []
    for v in range(n):
        items = []
        for k in range(CHECKPOINTS_PER_VERSION):
            step = (k + 1) * 1000
            loss = round(1.0 / (1 + ((v * 7919 + k * 104729) % 100003)), 6)
            name = f"step_{step:08d}-val_loss_{loss:.4f}.ckpt"
            items.append(
                {
                    "path": f"checkpoints/version_{v}/{name}",
                    "step": step,
                    "metrics": {"val_loss": loss},
                }
            )
        record = dict(base, status="completed", version=v, checkpoints=items)
        record["config"] = {"lr": 1e-4, "layers": [8, 2, 1], "v": v}
        record["metrics"] = {"val_loss": items[-1]["metrics"]["val_loss"], "train_loss": 0.7}
        out.append((v, record))
    return out


def build_folders(root: Path, records: list[tuple[int, dict[str, Any]]]) -> None:
    """Every ``version_N`` folder and checkpoint file, with as few syscalls as it takes
    (the parents once; then one mkdir per folder and one open per empty file)."""
    layout = Layout(root)
    layout.checkpoints.mkdir(parents=True)
    layout.logs.mkdir(parents=True)
    base = os.path.join(root, "")
    flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
    for v, record in records:
        os.mkdir(layout.checkpoint_dir(v))
        os.mkdir(layout.log_dir(v))
        for item in record["checkpoints"]:
            os.close(os.open(base + item["path"], flags, 0o644))


def build_file(root: Path, records: list[tuple[int, dict[str, Any]]]) -> None:
    """The records, and the list journal's line of each as the backend's write of it
    appends it (the journal of an experiment written through the API)."""
    backend = FileBackend("file", root, "bench")
    backend.records_dir.mkdir(parents=True, exist_ok=True)
    lines = [_list_journal.header(0)]
    for v, record in records:
        data = json.dumps(record).encode()
        (backend.records_dir / f"{v}.json").write_bytes(data)
        lines.append(_list_journal.line(v, data, record) or b"")
    (backend.state_dir / LIST_JOURNAL).write_bytes(b"".join(lines))
    backend.counter_path.write_text(json.dumps({"next": len(records)}))
    backend.best_index.rebuild(r for _v, r in records)


def build_sql(root: Path, uri: str, records: list[tuple[int, dict[str, Any]]]) -> None:
    import sqlalchemy as sa

    from versionkit.backends.sql import SQLBackend, schema
    from versionkit.registry.summary import summary_of

    backend = SQLBackend(uri, root, str(root.resolve()))
    backend.next_number()  # creates the tables
    engine = backend._engine()
    with engine.begin() as conn:
        for start in range(0, len(records), 5000):
            chunk = records[start : start + 5000]
            conn.execute(
                sa.insert(schema.versions),
                [
                    {
                        "experiment": backend.experiment,
                        "number": v,
                        "record": json.dumps({k: x for k, x in r.items() if k != "version"}),
                        "summary": summary_of(v, r),
                    }
                    for v, r in chunk
                ],
            )
            rows = [
                row
                for v, r in chunk
                for row in schema.checkpoint_rows(backend.experiment, v, r["checkpoints"])
            ]
            conn.execute(sa.insert(schema.checkpoints), rows)
        conn.execute(
            sa.insert(schema.experiments).values(
                experiment=backend.experiment, next_number=len(records)
            )
        )
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE versionkit_checkpoints")
            conn.exec_driver_sql("ANALYZE versionkit_versions")
    backend.close()


def _median(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _peak_kib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()


def _cli_list(root: Path, uri: str, *extra: str, lines: int | None = None) -> None:
    """A whole ``versionkit list`` process, its output read through a pipe (as a pager or
    ``jq`` would read it) and checked to hold ``lines`` lines."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "versionkit", "list", str(root), "--backend", uri, *extra],
        capture_output=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    printed = done.stdout.count(b"\n")
    if lines is not None and printed != lines:
        raise RuntimeError(f"versionkit list printed {printed} lines, expected {lines}")


def measure(root: Path, uri: str, size: int) -> dict[str, float]:
    """The figures of one experiment on one backend (seconds, KiB)."""
    reg = Registry(root, uri)
    count = reg.backend.next_number()
    runs = 3 if size <= 10_000 else 1
    figures = {
        "allocate_ms": 1000 * _median(reg.allocate, 20),
        "get_ms": 1000 * _median(lambda: reg.get(count // 2), 50),
        "list_latest_20_ms": 1000
        * _median(lambda: list(reg.iter_versions(limit=20, newest_first=True)), 5),
        "list_cli_limit_20_s": _median(lambda: _cli_list(root, uri, "--json", "--limit", "20"), 3),
        "list_all_s": _median(lambda: sum(1 for _ in reg.iter_versions()), runs),
        "best_first_s": _median(reg.best, 1),
        "best_s": _median(reg.best, 5),
        "best_peak_kib": _peak_kib(reg.best),
        "stream_all_peak_kib": _peak_kib(lambda: sum(1 for _ in reg.iter_versions())),
    }
    # Every version: the table (one header line and a line each; the allocations
    # above added 20) and the JSON array (a bracket line each side).
    total = reg.backend.next_number()
    reg.close()
    if uri.partition(":")[0] == "file":
        # The first listing after the versions were written (no list cache yet, the
        # list journal as the writes left it) reads every record, decodes none, and
        # writes the cache; list_cli_s below is then a warm listing. Without the journal
        # too (records written by other tools, or the journal deleted), it decodes them.
        cache = root / STATE_DIR / LIST_CACHE
        journal = root / STATE_DIR / LIST_JOURNAL
        kept = journal.read_bytes()

        def first() -> None:
            cache.unlink(missing_ok=True)
            _cli_list(root, uri, lines=total + 1)

        def cold() -> None:
            cache.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            _cli_list(root, uri, lines=total + 1)

        figures["list_cli_cold_s"] = _median(cold, 3)
        journal.write_bytes(kept)
        figures["list_cli_first_s"] = _median(first, 3)
    figures["list_cli_s"] = _median(lambda: _cli_list(root, uri, lines=total + 1), 3)
    figures["list_cli_json_s"] = _median(
        lambda: _cli_list(root, uri, "--json", lines=total + 2), 3
    )
    reg = Registry(root, uri)
    assert reg.best() is not None, "every experiment built here has a best checkpoint"
    reg.close()
    return figures


TARGETS = {
    "allocate_ms": "<= 1.5x the smallest size",
    "list_cli_s": "<= 1 s SQL, <= 2 s file at 100,000",
    "best_s": "<= 0.2 s SQL, <= 2 s file at 100,000",
}


def run(
    sizes: list[int],
    backends: list[str],
    tmp: Path,
    uri_for: Callable[[str, Path], str | None],
    emit: Callable[..., None],
) -> None:
    """Build each size once, measure every backend on it, print figures and ratios."""
    first: dict[tuple[str, str], float] = {}
    built: list[tuple[int, str, str, Path]] = []
    for size in sizes:
        root = tmp / f"scale_{size}"
        started = time.perf_counter()
        records = _records(size)
        build_folders(root, records)
        uris = {}
        for name in backends:
            uri = uri_for(name, tmp / f"scale_{size}_{name}")
            if uri is None:
                continue
            (tmp / f"scale_{size}_{name}").mkdir(exist_ok=True)
            if name == "file":
                build_file(root, records)
            else:
                build_sql(root, uri, records)
            uris[name] = uri
        del records
        build_s = time.perf_counter() - started
        built += [(size, name, uri, root) for name, uri in uris.items()]
        for name, uri in uris.items():
            for figure, value in measure(root, uri, size).items():
                key = (name, figure)
                first.setdefault(key, value)
                unit = "KiB" if figure.endswith("_kib") else figure.rsplit("_", 1)[1]
                ratio = value / first[key] if first[key] else float("nan")
                emit(
                    f"{name} {figure[: figure.rfind('_')]} @ {size} versions",
                    value,
                    unit,
                    TARGETS.get(figure),
                    versions=size,
                    backend=name,
                    ratio_to_smallest=round(ratio, 2),
                    build_s=round(build_s, 1),
                )
    list_empty(backends, tmp, uri_for, emit)
    allocate_interleaved(built, emit)


def list_empty(
    backends: list[str],
    tmp: Path,
    uri_for: Callable[[str, Path], str | None],
    emit: Callable[..., None],
    runs: int = 5,
) -> None:
    """A whole ``versionkit list`` process on an experiment without versions (median of
    ``runs``): what a listing costs before its first version (start-up, imports, the
    connection)."""
    for name in backends:
        uri = uri_for(name, tmp / f"empty_{name}")
        if uri is None:
            continue
        (tmp / f"empty_{name}").mkdir(exist_ok=True)
        root = tmp / f"empty_{name}" / "exp"
        root.mkdir()
        Registry(root, uri).close()
        _cli_list(root, uri, lines=1)  # SQL: the tables exist from here on
        emit(
            f"{name} list_cli_empty",
            _median(lambda root=root, uri=uri: _cli_list(root, uri, lines=1), runs),
            "s",
            None,
            versions=0,
            backend=name,
            runs=runs,
        )


def allocate_interleaved(
    built: list[tuple[int, str, str, Path]], emit: Callable[..., None], rounds: int = 30
) -> None:
    """``allocate`` on every size and backend in turn, ``rounds`` times: the sizes' medians
    are taken over the same minutes, so a disk that slows down meanwhile (another job's
    fsyncs) slows every size alike and the ratio is the registry's own."""
    regs = {(size, name): Registry(root, uri) for size, name, uri, root in built}
    times: dict[tuple[int, str], list[float]] = {key: [] for key in regs}
    for _ in range(rounds):
        for key, reg in regs.items():
            started = time.perf_counter()
            reg.allocate()
            times[key].append(time.perf_counter() - started)
    smallest: dict[str, float] = {}
    for (size, name), values in times.items():
        value = 1000 * statistics.median(values)
        smallest.setdefault(name, value)
        emit(
            f"{name} allocate_interleaved @ {size} versions",
            value,
            "ms",
            TARGETS["allocate_ms"],
            versions=size,
            backend=name,
            ratio_to_smallest=round(value / smallest[name], 2),
            rounds=rounds,
        )
    for reg in regs.values():
        reg.close()
