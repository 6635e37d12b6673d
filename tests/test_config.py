"""ConfigModel rules, migrations, JSON Schema, diff, and import cost of versionkit."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from versionkit.config import (
    MISSING,
    ConfigModel,
    ConfigSection,
    FieldError,
    config_hash,
    diff_configs,
    dump_config,
    json_schema,
    load_config,
    load_yaml_config,
    load_yaml_text,
    register_migration,
)
from versionkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class Part(ConfigSection):
    width: int = Field(4, ge=1, description="Width.")
    height: int = 2

    @model_validator(mode="after")
    def _fits(self) -> Part:
        if self.height > self.width:
            raise FieldError(f"height {self.height} exceeds width {self.width}", "height")
        return self


class Cfg(ConfigModel):
    name: str = Field("a", description="A name.")
    part: Part = Field(default_factory=Part)
    opt_part: Part | None = None


# ------------------------------------------------------------- the model rules


def test_unknown_keys_are_rejected_at_every_level() -> None:
    for data in ({"nam": 1}, {"part": {"wdth": 1}}, {"opt_part": {"x": 1}}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            Cfg.model_validate(data)


def test_sections_must_forbid_unknown_keys() -> None:
    with pytest.raises(TypeError, match="must reject unknown keys"):

        class Loose(ConfigSection):
            model_config = ConfigDict(extra="allow")

    class Plain(BaseModel):  # a pydantic model that is not a ConfigSection
        x: int = 0

    with pytest.raises(TypeError, match="Plain accepts unknown keys"):

        class Uses(ConfigModel):
            plain: Plain = Field(default_factory=Plain)

    @dataclasses.dataclass
    class Point:
        x: int = 0

    with pytest.raises(TypeError, match="Point accepts unknown keys"):

        class UsesDataclass(ConfigModel):
            point: Point | None = None

    with pytest.raises(TypeError, match="accepts unknown keys"):

        class UsesList(ConfigModel):
            plains: list[Plain] = Field(default_factory=list)


def test_strict_values() -> None:
    for bad in ({"name": 5}, {"part": {"width": "4"}}, {"part": {"width": 4.0}},
                {"part": {"width": True}}):
        with pytest.raises(ValidationError):
            Cfg.model_validate(bad)


def test_schema_version_is_dumped_and_defaults_to_the_class_version() -> None:
    class V4(ConfigModel):
        SCHEMA_VERSION: ClassVar[int] = 4
        x: int = 0

    assert V4().schema_version == 4
    assert dump_config(V4()).startswith("schema_version: 4\n")
    assert Cfg().schema_version == 1
    assert json_schema(V4)["properties"]["schema_version"]["default"] == 4


def test_field_error_points_at_the_named_field(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("name: b\npart:\n  width: 2\n  height: 3\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_config(Cfg, file)
    assert str(info.value) == (
        f"part: height 3 exceeds width 2 (part.height: at {file}:4:3)"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, ["--config", str(file), "--part.height=9"])
    assert "(part.height: from flag --part.height=9)" in str(info.value)


def test_config_error_pickles_with_its_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, ["--nope"])
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, ConfigError) and str(again) == str(info.value)


def test_missing_required_fields_say_how_to_set_them() -> None:
    class Need(ConfigSection):
        need: int

    class Required(ConfigModel):
        name: str
        sub: Need = Field(default_factory=lambda: Need(need=1))

    with pytest.raises(ConfigError) as info:
        load_config(Required, [])
    assert str(info.value) == (
        "name: required field is missing; set it in the config file or with --name VALUE"
    )
    with pytest.raises(ConfigError) as info:
        load_yaml_text(Required, "name: a\nsub:\n  {}\n", source="f.yaml")
    assert str(info.value) == (
        "sub.need: required field is missing; set it in the config file (the section at "
        "f.yaml:2:1) or with --sub.need VALUE"
    )


# ------------------------------------------------------------- migrations


class Renamed(ConfigModel):
    """Version 3: 'lr' was 'learning_rate' (v1), then 'rate' (v2)."""

    SCHEMA_VERSION: ClassVar[int] = 3
    lr: float = 0.1
    steps: int = 1


@register_migration(Renamed, 1)
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["rate"] = data.pop("learning_rate")
    return data


@register_migration(Renamed, 2)
def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["lr"] = data.pop("rate")
    return data


def test_migrations_run_in_order(tmp_path: Path) -> None:
    file = tmp_path / "old.yaml"
    file.write_text("schema_version: 1\nlearning_rate: 0.5\nsteps: 3\n")
    config = load_yaml_config(Renamed, file)
    assert config == Renamed(lr=0.5, steps=3)
    assert dump_config(config).startswith("schema_version: 3\nlr: 0.5\n")
    v2 = load_yaml_text(Renamed, "schema_version: 2\nrate: 0.25\n")
    assert v2.lr == 0.25
    # flags use the current names and apply after the file's migration
    loaded = load_config(Renamed, ["--config", str(file), "--lr", "0.75"])
    assert loaded.config.lr == 0.75


def test_migration_also_applies_to_model_validate() -> None:
    assert Renamed.model_validate({"schema_version": 2, "rate": 1.5}).lr == 1.5


def test_migration_input_is_not_mutated() -> None:
    data = {"schema_version": 1, "learning_rate": 0.5}
    Renamed.model_validate(data)
    assert data == {"schema_version": 1, "learning_rate": 0.5}


def test_newer_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "new.yaml"
    file.write_text("schema_version: 4\nlr: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_config(Renamed, file)
    assert str(info.value) == (
        f"{file}: schema_version 4 is newer than this program's Renamed (version 3); "
        "upgrade the program or use a config written for version 3"
    )


def test_missing_migration_and_bad_version(tmp_path: Path) -> None:
    class NoPath(ConfigModel):
        SCHEMA_VERSION: ClassVar[int] = 2

    with pytest.raises(ConfigError, match="no migration from version 1 is registered"):
        load_yaml_text(NoPath, "schema_version: 1\n")
    with pytest.raises(ConfigError, match="schema_version: expected a positive integer"):
        load_yaml_text(NoPath, "schema_version: one\n")


def test_duplicate_migration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_migration(Renamed, 1)(_v1_to_v2)
    with pytest.raises(ValueError, match="from_version must be >= 1"):
        register_migration(Renamed, 0)


# ------------------------------------------------------------- JSON Schema, diff, hash


def test_json_schema_validates_a_dump_and_rejects_unknown_keys() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(Cfg)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["properties"]["name"]["description"] == "A name."
    yaml = pytest.importorskip("yaml")
    jsonschema.validate(yaml.safe_load(dump_config(Cfg(opt_part=Part()))), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"part": {"width": 2, "depth": 1}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"part": {"width": 0}}, schema)
    json.dumps(schema)  # plain JSON


def test_diff_configs_dotted_keys_and_missing() -> None:
    a = {"x": 1, "part": {"width": 4, "height": 2}, "only_a": [1]}
    b = {"x": 1, "part": {"width": 5, "height": 2}, "only_b": None}
    assert diff_configs(a, b) == {
        "part.width": (4, 5),
        "only_a": ([1], MISSING),
        "only_b": (MISSING, None),
    }
    assert diff_configs(a, a) == {}
    assert diff_configs({"x": 1, "y": [1, 2.0]}, {"x": 1.0, "y": [1.0, 2]}) == {}
    assert diff_configs({"x": 1}, {"x": True}) == {"x": (1, True)}
    assert diff_configs({"x": "1"}, {"x": 1}) == {"x": ("1", 1)}
    assert diff_configs({"x": [float("nan")]}, {"x": [float("nan")]}) == {}
    assert repr(MISSING) == "MISSING" and not MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


def test_diff_accepts_configs() -> None:
    assert diff_configs(Cfg(), Cfg(part=Part(width=9))) == {"part.width": (4, 9)}
    assert diff_configs(Cfg(), Cfg(opt_part=Part())) == {
        "opt_part": (None, MISSING),
        "opt_part.width": (MISSING, 4),
        "opt_part.height": (MISSING, 2),
    }


def test_hash_is_sha256_of_the_dump() -> None:
    import hashlib

    config = Cfg(name="é")
    assert config_hash(config) == hashlib.sha256(dump_config(config).encode()).hexdigest()


# ------------------------------------------------------------- import cost


def test_import_versionkit_does_not_import_pydantic_or_torch() -> None:
    code = (
        "import sys, versionkit; "
        "bad = [m for m in ('pydantic', 'torch', 'pytorch_lightning', 'yaml') "
        "if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_lazy_exports_resolve() -> None:
    import versionkit

    for name in ("ConfigModel", "ConfigSection", "ControlFlag", "LoadedConfig", "load_config",
                 "load_yaml_config", "dump_config", "config_hash", "diff_configs",
                 "config_to_flags", "json_schema", "register_migration", "FieldError",
                 "MISSING"):
        assert getattr(versionkit, name) is getattr(sys.modules["versionkit.config"], name)
