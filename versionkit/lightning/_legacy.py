"""PyTorch Lightning adapters: one registry version per run, shared by logs and checkpoints.

A few lines give any LightningModule the versioned layout::

    registry = Registry("outputs/my_experiment")
    run = start_run(registry, loaded)            # allocates version N once (rank 0 only)
    trainer = run.trainer(max_steps=1000, val_check_interval=100)
    run.fit(trainer, module, train_loader, val_loader)

which gives ``logs/version_N`` (TensorBoard), ``checkpoints/version_N`` with
``step_{step:08d}-val_loss_{val_loss:.4f}.ckpt`` files, ``last.ckpt`` and
``config.yaml``, and the run's status, metrics and checkpoints in the registry.

This module imports ``pytorch_lightning`` and so is never imported by
``versionkit/__init__``. Nothing in it knows about a particular model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger

from versionkit._atomic import write_atomic
from versionkit.config import ConfigModel, LoadedConfig, config_hash, diff_configs, dump_config
from versionkit.errors import ConfigError, RegistryError
from versionkit.registry import Registry

__all__ = [
    "CHECKPOINT_FILENAME",
    "RUN_ENV",
    "AtomicCheckpointIO",
    "ExperimentRun",
    "RegistryCallback",
    "ResumeTarget",
    "StopAtMaxSteps",
    "VersionProgressBar",
    "VersionedCheckpoint",
    "check_resume_changes",
    "global_rank_from_env",
    "resolve_resume",
    "start_run",
]

#: ModelCheckpoint file name pattern (``auto_insert_metric_name=False``), as the seed shows.
CHECKPOINT_FILENAME = "step_{step:08d}-val_loss_{val_loss:.4f}"

#: Environment variable through which a run hands its version to the processes that
#: Lightning's DDP launcher starts (they re-run the script from the top).
RUN_ENV = "VERSIONKIT_RUN"

_RENDEZVOUS_MAX_AGE_S = 300.0
_PROCESS_START = time.time()


# --------------------------------------------------------------------------------------
# atomic checkpoint files
# --------------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a half-written file under the final name.

    Lightning's own save goes through an fsspec transaction, which on a local disk
    stages the bytes in the system temp folder and ``shutil.move``s them: across
    filesystems that is a plain copy into the final name, and nothing is fsynced. Here
    the checkpoint is written to a temporary file in the destination folder, fsynced
    and ``os.replace``d onto its name, so readers see the old file or the whole new one.
    Loading defaults to ``weights_only=True``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local paths only)."""
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, "
                f"got {storage_options!r}"
            )
        target = Path(path)
        if "://" in str(path):
            # Remote filesystems: fall back to Lightning's own transaction.
            super().save_checkpoint(checkpoint, path)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint; plain tensors and containers only unless told otherwise."""
        result: dict[str, Any] = super().load_checkpoint(
            path,
            map_location=map_location,
            weights_only=True if weights_only is None else weights_only,
        )
        return result


def atomic_write_bytes(target: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(file)`` on a temp file beside ``target``, fsync it, then rename it over."""
    write_atomic(target, write, sync_dir=True)


def atomic_write_text(target: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, lambda f: f.write(text.encode("utf-8")))


