"""Benchmark of the FractalGen model: training step and sampling time.

Prints one JSON object per line and figure::

    python benchmarks/bench_model.py --preset tiny16 --gen mar --json
    python benchmarks/bench_model.py --preset tiny16 --gen ar --steps 20 --warmup 3 --json
    python benchmarks/bench_model.py --preset digits --json          # the spec's fidelity config
    python benchmarks/bench_model.py --preset fractalmar_base_in256 --device cuda --batch 32 --bf16

``train_step_s`` is the median of forward + backward + gradient clip (3.0) + AdamW step;
``sample16_s`` the median time to sample 16 images (class-conditional, cfg 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from _common import emit as common_emit
from _common import machine

from fractalgen.model import FACTORIES, FractalGen

# The spec's reference figures on the 2-core CPU (seconds); ours must be at most these.
TARGETS = {
    ("tiny16", "mar"): {"train_step_s": 0.10, "sample16_s": 0.85},
    ("tiny16", "ar"): {"train_step_s": 0.13, "sample16_s": 2.4},
}


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
    fn: Callable[[], object], steps: int, warmup: int, sync: Callable[[], None]
) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    ap.add_argument("--json", action="store_true", help="JSON lines (the default output anyway)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    dev = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kw, num_iter, channels, classes = _preset(args.preset, args.gen)
    with dev:
        model: FractalGen = FACTORIES[kw["factory"]]() if "factory" in kw else FractalGen(**kw)
    model.train()
    size = model.img_size_list[0]
    imgs = torch.rand(args.batch, channels, size, size, device=dev)
    imgs = (imgs * 255).round() / 255
    labels = torch.randint(0, classes, (args.batch,), device=dev)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
    )

    def autocast() -> AbstractContextManager[object]:
        if args.bf16:
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return nullcontext()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_step() -> None:
        with autocast():
            loss = model(imgs, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    device_text = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"threads {torch.get_num_threads()}"
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    machine_text = machine(f"torch {torch.__version__}, {device_text}")
    name = f"model_{args.preset}_{args.gen}" if "factory" not in kw else f"model_{args.preset}"
    targets = TARGETS.get((args.preset, args.gen), {})

    def emit(figure: str, value: float, unit: str) -> None:
        target = targets.get(figure)
        common_emit(
            name,
            figure,
            value,
            unit,
            f"<= {target}" if target is not None else None,
            machine_text,
            digits=6,
            batch=args.batch,
            device=str(dev),
            bf16=args.bf16,
        )

    emit("params", sum(p.numel() for p in model.parameters()), "count")
    step_s = _median_time(train_step, args.steps, args.warmup, sync)
    emit("train_step_s", step_s, "s")
    emit("train_steps_per_s", 1.0 / step_s, "steps/s")
    if dev.type == "cuda":
        emit("train_peak_mem_mib", torch.cuda.max_memory_allocated(dev) / 2**20, "MiB")
    if not args.no_sample:
        model.eval()
        gen = torch.Generator(device=dev).manual_seed(0)
        sample_labels = torch.arange(16, device=dev) % classes

        def sample() -> None:
            with autocast():
                model.sample(16, sample_labels, num_iter_list=num_iter, generator=gen)

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        n = args.sample_steps if args.sample_steps is not None else max(3, args.steps // 4)
        emit("sample16_s", _median_time(sample, n, min(args.warmup, 1), sync), "s")
        if dev.type == "cuda":
            emit("sample_peak_mem_mib", torch.cuda.max_memory_allocated(dev) / 2**20, "MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
