"""The original request's journey, end to end in a temp dir (spec §2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_train_helpers import FILTERS, REPO, config_body, step_checkpoints, write_tiny

from fractalgen.train import main
from versionkit.registry import Registry
from versionkit.run import RUN_ENV

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (RUN_ENV, "VERSIONKIT_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.slow
def test_two_runs_rerun_from_saved_config_and_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_ENV, raising=False)
    monkeypatch.delenv("VERSIONKIT_BACKEND", raising=False)
    cfg = write_tiny(tmp_path, "train_small.yaml")

    # Run 1 through the real command line, exactly as the user types it.
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("✓")]
    assert lines[:4] == [
        "✓ Experiment version: 0",
        "✓ Checkpoint dir: outputs/tiny/checkpoints/version_0",
        "✓ Saved config from: config/train_small.yaml",
        "✓ Config saved to: outputs/tiny/checkpoints/version_0/config.yaml",
    ]
    assert "Traceback" not in proc.stderr

    # Run 2: the next version, same layout.
    assert main(["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "✓ Experiment version: 1\n✓ Checkpoint dir: outputs/tiny/checkpoints/version_1\n" in out

    root = tmp_path / "outputs" / "tiny"
    for n in (0, 1):
        ck = root / "checkpoints" / f"version_{n}"
        names = step_checkpoints(ck)
        assert [name[:13] for name in names] == ["step_00000002", "step_00000004"]
        assert (ck / "last.ckpt").is_file() and (ck / "config.yaml").is_file()
        assert (ck / "config.source.yaml").read_text() == cfg.read_text()
        events = list((root / "logs" / f"version_{n}").glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events in logs/version_{n}"
        assert list((root / "logs" / f"version_{n}" / "samples").glob("samples_step_*.png"))
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["version_0", "version_1"]
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["version_0", "version_1"]

    # Run 3 from the saved config: a new version whose saved config is identical.
    saved0 = root / "checkpoints" / "version_0" / "config.yaml"
    assert main(["--config", str(saved0.relative_to(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "✓ Saved config from: outputs/tiny/checkpoints/version_0/config.yaml" in out
    saved2 = root / "checkpoints" / "version_2" / "config.yaml"
    assert config_body(saved2.read_text()) == config_body(saved0.read_text())
    reg = Registry(root)
    assert reg.get(0).config_hash == reg.get(2).config_hash
    assert all(v.status == "completed" for v in reg.list())
    assert reg.diff(0, 2) == {}

    # TensorBoard got the scalars and the sample grid.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "logs" / "version_0"))
    acc.Reload()
    assert {"train/loss", "lr", "val_loss"} <= set(acc.Tags()["scalars"])
    assert "samples" in acc.Tags()["images"]

    # Inference through the real command line.
    best = reg.best("val_loss", "min", version=0)
    assert best is not None
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "inference.py"),
            "--checkpoint",
            str(best.path.relative_to(tmp_path)),
            "--mode",
            "unconditional",
            "--num_images",
            "4",
            "--output_dir",
            "samples",
            "--num_iter",
            "1,1",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "✓ Experiment version: 0" in proc.stdout
    pngs = sorted((tmp_path / "samples").glob("*.png"))
    assert [p.name for p in pngs] == [
        "00000.png",
        "00001.png",
        "00002.png",
        "00003.png",
        "grid.png",
    ]
    for p in pngs:
        with Image.open(p) as img:
            img.verify()
