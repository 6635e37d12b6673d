"""``fractalgen-sample`` / ``python inference.py``: generate images from a checkpoint.

Examples::

    python inference.py --checkpoint outputs/fractalgen_small@best --mode unconditional
    python inference.py --checkpoint outputs/fractalgen_small/checkpoints/version_0 \\
        --mode class --classes 0,1,2
    python inference.py --checkpoint outputs/fractalgen_small/checkpoints/version_0/last.ckpt
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fractalgen import limits

__all__ = [
    "LoadedCheckpoint",
    "SampleError",
    "load_checkpoint",
    "main",
    "parse_classes",
    "pick_checkpoint",
]


class SampleError(Exception):
    """A user-facing failure: printed as ``error: <message>``, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model, typed config and where it came from."""

    path: Path
    model: Any  # FractalGen
    config: Any  # TrainConfig
    in_channels: int
    num_classes: int
    step: int | None
    weights: str  # "ema" or "model"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fractalgen-sample",
        description=(
            "Generate images with a trained FractalGen checkpoint. Writes grid.png and one "
            "PNG per image to --output_dir. Sampling settings default to the checkpoint's "
            "saved config (its `sampling` section)."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a .ckpt file; a checkpoints/version_N folder (its best checkpoint by val_loss, "
        "else last.ckpt); an experiment folder (its latest version's best); ROOT@N, "
        "ROOT@latest, ROOT@TAG; or ROOT@best (the best checkpoint of every version)",
    )
    p.add_argument(
        "--mode",
        choices=("unconditional", "class"),
        default="class",
        help="class-conditional (default) or unconditional (null class) sampling",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="class labels for --mode class: one (3) or a list (0,1,2); "
        "default: all classes, evenly",
    )
    p.add_argument(
        "--num_images",
        type=limits.image_count,
        default=None,
        help="how many images, at most 100000 (default: the config's sampling.num_images)",
    )
    p.add_argument(
        "--cfg",
        type=limits.finite_float,
        default=None,
        help="classifier-free guidance scale, 1.0 = none (default: the config's)",
    )
    p.add_argument(
        "--cfg_schedule",
        choices=("linear", "constant"),
        default=None,
        help="guidance schedule over the top level's steps (default: the config's)",
    )
    p.add_argument(
        "--temperature",
        type=limits.finite_float,
        default=None,
        help="sampling temperature: the logits are DIVIDED by it (below 1 sharper, "
        "above 1 more diverse; the reference code multiplies instead). "
        "Default: the config's",
    )
    p.add_argument(
        "--opening_steps",
        type=int,
        default=None,
        help="--mode unconditional: sample the top level's first N steps (AR: patches; MAR: "
        "unmasking steps) at --opening_temperature: without a class they decide which digit "
        "is drawn (default: the config's sampling.opening_steps; 0: never). Class-"
        "conditional samples never open",
    )
    p.add_argument(
        "--opening_temperature",
        type=limits.finite_float,
        default=None,
        help="--mode unconditional: temperature of those opening steps (default: the "
        "config's)",
    )
    p.add_argument(
        "--num_iter",
        default=None,
        help="generation steps per level above the pixel head, e.g. 4,4 "
        "(default: the config's sampling.num_iter_list)",
    )
    p.add_argument("--seed", type=limits.seed, default=0, help="random seed (default 0)")
    p.add_argument(
        "--batch_size", type=int, default=64, help="images per forward batch (default 64)"
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available, else cpu",
    )
    p.add_argument("--output_dir", default="samples", help="where the PNGs go (default: samples)")
    p.add_argument(
        "--weights",
        choices=("auto", "ema", "model"),
        default="auto",
        help="auto: the EMA weights when the checkpoint has them",
    )
    return p


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    """``"3"`` / ``"0,1,2"`` / ``"[0, 1]"`` -> labels, each checked against ``num_classes``."""
    if text is None:
        return list(range(num_classes))
    body = text.strip().strip("[]")
    labels: list[int] = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise SampleError(
                f"--classes {text}: {part!r} is not an integer (expected e.g. 3 or 0,1,2)", 2
            ) from None
        if not 0 <= value < num_classes:
            raise SampleError(
                f"--classes {text}: class {value} is out of range; the model has {num_classes} "
                f"classes (0..{num_classes - 1})",
                2,
            )
        labels.append(value)
    if not labels:
        raise SampleError(f"--classes {text!r}: no class given (expected e.g. 3 or 0,1,2)", 2)
    return labels


def pick_checkpoint(target: str) -> tuple[Path, int | None]:
    """Resolve ``--checkpoint`` to a file, and the version it belongs to when known.

    A folder or ``ROOT@...`` gives the *best* checkpoint (lowest ``val_loss``) of the
    version it names, else its ``last.ckpt``; a ``.ckpt`` file is used as it is, even
    outside an experiment.
    """
    from versionkit.errors import VersionkitError
    from versionkit.layout import CHECKPOINT_SUFFIX, CHECKPOINTS, Layout
    from versionkit.run import resolve_target

    path = Path(target).expanduser()
    if path.is_file() and path.suffix == CHECKPOINT_SUFFIX:
        located = Layout.locate(path)
        in_version = located is not None and located[1] is not None
        if not in_version or path.parent.parent.name != CHECKPOINTS:
            return path, None
    try:
        resolved = resolve_target(target, want_checkpoint="best")
    except VersionkitError as exc:
        raise SampleError(f"--checkpoint {exc}", exc.exit_code) from None
    if resolved.checkpoint is None:
        folder = Layout(resolved.root).checkpoint_dir(resolved.version)
        raise SampleError(f"--checkpoint {target}: {folder} holds no checkpoint yet", 3)
    return resolved.checkpoint, resolved.version


def load_checkpoint(path: Path, *, weights: str = "auto", device: str = "cpu") -> LoadedCheckpoint:
    """Load a fractalgen checkpoint safely (``weights_only=True``) and rebuild its model.

    Raises:
        SampleError: unreadable, truncated or malicious file, or not a fractalgen checkpoint.
    """
    from pydantic import ValidationError

    from fractalgen.checkpoint import UnreadableCheckpoint, UnsafeCheckpoint, load_checkpoint
    from fractalgen.config import TrainConfig
    from fractalgen.model import build_model

    try:
        blob = load_checkpoint(path)
    except UnsafeCheckpoint as exc:
        raise SampleError(
            f"refusing to load {path}: it needs arbitrary unpickling, which could run code "
            f"(torch.load weights_only=True said: {exc}). Only checkpoints of plain tensors "
            "and containers are loaded."
        ) from None
    except UnreadableCheckpoint as exc:
        raise SampleError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}"
        ) from None
    hparams = blob.get("hyper_parameters") if isinstance(blob, dict) else None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(hparams, dict) or "config" not in hparams or not isinstance(state, dict):
        raise SampleError(
            f"{path} is not a fractalgen checkpoint (no hyper_parameters.config / state_dict)"
        )
    try:
        config = TrainConfig.model_validate(hparams["config"])
        in_channels = int(hparams.get("in_channels", config.data.channels))
        num_classes = int(hparams.get("num_classes", config.data.num_classes))
    except (ValidationError, ValueError, TypeError) as exc:
        raise SampleError(
            f"{path}: the config stored in the checkpoint is not valid: {exc}"
        ) from None
    has_ema = any(k.startswith("ema.") for k in state)
    chosen = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "model"
    if chosen == "ema" and not has_ema:
        raise SampleError(
            f"{path} has no EMA weights (train with optim.ema_decay); use --weights model", 2
        )
    prefix = f"{chosen}."
    weights_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        model = build_model(
            config.model, in_channels=in_channels, num_classes=num_classes
        )
        model.load_state_dict(weights_state, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        raise SampleError(
            f"{path}: the weights do not fit the model its config describes (a checkpoint of "
            f"another model?): {lines[0] if lines else type(exc).__name__}"
        ) from None
    model.to(device).eval()
    step = blob.get("global_step")
    return LoadedCheckpoint(
        path=path,
        model=model,
        config=config,
        in_channels=in_channels,
        num_classes=num_classes,
        step=int(step) if isinstance(step, int) else None,
        weights=chosen,
    )


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".fractalgen-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SampleError(
            f"--output_dir {folder}: cannot write there ({exc.strerror or exc})", 2
        ) from None


def _parse_num_iter(text: str | None, default: Sequence[int], levels: int) -> list[int]:
    if text is None:
        return list(default)
    try:
        values = [int(v) for v in text.strip().strip("[]").split(",") if v.strip()]
    except ValueError:
        raise SampleError(f"--num_iter {text}: expected integers such as 4,4", 2) from None
    if len(values) != levels or any(v < 1 for v in values):
        raise SampleError(
            f"--num_iter {text}: expected {levels} positive integer(s), one per level above "
            "the pixel head",
            2,
        )
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Sample; returns the exit code (2: bad arguments, 1: unusable checkpoint)."""
    from fractalgen._cli import run_cli

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_cli(lambda: _run(args), SampleError)


