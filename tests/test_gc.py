"""``versionkit gc``: retention, what it never touches, --versions, and a live writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from curate_support import checkpoint, cli, one_error_line, uri_fixture

from versionkit.curate import gc
from versionkit.curate.refs import set_tag
from versionkit.registry import Registry

vk_uri = uri_fixture()
REPO = Path(__file__).resolve().parents[1]


def _finished(reg: Registry, losses: list[float], status: str = "completed") -> int:
    """A closed version with one checkpoint per loss (steps 1, 2, ...) and a last.ckpt."""
    n = reg.allocate(config={"lr": 0.1}).version
    for step, loss in enumerate(losses, 1):
        checkpoint(reg, n, step, loss)
    (reg.checkpoint_dir(n) / "last.ckpt").write_bytes(b"L" * 7)
    reg.add_checkpoint(n, reg.checkpoint_dir(n) / "last.ckpt", step=len(losses))
    reg.set_status(n, status)
    return n


def _names(reg: Registry, n: int) -> list[str]:
    return sorted(p.name for p in reg.checkpoint_dir(n).glob("*.ckpt"))


def test_retention_and_what_gc_never_touches(
    vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "exp"
    reg = Registry(root, vk_uri)
    plain = _finished(reg, [0.9, 0.5, 0.7, 0.8])       # 0: best 0.5 at step 2
    champion = _finished(reg, [0.3, 0.1, 0.2])         # 1: holds the experiment's best
    live = reg.allocate().version                      # 2: running in this (live) process
    checkpoint(reg, live, 1, 0.9)
    checkpoint(reg, live, 2, 0.95)
    tagged = _finished(reg, [0.6, 0.4, 0.45])          # 3
    set_tag(reg, "prod", tagged)
    run = cli(capsys, vk_uri)

    before = {n: _names(reg, n) for n in range(4)}
    code, out, _ = run("gc", str(root), "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["dry_run"] is True
    assert {n: _names(reg, n) for n in range(4)} == before, "a dry run deletes nothing"
    assert plan["skipped"] == {"running": [live]}

    code, out, _ = run("gc", str(root), "--keep-best", "1", "--keep-last", "1")
    assert code == 0
    assert _names(reg, plain) == ["last.ckpt", "step_00000002-val_loss_0.5000.ckpt"]
    # 3 of version 0, 2 of version 1, 2 of version 3; 10 bytes each
    assert out.splitlines()[-1] == "removed 7 checkpoint(s); freed 70 B"
    assert out.splitlines()[-2] == f"left running versions alone: {live}"
    assert _names(reg, live) == before[live], "a running version is never touched"

    # Keep nothing: still the experiment's best, and a tagged version's best and last.
    code, out, _ = run("gc", str(root), "--keep-best", "0", "--keep-last", "0", "--json")
    assert code == 0
    assert _names(reg, plain) == []
    assert _names(reg, champion) == ["step_00000002-val_loss_0.1000.ckpt"]
    assert _names(reg, tagged) == ["last.ckpt", "step_00000002-val_loss_0.4000.ckpt"]
    assert _names(reg, live) == before[live]
    removed = json.loads(out)["removed"]
    assert all(os.path.basename(r["path"]) not in _names(reg, r["version"]) for r in removed)

    # The registry forgot every removed file: best never returns a deleted one.
    recorded = [c["path"] for c in reg.get(plain).record["checkpoints"]]
    assert recorded == []
    best = reg.best(version=plain)
    assert best is None
    assert reg.best().path.name == "step_00000002-val_loss_0.1000.ckpt"


def test_older_than_keeps_recent_files(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    n = _finished(reg, [0.5, 0.6, 0.7, 0.8])
    old = time.time() - 10 * 86400
    for name in ("step_00000002-val_loss_0.6000.ckpt", "step_00000003-val_loss_0.7000.ckpt"):
        os.utime(reg.checkpoint_dir(n) / name, (old, old))
    done = gc.apply(reg, gc.plan(reg, keep_best=0, keep_last=1, older_than_days=5))
    assert sorted(r.path.name for r in done.checkpoints) == [
        "step_00000002-val_loss_0.6000.ckpt", "step_00000003-val_loss_0.7000.ckpt"]
    assert _names(reg, n) == ["last.ckpt", "step_00000001-val_loss_0.5000.ckpt",
                              "step_00000004-val_loss_0.8000.ckpt"]


def test_policy_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry(tmp_path / "exp")
    _finished(reg, [0.5])
    run = cli(capsys, "file")
    for flags in (["--keep-best", "-1"], ["--keep-last", "x"], ["--older-than", "nan"],
                  ["--older-than", "-2"], ["--older-than", "inf"], ["--metric", ""]):
        code, _, err = run("gc", str(reg.root), *flags)
        assert code == 2 and ("expected" in err or "cannot be empty" in err), flags
    with pytest.raises(Exception, match="--keep-best must be"):
        gc.plan(reg, keep_best=-1)


def test_versions_removes_failed_folders_only_when_confirmed(
    vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "exp"
    reg = Registry(root, vk_uri)
    good = _finished(reg, [0.2])
    failed = _finished(reg, [0.9, 0.8], status="failed")
    interrupted = _finished(reg, [0.7], status="interrupted")
    (reg.log_dir(failed) / "events.out").write_bytes(b"e" * 100)
    run = cli(capsys, vk_uri)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)

    code, _, err = run("gc", str(root), "--versions")
    assert code == 2 and "pass --yes" in one_error_line(err)
    assert reg.checkpoint_dir(failed).is_dir() and _names(reg, good), "a refusal changes nothing"
    assert len(_names(reg, failed)) == 3

    code, out, _ = run("gc", str(root), "--versions", "--yes", "--json")
    data = json.loads(out)
    assert code == 0 and data["removed_versions"] == [failed, interrupted]
    for n in (failed, interrupted):
        assert not reg.checkpoint_dir(n).exists() and not reg.log_dir(n).exists()
        assert reg.get(n).record["removed_at"]
    assert _names(reg, good) == ["last.ckpt", "step_00000001-val_loss_0.2000.ckpt"]
    assert reg.allocate().version == interrupted + 1, "numbers are never reused"
    rows = json.loads(run("list", str(root), "--json")[1])
    assert [r["status"] for r in rows][:3] == ["completed", "failed", "interrupted"]


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from versionkit.registry import Registry

    reg = Registry(sys.argv[1], sys.argv[2])
    n = reg.allocate().version
    Path(sys.argv[3]).write_text(str(n))
    for step in range(1, int(sys.argv[4]) + 1):
        final = reg.checkpoint_dir(n) / f"step_{step:08d}-val_loss_{1.0 + step:.4f}.ckpt"
        tmp = final.with_suffix(".tmp")
        tmp.write_bytes(b"w" * 64)
        os.replace(tmp, final)
        reg.add_checkpoint(n, final, step=step, metrics={"val_loss": 1.0 + step})
        time.sleep(0.01)
    Path(sys.argv[3] + ".saved").write_text("")
    while not Path(sys.argv[3] + ".stop").exists():
        time.sleep(0.01)
    reg.set_status(n, "completed")
    """
)


