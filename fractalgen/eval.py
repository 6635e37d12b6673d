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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DigitsJudge", "EvalError", "EvalSettings", "evaluate", "main", "nll_draws"]

#: Images per NLL estimate: the same chunking as the training module's ``val_loss``.
NLL_CHUNK = 8


class EvalError(Exception):
    """A user-facing failure: printed as ``error: <message>``, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class EvalSettings:
    """What to measure and how to sample (``None``: the checkpoint's ``sampling`` config)."""

    nll_draws: int = 10
    samples: int = 200
    cfgs: list[float] = field(default_factory=lambda: [1.0, 3.0])
    temperature: float | None = None
    num_iter: list[int] | None = None
    seed: int = 0
    batch_size: int = 100


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


# ---------------------------------------------------------------------------- NLL


def nll_draws(
    model: Any,
    images: Any,
    *,
    draws: int,
    seed: int,
    progress: Callable[[], None] = lambda: None,
) -> list[float]:
    """``draws`` independent estimates of the mean NLL (bits per dimension) of ``images``.

    Each draw runs the model's estimator over every image in chunks of ``NLL_CHUNK``
    (each chunk draws its own masked counts and orders), with its own seeded generator.
    """
    import torch

    device = next(model.parameters()).device
    values: list[float] = []
    with torch.no_grad():
        for k in range(draws):
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
            total = 0.0
            for chunk in images.split(NLL_CHUNK):
                chunk = chunk.to(device)
                total += float(model.nll_bpd(chunk, generator=generator)) * chunk.shape[0]
            values.append(total / images.shape[0])
            progress()
    return values


# ------------------------------------------------------------------- the digits judge


class DigitsJudge:
    """A logistic regression over 8x8 gray digits in [0, 1], trained on real digits."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        self.classifier = LogisticRegression(max_iter=2000, random_state=seed)
        self.classifier.fit(self.features(images), labels)

    @staticmethod
    def features(images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) floats in [0, 1] or uint8 -> (N, 64): channel mean, pooled to 8x8."""
        arr = np.asarray(images, dtype=np.float64)
        if np.asarray(images).dtype == np.uint8:
            arr = arr / 255.0
        gray = arr.mean(axis=1)
        n, h, w = gray.shape
        if h % 8 or w % 8:
            raise EvalError(f"digits images must be a multiple of 8 pixels, got {h}x{w}", 2)
        pooled = gray.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
        return pooled.reshape(n, 64)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10)."""
        probs: np.ndarray = np.asarray(self.classifier.predict_proba(self.features(images)))
        return probs


def _uncond_figures(probs: np.ndarray, classes: int) -> dict[str, Any]:
    predicted = probs.argmax(axis=1)
    hist = np.bincount(predicted, minlength=classes) / max(1, len(predicted))
    return {
        "top_prob": float(probs.max(axis=1).mean()),
        "histogram": [float(v) for v in hist],
        "min_class_fraction": float(hist.min()),
    }


# ------------------------------------------------------------------------ evaluate


def _sample(
    model: Any,
    n: int,
    labels: Any,
    *,
    cfg: float,
    settings: EvalSettings,
    sampling: Any,
    num_iter: list[int],
    temperature: float,
    progress: Callable[[], None],
) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    extra: dict[str, Any] = {}
    threshold = getattr(sampling, "filter_threshold", None)
    if threshold is not None and _takes_filter_threshold(model):
        extra["filter_threshold"] = float(threshold)
    out: list[np.ndarray] = []
    for lo in range(0, n, settings.batch_size):
        hi = min(n, lo + settings.batch_size)
        part = labels[lo:hi].to(device) if labels is not None else None
        imgs = model.sample(
            hi - lo,
            part,
            num_iter_list=num_iter,
            cfg=cfg,
            cfg_schedule=str(sampling.cfg_schedule),
            temperature=temperature,
            generator=generator,
            **extra,
        )
        out.append(imgs.cpu().numpy())
        progress()
    return np.concatenate(out)


def _takes_filter_threshold(model: Any) -> bool:
    import inspect

    return "filter_threshold" in inspect.signature(model.sample).parameters


def evaluate(
    loaded: Any, settings: EvalSettings, *, progress: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Measure a loaded checkpoint (``fractalgen.sample.LoadedCheckpoint``).

    Returns:
        ``{"settings", "nll_bpd", "digits", "metrics"}``: ``nll_bpd`` has ``mean``, ``sd``
        and ``draws`` (None when ``nll_draws`` is 0); ``digits`` is None for other data;
        ``metrics`` is the flat ``eval/...`` mapping recorded in the registry.
    """
    import torch

    from fractalgen.data import build_datasets

    config = loaded.config
    sampling = config.sampling
    levels = len(config.model.img_size_list) - 1
    num_iter = list(settings.num_iter or sampling.num_iter_list)
    if len(num_iter) != levels or any(i < 1 for i in num_iter):
        raise EvalError(
            f"--num_iter {','.join(map(str, num_iter))}: expected {levels} positive "
            "integer(s), one per level above the pixel head",
            2,
        )
    temperature = float(
        settings.temperature if settings.temperature is not None else sampling.temperature
    )
    seed = int(config.experiment.seed)
    img_size = int(config.model.img_size_list[0])
    train_set, val_set, _ = build_datasets(config.data, img_size, seed=seed)
    val_images = torch.stack([val_set[i][0] for i in range(len(val_set))])  # type: ignore[arg-type]
    metrics: dict[str, float] = {}
    result: dict[str, Any] = {
        "settings": {
            "nll_draws": settings.nll_draws,
            "samples": settings.samples,
            "cfg": settings.cfgs,
            "cfg_schedule": str(sampling.cfg_schedule),
            "temperature": temperature,
            "num_iter": num_iter,
            "filter_threshold": getattr(sampling, "filter_threshold", None),
            "seed": settings.seed,
            "weights": loaded.weights,
        },
        "nll_bpd": None,
        "digits": None,
    }
    model = loaded.model
    model.eval()
    if settings.nll_draws > 0:
        draws = nll_draws(
            model, val_images, draws=settings.nll_draws, seed=settings.seed, progress=progress
        )
        sd = float(np.std(draws, ddof=1)) if len(draws) > 1 else 0.0
        result["nll_bpd"] = {"mean": float(np.mean(draws)), "sd": sd, "draws": draws}
        metrics.update(
            {
                "eval/nll_bpd": float(np.mean(draws)),
                "eval/nll_bpd_sd": sd,
                "eval/nll_draws": float(len(draws)),
            }
        )
    if config.data.dataset == "digits" and settings.samples > 0:
        result["digits"] = _judge_digits(
            loaded,
            train_set,
            val_images,
            settings,
            sampling,
            num_iter,
            temperature,
            metrics,
            progress,
        )
    result["metrics"] = metrics
    return result


