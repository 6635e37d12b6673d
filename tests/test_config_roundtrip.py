"""Property tests: every valid config of a rich schema survives dump -> load and
config -> flags -> load exactly, and its hash is stable."""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

from versionkit.config import (
    ConfigModel,
    ConfigSection,
    config_hash,
    config_to_flags,
    dump_config,
    load_config,
    load_yaml_text,
)
from versionkit.errors import ConfigError


class Color(enum.Enum):
    RED = "red"
    ONE = "1"  # a string value that looks like a number
    NULL = "null"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Inner(ConfigSection):
    x: int = 0
    ratio: float = 0.5
    tags: list[str] = Field(default_factory=list)
    mode: Literal["ar", "mar"] = "ar"


class Rich(ConfigModel):
    SCHEMA_VERSION = 3

    name: str = "run"
    maybe_name: str | None = None
    count: int = 1
    lr: float = Field(1e-4, allow_inf_nan=True)  # the one field that takes .inf and .nan
    flag: bool = False
    maybe_flag: bool | None = None
    maybe: float | None = None
    path: Path = Path("out")
    opt_path: Path | None = None
    color: Color = Color.RED
    level: Level = Level.LOW
    lit: Literal[1, 3] = 1
    pair: tuple[float, float] = (0.9, 0.95)
    mixed: tuple[int, str] = (1, "a")
    sizes: tuple[int, ...] = (8, 2, 1)
    floats: list[float] = Field(default_factory=lambda: [1.0])
    names: list[str] = Field(default_factory=list)
    paths: list[Path] = Field(default_factory=list)
    colors: list[Color] = Field(default_factory=list)
    num: int | float = 0
    mapping: dict[str, int] = Field(default_factory=dict)
    nested_lists: list[list[int]] = Field(default_factory=list)
    inner: Inner = Field(default_factory=Inner)
    opt_inner: Inner | None = None
    inners: list[Inner] = Field(default_factory=list)


# When an example fails, hypothesis imports libcst to write a patch, and libcst's use of
# mypy_extensions.TypedDict warns; under filterwarnings=error that hides the real failure.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

SPECIAL_FLOATS = [1e-4, 1e16, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e-7, 123456.0,
                  -1.5e-300, math.inf, -math.inf]
any_floats = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=False))
floats = any_floats.filter(math.isfinite)  # fields refuse inf and nan unless they say so
ints = st.one_of(st.integers(-(10**30), 10**30), st.sampled_from([0, -1, 2**63, -(2**64)]))
# Text that reads as anything else in YAML or on a command line, plus arbitrary unicode.
TRICKY = ["", "null", "~", "true", "yes", "no", "on", "1", "1e3", ".5", "0x1f", "[1, 2]",
          "a, b", "'quoted'", '"dq"', "# not a comment", "key: value", "-", "--x", " lead",
          "trail ", "tab\there", "line\nbreak", "é😀", "\x00\x07\x85\u2028", "- item", "{a}"]
texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=30))
paths = texts.filter(lambda s: "\x00" not in s).map(Path)

inner_st = st.builds(
    Inner,
    x=ints,
    ratio=floats,
    tags=st.lists(texts, max_size=3),
    mode=st.sampled_from(["ar", "mar"]),
)

rich_st = st.builds(
    Rich,
    name=texts,
    maybe_name=st.none() | texts,
    count=ints,
    lr=any_floats,
    flag=st.booleans(),
    maybe_flag=st.none() | st.booleans(),
    maybe=st.none() | floats,
    path=paths,
    opt_path=st.none() | paths,
    color=st.sampled_from(Color),
    level=st.sampled_from(Level),
    lit=st.sampled_from([1, 3]),
    pair=st.tuples(floats, floats),
    mixed=st.tuples(ints, texts),
    sizes=st.lists(ints, max_size=4).map(tuple),
    floats=st.lists(floats, max_size=4),
    names=st.lists(texts, max_size=3),
    paths=st.lists(paths, max_size=2),
    colors=st.lists(st.sampled_from(Color), max_size=3),
    num=ints | floats,
    mapping=st.dictionaries(texts, ints, max_size=3),
    nested_lists=st.lists(st.lists(ints, max_size=3), max_size=3),
    inner=inner_st,
    opt_inner=st.none() | inner_st,
    inners=st.lists(inner_st, max_size=2),
)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def same(a: Rich, b: Rich) -> None:
    # == ignores the sign of zero; the canonical text does not
    assert a == b
    assert dump_config(a) == dump_config(b)


