"""Files honour the umask and a full disk is one clear line (issue 10, "Files on shared
folders"). The disk is filled by making writes fail with ENOSPC, as a real full disk does."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from versionkit import _atomic
from versionkit._atomic import write_atomic
from versionkit.errors import DiskFullError


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_mode_open_gives(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # what open() gives under this umask
    write_atomic(tmp_path / "atomic", b"x")
    assert mode(tmp_path / "atomic") == mode(plain) == 0o666 & ~umask


def test_replacing_keeps_the_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")
    os.chmod(target, 0o640)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o640


def test_registry_records_and_checkpoints_honour_the_umask(tmp_path: Path, umask: int) -> None:
    torch = pytest.importorskip("torch")
    from versionkit.lightning import AtomicCheckpointIO
    from versionkit.registry import Registry

    reg = Registry(tmp_path / "exp")
    reg.allocate()
    # the lock files are the file backend's own business (helper "registry")
    written = [p for p in (tmp_path / "exp").rglob("*.json") if p.is_file()]
    assert written, "the registry wrote no state files"
    ckpt = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, ckpt)
    write_atomic(tmp_path / "config.yaml", b"a: 1\n")
    for path in [*written, ckpt, tmp_path / "config.yaml"]:
        assert mode(path) == 0o666 & ~umask, path


class _FullDisk:
    """A file object whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, inner: Any, room: int) -> None:
        self._inner = inner
        self._room = room

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return int(self._inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        return _FullDisk(real(fd, *args, **kwargs), room=100)

    monkeypatch.setattr(_atomic.os, "fdopen", fdopen)


def _left_behind(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.mark.parametrize("size", [10, 10_000])
def test_full_disk_is_one_clear_error_and_changes_nothing(
    tmp_path: Path, full_disk: None, size: int
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(DiskFullError) as info:
        write_atomic(target, b"x" * 10_000)
    assert str(info.value) == (
        f"cannot write {target}: the disk is full (no space left on device); "
        "the file was not changed"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and _left_behind(tmp_path) == []


def test_full_disk_while_torch_saves_a_checkpoint(tmp_path: Path, full_disk: None) -> None:
    torch = pytest.importorskip("torch")
    from versionkit.lightning import AtomicCheckpointIO

    target = tmp_path / "last.ckpt"
    with pytest.raises(DiskFullError, match=r"the disk is full") as info:
        # torch reports the failed write as RuntimeError("unexpected pos ...")
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10_000)}, target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert not target.exists() and _left_behind(tmp_path) == []


def test_full_disk_on_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_atomic.os, "fsync", fsync)
    with pytest.raises(DiskFullError):
        write_atomic(tmp_path / "f", b"x")
    assert not (tmp_path / "f").exists() and _left_behind(tmp_path) == []


def test_other_write_errors_stay_what_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_atomic.os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "f", b"x")
    assert not isinstance(info.value, DiskFullError) and info.value.errno == errno.EIO


def test_full_disk_through_the_cli_is_one_line(
    tmp_path: Path, full_disk: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from versionkit import cli

    rc = cli.main(["allocate", str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "disk is full" in err
    assert "Traceback" not in err
    state = list((tmp_path / "exp").rglob("*.json"))
    assert not [p for p in state if p.parent.name == "versions"]  # no record was written
    for path in state:  # what was written is whole
        json.loads(path.read_text())


@pytest.mark.slow
def test_full_disk_while_training_is_one_line_and_no_checkpoint_is_torn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The disk fills up when the first checkpoint is written: the run stops with one
    # line naming the file, and no .ckpt exists half-written under its final name.
    pytest.importorskip("torch")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor writes")
    import warnings

    from test_train_helpers import write_tiny

    from fractalgen.train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    write_tiny(tmp_path)
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = real(fd, *args, **kwargs)
        if ".ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            return _FullDisk(handle, room=1000)
        return handle

    monkeypatch.setattr(_atomic.os, "fdopen", fdopen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["--config", "config/tiny.yaml", "--max_steps", "2"])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "the disk is full" in lines[0] and ".ckpt" in lines[0], err
    assert "Traceback" not in err and "unexpected pos" not in err
    folder = tmp_path / "outputs" / "tiny" / "checkpoints" / "version_0"
    assert not list(folder.glob("*.ckpt")) and not list(folder.glob("*.tmp"))
