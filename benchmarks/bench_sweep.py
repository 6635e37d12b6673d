"""Benchmark of a sweep's overhead per trial beyond its training.

Prints one JSON object per line and figure::

    python benchmarks/bench_sweep.py            # journal, and PostgreSQL when configured
    python benchmarks/bench_sweep.py --quick    # fewer trials and repeats

Per storage (the default journal file; PostgreSQL through ``$VERSIONKIT_TEST_POSTGRES``):

- ``trial_bookkeeping_ms``: one trial with no training, in a running worker: the claim
  lock, counting the study, Optuna's ask/suggest/tell and user attributes, and the run's
  start (version, lease, record with the trial, config.yaml) and finish, through
  ``versionkit.run.start_run`` as a real trial does. Median of 3 sweeps of N trials.
- ``worker_start_s``: from ``run_sweep``'s call (in a fresh process, as
  ``fractalgen-sweep`` makes it) to a worker's first trial, the mean of its 2 workers,
  with what a FractalGen trial imports (``fractalgen.sweep.PRELOAD``: torch, Lightning,
  scikit-learn, TensorBoard, Optuna). Median of 3. Workers forked from the preloaded
  forkserver (the default), and ``..._spawn`` figures for spawned workers that each
  import it all, measured interleaved in the same run.
- ``overhead_per_trial_s``: what a trial costs beyond its training in the example sweep
  (8 trials, 2 jobs: each worker starts once and runs 4 trials), and in the worst case
  (one trial per worker). Target <= 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import emit, machine  # noqa: E402

from versionkit.config import ConfigModel, LoadedConfig, load_config  # noqa: E402

MACHINE = machine()
#: how the workers start, compared in the same run (runner.worker_context)
METHODS = ("forkserver", "spawn")


class BenchConfig(ConfigModel):
    """A training config stand-in: where versions go, one searched number."""

    root: str = "out"
    registry: str | None = None
    x: float = 0.0
    stamp: str = ""


def parse(argv: list[str]) -> LoadedConfig[BenchConfig]:
    return load_config(BenchConfig, argv)


def bookkeeping(ctx: Any) -> float:
    """Everything a trial does besides training: start the run (version, lease, record
    with the trial, config.yaml, the four lines), link it to the trial, finish it."""
    from versionkit.registry import Registry
    from versionkit.run import start_run

    config = ctx.loaded.config
    with Registry(config.root, config.registry) as registry:
        run = start_run(registry, ctx.loaded, extra=ctx.extra, printer=lambda _line: None,
                        command=["bench"])
        ctx.link(run.version, run.checkpoint_dir)
        run.finish("completed")
    return float(config.x)


def first_entry(ctx: Any) -> float:
    """Record when the worker reached its first trial, with what a FractalGen trial
    imports (nothing left to import in a worker forked from the preloaded server)."""
    import importlib

    from fractalgen.sweep import PRELOAD

    for module in PRELOAD:
        importlib.import_module(module)
    stamp = Path(ctx.loaded.config.stamp)
    with open(stamp, "a", encoding="utf-8") as f:
        f.write(f"{time.time()} {time.process_time()}\n")
    return bookkeeping(ctx)


def _sweep(root: Path, storage: str | None, study: str, trials: int, objective: Any,
           registry: str | None, stamp: str = "") -> Any:
    from fractalgen.sweep import PRELOAD
    from versionkit.sweep import SearchSpace, Sweep, parse_storage

    args = [f"--root={root}", f"--stamp={stamp}"]
    if registry:
        args.append(f"--registry={registry}")
    return Sweep(
        study=study,
        storage=parse_storage(storage, default_journal=root / ".versionkit" / "sweeps.journal"),
        space=SearchSpace.parse(["x=uniform(0,1)"], BenchConfig), trials=trials,
        schema=BenchConfig, parse=parse, objective=objective, base_args=tuple(args),
        sampler="random", pruner="none", preload=PRELOAD,
    )


def _probe(root: str, storage: str, study: str, registry: str, method: str) -> int:
    """In a fresh process: a 2-trial sweep on 2 jobs, as ``fractalgen-sweep`` runs it."""
    import optuna

    from versionkit.sweep import run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(root)
    sweep = _sweep(folder, storage or None, study, 2, first_entry, registry or None,
                   str(folder / "stamps"))
    (folder / "t0").write_text(str(time.time()))
    return run_sweep(sweep, jobs=2, printer=lambda _line: None, start_method=method)


def _start_probe(root: Path, storage: str | None, study: str, registry: str | None,
                 method: str) -> tuple[float, float]:
    """(seconds from run_sweep to a worker's first trial, that worker's CPU seconds),
    each the mean of the 2 workers."""
    subprocess.run([sys.executable, __file__, "--probe", str(root), storage or "", study,
                    registry or "", method], check=True, cwd=ROOT)
    t0 = float((root / "t0").read_text())
    entries = [[float(x) for x in line.split()]
               for line in (root / "stamps").read_text().splitlines()]
    assert len(entries) == 2, entries
    return (statistics.mean(e[0] for e in entries) - t0,
            statistics.mean(e[1] for e in entries))


def _pg(base: str, schema: str) -> tuple[str, str]:
    """(registry URI, Optuna URL) in a fresh schema of PostgreSQL."""
    import sqlalchemy as sa

    from versionkit.backends.sql.uri import parse_uri

    engine = sa.create_engine(parse_uri(base)[0])
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    engine.dispose()
    sep = "&" if "?" in base else "?"
    uri = f"{base}{sep}options=-csearch_path%3D{schema}"
    return uri, uri.replace("postgresql://", "postgresql+psycopg://", 1)


def _drop(base: str, schema: str) -> None:
    import sqlalchemy as sa

    from versionkit.backends.sql.uri import parse_uri

    engine = sa.create_engine(parse_uri(base)[0])
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()


def measure(kind: str, trials: int, repeats: int) -> None:
    from versionkit.sweep import work

    base = os.environ.get("VERSIONKIT_TEST_POSTGRES", "")
    if kind == "postgresql" and not base:
        print('{"bench": "sweep", "skipped": "no $VERSIONKIT_TEST_POSTGRES"}', flush=True)
        return
    schema = f"vk_bench_sweep_{os.getpid()}"
    registry, storage = _pg(base, schema) if kind == "postgresql" else (None, None)
    try:
        per_trial: list[float] = []
        per_trial_cpu: list[float] = []
        starts: dict[str, list[float]] = {m: [] for m in METHODS}
        start_cpu: dict[str, list[float]] = {m: [] for m in METHODS}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                root = Path(tmp) / f"r{i}"
                root.mkdir()
                sweep = _sweep(root, storage, f"bk{i}", trials, bookkeeping, registry)
                sweep.open_study(create=True)
                begin, cpu = time.perf_counter(), time.process_time()
                assert work(sweep) == 0
                per_trial.append((time.perf_counter() - begin) / trials)
                per_trial_cpu.append((time.process_time() - cpu) / trials)
            for i in range(repeats):
                for method in METHODS:  # interleaved: the same machine state for both
                    root = Path(tmp) / f"s{i}_{method}"
                    root.mkdir()
                    took, cpu_s = _start_probe(root, storage, f"st{i}_{method}", registry,
                                               method)
                    starts[method].append(took)
                    start_cpu[method].append(cpu_s)
    finally:
        if kind == "postgresql":
            _drop(base, schema)
    bk = statistics.median(per_trial)
    emit("sweep", f"{kind}_trial_bookkeeping_ms", bk * 1000, "ms", None, MACHINE, digits=1,
         trials=trials, repeats=repeats)
    emit("sweep", f"{kind}_trial_bookkeeping_cpu_ms", statistics.median(per_trial_cpu) * 1000,
         "ms", None, MACHINE, digits=1, note="this process's CPU time: what a busy machine "
         "does not inflate")
    for method in METHODS:
        start = statistics.median(starts[method])
        shown = "" if method == "forkserver" else f"_{method}"
        emit("sweep", f"{kind}_worker_start{shown}_s", start, "s", None, MACHINE, digits=2,
             start_method=method, note="run_sweep's call to a worker's first trial, mean of "
             "its 2 workers; the trial imports what a FractalGen trial does",
             repeats=repeats)
        emit("sweep", f"{kind}_worker_start_cpu{shown}_s", statistics.median(start_cpu[method]),
             "s", None, MACHINE, digits=2, start_method=method,
             note="a worker's own CPU time up to its first trial (forked workers inherit "
             "their imports)")
        emit("sweep", f"{kind}_overhead_per_trial{shown}_s", bk + start * 2 / 8, "s",
             "<= 1.5" if method == "forkserver" else None, MACHINE, digits=3,
             shape="8 trials, 2 jobs: each worker starts once and runs 4", start_method=method)
        emit("sweep", f"{kind}_overhead_per_trial_worst{shown}_s", bk + start, "s", None,
             MACHINE, digits=3, shape="one trial per worker", start_method=method)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and repeats")
    parser.add_argument("--storages", default="journal,postgresql")
    parser.add_argument("--probe", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return _probe(*args.probe)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials, repeats = (5, 1) if args.quick else (20, 3)
    for kind in args.storages.split(","):
        measure(kind.strip(), trials, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