def _judge_digits(
    loaded: Any,
    train_set: Any,
    val_images: Any,
    settings: EvalSettings,
    sampling: Any,
    num_iter: list[int],
    temperature: float,
    metrics: dict[str, float],
    progress: Callable[[], None],
) -> dict[str, Any]:
    import torch

    train_images = torch.stack([train_set[i][0] for i in range(len(train_set))]).numpy()
    train_labels = np.asarray([train_set[i][1] for i in range(len(train_set))])
    judge = DigitsJudge(train_images, train_labels, seed=settings.seed)
    classes = 10
    real = _uncond_figures(judge.probabilities(val_images.numpy()), classes)
    n = settings.samples

    def sample(labels: Any, cfg: float) -> np.ndarray:
        return _sample(
            loaded.model,
            n,
            labels,
            cfg=cfg,
            settings=settings,
            sampling=sampling,
            num_iter=num_iter,
            temperature=temperature,
            progress=progress,
        )

    out: dict[str, Any] = {"real_top_prob": real["top_prob"], "conditional": {}}
    metrics["eval/real/top_prob"] = real["top_prob"]
    if loaded.num_classes > 0:
        labels = torch.arange(n) % classes
        truth = labels.numpy()
        for cfg in settings.cfgs:
            predicted = judge.probabilities(sample(labels, cfg)).argmax(axis=1)
            right = predicted == truth
            per_class = [
                float(right[truth == c].mean()) for c in range(classes) if (truth == c).any()
            ]
            key = f"cfg{cfg:g}"
            out["conditional"][key] = {
                "cfg": cfg,
                "accuracy": float(right.mean()),
                "per_class": per_class,
            }
            metrics[f"eval/{key}/accuracy"] = float(right.mean())
            for c, acc in enumerate(per_class):
                metrics[f"eval/{key}/accuracy_{c}"] = acc
    uncond = _uncond_figures(judge.probabilities(sample(None, 1.0)), classes)
    out["unconditional"] = uncond
    metrics["eval/uncond/top_prob"] = uncond["top_prob"]
    metrics["eval/uncond/min_class_fraction"] = uncond["min_class_fraction"]
    for c, frac in enumerate(uncond["histogram"]):
        metrics[f"eval/uncond/class_{c}"] = frac
    return out