@pytest.mark.slow
def test_gc_racing_a_live_writer_loses_nothing_of_it(vk_uri: str, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    reg = Registry(root, vk_uri)
    for _ in range(3):
        _finished(reg, [0.5, 0.6, 0.7])
    started = tmp_path / "started"
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    saves = 25
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), vk_uri, str(started), str(saves)], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists(), "the writer never started"
        n = int(started.read_text())
        saved = tmp_path / "started.saved"
        rounds = 0
        while rounds < 2 or not saved.exists():  # gc while it saves, and once after
            assert writer.poll() is None
            done = gc.apply(reg, gc.plan(reg, keep_best=0, keep_last=0))
            assert all(r.version != n for r in done.checkpoints)
            rounds += 1
        done = gc.apply(reg, gc.plan(reg, keep_best=0, keep_last=0))
        (tmp_path / "started.stop").write_text("")
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert len(_names(reg, n)) == saves
    assert len(reg.get(n).record["checkpoints"]) == saves
    assert rounds >= 2


def test_a_lease_decides_liveness_across_hosts(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    fresh = _finished(reg, [0.5, 0.6, 0.7])
    stale = _finished(reg, [0.4, 0.6, 0.7])
    for n, beat in ((fresh, time.time()), (stale, time.time() - 7200)):
        reg.update(n, status="running", host="elsewhere", pid=123,
                   lease={"host": "elsewhere", "pid": 123, "token": "t", "heartbeat": beat})
    todo = gc.plan(reg, keep_best=0, keep_last=0)
    assert todo.skipped == {"running": [fresh]}, "a recent heartbeat on another host is live"
    assert {r.version for r in todo.checkpoints} == {stale}


def test_a_symlinked_checkpoint_loses_only_its_link(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    n = _finished(reg, [0.5, 0.6])
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep me")
    (reg.checkpoint_dir(n) / "step_00000009-val_loss_0.9000.ckpt").symlink_to(victim)
    done = gc.apply(reg, gc.plan(reg, keep_best=1, keep_last=1))
    assert sorted(r.path.name for r in done.checkpoints) == [
        "step_00000002-val_loss_0.6000.ckpt", "step_00000009-val_loss_0.9000.ckpt"]
    assert victim.read_bytes() == b"keep me"
