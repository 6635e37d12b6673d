"""``build_trainer`` and ``fit``: a Lightning Trainer wired to a run, and how the run ends."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from versionkit.errors import ConfigError
from versionkit.layout import CHECKPOINT_FILENAME, CHECKPOINT_SUFFIX, LAST_CHECKPOINT
from versionkit.lightning._namespace import Namespace, namespace, namespace_of
from versionkit.lightning._protocol import RunLike
from versionkit.lightning.callbacks import LifecycleMixin, NonFiniteError
from versionkit.lightning.checkpoint_io import CheckpointIOMixin
from versionkit.lightning.logger import LoggerMixin
from versionkit.lightning.progress import StepProgressMixin

__all__ = ["Classes", "build_trainer", "classes", "fit"]

#: Exit status of a process that ends on SIGTERM (128 + 15), as a shell reports it.
SIGTERM_EXIT = 143

# Lightning warns that the checkpoint folder is not empty: it always holds config.yaml,
# and on resume the version's own checkpoints. That is the design, not a mistake.
_EXPECTED_WARNINGS = (r"Checkpoint directory .* exists and is not empty",)


@dataclass(frozen=True)
class Classes:
    """The adapter's classes for one Lightning namespace."""

    namespace: Namespace
    VersionkitLogger: type[Any]
    AtomicCheckpointIO: type[Any]
    StepProgressBar: type[Any]
    Lifecycle: type[Any]


@cache
def classes(lightning: str = "pytorch_lightning") -> Classes:
    """The adapter's classes built on namespace ``lightning`` (``"lightning"`` or
    ``"pytorch_lightning"``): a Trainer accepts only plugins and callbacks of its own."""
    ns = namespace(lightning)

    def make(name: str, mixin: type, base: Any, **extra: Any) -> type[Any]:
        body = {"__module__": "versionkit.lightning", "__doc__": mixin.__doc__, **extra}
        return type(name, (mixin, base), body)

    return Classes(
        namespace=ns,
        VersionkitLogger=make(
            "VersionkitLogger", LoggerMixin, ns.TensorBoardLogger, _rank_zero_only=ns.rank_zero_only
        ),
        AtomicCheckpointIO=make("AtomicCheckpointIO", CheckpointIOMixin, ns.TorchCheckpointIO),
        StepProgressBar=make("StepProgressBar", StepProgressMixin, ns.TQDMProgressBar),
        Lifecycle=make("VersionkitLifecycle", LifecycleMixin, ns.Callback),
    )


