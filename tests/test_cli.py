"""The ``versionkit`` command line: output shapes, human tables, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from versionkit.backends.memory import MemoryBackend
from versionkit.cli import main
from versionkit.registry import Registry, parse_checkpoint_name

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "outputs" / "exp"


def make_ckpt(reg: Registry, n: int, name: str) -> Path:
    """A checkpoint file, recorded without metrics: ``best`` reads them from its name."""
    path = reg.checkpoint_dir(n) / name
    path.write_bytes(b"x")
    reg.add_checkpoint(n, path, step=parse_checkpoint_name(name)[0] or 0)
    return path


def test_allocate_creates_root_and_prints_json(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    code, out, _ = run(capsys, "allocate", str(root), "--json", "--seed", "5")
    assert code == 0
    data = json.loads(out)
    assert data["version"] == 0 and data["status"] == "running"
    assert Path(data["checkpoint_dir"]).is_dir() and Path(data["log_dir"]).is_dir()
    code, out, _ = run(capsys, "allocate", str(root))
    assert code == 0
    assert out.splitlines() == [
        "✓ Experiment version: 1",
        f"✓ Checkpoint dir: {root / 'checkpoints' / 'version_1'}",
        f"✓ Log dir: {root / 'logs' / 'version_1'}",
    ]
    info = Registry(root).get(0)
    assert info.seed == 5 and info.record["allocated_by"] == "versionkit allocate"
    assert not info.is_dead, "the calling shell (this test process) is still alive"


def test_list_json_and_table(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    root.mkdir(parents=True)
    code, out, _ = run(capsys, "list", str(root), "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = run(capsys, "list", str(root))
    assert code == 0 and out.strip() == f"no versions in {root}"

    reg = Registry(root)
    for _ in range(3):
        reg.allocate(config={"lr": 0.1})
    reg.set_status(0, "completed")
    reg.log_metrics(0, {"val_loss": 0.25}, step=10)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reg.update(2, pid=dead.pid)
    (root / "logs" / "version_7").mkdir()

    code, out, _ = run(capsys, "list", str(root), "--json")
    rows = json.loads(out)
    assert code == 0
    assert [(r["version"], r["status"]) for r in rows] == [
        (0, "completed"),
        (1, "running"),
        (2, "dead"),
        (7, "untracked"),
    ]
    assert rows[0]["metrics"] == {"val_loss": 0.25} and rows[2]["recorded_status"] == "running"

    code, out, _ = run(capsys, "list", str(root))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["VERSION", "STATUS", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["0", "completed"],
        ["1", "running"],
        ["2", "dead"],
        ["7", "untracked"],
    ]
    assert "0.25@10" in lines[1], "the last val_loss with its step"


def test_show(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    reg = Registry(root)
    config = {"a": 1, "model": {"dims": [8, 2], "head": None}}
    n = reg.allocate(config=config, command=["train.py", "--a", "1"], seed=3).version
    make_ckpt(reg, n, "step_00000010-val_loss_0.5000.ckpt")
    code, out, _ = run(capsys, "show", str(root), "0")
    assert code == 0
    assert "command         train.py --a 1" in out and "seed            3" in out
    assert "step_00000010-val_loss_0.5000.ckpt" in out and "val_loss=0.5" in out
    assert "\nconfig:\n  a: 1\n  model.dims: [8, 2]\n  model.head: null\n" in out
    code, out, _ = run(capsys, "show", str(root), "0", "--json")
    data = json.loads(out)
    assert data["version"] == 0 and data["config"] == config
    assert data["checkpoint_files"][0]["metrics"] == {"val_loss": 0.5}


def test_best(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    reg = Registry(root)
    for _ in range(2):
        reg.allocate()
    make_ckpt(reg, 0, "step_00000100-val_loss_0.3000.ckpt")
    good = make_ckpt(reg, 1, "step_00000200-val_loss_0.2000.ckpt")
    acc = make_ckpt(reg, 1, "last.ckpt")
    reg.add_checkpoint(1, acc, step=250, metrics={"acc": 0.9})
    code, out, _ = run(capsys, "best", str(root), "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["path"], data["version"], data["step"], data["val_loss"]) == (
        str(good),
        1,
        200,
        0.2,
    )
    code, out, _ = run(capsys, "best", str(root), "--metric", "acc", "--mode", "max", "--json")
    assert json.loads(out)["path"] == str(acc)
    code, out, _ = run(capsys, "best", str(root))
    assert code == 0 and out.splitlines()[0] == "best val_loss (min): 0.2"
    assert f"path: {good}" in out
    code, out, _ = run(capsys, "best", str(root), "--version", "0", "--json")
    assert json.loads(out)["version"] == 0
    code, _, err = run(capsys, "best", str(root), "--metric", "bleu")
    assert code == 3 and "no existing checkpoint" in one_error_line(err)
    code, _, err = run(capsys, "best", str(root), "--mode", "lowest")
    assert code == 2 and "invalid choice" in err


def test_diff(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    reg = Registry(root)
    reg.allocate(config={"optim": {"lr": 0.1}, "seed": 0, "old": 1})
    reg.allocate(config={"optim": {"lr": 0.2}, "seed": 0, "new": True})
    code, out, _ = run(capsys, "diff", str(root), "0", "1", "--json")
    assert code == 0
    assert json.loads(out) == {
        "optim.lr": {"old": 0.1, "new": 0.2},
        "old": {"old": 1},
        "new": {"new": True},
    }
    code, out, _ = run(capsys, "diff", str(root), "0", "1")
    assert out.splitlines() == [
        "optim.lr: 0.1 -> 0.2",
        "old: 1 -> (missing)",
        "new: (missing) -> true",
    ]
    code, out, _ = run(capsys, "diff", str(root), "1", "1")
    assert code == 0 and "same config" in out


def test_repair(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    reg = Registry(root)
    for _ in range(2):
        reg.allocate()
    code, out, _ = run(capsys, "repair", str(root))
    assert code == 0 and "nothing to repair" in out and "next version number: 2" in out
    (root / ".versionkit" / "next.json").write_text("{")
    code, _, err = run(capsys, "allocate", str(root))
    line = one_error_line(err)
    assert code == 1 and "corrupt" in line and f"versionkit repair {root}" in line
    code, out, _ = run(capsys, "repair", str(root), "--json")
    report = json.loads(out)
    assert code == 0 and report["next_number"] == 2 and report["actions"]
    code, out, _ = run(capsys, "allocate", str(root), "--json")
    assert json.loads(out)["version"] == 2


def test_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_schema_mod.py").write_text(
        textwrap.dedent(
            """
        from versionkit.config import ConfigModel

        class Cfg(ConfigModel):
            lr: float = 0.1
            steps: int = 10

        NotASchema = dict
        """
        )
    )
    (tmp_path / "broken_schema_mod.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run(capsys, "schema", "my_schema_mod:Cfg")
    schema = json.loads(out)
    assert code == 0 and "$schema" in schema
    assert {"lr", "steps", "schema_version"} <= set(schema["properties"])
    for target, expected in [
        ("my_schema_mod", "expected MODULE:Class"),
        ("no_such_module_xyz:Cfg", "cannot import module 'no_such_module_xyz'"),
        ("my_schema_mod:Missing", "has no attribute 'Missing'"),
        ("my_schema_mod:NotASchema", "is not a versionkit ConfigModel"),
        ("broken_schema_mod:Cfg", "importing module 'broken_schema_mod' failed: SyntaxError"),
    ]:
        code, _, err = run(capsys, "schema", target)
        assert code == 2 and expected in one_error_line(err)


def test_bad_input_errors(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, _, err = run(capsys, "list", str(root))
    assert code == 2 and f"experiment root {root} does not exist" in one_error_line(err)
    Registry(root).allocate()
    code, _, err = run(capsys, "list", str(root), "--backend", "nosuch://x")
    line = one_error_line(err)
    assert code == 2 and "'nosuch' is not one of" in line and "file" in line and "memory" in line
    code, _, err = run(capsys, "show", str(root), "5")
    assert code == 3 and "version 5 does not exist" in one_error_line(err)
    for bad in ("-1", "../0", "1.5", "0x1"):
        code, _, err = run(capsys, "show", str(root), bad)
        assert code == 2 and "expected a version number" in err
    code, _, err = run(capsys, "show", str(root / ".versionkit" / "next.json"), "0")
    assert code == 2 and "is not a folder" in one_error_line(err)
    code, _, err = run(capsys)
    assert code == 2 and "required" in err
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "allocate" in out


def test_backend_from_environment(
    capsys: pytest.CaptureFixture[str], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERSIONKIT_BACKEND", "memory://clitest")
    try:
        for expected in (0, 1):
            code, out, _ = run(capsys, "allocate", str(root), "--json")
            assert json.loads(out)["version"] == expected
        assert not (root / ".versionkit").exists()
        code, out, _ = run(capsys, "list", str(root), "--json", "--backend", "file")
        assert code == 0
        assert [r["status"] for r in json.loads(out)] == ["untracked", "untracked"]
    finally:
        MemoryBackend.reset("clitest")


def test_whole_process_list_stays_light(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    for _ in range(20):
        reg.allocate(config={"x": 1})
    code = textwrap.dedent(
        f"""
        import sys
        from versionkit.cli import main
        rc = main(["list", {str(reg.root)!r}])
        heavy = [m for m in ("torch", "pydantic", "yaml", "sqlalchemy", "filelock",
                             "importlib.metadata") if m in sys.modules]
        print("RESULT", rc, heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines()[-1] == "RESULT 0 []"
    assert len(done.stdout.splitlines()) == 22


def test_module_entry_point_exit_codes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "versionkit.cli", "show", str(tmp_path), "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 3  # not found
    assert (
        done.stderr.strip() == f"error: version 3 does not exist in {tmp_path} "
        "(it has no versions yet)"
    )


def test_best_finds_values_with_exponents_and_signs(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    reg = Registry(root)
    reg.allocate()
    tiny = make_ckpt(reg, 0, "epoch=3-val_loss=1.23e-04.ckpt")
    make_ckpt(reg, 0, "epoch=4-val_loss=2.5e-03.ckpt")
    code, out, err = run(capsys, "best", str(root), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["path"], data["val_loss"]) == (str(tiny), 1.23e-04)
    high = make_ckpt(reg, 0, "step=7-val_ll=-1.25.ckpt")
    make_ckpt(reg, 0, "step=8-val_ll=-3.5.ckpt")
    code, out, err = run(capsys, "best", str(root), "--metric", "val_ll", "--mode", "max", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["path"], data["val_ll"], data["step"]) == (str(high), -1.25, 7)
    code, out, _ = run(capsys, "show", str(root), "0", "--json")
    shown = {Path(c["path"]).name: c["metrics"] for c in json.loads(out)["checkpoint_files"]}
    assert shown["epoch=3-val_loss=1.23e-04.ckpt"] == {"val_loss": 1.23e-04}
    assert shown["step=8-val_ll=-3.5.ckpt"] == {"val_ll": -3.5}


def test_json_output_is_strict_json_even_with_nan_metrics(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    reg = Registry(root)
    n = reg.allocate().version
    reg.log_metrics(n, {"val_loss": float("nan"), "train/loss": float("inf")}, step=1)
    code, out, _ = run(capsys, "list", str(root), "--json")
    assert code == 0
    # json.loads would accept NaN; a strict parser must too.
    rows = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert rows[0]["metrics"] == {"val_loss": None, "train/loss": None}


def test_repair_fixes_a_record_without_its_version(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    reg = Registry(root)
    for _ in range(2):
        reg.allocate()
    (root / ".versionkit" / "versions" / "0.json").write_text('{"status": "completed"}')
    code, _, err = run(capsys, "list", str(root))
    assert code == 1 and "versionkit repair" in one_error_line(err)
    code, out, err = run(capsys, "repair", str(root), "--json")
    assert code == 0, err
    code, out, err = run(capsys, "list", str(root), "--json")
    assert code == 0, err
    assert [row["version"] for row in json.loads(out)] == [0, 1]
    code, out, _ = run(capsys, "allocate", str(root), "--json")
    assert json.loads(out)["version"] == 2