# ----------------------------------------------------------------------- output


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of ``evaluate``'s result."""
    s = result["settings"]
    lines = [
        f"checkpoint   {result['checkpoint']} (version {result['version']}, step "
        f"{result['step']}, {s['weights']} weights)",
        f"sampling     temperature {s['temperature']:g}, num_iter {s['num_iter']}, "
        f"cfg_schedule {s['cfg_schedule']}, seed {s['seed']}",
    ]
    nll = result["nll_bpd"]
    if nll is not None:
        lines.append(
            f"NLL          {nll['mean']:.4f} ± {nll['sd']:.4f} bits/dim "
            f"(mean ± sd of {len(nll['draws'])} draws)"
        )
    digits = result["digits"]
    if digits is None:
        lines.append("digits       - (image folders: NLL only; FID needs Inception weights)")
        return "\n".join(lines)
    header = "class        " + " ".join(f"{c:>5d}" for c in range(10)) + "    all"
    lines.append("")
    lines.append("class-conditional accuracy (logistic regression trained on real digits)")
    lines.append(header)
    for key, row in digits["conditional"].items():
        cells = " ".join(f"{v:5.2f}" for v in row["per_class"])
        lines.append(f"{key:<12} {cells}  {row['accuracy']:5.3f}")
    u = digits["unconditional"]
    lines.append("")
    lines.append(
        f"unconditional: mean top-class probability {u['top_prob']:.3f} "
        f"(real validation digits: {digits['real_top_prob']:.3f})"
    )
    lines.append("histogram    " + " ".join(f"{v:5.2f}" for v in u["histogram"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate; returns the exit code (2: bad input, 3: not found, 1: anything else)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _settings(args: argparse.Namespace) -> EvalSettings:
    for flag, value, low in (
        ("--nll-draws", args.nll_draws, 0),
        ("--samples", args.samples, 0),
        ("--batch_size", args.batch_size, 1),
        ("--seed", args.seed, 0),
    ):
        if value < low:
            raise EvalError(f"{flag} {value}: must be at least {low}", 2)
    if args.temperature is not None and not (
        math.isfinite(args.temperature) and args.temperature > 0
    ):
        raise EvalError(f"--temperature {args.temperature}: must be above 0 (it divides logits)", 2)
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
        num_iter=num_iter,
        seed=args.seed,
        batch_size=args.batch_size,
    )


def _locate(target: str) -> tuple[Path, Path | None, int | None]:
    """(checkpoint file, experiment root or None, version or None)."""
    from fractalgen.sample import SampleError, pick_checkpoint
    from versionkit.errors import RegistryError
    from versionkit.registry import Registry

    if not Path(target).exists():
        raise EvalError(
            f"--checkpoint {target}: no such file or folder (expected a .ckpt file, a "
            "checkpoints/version_N folder or an experiment folder)",
            3,
        )
    try:
        path, version = pick_checkpoint(target)
    except SampleError as exc:
        code = 3 if "no checkpoint" in str(exc) else exc.exit_code
        raise EvalError(str(exc), code) from None
    try:
        root, _ = Registry.locate(path)
    except RegistryError:
        root = None
    return path, root, version


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