def _run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from fractalgen.images import image_grid
    from versionkit.layout import CONFIG_FILE

    if args.num_images is not None and args.num_images < 1:
        raise SampleError(f"--num_images {args.num_images}: must be at least 1", 2)
    if args.batch_size < 1:
        raise SampleError(f"--batch_size {args.batch_size}: must be at least 1", 2)
    for flag, value in (
        ("--temperature", args.temperature),
        ("--opening_temperature", args.opening_temperature),
    ):
        if value is not None and not value > 0:
            raise SampleError(f"{flag} {value}: must be above 0 (it divides logits)", 2)
    if args.opening_steps is not None and args.opening_steps < 0:
        raise SampleError(f"--opening_steps {args.opening_steps}: must be at least 0", 2)
    if args.mode == "class":
        for flag, value in (
            ("--opening_steps", args.opening_steps),
            ("--opening_temperature", args.opening_temperature),
        ):
            if value is not None:
                raise SampleError(
                    f"{flag} applies to --mode unconditional only: a class-conditional "
                    f"sample's class decides what is drawn, so it never opens", 2
                )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SampleError("--device cuda: no CUDA device is available here", 2)
    device = (
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )

    path, version = pick_checkpoint(args.checkpoint)
    out = Path(args.output_dir)
    _check_writable(out)
    loaded = load_checkpoint(path, weights=args.weights, device=device)
    config_file = path.parent / CONFIG_FILE
    print(f"✓ Checkpoint: {path}")
    print(f"✓ Experiment version: {version if version is not None else 'unknown'}")
    print(f"✓ Config: {config_file if config_file.is_file() else 'stored inside the checkpoint'}")

    sampling = loaded.config.sampling
    num_images = args.num_images if args.num_images is not None else int(sampling.num_images)
    levels = len(loaded.config.model.img_size_list) - 1
    num_iter = _parse_num_iter(args.num_iter, sampling.num_iter_list, levels)
    cfg = float(args.cfg if args.cfg is not None else sampling.cfg)
    schedule = str(args.cfg_schedule or sampling.cfg_schedule)
    temperature = float(args.temperature if args.temperature is not None else sampling.temperature)
    labels: list[int] | None = None
    if args.mode == "class":
        if loaded.num_classes < 1:
            raise SampleError(
                "--mode class: this model has no classes; use --mode unconditional", 2
            )
        classes = parse_classes(args.classes, loaded.num_classes)
        labels = sorted(classes[i * len(classes) // num_images] for i in range(num_images))
    elif args.classes is not None:
        raise SampleError("--classes only applies to --mode class", 2)
    opening = sampling.opening_overrides(
        args.opening_steps, args.opening_temperature, conditional=labels is not None
    )

    generator = torch.Generator(device=device)
    generator.manual_seed(int(args.seed))
    torch.manual_seed(int(args.seed))
    images: list[torch.Tensor] = []
    batches = math.ceil(num_images / args.batch_size)
    for b in tqdm(range(batches), desc="sampling", unit="batch", file=sys.stderr):
        lo, hi = b * args.batch_size, min(num_images, (b + 1) * args.batch_size)
        batch_labels = None
        if labels is not None:
            batch_labels = torch.tensor(labels[lo:hi], dtype=torch.long, device=device)
        imgs = loaded.model.sample(
            hi - lo,
            batch_labels,
            num_iter_list=num_iter,
            cfg=cfg,
            cfg_schedule=schedule,
            temperature=temperature,
            generator=generator,
            filter_threshold=float(sampling.filter_threshold),
            **opening,
        )
        images.append(imgs.cpu())
    stacked = torch.cat(images).numpy()
    if labels is None:
        per_row = max(1, math.ceil(math.sqrt(num_images)))
    else:
        per_row = max(1, math.ceil(num_images / len(set(labels))))
    scale = max(1, 64 // max(1, stacked.shape[-1]))
    try:
        Image.fromarray(image_grid(stacked, nrow=per_row, scale=scale)).save(out / "grid.png")
        for i, img in enumerate(stacked):
            arr = img.transpose(1, 2, 0)
            pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            suffix = f"_class{labels[i]}" if labels is not None else ""
            pil.save(out / f"{i:05d}{suffix}.png")
    except OSError as exc:
        raise SampleError(f"--output_dir {out}: cannot write the images ({exc})", 2) from None
    print(f"✓ Wrote {num_images} images and grid.png to {out}")
    return 0
