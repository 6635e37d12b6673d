"""``fractalgen-eval`` / ``python -m fractalgen.eval``: the figures a researcher reports.

For any checkpoint: the validation NLL in bits per dimension, as the mean and standard
deviation over ``--nll-draws`` independent draws of the estimator (one draw is what
``val_loss`` reports; its spread is larger than the differences worth measuring).

For the bundled digits, a logistic regression trained on the real training digits (the
same split as the model's) scores generated samples:

* class-conditional samples (labels spread evenly over the classes), at each ``--cfg``:
  the share the classifier labels as the class they were drawn for, per class and overall;
* unconditional samples (the null class): the classifier's mean top-class probability,
  beside the same figure for the real validation digits, and the histogram of the
  predicted classes (mode coverage).

When the checkpoint belongs to a versionkit version, the figures go into its registry
record as ``eval/...`` metrics, with the settings under the record's ``eval`` key.

Examples::

    python -m fractalgen.eval --checkpoint outputs/fractalgen_small
    python -m fractalgen.eval --checkpoint outputs/fractalgen_small/checkpoints/version_0 \\
        --nll-draws 10 --samples 200 --cfg 1,3 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fractalgen.metrics import EvalError, EvalSettings, evaluate, format_table, resolve_num_iter

__all__ = ["EvalError", "EvalSettings", "evaluate", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fractalgen-eval",
        description=(
            "Evaluate a trained FractalGen checkpoint: validation NLL (bits per dimension, "
            "mean +- sd over several draws of the estimator) and, for the bundled digits, "
            "how a logistic-regression classifier trained on real digits judges the "
            "class-conditional and unconditional samples. Image folders get the NLL only: "
            "FID needs the Inception network's weights, which cannot be downloaded here. "
            "The figures are printed as a table and recorded as eval/... metrics in the "
            "version's registry record."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a .ckpt file, a checkpoints/version_N folder (its best checkpoint by val_loss, "
        "else last.ckpt) or an experiment folder (the best checkpoint of all versions)",
    )
    p.add_argument(
        "--nll-draws",
        type=int,
        default=10,
        help="independent draws of the NLL estimator over the validation set (default 10; "
        "0 skips the NLL)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=200,
        help="digits only: samples per cfg and unconditional samples (default 200; 0 skips)",
    )
    p.add_argument(
        "--cfg",
        default="1,3",
        help="digits only: guidance scales for the class-conditional samples, e.g. 1,3 "
        "(default 1,3)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (logits are divided by it); default: the config's",
    )
    p.add_argument(
        "--opening_steps",
        type=int,
        default=None,
        help="the unconditional samples' first N top-level steps sample at "
        "--opening_temperature; class-conditional samples never open (default: the "
        "config's sampling.opening_steps)",
    )
    p.add_argument(
        "--opening_temperature",
        type=float,
        default=None,
        help="temperature of the unconditional samples' opening steps (default: the "
        "config's)",
    )
    p.add_argument(
        "--num_iter",
        default=None,
        help="generation steps per level above the pixel head, e.g. 4,4 (default: the "
        "config's sampling.num_iter_list)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--batch_size", type=int, default=100, help="images per sampling batch (default 100)"
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available, else cpu",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "ema", "model"),
        default="auto",
        help="auto: the EMA weights when the checkpoint has them",
    )
    p.add_argument(
        "--no-record",
        action="store_true",
        help="do not write the figures into the version's registry record",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.strip().strip("[]").split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"{flag} {text}: expected numbers such as 1,3", 2) from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise EvalError(f"{flag} {text}: expected one or more finite numbers >= 0", 2)
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate; returns the exit code (2: bad input, 3: not found, 1: anything else)."""
    from fractalgen._cli import run_cli

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_cli(lambda: _run(args), EvalError)


def _settings(args: argparse.Namespace) -> EvalSettings:
    for flag, value, low in (
        ("--nll-draws", args.nll_draws, 0),
        ("--samples", args.samples, 0),
        ("--batch_size", args.batch_size, 1),
        ("--seed", args.seed, 0),
    ):
        if value < low:
            raise EvalError(f"{flag} {value}: must be at least {low}", 2)
    for flag, value in (
        ("--temperature", args.temperature),
        ("--opening_temperature", args.opening_temperature),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise EvalError(f"{flag} {value}: must be above 0 (it divides logits)", 2)
    if args.opening_steps is not None and args.opening_steps < 0:
        raise EvalError(f"--opening_steps {args.opening_steps}: must be at least 0", 2)
    num_iter = None
    if args.num_iter is not None:
        try:
            num_iter = [int(v) for v in args.num_iter.strip().strip("[]").split(",") if v.strip()]
        except ValueError:
            raise EvalError(
                f"--num_iter {args.num_iter}: expected integers such as 4,4", 2
            ) from None
    return EvalSettings(
        nll_draws=args.nll_draws,
        samples=args.samples,
        cfgs=_floats(args.cfg, "--cfg"),
        temperature=args.temperature,
        opening_steps=args.opening_steps,
        opening_temperature=args.opening_temperature,
        num_iter=num_iter,
        seed=args.seed,
        batch_size=args.batch_size,
    )


def _locate(target: str) -> tuple[Path, Path | None, int | None]:
    """(checkpoint file, experiment root or None, version or None), as inference finds it:
    a folder or ``ROOT@...`` gives the version's best checkpoint by ``val_loss``."""
    from fractalgen.sample import SampleError, pick_checkpoint
    from versionkit.layout import Layout

    try:
        path, version = pick_checkpoint(target)
    except SampleError as exc:
        raise EvalError(str(exc), exc.exit_code) from None
    located = Layout.locate(path) if version is not None else None
    return path, (located[0] if located is not None else None), version


def _run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from fractalgen.data import DataError
    from fractalgen.sample import SampleError, load_checkpoint

    settings = _settings(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: no CUDA device is available here", 2)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    path, root, version = _locate(args.checkpoint)
    try:
        loaded = load_checkpoint(path, weights=args.weights, device=device)
    except SampleError as exc:
        raise EvalError(str(exc), 2) from None
    resolve_num_iter(loaded.config, settings)  # refuse before any work starts
    digits = loaded.config.data.dataset == "digits"
    samples = settings.samples if digits else 0
    batches = math.ceil(samples / settings.batch_size) if samples else 0
    conditional = len(settings.cfgs) if loaded.num_classes > 0 else 0
    total = settings.nll_draws + batches * (conditional + 1)
    torch.manual_seed(settings.seed)
    with tqdm(
        total=total, desc="evaluating", unit="step", file=sys.stderr, disable=total == 0
    ) as bar:
        try:
            result = evaluate(loaded, settings, progress=lambda: bar.update(1))
        except DataError as exc:
            raise EvalError(str(exc), 2) from None
    result = {"checkpoint": str(path), "version": version, "step": loaded.step, **result}
    if root is not None and version is not None and not args.no_record and result["metrics"]:
        _record(root, version, loaded, path, result)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_table(result))
    return 0


def _record(root: Path, version: int, loaded: Any, path: Path, result: dict[str, Any]) -> None:
    from versionkit.errors import RegistryError
    from versionkit.registry import Registry

    try:
        with Registry(root, loaded.config.experiment.registry) as registry:
            info = registry.get(version)
            step = info.record.get("metrics_step")
            registry.log_metrics(
                version, result["metrics"], step=step if isinstance(step, int) else loaded.step or 0
            )
            registry.update(
                version,
                eval={"checkpoint": str(path), "step": loaded.step, **result["settings"]},
            )
    except RegistryError as exc:
        print(f"warning: the figures were not recorded in the registry: {exc}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
