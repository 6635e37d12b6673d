"""Registry API: allocation, records, queries, checkpoints, best, configs, bad input."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from versionkit.backends.memory import MemoryBackend
from versionkit.errors import (
    ConfigError,
    CorruptStateError,
    RegistryError,
    UnknownBackendError,
    VersionNotFoundError,
)
from versionkit.registry import Registry, VersionInfo, parse_checkpoint_name, provenance

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "exp", "file")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# -- allocation -----------------------------------------------------------------------


def test_allocate_creates_both_folders_with_the_same_number(reg: Registry) -> None:
    first, second = reg.allocate(), reg.allocate()
    assert (first.version, second.version) == (0, 1)
    for info in (first, second):
        assert info.checkpoint_dir == reg.root / "checkpoints" / f"version_{info.version}"
        assert info.log_dir == reg.root / "logs" / f"version_{info.version}"
        assert info.checkpoint_dir.is_dir() and info.log_dir.is_dir()


def test_allocate_records_the_run(reg: Registry) -> None:
    config = {"model": {"dim": 64}, "lr": 0.001}
    info = reg.allocate(
        config=config,
        command=["train.py", "--lr", "0.001"],
        seed=7,
        extra={"note": "hello", "where": Path("a/b")},
    )
    stored = reg.get(info.version)
    assert stored == info
    assert info.status == "running" and info.ended_at is None and info.error is None
    assert info.host == socket.gethostname() and info.pid == os.getpid()
    assert info.command == ["train.py", "--lr", "0.001"] and info.seed == 7
    assert info.python == ".".join(map(str, sys.version_info[:3]))
    assert info.torch == dist_version("torch")
    assert info.lightning == dist_version("pytorch-lightning")
    assert info.versionkit is not None and info.metrics == {}
    assert info.record["config"] == config
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    assert info.config_hash == hashlib.sha256(canonical).hexdigest()
    assert info.record["note"] == "hello" and info.record["where"] == "a/b"
    assert info.created_at is not None and info.created_at.endswith("+00:00")
    assert reg.allocate(config_hash="abc").config_hash == "abc"
    assert reg.get(0).command == ["train.py", "--lr", "0.001"]
    assert reg.allocate().command == sys.argv


def test_allocate_rejects_bad_values(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="not JSON-able"):
        reg.allocate(config={"x": object()})
    with pytest.raises(RegistryError, match="seed"):
        reg.allocate(seed="7")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="version"):
        reg.allocate(extra={"version": 3})
    assert reg.list() == []


def test_existing_version_folders_are_respected(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    for name in (
        "logs/version_3",
        "logs/version_7_old",
        "logs/version_abc",
        "checkpoints/version_5",
        "checkpoints/version_x9",
        "logs/Version_8",
    ):
        (root / name).mkdir(parents=True)
    touch(root / "logs" / "version_12.txt")
    reg = Registry(root)
    assert reg.folder_versions() == {3, 5}
    assert reg.allocate().version == 6
    assert reg.allocate().version == 7
    assert [(v.version, v.status) for v in reg.list()] == [
        (3, "untracked"),
        (5, "untracked"),
        (6, "running"),
        (7, "running"),
    ]
    assert reg.get(3).status == "untracked"
    with pytest.raises(RegistryError, match="untracked"):
        reg.set_status(3, "completed")


def test_deleted_folders_never_give_a_number_back(reg: Registry) -> None:
    for _ in range(3):
        reg.allocate()
    shutil.rmtree(reg.root / "checkpoints")
    shutil.rmtree(reg.root / "logs")
    assert reg.allocate().version == 3
    shutil.rmtree(reg.checkpoint_dir(3))
    assert reg.allocate().version == 4


def test_recording_imports_neither_torch_nor_pydantic(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from versionkit.registry import Registry
        reg = Registry({str(tmp_path / "exp")!r})
        info = reg.allocate(config={{"a": 1}}, seed=1)
        reg.log_metrics(info.version, {{"loss": 1.0}}, step=1)
        reg.list(); reg.best()
        heavy = [m for m in ("torch", "pytorch_lightning", "lightning", "pydantic")
                 if m in sys.modules]
        print(info.torch, heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    )
    assert done.stdout.split() == [dist_version("torch"), "[]"]


def test_git_commit_and_dirty_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "code"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (repo / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    monkeypatch.chdir(repo)
    provenance._git_cache.clear()
    reg = Registry(tmp_path / "exp")
    clean = reg.allocate()
    assert clean.git_commit == git("rev-parse", "HEAD") and clean.git_dirty is False
    (repo / "f.txt").write_text("2")
    assert reg.allocate().git_dirty is False, "read again only after the cache's 10 s"
    monkeypatch.setattr(provenance, "_GIT_TTL_S", 0.0)
    assert reg.allocate().git_dirty is True
    monkeypatch.chdir(tmp_path)
    provenance._git_cache.clear()
    outside = reg.allocate()
    assert (outside.git_commit, outside.git_dirty) == (None, None)
    provenance._git_cache.clear()


# -- queries and updates --------------------------------------------------------------


def test_get_unknown_version_names_what_exists(reg: Registry) -> None:
    with pytest.raises(VersionNotFoundError, match="no versions yet"):
        reg.get(0)
    reg.allocate()
    reg.allocate()
    with pytest.raises(VersionNotFoundError, match=r"version 5 does not exist .*0, 1") as info:
        reg.get(5)
    assert isinstance(info.value, LookupError)
    for bad in (-1, True, "1", 1.0):
        with pytest.raises(VersionNotFoundError, match="not a valid version number"):
            reg.get(bad)  # type: ignore[arg-type]
    with pytest.raises(VersionNotFoundError):
        reg.set_status(9, "completed")
    with pytest.raises(VersionNotFoundError):
        reg.checkpoint_dir(-3)


def test_list_and_latest(reg: Registry) -> None:
    assert reg.list() == [] and reg.latest() is None
    for _ in range(3):
        reg.allocate()
    assert [v.version for v in reg.list()] == [0, 1, 2]
    latest = reg.latest()
    assert latest is not None and latest.version == 2


def test_status_transitions(reg: Registry) -> None:
    n = reg.allocate().version
    reg.set_status(n, "failed", error="CUDA out of memory")
    failed = reg.get(n)
    assert failed.status == "failed" and failed.error == "CUDA out of memory"
    assert failed.ended_at is not None
    reg.set_status(n, "running")
    resumed = reg.get(n)
    assert resumed.status == "running" and resumed.ended_at is None and resumed.error is None
    assert resumed.pid == os.getpid()
    reg.set_status(n, "completed")
    assert reg.get(n).status == "completed"
    with pytest.raises(RegistryError, match="unknown status 'done'"):
        reg.set_status(n, "done")


def test_update_fields(reg: Registry) -> None:
    n = reg.allocate().version
    reg.update(n, config={"a": {"b": 1}}, config_file=Path("c.yaml"), flags=("--a.b=1",))
    record = reg.get(n).record
    assert record["config_file"] == "c.yaml" and record["flags"] == ["--a.b=1"]
    assert record["config_hash"] == hashlib.sha256(b'{"a":{"b":1}}').hexdigest()
    with pytest.raises(RegistryError, match="version"):
        reg.update(n, version=5)
    with pytest.raises(RegistryError, match="not JSON-able"):
        reg.update(n, thing={1, 2})


def test_log_metrics_merges_latest_values(reg: Registry) -> None:
    n = reg.allocate().version
    reg.log_metrics(n, {"train_loss": 2.0, "lr": 1e-4}, step=10)
    reg.log_metrics(n, {"train_loss": 1.5, "val_loss": 1.7}, step=20)
    info = reg.get(n)
    assert info.metrics == {"train_loss": 1.5, "lr": 1e-4, "val_loss": 1.7}
    assert info.record["metrics_step"] == 20
    with pytest.raises(RegistryError, match="'acc' is 'high'"):
        reg.log_metrics(n, {"acc": "high"}, step=30)  # type: ignore[dict-item]


def test_is_dead_only_for_running_local_processes_that_are_gone(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "exp")
    code = (
        "import sys, time; from versionkit.registry import Registry; "
        f"Registry({str(reg.root)!r}).allocate(); print('ok', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        assert reg.get(0).pid == child.pid
        assert not reg.get(0).is_dead, "a live process is not dead"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    dead = reg.get(0)
    assert dead.status == "running" and dead.is_dead and dead.display_status == "dead"
    assert dead.to_json()["status"] == "dead" and dead.to_json()["recorded_status"] == "running"
    reg.update(0, host="some-other-machine")
    assert not reg.get(0).is_dead, "a pid on another host cannot be checked"
    reg.update(0, host=socket.gethostname())
    reg.set_status(0, "interrupted")
    assert not reg.get(0).is_dead
    assert reg.allocate().version == 1, "a killed run never blocks allocation"


# -- checkpoints and best -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "metric", "expected"),
    [
        ("step_00010000-val_loss_0.1234.ckpt", "val_loss", (10000, {"val_loss": 0.1234})),
        ("epoch=3-step=100-val_loss=0.5.ckpt", "val_loss", (100, {"val_loss": 0.5})),
        ("step_00000020-val_acc_97.5.ckpt", "val_loss", (20, {})),
        ("last.ckpt", "val_loss", (None, {})),
        ("step_1-val_loss_-1.5e-03.ckpt", "val_loss", (1, {"val_loss": -1.5e-3})),
        ("step_2-train_val_loss_0.3.ckpt", "val_loss", (2, {})),
        (
            "step_00000020-val_acc_97.5-val_loss_0.25.ckpt",
            None,
            (20, {"val_acc": 97.5, "val_loss": 0.25}),
        ),
    ],
)
def test_parse_checkpoint_name(
    name: str, metric: str | None, expected: tuple[int | None, dict[str, float]]
) -> None:
    assert parse_checkpoint_name(name, metric) == expected


@settings(max_examples=60, deadline=None)
@given(step=st.integers(0, 10**8), value=st.floats(0, 1e6, allow_nan=False))
def test_seed_checkpoint_names_parse_back(step: int, value: float) -> None:
    name = f"step_{step:08d}-val_loss_{value:.4f}.ckpt"
    assert parse_checkpoint_name(name, "val_loss") == (step, {"val_loss": float(f"{value:.4f}")})


def test_checkpoints_merge_records_and_files(reg: Registry) -> None:
    n = reg.allocate().version
    folder = reg.checkpoint_dir(n)
    a = touch(folder / "step_00000100-val_loss_0.9000.ckpt")
    b = touch(folder / "step_00000200-val_loss_0.8000.ckpt")
    last = touch(folder / "last.ckpt")
    touch(folder / "config.yaml")
    reg.add_checkpoint(n, b, step=200, metrics={"val_loss": 0.75, "acc": 0.5})
    reg.add_checkpoint(n, last, step=150, metrics={"val_loss": 0.85})
    reg.add_checkpoint(n, last, step=250, metrics={"val_loss": 0.7})  # replaces the entry
    gone = touch(folder / "step_00000300-val_loss_0.1000.ckpt")
    reg.add_checkpoint(n, gone, step=300, metrics={"val_loss": 0.1})
    gone.unlink()
    found = reg.checkpoints(n)
    assert [(c.path, c.step, c.metrics) for c in found] == [
        (a, 100, {"val_loss": 0.9}),
        (b, 200, {"val_loss": 0.75, "acc": 0.5}),
        (last, 250, {"val_loss": 0.7}),
    ]
    assert len(reg.get(n).record["checkpoints"]) == 3
    reg.remove_checkpoint(n, last)
    assert [c.metrics for c in reg.checkpoints(n) if c.path == last] == [{}]
    assert len(reg.get(n).record["checkpoints"]) == 2


def test_checkpoint_paths_cannot_escape_the_root(reg: Registry, tmp_path: Path) -> None:
    n = reg.allocate().version
    outside = touch(tmp_path / "elsewhere.ckpt")
    with pytest.raises(RegistryError, match="outside the experiment root"):
        reg.add_checkpoint(n, outside, step=1)
    sneaky = reg.checkpoint_dir(n) / ".." / ".." / ".." / "elsewhere.ckpt"
    with pytest.raises(RegistryError, match="outside the experiment root"):
        reg.add_checkpoint(n, sneaky, step=1)
    # a hand-edited record pointing outside is ignored, not followed
    reg.update(
        n, checkpoints=[{"path": "../elsewhere.ckpt", "step": 1, "metrics": {"val_loss": 0.0}}]
    )
    assert reg.checkpoints(n) == []
    assert reg.best() is None


def test_best_min_max_ties_and_nan(reg: Registry) -> None:
    for _ in range(3):
        reg.allocate()
    for n, name in [
        (0, "step_00000100-val_loss_0.5000.ckpt"),
        (0, "step_00000300-val_loss_0.3000.ckpt"),
        (1, "step_00000200-val_loss_0.3000.ckpt"),
        (1, "step_00000400-val_loss_nan.ckpt"),
    ]:
        # Recorded without metrics: the values come from the names.
        reg.add_checkpoint(n, touch(reg.checkpoint_dir(n) / name), step=int(name[5:13]))
    nan_recorded = touch(reg.checkpoint_dir(2) / "last.ckpt")
    reg.add_checkpoint(2, nan_recorded, step=500, metrics={"val_loss": math.nan})
    best = reg.best()
    assert best is not None
    assert (best.version, best.step) == (0, 300), "tie on 0.3: the later step wins"
    worst = reg.best(mode="max")
    assert worst is not None and worst.metrics["val_loss"] == 0.5
    only1 = reg.best(version=1)
    assert only1 is not None and only1.step == 200
    assert reg.best("val_acc") is None
    with pytest.raises(RegistryError, match="'min' or 'max'"):
        reg.best(mode="lowest")
    with pytest.raises(VersionNotFoundError):
        reg.best(version=9)


def test_best_skips_deleted_files_and_reads_untracked_folders(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    touch(root / "checkpoints" / "version_0" / "epoch=1-step=10-val_loss=0.2.ckpt")
    reg = Registry(root)
    n = reg.allocate().version
    kept = touch(reg.checkpoint_dir(n) / "step_00000010-val_loss_0.4000.ckpt")
    deleted = touch(reg.checkpoint_dir(n) / "step_00000020-val_loss_0.1000.ckpt")
    reg.add_checkpoint(n, deleted, step=20, metrics={"val_loss": 0.1})
    deleted.unlink()
    best = reg.best()
    assert best is not None and (best.version, best.step) == (0, 10)
    best_n = reg.best(version=n)
    assert best_n is not None and best_n.path == kept


# -- configs --------------------------------------------------------------------------


def test_config_dict_typed_yaml_fallback_and_diff(reg: Registry) -> None:
    import versionkit.config as config_mod

    class Model(config_mod.ConfigSection):  # type: ignore[name-defined,misc]
        dim: int = 8

    class Cfg(config_mod.ConfigModel):  # type: ignore[name-defined,misc]
        lr: float = 0.1
        model: Model = Model()

    a = reg.allocate(config={"schema_version": 1, "lr": 0.1, "model": {"dim": 8}}).version
    b = reg.allocate(config={"schema_version": 1, "lr": 0.2, "model": {"dim": 8}}).version
    assert reg.config(a) == {"schema_version": 1, "lr": 0.1, "model": {"dim": 8}}
    typed = reg.config(b, Cfg)
    assert isinstance(typed, Cfg) and typed.lr == 0.2
    assert reg.diff(a, b) == {"lr": (0.1, 0.2)}
    c = reg.allocate().version
    (reg.checkpoint_dir(c) / "config.yaml").write_text("schema_version: 1\nlr: 0.3\n")
    assert reg.config(c) == {"schema_version": 1, "lr": 0.3}
    assert reg.config(c, Cfg).lr == 0.3
    changes = reg.diff(a, c)
    assert changes["lr"] == (0.1, 0.3) and changes["model.dim"][1] is config_mod.MISSING
    model = Cfg(lr=0.5)
    hashed = reg.allocate(config=model)
    assert hashed.config_hash == config_mod.config_hash(model)
    assert hashed.record["config"] == model.model_dump(mode="json")
    reg.update(hashed.version, config=Cfg(lr=0.6))
    assert reg.get(hashed.version).config_hash == config_mod.config_hash(Cfg(lr=0.6))
    d = reg.allocate(config={"schema_version": 1, "lr": "fast"}).version
    with pytest.raises(ConfigError, match="lr"):
        reg.config(d, Cfg)
    e = reg.allocate().version
    with pytest.raises(RegistryError, match="no recorded config"):
        reg.config(e)


# -- locate ---------------------------------------------------------------------------


def test_locate(reg: Registry) -> None:
    n = reg.allocate().version
    ckpt = touch(reg.checkpoint_dir(n) / "step_00000001-val_loss_1.0000.ckpt")
    assert Registry.locate(ckpt) == (reg.root, n)
    assert Registry.locate(reg.checkpoint_dir(n)) == (reg.root, n)
    assert Registry.locate(reg.log_dir(n) / "events.out.tfevents.1") == (reg.root, n)
    assert Registry.locate(reg.root) == (reg.root, None)
    assert Registry.locate(reg.root / "checkpoints") == (reg.root, None)
    detour = reg.root / "checkpoints" / "version_9" / ".." / f"version_{n}" / ckpt.name
    assert Registry.locate(detour) == (reg.root, n)
    assert Registry.locate("out/exp/logs/version_3/") == (Path("out/exp"), 3)
    with pytest.raises(RegistryError, match="not an experiment root"):
        Registry.locate(reg.root.parent / "nothing-here.ckpt")


# -- backends and bad input -----------------------------------------------------------


def test_backend_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownBackendError, match=r"'nope' is not one of .*file.*memory"):
        Registry(tmp_path, "nope://x")
    monkeypatch.setenv("VERSIONKIT_BACKEND", "memory://regtest")
    try:
        one, two = Registry(tmp_path / "exp"), Registry(tmp_path / "exp")
        assert isinstance(one.backend, MemoryBackend)
        assert one.allocate().version == 0 and two.allocate().version == 1
        assert not (tmp_path / "exp" / ".versionkit").exists()
        other = Registry(tmp_path / "exp", experiment="another")
        assert other.allocate().version == 2, "folders on disk still set the floor"
    finally:
        MemoryBackend.reset("regtest")


def test_root_that_is_a_file(tmp_path: Path) -> None:
    touch(tmp_path / "file")
    with pytest.raises(RegistryError, match="not a folder"):
        Registry(tmp_path / "file")


def test_read_only_root(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        with pytest.raises(RegistryError, match="cannot create experiment root"):
            Registry(parent / "exp").allocate()
    finally:
        os.chmod(parent, 0o755)


def test_corrupt_state_surfaces_and_repair_recovers(reg: Registry) -> None:
    for _ in range(3):
        reg.allocate()
    counter = reg.root / ".versionkit" / "next.json"
    counter.write_text("{oops")
    with pytest.raises(CorruptStateError, match="versionkit repair"):
        reg.allocate()
    report = reg.repair()
    assert report["next_number"] == 3 and report["actions"]
    assert reg.allocate().version == 3
    (reg.root / "logs" / "version_9").mkdir()
    counter.write_text("")
    report = reg.repair()
    assert report["next_number"] == 10 and report["untracked_folders"] == [9]
    assert reg.allocate().version == 10


def test_repair_of_missing_root(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path / "none").repair()


def test_version_info_survives_odd_records(tmp_path: Path) -> None:
    info = VersionInfo.from_record(
        {"version": 4, "pid": True, "metrics": "x", "command": "train", "seed": 1.5},
        tmp_path / "c",
        tmp_path / "l",
    )
    assert (info.status, info.pid, info.metrics, info.command, info.seed) == (
        "unknown",
        None,
        {},
        [],
        None,
    )
    assert not info.is_dead


@pytest.mark.parametrize("kind", ["file", "memory", "sqlite"])
def test_the_registry_works_on_every_builtin_backend(tmp_path: Path, kind: str) -> None:
    uri = {"file": "file", "memory": "memory://every", "sqlite": f"sqlite:///{tmp_path / 'r.db'}"}
    if kind == "sqlite":
        pytest.importorskip("sqlalchemy")
    (tmp_path / "exp" / "logs" / "version_4").mkdir(parents=True)
    try:
        with Registry(tmp_path / "exp", uri[kind]) as reg:
            first = reg.allocate(config={"lr": 0.1}, seed=1)
            second = reg.allocate(config={"lr": 0.2})
            assert (first.version, second.version) == (5, 6)
            reg.log_metrics(5, {"val_loss": 0.5}, step=10)
            reg.set_status(5, "completed")
            ckpt = touch(reg.checkpoint_dir(6) / "step_00000010-val_loss_0.2500.ckpt")
            reg.add_checkpoint(6, ckpt, step=10, metrics={"val_loss": 0.25})
            assert [(v.version, v.status) for v in reg.list()] == [
                (4, "untracked"),
                (5, "completed"),
                (6, "running"),
            ]
            assert reg.get(5).metrics == {"val_loss": 0.5} and reg.get(5).ended_at
            best = reg.best()
            assert best is not None and (best.version, best.path) == (6, ckpt)
            assert reg.config(6) == {"lr": 0.2}
            assert reg.repair()["next_number"] == 7
            shutil.rmtree(reg.root / "logs")
            shutil.rmtree(reg.root / "checkpoints")
            assert reg.allocate().version == 7
    finally:
        MemoryBackend.reset("every")


def test_lock_timeout_reaches_a_backend_built_from_a_uri(tmp_path: Path) -> None:
    from versionkit.backends.file import FileBackend

    assert Registry(tmp_path / "a", "file", lock_timeout=0.25).backend.lock_timeout == 0.25
    own = FileBackend("file", tmp_path / "b", "b", lock_timeout=3.0)
    assert Registry(tmp_path / "b", own, lock_timeout=0.25).backend is own
    assert own.lock_timeout == 3.0


def test_read_only_root_as_seen_by_a_normal_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI runs as root, for whom chmod 555 changes nothing (the test above skips there):
    # make mkdir fail the way it does for a normal user on a read-only folder.
    parent = tmp_path / "ro"
    parent.mkdir()
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        if self.is_relative_to(parent):
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RegistryError, match=r"cannot create experiment root .*Permission denied"):
        Registry(parent / "exp").allocate()
    assert not (parent / "exp").exists()
