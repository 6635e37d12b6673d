"""The SQL backend under real processes: 16 writers at once, first use racing, SIGKILL, fork.

Runs on SQLite and, when ``VERSIONKIT_TEST_POSTGRES`` is set, on PostgreSQL (each test
in a schema of its own, dropped afterwards).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from versionkit.backends.sql import SQLBackend
from versionkit.backends.sql import engine as sqlmod
from versionkit.testing import run_in_processes

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 16


def _fork_all(target: Any, args: tuple[Any, ...], count: int) -> list[Any]:
    """Run ``target(*args, index, start, out)`` in ``count`` forked processes at once."""
    return run_in_processes(target, [(*args, i) for i in range(count)])


def _allocate_and_merge(
    uri: str,
    root: Path,
    experiment: str,
    count: int,
    lock_timeout: float,
    index: int,
    start: Any,
    out: Any,
) -> None:
    try:
        b = SQLBackend(uri, root, experiment, lock_timeout=lock_timeout)
        start.wait(30)
        numbers = []
        for step in range(count):
            numbers.append(b.allocate(0, {"writer": index}))
            # Every writer merges its own key into version 0's metrics at the same time.
            b.modify(0, lambda r, step=step: {"metrics": {**r["metrics"], f"w{index}": step}})
        out.put(("ok", numbers))
    except BaseException as exc:
        out.put(("error", repr(exc)))


@pytest.mark.slow
def test_sixteen_processes_allocate_distinct_numbers(uri: str, tmp_path: Path) -> None:
    experiment = f"exp-{uuid.uuid4().hex}"
    parent = SQLBackend(uri, tmp_path, experiment)
    assert parent.allocate(0, {"metrics": {}}) == 0  # the parent's engine is live at fork
    per_process = 10
    args = (uri, tmp_path, experiment, per_process, 60.0)
    chunks = _fork_all(_allocate_and_merge, args, PROCESSES)
    numbers = sorted(n for chunk in chunks for n in chunk)
    assert numbers == list(range(1, PROCESSES * per_process + 1)), "numbers collided or skipped"
    assert all(chunk == sorted(chunk) for chunk in chunks)
    assert parent.next_number() == PROCESSES * per_process + 1
    record = parent.get(0)
    assert record is not None
    assert record["metrics"] == {f"w{i}": per_process - 1 for i in range(PROCESSES)}
    assert parent.allocate(0, {}) == PROCESSES * per_process + 1


def test_writers_with_their_own_lock_timeout_also_never_collide(uri: str, tmp_path: Path) -> None:
    # A non-default lock timeout takes the multi-statement transaction on PostgreSQL
    # (SELECT ... FOR UPDATE) instead of the one-statement allocation.
    experiment = f"exp-{uuid.uuid4().hex}"
    parent = SQLBackend(uri, tmp_path, experiment, lock_timeout=30.0)
    assert parent.allocate(0, {"metrics": {}}) == 0
    chunks = _fork_all(_allocate_and_merge, (uri, tmp_path, experiment, 8, 30.0), 6)
    assert sorted(n for chunk in chunks for n in chunk) == list(range(1, 6 * 8 + 1))
    record = parent.get(0)
    assert record is not None and record["metrics"] == {f"w{i}": 7 for i in range(6)}


_FIRST_USE = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from versionkit.backends.sql import SQLBackend
    uri, go = sys.argv[1], Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.002)
    b = SQLBackend(uri, Path("."), "first-use")
    print(json.dumps([b.allocate(0, {"pid": os.getpid()}) for _ in range(3)]), flush=True)
    """
)


@pytest.mark.slow
def test_sixteen_fresh_processes_race_to_create_the_tables(uri: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_USE, uri, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        go.touch()  # all imported; now every one opens a database with no tables yet
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failures = [err for (_, err), p in zip(outputs, procs, strict=True) if p.returncode != 0]
    assert not failures, failures[0]
    numbers = sorted(n for out, _ in outputs for n in json.loads(out.strip().splitlines()[-1]))
    assert numbers == list(range(3 * PROCESSES))


def _allocate_forever(uri: str, root: Path, experiment: str) -> None:
    b = SQLBackend(uri, root, experiment)
    while True:
        b.allocate(0, {"pid": os.getpid(), "payload": "x" * 200})
        b.append(0, "log", os.getpid())


def test_sigkill_mid_allocation_loses_and_reuses_nothing(uri: str, tmp_path: Path) -> None:
    experiment = f"exp-{uuid.uuid4().hex}"
    b = SQLBackend(uri, tmp_path, experiment)
    b.allocate(0, {"log": []})
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        target = b.next_number() + 15
        child = ctx.Process(target=_allocate_forever, args=(uri, tmp_path, experiment))
        child.start()
        deadline = time.monotonic() + 60
        while b.next_number() < target and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL, f"round {round_}: writer did not run"
        # Every transaction was all or nothing: rows are exactly 0 .. next - 1.
        top = b.next_number()
        assert top >= target
        assert [r["version"] for r in b.list()] == list(range(top))
        assert b.allocate(0, {"after": round_}) == top
    record = b.get(0)
    assert record is not None and len(record["log"]) >= 3 * 15 - 3


def _allocate_after_fork(
    uri: str, root: Path, experiment: str, index: int, start: Any, out: Any
) -> None:
    try:
        b = SQLBackend(uri, root, experiment)
        start.wait(30)
        out.put(("ok", [b.allocate(0, {"child": index}) for _ in range(5)]))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def _session_id(conn: sa.Connection) -> object:
    if conn.dialect.name == "postgresql":
        return conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
    return id(conn.connection.dbapi_connection)


def test_a_forked_child_never_touches_the_parents_connections(uri: str, tmp_path: Path) -> None:
    experiment = f"exp-{uuid.uuid4().hex}"
    b = SQLBackend(uri, tmp_path, experiment)
    b.allocate(0, {})
    _key, engine = sqlmod.engine_for(b._url)
    with engine.connect() as conn:
        before = _session_id(conn)
    chunks = _fork_all(_allocate_after_fork, (uri, tmp_path, experiment), 4)
    assert sorted(n for chunk in chunks for n in chunk) == list(range(1, 21))
    # The parent's pooled session is the very same one (the same PostgreSQL server
    # process, the same SQLite handle): no child closed or reused it.
    with engine.connect() as conn:
        assert _session_id(conn) == before
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    assert b.allocate(0, {}) == 21
