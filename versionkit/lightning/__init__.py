"""Lightning adapter: any LightningModule trains into a versionkit run.

::

    from versionkit.lightning import build_trainer, fit
    from versionkit.run import start_run

    run = start_run(Registry("outputs/exp"), loaded)          # version N
    trainer = build_trainer(run, lightning="lightning", max_steps=1000, val_check_interval=100)
    status = fit(run, trainer, module, train_loader, val_loader)

gives ``logs/version_N`` (TensorBoard, with an HParams session per version),
``checkpoints/version_N`` with ``step_XXXXXXXX-val_loss_X.XXXX.ckpt`` files and
``last.ckpt`` (always the final step's state), and the run's metrics, checkpoints and
status in the registry. Both Lightning namespaces work: ``lightning="lightning"`` for
``import lightning.pytorch as L``, ``"pytorch_lightning"`` (the default) otherwise.

``VersionkitLogger``, ``AtomicCheckpointIO`` and ``StepProgressBar`` here are the
``pytorch_lightning`` classes; ``classes("lightning")`` has the ``lightning.pytorch`` ones
(a Trainer accepts only plugins and callbacks of its own namespace).

Only ``pytorch_lightning``/``lightning`` users import this package;
``versionkit/__init__`` does not.
"""

from __future__ import annotations

from typing import Any

from versionkit.lightning._namespace import NAMESPACES, namespace, namespace_of
from versionkit.lightning.callbacks import NonFiniteError
from versionkit.lightning.data import EpochShuffle, ResumableLoader
from versionkit.lightning.trainer import SIGTERM_EXIT, Classes, build_trainer, classes, fit

__all__ = [
    "NAMESPACES",
    "SIGTERM_EXIT",
    "AtomicCheckpointIO",
    "Classes",
    "EpochShuffle",
    "NonFiniteError",
    "ResumableLoader",
    "StepProgressBar",
    "VersionkitLogger",
    "build_trainer",
    "classes",
    "fit",
    "namespace",
    "namespace_of",
]

_CLASSES = ("VersionkitLogger", "AtomicCheckpointIO", "StepProgressBar")


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(classes("pytorch_lightning"), name)
    raise AttributeError(f"module 'versionkit.lightning' has no attribute {name!r}")
