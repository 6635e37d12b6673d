"""``Registry`` on the SQL backend: records in the database, folders on the filesystem."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from versionkit.backends.sql import SQLBackend
from versionkit.errors import BackendError
from versionkit.registry import Registry


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        (tmp_path / "db").mkdir()
        return f"sqlite:///{tmp_path}/db/registry.db"
    value = request.getfixturevalue("pg_uri")
    assert isinstance(value, str)
    return value


def test_a_run_is_recorded_in_the_database(uri: str, tmp_path: Path) -> None:
    root = tmp_path / "outputs" / "fractalgen"
    with Registry(root, uri) as reg:
        assert isinstance(reg.backend, SQLBackend)
        v = reg.allocate(config={"lr": 0.001}, seed=3, command=["main.py"])
        assert v.version == 0 and v.status == "running"
        assert v.checkpoint_dir == root / "checkpoints" / "version_0"
        assert v.checkpoint_dir.is_dir() and v.log_dir.is_dir()
        reg.log_metrics(0, {"val_loss": 1.5}, step=10)
        ckpt = v.checkpoint_dir / "step_00000010-val_loss_1.5000.ckpt"
        ckpt.write_bytes(b"weights")
        reg.add_checkpoint(0, ckpt, step=10, metrics={"val_loss": 1.5})
        reg.set_status(0, "completed")
    # Another process (here: another Registry) reads it all back from the database.
    with Registry(root, uri) as again:
        info = again.get(0)
        assert info.status == "completed" and info.ended_at is not None
        assert info.metrics == {"val_loss": 1.5} and info.seed == 3
        best = again.best()
        assert best is not None and best.path == ckpt and best.metrics["val_loss"] == 1.5
        assert again.allocate().version == 1
    assert not (root / ".versionkit").exists(), "the file backend's state was not used"


def test_the_environment_variable_selects_the_database(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERSIONKIT_BACKEND", uri)
    with Registry(tmp_path / "exp") as reg:
        assert isinstance(reg.backend, SQLBackend)
        assert reg.allocate().version == 0
    with Registry(tmp_path / "exp", uri) as reg:
        assert [v.version for v in reg.list()] == [0]


def test_old_version_folders_push_the_first_number_above_them(uri: str, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    (root / "checkpoints" / "version_3").mkdir(parents=True)
    with Registry(root, uri) as reg:
        assert reg.allocate().version == 4


def test_two_mount_points_share_one_named_experiment(uri: str, tmp_path: Path) -> None:
    sep = "&" if "?" in uri else "?"
    shared = f"{uri}{sep}experiment=fractalgen-{uuid.uuid4().hex[:6]}"
    # The same shared filesystem, mounted at /mnt/a on one node and /mnt/b on another.
    with (
        Registry(tmp_path / "a" / "exp", shared) as a,
        Registry(tmp_path / "b" / "exp", shared) as b,
    ):
        assert a.allocate().version == 0
        assert b.allocate().version == 1
        assert [v.version for v in a.list()] == [0, 1]


def test_registry_lock_timeout_reaches_the_backend(uri: str, tmp_path: Path) -> None:
    with Registry(tmp_path / "exp", uri, lock_timeout=7.5) as reg:
        assert isinstance(reg.backend, SQLBackend) and reg.backend.lock_timeout == 7.5
        assert reg.allocate().version == 0


def test_a_missing_sqlite_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"folder .*nowhere does not exist; create it first"):
        Registry(tmp_path / "exp", f"sqlite:///{tmp_path}/nowhere/registry.db")
