"""Shared by the Lightning adapter tests: a run, toy modules for both namespaces, loaders."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from versionkit.config import ConfigModel, LoadedConfig
from versionkit.registry import Registry
from versionkit.run import Run, Target, start_run

NAMESPACES = ("pytorch_lightning", "lightning")

# Lightning's hints about loader workers and short epochs do not apply to toy data.
FILTERS = (
    r"ignore:.*does not have many workers.*",
    r"ignore:.*is smaller than the logging interval.*",
    r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning",
    r"ignore:You're resuming from a checkpoint that ended before the epoch ended",
)


def pl_module(lightning: str) -> Any:
    """``pytorch_lightning`` or ``lightning.pytorch``."""
    return importlib.import_module("lightning.pytorch" if lightning == "lightning" else lightning)


class ToyConfig(ConfigModel):
    """The user's own config: two sections, so the HParams leaves are dotted."""

    class Optim(ConfigModel):
        lr: float = 0.05

    class Model(ConfigModel):
        width: int = 4
        dims: tuple[int, ...] = (8, 4)

    optim: Optim = Optim()
    model: Model = Model()


def loaded_config() -> LoadedConfig[ToyConfig]:
    return LoadedConfig(ToyConfig(), None, None, [], {})


def new_run(root: Path) -> Run:
    """A new version of experiment ``root`` (quiet)."""
    return start_run(Registry(root), loaded_config(), printer=lambda _line: None)


def resumed(run: Run, checkpoint: Path) -> Run:
    """Resume ``run``'s version from ``checkpoint``."""
    target = Target(root=run.registry.root, version=run.version, checkpoint=checkpoint)
    return start_run(
        Registry(run.registry.root),
        loaded_config(),
        resume=target,
        printer=lambda _line: None,
        mutable_on_resume=("trainer",),
    )


def toy_class(lightning: str) -> type[Any]:
    """A regression module of the user's own; val_loss may be steered by the global step."""
    pl = pl_module(lightning)

    class Toy(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(
            self,
            width: int = 4,
            val_by_step: Mapping[int, float] | None = None,
            fail_at: int | None = None,
            interrupt_at: int | None = None,
            nan_at: int | None = None,
            adamw: bool = False,
        ) -> None:
            super().__init__()
            self.net = nn.Linear(width, 1)
            self.val_by_step = dict(val_by_step or {})
            self.fail_at, self.interrupt_at, self.nan_at = fail_at, interrupt_at, nan_at
            self.adamw = adamw
            self.losses: list[float] = []

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            if self.fail_at == self.global_step:
                raise RuntimeError(f"boom at step {self.global_step}")
            if self.interrupt_at == self.global_step:
                raise KeyboardInterrupt
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if self.nan_at is not None and self.global_step >= self.nan_at:
                loss = loss * float("nan")
            self.losses.append(float(loss.detach()))
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if self.global_step in self.val_by_step:
                loss = torch.tensor(self.val_by_step[self.global_step])
            self.log("val_loss", loss, on_epoch=True, batch_size=x.shape[0])

        def configure_optimizers(self) -> Any:
            if not self.adamw:
                return torch.optim.SGD(self.parameters(), lr=0.05)
            opt = torch.optim.AdamW(self.parameters(), lr=0.02, weight_decay=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Toy


def loaders(
    width: int = 4, shuffle: bool = False, batch_size: int = 8
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, width, generator=g)
    y = x.sum(1, keepdim=True)
    ds = TensorDataset(x, y)
    if shuffle:
        from versionkit.lightning import ResumableLoader

        train: DataLoader[Any] = ResumableLoader(ds, batch_size, shuffle=True, seed=1)
    else:
        train = DataLoader(ds, batch_size=batch_size)
    return train, DataLoader(ds, batch_size=32)


def trainer_kwargs(**kw: Any) -> dict[str, Any]:
    kw.setdefault("max_steps", 5)
    kw.setdefault("val_check_interval", 2)
    kw.setdefault("check_val_every_n_epoch", None)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("enable_model_summary", False)
    kw.setdefault("num_sanity_val_steps", 0)
    kw.setdefault("log_every_n_steps", 1)
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("deterministic", True)
    return kw
