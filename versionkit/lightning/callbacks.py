"""The adapter's one callback: the run's edges that Lightning's own callbacks leave open.

- the last step is validated (and so checkpointed), and ``last.ckpt`` is the state at
  the final step whatever the top-k decided;
- an exception, Ctrl-C or SIGTERM during training saves ``last.ckpt`` of the current
  step (atomically, through the strategy's CheckpointIO) and says which status it means;
- a non-finite training loss or monitored metric stops the run as ``failed``, before
  the optimizer step applies it and before any checkpoint is named after it;
- on resume, top-k holds: files the restored ``ModelCheckpoint`` no longer keeps (saved
  after the checkpoint that is resumed, by a run that crashed) are removed;
- the run's lease is refreshed.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from versionkit.errors import VersionkitError
from versionkit.layout import CHECKPOINT_SUFFIX, LAST_CHECKPOINT
from versionkit.lightning._protocol import RunLike
from versionkit.run import RunPruned

__all__ = ["LifecycleMixin", "NonFiniteError"]

_HEARTBEAT_S = 10.0


class NonFiniteError(VersionkitError):
    """The training loss or the monitored metric became NaN or infinite."""

    exit_code = 1

    def __init__(self, what: str, value: float, step: int) -> None:
        super().__init__(f"{what} became {value} at step {step}; the run stopped (status failed)")
        self.step = step


def outcome_of(exc: BaseException, step: int) -> tuple[str, str]:
    """``(status, error)`` that ``exc`` ends a run with."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"KeyboardInterrupt at step {step}"
    if type(exc).__name__ == "SIGTERMException":
        return "interrupted", f"terminated (SIGTERM) at step {step}"
    if isinstance(exc, RunPruned):
        return "pruned", f"pruned at step {step}: {exc}".rstrip(": ")
    if isinstance(exc, NonFiniteError):
        return "failed", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}".rstrip(": ")


