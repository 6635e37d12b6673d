"""fractalgen-sweep's checks before anything starts, and the search-space invariants.

Everything here runs in-process and trains nothing (see test_sweep_workers.py for worker
processes and test_sweep_train.py for real trials).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fractalgen.config import TrainConfig, parse_train_args
from fractalgen.sweep import main
from versionkit.errors import ConfigError
from versionkit.sweep import SearchSpace, parse_storage

BASE = ["--config", "config/train_small.yaml", "--max_steps", "6"]


def _run(args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str]:
    code = main([*BASE, f"--output_root={tmp_path}", *args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("optim.lrr=loguniform(1e-4,3e-3)", "did you mean optim.lr"),
        ("optim.lr=logunifrm(1e-4,3e-3)", "did you mean loguniform?"),
        ("optim.lr=loguniform(1e-4)", "takes two numbers"),
        ("optim.lr=loguniform(0,1e-3)", "loguniform needs low > 0"),
        ("optim.lr=uniform(3e-3,1e-4)", "low must be below high"),
        ("optim.lr=uniform(a,1)", "'a' is not a number"),
        ("optim.lr=uniform(1e-4,inf)", "must be finite"),
        ("data.train_batch_size=int(1.5,4)", "'1.5' is not an integer"),
        ("optim.lr", "expected FIELD=uniform(a,b)"),
        ("optim.lr=choice()", "at least one value"),
        ("optim.lr=choice(1e-3,1e-3)", "given twice"),
        ("optim.lr=uniform(-1,1)", "optim.lr=-1.0 is not valid"),
        ("model=choice(1,2)", "model is a section"),
        ("model.embed_dim_list=choice([64,32,16],[96,48])", "one entry per level"),
        ("trainer.precision=choice(32-true,bf16)", "'bf16' is not valid"),
        ("experiment.name=choice(a,b)", "experiment.name cannot vary"),
        ("data.train_batch_size=uniform(1,64)", "takes integers; uniform() samples floats"),
        ("data.dataset=uniform(1,2)", "data.dataset is not a number field"),
        ("model.guiding_pixel=int(0,1)", "is not a number field"),
        ("model.embed_dim_list=int(1,2)", "is not a number field"),
        ("output_root=choice(a,b)", "experiment.output_root cannot vary"),
    ],
)
def test_a_bad_space_is_one_line_and_exit_2_before_anything_is_written(
    space: str, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = _run(["--space", space, "--trials", "2"], capsys, tmp_path)
    assert code == 2
    assert err.startswith("error: --space") and err.count("\n") == 1, err
    assert expected in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--storage", "sqlite:///"], "needs a database file"),
        (["--storage", "mysql://u@h/db"], "unsupported scheme 'mysql'"),
        (["--storage", "postgresql://u@/db"], "needs a host and a database"),
        (["--storage", "postgresql://u@h:port/db"], "--storage"),
        (["--storage", "redis://h"], "unsupported scheme"),
        (["--storage", "study.db"], "not a storage URL"),
        (["--storage", ""], "--storage is empty"),
        (["--sampler", "grdi"], "did you mean grid?"),
        (["--pruner", "hyperband"], "expected one of median, none"),
        (["--trials", "0"], "--trials: expected an integer >= 1"),
        (["--jobs", "two"], "--jobs: expected an integer >= 1"),
        (["--sampler", "grid"], "grid takes choice(...) only"),
        (["--resume", "latest"], "does not apply to a sweep"),
        (["--max_stepz", "5"], "did you mean --max_steps"),
        (["--trials"], "--trials needs a value"),
        (["--space-file", "/nonexistent/space.yaml"], "cannot read it"),
    ],
)
def test_bad_flags_and_storage_uris_are_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = _run(["--space", "optim.lr=loguniform(1e-4,3e-3)", "--trials", "2", *args],
                     capsys, tmp_path)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert list(tmp_path.iterdir()) == []


def test_trials_are_required_except_for_grid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = _run(["--space", "optim.lr=loguniform(1e-4,3e-3)"], capsys, tmp_path)
    assert code == 2 and "--trials is required" in err


def test_help_lists_the_sweep_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--space", "--space-file", "--trials", "--jobs", "--storage", "--sampler"):
        assert flag in out


def test_a_space_file_is_the_same_as_space_flags(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "optim.lr: loguniform(1e-4, 3e-3)\n"
        "model.embed_dim_list: {choice: [[64, 32, 16], [96, 48, 24]]}\n"
        "data.train_batch_size: int(16, 64)\n",
        encoding="utf-8",
    )
    from_file = SearchSpace.parse([], TrainConfig, files=[path])
    from_flags = SearchSpace.parse(
        ["optim.lr=loguniform(1e-4,3e-3)",
         "model.embed_dim_list=choice([64,32,16],[96,48,24])",
         "data.train_batch_size=int(16,64)"], TrainConfig)
    assert [(d.field, d.kind, d.low, d.high, d.choices) for d in from_file.dimensions] == [
        (d.field, d.kind, d.low, d.high, d.choices) for d in from_flags.dimensions]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("optim.lr: [1, 2]\n", "expected 'kind(args)' text"),
        ("optim.lr: {uniform: [1, 2], choice: [3]}\n", "expected 'kind(args)' text"),
        ("optim.lrr: loguniform(1e-4, 3e-3)\n", "did you mean optim.lr"),
        ("optim.lr: {loguniform: [0, 1]}\n", "low > 0"),
        ("optim.lr: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_space_file_names_the_file_and_field(
    text: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        SearchSpace.parse([], TrainConfig, files=[path])
    assert str(path) in str(info.value) and expected in str(info.value)


def test_a_field_searched_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="searched twice"):
        SearchSpace.parse(["optim.lr=uniform(1e-4,1e-3)", "lr=uniform(1e-4,1e-3)"],
                          TrainConfig)


def test_storage_forms() -> None:
    default = Path("/x/.versionkit/sweeps.journal")
    assert parse_storage(None, default_journal=default).kind == "journal"
    assert parse_storage("journal:/tmp/a", default_journal=default).target == "/tmp/a"
    assert parse_storage("/tmp/b.journal", default_journal=default).kind == "journal"
    pg = parse_storage("postgresql://u:secret@h:5432/db", default_journal=default)
    assert pg.target.startswith("postgresql+psycopg://u:secret@h:5432/db")
    assert "secret" not in pg.shown
    assert parse_storage("sqlite:///rel.db", default_journal=default).target == "sqlite:///rel.db"


_LR = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False, allow_subnormal=False)


@settings(max_examples=40, deadline=None)
@given(lr=_LR, dims=st.lists(st.integers(1, 512), min_size=3, max_size=3))
def test_sampled_values_reach_the_config_exactly(lr: float, dims: list[int]) -> None:
    """Whatever Optuna samples, the trial's config holds exactly that value."""
    space = SearchSpace.parse(
        ["optim.lr=loguniform(1e-6,1)", f"model.embed_dim_list=choice({dims},[64,32,16])"],
        TrainConfig)
    values = {"optim.lr": lr, "model.embed_dim_list": dims}
    flags = space.flags(TrainConfig, values)
    config: Any = parse_train_args([*flags, "--num_heads_list=[1,1,1]"]).config
    assert config.optim.lr == lr
    assert config.model.embed_dim_list == dims
    # and through Optuna's storage form (JSON text for list choices) and back
    dim = space.dimensions[1]
    stored = dim.optuna_choices()
    assert all(isinstance(s, str) for s in stored)
    assert [dim.decode(s) for s in stored] == [list(c) for c in dim.choices]


def test_versionkit_list_filters_one_sweep(tmp_path: Path) -> None:
    from versionkit.cli import main as vk_main
    from versionkit.registry import Registry

    with Registry(tmp_path) as registry:
        registry.allocate(extra={"sweep": {"study": "a", "trial": 0, "params": {"x": 1}}})
        registry.allocate()
        registry.allocate(extra={"sweep": {"study": "b", "trial": 0, "params": {"x": 2}}})
        registry.allocate(extra={"sweep": {"study": "a", "trial": 1, "params": {"x": 3}}})
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert vk_main(["list", str(tmp_path), "--sweep", "a", "--json"]) == 0
    assert [v["version"] for v in json.loads(out.getvalue())] == [0, 3]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert vk_main(["list", str(tmp_path), "--sweep", "zzz"]) == 0
    assert "no versions of sweep zzz" in out.getvalue()
