"""Trainer overhead and the wall time of ``config/train_small.yaml``.

Figures (one JSON line each):

- ``plain_step_ms``: a plain PyTorch loop (same model, data order, AdamW, schedule and
  gradient clipping as the trainer), median per-step time;
- ``lightning_step_ms``: the same steps through the Lightning + versionkit trainer
  (``versionkit.run`` run, ``versionkit.lightning`` trainer: logger, checkpoints,
  the adapter's callback, progress bar), median per-step time;
- ``lightning_overhead_pct``: ``lightning / plain - 1`` in percent (target <= 5);
- with ``--breakdown``, ``lightning_bare_step_ms`` / ``lightning_bare_step_cpu_ms``:
  Lightning's loop alone (no logger, checkpoints, progress bar, versionkit), so that
  the overhead splits into Lightning's (bare - plain) and versionkit's (lightning - bare);
- the same three in process CPU time: ``plain_step_cpu_ms``, ``lightning_step_cpu_ms``,
  ``lightning_overhead_cpu_pct``;
- ``train_small_wall_s``: ``python main.py --config config/train_small.yaml`` from start
  to exit, as a user runs it (target <= 300 s); skipped with ``--quick``.
- with ``--malloc-ab N``, ``train_malloc_kept_s`` / ``train_malloc_default_s`` /
  ``train_malloc_saved_pct``: ``main.py`` for N steps as it runs (it keeps freed memory,
  ``fractalgen._memory``) and with glibc's defaults, alternating ``--repeats`` times;
  the saving is the median of the per-pair ratios.

Both step timings exclude validation and start-up: they time steps ``warmup..steps`` of
each run; plain and Lightning runs alternate ``--repeats`` times; step times are medians
and the overhead is the median of the per-pair ratios. ``clock`` says wall or process CPU
time: on a shared machine the CPU-time figures are the steadier ones.

Usage: ``python benchmarks/bench_train.py [--quick] [--steps 60] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import emit, machine  # noqa: E402


def _machine() -> str:
    import torch

    return machine(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def _emit(figure: str, value: float, unit: str, target: str, machine: str, **extra: Any) -> None:
    emit("train", figure, value, unit, target, machine, **extra)


def _config(path: Path, steps: int) -> Any:
    from fractalgen.config import parse_train_args

    loaded = parse_train_args(
        ["--config", str(path), "--max_steps", str(steps), "--val_every_n_steps", str(steps)]
    )
    return loaded


def _data(config: Any) -> tuple[Any, Any, Any]:
    from fractalgen.data import build_datasets

    return build_datasets(
        config.data, int(config.model.img_size_list[0]), seed=config.experiment.seed
    )


def plain_loop(loaded: Any, steps: int, warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of a plain PyTorch loop over the trainer's exact recipe."""
    import torch
    from torch.utils.data import DataLoader

    from fractalgen.module import FractalGenModule, StepBatchSampler

    config = loaded.config
    torch.manual_seed(config.experiment.seed)
    torch.use_deterministic_algorithms(True)  # as the trainer does on CPU
    train_set, _, info = _data(config)
    module = FractalGenModule(config.model_dump(mode="json"), info.channels, info.num_classes)
    opt_cfg = module.configure_optimizers()
    optimizer = opt_cfg["optimizer"]
    scheduler = opt_cfg["lr_scheduler"]["scheduler"]
    model = module.model
    model.train()
    sampler = StepBatchSampler(len(train_set), config.data.train_batch_size, seed=0)
    loader = DataLoader(
        train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(0)
    )
    clip = config.optim.grad_clip
    marks: list[tuple[float, float]] = []
    for step, (imgs, labels) in enumerate(loader):
        if step >= steps:
            break
        marks.append((time.perf_counter(), time.process_time()))
        loss = model(imgs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        float(loss.detach())  # the trainer reads the loss for logging, so do we
    return _per_step(marks, warmup)


def _per_step(marks: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    n = len(marks) - 1 - warmup
    return (marks[-1][0] - marks[warmup][0]) / n, (marks[-1][1] - marks[warmup][1]) / n


def lightning_loop(
    loaded: Any, steps: int, warmup: int, bare: bool = False
) -> tuple[float, float]:
    """(wall, CPU) seconds per step through the real trainer (fractalgen.train's pieces).

    With ``bare``: Lightning's own loop alone (no logger, checkpoints, progress bar or
    versionkit), which splits the overhead into Lightning's and the adapter's.
    """
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from fractalgen.module import FractalGenModule, StepBatchSampler
    from fractalgen.train import build_trainer_kwargs
    from versionkit.lightning import build_trainer, fit
    from versionkit.registry import Registry
    from versionkit.run import start_run

    config = loaded.config
    marks: list[tuple[float, float]] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(config.experiment.seed)
        train_set, val_set, info = _data(config)
        run = start_run(Registry(Path(tmp) / "exp"), loaded, printer=lambda _line: None)
        module = FractalGenModule(config.model_dump(mode="json"), info.channels, info.num_classes)
        kwargs = build_trainer_kwargs(config)
        kwargs["enable_model_summary"] = False
        if bare:
            kwargs.update(enable_progress_bar=False)
            trainer = pl.Trainer(
                logger=False, enable_checkpointing=False, callbacks=[Clock()], **kwargs
            )
        else:
            trainer = build_trainer(
                run, callbacks=[Clock()], save_top_k=int(config.trainer.save_top_k), **kwargs
            )
        sampler = StepBatchSampler(
            len(train_set),
            config.data.train_batch_size,
            seed=0,
            start_step=lambda: int(module.global_step),
        )
        loader = DataLoader(
            train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(0)
        )
        val_loader = DataLoader(val_set, batch_size=config.data.val_batch_size)
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar, not our JSON
            if bare:
                trainer.fit(module, loader, val_loader)
                run.finish("completed")
            else:
                fit(run, trainer, module, loader, val_loader)
    return _per_step(marks, warmup)


# main.py as it is, or with fractalgen._memory's call made a no-op (glibc's defaults).
_MAIN_DEFAULT_MALLOC = (
    "import sys, fractalgen._memory as m; m.keep_freed_memory = lambda: False; "
    "from fractalgen.train import main; sys.argv[0] = 'main.py'; raise SystemExit(main())"
)


def _main_wall(args: list[str], *, keep: bool = True) -> tuple[float, str]:
    """(seconds, stdout) of ``python main.py ARGS`` in a fresh folder; ``keep=False`` runs it
    with glibc's default malloc thresholds instead of the ones main.py sets."""
    head = [str(REPO / "main.py")] if keep else ["-c", _MAIN_DEFAULT_MALLOC]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("VERSIONKIT_RUN", None)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *head, *args],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"main.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def train_small_wall(config_path: Path) -> float:
    """Seconds for ``python main.py --config config/train_small.yaml`` in a fresh folder."""
    wall, out = _main_wall(["--config", str(config_path)])
    best = [line for line in out.splitlines() if "Best checkpoint" in line]
    if best:
        print(f"# {best[-1]}", file=sys.stderr)
    return wall


def train_wall(config_path: Path, steps: int, *, keep: bool) -> float:
    """Seconds for a ``steps``-step ``main.py`` run, with or without kept freed memory."""
    return _main_wall(["--config", str(config_path), "--max_steps", str(steps)], keep=keep)[0]


def malloc_ab(config_path: Path, steps: int, repeats: int, machine: str) -> None:
    """Emit the ``train_malloc_*`` figures (ABBA order, like the step timings)."""
    kept: list[float] = []
    default: list[float] = []
    for i in range(repeats):
        order = (True, False) if i % 2 == 0 else (False, True)
        for keep in order:
            (kept if keep else default).append(train_wall(config_path, steps, keep=keep))
    for name, runs in (("kept", kept), ("default", default)):
        _emit(f"train_malloc_{name}_s", statistics.median(runs), "s", "reference", machine,
              runs=[round(r, 2) for r in runs], steps=steps)
    saved = [(1.0 - k / d) * 100.0 for k, d in zip(kept, default, strict=True)]
    _emit("train_malloc_saved_pct", statistics.median(saved), "%", "reference", machine,
          pairs=[round(r, 2) for r in saved], steps=steps)


def main() -> int:
    """Run the benchmark; prints JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "train_small.yaml"))
    parser.add_argument("--steps", type=int, default=60, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each")
    parser.add_argument("--quick", action="store_true", help="skip the full train_small run")
    parser.add_argument(
        "--malloc-ab",
        type=int,
        default=0,
        metavar="STEPS",
        help="also time main.py for STEPS steps with and without kept freed memory",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time Lightning's bare loop (lightning_bare_*): Lightning's share vs ours",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    os.environ.pop("VERSIONKIT_RUN", None)

    machine = _machine()
    loaded = _config(Path(args.config), args.steps)
    plain: list[tuple[float, float]] = []
    light: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    # One untimed run of each first: the first run in a process pays for imports, the
    # allocator's growth and Lightning's set-up, which no later run does.
    plain_loop(loaded, args.warmup + 2, args.warmup)
    lightning_loop(loaded, args.warmup + 2, args.warmup)
    for i in range(args.repeats):
        # ABBA order: the machine drifts (clock boost, caches) over a run; alternating
        # which one goes first keeps that drift out of the pairs' ratios.
        first_plain = i % 2 == 0
        if first_plain:
            plain.append(plain_loop(loaded, args.steps, args.warmup))
        light.append(lightning_loop(loaded, args.steps, args.warmup))
        if not first_plain:
            plain.append(plain_loop(loaded, args.steps, args.warmup))
        if args.breakdown:
            bare.append(lightning_loop(loaded, args.steps, args.warmup, bare=True))
    for kind, index in (("", 0), ("_cpu", 1)):
        p = statistics.median(x[index] for x in plain)
        q = statistics.median(x[index] for x in light)
        what = "wall" if index == 0 else "process CPU time"
        _emit(
            f"plain_step{kind}_ms",
            p * 1e3,
            "ms",
            "reference",
            machine,
            runs=[round(x[index] * 1e3, 2) for x in plain],
            clock=what,
        )
        _emit(
            f"lightning_step{kind}_ms",
            q * 1e3,
            "ms",
            "<= plain + 5%",
            machine,
            runs=[round(x[index] * 1e3, 2) for x in light],
            clock=what,
        )
        # Runs alternate, so each (plain, lightning) pair shares the machine's load: the
        # overhead is the median of the per-pair ratios.
        ratios = [(b[index] / a[index] - 1.0) * 100.0 for a, b in zip(plain, light, strict=True)]
        _emit(
            f"lightning_overhead{kind}_pct",
            statistics.median(ratios),
            "%",
            "<= 5",
            machine,
            clock=what,
            pairs=[round(r, 2) for r in ratios],
        )
        if bare:
            b = statistics.median(x[index] for x in bare)
            _emit(
                f"lightning_bare_step{kind}_ms",
                b * 1e3,
                "ms",
                "reference",
                machine,
                runs=[round(x[index] * 1e3, 2) for x in bare],
                clock=what,
                note="Lightning's loop alone: lightning_step - this is versionkit's share",
            )
    if args.malloc_ab > 0:
        malloc_ab(Path(args.config), args.malloc_ab, args.repeats, machine)
    if not args.quick:
        _emit("train_small_wall_s", train_small_wall(Path(args.config)), "s", "<= 300", machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