# --------------------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------------------


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            out[key] = float(value.detach().cpu().item())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class VersionedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that records the files it keeps (and deletes) in the registry.

    Args:
        registry: the experiment's registry.
        version: the run's version number.
        **kwargs: passed to ``ModelCheckpoint``.
    """

    def __init__(self, registry: Registry, version: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._registry = registry
        self._version = version

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: Any) -> None:
        # The version folder always holds config.yaml, and on resume its own checkpoints:
        # that is the design, not a mistake worth a warning.
        return None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if not trainer.is_global_zero or Path(filepath).name.startswith(self.CHECKPOINT_NAME_LAST):
            return
        metrics = _scalar_metrics(trainer.callback_metrics)
        self._registry.add_checkpoint(
            self._version, filepath, step=trainer.global_step, metrics=metrics
        )

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero and not Path(filepath).name.startswith(self.CHECKPOINT_NAME_LAST):
            self._registry.remove_checkpoint(self._version, filepath)


class VersionProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing ``v_num`` as the version number N.

    (Lightning shows the last four characters of the logger's version, ``on_0``.)
    """

    def __init__(self, version: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._version = version

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """The bar's metrics with ``v_num`` set to N."""
        items = super().get_metrics(trainer, pl_module)
        if "v_num" in items:
            items["v_num"] = self._version
        return items


class StopAtMaxSteps(Callback):
    """Ask the loop to stop at ``max_steps`` so that it validates (and checkpoints) there.

    Lightning validates only every ``val_check_interval`` batches; a run whose last step
    is not a multiple would end without a named checkpoint. Requesting a stop at the
    last step makes the epoch loop run validation first.
    """

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Request the stop once the last optimizer step is done."""
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class RegistryCallback(Callback):
    """Record validation metrics and the run's end state in the registry (global rank 0)."""

    def __init__(self, registry: Registry, version: int) -> None:
        self._registry = registry
        self._version = version
        self.status_recorded = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check that every rank writes to the same version as global rank 0."""
        if trainer.world_size <= 1:
            return
        agreed = trainer.strategy.broadcast(self._version, src=0)
        if int(agreed) != self._version:
            raise RegistryError(
                f"rank {trainer.global_rank} was given version {self._version} but global rank 0 "
                f"uses version {agreed}; every rank of a run must share one version"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch-level metrics of this validation."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = _scalar_metrics(trainer.callback_metrics)
        if metrics:
            self._registry.log_metrics(self._version, metrics, step=trainer.global_step)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Mark the version interrupted (Ctrl-C) or failed (anything else)."""
        if not trainer.is_global_zero:
            return
        self.record_exception(exception)

    def record_exception(self, exception: BaseException) -> None:
        """Set the terminal status that ``exception`` means (once)."""
        if self.status_recorded:
            return
        self.status_recorded = True
        if isinstance(exception, KeyboardInterrupt):
            self._registry.set_status(self._version, "interrupted", error="KeyboardInterrupt")
        elif type(exception).__name__ == "SIGTERMException":
            # Lightning turns SIGTERM (a scheduler's or the user's kill) into this exception.
            self._registry.set_status(self._version, "interrupted", error="terminated (SIGTERM)")
        else:
            message = f"{type(exception).__name__}: {exception}".rstrip(": ")
            self._registry.set_status(self._version, "failed", error=message)


# --------------------------------------------------------------------------------------
# ranks and the one-allocation-per-run rule
# --------------------------------------------------------------------------------------


def global_rank_from_env(env: Mapping[str, str] | None = None, *, devices_per_node: int = 1) -> int:
    """This process's global rank as the launcher's environment tells it (0 when alone).

    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun), or for a process that Lightning's
    launcher will fork children from, ``NODE_RANK * devices + LOCAL_RANK``.
    """
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(key, "").strip().isdigit():
            return int(env[key])
    node_rank = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")) or 0)
    local_rank = int(env.get("LOCAL_RANK", "0") or 0)
    return node_rank * max(devices_per_node, 1) + local_rank


def _world_is_distributed(env: Mapping[str, str]) -> bool:
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = env.get(key, "").strip()
        if value.isdigit() and int(value) > 1:
            return True
    return int(env.get("NODE_RANK", "0") or 0) > 0


def _rendezvous_key(env: Mapping[str, str]) -> str:
    parts = [
        env.get("TORCHELASTIC_RUN_ID", ""),
        env.get("TORCHELASTIC_RESTART_COUNT", ""),
        env.get("SLURM_JOB_ID", ""),
        env.get("SLURM_STEP_ID", ""),
        env.get("MASTER_ADDR", ""),
        env.get("MASTER_PORT", ""),
    ]
    return "|".join(parts)


def _rendezvous_file(root: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return root / ".versionkit" / "rendezvous" / f"{digest}.json"


def _publish_rendezvous(root: Path, key: str, payload: Mapping[str, Any]) -> Path:
    path = _rendezvous_file(root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(payload, key=key, created=time.time())
    atomic_write_text(path, json.dumps(body))
    return path


def _await_rendezvous(root: Path, key: str, rank: int, timeout: float) -> dict[str, Any]:
    path = _rendezvous_file(root, key)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(path.read_text(encoding="utf-8"))
            if (
                isinstance(body, dict)
                and body.get("key") == key
                and float(body.get("created", 0.0)) >= _PROCESS_START - _RENDEZVOUS_MAX_AGE_S
            ):
                return body
        if time.monotonic() >= deadline:
            raise RegistryError(
                f"rank {rank} waited {timeout:.0f} s for global rank 0 to publish the run's "
                f"version in {path}; is rank 0 running, and is {root} on a filesystem that "
                "every node shares?"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


# --------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeTarget:
    """Where a resumed run continues: its experiment root, version and checkpoint file."""

    root: Path
    version: int
    checkpoint: Path


def _pick_checkpoint(folder: Path) -> Path | None:
    last = folder / "last.ckpt"
    if last.is_file():
        return last
    candidates = sorted(p for p in folder.glob("*.ckpt") if p.is_file())
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))


def resolve_resume(
    target: str | os.PathLike[str],
    *,
    default_root: Path | None = None,
    backend: str | None = None,
) -> ResumeTarget:
    """Turn ``--resume`` into the checkpoint to load and the version it belongs to.

    Args:
        target: a ``.ckpt`` file, a ``checkpoints/version_N`` folder, an experiment
            root (its latest version), or ``latest`` (the latest version of
            ``default_root``).
        default_root: the experiment root that ``latest`` refers to.
        backend: registry backend URI (``None``: ``$VERSIONKIT_BACKEND`` or file).

    Raises:
        ConfigError: nothing to resume there (missing file, no version, no checkpoint).
    """
    text = os.fspath(target)
    if text == "latest":
        if default_root is None:
            raise ConfigError("--resume latest: no experiment folder is known to look in")
        root: Path = default_root
        version: int | None = None
        if not root.is_dir():
            raise ConfigError(f"--resume latest: experiment folder {root} does not exist")
    else:
        path = Path(text)
        if not path.exists():
            raise ConfigError(
                f"--resume {text}: no such file or folder (expected a .ckpt file, a "
                "checkpoints/version_N folder, an experiment folder or 'latest')"
            )
        try:
            root, version = Registry.locate(path)
        except (RegistryError, ValueError) as exc:
            if path.is_file():
                version = None
            else:
                raise ConfigError(f"--resume {text}: {exc}") from None
        if path.is_file():
            if version is None:
                raise ConfigError(
                    f"--resume {text}: the checkpoint is not inside a checkpoints/version_N "
                    "folder, so the version to continue is unknown"
                )
            return ResumeTarget(root=root, version=version, checkpoint=path)
    if version is None:
        try:
            latest = Registry(root, backend).latest()
        except RegistryError as exc:
            raise ConfigError(f"--resume {text}: {exc}") from None
        if latest is None:
            raise ConfigError(f"--resume {text}: experiment {root} has no versions yet")
        version = latest.version
    folder = root / "checkpoints" / f"version_{version}"
    checkpoint = _pick_checkpoint(folder)
    if checkpoint is None:
        raise ConfigError(f"--resume {text}: {folder} holds no checkpoint (.ckpt) to resume from")
    return ResumeTarget(root=root, version=version, checkpoint=checkpoint)


def check_resume_changes(
    saved: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    frozen: Sequence[str],
    flags: Sequence[str] = (),
) -> None:
    """Refuse a resume whose config differs from the saved one in a frozen field.

    Args:
        saved: the config the version was trained with (nested dict).
        new: the config the resumed run would use.
        frozen: dotted keys or prefixes (``"model"``, ``"data.channels"``) that may not
            change, because the checkpoint's weights or data would no longer fit.
        flags: the override flags as given, to name the one responsible.

    Raises:
        ConfigError: naming the flag (or field), the saved and the new value.
    """
    changes = diff_configs(saved, new)
    for key in sorted(changes):
        if not any(key == f or key.startswith(f + ".") for f in frozen):
            continue
        old, value = changes[key]
        flag = _flag_for(key, flags)
        raise ConfigError(
            f"{flag}: cannot change {key} when resuming (saved {old!r}, given {value!r}); "
            "the checkpoint was trained with the saved value. Start a new version instead "
            "(--config with the saved config.yaml and your flags), or drop the flag"
        )


def _flag_for(key: str, flags: Sequence[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    for token in flags:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0]
        if name in (key, leaf) or name.replace("-", "_") in (key, leaf):
            return token.split("=", 1)[0]
    return f"--{key}"


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


@dataclass
class ExperimentRun:
    """One training run's version: where it writes, and the registry it reports to.

    Made by ``start_run``; every rank of a distributed run holds one with the same
    ``version``. Only global rank 0 writes to the registry.
    """

    registry: Registry
    version: int
    rank: int
    display_root: str
    resume_from: Path | None = None
    printer: Callable[[str], None] = print
    _env_set: bool = field(default=False, repr=False)
    _rendezvous: Path | None = field(default=None, repr=False)
    _callback: RegistryCallback | None = field(default=None, repr=False)
    _finished: bool = field(default=False, repr=False)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank 0 (the one that writes)."""
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        """``<root>/checkpoints/version_N``."""
        return self.registry.checkpoint_dir(self.version)

    @property
    def log_dir(self) -> Path:
        """``<root>/logs/version_N``."""
        return self.registry.log_dir(self.version)

    @property
    def config_path(self) -> Path:
        """``<root>/checkpoints/version_N/config.yaml``."""
        return self.checkpoint_dir / "config.yaml"

    def display(self, path: Path) -> str:
        """``path`` (under the experiment root) spelt from the root as the user gave it."""
        try:
            rel = path.resolve().relative_to(self.registry.root.resolve())
        except ValueError:
            return str(path)
        return os.path.join(self.display_root, *rel.parts)

    # -- Lightning pieces ----------------------------------------------------------

    def logger(self, **kwargs: Any) -> TensorBoardLogger:
        """A TensorBoard logger writing exactly to ``logs/version_N``."""
        kwargs.setdefault("default_hp_metric", False)
        return TensorBoardLogger(
            save_dir=str(self.registry.root),
            name="logs",
            version=f"version_{self.version}",
            **kwargs,
        )

    def checkpoint_callback(
        self,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        save_top_k: int = 3,
        filename: str = CHECKPOINT_FILENAME,
        **kwargs: Any,
    ) -> VersionedCheckpoint:
        """Top-k checkpoints (by ``monitor``) plus ``last.ckpt`` in ``checkpoints/version_N``."""
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("save_on_train_epoch_end", False)
        kwargs.setdefault("enable_version_counter", False)
        return VersionedCheckpoint(
            self.registry,
            self.version,
            dirpath=str(self.checkpoint_dir),
            filename=filename,
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k,
            **kwargs,
        )

    def registry_callback(self) -> RegistryCallback:
        """The callback that records metrics and the end state."""
        if self._callback is None:
            self._callback = RegistryCallback(self.registry, self.version)
        return self._callback

    def trainer(
        self,
        *,
        callbacks: Iterable[Callback] = (),
        plugins: Iterable[Any] = (),
        checkpoint: Mapping[str, Any] | None = None,
        logger_kwargs: Mapping[str, Any] | None = None,
        progress_refresh: int = 10,
        **trainer_kwargs: Any,
    ) -> pl.Trainer:
        """A ``pl.Trainer`` wired to this version.

        Args:
            callbacks: extra callbacks (the checkpoint, registry and stop-at-max-steps
                ones are added).
            plugins: extra plugins (an atomic checkpoint IO is added).
            checkpoint: keyword arguments for ``checkpoint_callback``.
            logger_kwargs: keyword arguments for ``TensorBoardLogger``.
            progress_refresh: redraw the progress bar every this many steps (drawing it
                every step costs a few percent of a small model's step time).
            **trainer_kwargs: passed to ``pl.Trainer``.
        """
        all_callbacks: list[Callback] = [
            self.checkpoint_callback(**dict(checkpoint or {})),
            self.registry_callback(),
            StopAtMaxSteps(),
            *callbacks,
        ]
        if trainer_kwargs.get("enable_progress_bar", True) and not any(
            isinstance(c, TQDMProgressBar) for c in all_callbacks
        ):
            all_callbacks.append(VersionProgressBar(self.version, refresh_rate=progress_refresh))
        return pl.Trainer(
            logger=self.logger(**dict(logger_kwargs or {})),
            callbacks=all_callbacks,
            plugins=[AtomicCheckpointIO(), *plugins],
            **trainer_kwargs,
        )

    def fit(
        self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """``trainer.fit`` that resumes from ``resume_from`` and records how the run ended.

        Completed runs are marked ``completed``; an exception marks the version ``failed``
        with its message (and is re-raised); Ctrl-C marks it ``interrupted``.
        """
        kwargs.setdefault("ckpt_path", str(self.resume_from) if self.resume_from else None)
        kwargs.setdefault("weights_only", True)
        try:
            trainer.fit(module, *args, **kwargs)
        except SystemExit:
            # Lightning turns Ctrl-C into on_exception + sys.exit(1) and leaves SIGINT
            # ignored; give the caller a KeyboardInterrupt and Ctrl-C back instead.
            if not trainer.interrupted:
                raise
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.is_global_zero:
                self.registry_callback().record_exception(KeyboardInterrupt())
            raise KeyboardInterrupt from None
        except BaseException as exc:
            if self.is_global_zero:
                self.registry_callback().record_exception(exc)
            raise
        finally:
            self.close()
        if not self.is_global_zero:
            return
        if trainer.interrupted:
            self.registry_callback().record_exception(KeyboardInterrupt())
        elif not self.registry_callback().status_recorded:
            self.registry_callback().status_recorded = True
            self.registry.set_status(self.version, "completed")

    def fail(self, exc: BaseException) -> None:
        """Record that the run ended with ``exc`` before or outside ``fit``."""
        if self.is_global_zero:
            with contextlib.suppress(RegistryError):
                self.registry_callback().record_exception(exc)
        self.close()

    def close(self) -> None:
        """Forget the hand-over state (environment variable, rendezvous file)."""
        if self._finished:
            return
        self._finished = True
        if self._env_set:
            os.environ.pop(RUN_ENV, None)
            self._env_set = False
        if self._rendezvous is not None:
            with contextlib.suppress(OSError):
                self._rendezvous.unlink()
            self._rendezvous = None


def _config_dict(config: ConfigModel) -> dict[str, Any]:
    return config.model_dump(mode="json")


def start_run(
    registry: Registry,
    loaded: LoadedConfig[Any],
    *,
    display_root: str | os.PathLike[str] | None = None,
    resume: ResumeTarget | None = None,
    command: Sequence[str] | None = None,
    seed: int | None = None,
    devices_per_node: int = 1,
    num_nodes: int = 1,
    printer: Callable[[str], None] = print,
    rendezvous_timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> ExperimentRun:
    """Allocate (or, when resuming, reopen) this run's version, once for all ranks.

    Global rank 0 allocates ``N``, saves ``config.yaml`` (and the source file verbatim
    as ``config.source.yaml``), records the config in the registry and prints the
    seed's console lines. The number reaches the other ranks through the
    ``VERSIONKIT_RUN`` environment variable (processes Lightning's launcher starts) or
    a rendezvous file under the experiment root (ranks that ``torchrun``/``srun``
    started at once).

    Args:
        registry: the experiment's registry.
        loaded: the config as loaded (file, verbatim text and flags are recorded).
        display_root: the experiment root as the user spelt it, for the console lines.
        resume: continue this version instead of allocating one.
        command: the command line to record (default ``sys.argv``).
        seed: the run's seed, recorded.
        devices_per_node: devices per node, to tell a node's launcher process's rank.
        num_nodes: nodes of the run; above 1, rank 0 always publishes its number for the
            other nodes (which may not have WORLD_SIZE set).
        printer: where the console lines go.
        rendezvous_timeout: how long a rank waits for rank 0's number.
        env: the environment to read (default ``os.environ``).
    """
    environ = os.environ if env is None else env
    root_key = str(registry.root.resolve())
    shown_root = os.fspath(display_root) if display_root is not None else str(registry.root)
    handed = _handed_over(environ, root_key)
    if handed is not None:
        resume_path = handed.get("resume")
        return ExperimentRun(
            registry=registry,
            version=int(handed["version"]),
            rank=global_rank_from_env(environ, devices_per_node=devices_per_node) or 1,
            display_root=shown_root,
            resume_from=Path(resume_path) if resume_path else None,
            printer=printer,
        )
    rank = global_rank_from_env(environ, devices_per_node=devices_per_node)
    distributed = _world_is_distributed(environ) or num_nodes > 1
    key = _rendezvous_key(environ)
    if rank == 0 and distributed:
        # A relaunch with the same key (torchrun's default run id, a fixed master port)
        # must not let the other ranks read a killed run's number while we allocate.
        with contextlib.suppress(FileNotFoundError):
            _rendezvous_file(registry.root, key).unlink()
    if rank != 0:
        body = _await_rendezvous(registry.root, key, rank, rendezvous_timeout)
        resume_path = body.get("resume")
        waited = ExperimentRun(
            registry=registry,
            version=int(body["version"]),
            rank=rank,
            display_root=shown_root,
            resume_from=Path(resume_path) if resume_path else None,
            printer=printer,
        )
        if env is None:
            # This node's launcher process: hand the number on to the processes it starts.
            os.environ[RUN_ENV] = json.dumps(
                {
                    "root": root_key,
                    "version": waited.version,
                    "resume": resume_path,
                    "owner": os.getpid(),
                }
            )
            waited._env_set = True
        return waited

    config = loaded.config
    config_dict = _config_dict(config)
    if resume is None:
        info = registry.allocate(
            config=config_dict,
            config_hash=config_hash(config),
            command=list(command if command is not None else sys.argv),
            seed=seed,
        )
        version = info.version
    else:
        version = resume.version
        info = registry.get(version)  # VersionNotFoundError when the registry does not know it
        if info.status == "running" and info.host == socket.gethostname() and not info.is_dead:
            raise RegistryError(
                f"version {version} of {registry.root} is still running (pid {info.pid} on "
                f"{info.host}); stop that run before resuming it"
            )
    run = ExperimentRun(
        registry=registry,
        version=version,
        rank=0,
        display_root=shown_root,
        resume_from=resume.checkpoint if resume else None,
        printer=printer,
    )
    try:
        _save_config(run, loaded, resume, command)
    except BaseException as exc:
        run.fail(exc)
        raise
    payload = {
        "root": root_key,
        "version": version,
        "resume": str(run.resume_from) if run.resume_from else None,
        "owner": os.getpid(),
    }
    if env is None:
        os.environ[RUN_ENV] = json.dumps(payload)
        run._env_set = True
    if distributed:
        run._rendezvous = _publish_rendezvous(registry.root, key, payload)
    return run


def _handed_over(environ: Mapping[str, str], root_key: str) -> dict[str, Any] | None:
    raw = environ.get(RUN_ENV)
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("root") != root_key:
        return None
    if body.get("owner") == os.getpid():
        # Set by this very process for the processes it launches, and left behind by a
        # run that never reached fit(): a second start_run here is a new run, not a rank.
        return None
    return body


def _save_config(
    run: ExperimentRun,
    loaded: LoadedConfig[Any],
    resume: ResumeTarget | None,
    command: Sequence[str] | None,
) -> None:
    registry, version = run.registry, run.version
    checkpoint_dir = run.checkpoint_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    run.log_dir.mkdir(parents=True, exist_ok=True)
    flags = list(loaded.flags)
    flags_text = " ".join(flags) if flags else "(none)"
    source = str(loaded.config_file) if loaded.config_file is not None else None
    header = [f"Resolved config of experiment version {version} (every field, defaults included)."]
    if resume is not None:
        header.append(f"Resumed from: {resume.checkpoint}")
        previous = checkpoint_dir / "config.yaml"
        if previous.is_file():
            header.extend(_source_lines(previous))
    if source is not None:
        header.append(f"Config file: {source} (verbatim copy: config.source.yaml)")
    elif resume is None:
        header.append("Config generated from command-line flags (no config file)")
    header.append(f"Flags: {flags_text}")
    text = dump_config(loaded.config, header=header)
    atomic_write_text(run.config_path, text)
    if loaded.config_text is not None and resume is None:
        atomic_write_text(checkpoint_dir / "config.source.yaml", loaded.config_text)
    fields: dict[str, Any] = {
        "config": _config_dict(loaded.config),
        "config_hash": config_hash(loaded.config),
    }
    if resume is None:
        fields.update(config_file=source, flags=flags, config_path=str(run.config_path))
    else:
        # Appended atomically by the backend: a read-modify-write here could lose an
        # entry written by another process meanwhile.
        registry.backend.append(
            version,
            "resumes",
            {
                "checkpoint": str(resume.checkpoint),
                "flags": flags,
                "at": time.time(),
                "command": list(command if command is not None else sys.argv),
            },
        )
    registry.update(version, **fields)
    if resume is not None:
        registry.set_status(version, "running")

    printer = run.printer
    if resume is None:
        printer(f"✓ Experiment version: {version}")
    else:
        printer(f"✓ Resuming experiment version: {version}")
    printer(f"✓ Checkpoint dir: {run.display(checkpoint_dir)}")
    if resume is not None:
        printer(f"✓ Resuming from: {resume.checkpoint}")
    elif source is not None:
        printer(f"✓ Saved config from: {source}")
    else:
        printer("✓ Config generated from command-line flags")
    printer(f"✓ Config saved to: {run.display(run.config_path)}")


def _source_lines(previous: Path) -> list[str]:
    lines: list[str] = []
    with contextlib.suppress(OSError):
        for line in previous.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            body = line.lstrip("#").strip()
            if body.startswith(("Config file:", "Config generated", "Flags:")):
                lines.append(f"Originally: {body}")
    return lines
