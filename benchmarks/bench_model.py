"""Benchmark of the FractalGen model: training step and sampling time, optionally against the
reference implementation in the same run.

Prints one JSON object per line and figure::

    python benchmarks/bench_model.py --preset tiny16 --gen mar --json
    python benchmarks/bench_model.py --preset tiny16 --gen ar --steps 20 --warmup 3 --json
    python benchmarks/bench_model.py --preset digits --json          # the spec's fidelity config
    python benchmarks/bench_model.py --preset fractalmar_base_in256 --device cuda --batch 64 --bf16

    # Same-run comparison with the reference code (LTH14/fractalgen), checked out by you:
    python benchmarks/bench_model.py --preset tiny16 --gen mar --reference /tmp/fractalgen_ref

``train_step_s`` is the median of forward + backward + gradient clip (3.0) + AdamW step;
``sample16_s`` the median time to sample 16 images (class-conditional, cfg 1).

With ``--reference DIR`` the reference's ``models/`` package is imported from DIR at run
time (nothing of it lives in this repository). On CPU its hard-coded ``.cuda()`` calls are
made no-ops for the run, and its two optional imports that need other packages (timm's
``Mlp``/``DropPath``, its notebook visualiser) get small stand-ins when missing. Ours and the
reference are then timed in ``--rounds`` interleaved rounds (the order alternates); each
round times ``--steps`` steps of each, and the figures are the medians over rounds, plus
``*_ratio``: the median over rounds of ours / reference.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from _common import emit as common_emit
from _common import machine
from torch import nn

from fractalgen.model import FACTORIES, FractalGen

# The spec's reference figures on the 2-core CPU (seconds); ours must be at most these.
TARGETS = {
    ("tiny16", "mar"): {"train_step_s": 0.10, "sample16_s": 0.85},
    ("tiny16", "ar"): {"train_step_s": 0.13, "sample16_s": 2.4},
}
# Same-run ratios ours / reference that the spec asks for.
RATIO_TARGETS = {"train_step_s": 0.7, "sample16_s": 0.35}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _preset(name: str, gen: str) -> tuple[dict[str, Any], list[int], int, int]:
    """(FractalGen kwargs, num_iter_list, channels, classes) of a preset."""
    if name == "tiny16":
        kw: dict[str, Any] = {
            "img_size_list": (16, 4, 1),
            "embed_dim_list": (64, 32, 16),
            "num_blocks_list": (2, 1, 1),
            "num_heads_list": (4, 2, 2),
            "generator_type_list": (gen, gen),
            "in_channels": 3,
            "num_classes": 10,
        }
        return kw, [4, 16], 3, 10
    if name == "digits":
        kw = {
            "img_size_list": (8, 2, 1),
            "embed_dim_list": (64, 32, 16),
            "num_blocks_list": (2, 1, 1),
            "num_heads_list": (4, 2, 2),
            "generator_type_list": (gen, gen),
            "in_channels": 1,
            "num_classes": 10,
            "num_conds": 5,
        }
        return kw, [4, 4], 1, 10
    if name in FACTORIES:
        return {"factory": name}, ([64, 16] if name.endswith("in64") else [64, 16, 16]), 3, 1000
    raise SystemExit(
        f"error: unknown preset {name!r}; use tiny16, digits or one of {list(FACTORIES)}"
    )


def _median_time(
    fn: Callable[[], object],
    steps: int,
    warmup: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ the reference, at run time


class _StandInMlp(nn.Module):
    """Stand-in for timm's ``Mlp`` (fc1, act, drop, fc2, drop), used only when timm is absent."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        **_: Any,
    ) -> None:
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        return out


class _StandInDropPath(nn.Identity):
    """Stand-in for timm's ``DropPath``; the reference builds it only with rate 0."""

    def __init__(self, *_: Any, **__: Any) -> None:
        super().__init__()


def _load_reference(folder: Path, device: torch.device) -> Any:
    """Import ``models.fractalgen`` from the user's reference checkout ``folder``."""
    if not (folder / "models" / "fractalgen.py").is_file():
        raise SystemExit(
            f"error: --reference {folder}: no models/fractalgen.py there; expected a checkout "
            "of LTH14/fractalgen"
        )
    try:
        importlib.import_module("timm.models.vision_transformer")
    except ImportError:
        timm = types.ModuleType("timm")
        timm_models = types.ModuleType("timm.models")
        vit = types.ModuleType("timm.models.vision_transformer")
        vit.Mlp = _StandInMlp  # type: ignore[attr-defined]
        vit.DropPath = _StandInDropPath  # type: ignore[attr-defined]
        timm.models = timm_models  # type: ignore[attr-defined]
        timm_models.vision_transformer = vit  # type: ignore[attr-defined]
        sys.modules.update(
            {"timm": timm, "timm.models": timm_models, "timm.models.vision_transformer": vit}
        )
    # Its notebook visualiser needs torchvision and IPython; sampling never calls it here.
    util_vis = types.ModuleType("util.visualize")
    util_vis.visualize_patch = lambda *_: None  # type: ignore[attr-defined]
    sys.modules["util.visualize"] = util_vis
    if device.type == "cpu":
        # The reference hard-codes .cuda(); on CPU every such call keeps the tensor where it is.
        torch.Tensor.cuda = lambda self, *_, **__: self  # type: ignore[method-assign]
    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.path.insert(0, str(folder))
    return importlib.import_module("models.fractalgen")


