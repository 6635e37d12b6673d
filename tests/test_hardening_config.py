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
    ("argv", "field"),
    [
        (["--lr", "1e999"], "optim.lr"),
        (["--weight_decay", "1e999"], "optim.weight_decay"),
        (["--min_lr", "1e999"], "optim.min_lr"),
        (["--base_lr", ".inf"], "optim.base_lr"),
        (["--r_weight", ".inf"], "model.r_weight"),
        (["--sampling.cfg", ".inf"], "sampling.cfg"),
        (["--sampling.temperature", ".inf"], "sampling.temperature"),
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
