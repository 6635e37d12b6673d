"""fractalgen-eval: NLL over several draws, the digits judge, the registry record, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_helpers import FILTERS, REPO, train_tiny

from fractalgen import eval as fg_eval
from fractalgen.data import build_datasets
from fractalgen.sample import load_checkpoint
from versionkit.registry import Registry

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-step tiny digits run: ``<dir>/outputs/tiny`` with version 0."""
    yield train_tiny(tmp_path_factory.mktemp("trained"), 2)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = fg_eval.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_json_figures_are_recorded_in_the_versions_record(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = trained / "checkpoints" / "version_0"
    before = Registry(trained).get(0).record
    code, out, _ = _run(
        capsys, "--checkpoint", str(version), "--nll-draws", "3", "--samples", "20",
        "--cfg", "1,3", "--json",
    )
    assert code == 0
    result = json.loads(out)  # one object, nothing else on stdout
    nll = result["nll_bpd"]
    assert len(nll["draws"]) == 3 and len(set(nll["draws"])) == 3  # independent draws
    assert nll["mean"] == pytest.approx(np.mean(nll["draws"]))
    assert nll["sd"] == pytest.approx(np.std(nll["draws"], ddof=1))
    digits = result["digits"]
    assert sorted(digits["conditional"]) == ["cfg1", "cfg3"]
    for row in digits["conditional"].values():
        assert len(row["per_class"]) == 10
        assert row["accuracy"] == pytest.approx(np.mean(row["per_class"]))  # 2 per class
    hist = digits["unconditional"]["histogram"]
    assert len(hist) == 10 and sum(hist) == pytest.approx(1.0)
    assert digits["unconditional"]["min_class_fraction"] == min(hist)
    assert digits["real_top_prob"] > 0.85  # the judge is sure of real digits
    assert result["settings"]["num_iter"] == [2, 2]  # the checkpoint's sampling config
    record = Registry(trained).get(0).record
    metrics = record["metrics"]
    assert metrics["eval/nll_bpd"] == pytest.approx(nll["mean"])
    assert metrics["eval/cfg3/accuracy"] == pytest.approx(digits["conditional"]["cfg3"]["accuracy"])
    assert metrics["eval/uncond/class_0"] == pytest.approx(hist[0])
    assert metrics["val_loss"] == before["metrics"]["val_loss"]  # training's figures stay
    assert record["metrics_step"] == before["metrics_step"]
    assert record["eval"]["checkpoint"] == result["checkpoint"]
    # The table: the same figures for a reader.
    code, out, _ = _run(
        capsys, "--checkpoint", str(version), "--nll-draws", "2", "--samples", "10",
        "--cfg", "2", "--no-record",
    )
    assert code == 0
    assert "bits/dim (mean ± sd of 2 draws)" in out and "\ncfg2 " in out
    assert "histogram" in out and "real validation digits" in out


def test_the_judge_scores_what_the_samples_are(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples replaced by real validation digits: of the asked class -> accuracy near 1,
    of the next class -> near 0; all one digit unconditionally -> a one-bar histogram."""
    loaded = load_checkpoint(next((trained / "checkpoints" / "version_0").glob("step_*.ckpt")))
    _, val_set, _ = build_datasets(loaded.config.data, 8, seed=0)
    by_class: dict[int, list[torch.Tensor]] = {}
    for i in range(len(val_set)):  # type: ignore[arg-type]
        image, label = val_set[i]
        by_class.setdefault(label, []).append(image)
    shift = {"value": 0}
    seen: list[float] = []

    def fake_sample(n: int, labels: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(kwargs["filter_threshold"])
        wanted = [3] * n if labels is None else [(int(c) + shift["value"]) % 10 for c in labels]
        picks = [by_class[c][k % len(by_class[c])] for k, c in enumerate(wanted)]
        return (torch.stack(picks) * 255).round().to(torch.uint8)

    monkeypatch.setattr(loaded.model, "sample", fake_sample)
    settings = fg_eval.EvalSettings(nll_draws=0, samples=40, cfgs=[1.0])
    right = fg_eval.evaluate(loaded, settings)
    assert right["nll_bpd"] is None
    assert right["digits"]["conditional"]["cfg1"]["accuracy"] >= 0.9
    uncond = right["digits"]["unconditional"]
    assert uncond["histogram"][3] >= 0.9 and uncond["min_class_fraction"] == 0.0
    assert set(seen) == {loaded.config.sampling.filter_threshold}  # the config's, 1e-4
    shift["value"] = 1
    wrong = fg_eval.evaluate(loaded, settings)
    assert wrong["digits"]["conditional"]["cfg1"]["accuracy"] <= 0.1


def test_only_the_unconditional_samples_open(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_checkpoint(next((trained / "checkpoints" / "version_0").glob("step_*.ckpt")))
    calls: set[tuple[bool, int, float]] = set()

    def fake_sample(n: int, labels: Any, **kwargs: Any) -> torch.Tensor:
        calls.add((labels is None, kwargs["opening_steps"], kwargs["opening_temperature"]))
        return torch.zeros((n, 1, 8, 8), dtype=torch.uint8)

    monkeypatch.setattr(loaded.model, "sample", fake_sample)
    settings = fg_eval.EvalSettings(nll_draws=0, samples=10, cfgs=[1.0, 3.0],
                                    opening_steps=3, opening_temperature=1.5)
    result = fg_eval.evaluate(loaded, settings)
    assert calls == {(False, 0, 1.0), (True, 3, 1.5)}
    assert (result["settings"]["opening_steps"], result["settings"]["opening_temperature"]) == (
        3, 1.5)
    table = fg_eval.format_table({**result, "checkpoint": "c.ckpt", "version": 0, "step": 2})
    assert "unconditional: the first 3 top-level steps at 1.5" in table


def test_image_folders_get_the_nll_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fractalgen.config import TrainConfig
    from fractalgen.module import FractalGenModule

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for k in range(3):
            pixels = np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{k}.png")
    config = TrainConfig.model_validate(
        {
            "data": {"dataset": "folder", "path": str(tmp_path / "data"), "channels": 3,
                     "num_classes": 2, "val_fraction": 0.5},
            "model": {"embed_dim_list": [16, 8, 8], "num_blocks_list": [1, 1, 1],
                      "num_heads_list": [2, 1, 1]},
        }
    )
    module = FractalGenModule(config.model_dump(mode="json"), in_channels=3, num_classes=2)
    ckpt = tmp_path / "folder.ckpt"
    torch.save(
        {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
         "global_step": 0},
        ckpt,
    )
    code, out, _ = _run(capsys, "--checkpoint", str(ckpt), "--nll-draws", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["digits"] is None and len(result["nll_bpd"]["draws"]) == 2
    assert result["version"] is None  # a loose file: nothing to record into
    code, out, _ = _run(capsys, "--checkpoint", str(ckpt), "--nll-draws", "1")
    assert code == 0 and "NLL only; FID needs Inception weights" in out


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["--checkpoint", "nowhere"], 3, "no such file or folder"),
        (["--checkpoint", "{root}", "--nll-draws", "-1"], 2, "--nll-draws -1"),
        (["--checkpoint", "{root}", "--samples", "-5"], 2, "--samples -5"),
        (["--checkpoint", "{root}", "--cfg", "two"], 2, "--cfg two: expected numbers"),
        (["--checkpoint", "{root}", "--cfg", "nan"], 2, "--cfg nan"),
        (["--checkpoint", "{root}", "--temperature", "0"], 2, "--temperature 0"),
        (["--checkpoint", "{root}", "--opening_temperature", "-1"], 2, "--opening_temperature -1"),
        (["--checkpoint", "{root}", "--opening_steps", "-2"], 2, "--opening_steps -2"),
        (["--checkpoint", "{root}", "--num_iter", "4,4,4"], 2, "--num_iter 4,4,4"),
        (["--checkpoint", "{text}"], 2, "is not a readable checkpoint"),
        (["--checkpoint", "{empty}"], 3, "has no versions yet"),
    ],
)
def test_mistakes_are_one_line_with_the_tables_exit_code(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    expected: str,
) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    before = Registry(trained).get(0).record
    places = {"root": str(trained), "text": str(text), "empty": str(empty)}
    args = [a.format(**places) for a in argv]
    for flag, value in (("--nll-draws", "1"), ("--samples", "0")):
        if flag not in args:  # keep a valid run short
            args += [flag, value]
    got, out, err = _run(capsys, *args)
    assert got == code, err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert out == ""
    assert Registry(trained).get(0).record == before  # a refusal writes nothing


def test_help_and_module_entry_point() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "fractalgen.eval", "--help"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 0
    assert "FID needs the Inception network's weights" in " ".join(proc.stdout.split())
    assert "--nll-draws" in proc.stdout and "--json" in proc.stdout
