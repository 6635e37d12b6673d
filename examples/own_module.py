"""Your own LightningModule, trained into versioned folders by versionkit.

A small classifier on scikit-learn's bundled 8x8 digits (no download), with a typed
config, numbered versions and resumable runs::

    python examples/own_module.py --lightning lightning --root outputs/digits --max_steps 300
    python examples/own_module.py --lightning pytorch_lightning --root outputs/digits --lr 3e-3
    python examples/own_module.py --root outputs/digits --resume latest --max_steps 600

Each run leaves, exactly as ``python main.py`` does::

    DIR/checkpoints/version_N/config.yaml, step_XXXXXXXX-val_loss_X.XXXX.ckpt, last.ckpt
    DIR/logs/version_N/        TensorBoard (scalars, and an HParams session per version)

``--lightning`` picks the namespace your code imports: ``lightning`` for
``import lightning.pytorch as L``, ``pytorch_lightning`` for ``import pytorch_lightning``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from versionkit.config import ConfigModel, ControlFlag, LoadedConfig, load_config
from versionkit.errors import ConfigError, VersionkitError
from versionkit.lightning import NAMESPACES, ResumableLoader, build_trainer, fit
from versionkit.registry import Registry
from versionkit.run import resolve_target, start_run


class Optim(ConfigModel):
    """The optimizer."""

    lr: float = 1e-2
    weight_decay: float = 1e-4


class Model(ConfigModel):
    """The classifier."""

    hidden: int = 64
    dropout: float = 0.1


class Train(ConfigModel):
    """The training loop."""

    max_steps: int = 300
    val_every_n_steps: int = 50
    batch_size: int = 32
    save_top_k: int = 3
    seed: int = 0


class DigitsConfig(ConfigModel):
    """Everything a run of this example depends on."""

    optim: Optim = Optim()
    model: Model = Model()
    train: Train = Train()


CONTROLS = (
    ControlFlag("lightning", "Lightning namespace: lightning or pytorch_lightning.",
                default="pytorch_lightning"),
    ControlFlag("root", "Experiment folder (checkpoints/, logs/ go inside).",
                default="outputs/digits"),
    ControlFlag("resume", "Continue a version: 'latest', a version folder or a .ckpt."),
)


def make_module(lightning: str, config: DigitsConfig) -> Any:
    """A LightningModule of the user's own, from the namespace ``lightning``."""
    pl = importlib.import_module("lightning.pytorch" if lightning == "lightning" else lightning)

    class DigitsClassifier(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            m = config.model
            self.net = nn.Sequential(
                nn.Linear(64, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, 10)
            )

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y), batch_size=len(y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean(), batch_size=len(y))

        def configure_optimizers(self) -> Any:
            o = config.optim
            opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
            steps = max(config.train.max_steps, 1)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return DigitsClassifier()


def digits(config: DigitsConfig) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Train and validation loaders over scikit-learn's digits (1,500 / 297 images)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    train = ResumableLoader(
        TensorDataset(x[:1500], y[:1500]),
        config.train.batch_size,
        shuffle=True,
        seed=config.train.seed,
    )
    return train, DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=297)


def train(loaded: LoadedConfig[DigitsConfig]) -> str:
    """Start (or resume) a version and train it; returns its final status."""
    lightning = str(loaded.controls.get("lightning") or "pytorch_lightning")
    if lightning not in NAMESPACES:
        raise ConfigError(f"--lightning {lightning}: expected one of {', '.join(NAMESPACES)}")
    shown = str(loaded.controls.get("root") or "outputs/digits")
    resume = None
    if loaded.controls.get("resume"):
        resume = resolve_target(str(loaded.controls["resume"]), default_root=Path(shown))
    registry = Registry(resume.root if resume else Path(shown))
    run = start_run(
        registry,
        loaded,
        display_root=shown,
        resume=resume,
        seed=loaded.config.train.seed,
        mutable_on_resume=("train.max_steps", "train.val_every_n_steps"),
    )
    config: DigitsConfig = run.config
    t = config.train
    torch.manual_seed(t.seed)
    module = make_module(lightning, config)
    trainer = build_trainer(
        run,
        lightning=lightning,
        save_top_k=t.save_top_k,
        max_steps=t.max_steps,
        val_check_interval=t.val_every_n_steps,
        check_val_every_n_epoch=None,
        log_every_n_steps=10,
        accelerator="cpu",
        deterministic=True,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    status: str = fit(run, trainer, module, *digits(config))
    best = registry.best("val_loss", "min", version=run.version)
    if best is not None and run.is_global_zero:
        print(f"✓ Best checkpoint: {run.display(best.path)}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 completed, 2 a usage mistake, 130 Ctrl-C, 1 otherwise."""
    try:
        loaded = load_config(
            DigitsConfig, argv, prog="own_module.py", description=__doc__, controls=CONTROLS
        )
        return 0 if train(loaded) == "completed" else 1
    except VersionkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