class _Runner:
    """Train-step and sample closures of one model (ours or the reference's)."""

    def __init__(
        self,
        name: str,
        train_step: Callable[[], None],
        sample: Callable[[], None],
        n_params: int,
    ) -> None:
        self.name = name
        self.train_step = train_step
        self.sample = sample
        self.n_params = n_params


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
    )


def _train_closure(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    autocast: Callable[[], AbstractContextManager[object]],
) -> Callable[[], None]:
    opt = _optimizer(model)

    def step() -> None:
        with autocast():
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="tiny16")
    ap.add_argument("--gen", choices=("mar", "ar"), default="mar")
    ap.add_argument("--steps", type=int, default=20, help="timed repetitions (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=None, help="timed sampling runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="DIR",
        help="a checkout of LTH14/fractalgen: time it in the same run (tiny16 / digits only)",
    )
    ap.add_argument(
        "--num-iter",
        default=None,
        metavar="LIST",
        help="sampling steps per level, e.g. 8,4,4 (default: the preset's)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --reference")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared machine\n"
        "(use it with --threads 1; GPU runs always use wall time)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="print where our time goes to stderr: the train step per level (forward and\n"
        "backward), then torch.profiler tables of the train step and sampling",
    )
    ap.add_argument("--json", action="store_true", help="JSON lines (the default output anyway)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps and --rounds must be >= 1 and --warmup >= 0")

    dev = torch.device(args.device)
    use_cpu_clock = args.clock == "cpu" and dev.type == "cpu"
    clock = time.process_time if use_cpu_clock else time.perf_counter
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.preset not in ("tiny16", "digits", *FACTORIES):
        ap.error(f"unknown preset {args.preset!r}; use tiny16, digits or one of {list(FACTORIES)}")
    ref_dir = args.reference
    if ref_dir is not None and not (ref_dir / "models" / "fractalgen.py").is_file():
        ap.error(
            f"--reference {ref_dir}: no models/fractalgen.py there; expected a checkout "
            "of LTH14/fractalgen"
        )
    kw, num_iter, channels, classes = _preset(args.preset, args.gen)
    if args.num_iter is not None:
        try:
            num_iter = [int(v) for v in args.num_iter.split(",")]
        except ValueError:
            ap.error(f"--num-iter expects integers like 8,4,4, got {args.num_iter!r}")
    if args.reference is not None and "factory" in kw:
        ap.error("--reference supports the tiny16 and digits presets")
    ref_mod = _load_reference(args.reference, dev) if args.reference is not None else None

    def autocast() -> AbstractContextManager[object]:
        if args.bf16:
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return nullcontext()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.manual_seed(0)
    with dev:
        model: FractalGen = FACTORIES[kw["factory"]]() if "factory" in kw else FractalGen(**kw)
    model.train()
    if len(num_iter) != len(model.levels) or min(num_iter) < 1:
        ap.error(f"--num-iter needs {len(model.levels)} positive integers, got {num_iter}")
    size = model.img_size_list[0]
    imgs = torch.rand(args.batch, channels, size, size, device=dev)
    imgs = (imgs * 255).round() / 255
    labels = torch.randint(0, classes, (args.batch,), device=dev)
    sample_labels = torch.arange(16, device=dev) % classes
    gen = torch.Generator(device=dev).manual_seed(0)

    def our_sample() -> None:
        model.eval()
        with autocast():
            model.sample(16, sample_labels, num_iter_list=num_iter, generator=gen)
        model.train()

    runners = [
        _Runner(
            "ours",
            _train_closure(model, lambda: model(imgs, labels), autocast),
            our_sample,
            sum(p.numel() for p in model.parameters()),
        )
    ]
    if ref_mod is not None:
        runners.append(_reference_runner(ref_mod, kw, num_iter, imgs, labels, dev, autocast))

    device_text = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"threads {torch.get_num_threads()}"
    )
    machine_text = machine(f"torch {torch.__version__}, {device_text}")
    name = f"model_{args.preset}_{args.gen}" if "factory" not in kw else f"model_{args.preset}"
    targets = TARGETS.get((args.preset, args.gen), {})

    def emit(figure: str, value: float, unit: str, target: str | None = None) -> None:
        if target is None and figure in targets:
            target = f"<= {targets[figure]}"
        common_emit(
            name,
            figure,
            value,
            unit,
            target,
            machine_text,
            digits=6,
            batch=args.batch,
            device=str(dev),
            bf16=args.bf16,
            threads=torch.get_num_threads(),
            clock="cpu" if use_cpu_clock else "wall",
        )

    for r in runners:
        emit("params" if r.name == "ours" else "ref_params", r.n_params, "count")
    if args.profile:
        _profile(runners[0], model, args.steps, args.no_sample)

    figures: list[tuple[str, str]] = [("train_step_s", "train_step")]
    if not args.no_sample:
        figures.append(("sample16_s", "sample"))
    n_sample = args.sample_steps if args.sample_steps is not None else max(3, args.steps // 4)
    rounds = args.rounds if len(runners) > 1 else 1
    for figure, attr in figures:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        steps = args.steps if attr == "train_step" else n_sample
        warm = args.warmup if attr == "train_step" else min(args.warmup, 1)
        per_round: dict[str, list[float]] = {r.name: [] for r in runners}
        for i in range(rounds):
            order = runners if i % 2 == 0 else runners[::-1]
            for r in order:
                per_round[r.name].append(_median_time(getattr(r, attr), steps, warm, sync, clock))
        ours = statistics.median(per_round["ours"])
        emit(figure, ours, "s")
        if attr == "train_step":
            emit("train_steps_per_s", 1.0 / ours, "steps/s")
            emit("train_images_per_s", args.batch / ours, "images/s")
        else:
            emit("sample_images_per_s", 16 / ours, "images/s")
        if dev.type == "cuda" and len(runners) == 1:
            peak = torch.cuda.max_memory_allocated(dev) / 2**20
            emit(f"{attr.split('_')[0]}_peak_mem_mib", peak, "MiB")
        if len(runners) > 1:
            emit(f"ref_{figure}", statistics.median(per_round["reference"]), "s")
            ratios = [a / b for a, b in zip(per_round["ours"], per_round["reference"], strict=True)]
            emit(
                f"{figure.removesuffix('_s')}_ratio",
                statistics.median(ratios),
                "ours/reference",
                f"<= {RATIO_TARGETS[figure]}",
            )
    return 0


def _reference_runner(
    ref_mod: Any,
    kw: dict[str, Any],
    num_iter: list[int],
    imgs: torch.Tensor,
    labels: torch.Tensor,
    dev: torch.device,
    autocast: Callable[[], AbstractContextManager[object]],
) -> _Runner:
    """The reference's model of the same preset (it knows 3 channels only: grey is tripled)."""
    gen = kw["generator_type_list"][0]
    torch.manual_seed(0)
    with dev:
        ref = ref_mod.FractalGen(
            img_size_list=kw["img_size_list"],
            embed_dim_list=kw["embed_dim_list"],
            num_blocks_list=kw["num_blocks_list"],
            num_heads_list=kw["num_heads_list"],
            generator_type_list=(*kw["generator_type_list"], gen),
            class_num=kw["num_classes"],
            num_conds=5 if gen == "mar" else 1,
            r_weight=5.0,
        )
    ref.train()
    rgb = imgs.expand(-1, 3, -1, -1) if imgs.shape[1] == 1 else imgs
    mean = torch.tensor(_IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    ref_imgs = (rgb - mean) / std  # the reference's data pipeline normalises
    num_conds = 5 if gen == "mar" else 1
    sample_labels = torch.arange(16, device=dev) % kw["num_classes"]

    def sample() -> None:
        ref.eval()
        with torch.no_grad(), autocast():
            emb = ref.class_emb(sample_labels)
            ref.sample(
                cond_list=[emb for _ in range(num_conds)],
                num_iter_list=num_iter,
                cfg=1.0,
                cfg_schedule="linear",
                temperature=1.0,
                filter_threshold=1e-4,
                fractal_level=0,
            )
        ref.train()

    return _Runner(
        "reference",
        _train_closure(ref, lambda: ref(ref_imgs, labels), autocast),
        sample,
        sum(p.numel() for p in ref.parameters()),
    )


def _profile(runner: _Runner, model: FractalGen, steps: int, no_sample: bool) -> None:
    """Print where our time goes for a few steps of each figure: the train step per level
    (forward and backward), then self CPU time per op of each figure."""
    from _model_profile import profile_levels
    from torch.profiler import ProfilerActivity, profile

    profile_levels(model, runner.train_step, steps)
    jobs = [("train step", runner.train_step, steps)]
    if not no_sample:
        jobs.append(("sample16", runner.sample, 2))
    for label, fn, n in jobs:
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                fn()
        print(f"--- profile: {label} x{n}", file=sys.stderr)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        print(table, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
