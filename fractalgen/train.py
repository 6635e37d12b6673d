"""``fractalgen-train`` / ``python main.py``: train FractalGen into a version of an experiment.

Examples::

    python main.py --config config/train_small.yaml
    python main.py --train_batch_size 8 --max_steps 100000        # config from flags only
    python main.py --config outputs/fractalgen_small/checkpoints/version_0/config.yaml
    python main.py --resume outputs/fractalgen_small/checkpoints/version_0 --max_steps 3000
    python main.py --resume latest --config config/train_small.yaml --max_steps 3000

The script reads top to bottom: parse the command line once, start (or resume) the
run, build the data, the module and the Trainer, fit. ``train()`` is the same minus the
parsing, for sweeps and other programs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fractalgen.config import TrainConfig
from versionkit.config import LoadedConfig
from versionkit.errors import ConfigError, VersionkitError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset

    from fractalgen.data import DataInfo
    from fractalgen.module import FractalGenModule
    from versionkit.registry import Registry
    from versionkit.run import Run, Target

__all__ = [
    "MUTABLE_ON_RESUME",
    "TrainResult",
    "build_trainer_kwargs",
    "experiment_root",
    "main",
    "train",
]

#: What a resume may change: the step budget, cadence, hardware, loader workers and the
#: validation image grid. Everything else (model, data, optimiser, seed, ...) is what
#: the checkpoint was trained with, and the saved config keeps it.
MUTABLE_ON_RESUME = (
    "trainer.max_steps",
    "trainer.val_every_n_steps",
    "trainer.log_every_n_steps",
    "trainer.save_top_k",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.cpu_threads",
    "data.num_workers",
    "sampling",
)

# Lightning hints that do not apply here: the bundled data sets live in memory, so
# loader workers would only add start-up time; the train loader is endless on purpose
# (its batches are a function of the global step, which makes resume exact).
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*is smaller than the logging interval.*",
    r".*Total length of .* across ranks is zero.*",
    # Lightning 2.6 on torch 2.13 still builds a pytree LeafSpec; harmless.
    r".*isinstance\(treespec, LeafSpec\).*",
)


@dataclass
class TrainResult:
    """How a training run ended."""

    version: int
    status: str
    best_metric: float | None
    best_step: int | None
    checkpoint_dir: Path


def experiment_root(config: TrainConfig) -> tuple[Path, str]:
    """``(<output_root>/<name>, the same path spelt as the user gave it)``."""
    shown = os.path.join(str(config.experiment.output_root), str(config.experiment.name))
    return Path(shown), shown


def build_trainer_kwargs(config: TrainConfig) -> dict[str, Any]:
    """``Trainer`` keyword arguments from the ``trainer`` and ``optim`` sections."""
    import torch

    t = config.trainer
    accelerator = str(t.accelerator)
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    kwargs: dict[str, Any] = {
        "max_steps": int(t.max_steps),
        "val_check_interval": int(t.val_every_n_steps),
        "check_val_every_n_epoch": None,
        "log_every_n_steps": int(t.log_every_n_steps),
        "accelerator": accelerator,
        "devices": t.devices,
        "num_nodes": int(t.num_nodes),
        "strategy": t.strategy,
        "precision": t.precision,
        "gradient_clip_val": float(config.optim.grad_clip) if config.optim.grad_clip else None,
        # Bitwise reproducible on CPU; on GPUs some kernels have no deterministic variant.
        "deterministic": True if on_cpu else "warn",
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
    }
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return kwargs


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


# -- the command line ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Train; returns the exit code (0 done, 2 bad input, 3 not found, 130 interrupted)."""
    from fractalgen._cli import run_cli
    from fractalgen._memory import keep_freed_memory
    from fractalgen.config import parse_train_args

    args = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "fractalgen-train"

    def body() -> int:
        loaded = parse_train_args(args)
        if loaded.controls.get("print_config"):
            from versionkit.config import dump_config

            sys.stdout.write(dump_config(_resume_plan(loaded)[2]))
            return 0
        keep_freed_memory()  # this command's own process: see fractalgen._memory
        result = train(loaded, command=[prog, *args])
        return {"completed": 0, "interrupted": 130}.get(result.status, 1)

    return run_cli(body, VersionkitError)


# -- training -----------------------------------------------------------------------------