class LifecycleMixin:
    """The versionkit half of the adapter's callback (the other is Lightning's ``Callback``).

    Args:
        run: the run.
        logger: the trainer's ``VersionkitLogger``.
        monitor: the validation metric that must stay finite.
    """

    def __init__(self, run: RunLike, logger: Any, monitor: str | None) -> None:
        super().__init__()
        self.run = run
        self.logger = logger
        self.monitor = monitor
        self.outcome: tuple[str, str] | None = None
        self.saved_on_exception: Path | None = None
        self._training = False
        self._validated_at = -1
        self._last_beat = 0.0
        self._loss: Any = None
        self._rng: dict[str, Any] | None = None

    # -- start ------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Give the logger the trainer; check every rank writes the same version."""
        self.logger.attach(trainer)
        if trainer.world_size > 1:
            agreed = int(trainer.strategy.broadcast(int(self.run.version), src=0))
            if agreed != int(self.run.version):
                raise VersionkitError(
                    f"rank {trainer.global_rank} was given version {self.run.version} but "
                    f"global rank 0 uses version {agreed}; every rank of a run must share one"
                )

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Point the restored top-k state at this version's folder as spelt now.

        ``ModelCheckpoint`` restores its top-k only when the folder's path is spelt as it
        was (a moved root, a relative path from another directory, a symlink resolved
        differently would lose it, and with it every older file's removal).
        """
        states = checkpoint.get("callbacks") or {}
        for cb in trainer.checkpoint_callbacks:
            state = states.get(getattr(cb, "state_key", None))
            if not isinstance(state, dict) or cb.dirpath is None:
                continue
            if state.get("dirpath") == cb.dirpath:
                continue

            def here(path: Any, folder: str = str(cb.dirpath)) -> Any:
                return os.path.join(folder, os.path.basename(path)) if path else path

            state["dirpath"] = cb.dirpath
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {here(k): v for k, v in state["best_k_models"].items()}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if isinstance(state.get(key), str):
                    state[key] = here(state[key])

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Drop top-k files from a crashed past; mark the run as training."""
        self._training = True
        if trainer.ckpt_path is not None:
            self._restore_top_k(trainer)
        for cb in trainer.checkpoint_callbacks:
            self.logger.track(cb)
        self.logger.start()

    def _restore_top_k(self, trainer: Any) -> None:
        folder = Path(self.run.checkpoint_dir)
        resumed = Path(trainer.ckpt_path).name if trainer.ckpt_path else None
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) is None or cb.dirpath is None:
                continue
            if os.path.abspath(cb.dirpath) != os.path.abspath(folder):
                continue
            decided: tuple[dict[str, Any], list[str]] | None = None
            if trainer.is_global_zero:
                kept = {p: v for p, v in cb.best_k_models.items() if os.path.isfile(p)}
                names = {os.path.basename(p) for p in kept}
                stale = []
                for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
                    if name in names or name in (LAST_CHECKPOINT, resumed):
                        continue
                    if name.endswith(CHECKPOINT_SUFFIX) and (
                        str(cb.monitor) in name or self._recorded(folder / name)
                    ):
                        stale.append(str(folder / name))
                decided = (kept, stale)
            kept, stale = trainer.strategy.broadcast(decided, src=0)
            for path in stale:
                trainer.strategy.remove_checkpoint(path)
                if trainer.is_global_zero:
                    self.run.forget_checkpoint(Path(path))
            if len(kept) != len(cb.best_k_models):
                cb.load_state_dict(_top_k_state(cb, kept))

    def _recorded(self, path: Path) -> bool:
        items = self.run.registry.get(self.run.version).record.get("checkpoints") or []
        return any(
            isinstance(i, dict) and os.path.basename(str(i.get("path", ""))) == path.name
            for i in items
        )

    def state_dict(self) -> dict[str, Any]:
        """The random number generators' states, saved in every checkpoint."""
        return {"rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators just before the first resumed batch (not now: setting up
        the resumed run draws from them, which the uninterrupted run did not)."""
        rng = state_dict.get("rng")
        self._rng = rng if isinstance(rng, dict) else None

    # -- every step -------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Put back the generators' states of the resumed checkpoint."""
        if self._rng is not None:
            _set_rng_states(self._rng)
            self._rng = None

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        """Stop on a non-finite loss before the backward pass and the optimizer step."""
        if trainer.world_size > 1:
            self._loss = loss.detach()  # decided together after the step (a collective)
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError("the training loss", value, int(trainer.global_step))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Distributed loss check; stop at ``max_steps`` so the last step is validated."""
        if self._loss is not None:
            import torch

            loss, self._loss = self._loss, None
            finite = bool(torch.isfinite(loss).all())
            if not trainer.strategy.reduce_boolean_decision(finite, all=True):
                raise NonFiniteError("the training loss", float(loss), int(trainer.global_step))
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
        now = time.monotonic()
        if now - self._last_beat >= _HEARTBEAT_S:
            self._last_beat = now
            if trainer.is_global_zero:
                self.run.heartbeat()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Refuse a non-finite monitored metric before any checkpoint is named after it."""
        if trainer.sanity_checking:
            return
        self._validated_at = int(trainer.global_step)
        value = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if value is not None and not math.isfinite(float(value)):
            raise NonFiniteError(self.monitor or "", float(value), int(trainer.global_step))

    # -- the end ----------------------------------------------------------------------

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """``last.ckpt`` at the final step, when no validation saved it there."""
        if self._validated_at != int(trainer.global_step):
            self._save_last(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Save ``last.ckpt`` of the current step and tell the logger the status."""
        step = int(trainer.global_step)
        status, error = outcome_of(exception, step)
        self.outcome = (status, error)
        self.logger.set_outcome(status, error)
        if self._training and not trainer.sanity_checking:
            self.saved_on_exception = self._save_last(trainer)

    def _save_last(self, trainer: Any) -> Path:
        path = Path(self.run.checkpoint_dir) / LAST_CHECKPOINT
        trainer.save_checkpoint(str(path))
        if trainer.is_global_zero:
            self.run.record_checkpoint(path, step=int(trainer.global_step), metrics={})
        return path


def _top_k_state(cb: Any, kept: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = dict(cb.state_dict(), best_k_models=kept)
    if kept:
        pick = min if cb.mode == "min" else max
        best = pick(kept, key=lambda p: float(kept[p]))
        worst = (max if cb.mode == "min" else min)(kept, key=lambda p: float(kept[p]))
        state.update(
            best_model_path=best,
            best_model_score=kept[best],
            kth_best_model_path=worst,
            kth_value=kept[worst],
        )
    else:
        state.update(best_model_path="", best_model_score=None, kth_best_model_path="")
    return state


def _rng_states() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python" in states:
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
