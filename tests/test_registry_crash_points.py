"""SIGKILL at named points inside a backend's write, not at a moment chosen by sleeping.

A child process runs with ``VERSIONKIT_TEST_PAUSE_AT=<point>``: the backend blocks at
that point and says so on stderr (``versionkit._faults``); the test then kills it there
and checks that the registry is whole: no number given out twice, nothing half-written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from versionkit._faults import ENV_VAR
from versionkit.backends.base import Backend
from versionkit.backends.file import FileBackend
from versionkit.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def kill_at(point: str, script: str) -> None:
    """Run ``script`` in a child that pauses at ``point``; SIGKILL it there."""
    env = {**os.environ, ENV_VAR: point, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        assert line.startswith(f"paused {point} "), line + child.stderr.read()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr is not None:
            child.stderr.close()


def test_file_allocation_killed_between_counter_and_record_burns_the_number(
    tmp_path: Path,
) -> None:
    root = tmp_path / "exp"
    b = FileBackend("file", root, "exp")
    assert b.allocate(0, {}) == 0
    kill_at(
        "allocate:after-counter",
        f"""
        from pathlib import Path
        from versionkit.backends.file import FileBackend
        FileBackend("file", Path({str(root)!r}), "exp").allocate(0, {{"by": "child"}})
        """,
    )
    state = root / ".versionkit"
    assert json.loads((state / "next.json").read_text()) == {"next": 2}
    assert b.get(1) is None, "the record was never written"
    assert b.allocate(0, {}) == 2, "the child's number is never handed out again"
    assert [r["version"] for r in b.list()] == [0, 2]
    assert not list(state.rglob("*.tmp"))


def test_file_checkpoint_record_killed_before_the_index_update_keeps_best_right(
    tmp_path: Path,
) -> None:
    root = tmp_path / "exp"
    reg = Registry(root)
    n = reg.allocate().version
    good = reg.checkpoint_dir(n) / "a.ckpt"
    worse = reg.checkpoint_dir(n) / "b.ckpt"
    for path in (good, worse):
        path.write_bytes(b"x")
    reg.add_checkpoint(n, good, step=1, metrics={"val_loss": 0.1})
    reg.add_checkpoint(n, worse, step=2, metrics={"val_loss": 0.5})
    # The child forgets the good one: the record is written, the index not yet.
    kill_at(
        "modify:after-record",
        f"""
        from versionkit.registry import Registry
        Registry({str(root)!r}).remove_checkpoint({n}, {str(good)!r})
        """,
    )
    assert [c["path"] for c in reg.get(n).record["checkpoints"]] == [
        f"checkpoints/version_{n}/b.ckpt"
    ]
    best = reg.best()
    assert best is not None and best.path == worse, "a stale index entry was trusted"


SQL_SCRIPT = """
from pathlib import Path
from versionkit.backends.sql import SQLBackend
b = SQLBackend({uri!r}, Path({root!r}), "exp")
# A lock timeout of its own: PostgreSQL then allocates in a transaction too (its default
# path is one autocommitted statement, which has no inside to stop in).
b.lock_timeout = 30
{call}
"""


@pytest.mark.parametrize(
    ("point", "call"),
    [
        ("allocate:in-transaction", "b.allocate(0, {'by': 'child'})"),
        ("modify:in-transaction", "b.update(0, {'status': 'changed'})"),
    ],
)
def test_sql_write_killed_inside_its_transaction_changes_nothing(
    uri: str, tmp_path: Path, point: str, call: str
) -> None:
    from versionkit.backends.sql import SQLBackend

    b: Backend = SQLBackend(uri, tmp_path, "exp")
    try:
        assert b.allocate(0, {"status": "running"}) == 0
        kill_at(point, SQL_SCRIPT.format(uri=uri, root=str(tmp_path), call=call))
        # All or nothing: the child's transaction never committed, and its locks died
        # with its connection (a later write does not wait for them).
        assert b.next_number() == 1
        assert b.get(0) == {"status": "running", "version": 0}
        assert b.allocate(0, {}) == 1
        assert b.update(0, {"status": "completed"})["status"] == "completed"
    finally:
        b.close()
