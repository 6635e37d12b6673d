"""One exit-code table for every CLI (issue 10): 0 ok, 2 usage or bad input, 3 not found,
1 anything else. The table is in versionkit/errors.py and README.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from versionkit import errors
from versionkit.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def test_error_classes_follow_the_table() -> None:
    assert (errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_USAGE,
            errors.EXIT_NOT_FOUND) == (0, 1, 2, 3)
    assert errors.ConfigError("x").exit_code == 2
    assert errors.UnknownBackendError("x").exit_code == 2
    assert errors.VersionNotFoundError("x").exit_code == 3
    for cls in (errors.RegistryError, errors.CorruptStateError, errors.LockTimeout,
                errors.BackendError, errors.DiskFullError):
        assert cls("x").exit_code == 1, cls


def test_readme_states_the_same_table() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| ([0-3]) \| ([^|]+) \|", text, flags=re.MULTILINE))
    assert rows.keys() == {"0", "1", "2", "3"}
    assert rows["2"].startswith("usage or bad input") and rows["3"].startswith("not found")


def versionkit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "versionkit", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    reg = Registry(tmp_path / "exp")
    reg.allocate(config={"x": 1})
    reg.allocate(config={"x": 2})
    return tmp_path / "exp"


def test_show_and_diff_of_a_missing_version_exit_3(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from versionkit import cli

    done = versionkit("diff", str(root), "0", "7")  # the real entry point, once
    assert done.returncode == 3, done.stderr
    assert done.stderr == f"error: version 7 does not exist in {root} (known versions: 0, 1)\n"
    assert cli.main(["show", str(root), "7"]) == 3
    assert cli.main(["diff", str(root), "7", "1"]) == 3
    assert cli.main(["diff", str(root), "0", "1"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_best_with_no_checkpoint_exits_3(root: Path) -> None:
    done = versionkit("best", str(root))
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_usage_mistakes_exit_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from versionkit import cli

    for args in (["show", str(root), "-1"], ["list", str(root), "--backend", "nosuch://x"],
                 ["nosuchcommand"]):
        assert cli.main(args) == 2, args


def test_fractalgen_clis_follow_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen import sample
    from fractalgen.train import main

    out = ["--experiment.output_root", str(tmp_path)]
    assert main([*out, "--lr", "nan"]) == 2
    assert main([*out, "--config", str(tmp_path / "nope.yaml")]) == 2
    assert main([*out, "--resume", str(tmp_path / "nope.ckpt")]) == 3
    assert main([*out, "--print_config"]) == 0
    assert sample.main(["--checkpoint", str(tmp_path / "nope.ckpt")]) == 3
    with pytest.raises(SystemExit) as info:
        sample.main(["--checkpoint", "x", "--seed", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
