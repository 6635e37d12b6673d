"""Bad inputs and hostile state around the registry: each one a clear error, or harmless.

Numbers never come back (deleting records or folders), symlinks planted in the state
folder are not written through, odd record names are repaired, unusable roots are
refused before anything is written, and folder names too large for a number are named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from versionkit.errors import RegistryError
from versionkit.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "versionkit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_deleting_records_and_folders_never_brings_a_number_back(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    reg = Registry(root)
    for _ in range(6):
        reg.allocate()
    state = root / ".versionkit"
    (state / "versions" / "5.json").unlink()
    for folder in (reg.checkpoint_dir(5), reg.log_dir(5)):
        folder.rmdir()
    assert reg.allocate().version == 6
    import shutil

    shutil.rmtree(state / "versions")
    shutil.rmtree(root / "checkpoints")
    shutil.rmtree(root / "logs")
    assert Registry(root).allocate().version == 7, "deleting versions/ restarted the count"
    assert json.loads((state / "next.json").read_text()) == {"next": 8}


def test_a_symlink_planted_as_the_lock_holder_is_not_written_through(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    Registry(root).allocate()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious contents\n")
    holder = root / ".versionkit" / "lock.holder"
    holder.unlink()
    holder.symlink_to(victim)
    for name in ("meta.json", "best.json", "next.json"):
        planted = root / ".versionkit" / name
        original = planted.read_bytes() if planted.exists() else b"{}"
        planted.unlink(missing_ok=True)
        other = tmp_path / f"victim-{name}"
        other.write_bytes(original)
        planted.symlink_to(other)
    reg = Registry(root)
    reg.allocate()
    reg.backend.modify_meta(lambda meta: {"tags": {"x": 1}})
    assert victim.read_text() == "precious contents\n"
    assert not holder.is_symlink() and str(os.getpid()) in holder.read_text()
    for name in ("meta.json", "next.json"):
        assert not (root / ".versionkit" / name).is_symlink(), name


def test_repair_renames_a_record_named_with_leading_zeros(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    reg = Registry(root)
    for _ in range(8):
        reg.allocate()
    records = root / ".versionkit" / "versions"
    (records / "7.json").rename(records / "007.json")
    report = reg.repair()
    assert any("007.json" in action for action in report["actions"]), report
    assert (records / "7.json").exists() and not (records / "007.json").exists()
    assert reg.get(7).status == "running"
    assert reg.allocate().version == 8
    (records / "3.json").rename(records / "0003.json")
    (records / "3.json").write_text(json.dumps({"version": 3, "status": "completed"}))
    reg.repair()
    assert (records / "0003.json.corrupt").exists() and reg.get(3).status == "completed"


def test_a_root_that_is_a_symlink_loop_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(RegistryError, match="symlink loop"):
        Registry(tmp_path / "a")
    done = cli("allocate", str(tmp_path / "a"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: experiment root")
    assert "Traceback" not in done.stderr


def test_an_empty_root_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="experiment root is empty"):
        Registry("")
    with pytest.raises(RegistryError, match="experiment root is empty"):
        Registry("  ")
    done = cli("allocate", "", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: the experiment root is empty")
    assert os.listdir(tmp_path) == [], "nothing was created in the working folder"


@pytest.mark.parametrize("number", [2**62 - 1, 2**62, 10**30])
def test_a_folder_too_large_for_a_number_is_named(tmp_path: Path, number: int) -> None:
    root = tmp_path / "exp"
    huge = root / "checkpoints" / f"version_{number}"
    huge.mkdir(parents=True)
    for uri in ("file", f"sqlite:///{tmp_path}/r.db"):
        reg = Registry(root, uri)
        with pytest.raises(RegistryError, match="too large") as info:
            reg.allocate()
        assert str(huge) in str(info.value)
        assert reg.backend.next_number() == 0, "the refusal took no number"
        reg.close()


def test_checkpoints_may_be_a_symlink_to_another_disk(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    big_disk = tmp_path / "big" / "ckpts"
    big_disk.mkdir(parents=True)
    root.mkdir()
    (root / "checkpoints").symlink_to(big_disk)
    reg = Registry(root)
    n = reg.allocate().version
    spelt = reg.checkpoint_dir(n) / "step_00000010-val_loss_0.5000.ckpt"
    spelt.write_bytes(b"x")
    reg.add_checkpoint(n, spelt, step=10, metrics={"val_loss": 0.5})
    resolved = big_disk / f"version_{n}" / "last.ckpt"
    resolved.write_bytes(b"x")
    reg.add_checkpoint(n, resolved, step=12, metrics={"val_loss": 0.4})  # the disk's own path
    paths = [c["path"] for c in reg.get(n).record["checkpoints"]]
    assert paths == [
        f"checkpoints/version_{n}/step_00000010-val_loss_0.5000.ckpt",
        f"checkpoints/version_{n}/last.ckpt",
    ]
    best = reg.best()
    assert best is not None and best.path == root / "checkpoints" / f"version_{n}" / "last.ckpt"
    with pytest.raises(RegistryError, match="outside the experiment root"):
        reg.add_checkpoint(n, tmp_path / "big" / "elsewhere.ckpt", step=1)
