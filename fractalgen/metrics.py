"""The figures of ``fractalgen-eval``: NLL over several draws and the digits judge.

See :mod:`fractalgen.eval` for the command line and what each figure means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "NLL_CHUNK",
    "DigitsJudge",
    "EvalError",
    "EvalSettings",
    "evaluate",
    "format_table",
    "nll_draws",
    "resolve_num_iter",
]

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
    opening_steps: int | None = None
    opening_temperature: float | None = None
    num_iter: list[int] | None = None
    seed: int = 0
    batch_size: int = 100


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
            filter_threshold=float(sampling.filter_threshold),
            **sampling.opening_overrides(
                settings.opening_steps, settings.opening_temperature, conditional=part is not None
            ),
        )
        out.append(imgs.cpu().numpy())
        progress()
    return np.concatenate(out)


def resolve_num_iter(config: Any, settings: EvalSettings) -> list[int]:
    """``settings.num_iter`` or the config's, checked against the model's levels."""
    levels = len(config.model.img_size_list) - 1
    num_iter = list(settings.num_iter or config.sampling.num_iter_list)
    if len(num_iter) != levels or any(i < 1 for i in num_iter):
        raise EvalError(
            f"--num_iter {','.join(map(str, num_iter))}: expected {levels} positive "
            "integer(s), one per level above the pixel head",
            2,
        )
    return num_iter


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
    num_iter = resolve_num_iter(config, settings)
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
            **sampling.opening_overrides(settings.opening_steps, settings.opening_temperature),
            "num_iter": num_iter,
            "filter_threshold": float(sampling.filter_threshold),
            "seed": settings.seed,
            "weights": loaded.weights,
        },
        "dataset": str(config.data.dataset),
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


def _opening(settings: dict[str, Any]) -> str:
    steps = int(settings.get("opening_steps", 0))
    if steps == 0:
        return ""
    return (
        f" (unconditional: the first {steps} top-level steps at "
        f"{settings['opening_temperature']:g})"
    )


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of ``evaluate``'s result."""
    s = result["settings"]
    lines = [
        f"checkpoint   {result['checkpoint']} (version {result['version']}, step "
        f"{result['step']}, {s['weights']} weights)",
        f"sampling     temperature {s['temperature']:g}{_opening(s)}, num_iter "
        f"{s['num_iter']}, cfg_schedule {s['cfg_schedule']}, seed {s['seed']}",
    ]
    nll = result["nll_bpd"]
    if nll is not None:
        lines.append(
            f"NLL          {nll['mean']:.4f} ± {nll['sd']:.4f} bits/dim "
            f"(mean ± sd of {len(nll['draws'])} draws)"
        )
    digits = result["digits"]
    if digits is None:
        why = (
            "no samples asked for (--samples 0)"
            if result.get("dataset") == "digits"
            else "image folders: NLL only; FID needs Inception weights"
        )
        lines.append(f"digits       - ({why})")
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
