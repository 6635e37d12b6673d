"""A user's training script through versionkit, run by the process-level adapter tests.

python tests/lightning_script.py ROOT [--lightning NS] [--max_steps N] [--sleep S]
    [--marker FILE --marker_step K] [--losses FILE] [--resume] [--devices D]
    [--strategy NAME] [--saves FILE]

``--saves FILE`` appends ``pid path`` for every checkpoint written through versionkit's
atomic CheckpointIO; ``--losses FILE`` appends ``step loss`` for every training step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_support import loaded_config, pl_module

from versionkit.lightning import ResumableLoader, build_trainer, fit
from versionkit.lightning.checkpoint_io import CheckpointIOMixin
from versionkit.registry import Registry
from versionkit.run import Target, start_run


def log_saves(path: str) -> None:
    """Append every atomic checkpoint write to ``path``."""
    real = CheckpointIOMixin.save_checkpoint

    def logged(self: Any, checkpoint: Any, target: Any, storage_options: Any = None) -> None:
        real(self, checkpoint, target, storage_options)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {target}\n")

    CheckpointIOMixin.save_checkpoint = logged  # type: ignore[method-assign]


def train(args: argparse.Namespace) -> str:
    pl = pl_module(args.lightning)

    class Net(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            if args.marker and self.global_step == args.marker_step:
                Path(args.marker).write_text("started")
            time.sleep(args.sleep)
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if args.losses and self.trainer.is_global_zero:
                with open(args.losses, "a", encoding="utf-8") as f:
                    f.write(f"{self.global_step} {float(loss.detach()):.10g}\n")
            return loss

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=0.01)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.8)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    registry = Registry(args.root)
    target = None
    if args.resume:
        last = registry.checkpoint_dir(0) / "last.ckpt"
        target = Target(root=registry.root, version=0, checkpoint=last)
    run = start_run(
        registry, loaded_config(), resume=target, mutable_on_resume=("trainer",),
        devices_per_node=args.devices,
    )
    pl.seed_everything(0, verbose=False)
    module = Net()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    trainer = build_trainer(
        run,
        lightning=args.lightning,
        max_steps=args.max_steps,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        use_distributed_sampler=False,
    )
    return str(fit(run, trainer, module, ResumableLoader(data, 8, shuffle=True, seed=3),
                   DataLoader(data, batch_size=48)))


def parser() -> argparse.ArgumentParser:
    """The script's arguments (tests build them in-process too)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--lightning", default="pytorch_lightning")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--marker")
    parser.add_argument("--marker_step", type=int, default=3)
    parser.add_argument("--losses")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--saves")
    return parser


def main() -> int:
    args = parser().parse_args()
    warnings.simplefilter("ignore")
    if args.saves:
        log_saves(args.saves)
    return 0 if train(args) == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
