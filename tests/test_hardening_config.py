"""Config and flag hardening (issue 10, "Config and flags"): no infinity or nan where a
number is meant, clear messages for the usual mistakes, --config only reads a regular
file of bounded size."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field

from fractalgen.config import TrainConfig, parse_train_args
from versionkit.config import ConfigModel, ConfigSection, load_config, load_yaml_text
from versionkit.errors import ConfigError


def error(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_train_args(argv)
    return str(info.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--opening_temperature", "0"], "sampling.opening_temperature: expected greater than 0"),
        (["--opening_steps", "-1"], "sampling.opening_steps: expected greater than or equal to 0"),
        (["--opening_steps", "1.5"], "sampling.opening_steps: expected "),
    ],
)
def test_opening_fields_refuse_what_sampling_would(argv: list[str], expected: str) -> None:
    assert error(argv).startswith(expected)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--lr", "1e999"], "optim.lr"),
        (["--weight_decay", "1e999"], "optim.weight_decay"),
        (["--min_lr", "1e999"], "optim.min_lr"),
        (["--base_lr", ".inf"], "optim.base_lr"),
        (["--r_weight", ".inf"], "model.r_weight"),
        (["--sampling.cfg", ".inf"], "sampling.cfg"),
        (["--sampling.temperature", ".inf"], "sampling.temperature"),
        (["--sampling.opening_temperature", ".inf"], "sampling.opening_temperature"),
        (["--grad_clip", ".inf"], "optim.grad_clip"),
        (["--betas", "0.9,.nan"], "optim.betas[1]"),
        (["--limit_val_batches", ".nan"], "trainer.limit_val_batches"),
    ],
)
def test_infinity_and_nan_are_refused(argv: list[str], field: str) -> None:
    message = error(argv)
    assert message.startswith(f"{field}: expected ")
    assert "finite number" in message and f"from flag {' '.join(argv)}" in message


def test_infinity_in_a_yaml_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: .inf\n")
    message = error(["--config", str(path)])
    assert message == (
        f"optim.lr: expected a finite number, given .inf (at {path}:2:3); infinity is not "
        "allowed here; give a finite number (a number beyond about 1.8e308 reads as infinity)"
    )


class Opt(ConfigModel):
    ratio: float = 0.5
    bound: float = Field(math.inf, allow_inf_nan=True)  # the schema says otherwise
    pairs: list[tuple[float, float]] = Field(default_factory=list)


class Outer(ConfigModel):
    inner: Opt = Field(default_factory=Opt)


def test_every_config_model_refuses_inf_nan_by_default() -> None:
    for text in ("ratio: .nan", "ratio: -.inf", "pairs: [[1, .inf]]"):
        with pytest.raises(ConfigError, match="finite number"):
            load_yaml_text(Opt, text)
    with pytest.raises(ConfigError, match=r"inner\.ratio: expected a finite number"):
        load_yaml_text(Outer, "inner:\n  ratio: .inf\n")
    assert load_yaml_text(Opt, "bound: -.inf").bound == -math.inf
    assert math.isnan(load_config(Opt, ["--bound", ".nan"]).config.bound)
    assert issubclass(Opt, ConfigSection)


def test_inf_typed_as_a_word_is_explained_not_unquoted() -> None:
    message = error(["--lr", "inf"])
    assert "remove the quotes" not in message
    assert message.endswith("infinity and nan are not allowed here; give a finite number")
    with pytest.raises(ConfigError) as info:
        load_config(Opt, ["--bound", "inf"])
    assert str(info.value).endswith("YAML writes infinity as .inf or -.inf, and nan as .nan")
    # a quoted number is still the quoted-number hint
    assert error(["--lr", "'0.1'"]).endswith("remove the quotes to make it a number")


def test_many_keys_name_the_real_limit_not_an_alias_bomb() -> None:
    from versionkit._yaml import MAX_NODES

    text = "".join(f"k{i}: {i}\n" for i in range(150_001))
    with pytest.raises(ConfigError) as info:
        load_yaml_text(Opt, text)
    message = str(info.value)
    assert "alias" not in message
    assert f"the config holds more than {MAX_NODES} values (keys, items and scalars)" in message
    bomb = "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 300) + "]\n"
    with pytest.raises(ConfigError, match=r"values after expanding aliases \(\*name\)"):
        load_yaml_text(Opt, bomb)


@pytest.fixture
def alarm() -> Iterator[None]:
    # a regression here blocks forever: turn that into a failure
    def fail(*_: object) -> None:
        raise AssertionError("reading --config blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_config_must_be_a_regular_file(tmp_path: Path, alarm: None) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert error(["--config", str(fifo)]) == (
        f"config file {fifo} is a named pipe; expected a regular YAML file"
    )
    for device in ("/dev/zero", "/dev/urandom"):
        if os.path.exists(device):
            assert error(["--config", device]) == (
                f"config file {device} is a character device; expected a regular YAML file"
            )


def test_config_over_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from versionkit import _yaml

    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" * 100)
    monkeypatch.setattr(_yaml, "MAX_BYTES", 64)
    message = error(["--config", str(path)])
    assert message == f"config file {path} is 500 bytes; the limit is 64"


def test_train_config_defaults_are_finite() -> None:
    assert TrainConfig().optim.lr == 1e-3


# ------------------------------------------------------------- fractalgen's bounds


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--num_workers", "100000"], "data.num_workers: expected at most {workers} (4 per "
         "CPU on this machine, which has {cpus}, and at least 32: each worker is a process "
         "holding a copy of the data set), given 100000 (from flag --num_workers 100000)"),
        (["--seed", "99999999999999999999"], "experiment.seed: expected at most 4294967295 "
         "(seeds are in [0, 2**32): random generators take 32-bit seeds), given "
         "99999999999999999999 (from flag --seed 99999999999999999999)"),
        (["--sampling.num_images", "100000000000"], "sampling.num_images: expected at most "
         "1024 (the validation grid is one image; sample more with inference.py), given "
         "100000000000 (from flag --sampling.num_images 100000000000)"),
        (["--embed_dim_list", "1000000000,32,16"], "model.embed_dim_list: expected each at "
         "most 65536 (a wider transformer does not fit in memory), given [1000000000, 32, "
         "16] (from flag --embed_dim_list 1000000000,32,16)"),
        (["--train_batch_size", "10000000"], "data.train_batch_size: expected at most 65536"),
        (["--max_steps", "1" + "0" * 15], "trainer.max_steps: expected at most 1000000000000"),
        (["--save_top_k", "1000000"], "trainer.save_top_k: expected at most 10000"),
        (["--num_classes", "10000000"], "data.num_classes: expected at most 1000000"),
        (["--img_size_list", "65536,2,1"], "model.img_size_list: expected each at most 4096"),
    ],
)
def test_size_like_fields_are_bounded_with_a_reason(argv: list[str], expected: str) -> None:
    from fractalgen.limits import cpu_count, max_workers

    message = error(argv)
    assert message.startswith(expected.format(workers=max_workers(), cpus=cpu_count()))


def test_bounds_are_inclusive() -> None:
    from fractalgen import limits

    config = parse_train_args(["--seed", str(2**32 - 1), "--num_workers",
                               str(limits.max_workers()), "--experiment.name",
                               "n" * 128]).config
    assert config.experiment.seed == 2**32 - 1
    assert error(["--num_workers", str(limits.max_workers() + 1)]).startswith(
        "data.num_workers: expected at most")
    assert limits.max_workers() == max(32, 4 * limits.cpu_count())
    assert "experiment.name: expected a name of at most 128 characters, not 129" in error(
        ["--experiment.name", "n" * 129])


def test_a_model_that_cannot_fit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from fractalgen import config as config_module
    from fractalgen.limits import estimate_parameters, host_memory_bytes

    memory = host_memory_bytes()
    assert memory is not None and memory > 2**30
    message = error(["--embed_dim_list", "65536,32,16", "--num_blocks_list", "4096,1,1"])
    assert message.startswith("model: the model has at least 2.11e+14 parameters")
    assert "more than this machine's" in message and "could not even be built" in message
    assert "model.embed_dim_list: from flag --embed_dim_list 65536,32,16" in message
    # the same check against a small machine: the default model needs ~0.5 MB
    monkeypatch.setattr(config_module, "host_memory_bytes", lambda: 100_000)
    assert error(["--embed_dim_list", "64,32,16"]).startswith(
        "model: the model has at least 1.14e+05 parameters")
    monkeypatch.setattr(config_module, "host_memory_bytes", lambda: None)  # unknown: allowed
    assert parse_train_args([]).config.model.embed_dim_list == [64, 32, 16]
    assert estimate_parameters([1024, 512, 128], [32, 8, 3]) == 428_408_832


def test_the_parameter_estimate_is_a_lower_bound() -> None:
    torch = pytest.importorskip("torch")
    from fractalgen.limits import estimate_parameters
    from fractalgen.model import build_model

    del torch
    for dims, blocks in (([64, 32, 16], [2, 1, 1]), ([96, 48, 16], [3, 2, 1])):
        config = TrainConfig.model_validate(
            {"model": {"embed_dim_list": dims, "num_blocks_list": blocks}}
        )
        model = build_model(config.model.model_dump(), in_channels=1, num_classes=10)
        real = sum(p.numel() for p in model.parameters())
        estimate = estimate_parameters(dims, blocks)
        assert estimate <= real < 2 * estimate


def test_refusals_happen_before_a_version_is_allocated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen.train import main

    root = ["--experiment.output_root", str(tmp_path / "out")]
    for argv in (["--experiment.name", "x" * 300], ["--num_workers", "100000"],
                 ["--embed_dim_list", "65536,32,16", "--num_blocks_list", "4096,1,1"],
                 ["--lr", "1e999"], ["--seed", "99999999999999999999"]):
        assert main([*root, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and "OSError" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--cfg", "nan"], "argument --cfg: expected a finite number, given 'nan'"),
        (["--cfg", "1e999"], "argument --cfg: expected a finite number, given '1e999'"),
        (["--temperature", "inf"], "argument --temperature: expected a finite number"),
        (["--seed", "999999999999999999999999"], "argument --seed: expected a seed in "
         "[0, 2**32)"),
        (["--seed", "-1"], "argument --seed: expected a seed in [0, 2**32)"),
        (["--num_images", "100000000000"], "argument --num_images: expected 1 to 100000 "
         "images"),
    ],
)
def test_inference_flags_are_finite_and_bounded(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen import sample

    with pytest.raises(SystemExit) as info:
        sample.main(["--checkpoint", "x.ckpt", *argv])
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_file_that_is_not_a_config_is_not_echoed_whole(tmp_path: Path) -> None:
    from versionkit._report import MAX_SHOWN

    path = tmp_path / "status"
    path.write_text("".join(f"Key{i}: {i}\n" for i in range(59)))
    message = error(["--config", str(path)])
    lines = message.splitlines()
    assert lines[0] == "59 problems in the config:"
    assert len(lines) == 1 + MAX_SHOWN + 1 and lines[-1] == f"  ... and {59 - MAX_SHOWN} more"


def test_bundled_recipes_load_on_a_one_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    # the paper's recipes ask for 8 workers; a laptop must still load them (inference)
    from fractalgen import limits
    from versionkit.config import load_yaml_config

    monkeypatch.setattr(limits, "cpu_count", lambda: 1)
    root = Path(__file__).resolve().parents[1] / "config"
    config = load_yaml_config(TrainConfig, root / "fractalmar_in64.yaml")
    assert config.data.num_workers == 8
    assert "expected at most 32" in error(["--num_workers", "33"])
