"""Benchmark of the curation verbs on a large experiment, per backend.

Prints one JSON object per line and figure::

    python benchmarks/bench_curate.py                        # file, sqlite, postgresql
    python benchmarks/bench_curate.py --backends file --quick

Per backend, on 1,000 versions x 20 checkpoints (each version with a nested config,
half of its checkpoints recorded, as ModelCheckpoint leaves them): the wall time of a
whole ``versionkit list --columns optim.lr,trainer.max_steps`` process (target <= 1 s),
of ``versionkit list --json --limit 20`` (the newest 20 only), and of a whole
``versionkit gc --dry-run --json`` process (target <= 2 s); medians of ``--runs`` runs
after one warm-up, with byte-compiled modules as an installed package has them. The gc
plan is also timed in this process as CPU time, which a loaded machine inflates least.
A bare ``python -c "import versionkit.cli"`` process is timed the same way, so the
interpreter's own start-up is visible beside each figure.

``postgresql`` uses ``$VERSIONKIT_TEST_POSTGRES`` in a schema of its own (dropped at
the end); without it one JSON line with a ``skipped`` note is printed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import drop_pg_schemas, machine, registry_uri
from _common import emit as _emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from versionkit.errors import VersionkitError  # noqa: E402
from versionkit.registry import Registry  # noqa: E402

BENCH = "curate"
MACHINE = machine()


def emit(figure: str, value: float, unit: str, target: str | None = None, **extra: object) -> None:
    _emit(BENCH, figure, value, unit, target, MACHINE, **extra)


def fill(reg: Registry, versions: int, per_version: int) -> None:
    """``versions`` completed versions with ``per_version`` checkpoint files each."""
    for v in range(versions):
        items, names = [], []
        for k in range(per_version):
            step = (k + 1) * 1000
            loss = 1.0 / (1 + ((v * 7919 + k * 104729) % 10007))
            name = f"step_{step:08d}-val_loss_{loss:.4f}.ckpt"
            names.append(name)
            if k % 2 == 0:
                items.append({"path": f"checkpoints/version_{v}/{name}", "step": step,
                              "metrics": {"val_loss": loss}})
        config = {"optim": {"lr": 10 ** -(1 + v % 4), "weight_decay": 0.05},
                  "trainer": {"max_steps": 1000 * (1 + v % 3), "val_every_n_steps": 500},
                  "model": {"embed_dim_list": [64, 32, 16], "num_blocks_list": [2, 1, 1]}}
        info = reg.allocate(
            config=config,
            extra={"checkpoints": items, "metrics": {"val_loss": 0.5}, "metrics_step": step,
                   "status": "completed"},
        )
        for name in names:
            (info.checkpoint_dir / name).write_bytes(b"c")
        (info.checkpoint_dir / "last.ckpt").write_bytes(b"c")


def process_time(argv: list[str], runs: int) -> tuple[float, float]:
    """Median wall time and CPU time (user + system) of a whole child process."""
    # As installed: byte-compiled modules (this environment may turn that off), and one
    # warm-up run that writes them and warms the page cache.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    times, cpus = [], []
    for _ in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                              check=False, timeout=600)
        times.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    return statistics.median(times[1:]), statistics.median(cpus[1:])


def emit_process(figure: str, argv: list[str], runs: int, target: str | None,
                 **extra: object) -> None:
    """The wall-time figure (against the target) and the same process's CPU time beside it:
    on a loaded shared machine the CPU time is the steadier figure."""
    wall, cpu = process_time(argv, runs)
    emit(f"{figure}_s", wall, "s", target, **extra)
    emit(f"{figure}_cpu_s", cpu, "s", None)


def bench(name: str, args: argparse.Namespace, tmp: Path) -> None:
    uri = registry_uri(name, tmp)
    if uri is None:
        print(json.dumps({"bench": BENCH, "figure": name,
                          "skipped": "set VERSIONKIT_TEST_POSTGRES"}), flush=True)
        return
    root = tmp / name / "exp"
    t = time.perf_counter()
    try:
        reg = Registry(root, uri)
    except VersionkitError as exc:  # e.g. SQLAlchemy not installed in this environment
        print(json.dumps({"bench": BENCH, "figure": name, "skipped": str(exc)}), flush=True)
        return
    with reg:
        fill(reg, args.versions, args.checkpoints)
    build = time.perf_counter() - t
    size = f"{args.versions}x{args.checkpoints}"
    vk = ["-m", "versionkit"]
    common = ["--backend", uri]
    cols = ["--columns", "optim.lr,trainer.max_steps"]
    emit_process(f"{name}_list_columns_{args.versions}_process",
                 [*vk, "list", str(root), *cols, *common], args.runs, "<= 1",
                 build_s=round(build, 2))
    emit_process(f"{name}_list_json_limit20_{args.versions}_process",
                 [*vk, "list", str(root), "--json", "--limit", "20", *common], args.runs, None)
    emit_process(f"{name}_gc_dry_run_{size}_process",
                 [*vk, "gc", str(root), "--dry-run", "--json", *common], args.runs, "<= 2")
    # The same work in this process, as CPU time: what a loaded machine inflates least.
    from versionkit.curate import gc

    with Registry(root, uri) as reg:
        cpu = []
        for _ in range(args.runs):
            c = time.process_time()
            plan = gc.plan(reg)
            cpu.append(time.process_time() - c)
    emit(f"{name}_gc_plan_{size}_cpu_s", statistics.median(cpu), "s",
         removals=len(plan.checkpoints))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="file,sqlite,postgresql")
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 versions, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.versions, args.runs = 100, 1
    emit_process("python_import_versionkit_cli_process", ["-c", "import versionkit.cli"],
                 args.runs, None)
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
        try:
            for name in args.backends.split(","):
                bench(name.strip(), args, Path(tmp))
        finally:
            drop_pg_schemas()


if __name__ == "__main__":
    main()
