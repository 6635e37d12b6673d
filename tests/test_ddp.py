"""A real 2-process DDP run on CPU (gloo): one version, and every rank uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_helpers import REPO, run_ddp_main, step_checkpoints, write_tiny

from versionkit.registry import Registry
from versionkit.run import RUN_ENV


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_lightning_launched_ddp_run_allocates_one_version(tmp_path: Path) -> None:
    cfg = write_tiny(tmp_path)
    proc = run_ddp_main(tmp_path, "--config", str(cfg), timeout=400)
    # The console lines appear once (rank 0 only).
    assert proc.stdout.count("✓ Experiment version: 0") == 1
    assert "✓ Experiment version: 1" not in proc.stdout
    root = tmp_path / "outputs" / "tiny"
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["version_0"]
    assert [p.name for p in (root / "logs").iterdir()] == ["version_0"]
    reg = Registry(root)
    versions = reg.list()
    assert [v.version for v in versions] == [0] and versions[0].status == "completed"
    # Rank 1 really ran, and checked its version against rank 0's (RegistryCallback.setup
    # broadcasts it) before training: a disagreement would have failed the run.
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    names = step_checkpoints(root / "checkpoints" / "version_0")
    assert [n[:13] for n in names] == ["step_00000002", "step_00000004"]
    blob = torch.load(root / "checkpoints" / "version_0" / "last.ckpt", weights_only=True)
    assert blob["global_step"] == 4
    assert not list((root / ".versionkit").glob("rendezvous/*.json"))


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torchrun_ranks_started_at_once_share_one_version(tmp_path: Path) -> None:
    """torchrun starts every rank itself: rank 0 allocates, rank 1 waits for its number."""
    cfg = write_tiny(tmp_path)
    Registry(tmp_path / "outputs" / "tiny").allocate()  # an earlier run: this one is 1
    env = {k: v for k, v in os.environ.items() if k not in (RUN_ENV, "VERSIONKIT_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "main.py"),
            "--config",
            str(cfg),
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--accelerator",
            "cpu",
            "--max_steps",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("✓ Experiment version: 1") == 1
    root = tmp_path / "outputs" / "tiny"
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["version_0", "version_1"]
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["version_0", "version_1"]
    assert [v.version for v in Registry(root).list()] == [0, 1]
    assert Registry(root).get(1).status == "completed"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    assert len(step_checkpoints(root / "checkpoints" / "version_1")) == 1
