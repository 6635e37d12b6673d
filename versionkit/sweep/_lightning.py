"""The Lightning callback that ties a trial to its run (imported only when asked for).

It works with either Lightning package (``pytorch_lightning`` or ``lightning``): the
callback class is built on first use from the package the trainer comes from.
"""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Any

from versionkit.run import RunPruned

if TYPE_CHECKING:
    from versionkit.sweep.study import TrialContext

__all__ = ["silent_progress_bar", "trial_callback"]

_CLASSES: dict[str, type[Any]] = {}


def _package(lightning: str) -> str:
    return "lightning.pytorch" if lightning == "lightning" else "pytorch_lightning"


def _callback_class(lightning: str) -> type[Any]:
    cls = _CLASSES.get(lightning)
    if cls is not None:
        return cls
    package = _package(lightning)
    base = importlib.import_module(package).Callback

    class TrialCallback(base):  # type: ignore[misc, valid-type]
        """Link the version, report the metric after each validation, prune."""

        def __init__(self, ctx: TrialContext) -> None:
            super().__init__()
            self.ctx = ctx

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            version = getattr(trainer.logger, "version", None)
            folder = getattr(trainer.checkpoint_callback, "dirpath", None)
            if trainer.is_global_zero and isinstance(version, int) and folder:
                self.ctx.link(version, folder)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            metric = self.ctx.sweep.metric
            value = trainer.callback_metrics.get(metric)
            if value is None:
                return
            value = float(value)
            if not math.isfinite(value):
                return
            step = int(trainer.global_step)
            trial = self.ctx.trial
            trial.report(value, step)
            last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
            if self.ctx.sweep.pruner != "none" and not last and trial.should_prune():
                raise RunPruned(f"{metric} {value:.4f} at step {step} is worse than the "
                              "median of earlier trials")

    _CLASSES[lightning] = TrialCallback
    return TrialCallback


def trial_callback(ctx: TrialContext, *, lightning: str = "pytorch_lightning") -> Any:
    """A Lightning callback for ``ctx``'s trial, from the package named ``lightning``."""
    return _callback_class(lightning)(ctx)


def silent_progress_bar(lightning: str = "pytorch_lightning") -> Any:
    """A progress bar that draws nothing (Lightning adds its own unless one is given)."""
    module = importlib.import_module(f"{_package(lightning)}.callbacks")
    return module.TQDMProgressBar(refresh_rate=0)
