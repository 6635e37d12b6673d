"""Shared pieces of the trainer tests: a tiny config that trains in seconds on a CPU."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

# A tiny FractalMAR on the bundled digits: a few hundred steps/s are not needed, a few
# steps per test are. Validation uses one batch of 32 images.
TINY_YAML = """\
# tiny test config
experiment:
  name: tiny
  seed: 0
data:
  train_batch_size: 16
  val_batch_size: 32
model:
  img_size_list: [8, 2, 1]
  embed_dim_list: [16, 8, 8]
  num_blocks_list: [1, 1, 1]
  num_heads_list: [2, 1, 1]
optim:
  lr: 1.0e-3
  warmup_steps: 2
trainer:
  max_steps: 4
  val_every_n_steps: 2
  log_every_n_steps: 1
  accelerator: cpu
  limit_val_batches: 1
sampling:
  num_iter_list: [2, 2]
  num_images: 10
"""

#: Lightning's hints that do not apply to tiny in-memory runs (see fractalgen/train.py),
#: and Lightning 2.6's pytree use on torch 2.13.
FILTERS = (
    r"ignore:.*does not have many workers.*",
    r"ignore:.*is smaller than the logging interval.*",
    r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning",
)


def write_tiny(folder: Path, name: str = "tiny.yaml", text: str = TINY_YAML) -> Path:
    """Write the tiny config under ``folder/config`` and return its relative path."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "config" / name).write_text(text, encoding="utf-8")
    return Path("config") / name


def config_body(text: str) -> str:
    """A saved config.yaml without its header comments."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def step_checkpoints(folder: Path) -> list[str]:
    """Names of ``step_*.ckpt`` files, checked against the seed's pattern."""
    names = sorted(p.name for p in folder.glob("step_*.ckpt"))
    for n in names:
        assert re.fullmatch(r"step_\d{8}-val_loss_\d+\.\d{4}\.ckpt", n), n
    return names


def state_of(ckpt: Path) -> dict[str, Any]:
    """The ``state_dict`` of a checkpoint, loaded without arbitrary unpickling."""
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    state: dict[str, Any] = blob["state_dict"]
    return state


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a DDP run's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ddp_main(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``python main.py ARGS --devices 2 --strategy ddp --accelerator cpu`` (gloo, one
    thread per rank) from a clean environment; fails the test unless it exits 0."""
    from versionkit.run import RUN_ENV

    drop = (RUN_ENV, "VERSIONKIT_BACKEND", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args,
         "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def train_tiny(folder: Path, max_steps: int) -> Path:
    """Train the tiny digits config in ``folder`` for ``max_steps`` (in-process, from a
    clean hand-over environment); returns the experiment root ``<folder>/outputs/tiny``."""
    from fractalgen import train
    from versionkit.run import RUN_ENV

    write_tiny(folder)
    old = Path.cwd()
    saved_env = os.environ.pop(RUN_ENV, None)
    os.chdir(folder)
    try:
        assert train.main(["--config", "config/tiny.yaml", "--max_steps", str(max_steps)]) == 0
    finally:
        os.chdir(old)
        if saved_env is not None:
            os.environ[RUN_ENV] = saved_env
    return folder / "outputs" / "tiny"
