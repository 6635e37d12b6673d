"""fractalgen.train through versionkit.run: what a resume may change, and what it may not
touch; resuming after a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_helpers import FILTERS, REPO, write_tiny

from fractalgen.train import main
from versionkit.registry import Registry
from versionkit.run import RUN_ENV

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]

CK = "outputs/tiny/checkpoints/version_0"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_ENV, raising=False)
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    write_tiny(tmp_path)
    yield tmp_path


def state(root: Path) -> tuple[str, dict[str, Any], bytes]:
    info = Registry(root / "outputs" / "tiny").get(0)
    return info.status, info.record, (root / CK / "config.yaml").read_bytes()


@pytest.mark.slow
def test_resume_uses_the_saved_config_and_a_refused_one_changes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", "config/tiny.yaml", "--lr", "5e-4", "--max_steps", "2"]) == 0
    capsys.readouterr()
    before = state(workdir)
    # The file says lr 1e-3, the version was trained at 5e-4: refused, nothing changed.
    assert main(["--resume", "latest", "--config", "config/tiny.yaml", "--max_steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config config/tiny.yaml: cannot change optim.lr when "
                          "resuming (saved 0.0005, given 0.001)")
    assert err.count("\n") == 1 and state(workdir) == before
    # --print_config shows what a resume would train with.
    assert main(["--resume", "latest", "--experiment.name", "tiny", "--max_steps", "4",
                 "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "  lr: 0.0005\n" in printed and "  max_steps: 4\n" in printed
    # Without --config, `latest` finds the experiment from --experiment.name.
    assert main(["--resume", "latest", "--experiment.name", "tiny", "--max_steps", "4"]) == 0
    status, record, saved = state(workdir)
    assert status == "completed" and saved == before[2]
    assert record["config"] == before[1]["config"]
    assert record["config"]["trainer"]["max_steps"] == 2
    assert record["config_hash"] == before[1]["config_hash"]
    (entry,) = record["resumes"]
    assert entry["changes"] == {"trainer.max_steps": [2, 4]}
    blob = torch.load(workdir / CK / "last.ckpt", weights_only=True)
    assert blob["global_step"] == 4
    assert blob["hyper_parameters"]["config"]["optim"]["lr"] == 5e-4

    # A checkpoint of another model: exit 2, one line naming the weight, nothing changed.
    capsys.readouterr()
    key = "model.levels.0.pos_embed"
    shape = list(blob["state_dict"][key].shape)
    wide = [*shape[:-1], 2 * shape[-1]]
    blob["state_dict"][key] = torch.zeros(*wide)
    torch.save(blob, workdir / CK / "last.ckpt")
    before = state(workdir)
    assert main(["--resume", CK, "--max_steps", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"not of this model: {key} is {wide} in the checkpoint but {shape} here" in err
    assert state(workdir) == before


@pytest.mark.slow
def test_resume_after_a_real_sigkill(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (RUN_ENV, "VERSIONKIT_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--config", "config/tiny.yaml",
         "--max_steps", "10000", "--val_every_n_steps", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    root = workdir / "outputs" / "tiny"
    try:
        deadline = time.monotonic() + 240
        while not list((root / "checkpoints" / "version_0").glob("step_*.ckpt")):
            assert proc.poll() is None, "the training process ended early"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    info = Registry(root).get(0)
    assert info.status == "running" and info.is_dead  # the common crash: no cleanup ran
    assert info.record["lease"]["pid"] == proc.pid
    steps = [
        torch.load(p, weights_only=True)["global_step"]
        for p in (root / "checkpoints" / "version_0").glob("*.ckpt")
    ]
    target = max(steps) + 2
    assert main(["--resume", "outputs/tiny", "--max_steps", str(target)]) == 0
    out = capsys.readouterr().out
    assert "✓ Resuming experiment version: 0" in out
    info = Registry(root).get(0)
    assert info.status == "completed" and len(info.record["resumes"]) == 1
    assert info.record["lease"] is None
    blob = torch.load(root / "checkpoints" / "version_0" / "last.ckpt", weights_only=True)
    assert blob["global_step"] == target


@pytest.mark.slow
def test_train_api_for_sweeps_records_extra_and_reports_the_result(workdir: Path) -> None:
    import pytorch_lightning as pl

    from fractalgen.config import TrainConfig
    from fractalgen.train import train
    from versionkit.config import load_config
    from versionkit.run import RunPruned

    lines: list[str] = []
    loaded = load_config(TrainConfig, ["--config", "config/tiny.yaml", "--max_steps", "2"])
    result = train(loaded, extra={"sweep": {"study": "s", "trial": 0}}, printer=lines.append)
    reg = Registry(workdir / "outputs" / "tiny")
    best = reg.best("val_loss", "min", version=0)
    assert best is not None and result.version == 0 and result.status == "completed"
    assert (result.best_metric, result.best_step) == (best.metrics["val_loss"], 2)
    assert result.checkpoint_dir == Path("outputs/tiny/checkpoints/version_0")
    assert lines[0] == "✓ Experiment version: 0" and lines[-1].startswith("✓ Best checkpoint: ")
    assert reg.get(0).record["sweep"] == {"study": "s", "trial": 0}

    class Prune(pl.Callback):
        def on_validation_end(self, trainer: Any, module: Any) -> None:
            raise RunPruned("hopeless")

    with pytest.raises(RunPruned):
        train(loaded, callbacks=[Prune()], printer=lines.append)
    info = reg.get(1)
    assert info.status == "pruned" and info.record["lease"] is None
    assert (reg.checkpoint_dir(1) / "last.ckpt").is_file()


def test_a_version_without_a_checkpoint_cannot_be_resumed(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = Registry(workdir / "outputs" / "tiny")
    reg.allocate()  # killed before its first checkpoint
    before = reg.get(0).record
    assert main(["--resume", "outputs/tiny", "--max_steps", "9"]) == 3
    err = capsys.readouterr().err
    assert err == (
        "error: --resume outputs/tiny: outputs/tiny/checkpoints/version_0 holds no checkpoint "
        "(.ckpt) to start from\n"
    )
    assert reg.get(0).record == before
