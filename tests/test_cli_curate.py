"""``versionkit list`` columns/filters/sort/limit, ``diff`` of many, ``note`` and ``status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from curate_support import checkpoint, cli, one_error_line, uri_fixture

from versionkit.errors import BackendError
from versionkit.registry import Registry

vk_uri = uri_fixture()
REPO = Path(__file__).resolve().parents[1]


def _experiment(root: Path, uri: str) -> Registry:
    reg = Registry(root, uri)
    for lr, steps, losses in ((0.1, 100, [0.9, 0.4, 0.6]), (0.01, 200, [0.5, 0.3]),
                              (0.001, 100, [])):
        n = reg.allocate(config={"optim": {"lr": lr}, "trainer": {"max_steps": steps}}).version
        for step, loss in enumerate(losses, 1):
            checkpoint(reg, n, step * 10, loss)
        if losses:
            reg.log_metrics(n, {"val_loss": losses[-1]}, step=len(losses) * 10)
            reg.set_status(n, "completed")
    return reg


def test_list_best_columns_filters_sort_limit(
    vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = _experiment(tmp_path / "exp", vk_uri)
    run = cli(capsys, vk_uri)
    root = str(reg.root)

    code, out, _ = run("list", root, "--columns", "optim.lr,trainer.max_steps")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["VERSION", "STATUS", "CREATED"]
    assert "OPTIM.LR" in lines[0] and "TRAINER.MAX_STEPS" in lines[0]
    # best val_loss with its step, beside the last one
    assert "0.4@20" in lines[1] and "0.6@30" in lines[1] and "0.1" in lines[1]
    assert "0.3@20" in lines[2] and "200" in lines[2]

    rows = json.loads(run("list", root, "--json", "--columns", "optim.lr")[1])
    assert [r["best"] for r in rows] == [
        {"val_loss": 0.4, "step": 20}, {"val_loss": 0.3, "step": 20}, None]
    assert [r["last"] for r in rows] == [
        {"val_loss": 0.6, "step": 30}, {"val_loss": 0.3, "step": 20}, None]
    assert [r["columns"] for r in rows] == [
        {"optim.lr": 0.1}, {"optim.lr": 0.01}, {"optim.lr": 0.001}]

    rows = json.loads(run("list", root, "--json", "--status", "running")[1])
    assert [r["version"] for r in rows] == [2]
    rows = json.loads(run("list", root, "--json", "--sort", "best")[1])
    assert [r["version"] for r in rows] == [1, 0, 2], "missing values last"
    rows = json.loads(run("list", root, "--json", "--sort=-optim.lr",
                          "--columns", "optim.lr")[1])
    assert [r["version"] for r in rows] == [0, 1, 2]
    rows = json.loads(run("list", root, "--json", "--limit", "2")[1])
    assert [r["version"] for r in rows] == [2, 1], "the N newest, newest first"
    rows = json.loads(run("list", root, "--json", "--limit", "1", "--status", "completed")[1])
    assert [r["version"] for r in rows] == [1]

    for flags, why in ((["--columns", "optim.lrr"], "did you mean 'optim.lr'"),
                       (["--sort", "colour"], "--sort 'colour'"),
                       (["--columns", "a,,b"], "comma-separated"),
                       (["--columns", ""], "comma-separated"),
                       (["--limit", "-1"], "--limit must be >= 0")):
        code, out, err = run("list", root, *flags)
        assert code == 2 and why in one_error_line(err), flags
        code, out, err = run("list", root, "--json", *flags)
        assert (code, out) == (2, ""), "nothing printed before a refusal"


def test_list_json_streams_a_valid_array(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    for _ in range(3):
        reg.allocate()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "versionkit", "list", str(reg.root), "--json"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "[" and lines[-1] == "]"
    assert [json.loads(line.rstrip(","))["version"] for line in lines[1:-1]] == [0, 1, 2]
    assert [r["version"] for r in json.loads(done.stdout)] == [0, 1, 2]


def test_diff_of_many_versions(
    vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = _experiment(tmp_path / "exp", vk_uri)
    run = cli(capsys, vk_uri)
    code, out, _ = run("diff", str(reg.root), "0", "1", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["KEY", "version", "0", "version", "1", "version", "2"]
    assert lines[1].split() == ["optim.lr", "0.1", "0.01", "0.001"]
    assert lines[2].split() == ["trainer.max_steps", "100", "200", "100"]
    assert lines[3].split() == ["best", "val_loss", "0.4@20", "0.3@20", "-"]
    data = json.loads(run("diff", str(reg.root), "0", "1", "latest", "--json")[1])
    assert data["versions"] == [0, 1, 2]
    assert data["keys"] == {"optim.lr": [0.1, 0.01, 0.001], "trainer.max_steps": [100, 200, 100]}
    assert data["best"][1] == {"val_loss": 0.3, "step": 20}
    # two versions keep the familiar shape
    assert run("diff", str(reg.root), "0", "1")[1].splitlines()[0] == "optim.lr: 0.1 -> 0.01"
    code, _, err = run("diff", str(reg.root), "0", "7")
    assert code == 3 and "version 7 does not exist" in one_error_line(err)
    code, _, err = run("diff", str(reg.root), "0")
    assert code == 2 and "at least two versions" in one_error_line(err)


def test_note_and_status(vk_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = _experiment(tmp_path / "exp", vk_uri)
    run = cli(capsys, vk_uri)
    root = str(reg.root)
    assert run("note", root, "1", "best lr so far")[:2] == (0, "noted version 1\n")
    assert reg.get(1).record["note"] == "best lr so far"
    assert json.loads(run("show", root, "1", "--json")[1])["note"] == "best lr so far"
    assert "best lr so far" in run("list", root)[1].splitlines()[2]
    assert json.loads(run("list", root, "--json")[1])[1]["note"] == "best lr so far"
    assert run("note", f"{root}@1", "")[:2] == (0, "cleared the note of version 1\n")
    assert reg.get(1).record["note"] is None

    # version 2 was allocated by this (live) process: like a shell script closing its own
    reg.update(2, pid=os.getppid())
    assert run("status", root, "2", "failed", "--error", "oom")[:2] == (0, "version 2: failed\n")
    info = reg.get(2)
    assert (info.status, info.error) == ("failed", "oom") and info.ended_at
    code, _, err = run("status", root, "2", "completed")
    assert code == 2 and "already failed; use --force" in one_error_line(err)
    assert run("status", root, "2", "completed", "--force")[0] == 0
    n = reg.allocate().version  # running in this live process, not the caller's shell
    code, _, err = run("status", root, str(n), "completed")
    assert code == 2 and f"live process {os.getpid()}" in one_error_line(err)
    assert reg.get(n).status == "running", "a refusal changes nothing"
    code, _, err = run("status", root, str(n), "running")
    assert code == 2 and "expected one of completed, failed, interrupted" in one_error_line(err)
    code, _, err = run("status", root, "99", "failed")
    assert code == 3
    code, _, err = run("note", root, "1", "x" * 10_001)
    assert code == 2 and "at most 10000" in one_error_line(err)
    code, _, err = run("note", root, "1", "\x1b[31mred")
    assert code == 2 and "control characters" in one_error_line(err)
    before = reg.get(1).record
    # Bytes that were not UTF-8 on the command line arrive as lone surrogates.
    code, _, err = run("note", root, "1", b"bad\xffnote".decode("utf-8", "surrogateescape"))
    assert code == 2 and "must be UTF-8 text" in one_error_line(err)
    with pytest.raises(BackendError, match="cannot be stored as UTF-8"):
        reg.update(1, note="a\ud800b")  # the same through the API, for any text field
    assert reg.get(1).record == before, "a refusal changes nothing"
    assert run("note", root, "1", "two\nlines")[0] == 0
    assert "two lines" in run("list", root)[1].splitlines()[2], "one line per version"


def test_shell_script_allocate_then_status(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    script = (
        f'set -e\nN=$("{sys.executable}" -m versionkit allocate "{root}" --json '
        f'| "{sys.executable}" -c "import json,sys; print(json.load(sys.stdin)[\'version\'])")\n'
        f'"{sys.executable}" -m versionkit status "{root}" "$N" completed\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "version 0: completed\n"
    assert Registry(root).get(0).status == "completed"
