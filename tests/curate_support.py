"""Shared by the curation tests (tags, gc, export/import, the CLI verbs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from versionkit.cli import main
from versionkit.registry import Registry

BACKENDS = ["file", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def uri_fixture() -> Any:
    """A ``vk_uri`` fixture: each test once per backend (file, SQLite, PostgreSQL)."""

    @pytest.fixture(params=BACKENDS)
    def vk_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if request.param == "file":
            return "file"
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/registry.db"
        value: str = request.getfixturevalue("pg_uri")  # a fresh schema per test
        return value

    return vk_uri


def cli(capsys: pytest.CaptureFixture[str], uri: str) -> Callable[..., tuple[int, str, str]]:
    """``run("list", root, ...)`` -> (exit code, stdout, stderr), through ``--backend uri``."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--backend", uri])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line of a refused command (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def checkpoint(reg: Registry, n: int, step: int, val_loss: float, *, size: int = 10,
               record: bool = True) -> Path:
    """A checkpoint file named as ModelCheckpoint names them, recorded in the registry."""
    path = reg.checkpoint_dir(n) / f"step_{step:08d}-val_loss_{val_loss:.4f}.ckpt"
    path.write_bytes(b"x" * size)
    if record:
        reg.add_checkpoint(n, path, step=step, metrics={"val_loss": val_loss})
    return path