def train(
    loaded: LoadedConfig[TrainConfig],
    *,
    callbacks: Sequence[Any] = (),
    extra: Mapping[str, Any] | None = None,
    printer: Callable[[str], None] = print,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Start (or, with ``loaded.controls["resume"]``, resume) a version and train it.

    Everything that can be refused (data, hardware, the resume's config and checkpoint)
    is checked before the version is allocated or touched.

    Args:
        loaded: the parsed config (``fractalgen.config.parse_train_args`` or
            ``versionkit.config.load_config(TrainConfig, ...)``).
        callbacks: extra Lightning callbacks (a sweep's pruning callback, ...).
        extra: more JSON-able keys for the version's record (e.g. ``{"sweep": ...}``).
        printer: where the console lines go.
        command: the command line to record (default ``sys.argv``).

    Raises:
        ConfigError: bad config, data, hardware or resume (exit 2).
        versionkit.run.RunPruned: a callback pruned the run (status ``pruned``).
    """
    import torch

    from fractalgen.data import build_datasets
    from versionkit.lightning import fit
    from versionkit.run import RunPruned, start_run

    target, registry, config = _resume_plan(loaded)
    root, shown = (target.root, str(target.root)) if target else experiment_root(config)
    seed = int(config.experiment.seed)
    img_size = int(config.model.img_size_list[0])
    train_set, val_set, info = build_datasets(config.data, img_size, seed=seed)
    if info.channels != config.data.channels or info.num_classes != config.data.num_classes:
        raise ConfigError(
            f"data: the data set has {info.channels} channel(s) and {info.num_classes} classes, "
            f"but the config says data.channels={config.data.channels}, "
            f"data.num_classes={config.data.num_classes}"
        )
    _check_hardware(config)
    if registry is None:
        from versionkit.registry import Registry

        registry = Registry(root, config.experiment.registry)
    devices = config.trainer.devices
    run = start_run(
        registry,
        loaded,
        display_root=shown,
        resume=target,
        command=command,
        seed=seed,
        extra=extra,
        printer=printer,
        devices_per_node=devices if isinstance(devices, int) and devices > 0 else 1,
        num_nodes=int(config.trainer.num_nodes),
        mutable_on_resume=MUTABLE_ON_RESUME,
        check_resume=lambda t, c: _check_checkpoint(t.checkpoint, c, info.channels,
                                                   info.num_classes),
    )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if config.trainer.cpu_threads is not None:
        # Never more than a sweep worker's share of the cores (it set it before the trial).
        torch.set_num_threads(min(int(config.trainer.cpu_threads), threads_before))
    try:
        with _quiet_lightning():
            trainer, module, loaders = _build(run, info, train_set, val_set, callbacks)
            status = fit(run, trainer, module, *loaders)
    except BaseException as exc:
        # fit() records how the run ended; this covers what went wrong before it did.
        if isinstance(exc, KeyboardInterrupt):
            run.finish("interrupted", error="KeyboardInterrupt")
        elif isinstance(exc, RunPruned):
            run.finish("pruned")
        else:
            run.finish("failed", error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise
    finally:
        # Trainer(deterministic=True) flips a process-wide switch; leave it as we found it,
        # and the thread count too.
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
    best = registry.best("val_loss", "min", version=run.version)
    if best is not None and run.is_global_zero and trainer.is_global_zero:
        printer(f"✓ Best checkpoint: {run.display(best.path)}")
    return TrainResult(
        version=run.version,
        status=status,
        best_metric=best.metrics.get("val_loss") if best is not None else None,
        best_step=best.step if best is not None else None,
        checkpoint_dir=run.checkpoint_dir,
    )


def _build(
    run: Run,
    info: DataInfo,
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    callbacks: Sequence[Any],
) -> tuple[Any, FractalGenModule, tuple[DataLoader[Any], DataLoader[Any]]]:
    """The Trainer, the module and the two loaders of ``run``."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from fractalgen.data import rank_share
    from fractalgen.module import FractalGenModule, StepBatchSampler
    from versionkit.lightning import build_trainer

    config: TrainConfig = run.config
    seed = int(config.experiment.seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    module = FractalGenModule(
        config.model_dump(mode="json"), in_channels=info.channels, num_classes=info.num_classes
    )
    module.sample_dir = run.log_dir / "samples"
    trainer = build_trainer(
        run,
        callbacks=callbacks,
        save_top_k=int(config.trainer.save_top_k),
        **build_trainer_kwargs(config),
    )
    loader_seed = torch.Generator()
    loader_seed.manual_seed(seed)
    if not isinstance(train_set, Sized):
        raise TypeError("the training data set must have a length")
    sampler = StepBatchSampler(
        len(train_set),
        int(config.data.train_batch_size),
        seed=seed,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        start_step=lambda: int(module.global_step),
        flip=bool(config.data.random_flip),
    )
    workers = int(config.data.num_workers)
    train_loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=workers,
        generator=loader_seed,
        persistent_workers=workers > 0,
    )
    val_loader = DataLoader(
        rank_share(val_set, trainer.global_rank, trainer.world_size),
        batch_size=int(config.data.val_batch_size),
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return trainer, module, (train_loader, val_loader)


# -- checks made before anything is written ------------------------------------------------


def _resume_plan(
    loaded: LoadedConfig[TrainConfig],
) -> tuple[Target | None, Registry | None, TrainConfig]:
    """``(target, registry, config)``: for ``--resume``, the target, its registry and the
    config the resume trains with; otherwise ``(None, None, loaded.config)``."""
    text = loaded.controls.get("resume")
    if text is None:
        return None, None, loaded.config
    from versionkit.registry import Registry
    from versionkit.run import plan_resume, resolve_target
    from versionkit.run.target import checkpoint_required

    default_root, _shown = experiment_root(loaded.config)
    backend = loaded.config.experiment.registry
    try:
        target = resolve_target(str(text), default_root=default_root, backend=backend)
        checkpoint_required(target, str(text))
    except VersionkitError as exc:
        raise type(exc)(f"--resume {exc}") from None
    registry = Registry(target.root, backend)
    plan = plan_resume(registry, loaded, target, mutable_on_resume=MUTABLE_ON_RESUME)
    config: TrainConfig = plan.config
    return target, registry, config


def _check_checkpoint(
    path: Path | None, config: TrainConfig, channels: int, num_classes: int
) -> None:
    """Refuse a checkpoint that is unreadable, not a training checkpoint, of another model,
    or already at (or past) ``trainer.max_steps``."""
    import torch

    from fractalgen.checkpoint import UnreadableCheckpoint, UnsafeCheckpoint, load_checkpoint
    from fractalgen.module import FractalGenModule

    if path is None:
        return
    try:
        blob = load_checkpoint(path, mmap=True)
    except UnsafeCheckpoint:
        raise ConfigError(
            f"--resume {path}: refusing to load it, it needs arbitrary unpickling (which could "
            "run code); only checkpoints of plain tensors and containers are loaded"
        ) from None
    except UnreadableCheckpoint as exc:
        raise ConfigError(
            f"--resume {path}: not a readable checkpoint (truncated or corrupt?): {exc}"
        ) from None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or "loops" not in blob:
        raise ConfigError(f"--resume {path}: not a Lightning training checkpoint")
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = FractalGenModule(
            config.model_dump(mode="json"), in_channels=channels, num_classes=num_classes
        ).state_dict()
    problem = _state_mismatch(expected, state)
    if problem is not None:
        raise ConfigError(f"--resume {path}: the checkpoint is not of this model: {problem}")
    step = blob.get("global_step")
    if isinstance(step, int) and int(config.trainer.max_steps) <= step:
        raise ConfigError(
            f"--resume {path}: the checkpoint is already at step {step} and "
            f"trainer.max_steps is {config.trainer.max_steps}; raise --max_steps above "
            f"{step} to train further"
        )


def _state_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """The first difference in names or shapes between two state dicts, and how many."""
    def shape(value: Any) -> list[int] | None:
        return list(value.shape) if hasattr(value, "shape") else None

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(
        k for k in set(expected) & set(found) if shape(expected[k]) != shape(found[k])
    )
    if not (missing or unexpected or reshaped):
        return None
    count = f"({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} reshaped)"
    if reshaped:
        k = reshaped[0]
        return f"{k} is {shape(found[k])} in the checkpoint but {shape(expected[k])} here {count}"
    if missing:
        return f"it has no {missing[0]} {count}"
    return f"it has {unexpected[0]}, which this model does not {count}"


def _check_hardware(config: TrainConfig) -> None:
    """Refuse an accelerator/devices/strategy/precision this machine cannot run, before a
    version is allocated for it."""
    import logging

    import pytorch_lightning as pl
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    kwargs = build_trainer_kwargs(config)
    keys = ("accelerator", "devices", "num_nodes", "strategy", "precision")
    quiet = logging.getLogger("pytorch_lightning")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with _quiet_lightning():
            pl.Trainer(
                **{k: kwargs[k] for k in keys},
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        lines = str(exc).strip().splitlines()
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in keys)
        raise ConfigError(
            f"trainer: this machine cannot run {given}: {lines[0] if lines else exc}"
        ) from None
    finally:
        quiet.setLevel(level)
        torch.use_deterministic_algorithms(deterministic)
