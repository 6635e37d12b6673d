"""YAML files: YAML 1.2 scalars, safe loading, and one test per bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import Field

from versionkit._yaml import MAX_DEPTH, parse_yaml, resolve_plain
from versionkit.config import (
    ConfigModel,
    ConfigSection,
    dump_config,
    load_config,
    load_yaml_config,
)
from versionkit.errors import ConfigError


class Deep(ConfigSection):
    level: int = 0
    label: str = "x"


class Opt(ConfigSection):
    lr: float = 1e-3
    steps: int = Field(10, ge=1)
    nesterov: bool = False
    deep: Deep = Field(default_factory=Deep)


class Cfg(ConfigModel):
    name: str = "exp"
    opt: Opt = Field(default_factory=Opt)
    tags: list[str] = Field(default_factory=list)
    extra: dict[str, float] = Field(default_factory=dict)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_yaml_config(Cfg, path)
    assert info.value.exit_code == 2
    return str(info.value)


# ------------------------------------------------------------- YAML 1.2 scalars


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-4", 1e-4), ("1E5", 1e5), (".5", 0.5), ("-.5", -0.5), ("+1.", 1.0), ("5.0e-05", 5e-05),
        ("1", 1), ("-7", -7), ("0o17", 15), ("0x1F", 31), ("010", 10),
        ("true", True), ("False", False), ("TRUE", True),
        ("null", None), ("~", None), ("", None), ("NULL", None),
        ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"),
        ("1_000", "1_000"), ("0b101", "0b101"), ("12:30", "12:30"), ("2024-01-01", "2024-01-01"),
        ("1e", "1e"), ("e5", "e5"), ("0x", "0x"), (".", "."), ("inf", "inf"),
    ],
)
def test_yaml_1_2_core_scalars(text: str, expected: object) -> None:
    value = resolve_plain(text) if text else None
    assert value == expected
    assert type(value) is type(expected)


def test_yaml_infinity_and_nan() -> None:
    assert resolve_plain(".inf") == math.inf
    assert resolve_plain("-.Inf") == -math.inf
    assert math.isnan(resolve_plain(".NaN"))


def test_float_written_without_dot_loads_as_float(tmp_path: Path) -> None:
    path = write(tmp_path, "opt:\n  lr: 1e-4\n  deep: {label: yes}\n")
    config = load_yaml_config(Cfg, path)
    assert config.opt.lr == 1e-4 and isinstance(config.opt.lr, float)
    assert config.opt.deep.label == "yes"  # a string, not True


def test_explicit_standard_tags_are_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "name: !!str 123\nopt: !!map {lr: !!float 1}\n")
    config = load_yaml_config(Cfg, path)
    assert config.name == "123" and config.opt.lr == 1.0


def test_locations_point_at_keys_and_items() -> None:
    value, locs, empty = parse_yaml("a:\n  b: 1\n  c: [x, y]\nd:\n  - 1\n  - 2\n", "f")
    assert not empty and value == {"a": {"b": 1, "c": ["x", "y"]}, "d": [1, 2]}
    assert locs[("a", "b")] == (2, 3)
    assert locs[("a", "c", 1)] == (3, 10)
    assert locs[("d", 1)] == (6, 5)


def test_anchors_and_aliases_are_expanded(tmp_path: Path) -> None:
    path = write(tmp_path, "tags: &t [a, b]\nopt:\n  deep: {label: &l z}\nname: *l\n")
    config = load_yaml_config(Cfg, path)
    assert config.tags == ["a", "b"] and config.name == "z"


def test_merge_keys_fill_in_without_overriding(tmp_path: Path) -> None:
    path = write(tmp_path, "name: &n base\nopt:\n  <<: [{lr: 0.5, steps: 3}, {steps: 9}]\n"
                 "  steps: 4\n  deep:\n    <<: {level: 2}\n")
    config = load_yaml_config(Cfg, path)
    assert (config.opt.lr, config.opt.steps, config.opt.deep.level) == (0.5, 4, 2)
    value, _, _ = parse_yaml('a: {"<<": 1}\nb: <<\n', "f")
    assert value == {"a": {"<<": 1}, "b": "<<"}  # quoted or as a value: just a string


def test_bad_merge_keys(tmp_path: Path) -> None:
    assert "'<<' merges a mapping" in error_of(tmp_path, "opt:\n  <<: 3\n")
    assert "duplicate key '<<'" in error_of(tmp_path, "opt:\n  <<: {lr: 1.0}\n  <<: {}\n")
    message = error_of(tmp_path, "opt:\n  <<: {lrr: 1.0}\n")
    assert "opt.lrr: unknown field (at" in message and "c.yaml:2:3" in message


# ------------------------------------------------------------- one test per bad input


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, "name: a\nopt:\n  lr: [1, 2\n  steps: 3\n")
    assert re.search(r"c\.yaml:\d+:\d+: invalid YAML", message), message
    message = error_of(tmp_path, "name: a\n  bad: indent\n")
    assert "c.yaml:2:" in message


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    message = error_of(tmp_path, "name: a\nopt:\n  lr: 0.1\n  steps: 2\n  lr: 0.2\n")
    assert "duplicate key 'lr'" in message
    assert "line 3" in message and "line 5" in message
    assert "c.yaml:5:3" in message


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "name: a\nname: b\n")
    assert "duplicate key 'name'" in message and "line 1" in message and "line 2" in message


@pytest.mark.parametrize(
    ("text", "field", "line", "suggestion"),
    [
        ("nme: a\n", "nme", 1, "name"),
        ("opt:\n  lrr: 0.1\n", "opt.lrr", 2, "lr"),
        ("opt:\n  deep:\n    levl: 2\n", "opt.deep.levl", 3, "level"),
        ("steps: 3\n", "steps", 1, "opt.steps"),  # right name, wrong section
    ],
)
def test_unknown_key_at_each_level_suggests(
    tmp_path: Path, text: str, field: str, line: int, suggestion: str
) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{field}: unknown field")
    assert f"c.yaml:{line}:" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_key_without_a_close_match_lists_valid_fields(tmp_path: Path) -> None:
    message = error_of(tmp_path, "opt:\n  zzzzzz: 1\n")
    assert "valid fields here: lr, steps, nesterov, deep" in message


def test_wrong_type_says_expected_and_given(tmp_path: Path) -> None:
    message = error_of(tmp_path, "opt:\n  steps: ten\n")
    assert message == "opt.steps: expected a valid integer, given 'ten' (at " \
        f"{tmp_path / 'c.yaml'}:2:3)"


def test_yes_is_not_a_boolean(tmp_path: Path) -> None:
    message = error_of(tmp_path, "opt:\n  nesterov: yes\n")
    assert "opt.nesterov: expected a valid boolean, given 'yes'" in message
    assert message.endswith("; only true and false are booleans")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("name: 123\n", "; quote it to make it a string"),
        ("opt:\n  steps: 1e3\n", "; write 1000"),
        ("opt:\n  steps: '7'\n", "; remove the quotes to make it a number"),
        ("opt:\n  lr: '1e-4'\n", "; remove the quotes to make it a number"),
    ],
)
def test_common_yaml_surprises_get_a_hint(tmp_path: Path, text: str, hint: str) -> None:
    assert error_of(tmp_path, text).endswith(hint)


def test_float_for_int_is_refused(tmp_path: Path) -> None:
    assert "given 3.0" in error_of(tmp_path, "opt:\n  steps: 3.0\n")


def test_out_of_range_value(tmp_path: Path) -> None:
    message = error_of(tmp_path, "opt:\n  steps: 0\n")
    assert "opt.steps: expected greater than or equal to 1, given 0" in message
    assert "c.yaml:2:3" in message


def test_every_error_is_reported_not_just_the_first(tmp_path: Path) -> None:
    message = error_of(tmp_path, "nam: a\nopt:\n  steps: 0\n  lr: x\n")
    assert message.startswith("3 problems in the config:")
    for part in ("nam: unknown field", "opt.steps:", "opt.lr:"):
        assert part in message


def test_python_object_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    message = error_of(tmp_path, text)
    assert "c.yaml:1:7" in message and "not allowed" in message
    assert "python/object/apply:os.system" in message
    assert not marker.exists()


@pytest.mark.parametrize("text", ["opt: !!python/object:builtins.dict {}\n",
                                  "tags: !!set {a, b}\n", "name: !custom x\n",
                                  "name: !!binary aGVsbG8=\n"])
def test_non_plain_tags_are_refused(tmp_path: Path, text: str) -> None:
    assert "not allowed" in error_of(tmp_path, text)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert "the file is empty; expected a mapping" in error_of(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "list"), ("just text\n", "string"), ("null\n", "null"), ("3\n", "int")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    assert f"c.yaml:1:1: the top level is a {kind}; expected a mapping" in error_of(tmp_path, text)


def test_several_documents_are_refused(tmp_path: Path) -> None:
    assert "several YAML documents" in error_of(tmp_path, "name: a\n---\nname: b\n")


def test_non_string_keys_are_refused(tmp_path: Path) -> None:
    assert "mapping keys must be strings" in error_of(tmp_path, "1: a\n")
    assert "mapping keys must be plain strings" in error_of(tmp_path, "? [a]\n: 1\n")


def test_very_deep_nesting_fails_fast(tmp_path: Path) -> None:
    depth = 100_000
    message = error_of(tmp_path, "name: " + "[" * depth + "]" * depth + "\n")
    # Our own check stops at column MAX_DEPTH + 6; PyYAML >= 6.0.4 may stop its scanner
    # earlier than the text's end at a limit of its own. Either way: line 1, long before
    # the 100,000th bracket, and the same message.
    match = re.search(r"c\.yaml:1:(\d+): nesting deeper than (\d+) levels", message)
    assert match is not None, message
    assert int(match.group(2)) == MAX_DEPTH
    assert MAX_DEPTH + 6 <= int(match.group(1)) <= 2_000


def test_deep_block_nesting_fails_fast_with_position(tmp_path: Path) -> None:
    text = "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + " " * 200 + "v: 1\n"
    message = error_of(tmp_path, text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in message
    assert f"c.yaml:{MAX_DEPTH + 1}:" in message


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    message = error_of(tmp_path, "\n".join(lines) + "\n")
    assert "after expanding aliases" in message


def test_unknown_alias(tmp_path: Path) -> None:
    assert "c.yaml:1:7: unknown alias *nope" in error_of(tmp_path, "name: *nope\n")


def test_control_characters_and_bad_encoding(tmp_path: Path) -> None:
    assert "not allowed" in error_of(tmp_path, "name: a\x07b\n")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_yaml_config(Cfg, path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(Cfg, ["--config", str(tmp_path)])


# ------------------------------------------------------------- writing


def test_dump_is_canonical_block_yaml() -> None:
    config = Cfg(name="my run", tags=["a", "1", "yes"], extra={"b": 2.0, "a": 1e-7})
    assert dump_config(config, header=["saved by test", "two\nlines"]) == (
        "# saved by test\n"
        "# two\n"
        "# lines\n"
        "schema_version: 1\n"
        'name: "my run"\n'
        "opt:\n"
        "  lr: 0.001\n"
        "  steps: 10\n"
        "  nesterov: false\n"
        "  deep:\n"
        "    level: 0\n"
        "    label: x\n"
        'tags: [a, "1", "yes"]\n'
        "extra:\n"
        "  a: 1.0e-07\n"
        "  b: 2.0\n"
    )


def test_strings_with_special_characters_are_escaped() -> None:
    text = dump_config(Cfg(name='a"b\\c\n\x00\u2028é😀'))
    assert 'name: "a\\"b\\\\c\\n\\0\\u2028é😀"' in text
