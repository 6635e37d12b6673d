"""``fractalgen-train`` / ``python main.py``: train FractalGen into a new experiment version.

Examples::

    python main.py --config config/train_small.yaml
    python main.py --train_batch_size 8 --max_steps 100000        # config from flags only
    python main.py --config outputs/fractalgen_small/checkpoints/version_0/config.yaml
    python main.py --resume outputs/fractalgen_small/checkpoints/version_0/last.ckpt
    python main.py --config config/train_small.yaml --max_steps 7 --print_config
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from versionkit.errors import ConfigError, VersionkitError

__all__ = ["FROZEN_ON_RESUME", "build_trainer_kwargs", "experiment_root", "main"]

#: Config fields that a resumed run may not change: the checkpoint's weights, data shape
#: and location depend on them. Everything else (max_steps, validation cadence,
#: devices, sampling, ...) may be changed on resume.
FROZEN_ON_RESUME = (
    "model",
    "data.dataset",
    "data.path",
    "data.channels",
    "data.num_classes",
    "data.val_fraction",
    "experiment.name",
    "experiment.output_root",
    "experiment.registry",
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


def experiment_root(config: Any) -> tuple[Path, str]:
    """``(<output_root>/<name>, the same path spelt as the user gave it)``."""
    shown = os.path.join(str(config.experiment.output_root), str(config.experiment.name))
    return Path(shown), shown


def build_trainer_kwargs(config: Any) -> dict[str, Any]:
    """``pl.Trainer`` keyword arguments from the ``trainer`` and ``optim`` sections."""
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
        "enable_progress_bar": True,
    }
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return kwargs


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    value: str | None = None
    for i, token in enumerate(argv):
        if token == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
    return value


def _saved_config_for(target: str, default_root: Path | None) -> Path | None:
    """The ``config.yaml`` of the version that ``--resume target`` continues."""
    from versionkit.lightning import resolve_resume

    resolved = resolve_resume(target, default_root=default_root)
    saved = resolved.root / "checkpoints" / f"version_{resolved.version}" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"--resume {target}: {saved} is missing, so the config of version "
            f"{resolved.version} is unknown"
        )
    return saved


def _check_hardware(config: Any) -> None:
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


def _checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` of a checkpoint, read safely (no arbitrary unpickling)."""
    from fractalgen.checkpoint import UnreadableCheckpoint, UnsafeCheckpoint, load_checkpoint

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
    step = blob.get("global_step") if isinstance(blob, dict) else None
    if not isinstance(blob, dict) or "loops" not in blob or "state_dict" not in blob:
        raise ConfigError(f"--resume {path}: not a Lightning training checkpoint")
    return step if isinstance(step, int) else None


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Train; returns the process exit code (2 for config and usage errors)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except VersionkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(args: list[str]) -> int:
    from fractalgen.config import parse_train_args

    resume_value = _flag_value(args, "--resume")
    latest_root: list[Path | None] = [None]

    def resolve_resume_config(value: str) -> Path | None:
        return _saved_config_for(value, latest_root[0])

    if resume_value == "latest":
        # `latest` needs the experiment root first: from --config / flags / defaults.
        first = parse_train_args(args, resolve_resume_config=lambda _value: None)
        latest_root[0] = experiment_root(first.config)[0]
    loaded = parse_train_args(args, resolve_resume_config=resolve_resume_config)
    config = loaded.config
    if loaded.controls.get("print_config"):
        from versionkit.config import dump_config

        sys.stdout.write(dump_config(config))
        return 0
    return _train(loaded, args)


def _train(loaded: Any, args: list[str]) -> int:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from fractalgen.data import build_datasets, rank_share
    from fractalgen.module import FractalGenModule, StepBatchSampler
    from versionkit.lightning import check_resume_changes, resolve_resume, start_run
    from versionkit.registry import Registry

    config = loaded.config
    root, shown_root = experiment_root(config)
    resume = None
    resume_value = loaded.controls.get("resume")
    if resume_value:
        resume = resolve_resume(str(resume_value), default_root=root)
        if resume.root.resolve() != root.resolve():
            raise ConfigError(
                f"--resume {resume_value}: the checkpoint belongs to experiment {resume.root}, "
                f"but the config names {shown_root}"
            )
        import yaml

        saved_path = resume.root / "checkpoints" / f"version_{resume.version}" / "config.yaml"
        saved = (
            yaml.safe_load(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else None
        )
        if isinstance(saved, dict):
            check_resume_changes(
                saved, config.model_dump(mode="json"), frozen=FROZEN_ON_RESUME, flags=loaded.flags
            )
        step = _checkpoint_step(resume.checkpoint)
        if step is not None and int(config.trainer.max_steps) <= step:
            raise ConfigError(
                f"--resume {resume_value}: the checkpoint is already at step {step} and "
                f"trainer.max_steps is {config.trainer.max_steps}; raise --max_steps above "
                f"{step} to train further"
            )
    seed = int(config.experiment.seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    img_size = int(config.model.img_size_list[0])
    train_set, val_set, info = build_datasets(config.data, img_size, seed=seed)  # DataError: exit 2
    if info.channels != config.data.channels or info.num_classes != config.data.num_classes:
        raise ConfigError(
            f"data: the data set has {info.channels} channel(s) and {info.num_classes} classes, "
            f"but the config says data.channels={config.data.channels}, "
            f"data.num_classes={config.data.num_classes}"
        )

    _check_hardware(config)
    registry = Registry(root, config.experiment.registry)
    devices = config.trainer.devices
    per_node = devices if isinstance(devices, int) and devices > 0 else 1
    run = start_run(
        registry,
        loaded,
        display_root=shown_root,
        resume=resume,
        command=[Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "fractalgen-train", *args],
        seed=seed,
        devices_per_node=per_node,
        num_nodes=int(config.trainer.num_nodes),
    )
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        module = FractalGenModule(
            config.model_dump(mode="json"), in_channels=info.channels, num_classes=info.num_classes
        )
        module.sample_dir = run.log_dir / "samples"
        with _quiet_lightning():
            trainer = run.trainer(
                checkpoint={"save_top_k": int(config.trainer.save_top_k)},
                **build_trainer_kwargs(config),
            )
        loader_seed = torch.Generator()
        loader_seed.manual_seed(seed)
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
    except BaseException as exc:
        run.fail(exc)
        raise
    try:
        with _quiet_lightning():
            run.fit(trainer, module, train_loader, val_loader)
    finally:
        # Trainer(deterministic=True) flips a process-wide switch; leave it as we found it.
        torch.use_deterministic_algorithms(deterministic_before)
    if run.is_global_zero and trainer.is_global_zero:
        best = registry.best("val_loss", "min", version=run.version)
        if best is not None:
            print(f"✓ Best checkpoint: {run.display(best.path)}")
    return 0
