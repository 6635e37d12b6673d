"""examples/sweep_own_module.py: a user's own LightningModule swept by versionkit.sweep."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sweep_own_module.py"


@pytest.mark.slow
def test_a_users_own_module_swept_with_two_jobs_is_one_version_per_trial(
    tmp_path: Path,
) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from versionkit.registry import Registry

    root = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--root", str(root), "--trials", "4", "--jobs", "2",
         "--max_steps", "40"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="digits", storage=JournalStorage(
        JournalFileBackend(str(root / ".versionkit" / "sweeps.journal"))))
    trials = study.get_trials()
    assert len(trials) == 4
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    with Registry(root) as registry:
        versions = {v.version: v for v in registry.list()}
    assert sorted(versions) == sorted(t.user_attrs["version"] for t in trials) == [0, 1, 2, 3]
    for t in trials:
        info = versions[t.user_attrs["version"]]
        assert info.record["sweep"] == {"study": "digits", "trial": t.number,
                                        "params": t.params}
        assert info.status == ("pruned" if t.state.name == "PRUNED" else "completed")
        config = yaml.safe_load((info.checkpoint_dir / "config.yaml").read_text("utf-8"))
        assert config["optim"]["lr"] == t.params["optim.lr"]
        assert config["model"]["hidden"] == t.params["model.hidden"]
        assert 1e-3 <= t.params["optim.lr"] <= 1e-1 and t.params["model.hidden"] in (16, 64)
        assert f"[trial {t.number}] ✓ Experiment version: {info.version}" in done.stdout
    # the summary table, ranked
    assert re.search(r"^trial\s+version\s+optim\.lr\s+model\.hidden\s+best val_loss\s+status$",
                     done.stdout, re.M), done.stdout