@SETTINGS
@given(rich_st)
def test_dump_then_load_is_exact(config: Rich) -> None:
    text = dump_config(config)
    loaded = load_yaml_text(Rich, text)
    same(loaded, config)
    assert config_hash(loaded) == config_hash(config)


@SETTINGS
@given(rich_st)
def test_flags_parse_back_to_the_same_config(config: Rich) -> None:
    flags = config_to_flags(config)
    assert all(f.startswith("--") and "=" in f for f in flags)
    same(load_config(Rich, flags).config, config)


@SETTINGS
@given(rich_st, st.lists(st.text(max_size=20), max_size=3))
def test_hash_ignores_header_and_survives_revalidation(config: Rich, header: list[str]) -> None:
    again = Rich.model_validate(config.model_dump())
    assert config_hash(again) == config_hash(config)
    with_header = dump_config(config, header=header)
    assert with_header.endswith(dump_config(config))
    assert all(line.startswith("#") for line in with_header.splitlines()[: len(header)])
    same(load_yaml_text(Rich, with_header), config)


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_every_float_including_nan_dumps_to_a_fixed_point(value: float) -> None:
    config = Rich(lr=value)
    text = dump_config(config)
    loaded = load_yaml_text(Rich, text)
    assert dump_config(loaded) == text
    if math.isnan(value):
        assert math.isnan(loaded.lr)  # YAML has one NaN; its sign is not kept
    else:
        assert loaded.lr == value
        assert math.copysign(1.0, loaded.lr) == math.copysign(1.0, value)


def test_canonical_float_text_reads_as_float_in_yaml_1_1_too() -> None:
    yaml = pytest.importorskip("yaml")
    text = dump_config(Rich(lr=1e-5, pair=(1e16, -0.0), floats=[5e-324]))
    assert "lr: 1.0e-05" in text
    assert "pair: [1.0e+16, -0.0]" in text
    plain = yaml.safe_load(text)  # PyYAML's own YAML 1.1 resolver agrees
    assert plain["lr"] == 1e-5 and plain["floats"] == [5e-324]


def test_hash_differs_when_a_value_differs() -> None:
    assert config_hash(Rich()) != config_hash(Rich(count=2))
    assert config_hash(Rich(lr=0.0)) != config_hash(Rich(lr=-0.0))
    assert config_hash(Rich()) == config_hash(Rich())
    assert len(config_hash(Rich())) == 64


PINNED_HASH = "6ec73507a80cac440bd9a32d1d9f87466afe6939f08fdb0d46925775fa1d3b56"


def test_config_hash_is_pinned() -> None:
    # Stored hashes (in every version record) must stay comparable across releases: a
    # change to the canonical dump's formatting changes this value and must be deliberate.
    assert config_hash(Rich()) == PINNED_HASH
    assert "\nlr: 2.5e-05\n" in dump_config(Rich(lr=2.5e-05))


def _check_error(exc: ConfigError, *where: str) -> None:
    # a ConfigError, not a leaked pydantic/YAML one; one message that says where
    text = str(exc)
    assert type(exc) is ConfigError and text.strip() == text and text
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    assert "errors.pydantic.dev" not in text and "type=" not in text
    assert any(w in text for w in where), text


# ------------------------------------------------------------- no raw tracebacks, ever

YAMLISH = st.lists(
    st.sampled_from(["a", "name", "inner", "x", ":", " ", "\n", "  ", "-", "[", "]", "{", "}",
                     ",", "&a", "*a", "<<", "!!str", "!!python/name:os.system", "'", '"', "#",
                     "1e3", "null", "true", "---", "?", "|", ">", "\t", "%YAML 1.2", "\\"]),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(YAMLISH, st.text(max_size=60)))
def test_any_text_loads_or_fails_with_a_config_error(text: str) -> None:
    try:
        load_yaml_text(Rich, text)
    except ConfigError as exc:
        _check_error(exc, "<config>")


FLAG_WORDS = st.sampled_from(
    ["--name", "--count", "--flag", "--no-flag", "--inner.x", "--x", "--opt_inner", "--opt_inner.x",
     "--sizes", "--pair", "--color", "--maybe", "--mapping", "--inners", "--config", "--nope",
     "-x", "1", "null", "[1, 2", "true", "a,b", "{a: 1}", "--lr=1e-4", "--path=", "--=", "--",
     "red", "[]", "--lit", "3", "--level", "--num=1.5"])


@settings(max_examples=300, deadline=None)
@given(st.lists(FLAG_WORDS, max_size=8))
def test_any_command_line_loads_or_fails_with_a_config_error(argv: list[str]) -> None:
    try:
        load_config(Rich, argv)
    except ConfigError as exc:
        _check_error(exc, "--", "flag", "argument", "config file")
