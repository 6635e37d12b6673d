"""fractalgen.sample: picking checkpoints, writing PNGs, and refusing bad or unsafe files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_train_helpers import FILTERS, REPO, train_tiny

from fractalgen import sample
from versionkit.registry import Registry
from versionkit.run import RUN_ENV

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 4-step tiny run validated at steps 2 and 4: ``<dir>/outputs/tiny/checkpoints/
    version_0`` with two step checkpoints of different val_loss, and last.ckpt."""
    yield train_tiny(tmp_path_factory.mktemp("trained"), 4)


def _ckpt(trained: Path) -> Path:
    return next((trained / "checkpoints" / "version_0").glob("step_*.ckpt"))


def test_folders_and_best_pick_the_best_checkpoint_not_the_worst(trained: Path) -> None:
    reg = Registry(trained)
    scored = [c for c in reg.checkpoints(0) if "val_loss" in c.metrics]
    by_loss = sorted(scored, key=lambda c: c.metrics["val_loss"])
    assert len(by_loss) == 2 and by_loss[0].metrics["val_loss"] < by_loss[1].metrics["val_loss"]
    best = by_loss[0].path
    version_dir = trained / "checkpoints" / "version_0"
    old = Path.cwd()
    os.chdir(trained.parent.parent)
    try:
        for target in (str(version_dir), str(trained), "outputs/tiny@best", "outputs/tiny@0"):
            path, version = sample.pick_checkpoint(target)
            assert (path.resolve(), version) == (best.resolve(), 0), target
        # A file is taken as it is, and last.ckpt is not mistaken for the best.
        last = version_dir / "last.ckpt"
        assert sample.pick_checkpoint(str(last)) == (last, 0)
    finally:
        os.chdir(old)


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unconditional_and_class_sampling_write_valid_pngs(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "uncond"
    rc = sample.main(
        [
            "--checkpoint",
            str(_ckpt(trained)),
            "--mode",
            "unconditional",
            "--num_images",
            "3",
            "--output_dir",
            str(out),
            "--num_iter",
            "1,1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "✓ Experiment version: 0" in text
    assert f"✓ Config: {trained / 'checkpoints' / 'version_0' / 'config.yaml'}" in text
    files = sorted(p.name for p in out.iterdir())
    assert files == ["00000.png", "00001.png", "00002.png", "grid.png"]
    for name in files:
        with Image.open(out / name) as img:
            img.verify()
    with Image.open(out / "00000.png") as img:
        assert img.size == (8, 8) and img.mode == "L"

    out = tmp_path / "cls"
    rc = sample.main(
        [
            "--checkpoint",
            str(trained / "checkpoints" / "version_0"),
            "--classes",
            "3,5",
            "--num_images",
            "4",
            "--output_dir",
            str(out),
            "--batch_size",
            "3",
            "--num_iter",
            "1,1",
            "--temperature",
            "0.9",
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in out.glob("0*.png"))
    assert names == ["00000_class3.png", "00001_class3.png", "00002_class5.png", "00003_class5.png"]


def test_same_seed_same_images(trained: Path, tmp_path: Path) -> None:
    args = [
        "--checkpoint",
        str(trained),
        "--num_images",
        "2",
        "--classes",
        "1",
        "--num_iter",
        "1,1",
    ]
    assert sample.main([*args, "--output_dir", str(tmp_path / "a")]) == 0
    assert sample.main([*args, "--output_dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sample.main(["--checkpoint", str(tmp_path / "nope.ckpt")]) == 3
    assert "no such file" in _err(capsys)
    assert sample.main(["--checkpoint", f"{tmp_path}@best"]) == 3
    assert "no experiment folder" in _err(capsys)


def test_truncated_checkpoint(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _ckpt(trained).read_bytes()
    bad = tmp_path / "trunc.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    assert sample.main(["--checkpoint", str(bad), "--output_dir", str(tmp_path / "o")]) == 1
    assert "not a readable checkpoint" in _err(capsys)


def test_checkpoint_of_another_model(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = torch.load(_ckpt(trained), weights_only=True)
    blob["hyper_parameters"]["config"]["model"]["embed_dim_list"] = [32, 8, 8]
    other = tmp_path / "other.ckpt"
    torch.save(blob, other)
    assert sample.main(["--checkpoint", str(other), "--output_dir", str(tmp_path / "o")]) == 1
    assert "do not fit the model" in _err(capsys)

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    assert sample.main(["--checkpoint", str(plain), "--output_dir", str(tmp_path / "o")]) == 1
    assert "not a fractalgen checkpoint" in _err(capsys)


class _Evil:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Evil(marker)}, evil)
    legacy = tmp_path / "evil_legacy.ckpt"
    torch.save({"x": _Evil(marker)}, legacy, _use_new_zipfile_serialization=False)
    for path in (evil, legacy):
        rc = sample.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "o")])
        assert rc == 1
        err = _err(capsys)
        assert "refusing to load" in err and "arbitrary unpickling" in err
        assert not marker.exists(), "the malicious payload ran"


def test_output_dir_not_writable(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = sample.main(["--checkpoint", str(_ckpt(trained)), "--output_dir", str(blocker / "sub")])
    assert rc == 2
    assert "cannot write there" in _err(capsys)


def test_output_dir_read_only(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As root (CI) chmod cannot make a folder read-only: fail the writes into it the way
    # a read-only folder does for a normal user.
    ro = tmp_path / "ro"
    ro.mkdir()
    real_write = Path.write_bytes

    def refuse(self: Path, data: bytes) -> int:
        if self.parent == ro:
            raise PermissionError(13, "Permission denied", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    rc = sample.main(["--checkpoint", str(_ckpt(trained)), "--output_dir", str(ro)])
    assert rc == 2
    err = _err(capsys)
    assert err.startswith(f"error: --output_dir {ro}: cannot write there (Permission denied)")
    assert list(ro.iterdir()) == []


def test_sampling_imports_no_lightning(trained: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from fractalgen import sample; "
        f"rc = sample.main(['--checkpoint', {str(_ckpt(trained))!r}, '--num_images', '1', "
        f"'--num_iter', '1,1', '--output_dir', {str(tmp_path / 'o')!r}]); "
        "print(sorted(m for m in sys.modules if 'lightning' in m)); sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o" / "grid.png").is_file()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--classes", "12"], "out of range"),
        (["--classes", "a,b"], "is not an integer"),
        (["--mode", "unconditional", "--classes", "1"], "only applies to --mode class"),
        (["--num_iter", "1,2,3"], "expected 2 positive integer"),
        (["--temperature", "0"], "must be above 0"),
        (["--opening_temperature", "0"], "--opening_temperature 0.0: must be above 0"),
        (["--opening_steps", "-1"], "--opening_steps -1: must be at least 0"),
        (["--opening_steps", "2"], "--opening_steps applies to --mode unconditional only"),
        (["--mode", "class", "--opening_temperature", "1.2"],
         "--opening_temperature applies to --mode unconditional only"),
    ],
)
def test_bad_arguments_exit_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    rc = sample.main(["--checkpoint", str(_ckpt(trained)), "--output_dir", str(tmp_path), *extra])
    assert rc == 2
    assert needle in _err(capsys)


def test_help_explains_temperature(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        sample.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "DIVIDED" in out and "--checkpoint" in out and "--mode" in out
