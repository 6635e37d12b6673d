"""The registry under real concurrent processes: racing allocations, SIGKILL, shared records.

Processes are forked (``multiprocessing`` "fork" context) so that they start together
and fast; every child opens its own ``Registry``, as separate runs would.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from versionkit.cli import main as cli_main
from versionkit.registry import Registry, provenance

CTX = multiprocessing.get_context("fork")
# Python >= 3.12 warns when forking a process that has threads (torch's, started by other
# test modules); the children here only run the registry's pure-Python code.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*multi-threaded.*fork:DeprecationWarning")


@pytest.fixture(autouse=True)
def _warm_caches() -> None:
    # Forked children inherit these per-process caches instead of each running git.
    provenance.git_info(os.getcwd())
    provenance.package_versions()


def _allocate(root: str, count: int, barrier: Barrier, out: Any) -> None:
    try:
        reg = Registry(root, "file", lock_timeout=60)
        barrier.wait(30)
        got = []
        for _ in range(count):
            info = reg.allocate()
            assert info.checkpoint_dir.is_dir() and info.log_dir.is_dir()
            got.append(info.version)
        out.put(("ok", got))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def _run_round(root: Path, processes: int, count: int) -> list[list[int]]:
    barrier, out = CTX.Barrier(processes), CTX.Queue()
    procs = [
        CTX.Process(target=_allocate, args=(str(root), count, barrier, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    errors = [r[1] for r in results if r[0] != "ok"]
    assert not errors, errors
    return [r[1] for r in results]


@pytest.mark.slow
def test_16_processes_racing_for_several_rounds(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    seen: list[int] = []
    foreign: int | None = None
    for round_index in range(4):
        results = _run_round(root, processes=16, count=3)
        numbers = sorted(n for chunk in results for n in chunk)
        assert len(set(numbers)) == len(numbers) == 48, "a number was handed out twice"
        start = max(seen, default=-1) + 1
        expected = [n for n in range(start, start + 49) if n != foreign][:48]
        assert numbers == expected, "no gaps, no reuse, the foreign folder stepped over"
        assert not set(numbers) & set(seen)
        for chunk in results:
            assert chunk == sorted(chunk)
        seen += numbers
        # Delete every folder (and, in odd rounds, leave a foreign one far ahead):
        # the next round must still never reuse a number.
        shutil.rmtree(root / "checkpoints")
        shutil.rmtree(root / "logs")
        foreign = None
        if round_index % 2:
            foreign = max(seen) + 5
            (root / "logs" / f"version_{foreign}").mkdir(parents=True)
    reg = Registry(root)
    records = [v.version for v in reg.list() if v.status != "untracked"]
    assert len(records) == 4 * 48 and len(set(records)) == len(records)


def _allocate_forever(root: str, fd: int) -> None:
    reg = Registry(root, "file")
    while True:
        n = reg.allocate().version
        reg.log_metrics(n, {"loss": 1.0}, step=1)
        os.write(fd, f"{n}\n".encode())


@pytest.mark.parametrize("round_index", range(3))
def test_sigkill_during_allocation_loops(tmp_path: Path, round_index: int) -> None:
    root = tmp_path / "exp"
    Registry(root).allocate()
    readers, procs = [], []
    for _ in range(6):
        read_fd, write_fd = os.pipe()
        p = CTX.Process(target=_allocate_forever, args=(str(root), write_fd))
        p.start()
        os.close(write_fd)
        readers.append(read_fd)
        procs.append(p)
    time.sleep(0.3 + 0.15 * round_index)
    for p in procs:
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
    reported: list[int] = []
    for fd in readers:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        os.close(fd)
        reported += [int(line) for line in b"".join(chunks).split()]
    assert reported, "the children allocated something before they were killed"
    assert len(set(reported)) == len(reported), "no number was handed out twice"

    reg = Registry(root, "file", lock_timeout=5)  # a leaked lock would time out here
    listed = reg.list()  # no CorruptStateError: every file was replaced atomically
    numbers = [v.version for v in listed]
    assert set(reported) <= set(numbers)
    assert all(v.is_dead for v in listed if v.version in reported and v.status == "running")
    fresh = reg.allocate().version
    assert fresh > max(numbers)
    assert not list((root / ".versionkit").rglob("*.corrupt"))
    assert cli_main(["list", str(root), "--json"]) == 0


def _writer(root: str, kind: str, n: int, count: int, barrier: Barrier, out: Any) -> None:
    try:
        reg = Registry(root, "file")
        barrier.wait(30)
        for i in range(count):
            if kind == "metrics_a":
                reg.log_metrics(n, {f"a{i}": float(i)}, step=i)
            elif kind == "metrics_b":
                reg.log_metrics(n, {f"b{i}": float(i)}, step=i)
            elif kind == "status":
                reg.set_status(n, "running" if i % 2 else "interrupted")
                reg.update(n, **{f"note{i}": i})
            else:
                path = reg.checkpoint_dir(n) / f"step_{i:08d}-val_loss_{1 / (i + 1):.4f}.ckpt"
                path.write_bytes(b"x")
                reg.add_checkpoint(n, path, step=i, metrics={"val_loss": 1 / (i + 1)})
        out.put(("ok", kind))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def test_concurrent_writers_of_one_record_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    n = Registry(root).allocate().version
    kinds = ["metrics_a", "metrics_b", "status", "checkpoints"]
    count = 25
    barrier, out = CTX.Barrier(len(kinds)), CTX.Queue()
    procs = [
        CTX.Process(target=_writer, args=(str(root), k, n, count, barrier, out)) for k in kinds
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[0] == "ok" for r in results), results
    info = Registry(root).get(n)
    assert set(info.metrics) == {f"a{i}" for i in range(count)} | {f"b{i}" for i in range(count)}
    assert all(info.record[f"note{i}"] == i for i in range(count))
    assert len(info.record["checkpoints"]) == count
    best = Registry(root).best()
    assert best is not None and best.step == count - 1
