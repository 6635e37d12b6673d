"""A progress bar over the run's steps: ``step/max_steps`` and an ETA, also on resume."""

from __future__ import annotations

from typing import Any

__all__ = ["StepProgressMixin"]


class StepProgressMixin:
    """The step-counting half of ``StepProgressBar`` (the other is ``TQDMProgressBar``).

    Lightning's bar counts the batches of an epoch, which an endless or resumed loader
    does not know. With ``max_steps`` set, this one counts optimizer steps from the
    resumed step to ``max_steps``; tqdm's rate and ETA use only the steps this process
    ran (``initial`` is the resumed step).
    """

    _steps_total: int | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Open the bar at the current (restored) step."""
        super().on_train_start(trainer, pl_module)  # type: ignore[misc]
        total = int(trainer.max_steps or -1)
        self._steps_total = total if total > 0 else None
        if self._steps_total is not None:
            bar = self.train_progress_bar  # type: ignore[attr-defined]
            step = int(trainer.global_step)
            bar.reset(total=self._steps_total)
            bar.initial = step
            bar.n = step
            bar.last_print_n = step
            bar.set_description("Steps")

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        """Per-epoch bars as Lightning draws them, unless counting steps."""
        if self._steps_total is None:
            super().on_train_epoch_start(trainer, *args)  # type: ignore[misc]
            return
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")  # type: ignore[attr-defined]

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Advance to the trainer's step every ``refresh_rate`` steps (and at the last)."""
        if self._steps_total is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]
            return
        bar = self.train_progress_bar  # type: ignore[attr-defined]
        step = int(trainer.global_step)
        rate = max(int(self.refresh_rate), 1)  # type: ignore[attr-defined]
        if bar.disable or (step % rate and step < self._steps_total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # type: ignore[attr-defined]
