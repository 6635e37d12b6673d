"""examples/own_module.py: a user's own module in either namespace, laid out like main.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from lightning_support import FILTERS

from versionkit.registry import Registry

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_module.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("own_module", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the config's annotations there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_both_namespaces_leave_the_main_py_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    example = _example()
    for n, lightning in enumerate(("lightning", "pytorch_lightning")):
        argv = ["--lightning", lightning, "--root", "out/digits", "--max_steps", "20",
                "--val_every_n_steps", "10", "--save_top_k", "1"]
        assert example.main(argv) == 0
        out = capsys.readouterr().out
        assert f"✓ Experiment version: {n}\n" in out
        assert f"✓ Checkpoint dir: out/digits/checkpoints/version_{n}\n" in out
        assert f"✓ Config saved to: out/digits/checkpoints/version_{n}/config.yaml\n" in out
        assert f"✓ Best checkpoint: out/digits/checkpoints/version_{n}/step_000000" in out
    root = tmp_path / "out/digits"
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["version_0", "version_1"]
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["version_0", "version_1"]
    for n in (0, 1):
        folder = root / "checkpoints" / f"version_{n}"
        names = sorted(p.name for p in folder.iterdir())
        steps = [x for x in names if x.startswith("step_")]
        assert names == sorted(["config.yaml", "last.ckpt", *steps]) and len(steps) == 1
        assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 20
        assert list((root / "logs" / f"version_{n}").glob("events.out.tfevents.*"))
        assert Registry(root).get(n).status == "completed"


def test_a_bad_namespace_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _example().main(["--lightning", "keras", "--root", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --lightning keras: expected one of pytorch_lightning, lightning"]
    assert not (tmp_path / "x").exists()
