"""The adapter in real processes: a crash mid-write, SIGTERM, a training run and a DDP run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lightning_script import parser, train
from lightning_support import FILTERS

from versionkit.lightning.checkpoint_io import CheckpointIOMixin
from versionkit.registry import Registry

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "lightning_script.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERSIONKIT_RUN", "RANK",
                                                            "LOCAL_RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _losses(path: Path) -> dict[int, str]:
    return {int(a): b for a, b in (line.split() for line in path.read_text().splitlines())}


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from versionkit.lightning import classes

    def dying_save(obj, f, *a, **k):
        f.write(b"PARTIAL" * 1000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save
    classes(sys.argv[2]).AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, sys.argv[1])
    """
)


@pytest.mark.slow
def test_checkpoint_never_half_written_on_crash(tmp_path: Path) -> None:
    lightning = "pytorch_lightning"
    from versionkit.lightning import classes

    io = classes(lightning).AtomicCheckpointIO()
    target = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(2)}, target)
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(target), lightning],
        env=_env(), check=False, cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL
    # The old checkpoint is intact under the final name; the partial bytes never got there.
    torch.testing.assert_close(io.load_checkpoint(target)["w"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == ["last.ckpt"]


@pytest.mark.slow
def test_sigterm_saves_the_step_ends_promptly_and_resume_continues_exactly(
    tmp_path: Path,
) -> None:
    marker, losses, log = tmp_path / "started", tmp_path / "losses.txt", tmp_path / "err.txt"
    root = tmp_path / "exp"
    with log.open("w") as err, subprocess.Popen(
        [sys.executable, str(SCRIPT), str(root), "--max_steps", "100000", "--sleep", "0.05",
         "--marker", str(marker), "--losses", str(losses)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
    ) as proc:
        try:
            deadline = time.monotonic() + 200
            while not marker.exists():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the training never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 143, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "SIGTERM" in line]
    assert len(said) == 1 and said[0].startswith("terminated (SIGTERM) at step "), stderr[-3000:]
    stopped = _step(root / "checkpoints/version_0/last.ckpt")
    assert said[0].startswith(f"terminated (SIGTERM) at step {stopped};")
    info = Registry(root).get(0)
    assert info.status == "interrupted" and "SIGTERM" in (info.error or "")
    assert stopped < 1000  # it did not go on training

    end = stopped + 12  # across a validation (every 5) and an epoch end (12 batches)
    resume = [str(root), "--resume", "--max_steps", str(end), "--losses", str(losses)]
    assert train(parser().parse_args(resume)) == "completed"
    reference = tmp_path / "reference.txt"
    fresh = [str(tmp_path / "ref"), "--max_steps", str(end), "--losses", str(reference)]
    assert train(parser().parse_args(fresh)) == "completed"
    assert _losses(losses) == _losses(reference)
    assert Registry(root).get(0).status == "completed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _written_through_atomic_io(folder: Path, saves: list[tuple[int, str]]) -> None:
    files = sorted(p.name for p in folder.glob("*.ckpt"))
    steps = sorted(p.name for p in folder.glob("step_*.ckpt"))
    assert files == sorted(["last.ckpt", *steps]) and len(steps) == 3  # 5, 10, final 12
    assert {Path(path).name for _pid, path in saves} >= set(files)
    assert len({pid for pid, _path in saves}) == 1  # rank 0 alone writes
    assert _step(folder / "last.ckpt") == 12


def test_a_training_run_writes_every_checkpoint_through_the_atomic_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves: list[tuple[int, str]] = []
    real = CheckpointIOMixin.save_checkpoint

    def logged(self: object, checkpoint: object, path: object, storage_options: object = None):
        real(self, checkpoint, path, storage_options)  # type: ignore[arg-type]
        saves.append((os.getpid(), str(path)))

    monkeypatch.setattr(CheckpointIOMixin, "save_checkpoint", logged)
    assert train(parser().parse_args([str(tmp_path / "exp"), "--max_steps", "12"])) == "completed"
    _written_through_atomic_io(tmp_path / "exp/checkpoints/version_0", saves)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_ddp_run_writes_every_checkpoint_through_the_atomic_io(tmp_path: Path) -> None:
    saves = tmp_path / "saves.txt"
    root = tmp_path / "exp"
    args = [str(root), "--max_steps", "12", "--saves", str(saves), "--devices", "2",
            "--strategy", "ddp"]
    env_port = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env={**_env(), **env_port}, capture_output=True,
        text=True, timeout=400, check=False, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    written = [(int(a), b) for a, b in (x.split() for x in saves.read_text().splitlines())]
    _written_through_atomic_io(root / "checkpoints/version_0", written)
    assert Registry(root).get(0).status == "completed"
