"""Benchmark of the version registry, generic over backend URIs.

Prints one JSON object per line and figure::

    python benchmarks/bench_registry.py                         # the file backend
    python benchmarks/bench_registry.py --backends file,sqlite  # any of file, memory,
                                                                # sqlite, postgresql
    python benchmarks/bench_registry.py --quick                 # smaller, for a smoke run
    python benchmarks/bench_registry.py --versions 100,1000,10000,100000 \
        --backends file,sqlite,postgresql                       # cost as an experiment grows

Per backend: the median uncontended ``Registry.allocate`` (durable; target <= 5 ms for
file), its CPU time, and the bare ``backend.allocate`` under it; 16 processes x 50
allocations at once (duplicates, target 0; allocations/s in total, target >= 100; median
of 3 runs);
``best`` over 1,000 versions x 20 checkpoints (target <= 100 ms; and its CPU time, which
a loaded shared machine does not inflate the way it inflates wall time); the wall time of a
whole ``versionkit list`` process on those 1,000 versions (target <= 1 s).

In the same run, the bare filesystem operations underneath a file allocation (flock,
write + fsync + rename of a small file, fsync of its folder, two mkdirs, unlock) are
timed the same two ways, so the registry's overhead over the disk's own limit is
visible. The processes are forked after git and package metadata were read once, as a
training process reads them once per run: the figures are the allocations themselves.

``postgresql`` uses ``$VERSIONKIT_TEST_POSTGRES``; without it (or when the server cannot
be reached) one JSON line with a ``skipped`` note is printed instead.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import drop_pg_schemas, machine, registry_uri  # noqa: E402
from _common import emit as common_emit  # noqa: E402

from versionkit.errors import VersionkitError  # noqa: E402
from versionkit.registry import Registry, provenance  # noqa: E402

CTX = multiprocessing.get_context("fork")


MACHINE = machine()


def emit(figure: str, value: float | int, unit: str, target: str | None = None) -> None:
    common_emit("registry", figure, value, unit, target, MACHINE)


def skipped(figure: str, why: str) -> None:
    print(
        json.dumps({"bench": "registry", "figure": figure, "skipped": why, "machine": MACHINE}),
        flush=True,
    )


# -- the bare operations --------------------------------------------------------------


def bare_allocate(folder: Path, lock_fd: int, n: int) -> None:
    """What a durable file allocation does at the OS level, with no Python logic.

    Same order as the registry: the durable record under the lock, the two version
    folders after it.
    """
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        tmp, final = folder / f".{n}.tmp", folder / f"{n}.json"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b'{"version": %d, "status": "running"}' % n)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, final)
        dfd = os.open(folder, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
    os.mkdir(folder / f"c{n}")
    os.mkdir(folder / f"l{n}")


def _bare_child(folder: str, base: int, count: int, barrier: Any, out: Any) -> None:
    lock_fd = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    barrier.wait(60)
    start = time.perf_counter()
    for i in range(count):
        bare_allocate(Path(folder), lock_fd, base + i)
    out.put(("ok", start, time.perf_counter(), list(range(base, base + count))))


# -- registry workloads ---------------------------------------------------------------


def _registry_child(root: str, uri: str, count: int, barrier: Any, out: Any) -> None:
    try:
        reg = Registry(root, uri)
        barrier.wait(60)
        start = time.perf_counter()
        numbers = [reg.allocate().version for _ in range(count)]
        out.put(("ok", start, time.perf_counter(), numbers))
        reg.close()
    except BaseException as exc:
        out.put(("error", 0.0, 0.0, repr(exc)))


def concurrent(
    target: Callable[..., None], args: Callable[[int], tuple[Any, ...]], procs: int
) -> tuple[float, list[int]]:
    """Run ``procs`` processes released together; (total ops/s, all numbers)."""
    provenance.git_info(os.getcwd())  # fresh in the cache the children inherit
    barrier, out = CTX.Barrier(procs), CTX.Queue()
    workers = [CTX.Process(target=target, args=(*args(i), barrier, out)) for i in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join(60)
    errors = [r[3] for r in results if r[0] != "ok"]
    if errors:
        raise RuntimeError(f"a benchmark process failed: {errors[0]}")
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    numbers = [n for r in results for n in r[3]]
    return len(numbers) / (end - start), numbers


def fill(reg: Registry, versions: int, per_version: int) -> None:
    """``versions`` versions, each with ``per_version`` checkpoint files, half recorded."""
    for v in range(versions):
        items, names = [], []
        for k in range(per_version):
            step = (k + 1) * 1000
            loss = 1.0 / (1 + ((v * 7919 + k * 104729) % 10007))
            name = f"step_{step:08d}-val_loss_{loss:.4f}.ckpt"
            names.append(name)
            if k % 2 == 0:
                items.append(
                    {
                        "path": f"checkpoints/version_{v}/{name}",
                        "step": step,
                        "metrics": {"val_loss": loss},
                    }
                )
        info = reg.allocate(
            config={"lr": 1e-4, "layers": [8, 2, 1], "v": v},
            extra={"checkpoints": items, "metrics": {"val_loss": 0.5, "train_loss": 0.7}},
        )
        for name in names:
            (info.checkpoint_dir / name).touch()


def bench_backend(name: str, args: argparse.Namespace, tmp: Path) -> None:
    uri = registry_uri(name, tmp)
    if uri is None:
        skipped(f"{name}_*", "set VERSIONKIT_TEST_POSTGRES to a postgresql:// URI to run it")
        return
    root = tmp / f"{name}_latency"
    try:
        reg = Registry(root, uri)
        reg.allocate()  # creates tables / folders; reads git once
    except VersionkitError as exc:
        skipped(f"{name}_*", f"backend unavailable: {exc}")
        return
    target_5 = "<= 5" if name == "file" else None

    times, cpu = [], []
    for _ in range(args.latency_n):
        t, c = time.perf_counter(), time.process_time()
        reg.allocate()
        cpu.append(time.process_time() - c)
        times.append(time.perf_counter() - t)
    emit(f"{name}_allocate_median_ms", statistics.median(times) * 1e3, "ms", target_5)
    # CPU time of this process: on a shared machine, what the registry itself costs.
    emit(f"{name}_allocate_cpu_median_ms", statistics.median(cpu) * 1e3, "ms")
    times = []
    for _ in range(args.latency_n):
        t = time.perf_counter()
        reg.backend.allocate(0, {"status": "running"})
        times.append(time.perf_counter() - t)
    emit(f"{name}_backend_allocate_median_ms", statistics.median(times) * 1e3, "ms")
    reg.close()

    if name == "memory":
        skipped(f"{name}_concurrent_16x50", "the memory store is local to one process")
    else:
        rates, duplicates = [], 0
        for run in range(args.runs):
            croot = tmp / f"{name}_concurrent_{run}"
            cur = uri if name != "sqlite" else f"sqlite:///{tmp / f'c{run}.db'}"
            Registry(croot, cur).close()
            rate, numbers = concurrent(
                _registry_child, lambda i, r=croot, u=cur: (str(r), u, args.per_proc), args.procs
            )
            duplicates += len(numbers) - len(set(numbers))
            rates.append(rate)
        label = f"{args.procs}x{args.per_proc}"
        emit(f"{name}_concurrent_{label}_duplicates", duplicates, "count", "0")
        emit(
            f"{name}_concurrent_{label}_allocs_per_s",
            statistics.median(rates),
            "allocs/s",
            {"file": ">= 100", "postgresql": ">= 200"}.get(name),
        )

    broot = tmp / f"{name}_best"
    buri = uri if name != "sqlite" else f"sqlite:///{tmp / 'best.db'}"
    breg = Registry(broot, buri)
    fill(breg, args.versions, args.ckpts)
    label = f"{args.versions}x{args.ckpts}"
    times, cpu = [], []
    best = None
    for _ in range(args.runs_fast):
        t, c = time.perf_counter(), time.process_time()
        best = breg.best("val_loss", "min")
        cpu.append(time.process_time() - c)
        times.append(time.perf_counter() - t)
    assert best is not None and best.metrics["val_loss"] > 0
    emit(f"{name}_best_{label}_ms", statistics.median(times) * 1e3, "ms", "<= 100")
    emit(f"{name}_best_{label}_cpu_ms", statistics.median(cpu) * 1e3, "ms")
    breg.close()

    if name == "memory":
        skipped(f"{name}_list_{args.versions}_process_s", "a new process sees an empty store")
        return
    times = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(args.runs_fast):
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "versionkit.cli", "list", str(broot), "--backend", buri],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        times.append(time.perf_counter() - t)
        if done.returncode != 0 or len(done.stdout.splitlines()) != args.versions + 1:
            raise RuntimeError(f"versionkit list failed: {done.stderr.strip()}")
    emit(f"{name}_list_{args.versions}_process_s", statistics.median(times), "s", "<= 1")


def bench_bare(args: argparse.Namespace, tmp: Path) -> None:
    folder = tmp / "bare"
    folder.mkdir()
    lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    times = []
    for i in range(args.latency_n):
        t = time.perf_counter()
        bare_allocate(folder, lock_fd, i)
        times.append(time.perf_counter() - t)
    os.close(lock_fd)
    emit("bare_flock_fsync_mkdir_median_ms", statistics.median(times) * 1e3, "ms")
    rates = []
    for run in range(args.runs):
        cfolder = tmp / f"bare_concurrent_{run}"
        cfolder.mkdir()
        rate, _ = concurrent(
            _bare_child,
            lambda i, f=cfolder: (str(f), i * args.per_proc, args.per_proc),
            args.procs,
        )
        rates.append(rate)
    emit(
        f"bare_flock_fsync_mkdir_{args.procs}x{args.per_proc}_ops_per_s",
        statistics.median(rates),
        "ops/s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends",
        default="file",
        help="comma-separated: file, memory, sqlite, postgresql (default: file)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--versions",
        dest="scale_sizes",
        default=None,
        help="comma-separated experiment sizes, e.g. 100,1000,10000,100000: only the "
        "figures of how the cost grows with the number of versions (see _registry_scale.py)",
    )
    args = parser.parse_args()
    args.procs, args.per_proc = 16, 50
    args.versions, args.ckpts = 1000, 20
    args.latency_n, args.runs, args.runs_fast = 200, 3, 7
    if args.quick:
        args.procs, args.per_proc = 4, 10
        args.versions, args.ckpts = 50, 5
        args.latency_n, args.runs, args.runs_fast = 30, 1, 3
    provenance.git_info(os.getcwd())
    provenance.package_versions()
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as name:
        tmp = Path(name)
        if args.scale_sizes:
            import _registry_scale

            sizes = [int(s) for s in args.scale_sizes.split(",") if s.strip()]
            backends = [b.strip() for b in args.backends.split(",") if b.strip()]
            try:
                _registry_scale.run(
                    sizes,
                    backends,
                    tmp,
                    registry_uri,
                    lambda figure, value, unit, target, **extra: common_emit(
                        "registry", figure, value, unit, target, MACHINE, **extra
                    ),
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                drop_pg_schemas()
            return
        bench_bare(args, tmp)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            bench_backend(backend, args, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    drop_pg_schemas()


if __name__ == "__main__":
    main()
