"""Command-line flags: forms, precedence, controls, help, and one test per bad flag."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from versionkit.config import ConfigModel, ConfigSection, ControlFlag, load_config
from versionkit.errors import ConfigError


class Enc(ConfigSection):
    dim: int = Field(64, ge=1, description="Width of the encoder.")
    dropout: float = 0.1


class Dec(ConfigSection):
    dim: int = 32
    use_bias: bool = True


class Cfg(ConfigModel):
    name: str = Field("exp", description="Experiment name.")
    max_steps: int = Field(100, ge=1, description="Training steps.")
    lr: float = 1e-3
    verbose: bool = False
    maybe: int | None = 5
    path: Path | None = None
    sizes: list[int] = Field(default_factory=lambda: [8, 2, 1])
    betas: tuple[float, float] = (0.9, 0.95)
    enc: Enc = Field(default_factory=Enc)
    dec: Dec = Field(default_factory=Dec)
    opt_dec: Dec | None = None


CONTROLS = (
    ControlFlag("print_config", "print and exit", takes_value=False, default=False),
    ControlFlag("resume", "checkpoint to resume", default=None),
)


def load(*argv: str, **kw: Any) -> Cfg:
    return load_config(Cfg, list(argv), **kw).config


def error(*argv: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, list(argv), controls=CONTROLS, **kw)
    assert info.value.exit_code == 2
    return str(info.value)


# ------------------------------------------------------------- forms


def test_defaults_without_any_flag() -> None:
    assert load() == Cfg()


@pytest.mark.parametrize(
    "argv",
    [
        ["--enc.dim", "128"], ["--enc.dim=128"], ["--enc.dim", "0x80"],
    ],
)
def test_dotted_flag_forms(argv: list[str]) -> None:
    assert load(*argv).enc.dim == 128


def test_unique_bare_leaf_name() -> None:
    config = load("--max_steps", "7", "--dropout", "0.5", "--dec.use_bias", "false")
    assert config.max_steps == 7 and config.enc.dropout == 0.5 and config.dec.use_bias is False


def test_dashes_may_replace_underscores() -> None:
    assert load("--max-steps=9").max_steps == 9


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--verbose"], True), (["--verbose", "true"], True), (["--verbose", "false"], False),
        (["--verbose=true"], True), (["--verbose=False"], False), (["--no-verbose"], False),
        (["--no_verbose"], False), (["--verbose", "--no-verbose"], False),
    ],
)
def test_boolean_forms(argv: list[str], expected: bool) -> None:
    assert load(*argv).verbose is expected


def test_switch_followed_by_another_flag() -> None:
    config = load("--verbose", "--max_steps", "3")
    assert config.verbose is True and config.max_steps == 3


@pytest.mark.parametrize("text", ["1,2,3", "[1, 2, 3]", "[1,2,3]", " 1 , 2 , 3 "])
def test_list_forms(text: str) -> None:
    assert load("--sizes", text).sizes == [1, 2, 3]


def test_empty_list_and_tuple() -> None:
    assert load("--sizes", "[]").sizes == []
    assert load("--betas", "0.8,0.9").betas == (0.8, 0.9)


def test_null_for_optional_values() -> None:
    assert load("--maybe", "null").maybe is None
    assert load("--maybe=~").maybe is None
    assert load("--path", "runs/a").path == Path("runs/a")
    assert load("--opt_dec.dim", "3").opt_dec == Dec(dim=3)
    assert load("--opt_dec.dim", "3", "--opt_dec=null").opt_dec is None


def test_string_values_are_taken_verbatim() -> None:
    assert load("--name", "007").name == "007"
    assert load("--name", "yes").name == "yes"
    assert load("--name=a=b").name == "a=b"
    assert load("--name", '"null"').name == "null"
    assert load("--name=-starts-with-dash").name == "-starts-with-dash"


def test_negative_numbers_are_values_not_flags() -> None:
    assert load("--lr", "-1e-3").lr == -1e-3


def test_yaml_1_2_numbers_in_flags() -> None:
    config = load("--lr", "1e-4")
    assert config.lr == 1e-4 and isinstance(config.lr, float)
    assert load("--lr", "3").lr == 3.0


# ------------------------------------------------------------- precedence


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("max_steps: 50\nlr: 0.5\nenc: {dim: 16}\n")
    loaded = load_config(Cfg, ["--max_steps", "7", "--config", str(file)])
    config = loaded.config
    assert config.max_steps == 7  # flag beats file
    assert config.lr == 0.5  # file beats default
    assert config.enc.dim == 16 and config.enc.dropout == 0.1  # default fills the rest
    assert config.name == "exp"
    assert loaded.config_file == file
    assert loaded.config_text == file.read_text()
    assert loaded.flags == ["--max_steps", "7"]


def test_config_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text("max_steps: 5\n")
    loaded = load_config(Cfg, ["--config=~/c.yaml"])
    assert loaded.config.max_steps == 5 and loaded.config_file == tmp_path / "c.yaml"


def test_position_of_config_does_not_matter(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("max_steps: 50\nverbose: true\n")
    flags = ["--lr=0.25", "--no-verbose", "--enc.dim=8"]
    results = set()
    for position in range(len(flags) + 1):
        argv = [*flags[:position], "--config", str(file), *flags[position:]]
        results.add(load(*argv).model_dump_json())
    assert len(results) == 1
    assert load("--config", str(file), *flags) == Cfg(max_steps=50, lr=0.25, enc=Enc(dim=8))


def test_order_of_different_flags_does_not_matter() -> None:
    flags = [["--lr", "0.5"], ["--verbose"], ["--sizes", "4,1"], ["--dec.dim=2"]]
    configs = {load(*itertools.chain(*order)).model_dump_json()
               for order in itertools.permutations(flags)}
    assert len(configs) == 1


def test_the_last_of_repeated_flags_wins() -> None:
    assert load("--lr", "1", "--lr", "2").lr == 2.0


def test_flag_into_a_section_keeps_the_files_other_fields(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("enc: &e {dim: 16, dropout: 0.3}\n")
    config = load("--config", str(file), "--enc.dim", "4")
    assert config.enc == Enc(dim=4, dropout=0.3)


# ------------------------------------------------------------- controls and help


def test_controls_are_not_config_flags() -> None:
    loaded = load_config(Cfg, ["--print_config", "--resume", "ckpt/last.ckpt", "--lr", "2"],
                         controls=CONTROLS)
    assert loaded.controls == {"print_config": True, "resume": "ckpt/last.ckpt"}
    assert loaded.flags == ["--lr", "2"]
    defaults = load_config(Cfg, [], controls=CONTROLS).controls
    assert defaults == {"print_config": False, "resume": None}
    for argv, expected in ((["--print_config", "false"], False), (["--print_config=true"], True),
                           (["--print_config", "--no-print_config"], False)):
        assert load_config(Cfg, argv, controls=CONTROLS).controls["print_config"] is expected


def test_default_config_file_hook_is_used_without_config(tmp_path: Path) -> None:
    saved = tmp_path / "saved.yaml"
    saved.write_text("max_steps: 42\n")
    other = tmp_path / "other.yaml"
    other.write_text("max_steps: 11\n")
    calls: list[dict[str, Any]] = []

    def hook(controls: dict[str, Any]) -> Path | None:
        calls.append(controls)
        return saved if controls["resume"] else None

    loaded = load_config(Cfg, ["--resume", "x"], controls=CONTROLS, default_config_file=hook)
    assert loaded.config.max_steps == 42 and loaded.config_file == saved
    assert calls == [{"print_config": False, "resume": "x"}]
    assert load_config(Cfg, [], controls=CONTROLS, default_config_file=hook).config_file is None
    explicit = load_config(Cfg, ["--resume", "x", "--config", str(other)], controls=CONTROLS,
                           default_config_file=hook)
    assert explicit.config.max_steps == 11 and len(calls) == 2  # hook not asked


def test_help_lists_every_field_with_type_default_and_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(Cfg, ["--max_steps", "3", "--help"], prog="train.py",
                    description="Train a thing.", controls=CONTROLS)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: train.py [--config FILE]")
    assert "Train a thing." in out
    assert "--max_steps  int >= 1, default 100\n        Training steps.\n" in out
    assert "--enc.dim (or --dropout)" not in out
    assert "--enc.dropout (or --dropout)  float, default 0.1" in out
    assert "--enc.dim  int >= 1, default 64" in out  # 'dim' is ambiguous: no bare alias
    assert "\nfields:\n  --name  str, default exp\n" in out
    assert "--sizes  list[int], default [8, 2, 1]" in out
    assert "--opt_dec=null" in out
    assert "--resume VALUE" in out and "--print_config" in out
    assert "--path  path | null, default null" in out
    assert "--betas  tuple[float, float], default [0.9, 0.95]" in out


def test_help_wins_over_mistakes_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["-h"], ["--nope", "--help"], ["--max_steps", "x", "-h"]):
        with pytest.raises(SystemExit) as info:
            load_config(Cfg, argv)
        assert info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: ")


# ------------------------------------------------------------- one test per bad flag


def test_ambiguous_bare_flag_lists_full_names() -> None:
    message = error("--dim", "3")
    assert message == (
        "flag --dim is ambiguous: it names 3 fields; use the full name: --enc.dim, --dec.dim, "
        "--opt_dec.dim"
    )


def test_flag_without_value() -> None:
    assert error("--max_steps") == (
        "flag --max_steps needs a value (int), e.g. --max_steps=VALUE"
    )
    assert "flag --lr needs a value" in error("--lr", "--verbose")
    assert "flag --config needs a value" in error("--config")
    assert "flag --config needs a value" in error("--config=")
    assert "flag --resume needs a value" in error("--resume")


def test_unknown_flag_suggests() -> None:
    message = error("--max_step", "3")
    assert message.startswith("unknown flag --max_step; did you mean --max_steps?")
    assert "did you mean --enc.dropout" in error("--enc.dropot", "0.1")
    assert error("--zzz").startswith("unknown flag --zzz (")


def test_single_dash_and_positional_arguments() -> None:
    assert "unknown flag -x" in error("-x")
    assert "unexpected argument 'train'" in error("train")


def test_wrong_type_from_flag_names_the_flag() -> None:
    assert error("--max_steps", "ten") == (
        "max_steps: expected a valid integer, given 'ten' (from flag --max_steps ten)"
    )
    assert error("--max_steps=0") == (
        "max_steps: expected greater than or equal to 1, given 0 (from flag --max_steps=0)"
    )
    assert "expected a valid boolean, given 'maybe'" in error("--verbose", "maybe")
    assert "sizes[1]: expected a valid integer, given 'x'" in error("--sizes", "1,x")
    assert "betas: tuple should have at most 2 items" in error("--betas", "1,2,3").lower()


def test_bad_flag_values() -> None:
    assert "flag --sizes=[1, 2" in error("--sizes=[1, 2")
    assert "--no-... takes no value" in error("--no-verbose=true")
    assert "expected true or false" in error("--print_config=maybe")
    assert "--config given twice" in error("--config", "a.yaml", "--config", "b.yaml")


def test_section_flag_is_explained() -> None:
    assert "names a group of fields" in error("--enc", "3")
    assert "names a group of fields" in error("--enc=null")  # not optional


def test_errors_from_file_and_flags_together(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("max_steps: 50\nenc:\n  dim: -1\n")
    message = error("--config", str(file), "--lr", "x")
    assert message.startswith("2 problems in the config:")
    assert f"enc.dim: expected greater than or equal to 1, given -1 (at {file}:3:3)" in message
    assert "lr: expected a valid number, given 'x' (from flag --lr x)" in message
