"""fractalgen-sweep end to end: real trainings of a tiny model, one version per trial."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import fractalgen.train

if not hasattr(fractalgen.train, "train"):  # until the run lifecycle lands
    pytest.skip("needs fractalgen.train.train (the run lifecycle)", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "--config", "config/train_small.yaml", "--max_steps", "6", "--val_every_n_steps", "3",
    "--embed_dim_list", "[16,8,4]", "--num_heads_list", "[1,1,1]",
    "--num_blocks_list", "[1,1,1]", "--train_batch_size", "16", "--val_batch_size", "64",
    "--limit_val_batches", "1", "--warmup_steps", "0", "--num_images", "2",
    "--num_iter_list", "[1,1]", "--save_top_k", "1",
]


def _journal_study(root: Path, study: str) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = root / ".versionkit" / "sweeps.journal"
    return optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(
        str(journal))))


@pytest.mark.slow
def test_six_trials_with_two_jobs_make_six_versions_with_the_sampled_values(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "fractalgen.sweep", *TINY, f"--output_root={tmp_path}",
         "--space", "optim.lr=loguniform(1e-4,3e-2)",
         "--space", "model.embed_dim_list=choice([16,8,4],[24,12,4])",
         "--trials", "6", "--jobs", "2", "--pruner", "none"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    root = tmp_path / "fractalgen_small"
    study = _journal_study(root, "fractalgen_small")  # plain Optuna loads it
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    versions = sorted(t.user_attrs["version"] for t in trials)
    assert versions == list(range(6))
    for t in trials:
        n = t.user_attrs["version"]
        folder = Path(t.user_attrs["checkpoint_dir"])
        assert folder.resolve() == (root / "checkpoints" / f"version_{n}").resolve()
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        lr = config["optim"]["lr"]
        assert 1e-4 <= lr <= 3e-2 and lr == t.params["optim.lr"]
        assert config["model"]["embed_dim_list"] in ([16, 8, 4], [24, 12, 4])
        assert f"[trial {t.number}] ✓ Experiment version: {n}" in out
        assert f"[trial {t.number}] ✓ Config saved to: " in out
    # the records point back at the trials
    from versionkit.registry import Registry

    with Registry(root) as registry:
        records = {v.version: v.record for v in registry.list()}
    for t in trials:
        sweep = records[t.user_attrs["version"]]["sweep"]
        assert sweep["study"] == "fractalgen_small" and sweep["trial"] == t.number
        assert sweep["params"]["optim.lr"] == t.params["optim.lr"]
    # the summary table ranks them, best first
    header = next(line for line in out.splitlines() if line.startswith("trial "))
    assert header.split() == ["trial", "version", "optim.lr", "model.embed_dim_list", "best",
                              "val_loss", "status"]
    rows = out.splitlines()[out.splitlines().index(header) + 1:][:6]
    values = [float(row.split()[-2]) for row in rows]
    assert values == sorted(values) and all(row.endswith("completed") for row in rows)
    # and running the same command again continues the study instead of restarting it
    again = subprocess.run(
        [sys.executable, "-m", "fractalgen.sweep", *TINY, f"--output_root={tmp_path}",
         "--space", "optim.lr=loguniform(1e-4,3e-2)",
         "--space", "model.embed_dim_list=choice([16,8,4],[24,12,4])",
         "--trials", "6", "--jobs", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0 and "already holds 6 trials" in again.stdout
    assert re.search(r"checkpoints/version_6\b", again.stdout) is None


@pytest.mark.slow
@pytest.mark.postgres
def test_two_sweep_commands_on_two_nodes_share_one_postgres_study_and_registry(
    tmp_path: Path, pg_uri: str
) -> None:
    """The README's many-machine recipe with real training: the same command started at
    once by two processes (two "nodes", each with its own --jobs 1 and output folder
    root) on one PostgreSQL study and registry."""
    from versionkit.registry import Registry

    env = {**os.environ, "PYTHONPATH": str(REPO), "VERSIONKIT_BACKEND": pg_uri}
    storage = pg_uri.replace("postgresql://", "postgresql+psycopg://", 1)
    command = [sys.executable, "-m", "fractalgen.sweep", *TINY, f"--output_root={tmp_path}",
               "--space", "optim.lr=loguniform(1e-4,3e-2)", "--trials", "5",
               "--storage", storage, "--study", "nodes", "--pruner", "none"]
    nodes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs
    import optuna

    rdb = optuna.storages.RDBStorage(storage)
    try:
        trials = optuna.load_study(study_name="nodes", storage=rdb).get_trials()
    finally:
        rdb.engine.dispose()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    versions = sorted(t.user_attrs["version"] for t in trials)
    assert len(set(versions)) == 5
    with Registry(tmp_path / "fractalgen_small", pg_uri) as registry:
        records = {v.version: v for v in registry.list()}
    assert sorted(records) == versions
    assert sorted(v.record["sweep"]["trial"] for v in records.values()) == list(range(5))
    for t in trials:
        info = records[t.user_attrs["version"]]
        assert info.status == "completed"
        assert (info.checkpoint_dir / "last.ckpt").is_file()
        config = yaml.safe_load((info.checkpoint_dir / "config.yaml").read_text("utf-8"))
        assert config["optim"]["lr"] == t.params["optim.lr"]
    # each trial's four lines were printed once, by the process that ran it
    for t in trials:
        line = f"[trial {t.number}] ✓ Experiment version: {t.user_attrs['version']}"
        assert sum(out.count(line) for out in outs) == 1, outs


@pytest.mark.slow
def test_a_trial_that_looks_bad_is_pruned_and_its_version_is_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    from fractalgen.sweep import main
    from versionkit.registry import Registry

    # Two trials whose model learns, then (the same study, continued) one whose warm-up is
    # so long that the learning rate stays near zero for the whole run.
    base = [*TINY, f"--output_root={tmp_path}", "--lr", "0.03", "--pruner-startup", "2",
            "--study", "p"]
    code = main([*base, "--space", "optim.warmup_steps=int(0,2)", "--sampler", "random",
                 "--trials", "2"])
    assert code == 0, capsys.readouterr()
    code = main([*base, "--space", "optim.warmup_steps=int(100000,100001)", "--sampler",
                 "random", "--trials", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    study = _journal_study(tmp_path / "fractalgen_small", "p")
    good_1, good_2, bad = study.get_trials()
    assert bad.params["optim.warmup_steps"] >= 100000
    assert bad.state.name == "PRUNED", out
    assert [good_1.state.name, good_2.state.name] == ["COMPLETE", "COMPLETE"]
    assert 3 in bad.intermediate_values  # reported at its first validation
    with Registry(tmp_path / "fractalgen_small") as registry:
        info = registry.get(bad.user_attrs["version"])
        assert info.status == "pruned"
        assert (info.checkpoint_dir / "last.ckpt").is_file()
        best = registry.best("val_loss", "min")
        assert best is not None and best.version != info.version
    assert "[trial 2] ✗ pruned" in out
    assert re.search(r"^2\s+2\s+10000[01]\s+\S+\s+pruned$", out, re.M), out


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_marks_trials_and_versions_interrupted(
    tmp_path: Path,
) -> None:
    import signal
    import time

    from versionkit.registry import Registry

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fractalgen.sweep", *TINY, f"--output_root={tmp_path}",
         "--max_steps", "100000", "--space", "optim.lr=loguniform(1e-4,3e-2)",
         "--trials", "4", "--jobs", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # a terminal's Ctrl-C goes to its foreground group
    )
    root = tmp_path / "fractalgen_small"
    deadline = time.monotonic() + 300
    while not all((root / "checkpoints" / f"version_{n}" / "config.yaml").exists()
                  for n in (0, 1)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    assert "run the same command again to continue" in out
    with Registry(root) as registry:
        assert sorted(v.status for v in registry.list()) == ["interrupted", "interrupted"]
    trials = _journal_study(root, "fractalgen_small").get_trials()
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert [t.user_attrs["status"] for t in stopped] == ["interrupted", "interrupted"]
    # their values wait in the study for the next run
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert sorted(t.params["optim.lr"] for t in waiting) == sorted(
        t.params["optim.lr"] for t in stopped)

