"""fractalgen._memory: the training commands keep freed memory for the next step."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fractalgen.train
from fractalgen import _memory


def _glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


# In a fresh process: malloc and free one 8 MiB block, reporting glibc's own counters
# (mallinfo2) before, while held, and after the free; optionally after the call.
_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    from fractalgen._memory import keep_freed_memory

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    done = keep_freed_memory() if sys.argv[1] == "keep" else None
    size = 8 << 20
    before = libc.mallinfo2()
    block = libc.malloc(size)
    held = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    print(json.dumps({
        "done": done,
        "mmapped_while_held": held.hblkhd - before.hblkhd,
        "heap_kept_after_free": after.arena - before.arena,
    }))
    """
)


def _probe(mode: str) -> dict[str, int]:
    # glibc's defaults: no malloc settings from this environment, no other allocator.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
        env=env,
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_a_freed_block_stays_in_the_process_only_after_the_call() -> None:
    plain = _probe("plain")
    assert plain["done"] is None
    assert plain["mmapped_while_held"] >= 8 << 20  # glibc's default: its own mmap
    assert plain["heap_kept_after_free"] < 8 << 20
    kept = _probe("keep")
    assert kept["done"] is True
    assert kept["mmapped_while_held"] == 0  # from the heap instead ...
    assert kept["heap_kept_after_free"] >= 8 << 20  # ... which keeps it once it is freed


def test_not_linux_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory.sys, "platform", "darwin")
    assert _memory.keep_freed_memory() is False


def test_the_training_command_calls_it_and_print_config_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo_config = Path(__file__).resolve().parents[1] / "config" / "train_small.yaml"
    calls: list[str] = []
    monkeypatch.setattr(_memory, "keep_freed_memory", lambda: calls.append("kept") or True)

    class Stop(Exception):
        pass

    def fake_train(*args: object, **kwargs: object) -> None:
        calls.append("train")
        raise Stop

    monkeypatch.setattr(fractalgen.train, "train", fake_train)
    assert fractalgen.train.main(["--config", str(repo_config), "--print_config"]) == 0
    assert calls == []
    with pytest.raises(Stop):
        fractalgen.train.main(["--config", str(repo_config)])
    assert calls == ["kept", "train"]
