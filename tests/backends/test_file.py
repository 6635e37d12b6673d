"""The contract suite against the file backend, plus its files, lock and repair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from versionkit.backends import open_backend
from versionkit.backends.base import Backend
from versionkit.backends.file import FileBackend
from versionkit.errors import BackendError, CorruptStateError, LockTimeout
from versionkit.testing import BackendContractSuite
from versionkit.testing_curate import CurateContract


@pytest.fixture
def backend(tmp_path: Path) -> Callable[..., Backend]:
    def make(name: str = "exp") -> Backend:
        return FileBackend("file", tmp_path / name, name)

    return make


class TestFileBackend(BackendContractSuite):
    shares_across_processes = True

    def delete_record(self, b: Backend, number: int) -> None:
        assert isinstance(b, FileBackend)
        (b.records_dir / f"{number}.json").unlink()


class TestFileCurate(CurateContract):
    shares_across_processes = True


@pytest.fixture
def fb(tmp_path: Path) -> FileBackend:
    return FileBackend("file", tmp_path / "exp", "exp")


def test_state_layout(fb: FileBackend) -> None:
    fb.allocate(0, {"status": "running"})
    state = fb.root / ".versionkit"
    assert json.loads((state / "next.json").read_text()) == {"next": 1}
    assert json.loads((state / "versions" / "0.json").read_text())["version"] == 0
    holder = (state / "lock.holder").read_text().split()
    assert holder[1] == str(os.getpid())
    assert not [p for p in state.rglob("*.tmp")], "no temp file is left behind"


def test_open_backend_picks_file_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    assert isinstance(open_backend(None, tmp_path, "x"), FileBackend)
    assert isinstance(open_backend("file://", tmp_path, "x"), FileBackend)


def test_file_uri_with_a_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="use 'file'"):
        FileBackend("file:///elsewhere/state", tmp_path, "x")


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"next": -3}', b"\xff\xfe"])
def test_corrupt_counter_is_an_error_not_a_reset(fb: FileBackend, content: bytes) -> None:
    for _ in range(3):
        fb.allocate(0, {})
    fb.counter_path.write_bytes(content)
    with pytest.raises(CorruptStateError) as info:
        fb.allocate(0, {})
    message = str(info.value)
    assert str(fb.counter_path) in message and "versionkit repair" in message
    assert fb.counter_path.read_bytes() == content, "nothing was changed"
    with pytest.raises(CorruptStateError):
        fb.next_number()


def test_corrupt_record_is_an_error(fb: FileBackend) -> None:
    fb.allocate(0, {})
    fb.allocate(0, {})
    (fb.records_dir / "1.json").write_text('{"version": 1, "stat')
    assert fb.get(0) is not None
    with pytest.raises(CorruptStateError, match=r"1\.json"):
        fb.get(1)
    with pytest.raises(CorruptStateError):
        fb.list()
    with pytest.raises(CorruptStateError):
        fb.update(1, {"status": "completed"})


def test_record_under_the_wrong_number_is_corrupt(fb: FileBackend) -> None:
    for _ in range(3):
        fb.allocate(0, {})
    (fb.records_dir / "1.json").write_text(json.dumps({"version": 2}))
    with pytest.raises(CorruptStateError, match="holds version 2, not 1"):
        fb.get(1)
    with pytest.raises(CorruptStateError):
        fb.list()
    fb.repair(0)
    stub = fb.get(1)
    assert stub is not None and stub["status"] == "unknown"


def test_missing_counter_with_records_is_corrupt(fb: FileBackend) -> None:
    for _ in range(2):
        fb.allocate(0, {})
    fb.counter_path.unlink()
    with pytest.raises(CorruptStateError, match="missing while version records exist"):
        fb.allocate(0, {})
    report = fb.repair(0)
    assert report["next_number"] == 2 and "recreated the missing counter" in report["actions"][0]
    assert fb.allocate(0, {}) == 2


def test_repair_rebuilds_and_never_lowers(fb: FileBackend) -> None:
    for _ in range(5):
        fb.allocate(0, {"status": "completed"})
    fb.raise_next_number(9)
    (fb.records_dir / "2.json").write_text("garbage")
    (fb.records_dir / ".3.json.123.tmp").write_text("{half")
    fb.counter_path.write_text("{")
    report = fb.repair(7)
    # the counter's 9 was unreadable: the best evidence left is records (<= 4) and floor 7
    assert report["next_number"] == 7
    assert any("2.json" in a for a in report["actions"])
    assert (fb.records_dir / "2.json.corrupt").read_text() == "garbage"
    stub = fb.get(2)
    assert stub is not None and stub["status"] == "unknown" and "2.json.corrupt" in stub["error"]
    assert not (fb.records_dir / ".3.json.123.tmp").exists()
    assert fb.allocate(0, {}) == 7
    # a readable counter above everything on disk is kept
    fb.raise_next_number(20)
    assert fb.repair(3)["next_number"] == 20
    assert fb.allocate(0, {}) == 20


def test_repair_counts_set_aside_records(fb: FileBackend) -> None:
    for _ in range(4):
        fb.allocate(0, {})
    (fb.records_dir / "3.json").write_text("x")
    fb.counter_path.unlink()
    (fb.records_dir / "3.json").rename(fb.records_dir / "3.json.corrupt")
    assert fb.repair(0)["next_number"] == 4


def test_record_ahead_of_counter_is_never_reused(fb: FileBackend) -> None:
    # A crash between writing record N and the counter: the counter still says N.
    fb.allocate(0, {})
    (fb.records_dir / "1.json").write_text(json.dumps({"version": 1, "status": "running"}))
    assert fb.next_number() == 2
    assert fb.allocate(0, {}) == 2


def test_next_number_is_above_records_and_counter(fb: FileBackend) -> None:
    # The records decide; next.json is a durable lower bound (raise_next_number, repair).
    for _ in range(5):
        fb.allocate(0, {})
    fb.counter_path.write_text('{"next": 1}')
    assert fb.allocate(0, {}) == 5
    assert fb.allocate(20, {}) == 20
    assert fb.next_number() == 21
    fb.raise_next_number(30)
    assert json.loads(fb.counter_path.read_text()) == {"next": 30}
    assert fb.allocate(0, {}) == 30


def test_lock_timeout_names_lock_and_holder(fb: FileBackend) -> None:
    fb.allocate(0, {})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from versionkit.backends.file import FileBackend
                b = FileBackend("file", Path({str(fb.root)!r}), "exp")
                with b._locked():
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        fb.lock_timeout = 0.2
        with pytest.raises(LockTimeout) as info:
            fb.allocate(0, {})
        message = str(info.value)
        assert str(fb.lock_path) in message
        assert f"pid {holder.pid}" in message
        assert isinstance(info.value, TimeoutError)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # the OS lock died with its holder: the next allocation goes through at once
    fb.lock_timeout = 5
    assert fb.allocate(0, {}) == 1


def test_read_only_state_is_a_clear_error(fb: FileBackend) -> None:
    fb.allocate(0, {})
    os.chmod(fb.records_dir, 0o555)
    os.chmod(fb.state_dir, 0o555)
    try:
        if os.access(fb.records_dir, os.W_OK):
            pytest.skip("running as root: chmod does not make folders read-only")
        with pytest.raises(BackendError, match="cannot write registry state"):
            fb.allocate(0, {})
    finally:
        os.chmod(fb.state_dir, 0o755)
        os.chmod(fb.records_dir, 0o755)


def test_threads_of_one_process_never_share_a_number(tmp_path: Path) -> None:
    import threading

    results: list[int] = []
    guard = threading.Lock()
    shared = FileBackend("file", tmp_path / "exp", "exp")

    def work(own: bool) -> None:
        b = FileBackend("file", tmp_path / "exp", "exp") if own else shared
        got = [b.allocate(0, {}) for _ in range(25)]
        with guard:
            results.extend(got)

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(150))


def test_unwritable_state_as_seen_by_a_normal_user(
    fb: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root (CI), chmod cannot make the state read-only: fail the temp-file creation
    # the way a read-only folder does for a normal user.
    import tempfile

    import versionkit._atomic as atomic

    fb.allocate(0, {"status": "running"})
    real_mkstemp = tempfile.mkstemp

    def refuse(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if Path(kwargs["dir"]).is_relative_to(fb.state_dir):
            raise PermissionError(13, "Permission denied", str(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(BackendError, match=r"cannot write registry state .*Permission denied"):
        fb.allocate(0, {})
    with pytest.raises(BackendError, match="cannot write registry state"):
        fb.update(0, {"status": "completed"})
    monkeypatch.undo()
    # Nothing was half-written: the record and the counter are as before.
    assert fb.get(0) is not None and fb.get(0)["status"] == "running"  # type: ignore[index]
    assert fb.next_number() == 1