def build_trainer(
    run: RunLike,
    *,
    lightning: str = "pytorch_lightning",
    callbacks: Iterable[Any] = (),
    plugins: Iterable[Any] = (),
    save_top_k: int = 3,
    monitor: str = "val_loss",
    mode: str = "min",
    progress_refresh: int = 10,
    logger_kwargs: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> Any:
    """A Lightning ``Trainer`` that writes into ``run``'s version.

    It gets the ``VersionkitLogger`` (TensorBoard in ``logs/version_N``), a
    ``ModelCheckpoint`` keeping the ``save_top_k`` best by ``monitor`` as
    ``step_XXXXXXXX-<monitor>_X.XXXX.ckpt``, a second one writing ``last.ckpt`` at every
    validation, the atomic CheckpointIO, a progress bar over steps, and the adapter's
    callback (final-step checkpoint, interrupts, non-finite loss, top-k across resumes).

    Args:
        run: the run (``versionkit.run.start_run``).
        lightning: ``"pytorch_lightning"`` or ``"lightning"`` (for ``lightning.pytorch``):
            the namespace of the Trainer and of the user's LightningModule.
        callbacks: more callbacks (of the same namespace).
        plugins: more plugins; an atomic CheckpointIO is added unless one is given.
        save_top_k: how many best checkpoints to keep (``-1``: all, ``0``: none).
        monitor: the validation metric that ranks checkpoints.
        mode: ``"min"`` or ``"max"``.
        progress_refresh: redraw the progress bar every this many steps.
        logger_kwargs: more keyword arguments for Lightning's ``TensorBoardLogger``.
        **trainer_kwargs: passed to ``Trainer`` (not ``logger``: the run logs).

    Raises:
        ConfigError: an unknown namespace, mode, or a ``logger`` argument.
    """
    if mode not in ("min", "max"):
        raise ConfigError(f"mode: expected 'min' or 'max', got {mode!r}")
    if "logger" in trainer_kwargs:
        raise ConfigError("build_trainer: the run's VersionkitLogger is the logger; drop logger=")
    if trainer_kwargs.get("enable_checkpointing") is False:
        raise ConfigError(
            "build_trainer: the run checkpoints (last.ckpt at least); drop "
            "enable_checkpointing=False, or pass save_top_k=0 to keep only last.ckpt"
        )
    kinds = classes(lightning)
    for extra_object in (*callbacks, *plugins):
        other = _namespace_name(extra_object)
        if other is not None and other != lightning:
            raise ConfigError(
                f"build_trainer: {type(extra_object).__name__} is a {other} object but the "
                f"trainer is {lightning}'s; pass lightning={other!r} or use {lightning}'s class"
            )
    ns = kinds.namespace
    logger = kinds.VersionkitLogger(run, monitor=monitor, mode=mode, **dict(logger_kwargs or {}))
    folder = str(run.checkpoint_dir)
    top_k = ns.ModelCheckpoint(
        dirpath=folder,
        filename=CHECKPOINT_FILENAME,
        monitor=monitor,
        mode=mode,
        save_top_k=save_top_k,
        save_last=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    last = ns.ModelCheckpoint(
        dirpath=folder,
        filename=LAST_CHECKPOINT[: -len(CHECKPOINT_SUFFIX)],
        monitor=None,
        save_top_k=1,
        save_last=False,
        enable_version_counter=False,
    )
    everything = [kinds.Lifecycle(run, logger, monitor), *callbacks, top_k, last]
    if trainer_kwargs.get("enable_progress_bar", True) and not any(
        isinstance(c, ns.TQDMProgressBar) for c in everything
    ):
        everything.append(kinds.StepProgressBar(refresh_rate=progress_refresh))
    extra = list(plugins)
    if not any(isinstance(p, CheckpointIOMixin) for p in extra):
        extra.append(kinds.AtomicCheckpointIO())
    with _expected_warnings():
        return ns.Trainer(logger=logger, callbacks=everything, plugins=extra, **trainer_kwargs)


def fit(run: RunLike, trainer: Any, module: Any, *args: Any, **kwargs: Any) -> str:
    """``trainer.fit`` for ``run``: resumes from ``run.resume_from``; returns the status.

    - completed: ``"completed"``;
    - a non-finite loss or monitored metric: one line on stderr naming the step,
      ``last.ckpt`` of that step, ``"failed"``;
    - Ctrl-C: ``last.ckpt`` of the current step, status interrupted, then
      ``KeyboardInterrupt`` (Ctrl-C works again afterwards);
    - SIGTERM (a scheduler's preemption): ``last.ckpt``, status interrupted, one line on
      stderr, then ``SystemExit(143)`` as soon as the current step is done;
    - ``RunPruned`` from a callback: ``last.ckpt``, status pruned, re-raised;
    - any other exception: ``last.ckpt``, status failed with its message, re-raised.

    Args:
        run: the run ``trainer`` was built for.
        trainer: from ``build_trainer``.
        module: the LightningModule (same namespace as the trainer).
        *args: train/val dataloaders or a datamodule, as ``Trainer.fit`` takes them.
        **kwargs: more ``Trainer.fit`` arguments (``ckpt_path`` defaults to the resume).
    """
    try:
        lifecycle = _lifecycle(trainer)
        if namespace_of(module).name != namespace_of(trainer).name:
            raise ConfigError(
                f"the LightningModule is a {namespace_of(module).name} one but the Trainer is "
                f"{namespace_of(trainer).name}'s; build the trainer with "
                f"build_trainer(..., lightning={namespace_of(module).name!r})"
            )
    except ConfigError as exc:
        run.finish("failed", error=str(exc))  # the version must not stay "running"
        raise
    kwargs.setdefault("ckpt_path", str(run.resume_from) if run.resume_from else None)
    kwargs.setdefault("weights_only", True)
    try:
        with _expected_warnings():
            trainer.fit(module, *args, **kwargs)
    except BaseException as exc:
        outcome = lifecycle.outcome
        if outcome is None:
            # Raised outside Lightning's handling (before fit started its loop).
            outcome = ("failed", f"{type(exc).__name__}: {exc}".rstrip(": "))
            lifecycle.outcome = outcome
        lifecycle.logger.finish(*outcome)
        return _ended(run, trainer, lifecycle, exc)
    lifecycle.logger.finish("completed")
    return "completed"


def _ended(run: RunLike, trainer: Any, lifecycle: Any, exc: BaseException) -> str:
    """What ``fit`` does once an exception ended the run (its status is recorded)."""
    status, _error = lifecycle.outcome or ("failed", None)
    saved = lifecycle.saved_on_exception
    where = f"; saved {run.display(saved)}" if saved is not None else ""
    step = int(trainer.global_step)
    if isinstance(exc, SystemExit) and status == "interrupted":
        # Lightning turns Ctrl-C into sys.exit(1) with SIGINT ignored, SIGTERM into
        # SIGTERMException (a SystemExit whose code 0 would look like success).
        if "SIGTERM" in (_error or ""):
            if run.is_global_zero:
                print(f"terminated (SIGTERM) at step {step}{where}", file=sys.stderr)
            raise SystemExit(SIGTERM_EXIT) from None
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if run.is_global_zero:
            print(f"interrupted at step {step}{where}", file=sys.stderr)
        raise KeyboardInterrupt from None
    if isinstance(exc, NonFiniteError):
        if run.is_global_zero:
            print(f"error: {exc}{where}", file=sys.stderr)
        return "failed"
    raise exc


def _namespace_name(obj: Any) -> str | None:
    try:
        return namespace_of(obj).name
    except ConfigError:
        return None


def _lifecycle(trainer: Any) -> Any:
    for cb in trainer.callbacks:
        if isinstance(cb, LifecycleMixin):
            return cb
    raise ConfigError("fit: the trainer was not made by versionkit.lightning.build_trainer")


@contextlib.contextmanager
def _expected_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        # Lightning logs "Received SIGTERM" itself; fit says it once, with the step.
        quiet = [
            logging.getLogger(f"{pkg}.trainer.connectors.signal_connector")
            for pkg in ("pytorch_lightning", "lightning.pytorch")
        ]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)


def last_checkpoint(run: RunLike) -> Path:
    """``<root>/checkpoints/version_N/last.ckpt`` of ``run``."""
    return Path(run.checkpoint_dir) / LAST_CHECKPOINT
