"""Benchmark of a sweep's overhead per trial beyond its training.

Prints one JSON object per line and figure::

    python benchmarks/bench_sweep.py            # journal, and PostgreSQL when configured
    python benchmarks/bench_sweep.py --quick    # fewer trials and repeats

Per storage (the default journal file; PostgreSQL through ``$VERSIONKIT_TEST_POSTGRES``):

- ``trial_bookkeeping_ms``: one trial with no training, in a running worker: the claim
  lock, counting the study, Optuna's ask/suggest/tell and user attributes, and the run's
  start (version, lease, record with the trial, config.yaml) and finish, through
  ``versionkit.run.start_run`` as a real trial does. Median of 3 sweeps of N trials.
- ``worker_start_s``: a worker process, from its start to the first trial's objective,
  importing what a FractalGen trial needs (optuna, torch, Lightning). Median of 3.
- ``overhead_per_trial_s``: what a trial costs beyond its training in the example sweep
  (8 trials, 2 jobs: each worker starts once and runs 4 trials), and in the worst case
  (one trial per worker). Target <= 1.5 s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
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
    """Record when the worker reached its first trial, after a trainer's imports."""
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    stamp = Path(ctx.loaded.config.stamp)
    with open(stamp, "a", encoding="utf-8") as f:
        f.write(f"{time.time()} {time.process_time()}\n")
    return bookkeeping(ctx)


def _sweep(root: Path, storage: str | None, study: str, trials: int, objective: Any,
           registry: str | None, stamp: str = "") -> Any:
    from versionkit.sweep import SearchSpace, Sweep, parse_storage

    args = [f"--root={root}", f"--stamp={stamp}"]
    if registry:
        args.append(f"--registry={registry}")
    return Sweep(
        study=study,
        storage=parse_storage(storage, default_journal=root / ".versionkit" / "sweeps.journal"),
        space=SearchSpace.parse(["x=uniform(0,1)"], BenchConfig), trials=trials,
        schema=BenchConfig, parse=parse, objective=objective, base_args=tuple(args),
        sampler="random", pruner="none",
    )


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
        starts: list[float] = []
        start_cpu: list[float] = []
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
                root = Path(tmp) / f"s{i}"
                root.mkdir()
                stamp = root / "stamps"
                sweep = _sweep(root, storage, f"st{i}", 2, first_entry, registry, str(stamp))
                sweep.open_study(create=True)
                context = multiprocessing.get_context("spawn")
                from versionkit.sweep.runner import _child

                begin = time.time()
                procs = [context.Process(target=_child, args=(sweep, 1)) for _ in range(2)]
                for proc in procs:
                    proc.start()
                for proc in procs:
                    proc.join()
                entries = [[float(x) for x in line.split()]
                           for line in stamp.read_text().splitlines()]
                starts.append(min(e[0] for e in entries) - begin)
                start_cpu.extend(e[1] for e in entries)
    finally:
        if kind == "postgresql":
            _drop(base, schema)
    bk = statistics.median(per_trial)
    start = statistics.median(starts)
    emit("sweep", f"{kind}_trial_bookkeeping_ms", bk * 1000, "ms", None, MACHINE, digits=1,
         trials=trials, repeats=repeats)
    emit("sweep", f"{kind}_trial_bookkeeping_cpu_ms", statistics.median(per_trial_cpu) * 1000,
         "ms", None, MACHINE, digits=1, note="this process's CPU time: what a busy machine "
         "does not inflate")
    emit("sweep", f"{kind}_worker_start_s", start, "s", None, MACHINE, digits=2,
         imports="optuna, torch, pytorch_lightning")
    emit("sweep", f"{kind}_worker_start_cpu_s", statistics.median(start_cpu), "s", None,
         MACHINE, digits=2, note="the worker's CPU time up to its first trial")
    emit("sweep", f"{kind}_overhead_per_trial_s", bk + start * 2 / 8, "s", "<= 1.5", MACHINE,
         digits=3, shape="8 trials, 2 jobs")
    emit("sweep", f"{kind}_overhead_per_trial_worst_s", bk + start, "s", None, MACHINE,
         digits=3, shape="one trial per worker")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and repeats")
    parser.add_argument("--storages", default="journal,postgresql")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials, repeats = (5, 1) if args.quick else (20, 3)
    for kind in args.storages.split(","):
        measure(kind.strip(), trials, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
