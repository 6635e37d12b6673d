"""fractalgen's TrainConfig: shape, defaults, cross-field validation, command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fractalgen.config import CONTROLS, TrainConfig, parse_train_args
from versionkit.config import config_to_flags, dump_config, json_schema, load_yaml_text
from versionkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def error(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_train_args(list(argv))
    return str(info.value)


def test_design_shape_and_defaults() -> None:
    config = TrainConfig()
    plain = config.model_dump(mode="json")
    assert list(plain) == ["schema_version", "experiment", "data", "model", "optim", "trainer",
                           "sampling"]
    assert plain["experiment"] == {"name": "fractalgen", "output_root": "outputs", "seed": 0,
                                   "registry": None}
    assert plain["data"] == {"dataset": "digits", "path": None, "channels": 1, "num_classes": 10,
                             "val_fraction": 0.1, "train_batch_size": 64, "val_batch_size": 256,
                             "num_workers": 0, "random_flip": False}
    assert plain["model"]["img_size_list"] == [8, 2, 1]
    assert plain["model"]["generator_type_list"] == ["mar", "mar"]
    assert list(plain["model"]) == [
        "img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list",
        "generator_type_list", "num_conds", "ar_order", "guiding_pixel", "label_drop_prob",
        "attn_dropout", "proj_dropout", "r_weight", "grad_checkpointing"]
    # lr: a fixed 1e-3 (not DESIGN's null) so a flags-only digits run trains; null = paper rule
    assert plain["optim"] == {"lr": 1e-3, "base_lr": 5e-05, "weight_decay": 0.05,
                              "betas": [0.9, 0.95], "warmup_steps": 100, "min_lr": 0.0,
                              "grad_clip": 3.0, "ema_decay": None}
    assert list(plain["trainer"]) == [
        "max_steps", "val_every_n_steps", "save_top_k", "log_every_n_steps", "accelerator",
        "devices", "num_nodes", "strategy", "precision", "limit_val_batches", "cpu_threads"]
    assert plain["sampling"] == {"num_iter_list": [4, 4], "cfg": 1.0, "cfg_schedule": "linear",
                                 "temperature": 1.0, "opening_steps": 0,
                                 "opening_temperature": 1.0, "filter_threshold": 1e-4,
                                 "num_images": 16}
    assert isinstance(config.experiment.output_root, Path)
    assert config.optim.betas == (0.9, 0.95)


def test_every_field_has_a_description() -> None:
    schema = json_schema(TrainConfig)
    for name, section in schema["$defs"].items():
        for field, spec in section["properties"].items():
            assert spec.get("description"), f"{name}.{field}"


def test_json_schema_accepts_the_dump_and_catches_typos() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    schema = json_schema(TrainConfig)
    jsonschema.validate(yaml.safe_load(dump_config(TrainConfig())), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"trainer": {"max_step": 3}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"data": {"channels": 2}}, schema)


def test_seed_flags_work() -> None:
    loaded = parse_train_args(["--train_batch_size", "8", "--max_steps", "100000"])
    assert loaded.config.data.train_batch_size == 8
    assert loaded.config.trainer.max_steps == 100000
    assert loaded.config_file is None and loaded.controls == {"print_config": False,
                                                              "resume": None}


def test_print_config_output_feeds_back_identically(tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text("experiment: {name: small}\nmodel:\n  num_conds: 5\noptim: {lr: 1.0e-3}\n")
    first = parse_train_args(["--config", str(source), "--max_steps", "7", "--print_config"])
    assert first.controls["print_config"] is True
    printed = dump_config(first.config)
    again_file = tmp_path / "printed.yaml"
    again_file.write_text(printed)
    second = parse_train_args(["--config", str(again_file), "--print_config"])
    assert dump_config(second.config) == printed
    assert second.config.trainer.max_steps == 7 and second.config.optim.lr == 1e-3


BUNDLED = {"train_small.yaml", "train_fidelity.yaml", "train_default.yaml",
           "fractalmar_in64.yaml", "fractalar_in64.yaml", "fractalmar_base_in256.yaml",
           "fractalmar_large_in256.yaml", "fractalmar_huge_in256.yaml"}


def test_bundled_configs_are_valid_and_round_trip() -> None:
    # An empty or missing folder must fail here, not turn into a silent skip.
    found = {p.name for p in (ROOT / "config").glob("*.yaml")}
    assert found >= BUNDLED, f"config/ lacks {sorted(BUNDLED - found)}"
    for path in sorted((ROOT / "config").glob("*.yaml")):
        loaded = parse_train_args(["--config", str(path)])
        assert load_yaml_text(TrainConfig, dump_config(loaded.config)) == loaded.config, path


def test_resume_uses_the_saved_config(tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(TrainConfig.model_validate({"trainer": {"max_steps": 50}})))
    seen: list[str] = []

    def resolve(target: str) -> Path | None:
        seen.append(target)
        return saved

    loaded = parse_train_args(["--resume", "ckpt/last.ckpt", "--max_steps", "80"],
                              resolve_resume_config=resolve)
    assert seen == ["ckpt/last.ckpt"]
    assert loaded.config_file == saved and loaded.config.trainer.max_steps == 80
    assert loaded.controls["resume"] == "ckpt/last.ckpt"
    unresolved = parse_train_args(["--resume", "x"], resolve_resume_config=lambda _: None)
    assert unresolved.config_file is None
    assert {c.name for c in CONTROLS} == {"print_config", "resume"}


def test_flags_round_trip_for_train_config() -> None:
    config = parse_train_args(["--dataset", "folder", "--path", "/data/imgs", "--channels", "3",
                               "--generator_type_list", "ar,mar", "--lr", "1e-3",
                               "--limit_val_batches", "0.5", "--devices", "auto"]).config
    assert parse_train_args(config_to_flags(config)).config == config
    assert config.trainer.devices == "auto" and config.trainer.limit_val_batches == 0.5


# ------------------------------------------------------------- cross-field validation


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--img_size_list", "8,3,1"], "img_size_list[1]=3 must be smaller than and divide"),
        (["--img_size_list", "8,4,2"], "img_size_list must end with 1"),
        (["--img_size_list", "1"], "needs at least 2 levels"),
        (["--img_size_list", "8,8,1"], "img_size_list[1]=8 must be smaller than"),
        (["--img_size_list", "16,4,2,1"],
         "embed_dim_list needs one entry per level of img_size_list (4), given 3"),
        (["--generator_type_list", "mar"], "generator_type_list needs one entry per level"),
        (["--num_heads_list", "3,2,2"], "num_heads_list[0]=3 must divide embed_dim_list[0]=64"),
        (["--num_iter_list", "4,4,4"], "sampling.num_iter_list needs one entry per generator"),
        (["--dataset", "folder"], "dataset 'folder' needs data.path"),
        (["--channels", "2"], "data.channels: expected 1 or 3, given 2"),
        (["--generator_type_list", "ar,gpt"], "generator_type_list[1]: expected 'ar' or 'mar'"),
        (["--val_fraction", "1.0"], "data.val_fraction: expected less than 1"),
        (["--betas", "0.9,1.5"], "optim.betas: expected two numbers in [0, 1)"),
        (["--devices", "0"], "trainer.devices: expected a positive count"),
        (["--limit_val_batches", "1.5"], "a fraction must be at most 1.0"),
        (["--precision", "fp8"], "trainer.precision: expected '64-true'"),
        (["--embed_dim_list", "64,0,16"], "model.embed_dim_list[1]: expected greater than 0"),
    ],
)
def test_cross_field_and_range_errors(argv: list[str], expected: str) -> None:
    message = error(*argv)
    assert expected in message, message
    assert f"from flag {argv[0]} {argv[1]}" in message


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", "", "a b", "a\\b",
                                  ".hidden", "-rf"])
def test_experiment_name_must_be_a_plain_folder_name(name: str) -> None:
    message = error(f"--experiment.name={name}")
    assert message.startswith("experiment.name: expected a plain folder name")


@pytest.mark.parametrize("name", ["fractalgen", "fractalgen_small", "run-2.1", "v1+ema", "007"])
def test_good_experiment_names(name: str) -> None:
    assert parse_train_args(["--name", name]).config.experiment.name == name


def test_paper_sized_model_is_accepted() -> None:
    config = parse_train_args([
        "--img_size_list", "256,16,4,1", "--embed_dim_list", "768,384,192,64",
        "--num_blocks_list", "24,6,3,1", "--num_heads_list", "12,6,3,4",
        "--generator_type_list", "mar,mar,mar", "--num_iter_list", "64,16,16",
        "--channels", "3", "--num_classes", "1000", "--guiding_pixel", "--num_conds", "5",
    ]).config
    assert config.model.img_size_list == [256, 16, 4, 1] and config.model.guiding_pixel


def test_cross_field_error_names_the_file_line(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("model:\n  img_size_list: [8, 2, 1]\n  num_heads_list: [4, 3, 2]\n")
    message = error("--config", str(file))
    assert message == (
        "model: num_heads_list[1]=3 must divide embed_dim_list[1]=32 "
        f"(model.num_heads_list: at {file}:3:3; model.embed_dim_list: schema default)"
    )


# ------------------------------------------------------------- the command line, end to end

needs_main = pytest.mark.skipif(
    not (ROOT / "main.py").exists() or not (ROOT / "fractalgen" / "train.py").exists(),
    reason="main.py / fractalgen.train are not in this checkout",
)


def run_main(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_main
def test_main_print_config_feeds_back_identically(tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text("# my run\nexperiment: {name: small}\ntrainer:\n  max_steps: 50\n")
    first = run_main("--config", str(source), "--max_steps", "7", "--print_config")
    assert first.returncode == 0, first.stderr
    assert "max_steps: 7\n" in first.stdout
    printed = tmp_path / "printed.yaml"
    printed.write_text(first.stdout)
    second = run_main("--config", str(printed), "--print_config")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert not list(tmp_path.glob("outputs*"))  # printing trains nothing


@needs_main
@pytest.mark.parametrize(
    ("argv", "text", "expected"),
    [
        (["--max_step", "7", "--print_config"], None, "did you mean --max_steps"),
        (["--print_config"], "trainer:\n  max_steps: 1\n  max_steps: 2\n", "duplicate key"),
        (["--print_config", "--name", "../x"], None, "experiment.name: expected a plain"),
    ],
)
def test_main_user_mistakes_exit_2_without_traceback(
    tmp_path: Path, argv: list[str], text: str | None, expected: str
) -> None:
    if text is not None:
        (tmp_path / "bad.yaml").write_text(text)
        argv = ["--config", str(tmp_path / "bad.yaml"), *argv]
    result = run_main(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_filter_threshold_and_random_flip_are_fields_and_flags() -> None:
    loaded = parse_train_args(["--filter_threshold", "0.001", "--random_flip", "true"])
    assert loaded.config.sampling.filter_threshold == 0.001
    assert loaded.config.data.random_flip is True
    off = parse_train_args(["--sampling.filter_threshold", "0"])
    assert off.config.sampling.filter_threshold == 0.0
    assert "sampling.filter_threshold" in error("--filter_threshold", "1.5")
    assert "sampling.filter_threshold" in error("--filter_threshold", "-1e-4")


def test_the_validation_grid_samples_with_the_configs_filter_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from fractalgen.module import FractalGenModule

    config = TrainConfig.model_validate(
        {"model": {"embed_dim_list": [16, 8, 8], "num_blocks_list": [1, 1, 1],
                   "num_heads_list": [2, 1, 1]},
         "sampling": {"filter_threshold": 0.003, "num_images": 2, "num_iter_list": [1, 1]}}
    )
    module = FractalGenModule(config.model_dump(mode="json"), in_channels=1, num_classes=10)
    seen: list[float] = []

    def fake(n: int, labels: object, **kwargs: float) -> torch.Tensor:
        seen.append(kwargs["filter_threshold"])
        return torch.zeros(n, 1, 8, 8, dtype=torch.uint8)

    monkeypatch.setattr(module.model, "sample", fake)
    module.sample_grid()
    assert seen == [0.003]


@pytest.mark.parametrize(("classes", "opened"), [(10, (0, 1.0)), (0, (4, 1.3))])
def test_the_validation_grid_opens_only_unconditional_samples(
    monkeypatch: pytest.MonkeyPatch, classes: int, opened: tuple[int, float]
) -> None:
    import torch

    from fractalgen.module import FractalGenModule

    config = TrainConfig.model_validate(
        {"model": {"embed_dim_list": [16, 8, 8], "num_blocks_list": [1, 1, 1],
                   "num_heads_list": [2, 1, 1]},
         "sampling": {"opening_steps": 4, "opening_temperature": 1.3, "num_images": 2,
                      "num_iter_list": [1, 1]}}
    )
    module = FractalGenModule(config.model_dump(mode="json"), in_channels=1, num_classes=classes)
    seen: list[tuple[object, ...]] = []

    def fake(n: int, labels: object, **kwargs: float) -> torch.Tensor:
        seen.append((labels is None, kwargs["opening_steps"], kwargs["opening_temperature"]))
        return torch.zeros(n, 1, 8, 8, dtype=torch.uint8)

    monkeypatch.setattr(module.model, "sample", fake)
    module.sample_grid()
    assert seen == [(classes == 0, *opened)]
    assert config.sampling.opening_overrides(conditional=True) == {
        "opening_steps": 0, "opening_temperature": 1.0}
    assert config.sampling.opening_overrides(2, conditional=True)["opening_steps"] == 0
    assert config.sampling.opening_overrides(2) == {"opening_steps": 2,
                                                    "opening_temperature": 1.3}


def test_model_settings_are_defined_and_validated_once() -> None:
    """ModelConfig is the model's one list of settings: the model takes exactly its fields,
    its defaults, and its validation (a CLI user and a Python caller get the same rule)."""
    from fractalgen.config import ModelConfig
    from fractalgen.model import FractalGen, ModelError

    fields = list(ModelConfig.model_fields)
    model = FractalGen(in_channels=1, num_classes=10)
    assert list(model.config) == [*fields, "in_channels", "num_classes"]
    assert model.settings == ModelConfig()
    # A validated section is used as is, not validated a second time.
    section = TrainConfig().model
    assert FractalGen(section, in_channels=1, num_classes=10).settings is section
    # The AR head-width rule of the rotary embedding is the config's rule too.
    ar = ["--generator_type_list", "[ar, ar]", "--num_heads_list", "[32, 2, 2]"]
    assert "multiple of 4" in error(*ar)
    with pytest.raises(ModelError, match="multiple of 4"):
        FractalGen(generator_type_list=["ar", "ar"], num_heads_list=[32, 2, 2])
    with pytest.raises(ModelError, match=r"unknown model config keys \['depth'\]"):
        FractalGen(depth=3)
