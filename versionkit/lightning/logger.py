"""``VersionkitLogger``: Lightning's TensorBoard logger, writing into the run's version.

It is Lightning's own ``TensorBoardLogger`` with ``name="logs"`` and the integer
version ``N``, so TensorBoard writes exactly to ``<root>/logs/version_N`` and the
progress bar shows ``v_num=N``. On top of it:

- ``log_hyperparams`` also writes the version's TensorBoard HParams session (the
  config's dotted leaves and its status), so the HParams tab compares versions;
- ``log_metrics``: a call carrying the monitored metric is a validation result: it is
  recorded in the registry, and ``<monitor>_best`` / ``<monitor>_final`` scalars follow it;
- ``after_save_checkpoint`` keeps the registry's checkpoint records equal to what a
  ``ModelCheckpoint`` keeps (its public ``best_k_models``);
- ``finalize`` ends the run with its status.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from versionkit.lightning._hparams import flatten, write_session
from versionkit.lightning._protocol import RunLike, config_of

__all__ = ["STATUSES", "LoggerMixin"]

#: What ``finalize`` accepts besides Lightning's own ``"success"`` / ``"failed"``.
STATUSES = ("completed", "failed", "interrupted", "pruned")


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "epoch":
            continue
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _key(checkpoint_callback: Any) -> str:
    # Lightning hands the callback over as a weak proxy: its id is not the callback's.
    return str(getattr(checkpoint_callback, "state_key", type(checkpoint_callback).__name__))


class LoggerMixin:
    """The versionkit half of ``VersionkitLogger`` (the other half is ``TensorBoardLogger``).

    Args:
        run: the run (``versionkit.run.start_run``) whose version this logs into.
        monitor: the validation metric recorded as best and final in HParams.
        mode: ``"min"`` or ``"max"``: which value of ``monitor`` is best.
        **tensorboard_kwargs: passed to Lightning's ``TensorBoardLogger``.
    """

    def __init__(
        self,
        run: RunLike,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        **tensorboard_kwargs: Any,
    ) -> None:
        tensorboard_kwargs.setdefault("default_hp_metric", False)
        log_dir = Path(run.log_dir)
        super().__init__(  # type: ignore[call-arg]
            save_dir=str(log_dir.parent.parent),
            name=log_dir.parent.name,
            version=int(run.version),
            **tensorboard_kwargs,
        )
        self.run = run
        self.monitor = monitor
        self.mode = mode
        self._best: float | None = None
        self._hparams: dict[str, float | str | bool] | None = None
        self._started = time.time()
        self._tracked: dict[str, set[str]] = {}
        self._trainer: Any = None
        self._outcome: tuple[str, str | None] | None = None
        self._finished = False

    # -- the Logger contract -----------------------------------------------------------

    @property
    def version(self) -> int:
        """The run's version number ``N``."""
        return int(self.run.version)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Kept for ``hparams.yaml``, as Lightning does (the HParams session is the config's)."""
        super().log_hyperparams(params)  # type: ignore[misc]

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Write to TensorBoard; a validation result (it has the monitor) goes to the registry."""
        if not self._writes:
            return
        super().log_metrics(metrics, step)  # type: ignore[misc]
        if self.monitor not in metrics:
            return
        clean = _finite(metrics)
        at = int(step) if step is not None else self._global_step()
        if clean:
            self.run.log_metrics(clean, step=at)
        value = clean.get(self.monitor)
        if value is None:
            return
        better = min if self.mode == "min" else max
        self._best = value if self._best is None else better(self._best, value)
        super().log_metrics(  # type: ignore[misc]
            {f"{self.monitor}_best": self._best, f"{self.monitor}_final": value}, at
        )

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Record the files ``checkpoint_callback`` keeps, forget the ones it dropped."""
        if not self._writes:
            return
        cb = checkpoint_callback
        step = self._global_step()
        if getattr(cb, "monitor", None) is None:
            # A periodic or "last" checkpoint: its file, at this step, without metrics (so
            # that "best" never picks a file that is overwritten later).
            path = getattr(cb, "best_model_path", "") or getattr(cb, "last_model_path", "")
            if path:
                self.run.record_checkpoint(Path(path), step=step, metrics={})
            return
        kept = {str(p): v for p, v in getattr(cb, "best_k_models", {}).items()}
        before = self._tracked.get(_key(cb), set())
        extra = _finite(self._trainer.callback_metrics) if self._trainer is not None else {}
        for path in sorted(set(kept) - before):
            metrics = {**extra, **_finite({cb.monitor: kept[path]})}
            self.run.record_checkpoint(Path(path), step=step, metrics=metrics)
        for path in sorted(before - set(kept)):
            self.run.forget_checkpoint(Path(path))
        self._tracked[_key(cb)] = set(kept)

    def finalize(self, status: str) -> None:
        """Flush TensorBoard; end the run.

        ``status`` is one of ``completed``, ``failed``, ``interrupted``, ``pruned``, or
        Lightning's ``success`` (the run completed) / ``failed`` (an exception: the
        adapter's callback has already said which kind, interrupted or failed).
        """
        super().finalize("success" if status in ("success", "completed") else "failed")  # type: ignore[misc]
        if status == "success":
            final: tuple[str, str | None] = ("completed", None)
        elif status in STATUSES and status != "failed":
            final = (status, None)
        else:
            final = self._outcome or ("failed", None)
        self.finish(*final)

    # -- used by the adapter ----------------------------------------------------------

    def attach(self, trainer: Any) -> None:
        """Know the trainer (its step and metrics) without keeping it alive."""
        self._trainer = weakref.proxy(trainer)

    def start(self) -> None:
        """Write the HParams session as ``running`` (status and metrics follow)."""
        if self._writes:
            self._write_session("running")

    def track(self, checkpoint_callback: Any) -> None:
        """Start from what ``checkpoint_callback`` keeps now (restored on resume)."""
        kept = getattr(checkpoint_callback, "best_k_models", {})
        self._tracked[_key(checkpoint_callback)] = {str(p) for p in kept}
        score = getattr(checkpoint_callback, "best_model_score", None)
        if score is not None and self._best is None:
            value = float(score)
            self._best = value if math.isfinite(value) else None

    def set_outcome(self, status: str, error: str | None) -> None:
        """How the run is ending (set before Lightning calls ``finalize("failed")``)."""
        if self._outcome is None:
            self._outcome = (status, error)

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run with ``status`` once: registry, lease and the HParams session."""
        if self._finished:
            return
        self._finished = True
        if self._writes:
            self._write_session(status)
        self.run.finish(status, error=error)

    # -- helpers ----------------------------------------------------------------------

    @property
    def _writes(self) -> bool:
        return bool(self.run.is_global_zero) and self.rank_zero_only_rank() == 0

    def rank_zero_only_rank(self) -> int:
        """This process's rank as Lightning's ``rank_zero_only`` knows it."""
        return int(getattr(type(self)._rank_zero_only, "rank", 0))  # type: ignore[attr-defined]

    def _global_step(self) -> int:
        try:
            return int(self._trainer.global_step) if self._trainer is not None else 0
        except ReferenceError:
            return 0

    def _write_session(self, status: str) -> None:
        if self._hparams is None:
            self._hparams = flatten(config_of(self.run))
        write_session(Path(self.log_dir), self._hparams, status=status, start_time=self._started)  # type: ignore[attr-defined]
